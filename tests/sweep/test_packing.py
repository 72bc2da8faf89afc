"""Trials per GPU from measured memory (study.sweep.packing) and the checkpoint policy (study.runtime)."""

from __future__ import annotations

import pytest

from study.config import ConfigError, DistillConfig, RuntimeConfig, load_trial_config
from study.runtime import CheckpointPolicy, compile_cache_env
from study.sweep.packing import CONTEXT_BYTES, pack_trials
from study.sweep.space import SweepSpec

GIB = 1 << 30


def test_memory_bounds_the_trials_per_gpu():
    plan = pack_trials(peak_bytes=20 * GIB, gpu_bytes=80 * GIB, gpus=1, cpus=64)
    assert plan.per_gpu == int(0.85 * 80 * GIB // (20 * GIB + CONTEXT_BYTES)) == 3
    res = plan.resources
    assert res["driver_gpu"] + res["worker_gpu"] <= 1 / 3 and res["driver_gpu"] == res["worker_gpu"] == 0.1666
    assert plan.max_concurrent == 3


def test_cpus_and_the_cap_bound_small_trials():
    assert pack_trials(peak_bytes=GIB, gpu_bytes=140 * GIB, gpus=1, cpus=16).per_gpu == 8  # the cap
    assert pack_trials(peak_bytes=GIB, gpu_bytes=140 * GIB, gpus=2, cpus=6).per_gpu == 3  # 6 CPUs over 2 GPUs
    plan = pack_trials(peak_bytes=GIB, gpu_bytes=140 * GIB, gpus=2, cpus=64)
    share = plan.resources["driver_gpu"] + plan.resources["worker_gpu"]
    assert plan.max_concurrent == 16 and plan.per_gpu * share <= 1


def test_a_trial_bigger_than_the_gpu_still_gets_a_whole_gpu_and_bad_input_is_one_line():
    assert pack_trials(peak_bytes=200 * GIB, gpu_bytes=80 * GIB, gpus=1, cpus=8).per_gpu == 1
    with pytest.raises(ConfigError, match=r"^resources: packing needs a GPU"):
        pack_trials(peak_bytes=GIB, gpu_bytes=0, gpus=1, cpus=8)
    with pytest.raises(ConfigError, match=r"^resources: packing needs the measured peak"):
        pack_trials(peak_bytes=None, gpu_bytes=80 * GIB, gpus=1, cpus=8)


def test_plan_applies_to_a_spec():
    spec = SweepSpec.model_validate({"name": "s", "search": {"max_concurrent": 1}})
    packed = pack_trials(peak_bytes=GIB, gpu_bytes=80 * GIB, gpus=1, cpus=8).apply(spec)
    assert packed.search.max_concurrent == 8 and packed.resources.worker_gpu == 0.0625
    assert packed.resources.local_train  # one worker: Ray Train local mode by default


def test_checkpoint_policy_by_epochs_by_time_and_at_stage_ends(monkeypatch):
    distill = DistillConfig.model_validate({"stage1": {"epochs": 3}, "stage2": {"epochs": 5}})
    records = [{"stage": 1, "epoch": e} for e in range(3)] + [{"stage": 2, "epoch": e} for e in range(5)]
    every2 = CheckpointPolicy(RuntimeConfig(checkpoint_epochs=2, checkpoint_seconds=None), distill)
    assert [every2.due(r) for r in records] == [False, True, True, False, True, False, True, True]
    clock = iter([0.0, 10.0, 70.0, 80.0, 100.0, 150.0, 200.0, 201.0, 202.0])
    monkeypatch.setattr("study.runtime.time.monotonic", lambda: next(clock))
    by_time = CheckpointPolicy(RuntimeConfig(), distill)  # default: every 60 s and at the end of each stage
    assert [by_time.due(r) for r in records] == [False, True, True, False, True, False, False, True]


def test_checkpoint_knobs_validate_and_compile_cache_sits_under_the_run_cache(tmp_path):
    with pytest.raises(ConfigError, match=r"^runtime\.checkpoint_epochs"):
        load_trial_config(None, {"runtime.checkpoint_epochs": 0})
    with pytest.raises(ConfigError, match=r"^runtime\.checkpoint_seconds"):
        load_trial_config(None, {"runtime.checkpoint_seconds": -1})
    env = compile_cache_env(tmp_path / "cache")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "compile" / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "compile" / "triton")
