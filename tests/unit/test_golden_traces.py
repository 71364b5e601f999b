"""The engine's behaviour is pinned: traces of the default model equal the committed ones.

Integer and boolean arrays (tokens, slots, set sizes, slot maps, pruning steps) must be identical;
float arrays (probabilities, positions, scores) equal to 1e-6, so the pin survives a different CPU's
last-bit rounding but not a change of mechanics.
"""

import numpy as np
import pytest

from golden_traces import PATH, traces

pytestmark = pytest.mark.slow


def test_traces_equal_pinned(default_model):
    want = dict(np.load(PATH))
    got = traces(default_model)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.shape == w.shape, k
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6, equal_nan=True, err_msg=k)
        else:
            np.testing.assert_array_equal(g, w, err_msg=k)
