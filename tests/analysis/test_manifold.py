"""analysis.manifold on a synthetic map: a single bump at the hemisphere's centre, two noisy trials per point."""

import json

import numpy as np
import pytest

from analysis.manifold import ManifoldData, analyze, summary
from analysis.tuning import grid_axis, sphere_points


@pytest.fixture(scope="module")
def bump() -> ManifoldData:
    axis = grid_axis(18, 11)
    rng = np.random.default_rng(0)
    centre = sphere_points(0.0, 0.0)
    points = np.array([[sphere_points(t, p) @ centre for p in axis] for t in axis])  # cos of the angle to the centre
    rates = 10 * np.exp(4 * (points - 1))
    trials = [rates.ravel()[k] + rng.normal(0, 0.1, 2) for k in range(rates.size)]
    return ManifoldData(["pc2-3"], axis, axis, [trials])


def test_a_central_bump_is_one_round_loop(bump: ManifoldData) -> None:
    (result,) = analyze(bump, reliability=False)
    raw = result["raw_map"]
    assert raw.shape == (11, 11) and np.unravel_index(np.argmax(raw), raw.shape) == (5, 5)
    signature = result["signature"]
    assert signature.lowest_loop_index <= 2  # single loops from near the bottom of the range up
    assert result["axis_ratio"].mean_top == pytest.approx(1.0, abs=0.15)  # isotropic
    assert result["kent"].kappa > 0 and result["kent"].r2 > 0.9


def test_summary_is_json_and_has_reliability_when_asked(bump: ManifoldData) -> None:
    (plane,) = summary(analyze(bump, n_boot=10))
    doc = json.loads(json.dumps(plane))
    assert doc["plane"] == "pc2-3" and doc["split_half"] is not None and doc["bootstrap"] is not None
    assert doc["signature"]["lowest_loop_index"] <= 2
