import pandas as pd
import pytest
import timm
import torch

import study.trial.teacher as teacher_mod
from study.config import ConfigError, load_trial_config
from study.runtime import seed_everything
from study.trial.data import load_splits, native_spec
from study.trial.teacher import build_scratch_model, load_teacher, train_scratch


def test_build_scratch_model_follows_the_config(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, {"teacher.registers": 2, "teacher.sd_rate": 0.3, "teacher.layerscale_init": 0.05})
    spec = native_spec(cfg.data)
    model = build_scratch_model(cfg, spec, num_classes=10)
    assert len(model.blocks) == 4 and model.embed_dim == 32 and model.num_reg_tokens == 2
    assert model.blocks[0].attn.num_heads == 2
    assert model.blocks[0].mlp.fc1.out_features == 64  # mlp_ratio 2
    assert model.patch_embed.num_patches == 16  # 8x8 digits, patch 2
    assert model.head.out_features == 10
    # timm spreads drop_path linearly: 0 at block 0, sd_rate at the last block
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)
    assert torch.allclose(model.blocks[1].ls1.gamma, torch.full((32,), 0.05))
    out = model(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 10)


def test_no_drop_path_at_sd_zero(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path)
    model = build_scratch_model(cfg, native_spec(cfg.data), 10)
    assert all(
        isinstance(b.drop_path1, torch.nn.Identity) and isinstance(b.drop_path2, torch.nn.Identity)
        for b in model.blocks
    )


def test_load_teacher_trains_once_then_hits_the_cache(make_cfg, tmp_path, monkeypatch, cpu):
    cfg = make_cfg(tmp_path, {"teacher.epochs": 1, "data.max_samples": 256})
    calls = []
    real_train = teacher_mod.train_scratch
    monkeypatch.setattr(teacher_mod, "train_scratch", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    splits_calls = []

    def splits_for(spec):
        splits_calls.append(spec)
        return load_splits(cfg.data, spec)

    first = load_teacher(cfg, cpu, splits_for)
    second = load_teacher(cfg, cpu, splits_for)
    assert calls == [1], "the teacher must be trained exactly once"
    assert len(splits_calls) == 1, "a cache hit must not even load the dataset"
    assert first.key == second.key == cfg.teacher_key()
    assert first.test_acc == second.test_acc and 0.0 <= first.test_acc <= 1.0
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    folder = tmp_path / "teachers"
    assert (folder / f"{cfg.teacher_key()}.pt").is_file()
    assert not (folder / f"{cfg.teacher_key()}.resume.pt").exists(), "the resume file is removed once cached"
    # returned frozen and in eval mode
    assert not first.model.training and not any(p.requires_grad for p in first.model.parameters())
    assert (first.depth, first.width, first.num_registers) == (4, 32, 0)


def test_teacher_init_is_determined_by_teacher_seed(make_cfg, tmp_path, cpu):
    """Same config -> same teacher whatever ran before in the process; another seed -> another init.
    (epochs 0: the cached teacher is its initialisation.)"""

    def init_weights(name, seed, rng_noise):
        cfg = make_cfg(tmp_path / name, {"teacher.epochs": 0, "teacher.seed": seed, "data.max_samples": 20})
        torch.randn(rng_noise)  # other work consuming the global RNG before this trial
        return load_teacher(cfg, cpu, lambda spec: load_splits(cfg.data, spec)).model.state_dict()

    a, b, c = init_weights("a", 0, 1), init_weights("b", 0, 1000), init_weights("c", 1, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_session_teacher_is_a_cache_hit(tiny_cfg, prepared, monkeypatch, cpu):
    monkeypatch.setattr(teacher_mod, "train_scratch", lambda *a, **k: pytest.fail("retrained a cached teacher"))
    again = load_teacher(tiny_cfg, cpu, lambda spec: pytest.fail("loaded data on a cache hit"))
    for a, b in zip(again.model.state_dict().values(), prepared.teacher.model.state_dict().values()):
        assert torch.equal(a, b)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("sd_rate", [0.0, 0.3])
def test_interrupted_training_resumes_from_the_resume_file(make_cfg, tmp_path, monkeypatch, cpu, sd_rate):
    """Kill training after epoch 0 (once its resume file is written), run again: it must
    continue at epoch 1 and end with the weights of an uninterrupted run (CPU, one thread;
    data order from the saved loader generator, drop-path masks from the saved torch RNG),
    equal up to float32 round-off."""
    cfg = make_cfg(tmp_path, {"teacher.epochs": 2, "data.max_samples": 256, "teacher.sd_rate": sd_rate})
    spec = native_spec(cfg.data)
    splits = load_splits(cfg.data, spec)

    def fresh_model():
        seed_everything(123)
        return build_scratch_model(cfg, spec, splits.num_classes)

    reference = fresh_model()
    reference_history, _ = train_scratch(reference, splits, cfg, cpu, resume_path=tmp_path / "ref.resume.pt")

    real_accuracy = teacher_mod.accuracy
    evaluated = []

    def accuracy_then_crash(*args, **kwargs):
        evaluated.append(1)
        if len(evaluated) == 2:  # validation of epoch 1: the run dies mid-training
            raise Interrupted
        return real_accuracy(*args, **kwargs)

    resume_path = tmp_path / "run.resume.pt"
    model = fresh_model()
    monkeypatch.setattr(teacher_mod, "accuracy", accuracy_then_crash)
    with pytest.raises(Interrupted):
        train_scratch(model, splits, cfg, cpu, resume_path=resume_path)
    assert torch.load(resume_path, weights_only=False)["epoch"] == 0

    epochs_run = []
    monkeypatch.setattr(teacher_mod, "accuracy", lambda *a, **k: epochs_run.append(1) or real_accuracy(*a, **k))
    resumed = fresh_model()  # a new process would start from a fresh model; the resume file overrides it
    torch.manual_seed(12345)  # ... and from another global RNG state
    history, _ = train_scratch(resumed, splits, cfg, cpu, resume_path=resume_path)
    assert len(epochs_run) == 1, "only epoch 1 is trained after resuming"
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[0] == reference_history[0]
    assert history[1]["loss"] == pytest.approx(reference_history[1]["loss"], rel=1e-5)
    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_phase_tracking_records_snapshots_and_leaves_training_unchanged(make_cfg, tmp_path, cpu):
    """`teacher.track_phases: 1` snapshots the phase structure at init and after each epoch; the weights are those
    of an untracked run (the snapshots draw no random numbers) and the teacher key is the same."""
    tracked = make_cfg(
        tmp_path / "a",
        {
            "teacher.epochs": 2,
            "data.max_samples": 256,
            "teacher.sd_rate": 0.3,
            "teacher.track_phases": 1,
            "teacher.track_samples": 40,
        },
    )
    plain = make_cfg(tmp_path / "b", {"teacher.epochs": 2, "data.max_samples": 256, "teacher.sd_rate": 0.3})
    assert tracked.teacher_key() == plain.teacher_key()
    with_track = load_teacher(tracked, cpu, lambda spec: load_splits(tracked.data, spec))
    without = load_teacher(plain, cpu, lambda spec: load_splits(plain.data, spec))
    for name, value in with_track.model.state_dict().items():
        assert torch.equal(value, without.model.state_dict()[name]), name
    assert without.emergence is None
    records = with_track.emergence
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for record in records:
        assert 0.0 <= record["val_acc"] <= 1.0
        assert {"mean_sim", "adjacent_sim", "k2.within_sim", "k4.contrast"} <= set(record)
        assert "k5.within_sim" not in record  # the tiny teacher has 4 blocks
        assert record["k2.within_sim"] >= record["k2.between_sim"]  # DP puts similar layers together
    # cached with the teacher: a cache hit returns the same snapshots
    again = load_teacher(tracked, cpu, lambda spec: pytest.fail("a cache hit must not load data"))
    assert pd.DataFrame(again.emergence).equals(pd.DataFrame(records))  # NaN where a k has one layer per phase


def test_checkpoint_teacher_reproduces_the_saved_model(tmp_path, cpu):
    seed_everything(0)
    original = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    path = tmp_path / "vit_tiny.pt"
    torch.save(original.state_dict(), path)
    cfg = load_trial_config(
        None,
        {
            "teacher.source": "checkpoint",
            "teacher.timm_name": "vit_tiny_patch16_224",
            "teacher.checkpoint": str(path),
            "runtime.progress": False,
            "runtime.cache_dir": str(tmp_path / "cache"),
        },
    )
    loaded = load_teacher(cfg, cpu, lambda spec: pytest.fail("a checkpoint teacher needs no training data"))
    assert loaded.test_acc is None and loaded.depth == 12 and loaded.width == 192
    assert (loaded.spec.in_chans, loaded.spec.size) == (3, 224)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images), original(images), rtol=0, atol=0)
    # a fresh random model differs, so the equality above is the checkpoint's doing
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        assert not torch.allclose(other(images), original(images))


def test_checkpoint_errors_are_config_errors(tmp_path, cpu):
    base = {"teacher.source": "checkpoint", "teacher.timm_name": "vit_tiny_patch16_224", "runtime.progress": False}
    cfg = load_trial_config(None, {**base, "teacher.checkpoint": str(tmp_path / "missing.pt")})
    with pytest.raises(ConfigError, match=r"^teacher\.checkpoint: file not found"):
        load_teacher(cfg, cpu, None)
    cfg = load_trial_config(None, {**base, "teacher.checkpoint": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^teacher\.checkpoint: no model\.safetensors"):
        load_teacher(cfg, cpu, None)
    cfg = load_trial_config(None, {"teacher.source": "timm", "teacher.timm_name": "no_such_vit_xyz"})
    with pytest.raises(ConfigError, match=r"^teacher\.timm_name: unknown timm model"):
        load_teacher(cfg, cpu, None)
