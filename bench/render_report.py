"""Render a report.html to PNG with headless Chromium, to check by eye that the figures show.

    python -m bench.render_report path/to/report.html --png report.png
    python -m bench.render_report --synthetic --out /tmp/report-demo   # build a synthetic sweep + report first

Needs a Chromium binary (`apt-get install -y chromium` on Debian); exits with
status 2 and says so when none is found. The screenshot is one tall page of
``--width`` x ``--height`` pixels: raise ``--height`` if the page is cut off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The first Chromium-family binary on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, width: int, height: int, browser: str) -> None:
    """Headless Chromium: load ``html`` from disk and save a ``width`` x ``height`` screenshot to ``png``."""
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png.resolve()}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise RuntimeError(f"{browser} exited cleanly but wrote no {png}")


def synthetic_report(out: Path) -> Path:
    """A synthetic sweep in a fresh sqlite MLflow store under ``out``, and its report."""
    from analysis.report import write_report
    from study.sweep.synthetic import write_synthetic_sweep

    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    sweep = write_synthetic_sweep(uri, "synthetic-sweep", artifact_location=(out / "artifacts").resolve().as_uri())
    return write_report([sweep.experiment], uri, out / "report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", type=Path, help="report.html to render")
    parser.add_argument("--synthetic", action="store_true", help="first write a synthetic sweep and its report")
    parser.add_argument("--out", type=Path, default=Path("runs/report-demo"), help="folder for --synthetic")
    parser.add_argument("--png", type=Path, help="screenshot path (default: next to the HTML)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=9000)
    args = parser.parse_args(argv)
    if args.synthetic == (args.html is not None):
        parser.error("give a report.html or --synthetic (not both)")
    browser = find_browser()
    if browser is None:
        print(
            f"no Chromium found (tried {', '.join(BROWSERS)}); install with: apt-get install -y chromium",
            file=sys.stderr,
        )
        return 2
    html = synthetic_report(args.out) if args.synthetic else args.html
    png = args.png or html.with_suffix(".png")
    screenshot(html, png, args.width, args.height, browser)
    print(f"{html} -> {png} ({args.width}x{args.height}, {browser})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
