"""analysis/causes.py on a hand-built trial table with planted effects (docs/science.md, "Beyond the paper: what causes
block recurrence"): the teacher is the unit, the effect is adjusted for teacher accuracy, the CI is t-based."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.causes import (
    CONTRAST,
    WITHIN_SIM,
    assign_factors,
    emergence_by_level,
    factor_effects,
    forest_plot,
    mediation,
    write_causes,
)
from study.contract import (
    DEPTH_PARAM,
    EMERGENCE_KEY,
    FINISHED,
    K_PARAM,
    LAYERSCALE_PARAM,
    R2_POOLED_FINAL,
    RESIDUAL_SCALE_PARAM,
    SD_PARAM,
    TEACHER_KEY_PARAM,
    TEACHER_TEST_ACC,
)

SEEDS = 8
LIFT = 0.05  # planted: no LayerScale raises fidelity by 0.05 at equal accuracy
SLOPE = 0.5  # fidelity rises with teacher accuracy; depth 18 raises accuracy by 0.02 and nothing else
NOISE = 0.004


def planted(duplicate_trials: int = 1, through_similarity: bool = False) -> pd.DataFrame:
    """Base teachers, LayerScale-off teachers and 18-block teachers (6+ seeds per level and SD rate, k 2 and 3), one
    teacher with two factors off base (to be left out), and `duplicate_trials` trials per teacher and k. The lift of
    no LayerScale is direct, or (`through_similarity`) entirely through the teacher's within-phase similarity."""
    rng = np.random.default_rng(0)
    rows = []
    cells = [(0.1, 12), (None, 12), (0.1, 18), (None, 18)]
    for (layerscale, depth), sd, seed in (
        (cell, sd, seed) for cell in cells for sd in (0.0, 0.4) for seed in range(SEEDS if cell != (None, 18) else 1)
    ):
        acc = 0.90 + 0.02 * (depth == 18) - 0.01 * sd + rng.normal(0, 0.01)
        within = 0.6 + 0.1 * (layerscale is None) + rng.normal(0, 0.01)
        for k in (2, 3):
            lift = 0.5 * (within - 0.6) if through_similarity else LIFT * (layerscale is None)
            fidelity = 0.8 + lift + SLOPE * (acc - 0.9) + 0.02 * sd + rng.normal(0, NOISE)
            for _ in range(duplicate_trials):
                rows.append(
                    {
                        "run_id": f"run{len(rows)}",
                        "status": FINISHED,
                        TEACHER_KEY_PARAM: f"{layerscale}-{depth}-{sd}-{seed}",
                        LAYERSCALE_PARAM: layerscale,
                        DEPTH_PARAM: depth,
                        SD_PARAM: sd,
                        K_PARAM: k,
                        TEACHER_TEST_ACC: acc,
                        R2_POOLED_FINAL: fidelity,
                        WITHIN_SIM: within,
                        CONTRAST: 0.1,
                    }
                )
    rows.append({**rows[0], "status": "failed", R2_POOLED_FINAL: -5.0})
    return pd.DataFrame(rows)


def _row(effects: pd.DataFrame, factor: str, level: str, outcome: str, k: int = 3, sd="pooled") -> pd.Series:
    hit = effects[
        (effects["factor"] == factor)
        & (effects["level"] == level)
        & (effects["outcome"] == outcome)
        & (effects["k"] == k)
        & (effects["sd"].astype(str) == str(sd))
    ]
    assert len(hit) == 1
    return hit.iloc[0]


def test_base_teachers_serve_every_factor_and_two_factor_teachers_are_left_out():
    rows = assign_factors(planted().assign(**{RESIDUAL_SCALE_PARAM: None}))  # not logged: the base level
    teachers = rows.groupby(["factor", "level"])[TEACHER_KEY_PARAM].nunique()
    assert teachers[("layerscale", "0.1")] == teachers[("depth", "12")] == 2 * SEEDS
    assert teachers[("layerscale", "none")] == teachers[("depth", "18")] == 2 * SEEDS
    assert not rows[TEACHER_KEY_PARAM].str.startswith("None-18").any()
    assert (rows["status"] == FINISHED).all()
    assert set(rows["factor"]) == {"layerscale", "depth", "residual_scale", "weight_decay", "sd_schedule",
                                   "augmentation"}  # fmt: skip


def test_the_planted_effect_is_found_with_a_t_interval_over_teachers():
    effects = factor_effects(planted())
    lift = _row(effects, "layerscale", "none", R2_POOLED_FINAL)
    assert lift["primary"] and lift["n_teachers"] == 4 * SEEDS and lift["df"] == 4 * SEEDS - 4
    assert lift["ci_low"] < LIFT < lift["ci_high"] and lift["p"] < 1e-6
    assert abs(lift["effect"] - LIFT) < 4 * lift["se"]
    half = stats.t.ppf(0.975, lift["df"]) * lift["se"]
    assert lift["ci_high"] - lift["effect"] == pytest.approx(half)
    # depth raises accuracy only: its raw difference in fidelity is the accuracy path, the adjusted effect ~ 0
    depth = _row(effects, "depth", "18", R2_POOLED_FINAL)
    assert depth["raw_difference"] == pytest.approx(SLOPE * 0.02, abs=0.006)
    assert depth["ci_low"] < 0 < depth["ci_high"] and abs(depth["effect"]) < abs(depth["raw_difference"])
    on_acc = _row(effects, "depth", "18", TEACHER_TEST_ACC)
    assert on_acc["covariates"] == "sd_stratum" and on_acc["ci_low"] < 0.02 < on_acc["ci_high"]
    per_sd = _row(effects, "layerscale", "none", R2_POOLED_FINAL, sd=0.4)
    assert per_sd["n_teachers"] == 2 * SEEDS and per_sd["df"] == 2 * SEEDS - 3
    assert per_sd["ci_low"] < LIFT < per_sd["ci_high"]
    assert not effects["factor"].isin(["residual_scale", "augmentation"]).any()  # no trials off those bases


def test_duplicate_trials_of_a_teacher_do_not_add_observations():
    once, thrice = factor_effects(planted()), factor_effects(planted(duplicate_trials=3))
    a = _row(once, "layerscale", "none", R2_POOLED_FINAL)
    b = _row(thrice, "layerscale", "none", R2_POOLED_FINAL)
    assert (a["n_teachers"], a["df"]) == (b["n_teachers"], b["df"])
    assert b["effect"] == pytest.approx(a["effect"]) and b["se"] == pytest.approx(a["se"])


@pytest.mark.parametrize("through_similarity,share", [(False, 0.0), (True, 1.0)])
def test_mediation_describes_how_much_of_the_lift_goes_through_similarity(through_similarity, share):
    table = mediation(planted(through_similarity=through_similarity))
    row = table[(table["factor"] == "layerscale") & (table["k"] == 3)].iloc[0]
    assert row["total"] == pytest.approx(LIFT, abs=0.006) and row["n_teachers"] == 4 * SEEDS
    assert row["mediated_share"] == pytest.approx(share, abs=0.2)


def planted_emergence(trials: pd.DataFrame) -> dict[str, dict]:
    """result.json records whose k3.within_sim rises over 10 epochs: at once without LayerScale (90% of the change
    by epoch 2), gradually otherwise (by epoch 8)."""
    results = {}
    for row in trials.to_dict("records"):
        fast = pd.isna(row[LAYERSCALE_PARAM])
        curve = [min(1.0, epoch / (2 if fast else 8)) * 0.9 if epoch else 0.0 for epoch in range(0, 11, 2)]
        records = [{"epoch": e, "val_acc": 0.5, "k3.within_sim": 0.3 + 0.5 * v} for e, v in zip(range(0, 11, 2), curve)]
        results[row["run_id"]] = {"teacher": {EMERGENCE_KEY: records}}
    return results


def test_emergence_onsets_per_factor_level():
    trials = planted()
    table = emergence_by_level(trials, planted_emergence(trials))
    onsets = table.groupby(["factor", "level"])["k3.within_sim onset"].agg(["min", "max"])
    assert tuple(onsets.loc[("layerscale", "none")]) == (2.0, 2.0)
    assert tuple(onsets.loc[("layerscale", "0.1")]) == (8.0, 8.0)
    teachers = table[table["factor"] == "depth"].groupby("level")["teacher"].nunique()
    assert teachers.to_dict() == {"12": 2 * SEEDS, "18": 2 * SEEDS}  # one curve per teacher, not per trial
    assert table.groupby(["factor", "teacher"])["epoch"].count().eq(6).all()


def test_write_causes_publishes_effects_forest_plot_and_summary(tmp_path):
    trials = planted()
    summary = write_causes(trials, tmp_path, planted_emergence(trials))
    assert (tmp_path / "emergence.png").stat().st_size > 1000 and (tmp_path / "emergence.csv").is_file()
    assert (tmp_path / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "effects.csv").is_file() and (tmp_path / "mediation.csv").is_file()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary, default=str))
    levels = {(e["factor"], e["level"]) for e in saved["effects"]}
    assert levels == {("layerscale", "none"), ("depth", "18")}
    assert saved["primary"]["outcome"] == R2_POOLED_FINAL
    path = forest_plot(pd.read_csv(tmp_path / "effects.csv"), tmp_path / "per_sd" / "forest_sd0.png", sd=0.0)
    assert path.stat().st_size > 1000


def test_the_bench_entry_reads_every_causes_sweep_of_a_store(tmp_path):
    """bench/causes_report.py on a synthetic store: two sweeps named causes_*, one other; one report over the two."""
    from bench.causes_report import main
    from study.sweep.synthetic import write_synthetic_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = dict(sd_rates=(0.0,), ks=(3,), lambda_cls=(0.3,), n_failed=0, n_pruned=0, depth=12, n_without_dynamics=0)
    for name, seeds in (("causes_a", (0, 1, 2)), ("causes_b", (3, 4, 5)), ("other", (6,))):
        write_synthetic_sweep(uri, name, teacher_seeds=seeds, artifact_location=(tmp_path / name).as_uri(), **small)
    second = f"sqlite:///{tmp_path / 'second.db'}"  # another device session's store
    write_synthetic_sweep(second, "causes_c", teacher_seeds=(7,), artifact_location=(tmp_path / "c").as_uri(), **small)
    summary = main(
        ["--tracking-uri", uri, "--tracking-uri", second, "--tracking-uri", uri, "--out", str(tmp_path / "out")]
    )
    assert summary["n_trials"] == 7  # the trials of causes_a, causes_b and causes_c (once each), not `other`'s
    # the synthetic teachers differ from the base in two factors (linear SD schedule, no augmentation): left out
    assert summary["n_trials_used"] == 0 and summary["effects"] == []
    assert pd.read_csv(tmp_path / "out" / "effects.csv").empty


def test_the_bench_entry_reads_emergence_from_the_step_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    from bench.causes_report import emergence_from_metrics
    from study.contract import emergence_metric

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("causes_x", artifact_location=tmp_path.as_uri())).info.run_id
    bare = client.create_run(client.get_experiment_by_name("causes_x").experiment_id).info.run_id
    for epoch, value in ((0, 0.3), (2, 0.6), (4, 0.7)):
        client.log_metric(run, emergence_metric("k3.within_sim"), value, step=epoch)
        client.log_metric(run, emergence_metric("val_acc"), 0.1 * epoch, step=epoch)
    results = emergence_from_metrics(client, [run, bare])
    assert list(results) == [run]
    records = results[run]["teacher"][EMERGENCE_KEY]
    assert [r["epoch"] for r in records] == [0, 2, 4] and [r["k3.within_sim"] for r in records] == [0.3, 0.6, 0.7]
    assert records[2]["val_acc"] == pytest.approx(0.4)
