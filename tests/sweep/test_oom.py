"""Out of memory in one trial: without `search.oom_retry` the trial fails (the sweep goes on; the callback tags
the reason); with it the trial reruns once with half the distillation batch. The trial driver is called
directly, its Ray pieces replaced, so this runs in a second."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import study.sweep.raytrain as raytrain
import study.sweep.tuning as driver
import study.trial.pipeline as pipeline
from study.sweep.space import as_sweep_spec

SMOKE = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"


@pytest.fixture
def fake_ray(monkeypatch):
    seen = {"batch": [], "reports": [], "runners": []}

    def run_trial(cfg, out_dir, runner, keep_model=False):
        seen["batch"].append(cfg.distill.batch_size)
        if len(seen["batch"]) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return {"metrics": {"r2.final": 0.5}}

    # the trial driver imports these in the trial's process, when it runs
    monkeypatch.setattr(pipeline, "run_trial", run_trial)
    monkeypatch.setattr(raytrain, "RayTrainWorkers", lambda name, *a, **k: seen["runners"].append(name))
    monkeypatch.setattr(driver.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(driver.tune, "report", lambda metrics: seen["reports"].append(metrics))
    return seen


def test_oom_fails_the_trial_without_retry(tmp_path, fake_ray):
    spec = as_sweep_spec(SMOKE)
    with pytest.raises(torch.OutOfMemoryError):
        driver.trial_driver({"raptor.k": 2}, spec, driver.SweepPaths(tmp_path))
    assert fake_ray["batch"] == [64] and fake_ray["reports"] == []  # smoke.yaml's distill.batch_size


def test_oom_retry_reruns_once_with_half_the_batch(tmp_path, fake_ray):
    spec = as_sweep_spec(SMOKE, {"search.oom_retry": True})
    driver.trial_driver({"raptor.k": 2}, spec, driver.SweepPaths(tmp_path))
    assert fake_ray["batch"] == [64, 32] and fake_ray["runners"] == ["t1", "t1-oom"]
    assert fake_ray["reports"][0]["r2.final"] == 0.5
