"""Where a sweep's runs are tracked: the runs root's default MLflow store, and tracking URIs as they may be shown.

Standard library only: the CLI, the Python API, the sweep driver and the analysis import it without pulling Ray or
MLflow. Under a runs root (``--out``, default ``runs/``) the default store is the SQLite file ``mlflow.db`` with its
artifacts in ``mlartifacts/`` (layout: study/sweep/paths.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_RUNS_ROOT = "runs"
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri(root: str | Path = DEFAULT_RUNS_ROOT) -> str:
    """The embedded default: a SQLite store in the runs root."""
    return f"sqlite:///{(Path(root) / STORE_FILE).resolve()}"


def tracking_uri(explicit: str | None = None, root: str | Path = DEFAULT_RUNS_ROOT) -> str:
    """`explicit` (--tracking-uri), else MLFLOW_TRACKING_URI, else the SQLite store under `root`."""
    return explicit or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri(root)


def local_store(uri: str) -> Path | None:
    """The file of a local SQLite store (None for any other URI)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def is_served(uri: str) -> bool:
    """A URI a tracking server already serves (nothing to start to browse it)."""
    return uri.startswith(("http://", "https://", "databricks"))


def redact(uri: str) -> str:
    """A tracking URI with any user:password removed (credentials are never logged or printed)."""
    return re.sub(r"//[^/@]+@", "//***@", uri)
