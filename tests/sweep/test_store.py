"""The one default tracking URI and the one redaction (study/store.py), importable by every layer."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from study.store import default_tracking_uri, local_store, redact, tracking_uri

ROOT = Path(__file__).resolve().parents[2]


def test_flag_then_environment_then_the_store_under_the_runs_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        tracking_uri(None, tmp_path)
        == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
        == default_tracking_uri(tmp_path)
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking_uri(None, tmp_path) == "http://server:5000"
    assert tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    assert local_store(default_tracking_uri(tmp_path)) == tmp_path.resolve() / "mlflow.db"
    assert local_store("http://server:5000") is None


def test_credentials_never_show():
    assert redact("https://user:secret@mlflow.example:5000/x") == "https://***@mlflow.example:5000/x"
    assert redact("postgresql://u:p@db/mlflow") == "postgresql://***@db/mlflow"
    assert redact("sqlite:////tmp/runs/mlflow.db") == "sqlite:////tmp/runs/mlflow.db"


def test_the_store_module_imports_the_standard_library_only():
    tree = ast.parse((ROOT / "study" / "store.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {name.split(".")[0] for name in imported} - {"__future__"} <= set(sys.stdlib_module_names), imported
