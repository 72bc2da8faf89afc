"""`cases` in a sweep space: one label sets several fields together (the paper's ablation rows)."""

from pathlib import Path

import pytest
import yaml

from study.config import ConfigError
from study.contract import ABLATION_ROW, ABLATION_ROWS, K_PARAM
from study.sweep.space import load_sweep

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def spec_with(tmp_path, space: dict, sampler: str = "grid"):
    path = tmp_path / "space.yaml"
    tree = {"name": "t", "base": {"teacher": {"depth": 4}}, "space": space, "search": {"sampler": sampler}}
    path.write_text(yaml.safe_dump(tree))
    return load_sweep(path)


CASES = {"a": {"distill.arm": "tf_only", "raptor.depth_scaling": False}, "b": {"distill.arm": "full"}}


def test_a_case_sets_its_fields_together(tmp_path):
    spec = spec_with(tmp_path, {"row": {"cases": CASES}, "raptor.k": {"choice": [2, 3]}})
    a = spec.trial_config({"row": "a", "raptor.k": 3})
    assert (a.distill.arm, a.raptor.depth_scaling, a.raptor.k) == ("tf_only", False, 3)
    b = spec.trial_config({"row": "b", "raptor.k": 2})
    assert (b.distill.arm, b.raptor.depth_scaling) == ("full", True)  # unset fields keep the base's value
    assert spec.tune_space()["row"] == {"grid_search": ["a", "b"]}
    with pytest.raises(ConfigError, match="space.row: unknown case 'c'"):
        spec.trial_config({"row": "c", "raptor.k": 2})


def test_cases_draw_labels_for_the_other_samplers(tmp_path):
    from ray.tune.search.sample import Categorical

    space = spec_with(tmp_path, {"row": {"cases": CASES}}, sampler="tpe").tune_space()
    assert isinstance(space["row"], Categorical) and list(space["row"].categories) == ["a", "b"]


@pytest.mark.parametrize(
    "space, message",
    [
        ({"distill.arm": {"cases": CASES}}, "space.distill.arm: a cases entry is named by a label"),
        ({"row": {"cases": {"a": {"distill.nope": 1}}}}, "space.row.cases.a.distill.nope: unknown config field"),
        (
            {"row": {"cases": CASES}, "distill.arm": {"choice": ["full"]}},
            "space.row.cases.a.distill.arm: searched by another entry",
        ),
        ({"row": {"cases": {}}}, "cases: give at least one label"),
        ({"row": {"cases": {"a": {}}}}, "cases: give at least one label"),
        ({"row": {"cases": {"a": {"raptor.k": 9}}}}, "raptor.k: must be in [1, 4]"),
        ({"row": {"cases": CASES, "choice": ["a"]}}, "give exactly one of"),
    ],
)
def test_bad_cases_fail_at_load_naming_the_field(tmp_path, space, message):
    with pytest.raises(ConfigError) as err:
        spec_with(tmp_path, space)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name, k", [("ablation", None), ("pretrained_ablation", 3)])
def test_ablation_specs_run_the_papers_rows(name, k):
    spec = load_sweep(SPACES / f"{name}.yaml")
    assert spec.space[ABLATION_ROW].cases == ABLATION_ROWS  # the paper's rows 1-5, in order
    for label, row in ABLATION_ROWS.items():
        flat = spec.trial_config({ABLATION_ROW: label}).flat()
        assert row.items() <= flat.items()
        assert k is None or flat[K_PARAM] == k


def test_set_refuses_a_field_that_a_case_sets(tmp_path):
    spec = spec_with(tmp_path, {"row": {"cases": CASES}})
    path = tmp_path / "space.yaml"
    assert load_sweep(path, {"raptor.k": 3}).trial_config({"row": "a"}).raptor.k == 3  # other fields: the base
    with pytest.raises(ConfigError, match=r"^--set distill.arm: a cases entry of the space sets this field"):
        load_sweep(path, {"distill.arm": "full"})
    assert spec.space["row"].cases == CASES
