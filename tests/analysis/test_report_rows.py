"""The report says only what n allows, and the replication rows of the paper's own measurements
(docs/science.md §7)."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pandas as pd
import pytest

from analysis.figures import MAX_COLUMNS, PANEL
from analysis.paper_rows import paper_measurement_rows, raptor_r2_table
from analysis.report import write_trials_report
from analysis.sweep import Reading
from study.sweep.simulate import simulate_clustered, simulate_paper_measurements

X, Y = "phase.cosine.within_sim", "r2_pooled.final"
DPI = 110


def png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """3 teachers x 4 trials, as a smoke sweep has: a demo."""
    trials = simulate_clustered(3, 4, teacher_slope=0.5, between_sd=0.01, within_sd=0.002,
                                rng=np.random.default_rng(0))  # fmt: skip
    trials = trials.assign(sweep="smoke", run_id=[f"r{i}" for i in range(len(trials))])
    trials["r2.layer"] = [list(np.linspace(0.99, v, 8)) for v in trials[Y]]
    trials.attrs["layer_metrics"] = ["r2.layer"]
    out = tmp_path_factory.mktemp("small")
    write_trials_report(trials, out, title="smoke", source="simulated", n_resamples=99,
                        reading=Reading(predictor=X, target=Y, source="given"))  # fmt: skip
    return out


def test_fewer_than_five_teachers_print_no_r2_ci_or_p(small_report):
    page = (small_report / "report.md").read_text().split("## Methods")[0]  # the methods describe the CIs
    for forbidden in ("95% CI", "naive (trials as independent)", "slope_p_adj", "spearman_p", "p (Holm)",
                      "CI (boot)", "naive 95%"):  # fmt: skip
        assert forbidden not in page, forbidden
    assert not re.search(r"p = \d", page) and not re.search(r"\[-?\d[\d.e-]*, -?\d", page)  # no p, no interval
    assert 1 <= page.count("Fewer than 5 teachers: no R², CI or p-value") <= 3  # in place of each withheld part
    assert "Demo, not a finding" in page


def test_a_repeated_note_is_printed_once(small_report):
    page = (small_report / "report.md").read_text()
    assert page.count("too few teachers (n = 3 < 5)") <= 3  # headline, levels note, exploratory note: not per row
    assert re.search(r"\(1\) in \d+ rows: too few teachers", page)


def test_no_figure_strip_is_wider_than_three_panels(small_report):
    widths = {p.name: png_width(p) for p in (small_report / "figures").glob("*.png")}
    assert widths
    for name, width in widths.items():
        assert width <= (MAX_COLUMNS * PANEL * 1.25 + 2) * DPI, name


def test_importance_note_says_what_it_means(small_report):
    page = (small_report / "report.md").read_text()
    assert (
        "No importances for r2.mean, r2_pooled.mean," in page and ": the metric is not logged by these trials." in page
    )
    assert page.count("No importances for") == 1  # one note per reason, not one per metric


@pytest.fixture(scope="module")
def paper_trials() -> pd.DataFrame:
    return simulate_paper_measurements(12, np.random.default_rng(0))


def test_paper_rows_read_the_planted_measurements(paper_trials):
    rows = paper_measurement_rows(paper_trials).set_index("finding")
    maxcut = rows.loc["max-cut (DP) beats random contiguous partitions, k=2"]
    assert maxcut["verdict"] == "agrees" and maxcut["n_teachers"] == 12 and "DP beats 1.000" in maxcut.iloc[1]
    sd0 = rows.loc["Raptor r2_pooled R² at SD 0 (per-SD mean; the paper: CIFAR-100)"]
    assert sd0["paper"] == "~0.88" and sd0["verdict"] == "agrees" and sd0["n_teachers"] == 6
    assert "Raptor r2 R² at SD 0.6 (per-SD mean; the paper: CIFAR-100)" in rows.index
    for n in (1, 2, 3):
        assert rows.loc[f"layer replacement, n={n}: intra-phase keeps accuracy, inter-phase collapses",
                        "verdict"] == "agrees"  # fmt: skip
    stages = [f for f in rows.index if f.startswith("training stage")]
    assert len(stages) == 2 and all(rows.loc[f, "verdict"] == "agrees" for f in stages)
    assert any(f.startswith("k-table: acc.finetuned_ratio at k=2") for f in rows.index)
    ablation = [f for f in rows.index if f.startswith("ablation:")]
    assert [f.split(" (")[0] for f in ablation] == [
        "ablation: teacher forcing only", "ablation: + autoregressive loss, annealed teacher forcing",
        "ablation: + depth scaling", "ablation: + cls weighting", "ablation: + stage 2", "ablation: + fine-tuned probe",
    ]  # fmt: skip
    assert rows.loc[ablation[0], "paper"] == "3.9% (ratio 0.046)"
    assert any(f.startswith("teacher accuracy (acc.head_teacher) vs SD") for f in rows.index)


def test_paper_rows_are_omitted_when_a_store_lacks_their_metrics(paper_trials):
    older = paper_trials.drop(columns=[c for c in paper_trials if c.startswith(("dyn.replace", "acc.head",
                                       "acc.finetuned", "teacher.snapshot", "distill.arm"))])  # fmt: skip
    rows = paper_measurement_rows(older[older["partition.method"] == "dp"].drop(columns="partition.method"))
    assert all(f.startswith("Raptor ") for f in rows["finding"])
    assert paper_measurement_rows(pd.DataFrame({"teacher.key": ["a"]})).empty


def test_raptor_r2_table_has_final_and_mean_per_sd_kind_and_group(paper_trials):
    table = raptor_r2_table(paper_trials)
    assert set(table["teacher.sd_rate"]) == {0.0, 0.6} and set(table["R²"]) == {"r2", "r2_pooled"}
    assert table["final"].str.match(r"0\.\d{3} \[").all() and table["mean"].str.match(r"0\.\d{3} \[").all()


def test_five_teachers_per_level_read_not_testable(tmp_path):
    trials = simulate_clustered(10, 3, teacher_slope=0.5, between_sd=0.01, within_sd=0.002,
                                rng=np.random.default_rng(1), sd_rates=(0.0, 0.6))  # fmt: skip
    trials = trials.assign(sweep="s", run_id=[f"r{i}" for i in range(len(trials))])
    write_trials_report(trials, tmp_path, title="s", source="simulated", n_resamples=99,
                        reading=Reading(predictor=X, target=Y, source="given"))  # fmt: skip
    table = pd.read_csv(tmp_path / "tables" / "paper_comparison.csv").set_index("finding")
    per_sd = table.loc[f"R² of {Y} ~ {X} within each SD level"]
    assert per_sd["verdict"].startswith("not testable: 5 teachers per level")
    assert table.loc["higher SD raises layer-layer similarity", "verdict"] == "agrees"  # 10 teachers: testable
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {row["finding"]: row for row in summary["replication"]}
    assert rows[f"R² of {Y} ~ {X} within each SD level"]["verdict"] == per_sd["verdict"]
    assert summary["disclosures"] == []
