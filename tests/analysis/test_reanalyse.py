"""`python -m analysis.reanalyse FOLDER`: a study's report regenerated from its exported trials table."""

from __future__ import annotations

import json

import numpy as np

from analysis.reanalyse import main
from study.sweep.simulate import simulate_clustered


def test_reanalyse_regenerates_from_the_table_and_keeps_the_record(tmp_path):
    trials = simulate_clustered(6, 3, teacher_slope=0.5, between_sd=0.01, within_sd=0.002,
                                rng=np.random.default_rng(0))  # fmt: skip
    trials = trials.assign(sweep="s", experiment="s", run_id=[f"r{i}" for i in range(len(trials))])
    trials["r2_pooled.layer"] = [np.linspace(0.99, v, 6).tolist() for v in trials["r2_pooled.final"]]
    (tmp_path / "tables").mkdir()
    (tmp_path / "figures").mkdir()
    trials.to_csv(tmp_path / "tables" / "trials.csv", index=False)
    exported = (tmp_path / "tables" / "trials.csv").read_bytes()
    (tmp_path / "figures" / "similarity.png").write_bytes(b"\x89PNG first edition")
    (tmp_path / "figures" / "primary_relation.png").write_bytes(b"\x89PNG stale")
    (tmp_path / "disclosures.md").write_text("# header\n\nThe predictor was chosen after a pilot.\n")
    assert main([str(tmp_path), "--declared", "--resamples", "99"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reading"]["source"] == "spec" and summary["primary"]["n_teachers"] == 6
    assert summary["disclosures"] == ["The predictor was chosen after a pilot."]
    assert (tmp_path / "tables" / "trials.csv").read_bytes() == exported
    page = (tmp_path / "report.md").read_text()
    assert "figures/r2_per_layer_by_sd.png" in page  # the list column was read back as lists
    assert "figures/similarity.png" in page and not (tmp_path / "figures" / "primary_relation.png").exists()
    assert "Disclosures beside the headline: The predictor was chosen after a pilot." in page
    # a second run takes the relation and the title from the first
    assert main([str(tmp_path), "--resamples", "99"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["reading"]["source"] == "spec"
