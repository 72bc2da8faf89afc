import numpy as np
import pytest
import torch

import study.trial.activations as act
from study.science.states import embed, teacher_states
from study.trial.activations import bytes_per_sample, cached_states
from study.trial.data import load_splits


def prepared_images(prepared, n):
    """The first n test images of the session's dataset, preprocessed for its teacher."""
    return load_splits(prepared.cfg.data, prepared.teacher.spec).test.tensors[0][:n]


def test_teacher_states_shape_and_layers(prepared, teacher_model):
    images = prepared_images(prepared, 5)
    states = teacher_states(teacher_model, images)
    assert states.shape == (5, 4 + 1, 1 + 16, 32)  # [B, L+1, T, D]: cls + 16 patches, width 32
    torch.testing.assert_close(states[:, 0], embed(teacher_model, images), rtol=0, atol=0)
    x = states[:, 0]
    with torch.no_grad():
        for layer, block in enumerate(teacher_model.blocks, start=1):
            x = block(x)
            torch.testing.assert_close(states[:, layer], x, rtol=0, atol=0)


def test_last_state_is_forward_features_before_the_final_norm(prepared, teacher_model):
    images = prepared_images(prepared, 7)
    states = teacher_states(teacher_model, images)
    with torch.no_grad():
        features = teacher_model.forward_features(images)  # = norm(x_L)
        torch.testing.assert_close(teacher_model.norm(states[:, -1]), features, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(states[:, -1], features)  # i.e. x_L is taken before the norm
        logits = teacher_model.forward_head(teacher_model.norm(states[:, -1]))
        torch.testing.assert_close(logits, teacher_model(images), rtol=1e-5, atol=1e-5)


def test_cached_states_are_memmaps_matching_the_teacher(prepared, teacher_model):
    test = load_splits(prepared.cfg.data, prepared.teacher.spec).test
    states, labels = prepared.states["test"], prepared.labels["test"]
    assert isinstance(states, np.memmap) and states.dtype == np.float32
    assert states.shape == (len(test), 5, 17, 32)
    np.testing.assert_array_equal(labels, test.tensors[1].numpy())
    expected = teacher_states(teacher_model, test.tensors[0][:32]).numpy()
    np.testing.assert_allclose(states[:32], expected, rtol=1e-5, atol=1e-5)
    assert states[0].nbytes == bytes_per_sample(4, 17, 32, "float32")


def test_second_call_is_a_cache_hit(prepared, teacher_model, monkeypatch, cpu):
    monkeypatch.setattr(act, "write_states", lambda *a, **k: pytest.fail("recomputed cached states"))
    monkeypatch.setattr(act, "_write_labels", lambda *a, **k: pytest.fail("recomputed cached labels"))

    class NoData(torch.utils.data.Dataset):
        def __len__(self):
            raise AssertionError("a cache hit must not touch the dataset")

    states, labels = cached_states(prepared.cfg, teacher_model, prepared.teacher.key, NoData(), "val", cpu)
    assert isinstance(states, np.memmap)
    np.testing.assert_array_equal(states, prepared.states["val"])
    np.testing.assert_array_equal(labels, prepared.labels["val"])


def test_float16_cache_and_missing_labels_are_rebuilt(make_cfg, tmp_path, prepared, teacher_model, cpu):
    cfg = make_cfg(tmp_path, {"runtime.activation_dtype": "float16"})
    data = torch.utils.data.TensorDataset(prepared_images(prepared, 40), torch.arange(40) % 10)
    states, labels = cached_states(cfg, teacher_model, "somekey", data, "test", cpu, batch_size=16)
    assert states.dtype == np.float16 and states.shape == (40, 5, 17, 32)
    assert states[0].nbytes == bytes_per_sample(4, 17, 32, "float16")
    np.testing.assert_allclose(states.astype(np.float32), prepared.states["test"][:40], rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(labels, np.arange(40) % 10)
    # labels deleted: rebuilt from one pass over the data, states untouched
    folder = tmp_path / "activations" / "somekey"
    (folder / "test.labels.npy").unlink()
    _, labels = cached_states(cfg, teacher_model, "somekey", data, "test", cpu)
    np.testing.assert_array_equal(labels, np.arange(40) % 10)


def test_bytes_per_sample_formula():
    assert bytes_per_sample(12, 261, 768, "float32") == 13 * 261 * 768 * 4  # DINOv2 ViT-B/14 + 4 registers, 224 px
    assert bytes_per_sample(12, 261, 768, "float16") == 13 * 261 * 768 * 2
    assert bytes_per_sample(8, 17, 64, "float32") == 9 * 17 * 64 * 4  # the default digits teacher
