"""The one trial pipeline, two places to distil: in this process or on Ray Train workers.

A metric added to the pipeline appears in both paths by construction; this runs the same tiny
config through `InProcess` and `RayTrainWorkers` (one DDP worker, gloo, CPU) and compares the
two result.json files key by key and value by value."""

from __future__ import annotations

import math

import pytest
import ray

from study.config import build_trial_config
from study.sweep.raytrain import RayTrainWorkers
from study.trial.pipeline import InProcess, run_trial

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _metrics(result: dict) -> dict[str, float]:
    return {k: v for k, v in result["metrics"].items()}


def test_in_process_and_ray_train_give_the_same_trial(tmp_path, tiny_cfg, prepared, local_ray):
    here = run_trial(tiny_cfg, tmp_path / "in_process", runner=InProcess())
    there = run_trial(
        tiny_cfg, tmp_path / "ray_train", runner=RayTrainWorkers("paths", tmp_path / "train", workers=1, worker_cpu=1)
    )
    assert set(here) == set(there)
    assert set(_metrics(here)) == set(_metrics(there))
    assert set(here["r2_per_layer"]) == set(there["r2_per_layer"])
    assert [(r["stage"], r["epoch"]) for r in here["history"]] == [(r["stage"], r["epoch"]) for r in there["history"]]
    for key, value in _metrics(here).items():
        other = there["metrics"][key]
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(other), key
            continue
        # same seed, same data order, one worker: only float summation order may differ
        assert other == pytest.approx(value, rel=1e-3, abs=1e-4), key
    for group, values in here["r2_per_layer"].items():
        assert there["r2_per_layer"][group] == pytest.approx(values, rel=1e-3, abs=1e-4)


def test_ray_train_local_mode_gives_the_same_trial_and_resumes_from_its_state(tmp_path, tiny_cfg, prepared):
    """Ray Train local mode (one worker in this process, no actors): the same trial as InProcess; a run
    interrupted after a saved state resumes from it and reruns no finished epoch."""
    cfg = tiny_cfg.model_copy(
        update={
            "distill": tiny_cfg.distill.model_copy(
                update={"stage2": tiny_cfg.distill.stage2.model_copy(update={"epochs": 2})}
            )
        }
    )
    cfg = build_trial_config({**cfg.to_dict(), "runtime": {**cfg.runtime.model_dump(), "checkpoint_epochs": 1}})
    here = run_trial(cfg, tmp_path / "in_process", runner=InProcess())
    runner = RayTrainWorkers("local", tmp_path / "train", workers=1, worker_cpu=1, local=True)

    class Interrupted(Exception):
        pass

    def crash_in_stage2(record):
        if (record["stage"], record["epoch"]) == (2, 0):
            raise Interrupted

    with pytest.raises(Interrupted):
        run_trial(cfg, tmp_path / "local", runner=runner, on_epoch=crash_in_stage2)
    assert (tmp_path / "local" / RayTrainWorkers.LOCAL_STATE / "state.pt").is_file()
    again = []
    there = run_trial(cfg, tmp_path / "local", runner=runner, on_epoch=lambda r: again.append((r["stage"], r["epoch"])))
    assert again == [(2, 1)], "finished epochs are not rerun"
    assert not (tmp_path / "local" / RayTrainWorkers.LOCAL_STATE).exists(), "the state goes once the trial is done"
    assert [(r["stage"], r["epoch"]) for r in there["history"]] == [(1, 0), (2, 0), (2, 1)]
    assert there["timings"]["checkpoint_s"] > 0
    for key, value in _metrics(here).items():
        other = there["metrics"][key]
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(other), key
            continue
        assert other == pytest.approx(value, rel=1e-3, abs=1e-4), key
