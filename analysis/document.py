"""A report as titled sections of text, images and tables, rendered to self-contained HTML and to Markdown.

HTML embeds every image as a base64 PNG data URI and carries its own CSS: no
external URL. Markdown links the PNGs written next to it (see `write_images`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

IMAGE_DIR = "figures"

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, caption { color: #555; font-size: .9em; text-align: left; padding: .3em 0; }
table { border-collapse: collapse; font-size: .82em; margin: .8em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; }
th { background: #f0f0f0; }
div.scroll { overflow-x: auto; }
tr:nth-child(even) td { background: #fafafa; }
p.note { color: #7a4b00; background: #fff6e0; padding: .4em .6em; border-left: 3px solid #e0a000; }
"""


@dataclass(frozen=True)
class Image:
    """A PNG figure; ``name`` is its file stem in the Markdown export."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Table:
    """A table shown with numbers to 3 significant digits (p-values 2) and missing values as '–'."""

    caption: str
    frame: pd.DataFrame


@dataclass(frozen=True)
class Note:
    """A highlighted remark: an exclusion, a degenerate case, a caveat."""

    text: str


@dataclass
class Section:
    """A titled run of blocks, in order: plain paragraphs (str), `Note`, `Image`, `Table`."""

    title: str
    blocks: list[str | Note | Image | Table] = field(default_factory=list)


def format_cell(value: object, column: str) -> str:
    """One table cell as text: p-values ('*_p', '*_p_adj') to 2 significant digits, other floats to 3."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2g}" if column.endswith(("_p", "_p_adj")) else f"{value:.3g}"
    return str(value)


def format_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell of ``frame`` through `format_cell`."""
    return pd.DataFrame({c: [format_cell(v, str(c)) for v in frame[c].tolist()] for c in frame.columns}, dtype=object)


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table, cells through `format_cell` (text cells as they are)."""
    cells = format_frame(frame)
    header = [str(c) for c in cells.columns]
    rows = [[v.replace("|", "\\|") for v in row] for row in cells.itertuples(index=False)]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(table + ["| " + " | ".join(row) + " |" for row in rows])


def render_html(title: str, sections: Sequence[Section]) -> str:
    """A standalone HTML page: inline CSS, images as data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            body.append(_html_block(block))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The same content as Markdown, images linked as ``figures/<name>.png``."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [_markdown_block(block), ""]
    return "\n".join(lines)


def write_images(sections: Sequence[Section], folder: Path) -> list[Path]:
    """Write every image as ``folder/figures/<name>.png``; returns the paths."""
    (folder / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    paths = []
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Image):
                path = folder / IMAGE_DIR / f"{block.name}.png"
                path.write_bytes(block.png)
                paths.append(path)
    return paths


def _html_block(block: str | Note | Image | Table) -> str:
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        caption = html.escape(block.caption)
        image = f'<img alt="{caption}" src="data:image/png;base64,{data}">'
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"
    if isinstance(block, Table):
        table = format_frame(block.frame).to_html(index=False, escape=True, border=0)
        opening = table.index(">") + 1
        caption = f"<caption>{html.escape(block.caption)}</caption>"
        return f'<div class="scroll">{table[:opening]}{caption}{table[opening:]}</div>'
    if isinstance(block, Note):
        return f'<p class="note">{html.escape(block.text)}</p>'
    return f"<p>{html.escape(block)}</p>"


def _markdown_block(block: str | Note | Image | Table) -> str:
    if isinstance(block, Image):
        return f"![{block.caption}]({IMAGE_DIR}/{block.name}.png)\n\n*{block.caption}*"
    if isinstance(block, Table):
        return f"*{block.caption}*\n\n" + markdown_table(block.frame)
    if isinstance(block, Note):
        return f"> **Note:** {block.text}"
    return block
