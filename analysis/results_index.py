"""The results index: results/README.md and the README's replication table, written from the studies' summary.json.

Every folder of results/ with a summary.json is a study (results/README.md: the layout); every other folder with a
README.md is a measurement. `make results` (``python -m analysis.results_index``) rewrites the text between the
markers of results/README.md (one line per study with its headline numbers, one per measurement) and of the
repository's README.md (the replication table), so neither can disagree with the data. It is idempotent;
``--check`` only says whether the committed files are current (tests/test_results.py runs it).

Imports the standard library and `study.contract` only (the layer rule of tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.contract import PRIMARY_TARGET, SD_PARAM

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MANIFEST_FIELDS = (
    "study",
    "title",
    "spec",
    "spec_hash",
    "overrides",
    "sweeps",
    "code_commit",
    "device",
    "commands",
    "start",
    "end",
    "wall_s",
    "gpu_s",
    "trials",
    "sources",
)
"""Every manifest.json has these keys (null where unknown); `sources` says where each filled value came from."""


@dataclass(frozen=True)
class Study:
    """One study folder: its name, manifest.json and summary.json."""

    name: str
    manifest: dict[str, Any]
    summary: dict[str, Any]


def load_studies(root: Path = RESULTS) -> list[Study]:
    """The study folders under `root` (those with a summary.json), sorted by name; a missing manifest reads as {}."""
    studies = []
    for summary in sorted(root.glob("*/summary.json")):
        manifest = summary.with_name("manifest.json")
        studies.append(
            Study(
                summary.parent.name,
                json.loads(manifest.read_text()) if manifest.is_file() else {},
                json.loads(summary.read_text()),
            )
        )
    return studies


def measurements(root: Path = RESULTS) -> list[tuple[str, str]]:
    """(folder, first heading of its README.md) of every non-study folder under `root`."""
    rows = []
    for readme in sorted(root.glob("*/README.md")):
        if not readme.with_name("summary.json").exists():
            heading = next((line for line in readme.read_text().splitlines() if line.startswith("#")), "")
            rows.append((readme.parent.name, heading.lstrip("# ").strip()))
    return rows


def num(x: float | None) -> str:
    """Three significant digits; '–' for a missing value."""
    return "–" if x is None else f"{x:.3g}"


def ci(lo_hi: list[float] | None) -> str:
    return "[–]" if not lo_hi else f"[{num(lo_hi[0])}, {num(lo_hi[1])}]"


def fit_text(fit: dict[str, Any] | None, per: str = "") -> str:
    """'slope 0.962 [0.789, 1.14], partial R² 0.709 [0.559, 0.807]' of one summary fit; its note if it has no slope."""
    if not fit:
        return "–"
    if fit.get("slope") is None:
        return fit.get("note") or "–"
    slope = f"slope {num(fit['slope'])}{per} {ci(fit.get('slope_ci'))}"
    return f"{slope}, partial R² {num(fit.get('r2'))} {ci(fit.get('r2_ci'))}"


def rises(fit: dict[str, Any] | None) -> str:
    """Verdict on a 'rises' claim: the slope's 95% CI above 0 agrees, below 0 contradicts, else inconclusive."""
    lo_hi = (fit or {}).get("slope_ci")
    if not lo_hi:
        return "not testable here"
    return "agrees" if lo_hi[0] > 0 else "contradicts" if lo_hi[1] < 0 else "inconclusive (CI spans 0)"


def study_line(study: Study) -> str:
    """One index row: study, what ran, device, trials, teachers, the primary relation."""
    m, s = study.manifest, study.summary
    counts = s.get("counts", {})
    primary = s.get("primary") or {}
    relation = f"`{primary.get('target', '?')} ~ {primary.get('predictor', '?')}`: {fit_text(primary)}"
    trials = f"{counts.get('finished', '–')} / {counts.get('failed', '–')}"
    wall = "–" if m.get("wall_s") is None else f"{m['wall_s']:.0f} s"
    cells = [
        f"[{study.name}]({study.name}/report.md)",
        m.get("title") or "–",
        m.get("device") or "–",
        trials,
        str(primary.get("n_teachers", "–")),
        wall,
        relation,
    ]
    return "| " + " | ".join(cells) + " |"


def index_block(root: Path = RESULTS) -> str:
    """The generated part of results/README.md."""
    lines = [
        "## Studies",
        "",
        "| study | what | device | trials finished / failed | teachers | wall "
        "| primary relation (95% CI over teachers) |",
        "|---|---|---|---|---|---|---|",
        *(study_line(s) for s in load_studies(root)),
        "",
        "## Measurements",
        "",
        "| folder | what |",
        "|---|---|",
        *(f"| [{name}]({name}/README.md) | {what} |" for name, what in measurements(root)),
    ]
    return "\n".join(lines)


def relation_text(fit: dict[str, Any]) -> str:
    """The pooled relation with its between- and within-teacher slopes (docs/science.md §7)."""
    text = fit_text(fit)
    if fit.get("slope_between") is not None:
        text += f"; between teachers {num(fit['slope_between'])} {ci(fit.get('slope_between_ci'))}"
    if fit.get("slope_within") is not None:
        text += f", within {num(fit['slope_within'])} {ci(fit.get('slope_within_ci'))}"
    return text


def replication_rows(studies: dict[str, Study], main: str, replications: dict[str, str]) -> list[str]:
    """Rows of the README's replication table: the rows of study `main`'s report (its summary's ``replication``:
    final layer and mean over layers, the report's verdict), then the pooled relation of each of `replications`
    (label -> study folder)."""
    rows = []
    if main in studies:
        for row in studies[main].summary.get("replication") or []:
            ours = str(row.get("ours: final layer", "–"))
            mean = row.get("ours: mean over layers")
            if mean not in (None, "–", "not logged"):
                ours += f"; mean over layers: {mean}"
            verdict, evidence = row.get("verdict"), row.get("evidence")
            if evidence and evidence != "–":
                verdict = f"{verdict}. Evidence: {evidence}"
            rows.append(f"| {row.get('finding')} | {row.get('paper')} | {ours} ({main}) | {verdict} |")
    for label, name in replications.items():
        if name in studies:
            primary = studies[name].summary.get("primary") or {}
            target = primary.get("target", PRIMARY_TARGET)
            rows.append(
                f"| fidelity tracks similarity, pooled over SD{label} | yes | `{target}`: {relation_text(primary)}, "
                f"{primary.get('n_teachers', '–')} teachers ({name}) | {rises(primary)} |"
            )
    return rows


def readme_block(root: Path = RESULTS) -> str:
    """The generated replication table of the repository's README.md."""
    studies = {s.name: s for s in load_studies(root)}
    rows = replication_rows(
        studies,
        "fashion_sd_study",
        {
            " (digits, CPU)": "sd_study_cpu",
            " (digits, H200)": "sd_study_h200",
            " (digits, SD 0 / 0.6)": "sd_paper_levels_h200",
        },
    )
    head = [
        f"Written by `make results` from `results/*/summary.json`: the rows and verdicts of the reports (slopes per "
        f"unit of the predictor, `{SD_PARAM}` for the SD rows; a slope, its 95% CI and its p from one "
        "teacher-clustered OLS with t(G - 2); fidelity rows give the final layer and the mean over layers).",
        "",
        "| claim (paper) | paper | ours | verdict |",
        "|---|---|---|---|",
    ]
    return "\n".join(head + rows)


def replace_between(text: str, block: str) -> str:
    """`text` with everything between BEGIN and END replaced by `block` (the markers stay)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"markers {BEGIN} ... {END} not found")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def targets(root: Path = RESULTS, readme: Path = ROOT / "README.md") -> dict[Path, str]:
    """Each file `make results` writes -> its new text."""
    index = root / "README.md"
    return {
        index: replace_between(index.read_text(), index_block(root)),
        readme: replace_between(readme.read_text(), readme_block(root)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from what would be written")
    args = parser.parse_args(argv)
    stale = []
    for path, text in targets().items():
        if path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    verb = "stale" if args.check else "rewrote"
    for path in stale:
        print(f"{verb}: {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
