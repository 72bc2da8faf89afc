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

console = Console()


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
    from study.trial.pipeline import run_trial

    cfg = load_trial_config(args.config, parse_overrides(args.set))
    out_dir = check_writable(Path(args.out) / cfg.name, "--out")
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
    console.print(f"results: {out_dir / 'result.json'}  figures: {out_dir / 'similarity.png'}, {out_dir / 'r2_per_layer.png'}")
    return 0


def enable_ray_token_auth(address: str | None) -> None:
    """Joining a cluster whose head was started by `ray start --head` (Ray >= 2.5x) needs token
    authentication. When a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token) and RAY_AUTH_MODE is unset, switch token mode on. Ray reads this when it
    is imported, so this runs before the first `import ray`."""
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file()
    if address and address != "local" and "RAY_AUTH_MODE" not in os.environ and has_token:
        os.environ["RAY_AUTH_MODE"] = "token"


def cmd_sweep(args: argparse.Namespace) -> int:
    enable_ray_token_auth(args.address)
    from study.sweep.driver import run_sweep

    out_root = check_writable(Path(args.out), "--out")
    table = run_sweep(args.spec, out_root, address=args.address, tracking_uri=args.tracking_uri, resume=args.command == "resume",
                      overrides=parse_overrides(args.set), verbose=args.verbose)
    return 0 if len(table) and (table["status"] != "failed").all() else 1


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    from study.sweep.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(Path(args.runs))
    out_dir = check_writable(Path(args.out or Path(args.runs) / "reports" / "-".join(args.experiments)), "--out")
    path = write_report(args.experiments, uri, out_dir, log_to_mlflow=args.log_to_mlflow)
    console.print(f"report: {path}  (Markdown and figures beside it)")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from study.sweep.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(Path(args.out))
    console.print(f"MLflow UI for {uri} at http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                            "--host", args.host, "--port", str(args.port)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raptor-study", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one trial in this process (no Ray)")
    trial.add_argument("--config", help="trial config YAML (defaults: digits, 8-block teacher, k=2)")
    trial.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. raptor.k=3")
    trial.add_argument("--out", default="runs/trials", help="output folder (a subfolder per trial name)")
    trial.set_defaults(func=cmd_trial)

    for name, text in (("sweep", "launch a sweep: Ray Tune + Optuna over trials, Ray Train workers, MLflow tracking"),
                       ("resume", "continue an interrupted sweep (finished trials are not rerun)")):
        sweep = sub.add_parser(name, help=text)
        sweep.add_argument("spec", help="search space YAML, e.g. search_spaces/smoke.yaml")
        sweep.add_argument("--out", default="runs", help="output root: MLflow store, Ray state, trial folders, cache")
        sweep.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="show Ray's and Tune's own output instead of the progress view")
        sweep.add_argument("--address", help="join a running Ray cluster (host:port or 'auto'); default: start a local Ray")
        sweep.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store under --out)")
        sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override the spec: search.num_samples=4, space.raptor.k='{choice: [2]}', "
                                "or a base trial field, e.g. data.path=/data/imagenet (resume needs the same)")
        sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="statistics + figures of one or more sweeps (HTML + Markdown)")
    report.add_argument("experiments", nargs="+", help="MLflow experiment name(s), i.e. sweep names")
    report.add_argument("--out", help="report folder (default: RUNS/reports/EXPERIMENT)")
    report.add_argument("--runs", default="runs", help="output root holding the default MLflow store")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store under --runs)")
    report.add_argument("--log-to-mlflow", action="store_true", help="also log the report to the sweep's parent run")
    report.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="open the MLflow UI on the sweep's tracking store")
    ui.add_argument("--out", default="runs", help="output root of the sweeps")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store under --out)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished work is kept; run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
