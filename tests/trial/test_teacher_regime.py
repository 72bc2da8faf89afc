"""Teachers in the paper's regime (docs/science.md, "Teachers in the paper's regime"): the stochastic-depth schedule,
training augmentation, checkpoints kept over training, and what each does to the teacher's cache key."""

import numpy as np
import pytest
import torch
from timm.layers import DropPath

import study.trial.teacher as teacher_mod
from study.config import ConfigError, TrialConfig, load_trial_config
from study.configio import stable_hash
from study.teacher_config import KEY_DEFAULTS
from study.trial.augment import Augment
from study.trial.data import load_splits, native_spec
from study.trial.teacher import build_scratch_model, load_teacher, snapshot_path


def test_uniform_schedule_drops_every_block_at_the_rate_with_the_same_init(make_cfg, tmp_path):
    spec = native_spec(make_cfg(tmp_path).data)
    models = {}
    for schedule in ("uniform", "linear"):
        cfg = make_cfg(tmp_path, {"teacher.sd_rate": 0.9, "teacher.sd_schedule": schedule})
        torch.manual_seed(0)
        models[schedule] = build_scratch_model(cfg, spec, 10)
    for block in models["uniform"].blocks:
        for drop in (block.drop_path1, block.drop_path2):
            assert isinstance(drop, DropPath) and drop.drop_prob == pytest.approx(0.9)
    linear = [b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for b in models["linear"].blocks]
    assert linear == pytest.approx([0.0, 0.3, 0.6, 0.9])  # timm's ramp, mean rate / 2
    uniform, ramp = models["uniform"].state_dict(), models["linear"].state_dict()
    assert all(torch.equal(uniform[name], ramp[name]) for name in uniform)  # the schedule changes no weight


def test_augment_crops_with_black_padding_and_flips_reproducibly(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, {"teacher.augment": True, "teacher.augment_padding": 2})
    spec = native_spec(cfg.data)
    images = torch.randn(64, 1, 8, 8)
    out = Augment(cfg.teacher, spec)(images)
    assert out.shape == images.shape
    assert torch.equal(out, Augment(cfg.teacher, spec)(images))  # seeded by teacher.seed
    black = -spec.mean[0] / spec.std[0]
    changed = 0
    for original, augmented in zip(images, out):
        # every output is a shifted (and maybe mirrored) window of the black-padded image
        padded = torch.full((1, 12, 12), black)
        padded[:, 2:10, 2:10] = original
        windows = [padded[:, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(augmented, w) or torch.equal(augmented, w.flip(-1)) for w in windows)
        changed += not torch.equal(augmented, original)
    assert changed > 48  # 1/25 of crops are centred, half of those unflipped
    plain = make_cfg(tmp_path, {"teacher.augment": True, "teacher.augment_padding": 0, "teacher.augment_flip": False})
    assert torch.equal(Augment(plain.teacher, spec)(images), images)


def test_new_teacher_fields_at_their_defaults_keep_every_existing_teacher_key():
    """The key of a config that does not set the new fields is the hash of the fields that existed before them."""
    new_fields = {*KEY_DEFAULTS, "augment_padding", "augment_flip", "snapshots", "snapshot"}
    for overrides in ({}, {"teacher.sd_rate": 0.3, "teacher.seed": 2}, {"data.max_samples": 100}):
        cfg = load_trial_config(None, overrides)
        old = {k: v for k, v in cfg.teacher.model_dump(mode="json").items() if k not in new_fields}
        for name in ("track_phases", "track_samples"):
            old.pop(name)
        payload = {"data": cfg.data.model_dump(mode="json", exclude={"raptor_samples"}), "teacher": old}
        if cfg.data.max_samples is not None:
            payload["subsets"] = "stratified"
        assert cfg.teacher_key() == stable_hash(payload)


@pytest.mark.parametrize(
    "overrides,same",
    [
        ({"teacher.sd_schedule": "uniform"}, False),
        ({"teacher.augment": True}, False),
        ({"teacher.augment": True, "teacher.augment_padding": 2}, False),
        ({"teacher.augment_padding": 2, "teacher.augment_flip": False}, True),  # augmentation off: no effect
        ({"teacher.snapshots": [0, 3], "teacher.snapshot": 3}, True),
        ({"teacher.snapshot": "best"}, True),
    ],
)
def test_teacher_key_follows_what_changes_the_weights(overrides, same):
    base = {"teacher.sd_rate": 0.4}
    key = load_trial_config(None, {**base, **overrides}).teacher_key()
    assert (key == load_trial_config(None, base).teacher_key()) is same
    if overrides == {"teacher.augment": True}:
        longer = load_trial_config(None, {**base, **overrides, "teacher.augment_padding": 2}).teacher_key()
        assert longer != key


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"teacher.snapshots": [0, 2], "teacher.snapshot": 1}, "teacher.snapshot"),
        ({"teacher.snapshots": [0, 50]}, r"teacher.snapshots: distinct epochs in \[0, 40\]"),
        ({"teacher.snapshots": [1, 1]}, "teacher.snapshots"),
        ({"teacher.snapshots": [0], "teacher.source": "timm", "teacher.timm_name": "vit_tiny"}, "teacher.snapshots"),
        ({"teacher.snapshot": "best", "teacher.epochs": 0}, "teacher.snapshot"),
        ({"teacher.sd_schedule": "cosine"}, "teacher.sd_schedule"),
        ({"teacher.sd_rate": 1.0}, "teacher.sd_rate"),
    ],
)
def test_bad_teacher_regime_fields_are_one_line_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_trial_config(None, overrides)
    assert load_trial_config(None, {"teacher.sd_rate": 0.9}).teacher.sd_rate == 0.9  # the paper's top rate


def _states(cfg: TrialConfig):
    from study.trial.prepare import teacher_and_states

    teacher, states, _ = teacher_and_states(cfg, torch.device("cpu"), splits=("val",))
    return teacher, np.asarray(states["val"])


def test_trials_fit_kept_checkpoints_of_a_teacher_trained_once(make_cfg, tmp_path, monkeypatch):
    calls = []
    real_train = teacher_mod.train_scratch
    monkeypatch.setattr(teacher_mod, "train_scratch", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    common = {"data.max_samples": 200, "teacher.epochs": 2, "teacher.snapshots": [0, 2], "teacher.augment": True}
    at_init, at_init_states = _states(make_cfg(tmp_path, {**common, "teacher.snapshot": 0}))
    final, final_states = _states(make_cfg(tmp_path, common))
    at_end, at_end_states = _states(make_cfg(tmp_path, {**common, "teacher.snapshot": 2}))
    best, _ = _states(make_cfg(tmp_path, {**common, "teacher.snapshot": "best"}))
    assert calls == [1], "one training keeps every checkpoint"
    assert at_init.key == final.key == best.key
    assert (at_init.snapshot_epoch, final.snapshot_epoch, at_end.snapshot_epoch) == (0, None, 2)
    assert best.snapshot_epoch in (1, 2)
    assert not np.allclose(at_init_states, final_states)  # the init's states, not the trained teacher's
    assert np.array_equal(at_end_states, final_states)  # epoch 2 of 2 is the final teacher
    assert at_end.test_acc == final.test_acc and 0.0 <= at_init.test_acc <= 1.0  # each checkpoint's own accuracy
    activations = tmp_path / "activations" / final.key
    assert {p.name for p in activations.glob("val*.float32.npy")} == {
        "val.float32.npy",
        "val.snap-0.float32.npy",
        "val.snap-2.float32.npy",
        "val.snap-best.float32.npy",
    }


def test_a_checkpoint_missing_from_a_cached_teacher_is_kept_by_training_it_again(make_cfg, tmp_path, monkeypatch, cpu):
    """A teacher cached without `teacher.snapshots` trains once more for a requested checkpoint (the same seeded
    run, so its final epoch equals the cached final weights); the cached final teacher is not rewritten."""
    plain = make_cfg(tmp_path, {"data.max_samples": 200, "teacher.epochs": 2})
    cached = load_teacher(plain, cpu, lambda spec: load_splits(plain.data, spec))
    final_file = tmp_path / "teachers" / f"{cached.key}.pt"
    before = final_file.stat().st_mtime_ns
    calls = []
    real_train = teacher_mod.train_scratch
    monkeypatch.setattr(teacher_mod, "train_scratch", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    late = make_cfg(
        tmp_path, {"data.max_samples": 200, "teacher.epochs": 2, "teacher.snapshots": [2], "teacher.snapshot": 2}
    )
    kept = load_teacher(late, cpu, lambda spec: load_splits(late.data, spec))
    assert calls == [1] and kept.key == cached.key and final_file.stat().st_mtime_ns == before
    assert snapshot_path(tmp_path / "teachers", cached.key, 2).is_file()
    for name, value in cached.model.state_dict().items():
        torch.testing.assert_close(kept.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_the_contract_names_these_config_fields():
    from study.contract import PARTITION_METHOD_PARAM, PARTITION_SEED_PARAM, SD_SCHEDULE_PARAM, TEACHER_SNAPSHOT_PARAM

    flat = load_trial_config(None, {"teacher.snapshots": [0], "teacher.snapshot": 0}).flat()
    assert flat[SD_SCHEDULE_PARAM] == "linear" and flat[TEACHER_SNAPSHOT_PARAM] == 0
    assert flat[PARTITION_METHOD_PARAM] == "dp" and flat[PARTITION_SEED_PARAM] is None
