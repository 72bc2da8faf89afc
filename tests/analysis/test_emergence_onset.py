"""`analysis.emergence.onset`: when a snapshot curve has covered a fraction of its way (docs/science.md §7)."""

import math

import numpy as np
import pytest

from analysis.emergence import onset


def test_onset_is_the_first_step_past_the_fraction():
    steps = [0, 1, 2, 3, 4]
    assert onset(steps, [0.0, 0.5, 0.95, 1.0, 1.0]) == 2  # 90% of the way from 0 to 1 reached at step 2
    assert onset(steps, [1.0, 0.6, 0.2, 0.0, 0.0], fraction=0.5) == 2  # falling curves too
    assert math.isnan(onset(steps, [0.3] * 5)) and math.isnan(onset([0], [1.0]))
    assert math.isnan(onset(steps, [0.0, np.nan, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="fraction"):
        onset(steps, [0.0, 1.0, 1.0, 1.0, 1.0], fraction=0.0)
