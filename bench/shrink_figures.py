"""Re-save the PNG figures under results/ as 256-colour palette PNGs, so the tracked tree stays under 5 MB.

Matplotlib writes full-colour RGBA PNGs; the study figures (lines, scatter points, a few colour maps) lose nothing
visible in a 256-colour palette and shrink about 3x. Files already in palette mode are left alone, so a second run
changes nothing (`make results` runs it before writing the index).

    python -m bench.shrink_figures [FOLDER ...]     # default: results/
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from bench.common import RESULTS


def shrink_png(path: Path, colors: int = 256) -> int:
    """Re-save `path` as an optimised palette PNG when that is smaller; returns the bytes saved (0: left alone).

    Args:
        path: a PNG file.
        colors: palette size (median cut, no dithering: flat plot colours stay flat).
    """
    with Image.open(path) as image:
        if image.mode == "P":
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=[str(RESULTS)], help="folders searched for *.png")
    args = parser.parse_args(argv)
    saved = sum(shrink_png(path) for folder in args.folders for path in sorted(Path(folder).rglob("*.png")))
    if saved:
        print(f"shrink_figures: {saved / 1e6:.2f} MB saved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
