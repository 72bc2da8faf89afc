"""`raptor-study` command line: trial, sweep, resume, report, ui."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from study.config import ConfigError, load_trial_config
from study.contract import FAILED, FINISHED

console = Console()
err_console = Console(stderr=True)


def parse_overrides(pairs: list[str]) -> dict:
    """['teacher.sd_rate=0.3', 'raptor.k=3'] -> {'teacher.sd_rate': 0.3, 'raptor.k': 3} (YAML-typed values)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set: expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def check_writable(folder: Path, flag: str) -> Path:
    """Create `folder` if needed and make sure it is writable, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{flag}: output folder {str(folder)!r} is not writable ({err.strerror or err})") from None
    return folder.resolve()


def cmd_trial(args: argparse.Namespace) -> int:
    cfg = load_trial_config(args.config, parse_overrides(args.set))
    out_dir = check_writable(Path(args.out) / cfg.name, "--out")
    from study.trial.pipeline import run_trial  # torch and the rest: only once the input is known good

    console.print(f"[bold]trial[/bold] {cfg.name} -> {out_dir}")
    result = run_trial(cfg, out_dir)
    table = Table(title=f"trial {cfg.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("phase_bounds", str(result["partition"]["phase_bounds"]))
    for name, value in result["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("total seconds", f"{result['timings']['total_s']:.1f}")
    console.print(table)
    console.print(
        f"results: {out_dir / 'result.json'}  figures: {out_dir / 'similarity.png'}, {out_dir / 'r2_per_layer.png'}"
    )
    return 0


def enable_ray_token_auth(address: str | None) -> None:
    """Joining a cluster whose head was started by `ray start --head` (Ray >= 2.5x) needs token
    authentication. When a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token) and RAY_AUTH_MODE is unset, switch token mode on. Ray reads this when it
    is imported, so this runs before the first `import ray`."""
    has_token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )
    if address and address != "local" and "RAY_AUTH_MODE" not in os.environ and has_token:
        os.environ["RAY_AUTH_MODE"] = "token"


def tracking_uri_of(args: argparse.Namespace, root: str) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the SQLite store under `root`."""
    if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return args.tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def cmd_sweep(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    enable_ray_token_auth(address)
    from study.sweep.space import as_sweep_spec

    overrides = parse_overrides(args.set)
    name = as_sweep_spec(args.spec, overrides).name  # a bad spec fails here, before Ray and MLflow are imported
    from study.sweep.driver import SweepInterrupted, run_sweep

    out_root = check_writable(Path(args.out), "--out")
    report_dir = check_writable(out_root / "reports" / name, "--out") if args.report else None
    uri = tracking_uri_of(args, args.out)
    try:
        table = run_sweep(
            args.spec,
            out_root,
            address=address,
            tracking_uri=uri,
            resume=args.command == "resume",
            overrides=overrides,
            new=getattr(args, "new", False),
            verbose=args.verbose,
        )
    except SweepInterrupted as stopped:
        return stopped.exit_code
    if report_dir is not None:
        if len(table) and (table["status"] == FINISHED).any():
            from analysis.report import write_report

            path = write_report([name], uri, report_dir, log_to_mlflow=True)
            note = "Markdown and figures beside it; also logged to the sweep's MLflow run"
            console.print(f"report: {path}  ({note})", soft_wrap=True)
        else:
            console.print("report: not written, no trial finished", soft_wrap=True)
    return 0 if len(table) and (table["status"] != FAILED).all() else 1


def cmd_report(args: argparse.Namespace) -> int:
    if not args.verbose:  # one progress bar per downloaded result.json otherwise
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri_of(args, args.runs)
    missing = missing_experiments(uri, args.experiments)
    if missing:
        raise ConfigError(
            f"report: no MLflow experiment named {missing[0]!r} at {redact_uri(uri)} "
            f"(known: {', '.join(known_experiments(uri)) or 'none'}; --runs / --tracking-uri)"
        )
    out_dir = check_writable(Path(args.out or Path(args.runs) / "reports" / "-".join(args.experiments)), "--out")
    from analysis.report import write_report  # the statistics and figures: only once the input is known good

    path = write_report(args.experiments, uri, out_dir, log_to_mlflow=args.log_to_mlflow)
    console.print(f"report: {path}  (Markdown and figures beside it)", soft_wrap=True)
    return 0


def redact_uri(uri: str) -> str:
    import re

    return re.sub(r"//[^/@]+@", "//***@", uri)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def known_experiments(uri: str) -> list[str]:
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []  # do not create an empty store just to look
    try:
        return sorted(e.name for e in _client(uri).search_experiments() if e.name != "Default")
    except Exception as err:  # noqa: BLE001 - an unreachable or unreadable store is bad input here
        raise ConfigError(
            f"--tracking-uri: cannot read MLflow store {redact_uri(uri)} ({str(err).splitlines()[0]})"
        ) from None


def missing_experiments(uri: str, names: list[str]) -> list[str]:
    known = set(known_experiments(uri))
    return [name for name in names if name not in known]


def runs_table_url(base: str, uri: str, experiment: str | None) -> str:
    """Direct URL of an experiment's runs table (MLflow 3.x otherwise opens its overview page)."""
    if not experiment:
        return base
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"ui: no MLflow store at {uri} (--out / --tracking-uri)")
    found = _client(uri).get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(
            f"ui: no MLflow experiment named {experiment!r} at {redact_uri(uri)} "
            f"(known: {', '.join(known_experiments(uri)) or 'none'})"
        )
    return f"{base.rstrip('/')}/#/experiments/{found.experiment_id}/runs"


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    uri = tracking_uri_of(args, args.out)
    if uri.startswith(("http://", "https://", "databricks")):  # a server already serves it: nothing to start
        console.print(f"MLflow tracking server: {runs_table_url(redact_uri(uri), uri, args.experiment)}")
        return 0
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: must be in [1, 65535], got {args.port}")
    url = runs_table_url(f"http://{args.host}:{args.port}", uri, args.experiment)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            args.host,
            "--port",
            str(args.port),
            "--workers",
            "1",
        ],
        start_new_session=True,
    )  # its own process group: stopped as a whole below
    console.print(f"MLflow UI for {redact_uri(uri)}: {url}  (runs table; Ctrl-C to stop)", soft_wrap=True)
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
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raptor-study")
    except PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse that answers bad arguments with one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raptor-study", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"raptor-study {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    trial = sub.add_parser("trial", help="run one trial in this process (no Ray)")
    trial.add_argument("--config", help="trial config YAML (defaults: digits, 8-block teacher, k=2)")
    trial.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. raptor.k=3"
    )
    trial.add_argument("--out", default="runs/trials", help="output folder (a subfolder per trial name)")
    trial.set_defaults(func=cmd_trial)

    for name, text in (
        ("sweep", "launch a sweep: Ray Tune + Optuna over trials, Ray Train workers, MLflow tracking"),
        ("resume", "continue an interrupted sweep (finished trials are not rerun)"),
    ):
        sweep = sub.add_parser(name, help=text)
        sweep.add_argument("spec", help="search space YAML, e.g. search_spaces/smoke.yaml")
        sweep.add_argument("--out", default="runs", help="output root: MLflow store, Ray state, trial folders, cache")
        sweep.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show Ray's and Tune's own output instead of the progress view",
        )
        sweep.add_argument(
            "--address",
            help="join a running Ray cluster (host:port or 'auto'); default: RAY_ADDRESS, else start a local Ray",
        )
        sweep.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else a sqlite store under --out)"
        )
        if name == "sweep":
            sweep.add_argument(
                "--new",
                action="store_true",
                help="launch even if the experiment holds a sweep of this name with another spec hash",
            )
        sweep.add_argument(
            "--report",
            action="store_true",
            help="when the sweep ends, write its report to OUT/reports/NAME and log it to the sweep's MLflow run "
            "(what `raptor-study report NAME --log-to-mlflow` does, without a second process)",
        )
        sweep.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override the spec: search.num_samples=4, space.raptor.k='{choice: [2]}', "
            "or a base trial field, e.g. data.path=/data/imagenet (resume needs the same)",
        )
        sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="statistics + figures of one or more sweeps (HTML + Markdown)")
    report.add_argument("experiments", nargs="+", help="MLflow experiment name(s), i.e. sweep names")
    report.add_argument("--out", help="report folder (default: RUNS/reports/EXPERIMENT)")
    report.add_argument("--runs", default="runs", help="output root holding the default MLflow store")
    report.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else a sqlite store under --runs)"
    )
    report.add_argument("--log-to-mlflow", action="store_true", help="also log the report to the sweep's parent run")
    report.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="open the MLflow UI on the sweep's tracking store (an http URI: print it)")
    ui.add_argument("experiment", nargs="?", help="sweep name: print the direct URL of its runs table")
    ui.add_argument("--out", default="runs", help="output root of the sweeps")
    ui.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else a sqlite store under --out)"
    )
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ConfigError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished work is kept; run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
