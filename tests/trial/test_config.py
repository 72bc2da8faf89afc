import json

import pytest
import yaml
from pydantic import ValidationError

from study.config import ConfigError, TrialConfig, build_trial_config, load_trial_config
from study.configio import flatten, read_yaml, unflatten


def config_error(overrides: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_trial_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_validate_and_match_the_documented_default_trial():
    cfg = load_trial_config()
    assert isinstance(cfg, TrialConfig)
    assert (cfg.data.name, cfg.teacher.depth, cfg.teacher.width, cfg.teacher.patch_size, cfg.raptor.k) == (
        "digits",
        8,
        64,
        2,
        2,
    )
    assert cfg == TrialConfig()
    # stage loss weights of the reference (docs/science.md §4)
    assert (cfg.distill.stage1.lambda_cls, cfg.distill.stage1.lambda_reg, cfg.distill.stage1.lambda_patch) == (
        0.34,
        0.33,
        0.33,
    )
    assert (cfg.distill.stage2.lambda_cls, cfg.distill.stage2.lambda_reg, cfg.distill.stage2.lambda_patch) == (
        0.45,
        0.10,
        0.45,
    )


def test_round_trip_through_dict_json_and_yaml(tiny_cfg):
    cfg = load_trial_config(None, {"teacher.sd_rate": 0.3, "raptor.k": 3, "distill.stage2.enabled": False, "name": "x"})
    assert build_trial_config(cfg.to_dict()) == cfg
    assert build_trial_config(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert build_trial_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    assert build_trial_config(tiny_cfg.to_dict()) == tiny_cfg


def test_yaml_file_plus_overrides(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("teacher:\n  sd_rate: 0.2\n  depth: 6\nraptor:\n  k: 3\n")
    cfg = load_trial_config(path, {"raptor.k": 4})
    assert (cfg.teacher.sd_rate, cfg.teacher.depth, cfg.raptor.k) == (0.2, 6, 4)
    assert cfg.teacher.width == 64  # untouched fields keep their defaults


def test_flat_and_unflatten_are_inverse():
    cfg = load_trial_config(None, {"teacher.sd_rate": 0.1})
    flat = cfg.flat()
    assert flat["teacher.sd_rate"] == 0.1 and flat["distill.stage1.lambda_cls"] == 0.34
    assert all(not isinstance(v, dict) for v in flat.values())
    assert unflatten(flat) == cfg.to_dict()
    assert flatten(unflatten(flat)) == flat
    assert build_trial_config(unflatten(flat)) == cfg


def test_unflatten_rejects_a_value_used_as_a_section():
    with pytest.raises(ConfigError, match="'a' is a value"):
        unflatten({"a": 1, "a.b": 2})


@pytest.mark.parametrize(
    "field,value",
    [
        ("teacher.sd_rate", 0.5),
        ("teacher.seed", 1),
        ("teacher.depth", 6),
        ("teacher.width", 48),
        ("teacher.epochs", 3),
        ("teacher.registers", 2),
        ("data.split_seed", 1),
        ("data.max_samples", 100),
        ("data.val_fraction", 0.2),
    ],
)
def test_teacher_key_changes_with_teacher_and_data_fields(field, value):
    base = load_trial_config()
    assert load_trial_config(None, {field: value}).teacher_key() != base.teacher_key()


@pytest.mark.parametrize(
    "field,value",
    [
        ("raptor.k", 3),
        ("raptor.init", "random"),
        ("distill.stage1.epochs", 9),
        ("distill.anneal", 0.5),
        ("runtime.cache_dir", "/elsewhere"),
        ("runtime.num_threads", 1),
        ("runtime.progress", False),
        ("similarity.num_samples", 100),
        ("seed", 5),
        ("name", "other"),
    ],
)
def test_teacher_key_ignores_raptor_distill_runtime_fields(field, value):
    base = load_trial_config()
    assert load_trial_config(None, {field: value}).teacher_key() == base.teacher_key()


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"teacher.foo": 1}, "teacher.foo: unknown key"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"teacher.depth": "deep"}, "teacher.depth: Input should be a valid integer"),
        ({"runtime.progress": "maybe"}, "runtime.progress: Input should be a valid boolean"),
        ({"raptor.k": 9}, "raptor.k: must be in [1, 8] (the teacher's depth), got 9"),
        ({"raptor.k": 5, "teacher.depth": 4}, "raptor.k: must be in [1, 4]"),
        (
            {"distill.stage1.lambda_cls": 1.5},
            "distill.stage1.lambda_cls: Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            {"distill.stage2.lambda_patch": -0.1},
            "distill.stage2.lambda_patch: Input should be greater than or equal to 0",
        ),
        ({"teacher.sd_rate": 1.0}, "teacher.sd_rate: Input should be less than 1 (got 1.0)"),
        ({"data.name": "cifar10"}, "data.path: required for dataset 'cifar10'"),
        ({"teacher.width": 30, "teacher.heads": 4}, "teacher.width: must be divisible by teacher.heads=4"),
        ({"teacher.source": "timm"}, "teacher.timm_name: required"),
        ({"partition.method": "fixed"}, "partition.boundaries: required when partition.method is 'fixed'"),
        ({"partition.boundaries": [4]}, "partition.boundaries: only used with partition.method 'fixed'"),
        ({"partition.method": "fixed", "partition.boundaries": [3, 5]}, "partition.boundaries: needs k - 1 = 1 values"),
        (
            {"partition.method": "fixed", "partition.boundaries": [8]},
            "partition.boundaries: must be strictly increasing layers in [1, 7], got [8]",
        ),
        (
            {"partition.method": "fixed", "partition.boundaries": [5, 3], "raptor.k": 3},
            "partition.boundaries: must be strictly increasing",
        ),
        ({"partition.method": "greedy"}, "partition.method: Input should be 'dp', 'bisection', 'fixed' or 'random'"),
        ({"distill.tf_mode": "both"}, "distill.tf_mode: Input should be 'input_mix' or 'loss_mix'"),
        ({"distill.arm": "tf"}, "distill.arm: Input should be"),
        ({"distill.grad_clip": -1}, "distill.grad_clip: Input should be greater than or equal to 0"),
        (
            {"distill.stage2.lambda_cls": 0, "distill.stage2.lambda_reg": 0, "distill.stage2.lambda_patch": 0},
            "distill.stage2: lambda_cls + lambda_reg + lambda_patch must be > 0",
        ),
    ],
)
def test_invalid_input_is_one_line_naming_field_and_range(overrides, expected):
    message = config_error(overrides)
    assert message.startswith(expected), message


def test_k_is_not_checked_against_scratch_depth_for_pretrained_teachers():
    # the depth of a timm teacher is only known once it is built (checked again in trial.prepare)
    cfg = load_trial_config(
        None, {"teacher.source": "timm", "teacher.timm_name": "vit_tiny_patch16_224", "raptor.k": 12}
    )
    assert cfg.raptor.k == 12


def test_non_mapping_inputs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_trial_config([1, 2])
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_trial_config(path)


def test_malformed_yaml_is_a_one_line_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher:\n  depth: [1, 2\nraptor: {k: 2\n")
    with pytest.raises(ConfigError) as info:
        load_trial_config(path)
    message = str(info.value)
    assert "malformed YAML" in message and str(path) in message and "line" in message
    assert "\n" not in message


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_yaml(tmp_path / "nope.yaml")
    assert "no such config file" in str(info.value) and "\n" not in str(info.value)


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_trial_config(path) == TrialConfig()


def test_config_is_frozen():
    cfg = TrialConfig()
    with pytest.raises(ValidationError):
        cfg.raptor.k = 3  # type: ignore[misc]
