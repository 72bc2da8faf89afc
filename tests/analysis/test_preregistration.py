"""Pre-registration in the sweep spec (docs/science.md §7): purpose and primary relation, refused at load if wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.config import ConfigError
from study.contract import PRIMARY_PREDICTOR, PRIMARY_TARGET
from study.sweep.space import check_same_spec, load_sweep

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def write(tmp_path: Path, **sections) -> Path:
    tree = {"name": "t", "base": {"teacher": {"depth": 4}}, "space": {"raptor.k": {"choice": [2, 3]}}, **sections}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def one_line_error(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_sweep(path, overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_defaults_are_a_correlation_sweep_with_the_documented_primary(tmp_path):
    spec = load_sweep(write(tmp_path))
    assert spec.purpose == "correlation"
    assert (spec.analysis.primary.predictor, spec.analysis.primary.target) == (PRIMARY_PREDICTOR, PRIMARY_TARGET)
    assert (PRIMARY_PREDICTOR, PRIMARY_TARGET) == ("phase.cosine.within_sim", "r2_pooled.final")


def test_correlation_sweep_with_asha_is_refused_in_one_line(tmp_path):
    message = one_line_error(write(tmp_path, scheduler={"type": "asha"}))
    assert "scheduler.type: 'asha'" in message and "correlation" in message and "purpose: tuning" in message
    # and by the default purpose as well as the explicit one
    assert one_line_error(write(tmp_path, purpose="correlation", scheduler={"type": "asha"})) == message


def test_tuning_sweep_may_stop_early(tmp_path):
    spec = load_sweep(write(tmp_path, purpose="tuning", scheduler={"type": "asha"}))
    assert (spec.purpose, spec.scheduler.type) == ("tuning", "asha")


@pytest.mark.parametrize("field, value", [("predictor", "phase.cosine.bogus"), ("target", "r2.finale")])
def test_unknown_primary_metric_is_refused_in_one_line(tmp_path, field, value):
    message = one_line_error(write(tmp_path, analysis={"primary": {field: value}}))
    assert f"analysis.primary.{field}: unknown metric {value!r}" in message


def test_unknown_purpose_and_overrides_are_validated(tmp_path):
    assert "purpose" in one_line_error(write(tmp_path, purpose="explore"))
    assert "analysis.primary.target" in one_line_error(write(tmp_path), {"analysis.primary.target": "loss"})
    spec = load_sweep(write(tmp_path), {"analysis.primary.target": "r2.final"})
    assert spec.analysis.primary.target == "r2.final"


def test_shipped_specs_declare_their_purpose():
    assert load_sweep(SPACES / "sd_study.yaml").purpose == "correlation"
    assert load_sweep(SPACES / "dinov2.yaml").purpose == "tuning"  # ASHA
    for name in ("smoke", "gpu_fractional"):
        spec = load_sweep(SPACES / f"{name}.yaml")
        assert spec.purpose == "correlation" and spec.scheduler.type == "none"


def test_resume_of_a_sweep_launched_before_the_new_sections(tmp_path):
    spec = load_sweep(write(tmp_path))
    launched = spec.model_dump(mode="json")
    del launched["purpose"], launched["analysis"]
    check_same_spec(launched, spec)  # defaults apply; no refusal
    with pytest.raises(ConfigError, match="purpose"):
        check_same_spec({**launched, "purpose": "tuning"}, spec)
