"""`raptor-study` command line: trial, sweep, resume, report, ui, dashboard.

`--out` is the runs root on every subcommand that reads or writes a sweep (default `runs/`: the MLflow store, Ray
state, trial folders, reports; layout in study/sweep/paths.py)."""

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
from study.store import DEFAULT_RUNS_ROOT, STORE_FILE, TRACKING_URI_ENV, redact, tracking_uri

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


def tracking_uri_of(args: argparse.Namespace, root: str | Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the SQLite store under `root` (study/store.py)."""
    return tracking_uri(args.tracking_uri, root)


def cmd_sweep(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    enable_ray_token_auth(address)
    from study.sweep.space import as_sweep_spec

    overrides = parse_overrides(args.set)
    spec = as_sweep_spec(args.spec, overrides)  # a bad spec fails here, before Ray and MLflow are imported
    name = spec.name
    if getattr(args, "dry_run", False):
        from study.sweep.plan import Plan

        for line in Plan.here(spec).lines():
            console.print(line, soft_wrap=True, highlight=False)
        return 0
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


OLD_REPORT_FORM = (
    "report: --runs and `--out REPORT_FOLDER` are deprecated (one release): --out is the runs root on every "
    "subcommand, --report-dir the report folder"
)


def report_folders(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(runs root, report folder or None for its default) from `report`'s flags; the old form (--runs ROOT, or
    --out naming the report folder: a folder without a store) still works, with a one-line notice."""
    if args.runs is not None:
        err_console.print(f"[yellow]note:[/yellow] {OLD_REPORT_FORM}", highlight=False, soft_wrap=True)
        return Path(args.runs), Path(args.out) if args.out else (Path(args.report_dir) if args.report_dir else None)
    root = Path(args.out or DEFAULT_RUNS_ROOT)
    explicit_store = args.tracking_uri or os.environ.get(TRACKING_URI_ENV)
    if args.out and not args.report_dir and not explicit_store and not (root / STORE_FILE).is_file():
        if (Path(DEFAULT_RUNS_ROOT) / STORE_FILE).is_file():  # `report NAME --out REPORT_FOLDER`, the old form
            err_console.print(f"[yellow]note:[/yellow] {OLD_REPORT_FORM}", highlight=False, soft_wrap=True)
            return Path(DEFAULT_RUNS_ROOT), root
    return root, Path(args.report_dir) if args.report_dir else None


def cmd_report(args: argparse.Namespace) -> int:
    if not args.verbose:  # one progress bar per downloaded result.json otherwise
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root, report_dir = report_folders(args)
    uri = tracking_uri_of(args, root)
    from study.sweep.browse import known_experiments, missing_experiments

    missing = missing_experiments(uri, args.experiments)
    if missing:
        raise ConfigError(
            f"report: no MLflow experiment named {missing[0]!r} at {redact(uri)} "
            f"(known: {', '.join(known_experiments(uri)) or 'none'}; --out RUNS_ROOT / --tracking-uri)"
        )
    out_dir = check_writable(report_dir or root / "reports" / "-".join(args.experiments), "--report-dir")
    from analysis.report import write_report  # the statistics and figures: only once the input is known good

    path = write_report(args.experiments, uri, out_dir, log_to_mlflow=args.log_to_mlflow)
    console.print(f"report: {path}  (Markdown and figures beside it)", soft_wrap=True)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from study.sweep.browse import ui

    return ui(tracking_uri_of(args, args.out), Path(args.out), args.experiment, args.host, args.port, args.verbose)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from study.sweep.browse import dashboard

    return dashboard(Path(args.out).resolve(), args.sweep, args.host, args.port, args.verbose)


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
        add_root(sweep)
        add_verbose(sweep, "show Ray's and Tune's own output instead of the progress view")
        sweep.add_argument(
            "--address",
            help="join a running Ray cluster (host:port or 'auto'); default: RAY_ADDRESS, else start a local Ray",
        )
        add_tracking_uri(sweep)
        if name == "sweep":
            sweep.add_argument(
                "--new",
                action="store_true",
                help="launch even if the experiment holds a sweep of this name with another spec hash",
            )
            sweep.add_argument(
                "--dry-run",
                action="store_true",
                help="validate the spec and print the trial count, the search, the teachers to train, the resources "
                "per trial and how many run at once; start nothing",
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
    report.add_argument(
        "--out", default=None, help=f"runs root holding the MLflow store (default: {DEFAULT_RUNS_ROOT})"
    )
    report.add_argument("--report-dir", help="report folder (default: OUT/reports/EXPERIMENT)")
    report.add_argument("--runs", default=None, help=argparse.SUPPRESS)  # the old runs-root flag, for one release
    add_tracking_uri(report)
    report.add_argument("--log-to-mlflow", action="store_true", help="also log the report to the sweep's parent run")
    report.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="open the MLflow UI on the sweep's runs table (an http URI: print it)")
    ui.add_argument("experiment", nargs="?", help="sweep name: open (print) the URL of its runs table")
    add_root(ui)
    add_tracking_uri(ui)
    add_server(ui, 5000)
    add_verbose(ui, "show the server's own output (one line per HTTP request) instead of logging it to OUT/logs")
    ui.set_defaults(func=cmd_ui)

    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on a sweep's Optuna study (the [dashboard] extra)")
    dashboard.add_argument("sweep", nargs="?", help="sweep name (default: the one sweep with an Optuna study)")
    add_root(dashboard)
    add_server(dashboard, 8080)
    add_verbose(dashboard, "show the server's own output instead of logging it to OUT/logs")
    dashboard.set_defaults(func=cmd_dashboard)
    return parser


def add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default=DEFAULT_RUNS_ROOT,
        help="runs root: MLflow store, Ray state, trial folders, cache, reports (default: runs)",
    )


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else a sqlite store under --out)"
    )


def add_server(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    parser.add_argument("--port", type=int, default=port)


def add_verbose(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=text)


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
