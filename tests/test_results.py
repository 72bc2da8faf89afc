"""results/ is a product: every study folder has its manifest, summary, report, figures and trial table; the index
and the README's replication table are what `make results` writes; the tracked tree stays under 5 MB; every spec's
header names its purpose, run time, results folder and command (results/README.md: the layout)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from analysis.results_index import BEGIN, END, MANIFEST_FIELDS, RESULTS, ROOT, index_block, replace_between, targets
from bench.study_manifest import build_manifest, sweep_record
from study.contract import (
    FAILED,
    FINISHED,
    GIT_COMMIT_TAG,
    PRIMARY_PREDICTOR,
    PRIMARY_TARGET,
    PRUNED,
    ROLE_SWEEP,
    ROLE_TAG,
    RUNNING,
    SPEC_HASH_TAG,
    SWEEP_TAG,
    trials_count_metric,
)

STUDIES = sorted(p.parent for p in RESULTS.glob("*/summary.json"))
LINK = re.compile(r"\]\(([^)#\s]+)\)")


def test_the_committed_index_and_readme_table_are_what_make_results_writes():
    for path, text in targets().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make results`"


def test_make_results_is_idempotent_and_lists_studies_and_measurements(tmp_path):
    root = tmp_path / "results"
    study = root / "toy_study"
    (study / "tables").mkdir(parents=True)
    fit = {"predictor": PRIMARY_PREDICTOR, "target": PRIMARY_TARGET, "n_teachers": 7, "slope": 0.5}
    fit |= {"slope_ci": [0.25, 0.75], "r2": 0.6, "r2_ci": [0.4, 0.8]}
    trend = {"target": PRIMARY_PREDICTOR, "slope": -0.1, "slope_ci": [-0.2, -0.05], "r2": 0.3, "r2_ci": [0.1, 0.5]}
    summary = {"counts": {FINISHED: 20, FAILED: 1}, "primary": fit, "sd_trend": [trend]}
    (study / "summary.json").write_text(json.dumps(summary))
    (study / "manifest.json").write_text(json.dumps({"title": "a toy", "device": "cpu", "wall_s": 61.4}))
    (root / "toy_bench").mkdir()
    (root / "toy_bench" / "README.md").write_text("# python -m bench.toy\n\nrows\n")
    for folder in (root, tmp_path):
        (folder / "README.md").write_text(f"intro\n\n{BEGIN}\nold\n{END}\n\ntail\n")

    first = targets(root, tmp_path / "README.md")
    for path, text in first.items():
        path.write_text(text)
    assert targets(root, tmp_path / "README.md") == first  # a second run writes the same text
    index = first[root / "README.md"]
    assert index.startswith("intro\n\n") and index.endswith(f"{END}\n\ntail\n") and "\nold\n" not in index
    row = "| [toy_study](toy_study/report.md) | a toy | cpu | 20 / 1 | 7 | 61 s |"
    assert row in index and "slope 0.5 [0.25, 0.75], partial R² 0.6 [0.4, 0.8]" in index
    assert "| [toy_bench](toy_bench/README.md) | python -m bench.toy |" in index
    assert index_block(root) in index


def test_replace_between_needs_both_markers():
    assert replace_between(f"a{BEGIN}b{END}c", "X") == f"a{BEGIN}\nX\n{END}c"
    with pytest.raises(ValueError, match="markers"):
        replace_between(f"a{END}b{BEGIN}", "X")


def test_the_readme_table_gives_the_reports_verdicts(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(RESULTS / "fashion_sd_study", root / "fashion_sd_study", ignore=shutil.ignore_patterns("*.png"))
    path = root / "fashion_sd_study" / "summary.json"
    summary = json.loads(path.read_text())
    summary["replication"][0]["verdict"] = "differs: a planted verdict"
    path.write_text(json.dumps(summary))
    for folder in (root, tmp_path):
        (folder / "README.md").write_text(f"{BEGIN}\n{END}\n")
    table = targets(root, tmp_path / "README.md")[tmp_path / "README.md"]
    first = summary["replication"][0]["finding"]
    assert "| differs: a planted verdict. Evidence: " in next(
        line for line in table.splitlines() if line.startswith(f"| {first} |")
    )
    fidelity = next(line for line in table.splitlines() if line.startswith("| higher SD raises Raptor fidelity"))
    assert "mean over layers:" in fidelity  # fidelity rows carry the final layer and the mean over layers


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_every_study_folder_holds_the_product(study):
    for name in ("manifest.json", "summary.json", "report.md", "README.md", "tables/trials.csv"):
        assert (study / name).is_file(), f"{study.name}/{name}"
    manifest = json.loads((study / "manifest.json").read_text())
    assert set(MANIFEST_FIELDS) <= set(manifest), set(MANIFEST_FIELDS) - set(manifest)
    assert manifest["study"] == study.name and (ROOT / manifest["spec"]).is_file()
    counts = json.loads((study / "summary.json").read_text())["counts"]
    assert {k: manifest["trials"][k] for k in counts} == counts  # the manifest's counts are the report's
    report = (study / "report.md").read_text()
    figures = {p.name for p in (study / "figures").glob("*.png")}
    assert figures <= set(re.findall(r"figures/([\w.-]+\.png)", report))  # no figure the report does not show


def test_every_markdown_link_under_results_resolves():
    broken = [
        f"{md.relative_to(ROOT)}: {target}"
        for md in RESULTS.rglob("*.md")
        for target in LINK.findall(md.read_text())
        if "://" not in target and not (md.parent / target).exists()
    ]
    assert broken == []


def test_no_html_report_or_console_log_is_committed_under_results():
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    kept = {"results/throughput/dynamics_time_h200.log"}  # the only record of that measurement, cited by study/
    assert [p for p in tracked if p.endswith((".html", ".log", "_log.txt")) and p not in kept] == []


def test_the_tracked_tree_is_under_5_mb():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    files = [ROOT / p for p in listed.stdout.split("\0") if p]
    if listed.returncode or not files:
        pytest.skip("not a git checkout")
    total = sum(p.stat().st_size for p in files if p.is_file())
    assert total < 5_000_000, f"{total / 1e6:.2f} MB tracked: shrink figures (make results) or drop regenerable files"


def spec_header(text: str) -> dict[str, str | None]:
    """The four things a spec's header comment names, each with the header text from its label on (None: missing):
    purpose (a `Purpose:` line, else the opening sentence), run time (`Run time:` or `Expected run time (...):`),
    results folder (`Results:` or `Results folder:`) and command (`Command:` or `Commands (...):`)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    labels = {  # a label opens a line or a sentence
        "purpose": r"(^|\. )purpose:",
        "run time": r"(^|\. )(expected )?run time\b[^:]*:",
        "results": r"(^|\. )results( folder)?:",
        "command": r"(^|\. )commands?\b[^:.]*:",
    }
    found = {}
    for name, pattern in labels.items():
        hits = ((i, re.search(pattern, line, re.IGNORECASE)) for i, line in enumerate(lines))
        at, hit = next(((i, h) for i, h in hits if h), (None, None))
        found[name] = None if hit is None else " ".join([lines[at][hit.end() :].strip(), *lines[at + 1 :]])
    if found["purpose"] is None and lines and len(lines[0].split()) >= 5:
        found["purpose"] = lines[0]
    return found


@pytest.mark.parametrize("spec", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_spec_header_names_purpose_run_time_results_and_command(spec):
    header = spec_header(spec.read_text())
    assert None not in header.values(), f"{spec.name}: header lacks {[k for k, v in header.items() if v is None]}"
    assert re.search(r"cpu|gpu|h100|h200|x2|core|machine", header["run time"].split(".")[0], re.IGNORECASE)
    assert "results/" in header["results"]
    assert spec.name in header["command"], f"{spec.name}: the command does not name the spec"


def test_the_spec_header_check_accepts_both_header_styles_and_names_what_is_missing():
    labelled = "# Purpose: x\n# Run time: 5 min on one H200\n# Results: results/x/\n# Command: raptor-study x.yaml\n"
    assert spec_header(labelled)["run time"].startswith("5 min on one H200 Results: results/x/")
    prose = (
        "# Max-cut vs random partitions on digits, per teacher and k.\n# Expected run time (estimated): 15 min on 2"
        " CPU cores.\n# Results folder: results/m/. Commands (then a report):\n#   raptor-study sweep m.yaml\nname: m\n"
    )
    header = spec_header(prose)
    assert header["purpose"].startswith("Max-cut") and header["results"].startswith("results/m/")
    assert header["command"] == " raptor-study sweep m.yaml"
    assert spec_header("# Short.\n# Command: a\n")["run time"] is None and spec_header("# Short.\n")["purpose"] is None


def test_the_manifest_helper_reads_the_sweep_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for sweep, (finished, failed) in {"toy_a": (5, 1), "toy_b": (3, 0)}.items():
        run = client.create_run(
            client.create_experiment(sweep),
            start_time=1_700_000_000_000,
            tags={ROLE_TAG: ROLE_SWEEP, SWEEP_TAG: sweep, SPEC_HASH_TAG: f"hash_{sweep}", GIT_COMMIT_TAG: "abc123"},
        )
        for status, n in ((FINISHED, finished), (FAILED, failed), (PRUNED, 0), (RUNNING, 0)):
            client.log_metric(run.info.run_id, trials_count_metric(status), n)
        client.set_terminated(run.info.run_id, end_time=1_700_000_000_000 + 60_000 * finished)
    records = {sweep: sweep_record(client, sweep) for sweep in ("toy_a", "toy_b")}
    manifest = build_manifest(tmp_path / "toy", "search_spaces/smoke.yaml", records, "cpu", ["make demo"], gpus=2)
    assert set(MANIFEST_FIELDS) <= set(manifest)
    assert manifest["spec_hash"] == {"toy_a": "hash_toy_a", "toy_b": "hash_toy_b"}
    assert manifest["code_commit"] == "abc123"
    assert manifest["trials"] == {FINISHED: 8, FAILED: 1, PRUNED: 0, RUNNING: 0}
    assert manifest["wall_s"] == 480.0 and manifest["gpu_s"] == 960.0  # 300 s + 180 s, 2 GPUs
    assert manifest["start"] == "2023-11-14T22:13:20+00:00" and manifest["end"] == "2023-11-14T22:18:20+00:00"
