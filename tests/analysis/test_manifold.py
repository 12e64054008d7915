"""analysis.manifold on a synthetic map: a single bump at the hemisphere's centre, two noisy trials per point."""

import json
from dataclasses import replace

import numpy as np
import pytest

from analysis.manifold import NO_REPEATS, NOT_REQUESTED, ManifoldData, analyze, summary
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
    assert doc["signature"]["lowest_loop_index"] <= 2 and doc["note"] is None


def test_skipped_reliability_is_noted(bump: ManifoldData) -> None:
    (plane,) = summary(analyze(bump, reliability=False))
    assert plane["split_half"] is None and plane["bootstrap"] is None and plane["note"] == NOT_REQUESTED


def test_one_trial_per_point_gives_the_map_without_reliability(bump: ManifoldData) -> None:
    once = replace(bump, trials=[[t[:1] for t in bump.trials[0]]])
    assert once.unrepeated_planes() == ["pc2-3"] and bump.unrepeated_planes() == []
    (result,) = analyze(once, n_boot=10)  # reliability asked, impossible: skipped with a note
    assert "split_half" not in result and "bootstrap" not in result and result["note"] == NO_REPEATS
    (plane,) = summary([result])
    assert plane["smoothing"] == 0.0 and plane["split_half"] is None and "repeats >= 2" in plane["note"]
    assert plane["signature"]["lowest_loop_index"] <= 2 and plane["kent"]["r2"] > 0.9


def test_kent_is_fit_on_the_trial_means_with_each_pole_column_pooled(bump: ManifoldData) -> None:
    trials = list(bump.trials[0])
    for k in range(11, 121, 11):  # pole points shown once per column, as the unique images
        trials[k] = trials[k + 10] = np.array([])
    trials[0], trials[10] = np.array([1.0, 2.0]), np.array([4.0, 6.0])
    (result,) = analyze(replace(bump, trials=[trials]), reliability=False)
    raw = result["raw_map"]
    assert np.all(raw[:, 0] == 1.5) and np.all(raw[:, -1] == 5.0)
    i, j = np.unravel_index(np.argmax(raw), raw.shape)
    assert (i, j) == (5, 5) and raw[i, j] == np.mean(trials[60])
    assert result["kent"].theta0 == pytest.approx(0, abs=0.05) and result["kent"].r2 > 0.8


def test_progress_names_each_stage(bump: ManifoldData) -> None:
    class Bar:
        def __init__(self):
            self.stages, self.done = [], 0

        def reset(self, total):
            self.total = total

        def set_description(self, name):
            self.stages.append(name)

        def update(self):
            self.done += 1

    bar = Bar()
    analyze(bump, n_boot=2, progress=bar)
    assert bar.stages == ["pc2-3: map", "pc2-3: split halves", "pc2-3: bootstrap (2)"] and bar.total == bar.done == 3
