"""write_report from a real sqlite MLflow store: self-contained HTML, Markdown, paper table, MLflow logging."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.report import write_report
from analysis.sweep import Reading
from study.sweep.simulate import PLANTED_SLOPE
from study.sweep.synthetic import SyntheticSweep, write_synthetic_sweep

RESAMPLES = 200
IMG = re.compile(r'<img [^>]*src="([^"]*)"')


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SyntheticSweep]:
    """'rep': 24 finished of 6 teachers (20 with dynamics) + 2 failed + 2 pruned; 'tiny': 1 finished without dynamics
    + 1 failed; 'dead': 2 failed, no sweep run."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep = write_synthetic_sweep(uri, "rep", sd_rates=(0.0, 0.6), ks=(2, 3), teacher_seeds=(0, 1, 2),
                                  artifact_location=(root / "rep").as_uri())  # fmt: skip
    write_synthetic_sweep(uri, "tiny", sd_rates=(0.0,), ks=(2,), teacher_seeds=(0,), lambda_cls=(0.3,), n_failed=1,
                          n_pruned=0, n_without_dynamics=1, artifact_location=(root / "tiny").as_uri())  # fmt: skip
    client = MlflowClient(uri)
    dead = client.create_experiment("dead", artifact_location=(root / "dead").as_uri())
    for _ in range(2):
        run_id = client.create_run(dead, tags={"raptor.role": "trial", "raptor.status": "failed"}).info.run_id
        client.set_terminated(run_id, "FAILED")
    return uri, sweep


@pytest.fixture(scope="module")
def report(store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    uri, _ = store
    reading = Reading(target="r2.final", source="given")  # the synthetic trials carry no r2_pooled.final
    return write_report(["rep"], uri, tmp_path_factory.mktemp("report"), log_to_mlflow=True, reading=reading,
                        n_resamples=RESAMPLES)  # fmt: skip


def test_html_is_self_contained_with_embedded_figures(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    sources = IMG.findall(page)
    # similarity, per-layer by SD, emergence, dynamics, swaps, scatter, per-layer by k, accuracy, importances,
    # parallel coordinates
    assert len(sources) == 8
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)\s*=\s*"https?://', page)
    assert "<link" not in page and "<script" not in page and "<style>" in page


def test_report_content(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert "28 trials: 24 finished, 2 failed, 2 pruned, 0 never finished" in page
    assert "the other 4 are excluded" in page
    assert "acc.ratio in 1" in page  # the finished trial without acc.ratio is reported, not silently dropped
    for heading in ("Primary relation (pre-registered; teacher as the unit)", "Primary relation per SD rate and per k",
                    "Exploratory: every phase metric", "Layer-layer similarity and phases", "Fidelity per layer by SD",
                    "Raptor R² per SD rate", "Naive trial-level fits: fidelity vs phase structure",
                    "Naive fits per SD rate", "Naive fits per k", "Effect of SD rate", "R² per layer by k",
                    "Accuracy recovery vs k", "Hyperparameter importances", "Comparison with the paper",
                    "Methods"):  # fmt: skip
        assert heading in page
    comparison = page[page.index("Comparison with the paper") :]
    for figure in ("~0.88", "~0.94", "0.961", "0.982", "0.985", "fidelity tracks similarity", "layer replacement, n=2"):
        assert figure in comparison
    # 6 teachers: the relation is estimated, with its p flagged unreliable (< 10 teachers); 3 per SD level: none
    assert "Final layer: r2.final: slope" in page and "unreliable" in page and "Mean over layers: r2.mean" in page
    assert "Demo, not a finding" not in page and "too few teachers (n = 3 &lt; 5)" in page


def test_markdown_pngs_and_tables_are_written(report: Path) -> None:
    folder = report.parent
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", markdown)
    assert len(links) == 8 and all((folder / link).is_file() for link in links)
    assert (
        "| finding | paper | ours: final layer | ours: mean over layers | n_teachers | verdict | evidence |" in markdown
    )
    for name in (
        "trials",
        "fits",
        "ranking",
        "fits_by_sd",
        "fits_by_k",
        "sd_trend",
        "dynamics_by_sd",
        "paper_comparison",
    ):
        assert (folder / "tables" / f"{name}.csv").is_file()
    fits = pd.read_csv(folder / "tables" / "fits.csv").set_index(["y", "x"])
    planted = fits.loc[("r2.final", "phase.cosine.within_sim")]
    assert planted["slope_lo"] < PLANTED_SLOPE < planted["slope_hi"] and planted["n"] == 24
    assert planted["n_teachers"] == 6  # every fit states both counts, naive ones too


def test_dynamics_section(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    section = page[page.index("<h2>Dynamics</h2>") : page.index("<h2>Naive trial-level fits")]
    alts = dict(re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]*)"', section))
    assert len(alts) == 2  # curves of the selected teachers, swap accuracies per SD
    for data in alts.values():
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "20 of 24 finished trials carry dyn.* metrics" in section
    assert "dyn.raptor.gamma_cls_mid" in section and "dyn.swap.inter_acc_mean" in section and " ± " in section
    summary = pd.read_csv(report.parent / "tables" / "dynamics_by_sd.csv")
    swaps = summary.set_index(["metric", "sd"])["mean"]
    for sd in (0.0, 0.6):  # planted: swaps across a phase boundary cost more than inside a phase
        assert swaps[("dyn.swap.inter_acc_mean", sd)] < swaps[("dyn.swap.intra_acc_mean", sd)]
    teacher_n = summary.loc[summary["metric"] == "dyn.teacher.gamma_cls_mid", "n"]
    raptor_n = summary.loc[summary["metric"] == "dyn.raptor.gamma_cls_mid", "n"]
    assert teacher_n.sum() == 5 and raptor_n.sum() == 20  # teachers vs trials (the 4 without: one whole teacher)


def test_report_logged_to_the_sweep_parent_run(store, report: Path) -> None:
    uri, sweep = store
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(sweep.parent_run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures", "report/tables"} <= logged
    figures = {a.path for a in client.list_artifacts(sweep.parent_run_id, "report/figures")}
    assert "report/figures/fidelity_vs_similarity.png" in figures


def test_one_finished_trial_does_not_crash(store, tmp_path: Path) -> None:
    uri, _ = store
    page = write_report(["tiny"], uri, tmp_path, n_resamples=RESAMPLES).read_text(encoding="utf-8")
    assert "2 trials: 1 finished, 1 failed" in page
    assert "Naive trial-level fits (withheld)" in page and "Fewer than 5 teachers: no R², CI or p-value" in page
    assert "No finished trial carries dynamics" in page  # a note, no figure
    assert "Comparison with the paper" in page


def test_zero_finished_trials_and_no_sweep_run(store, tmp_path: Path) -> None:
    uri, _ = store
    with pytest.raises(LookupError, match="no sweep parent run"):
        write_report(["dead"], uri, tmp_path, log_to_mlflow=True, n_resamples=RESAMPLES)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")  # written before the lookup failed
    assert "0 finished, 2 failed" in page and "No finished trials: nothing to fit." in page
    assert "<img" not in page


def test_emergence_section(report: Path) -> None:
    """Every teacher with snapshots; the planted onset of the phase contrast is read back per teacher and per SD."""
    from study.sweep.simulate import planted_onset

    page = report.read_text(encoding="utf-8")
    section = page[page.index("<h2>Emergence of the phases") : page.index("<h2>Dynamics</h2>")]
    assert '<img alt="Phase structure across teacher training" src="data:image/png;base64,' in section
    assert "(5 of 6)" in section and "Onset per SD rate" in section
    table = pd.read_csv(report.parent / "tables" / "emergence.csv")
    assert len(table) == 5
    for sd in (0.0, 0.6):
        assert (table.loc[table["sd"] == sd, "k3.contrast onset"] == planted_onset(sd)).all()
    assert (table["val_acc end"] > table["val_acc init"]).all()
