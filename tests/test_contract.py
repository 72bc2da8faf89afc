"""One MLflow contract: metric names are spelt only in `study/contract.py`; one writer records trials.

The grep walks the AST of every module outside the contract (docstrings skipped, f-string pieces
included) and fails on any string that is a metric name or a metric-name prefix. `study/science/`
is exempt: it returns plain records whose keys the contract maps (`EPOCH_KEYS`), it names no MLflow metric.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import study.contract as contract

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("study", "analysis", "bench")
EXEMPT = {ROOT / "study" / "contract.py"}
NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\.?$")
SUMMARY_NAMES = {contract.trials_count_metric(s) for s in (*contract.STATUSES, "orphaned")}
PREFIXES = tuple(p for p in contract.METRIC_PREFIXES if p not in contract.SUMMARY_PREFIXES)


def is_metric_name(text: str) -> bool:
    if text in contract.METRIC_NAMES or text in contract.METRIC_PREFIXES or text in SUMMARY_NAMES:
        return True
    return bool(NAME.match(text)) and text.startswith(PREFIXES)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # attribute docstrings
            ids.add(id(node.value))
    return ids


def metric_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and is_metric_name(node.value)
    ]


def test_the_detector_sees_names_and_prefixes_but_not_params_or_prose():
    assert all(
        map(
            is_metric_name,
            [
                "r2.final",
                "acc.ratio",
                "phase.",
                "dyn.swap.baseline_acc",
                "val_r2",
                "stage2.loss",
                "trials.finished",
                "teacher.test_acc",
            ],
        )
    )
    assert not any(
        map(
            is_metric_name,
            ["raptor.k", "teacher.sd_rate", "trials.csv", "dyn.* metrics per SD", "r2_per_layer.png", "stage"],
        )
    )


def test_no_metric_name_literals_outside_the_contract():
    offenders = [
        hit
        for folder in SCANNED
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path not in EXEMPT and "science" not in path.relative_to(ROOT).parts
        for hit in metric_literals(path)
    ]
    assert offenders == [], "\n".join(offenders)


def test_one_writer_records_trials():
    """Only `study/sweep/record.py` builds a trial run's tags (``ROLE_TAG: ROLE_TRIAL``): the Tune callback
    and the synthetic sweep both record trials through it."""
    texts = {
        p.relative_to(ROOT).as_posix(): p.read_text()
        for folder in ("study", "analysis", "bench")
        for p in sorted((ROOT / folder).rglob("*.py"))
    }
    assert "create_trial_run(" in texts["study/sweep/tracking.py"] and "log_trial(" in texts["study/sweep/synthetic.py"]
    builders = [p for p, text in texts.items() if re.search(r"ROLE_TAG:\s*ROLE_TRIAL", text)]
    assert builders == ["study/sweep/record.py"]
