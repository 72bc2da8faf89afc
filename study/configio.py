"""Plain config trees: the one-line user error, stable hashes, dotted keys, merging and YAML reading.

Shared by the trial config (`study.config`) and the sweep specs (`study.sweep.space`); nothing here knows a field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A one-line, user-facing description of invalid input (field + allowed range).

    Line breaks that came in with user input (key names, values) are escaped, so the
    message stays one line whatever it quotes."""

    def __init__(self, message: str):
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten`: {'a.b': 1} -> {'a': {'b': 1}}."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node[leaf] = value
    return tree


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """First error of a pydantic ValidationError as one line: 'field.path: message (got X)'."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if msg.startswith("Value error, "):
        # our own validators already name the field and the range
        return msg.removeprefix("Value error, ")
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
    if first["type"] == "extra_forbidden":
        return f"{field}: unknown key"
    got = first.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
    return f"{field}: {msg}{got_text}"


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; missing files and syntax errors become one-line ConfigErrors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None


class StrictModel(BaseModel):
    """A config section: unknown keys refused, immutable once validated, defaults validated too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def registered(field: str, name: str, table: dict) -> str:
    """`name` if `table` (study/registry.py) has it, else a one-line error naming the field and the allowed names."""
    if name not in table:
        raise ValueError(f"{field}: must be one of {', '.join(map(repr, table))}, got {name!r}")
    return name
