import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from study.contract import ACC_FLOOR_DEEP
from study.science.fidelity import evaluate_fidelity
from study.science.raptor import Raptor
from study.trial.pipeline import run_trial

RESULT_KEYS = {
    "config",
    "teacher",
    "similarity",
    "partition",
    "data",
    "r2_per_layer",
    "r2_pooled_per_layer",
    "metrics",
    "history",
    "timings",
}
FILES = [
    "result.json",
    "config.yaml",
    "r2_per_layer.parquet",
    "history.parquet",
    "similarity.png",
    "r2_per_layer.png",
    "raptor.pt",
]


@pytest.fixture(scope="module")
def trial_dir(tiny_cfg, prepared, tmp_path_factory):
    """One tiny trial end to end (the teacher and states come from the session cache)."""
    out = tmp_path_factory.mktemp("trial")
    run_trial(tiny_cfg, out)
    return out


def test_prepared_trial_has_similarity_and_a_k2_partition(prepared):
    assert prepared.partition.k == 2 and prepared.partition.num_layers == 4
    for kind in ("cosine", "cka", "mse"):
        matrix = prepared.similarity[kind]
        assert matrix.shape == (4, 4) and np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1.0)
    assert set(prepared.states) == {"train", "val", "test"}
    assert len(prepared.states["train"]) == 400  # data.max_samples


def test_trial_writes_every_output(trial_dir):
    for name in FILES:
        assert (trial_dir / name).is_file() and (trial_dir / name).stat().st_size > 0, name
    assert not (trial_dir / "distill_state.pt").exists(), "the resume state is removed once the trial is done"
    for png in ("similarity.png", "r2_per_layer.png"):
        with Image.open(trial_dir / png) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_result_json_content(trial_dir, tiny_cfg):
    result = json.loads((trial_dir / "result.json").read_text())
    assert set(result) >= RESULT_KEYS
    assert result["config"] == tiny_cfg.to_dict()
    assert result["teacher"]["key"] == tiny_cfg.teacher_key() and result["teacher"]["depth"] == 4
    assert len(result["partition"]["phase_bounds"]) == 2
    assert np.array(result["similarity"]["cosine"]).shape == (4, 4)
    timings = result["timings"]
    stage_sums = [sum(r["seconds"] for r in result["history"] if r["stage"] == stage) for stage in (1, 2)]
    assert [timings["stage1_s"], timings["stage2_s"]] == stage_sums and min(stage_sums) > 0
    assert timings["total_s"] > timings["distill_s"] >= sum(stage_sums) and timings["evaluate_s"] > 0
    metrics = result["metrics"]
    for name in (
        "r2.final",
        "r2.mean",
        "r2.final.cls",
        "r2.final.patch",
        "acc.ratio",
        "acc.agreement",
        "phase.cosine.within_sim",
        "phase.cosine.contrast",
        "phase.cka.within_sim",
        "teacher.test_acc",
        "partition.cut_value",
    ):
        assert name in metrics, name
        assert np.isfinite(metrics[name]), name
    assert metrics["r2.final"] == pytest.approx(result["r2_per_layer"]["all"][-1])
    assert metrics["r2.mean"] == pytest.approx(np.mean(result["r2_per_layer"]["all"]))
    assert set(result["r2_per_layer"]) == {"all", "cls", "patch"}  # no registers in the tiny teacher
    for values in result["r2_per_layer"].values():
        assert len(values) == 4 and all(np.isfinite(v) and v <= 1.0 for v in values)
    assert 0.0 <= metrics["acc.agreement"] <= 1.0 and metrics["acc.ratio"] >= 0.0
    assert [(r["stage"], r["epoch"]) for r in result["history"]] == [(1, 0), (2, 0)]


def test_result_json_has_the_paper_probe_pooled_r2_class_counts_and_both_cuts(trial_dir, prepared):
    """docs/science.md §2 and §5: the paper's probe next to the transfer, pooled R^2, subsets, DP vs bisection."""
    result = json.loads((trial_dir / "result.json").read_text())
    metrics = result["metrics"]
    for name in (
        "acc.teacher",
        "acc.raptor",
        "acc.ratio",
        "acc.floor",
        "acc.recovered",
        "acc.transfer",
        "acc.transfer_ratio",
        "acc.agreement",
        "r2_pooled.final",
        "r2_pooled.mean",
        "r2_pooled.final.cls",
        "partition.cut_dp",
        "partition.cut_bisection",
        "partition.dp_differs",
    ):
        assert name in metrics and np.isfinite(metrics[name]), name
    for name in ("acc.teacher", "acc.raptor", "acc.floor", "acc.transfer"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["acc.ratio"] == pytest.approx(metrics["acc.raptor"] / metrics["acc.teacher"])
    assert metrics["acc.recovered"] == pytest.approx(
        (metrics["acc.raptor"] - metrics["acc.floor"]) / (metrics["acc.teacher"] - metrics["acc.floor"])
    )
    assert metrics["acc.transfer_ratio"] == pytest.approx(metrics["acc.transfer"] / metrics["acc.transfer_teacher"])
    assert metrics["acc.teacher"] > 0.3  # the tiny 2-epoch teacher's own probe: well above chance (0.1, 10 classes)
    # pooled R^2 is never below the strict one, per layer and group
    for group, strict in result["r2_per_layer"].items():
        pooled = result["r2_pooled_per_layer"][group]
        assert all(p >= s - 1e-12 for p, s in zip(pooled, strict)), group
    assert metrics["r2_pooled.final"] == pytest.approx(result["r2_pooled_per_layer"]["all"][-1])
    # k = 2: bisection's single best cut is the DP's
    assert metrics["partition.cut_dp"] == pytest.approx(metrics["partition.cut_bisection"])
    assert metrics["partition.dp_differs"] == 0.0 and result["partition"]["method"] == "dp"
    assert metrics["partition.cut_value"] == pytest.approx(metrics["partition.cut_dp"])
    # class counts of every split and subset, matching the cached labels; stratified subsets hold every class
    counts = result["data"]["class_counts"]
    assert set(counts) == {"train", "val", "test", "similarity", "dynamics", "accuracy"}
    for split in ("train", "val", "test"):
        assert sum(counts[split].values()) == len(prepared.labels[split])
    assert len(counts["train"]) == 10 and len(counts["dynamics"]) == 10
    for subset in ("train", "test", "similarity"):
        low, high = metrics[f"data.{subset}.class_share_min"], metrics[f"data.{subset}.class_share_max"]
        share = np.array(list(counts[subset].values())) / sum(counts[subset].values())
        assert (low, high) == (pytest.approx(share.min()), pytest.approx(share.max()))


def test_result_json_carries_the_papers_own_measurements(trial_dir, prepared):
    """docs/science.md §5, §6: teacher-head accuracy, fine-tuned probe, deep floor, layer replacement (every draw),
    and the cls speed summary on steps 2..L."""
    from study.contract import HEAD_METRICS, REPLACE_IMAGES, REPLACE_METRICS, dynamics_metric

    result = json.loads((trial_dir / "result.json").read_text())
    metrics = result["metrics"]
    for name in (*HEAD_METRICS, ACC_FLOOR_DEEP, *REPLACE_METRICS, REPLACE_IMAGES):
        assert name in metrics and np.isfinite(metrics[name]), name
    for model in ("teacher", "raptor"):
        assert 2 <= metrics[dynamics_metric(model, "speed_cls_peak_layer")] <= 4
    replace = result["dynamics"]["replace"]
    assert metrics[REPLACE_IMAGES] == replace["num_images"] == len(prepared.labels["test"])  # under the 2,500 cap
    for kind in ("intra", "inter"):
        for n in (1, 2, 3):
            entry = replace[kind][f"n{n}"]
            assert len(entry["draws"]) == prepared.cfg.dynamics.replace_draws and entry["mean"] == pytest.approx(
                np.mean([d["acc"] for d in entry["draws"]])
            )
    assert result["dynamics"]["swap"]["num_images"] == replace["num_images"]
    assert (trial_dir / "layer_replacement.png").is_file()


def test_parquet_tables_match_result_json(trial_dir):
    result = json.loads((trial_dir / "result.json").read_text())
    r2 = pd.read_parquet(trial_dir / "r2_per_layer.parquet")
    assert list(r2.columns) == ["layer", "group", "r2", "r2_pooled"] and len(r2) == 3 * 4
    final = r2[(r2.group == "all") & (r2.layer == 4)].r2.item()
    assert final == pytest.approx(result["metrics"]["r2.final"])
    history = pd.read_parquet(trial_dir / "history.parquet")
    assert {"stage", "epoch", "loss", "lambda_tf", "val_r2"} <= set(history.columns) and len(history) == 2


def test_saved_raptor_reloads_and_reproduces_the_fidelity(trial_dir, prepared, cpu):
    saved = torch.load(trial_dir / "raptor.pt", weights_only=False)
    raptor = Raptor(prepared.teacher.model, saved["phase_bounds"])
    raptor.load_state_dict(saved["state_dict"])
    r2 = evaluate_fidelity(raptor, prepared.states["test"], 0, cpu, amp=False).r2
    result = json.loads((trial_dir / "result.json").read_text())
    assert float(r2["all"][-1]) == pytest.approx(result["metrics"]["r2.final"], abs=1e-9)


class Interrupted(Exception):
    pass


def test_interrupted_trial_resumes_from_its_distill_state(prepared, tmp_path, make_cfg, session_cache):
    cfg = make_cfg(session_cache, {"distill.stage2.epochs": 2, "runtime.checkpoint_epochs": 1})
    seen = []

    def crash_in_stage2(record):
        seen.append((record["stage"], record["epoch"]))
        if (record["stage"], record["epoch"]) == (2, 0):
            raise Interrupted

    with pytest.raises(Interrupted):
        run_trial(cfg, tmp_path, on_epoch=crash_in_stage2)
    assert (tmp_path / "distill_state.pt").is_file()
    again = []
    result = run_trial(cfg, tmp_path, on_epoch=lambda record: again.append((record["stage"], record["epoch"])))
    assert again == [(2, 1)], "finished epochs are not rerun"
    assert [(r["stage"], r["epoch"]) for r in result["history"]] == [(1, 0), (2, 0), (2, 1)]
    assert not (tmp_path / "distill_state.pt").exists()

    uninterrupted = run_trial(cfg, tmp_path / "clean")
    assert result["metrics"]["r2.final"] == pytest.approx(uninterrupted["metrics"]["r2.final"], abs=1e-6)


def test_probe_floor_raptor_is_seeded_random_and_leaves_the_global_rng_alone(prepared):
    from study.trial.probes import floor_raptor

    state = torch.get_rng_state()
    bounds = prepared.partition.phase_bounds
    a, b = floor_raptor(prepared.cfg, prepared.teacher, bounds), floor_raptor(prepared.cfg, prepared.teacher, bounds)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    teacher_block = prepared.teacher.model.blocks[0].state_dict()
    assert not torch.equal(a.blocks[0].state_dict()["attn.qkv.weight"], teacher_block["attn.qkv.weight"])
