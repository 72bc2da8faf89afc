"""Property: the config loaders accept a config that then validates, or reject it with one line.

They never crash with another exception, whatever the input."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.config import ConfigError, TrialConfig, build_trial_config
from study.configio import unflatten
from study.sweep.space import SweepSpec, _validate_space

KNOWN = sorted(TrialConfig().flat())
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 100),
    st.floats(-2, 2),
    st.just(float("nan")),
    st.text(max_size=8),
    st.lists(st.integers(0, 3), max_size=3),
)
keys = st.one_of(st.sampled_from(KNOWN), st.text(min_size=1, max_size=12).filter(lambda s: "." not in s))


def assert_one_line_or_valid(build):
    try:
        cfg = build()
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message
        return None
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, leaf, max_size=6))
def test_trial_config_loader_never_crashes(flat):
    try:
        tree = unflatten(flat)
    except ConfigError:
        return
    cfg = assert_one_line_or_valid(lambda: build_trial_config(tree))
    if cfg is not None:  # accepted -> it round-trips and re-validates
        assert build_trial_config(cfg.to_dict()) == cfg


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.dictionaries(st.sampled_from(KNOWN), leaf, max_size=3),
    space=st.dictionaries(
        keys,
        st.one_of(
            st.fixed_dictionaries({"uniform": st.tuples(st.floats(-1, 2), st.floats(-1, 2))}),
            st.fixed_dictionaries({"choice": st.lists(leaf, max_size=3)}),
            st.fixed_dictionaries({"randint": st.tuples(st.integers(-2, 10), st.integers(-2, 10))}),
            st.dictionaries(st.text(max_size=5), leaf, max_size=2),
        ),
        max_size=3,
    ),
)
def test_sweep_loader_never_crashes(base, space):
    def build():
        try:
            spec = SweepSpec.model_validate({"name": "fuzz", "base": unflatten(base), "space": space})
        except ValueError as err:  # pydantic's ValidationError; load_sweep turns it into one line
            raise ConfigError(str(err).splitlines()[0]) from None
        _validate_space(spec)
        return spec

    spec = assert_one_line_or_valid(build)
    if spec is not None:
        for key, dist in spec.space.items():
            spec.trial_config({key: dist.corners()[0]})
