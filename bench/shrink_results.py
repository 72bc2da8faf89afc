"""Keep results/ small, so the tracked tree stays under 5 MB: figures as 48-colour palette PNGs, trial tables at
float32 precision.

Matplotlib writes full-colour RGBA PNGs; the study figures (lines, scatter points, a few colour maps) keep their
text and marks in a 48-colour palette (a colour bar shows steps of about 1/15 of its range) and shrink about 5x.
The report writes every float of tables/*.csv with 17 significant digits; the metrics come from float32 models, so
digits past the 7th carry nothing, and writing 7 makes a trial table a third smaller. Palette PNGs of at most 48
colours and numbers of 7 significant digits are left alone, so a second run changes nothing (`make results` runs it
before writing the index).

    python -m bench.shrink_results [FOLDER ...]     # default: results/
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

from PIL import Image

from bench.common import RESULTS

PALETTE = 48
"""Colours of a results figure: enough for the plots' lines, points and text, with visible steps in colour bars."""


def shrink_png(path: Path, colors: int = PALETTE) -> int:
    """Re-save `path` as an optimised palette PNG when that is smaller; returns the bytes saved (0: left alone).

    Args:
        path: a PNG file.
        colors: palette size (median cut, no dithering: flat plot colours stay flat).
    """
    with Image.open(path) as image:
        if image.mode == "P" and len(image.getcolors(maxcolors=256) or range(257)) <= colors:
            return 0
        rgb = image.convert("RGB")
        palette = rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        dpi = image.info.get("dpi")
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", optimize=True, **({"dpi": dpi} if dpi else {}))
    before = path.stat().st_size
    if buffer.tell() >= before:
        return 0
    path.write_bytes(buffer.getvalue())
    return before - buffer.tell()


LONG_FLOAT = re.compile(r"-?\d+\.\d{8,}(?:[eE][-+]?\d+)?")
"""A decimal number with 8 or more digits after the point (what a float64 repr of a float32 metric looks like)."""


def round_floats(path: Path, digits: int = 7) -> int:
    """Rewrite the long decimal numbers of a text table (`path`, e.g. tables/trials.csv; numbers inside JSON lists
    too) with `digits` significant digits; returns the bytes saved (0: nothing to round).

    Args:
        path: a CSV (or any text) file.
        digits: significant digits kept (7: float32 precision).
    """
    text = path.read_text()
    rounded = LONG_FLOAT.sub(lambda m: f"{float(m.group()):.{digits}g}", text)
    if rounded == text:
        return 0
    path.write_text(rounded)
    return len(text) - len(rounded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=[str(RESULTS)], help="folders searched for *.png, tables/*.csv")
    args = parser.parse_args(argv)
    folders = [Path(folder) for folder in args.folders]
    saved = sum(shrink_png(path) for folder in folders for path in sorted(folder.rglob("*.png")))
    saved += sum(round_floats(path) for folder in folders for path in sorted(folder.rglob("tables/*.csv")))
    if saved:
        print(f"shrink_results: {saved / 1e6:.2f} MB saved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
