"""SphereCMA (spec §1.4): norms, schedules, the centre, SLERP extrapolation, safe angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

import optimizers
from optimizers import OptimizerError
from optimizers.sphere_cma import angle_between, angle_schedule, slerp


def run(opt, generations, target):
    for _ in range(generations):
        codes = opt.ask()
        opt.tell(codes, codes @ target)


def test_every_code_has_norm_radius():
    dim, radius = 50, 300.0
    opt = optimizers.create("sphere-cma", dim, seed=0, radius=radius)
    target = np.random.default_rng(1).standard_normal(dim)
    for _ in range(20):
        codes = opt.ask()
        np.testing.assert_allclose(np.linalg.norm(codes, axis=1), radius, rtol=0, atol=1e-9)
        opt.tell(codes, codes @ target)
    assert np.linalg.norm(opt.center) == pytest.approx(radius, abs=1e-9)


def test_generation_structure_is_population_then_centre_plus_population():
    opt = optimizers.create("sphere-cma", 20, seed=0, radius=10.0)
    first = opt.ask()
    assert first.shape == (40, 20)  # random codes on the sphere; their weighted mean is the first centre
    opt.tell(first, first[:, 0])
    batch = opt.ask()
    assert batch.shape == (41, 20) and np.array_equal(batch[0], opt.center)
    without = optimizers.create("sphere-cma", 20, seed=0, radius=10.0, include_center=False)
    codes = without.ask()
    without.tell(codes, codes[:, 0])
    assert without.ask().shape == (40, 20)


def test_centre_score_is_ignored_by_the_update():
    centres = []
    for centre_score in (-1e9, 1e9, np.nan):
        opt = optimizers.create("sphere-cma", 20, seed=4, radius=10.0)
        run(opt, 1, np.ones(20))
        codes = opt.ask()
        scores = codes @ np.ones(20)
        scores[0] = centre_score
        opt.tell(codes, scores)
        centres.append(opt.center)
    assert np.array_equal(centres[0], centres[1]) and np.array_equal(centres[0], centres[2])


def test_samples_sit_at_the_scheduled_angle():
    dim = 2000  # the tangent norm concentrates: angle ≈ θ_t
    opt = optimizers.create("sphere-cma", dim, seed=0, radius=45.0, init_code=np.ones(dim))
    codes = opt.ask()
    angles = [math.degrees(angle_between(code, opt.center)) for code in codes[1:]]
    assert np.mean(angles) == pytest.approx(50.0, rel=0.02)


def test_schedules():
    exp = angle_schedule("exp", 50, 7.33, 75)
    assert exp[0] == pytest.approx(50) and exp[-1] == pytest.approx(7.33)
    assert np.allclose(exp[1:] / exp[:-1], 0.9744, atol=1e-4)
    inv = angle_schedule("inv", 50, 7.33, 75)
    assert inv[0] == pytest.approx(76.3, abs=0.05) and inv[-1] == pytest.approx(22.0, abs=0.05)
    opt = optimizers.create("sphere-cma", 10, seed=0, radius=3.0, schedule_generations=3, init_code=np.ones(10))
    seen = []
    for _ in range(5):
        seen.append(opt.current_angle_deg())
        run(opt, 1, np.ones(10))
    assert seen == pytest.approx([50, math.sqrt(50 * 7.33), 7.33, 7.33, 7.33])  # held after the end


def test_step_extrapolates_lr_times_the_angle_to_the_weighted_mean():
    dim = 30
    opt = optimizers.create("sphere-cma", dim, seed=3, radius=5.0, lr=1.5, init_code=np.ones(dim))
    old_centre = opt.center.copy()
    codes = opt.ask()
    scores = codes @ np.arange(dim)
    opt.tell(codes, scores)
    samples, sample_scores = codes[1:], scores[1:]
    order = np.argsort(-sample_scores)[:20]
    weighted_mean = opt.weights @ samples[order]
    to_mean = angle_between(old_centre, weighted_mean)
    assert angle_between(old_centre, opt.center) == pytest.approx(1.5 * to_mean, rel=1e-9)
    assert angle_between(weighted_mean, opt.center) == pytest.approx(0.5 * to_mean, rel=1e-9)


def test_angles_are_safe_at_the_extremes():
    a = np.array([1.0, 0.0, 0.0])
    tiny = np.array([1.0, 1e-13, 0.0])
    assert angle_between(a, a) == 0.0
    assert angle_between(a, tiny) == pytest.approx(1e-13, rel=1e-3)
    assert angle_between(a, -a) == pytest.approx(math.pi)
    assert np.all(np.isfinite(slerp(a, tiny, 1.5)))
    assert np.array_equal(slerp(a, -a, 1.5), -a)
    quarter = slerp(a, np.array([0.0, 1.0, 0.0]), 0.5)
    assert np.allclose(quarter, [math.sqrt(0.5), math.sqrt(0.5), 0.0])


def test_zero_init_code_is_refused():
    with pytest.raises(OptimizerError, match="init_code must be nonzero"):
        optimizers.create("sphere-cma", 10, init_code=np.zeros(10))


def test_finds_the_best_direction():
    dim = 20
    target = np.zeros(dim)
    target[0] = 1.0
    opt = optimizers.create("sphere-cma", dim, seed=0, radius=math.sqrt(dim), population=20, n_parents=10)
    run(opt, 40, target)
    assert math.degrees(angle_between(opt.center, target)) < 15
