"""The layout is the architecture: a folder's name says which dependencies its modules may import.

- study/science/: pure torch/numpy/scipy/sklearn science; never Ray, MLflow, Optuna, nor the
  trial or sweep layers.
- study/trial/ and the top-level study modules (config, runtime, contract, cli): no Ray, MLflow
  or Optuna at import time (the CLI imports the sweep lazily, inside its commands).
- study/sweep/: the only place that may import Ray or MLflow.
- study/science/, study/trial/ and study/sweep/ never import analysis/ (anywhere in a module, not only at the top):
  the CLI and the Python API may; a trial draws its own figures with study/trial/figures.py.
Checked on the source (AST), so it holds without importing anything."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("ray", "mlflow", "optuna")


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _root(name: str) -> str:
    return name.split(".")[0]


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", _modules("study/science"), ids=lambda p: p.name)
def test_science_imports_no_orchestration_and_no_upper_layer(path):
    imported = _imports(path, top_level_only=False)
    assert not {n for n in imported if _root(n) in ORCHESTRATION}, path
    assert not {n for n in imported if n.startswith(("study.trial", "study.sweep", "analysis"))}, path


@pytest.mark.parametrize("path", _modules("study/trial") + _modules("study"), ids=lambda p: p.name)
def test_trial_and_top_level_import_no_orchestration_at_import_time(path):
    imported = _imports(path, top_level_only=True)
    assert not {n for n in imported if _root(n) in ORCHESTRATION}, path
    assert not {n for n in imported if n.startswith("study.sweep")}, path


@pytest.mark.parametrize(
    "path", _modules("study/science") + _modules("study/trial") + _modules("study/sweep"), ids=lambda p: p.name
)
def test_layers_below_the_cli_never_import_analysis(path):
    assert not {n for n in _imports(path, top_level_only=False) if _root(n) == "analysis"}, path


MAX_LINES = 450
"""No module longer than this: split by responsibility (one concept per module)."""


@pytest.mark.parametrize(
    "path", sorted((ROOT / "study").rglob("*.py")) + _modules("analysis"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_modules_stay_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, path


def test_only_sweep_and_analysis_import_mlflow_or_ray_anywhere():
    offenders = []
    for path in sorted((ROOT / "study").rglob("*.py")):
        if "sweep" in path.relative_to(ROOT / "study").parts or path.name == "cli.py":
            continue
        if {n for n in _imports(path, top_level_only=False) if _root(n) in ("ray", "mlflow")}:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_comments_cite_documents_not_issue_numbers():
    pattern = re.compile(r"\b(issue|SPEC sec(tion)?)\s*#?\d+", re.IGNORECASE)
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for folder in ("study", "analysis", "bench", "tests")
        for p in sorted((ROOT / folder).rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_cited_documents_exist():
    cited = {
        m.group(0)
        for folder in ("study", "analysis", "bench")
        for p in (ROOT / folder).rglob("*.py")
        for m in re.finditer(r"docs/[\w./-]+\.md", p.read_text())
    }
    assert cited and all((ROOT / c).is_file() for c in cited), cited


ANALYSIS_MAY_IMPORT = ("study.contract", "study.configio", "study.trial.figures")
"""analysis/ reads what the study wrote: it imports only the names (contract) and pure helpers from study/."""


def test_analysis_imports_only_the_contract_and_pure_helpers():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _modules("analysis")
        for name in _imports(path, top_level_only=False)
        if _root(name) == "study" and name not in ANALYSIS_MAY_IMPORT or _root(name) in ("ray", "torch")
    ]
    assert offenders == []
