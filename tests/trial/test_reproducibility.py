"""Same config and seed -> the same teacher, partition and metrics on CPU, from empty caches.

On CPU with one thread torch is deterministic for these ops, so weights and metrics are
compared bit for bit; only wall-clock timings may differ."""

import json

import torch

from study.trial.data import load_splits
from study.trial.pipeline import run_trial
from study.trial.teacher import load_teacher


def test_same_config_same_seed_same_everything(tmp_path, make_cfg):
    results, teachers = [], []
    for run in ("a", "b"):
        cfg = make_cfg(tmp_path / f"cache-{run}", {"seed": 7, "teacher.seed": 3})
        results.append(run_trial(cfg, tmp_path / f"out-{run}"))
        (path,) = (tmp_path / f"cache-{run}" / "teachers").glob("*.pt")
        teachers.append(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    a, b = results
    assert teachers[0].keys() == teachers[1].keys()
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])
    assert a["partition"] == b["partition"]
    assert json.dumps(a["similarity"]) == json.dumps(b["similarity"])
    assert a["metrics"] == b["metrics"]
    untimed = [
        [{key: value for key, value in record.items() if key != "seconds"} for record in r["history"]] for r in (a, b)
    ]
    assert untimed[0] == untimed[1] and all(record["seconds"] > 0 for record in a["history"])
    raptors = [
        torch.load(tmp_path / f"out-{run}" / "raptor.pt", weights_only=False)["state_dict"] for run in ("a", "b")
    ]
    assert all(torch.equal(raptors[0][k], raptors[1][k]) for k in raptors[0])


def test_a_different_seed_gives_a_different_teacher(tmp_path, make_cfg, prepared):
    other = make_cfg(tmp_path / "cache", {"teacher.seed": 1})
    assert other.teacher_key() != prepared.cfg.teacher_key()
    model = load_teacher(other, torch.device("cpu"), lambda spec: load_splits(other.data, spec)).model
    mine = prepared.teacher.model.state_dict()
    assert any(not torch.equal(v, mine[k]) for k, v in model.state_dict().items())
