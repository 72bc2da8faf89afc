"""`raptor-study` command line: trial, sweep, resume, report, ui."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from .config import ConfigError, load_trial_config

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
    from .trial import run_trial

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raptor-study", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one trial in this process (no Ray)")
    trial.add_argument("--config", help="trial config YAML (defaults: digits, 8-block teacher, k=2)")
    trial.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. raptor.k=3")
    trial.add_argument("--out", default="runs/trials", help="output folder (a subfolder per trial name)")
    trial.set_defaults(func=cmd_trial)
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
