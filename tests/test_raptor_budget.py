"""bench/raptor_budget.py with tiny overrides: it measures every budget on every teacher and picks by its rule."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.raptor_budget import main, pick_budget
from study.contract import R2_POOLED_FINAL
from tests.conftest import TINY


def test_raptor_budget_tiny_run_writes_its_curve_and_pick(tmp_path):
    sets = [f"--set={k}={v}" for k, v in TINY.items() if not k.startswith(("distill.stage", "runtime.device"))]
    record = main(
        ["--budgets", "1:0", "1:1", "2:1", "--sds", "0.0", "0.5", "--k", "2", "--cache-dir", str(tmp_path / "c")]
        + ["--results", str(tmp_path), "--name", "budget", *sets]
    )
    runs = pd.DataFrame(record["runs"])
    assert len(runs) == 6 and set(runs["sd"]) == {0.0, 0.5} and set(runs["epochs"]) == {1, 2, 3}
    assert runs[R2_POOLED_FINAL].between(-1.0, 1.0).all()
    assert runs["train_images"].nunique() == 1  # the whole (capped) training split
    means = pd.DataFrame(record["means"])
    assert list(means["epochs"]) == [1, 2, 3] and (means["teachers"] == 2).all()
    pick = record["pick"]
    chosen = means[
        (means["stage1_epochs"] == pick["stage1_epochs"]) & (means["stage2_epochs"] == pick["stage2_epochs"])
    ]
    assert chosen[R2_POOLED_FINAL].item() >= means[R2_POOLED_FINAL].max() - 0.01
    assert json.loads((tmp_path / "budget" / "budget.json").read_text())["pick"] == pick
    assert "Study budget" in (tmp_path / "budget" / "README.md").read_text()


def test_pick_is_the_smallest_budget_within_the_tolerance_of_the_largest():
    runs = pd.DataFrame(
        {
            "stage1_epochs": [8, 1, 2, 4] * 2,
            "stage2_epochs": [4, 1, 1, 2] * 2,
            "epochs": [12, 2, 3, 6] * 2,
            R2_POOLED_FINAL: [0.95, 0.80, 0.90, 0.945, 0.97, 0.82, 0.92, 0.955],
            "r2.final": [0.0] * 8,
            "r2_pooled.final.cls": [0.0] * 8,
            "distill_s": [1.0] * 8,
        }
    )
    means, pick = pick_budget(runs, tolerance=0.01)
    assert list(means["epochs"]) == [2, 3, 6, 12]
    assert (pick["stage1_epochs"], pick["stage2_epochs"]) == (4, 2)  # 0.95 vs the largest 0.96
    assert pick["largest_r2_pooled_final"] == pytest.approx(0.96)
    assert pick_budget(runs, tolerance=0.2)[1]["stage1_epochs"] == 1


def test_merge_pools_chunks_and_picks_again(tmp_path):
    """Chunks measured apart (one teacher each, e.g. one GPU command each) give the pick of their pooled runs."""

    def chunk(sd: float, scores: list[float]) -> str:
        runs = [
            {
                "sd": sd,
                "stage1_epochs": s1,
                "stage2_epochs": s2,
                "epochs": s1 + s2,
                R2_POOLED_FINAL: r2,
                "r2.final": 0.0,
                "r2_pooled.final.cls": 0.0,
                "distill_s": 1.0,
            }
            for (s1, s2), r2 in zip([(1, 1), (2, 1), (4, 2)], scores, strict=True)
        ]
        record = {"setting": "fashion", "machine": f"gpu {sd}", "overrides": {}, "runs": runs, "means": [], "pick": {}}
        path = tmp_path / f"sd{sd}.json"
        path.write_text(json.dumps(record))
        return str(path)

    a, b = chunk(0.0, [0.80, 0.90, 0.95]), chunk(0.5, [0.90, 0.96, 0.97])
    record = main(["--merge", a, b, "--results", str(tmp_path), "--name", "merged"])
    means = pd.DataFrame(record["means"])
    assert list(means[R2_POOLED_FINAL].round(3)) == [0.85, 0.93, 0.96] and (means["teachers"] == 2).all()
    assert (record["pick"]["stage1_epochs"], record["pick"]["stage2_epochs"]) == (4, 2)  # 0.93 < 0.96 - 0.01
    assert record["machine"] == "gpu 0.0 | gpu 0.5" and record["merged_from"] == ["sd0.0.json", "sd0.5.json"]
    assert json.loads((tmp_path / "merged" / "merged.json").read_text())["pick"] == record["pick"]
    with pytest.raises(SystemExit, match="same teacher SD and budget"):
        main(["--merge", a, a, "--results", str(tmp_path), "--name", "twice"])
