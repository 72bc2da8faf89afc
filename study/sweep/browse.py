"""Browsing a runs root: `raptor-study ui` (the MLflow UI on the sweep's runs table) and `raptor-study dashboard`
(optuna-dashboard on the sweep's Optuna study), each a child server stopped with its whole process group.

Quiet by default: a server's own output (start-up notices, deprecation warnings, one line per HTTP request) goes to
OUT/logs/<server>.log and only the URL is printed; `-v` shows it all. MLflow, Ray and Optuna are imported only
inside the commands (this module is importable anywhere)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from study.config import ConfigError
from study.contract import RUNS_VIEW_KEY, SHARED_VIEW_TAG_PREFIX, UI_WORKFLOW
from study.store import is_served, local_store, redact

console = Console()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def known_experiments(uri: str) -> list[str]:
    store = local_store(uri)
    if store is not None and not store.is_file():
        return []  # do not create an empty store just to look
    try:
        return sorted(e.name for e in _client(uri).search_experiments() if e.name != "Default")
    except Exception as err:  # noqa: BLE001 - an unreachable or unreadable store is bad input here
        raise ConfigError(
            f"--tracking-uri: cannot read MLflow store {redact(uri)} ({str(err).splitlines()[0]})"
        ) from None


def missing_experiments(uri: str, names: list[str]) -> list[str]:
    known = set(known_experiments(uri))
    return [name for name in names if name not in known]


def runs_table_url(base: str, uri: str, experiment: str | None) -> str:
    """The experiment's runs table in MLflow's model-training layout, on the sweep's saved view when it has one
    (MLflow 3.x otherwise opens its overview page, in GenAI mode); no `experiment`: a local store's only one, else
    the experiments list."""
    if not experiment:
        known = known_experiments(uri) if local_store(uri) is not None else []
        if len(known) != 1:  # the list of experiments; with one sweep in the store, its runs table
            return f"{base.rstrip('/')}/#/experiments?workflowType={UI_WORKFLOW}"
        experiment = known[0]
    store = local_store(uri)
    if store is not None and not store.is_file():
        raise ConfigError(f"ui: no MLflow store at {uri} (--out / --tracking-uri)")
    found = _client(uri).get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(
            f"ui: no MLflow experiment named {experiment!r} at {redact(uri)} "
            f"(known: {', '.join(known_experiments(uri)) or 'none'})"
        )
    query = f"workflowType={UI_WORKFLOW}"
    if SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY in found.tags:
        query += f"&viewStateShareKey={RUNS_VIEW_KEY}"
    return f"{base.rstrip('/')}/#/experiments/{found.experiment_id}/runs?{query}"


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"--port: must be in [1, 65535], got {port}")


def serve(command: list[str], url: str, what: str, log_file: Path, verbose: bool, env: dict | None = None) -> int:
    """Run a server until it exits or Ctrl-C / SIGTERM stops it (its whole process group); its output goes to
    `log_file` unless `verbose`. Returns its exit code, or 128 + the signal's number."""
    quiet = not verbose
    if quiet:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        sink = log_file.open("a")
    server = subprocess.Popen(
        command,
        start_new_session=True,  # its own process group: stopped as a whole below
        stdout=sink if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        env={**os.environ, **(env or {})},
    )
    note = f"; its log: {log_file}" if quiet else ""
    console.print(f"{what}: {url}  (Ctrl-C to stop{note})", soft_wrap=True, highlight=False)
    stopped = {"signal": 0}

    def stop(signum, frame) -> None:
        stopped["signal"] = signum
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = server.wait()
        if stopped["signal"]:
            try:
                server.wait(timeout=20)
            finally:
                try:
                    os.killpg(server.pid, signal.SIGKILL)  # helpers that ignored SIGTERM
                except ProcessLookupError:
                    pass
            return 128 + stopped["signal"]
        if code and quiet:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            console.print(f"[red]{what} exited with {code}[/red]: {tail[0][:300]}", soft_wrap=True, highlight=False)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if quiet:
            sink.close()


def ui(uri: str, root: Path, experiment: str | None, host: str, port: int, verbose: bool) -> int:
    """`raptor-study ui`: serve the store (or print the server's URL for an http store)."""
    if is_served(uri):  # a server already serves it: nothing to start
        console.print(f"MLflow tracking server: {runs_table_url(redact(uri), uri, experiment)}", soft_wrap=True)
        return 0
    check_port(port)
    url = runs_table_url(f"http://{host}:{port}", uri, experiment)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host]
    command += ["--port", str(port), "--workers", "1"]
    env = {}
    if not verbose:  # no access log, no start-up notices; warnings and errors stay in the log file
        command += ["--uvicorn-opts", "--no-access-log --log-level warning"]
        env = {"MLFLOW_LOGGING_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return serve(command, url, f"MLflow UI for {redact(uri)}", root / "logs" / "mlflow-ui.log", verbose, env)


def optuna_sweeps(root: Path) -> list[str]:
    """Sweeps under `root` that have an Optuna study (their launched spec names a sampler other than grid)."""
    found = []
    for launched in sorted((root / "ray").glob("*/sweep_spec.json")):
        if json.loads(launched.read_text()).get("search", {}).get("sampler") != "grid":
            found.append(launched.parent.name)
    return found


def optuna_storage_of(root: Path, sweep: str | None) -> tuple[str, str]:
    """(sweep, storage) of the sweep's Optuna study: the spec's RDB URL, else its journal file."""
    sweeps = optuna_sweeps(root)
    if sweep is None:
        if len(sweeps) != 1:
            raise ConfigError(
                f"dashboard: name the sweep (with an Optuna study under {root}: {', '.join(sweeps) or 'none'})"
            )
        sweep = sweeps[0]
    launched = root / "ray" / sweep / "sweep_spec.json"
    if not launched.is_file():
        raise ConfigError(f"dashboard: no sweep {sweep!r} under {root / 'ray'} (known: {', '.join(sweeps) or 'none'})")
    search = json.loads(launched.read_text()).get("search", {})
    if search.get("sampler") == "grid":
        raise ConfigError(f"dashboard: sweep {sweep!r} is a grid search (Ray Tune's own), it has no Optuna study")
    if search.get("storage"):
        return sweep, search["storage"]
    journal = root / "ray" / sweep / "optuna.journal"
    if not journal.is_file():
        raise ConfigError(f"dashboard: sweep {sweep!r} has no Optuna journal yet ({journal})")
    return sweep, str(journal)


DASHBOARD_INSTALL = "optuna-dashboard is not installed: pip install -e .[dashboard]"


def dashboard(root: Path, sweep: str | None, host: str, port: int, verbose: bool) -> int:
    """`raptor-study dashboard`: optuna-dashboard on the sweep's Optuna study, when the extra is installed."""
    check_port(port)
    sweep, storage = optuna_storage_of(root, sweep)
    if importlib.util.find_spec("optuna_dashboard") is None:
        console.print(DASHBOARD_INSTALL, soft_wrap=True, highlight=False, markup=False)
        return 1
    program = Path(sys.executable).with_name("optuna-dashboard")
    command = [str(program) if program.is_file() else "optuna-dashboard", storage, "--host", host, "--port", str(port)]
    url = f"http://{host}:{port}/"
    return serve(command, url, f"optuna-dashboard for sweep {sweep}", root / "logs" / "optuna-dashboard.log", verbose)
