"""Search spaces load as data and fail at load, with the field named, when they are invalid."""

import json
from pathlib import Path

import pytest
import yaml

from study.config import ConfigError
from study.sweep.space import check_same_spec, load_sweep

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def minimal(**overrides) -> dict:
    tree = {
        "name": "t",
        "base": {"teacher": {"depth": 4}},
        "space": {"raptor.k": {"choice": [2, 3]}, "teacher.sd_rate": {"uniform": [0.0, 0.5]}},
    }
    tree.update(overrides)
    return tree


@pytest.mark.parametrize("name", ["smoke", "sd_study", "dinov2", "ablation", "reference"])
def test_shipped_spaces_load(name):
    spec = load_sweep(SPACES / f"{name}.yaml")
    assert spec.name == name and spec.space
    cfg = spec.trial_config({key: dist.corners()[0] for key, dist in spec.space.items()})
    key, dist = next(iter(spec.space.items()))
    assert dist.fields(key, dist.corners()[0]).items() <= cfg.flat().items()


def test_sd_study_covers_the_paper_ranges():
    spec = load_sweep(SPACES / "sd_study.yaml")
    assert min(spec.space["teacher.sd_rate"].corners()) == 0.0 and max(spec.space["teacher.sd_rate"].corners()) == 0.6
    assert spec.space["raptor.k"].corners() == [2, 3, 4]
    assert {"distill.stage2.lambda_cls", "distill.anneal"} <= set(spec.space)


def test_trial_config_merges_base_and_params(tmp_path):
    spec = load_sweep(write(tmp_path, minimal()))
    cfg = spec.trial_config({"raptor.k": 3, "teacher.sd_rate": 0.25}, name="t-1")
    assert (cfg.teacher.depth, cfg.raptor.k, cfg.teacher.sd_rate, cfg.name) == (4, 3, 0.25, "t-1")


def test_tune_space_kinds(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    tree = minimal(
        space={
            "raptor.k": {"choice": [2, 3]},
            "teacher.seed": {"randint": [0, 3]},
            "distill.stage2.lr": {"loguniform": [1e-4, 1e-3]},
            "distill.anneal": {"uniform": [0.1, 0.5]},
        }
    )
    space = load_sweep(write(tmp_path, tree)).tune_space()
    assert isinstance(space["raptor.k"], Categorical) and isinstance(space["teacher.seed"], Integer)
    assert isinstance(space["distill.stage2.lr"], Float) and isinstance(space["distill.anneal"], Float)


@pytest.mark.parametrize(
    "tree, field",
    [
        (minimal(space={"raptor.kk": {"choice": [2]}}), "space.raptor.kk: unknown config field"),
        (minimal(surprise=1), "surprise: unknown key"),
        (minimal(space={"teacher.sd_rate": {"uniform": [0.5, 0.5]}}), "empty range"),
        (minimal(space={"raptor.k": {"choice": []}}), "choice: empty list"),
        (minimal(space={"raptor.k": {"choice": [2, 5]}}), "raptor.k: must be in [1, 4]"),
        (minimal(space={"distill.stage2.lambda_cls": {"uniform": [0.2, 1.5]}}), "distill.stage2.lambda_cls"),
        (minimal(space={"teacher.sd_rate": {"uniform": [0.0, 1.0]}}), "teacher.sd_rate"),
        (minimal(search={"metric": "accuracy"}), "search.metric"),
        (minimal(resources={"worker_cpu": 0}), "resources.worker_cpu"),
        (minimal(base={"teacher": {"depth": "deep"}}), "teacher.depth"),
    ],
)
def test_bad_space_fails_at_load_naming_the_field(tmp_path, tree, field):
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, tree))
    message = str(err.value)
    assert field in message and "\n" not in message


def test_grid_crosses_the_choices_and_draws_the_rest(tmp_path):
    from ray.tune.search.sample import Float

    spec = load_sweep(write(tmp_path, minimal(search={"sampler": "grid"})))
    space = spec.tune_space()
    assert space["raptor.k"] == {"grid_search": [2, 3]}
    assert isinstance(space["teacher.sd_rate"], Float)  # drawn per grid point, not gridded


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_sweep(tmp_path / "nope.yaml")


def test_set_overrides_spec_sections_and_base_fields(tmp_path):
    path = write(tmp_path, minimal())
    spec = load_sweep(
        path,
        {
            "search.num_samples": 3,
            "name": "t2",
            "data.path": "/imgs",
            "data.name": "imagefolder",
            "teacher.depth": 6,
            "space.raptor.k": {"choice": [5, 6]},
        },
    )
    assert (spec.search.num_samples, spec.name) == (3, "t2")
    assert spec.base["data"] == {"path": "/imgs", "name": "imagefolder"} and spec.base["teacher"] == {"depth": 6}
    assert spec.space["raptor.k"].choice == [5, 6] and "teacher.sd_rate" in spec.space  # other axes kept
    assert load_sweep(path).search.num_samples != 3  # the file itself is untouched


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"raptor.k": 3},
            "--set raptor.k: the space searches this field; set its distribution instead, "
            "e.g. --set space.raptor.k='{choice: [3]}'",
        ),
        ({"search.num_samples": 0}, "search.num_samples"),
        ({"space.raptor.k": {"choice": [2, 9]}}, "raptor.k: must be in [1, 4]"),  # still validated at the corners
        ({"teacher.nope": 1}, "teacher.nope"),
        ({"space": 1}, "--set space: name a searched field"),
    ],
)
def test_bad_set_is_one_line_naming_the_field(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, minimal()), overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_set_space_on_a_malformed_space_still_names_space(tmp_path):
    with pytest.raises(ConfigError, match=r"space"):
        load_sweep(write(tmp_path, minimal(space=[1, 2])), {"space.raptor.k": {"choice": [2]}})


def test_resume_refuses_a_changed_spec_naming_the_field(tmp_path):
    path = write(tmp_path, minimal())
    launched = json.loads(json.dumps(load_sweep(path, {"search.num_samples": 2}).model_dump(mode="json")))
    check_same_spec(launched, load_sweep(path, {"search.num_samples": 2, "description": "edited"}))  # same sweep
    with pytest.raises(
        ConfigError, match=r"^resume: search.num_samples differs from the launched sweep \(launched 2, now 8\)"
    ):
        check_same_spec(launched, load_sweep(path))
    with pytest.raises(ConfigError, match=r"^resume: space.raptor.k.choice differs"):
        check_same_spec(launched, load_sweep(path, {"search.num_samples": 2, "space.raptor.k": {"choice": [2]}}))


def test_ablation_runs_every_row_at_k_2_3_4_with_3_seeds_and_reference_is_the_reference_recipe():
    spec = load_sweep(SPACES / "ablation.yaml")
    assert spec.search.sampler == "grid"
    assert list(spec.space["ablation_row"].cases) == [
        "tf_only",
        "ar_anneal",
        "depth_scaling",
        "cls_weighting",
        "stage2",
    ]
    assert spec.space["raptor.k"].choice == [2, 3, 4] and len(spec.space["seed"].choice) >= 3
    assert spec.trial_config({}).distill.tf_mode == "loss_mix"
    reference = load_sweep(SPACES / "reference.yaml").trial_config({})
    assert (reference.raptor.init, reference.partition.method, reference.distill.tf_mode) == (
        "random",
        "bisection",
        "loss_mix",
    )
    assert (reference.distill.grad_clip, reference.distill.batch_size, reference.distill.stage1.lr) == (1.0, 64, 3e-4)
