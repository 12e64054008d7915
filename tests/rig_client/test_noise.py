"""Noise models: moments against theory; drift and adaptation as documented; seeded reproducibility."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from rig_client import RigError
from rig_client.noise import Adaptation, Chain, Drift, GainNoise, PoissonNoise

N = 200_000


def gain_moments(eps):
    """E[g], E[g^2] for g = max(0, 1 + eps xi): integrals over xi > -1/eps of the normal density."""
    a = 1.0 / eps
    m1 = norm.cdf(a) + eps * norm.pdf(a)
    m2 = (1 + eps**2) * norm.cdf(a) + eps * norm.pdf(a)
    return m1, m2


@pytest.mark.parametrize("eps", [0.2, 0.5, 1.5])
def test_gain_mean_and_variance(eps):
    clean = np.full(N, 3.0)
    obs = GainNoise(eps).apply(clean, np.random.default_rng(0))
    m1, m2 = gain_moments(eps)
    assert obs.min() >= 0
    assert obs.mean() == pytest.approx(3.0 * m1, rel=5e-3)
    assert obs.var() == pytest.approx(9.0 * (m2 - m1**2), rel=2e-2)


def test_gain_zero_eps_is_identity_and_sign_is_kept():
    clean = np.array([[-2.0, 0.0, 5.0]])
    assert np.array_equal(GainNoise(0).apply(clean, np.random.default_rng(0)), clean)
    assert np.all(GainNoise(0.5).apply(np.full(1000, -1.0), np.random.default_rng(0)) <= 0)


@pytest.mark.parametrize("clean, window, scale", [(4.0, 0.15, 10.0), (0.3, 0.1, 50.0)])
def test_poisson_mean_and_variance(clean, window, scale):
    obs = PoissonNoise(window_s=window, scale=scale).apply(np.full(N, clean), np.random.default_rng(1))
    rate = clean * scale
    assert obs.mean() == pytest.approx(rate, rel=1e-2)
    assert obs.var() == pytest.approx(rate / window, rel=3e-2)
    assert np.allclose(obs * window, np.round(obs * window))  # whole spike counts


def test_poisson_negative_drive_is_silent():
    obs = PoissonNoise(0.1, 5.0).apply(np.array([[-3.0, 0.0]]), np.random.default_rng(0))
    assert np.array_equal(obs, [[0.0, 0.0]])


def test_drift_is_an_ou_gain_with_documented_moments():
    tau, sigma = 20.0, 0.1
    drift = Drift(tau=tau, sigma=sigma)
    gains = drift.apply(np.ones(N), np.random.default_rng(2))
    assert gains[0] == 1.0 and drift.step == N
    d = gains - 1.0
    assert d[1000:].std() == pytest.approx(sigma, rel=5e-2)
    for lag in (1, 10, 40):
        r = np.corrcoef(d[1000:-lag], d[1000 + lag:])[0, 1]
        assert r == pytest.approx(math.exp(-lag / tau), abs=0.03)


def test_drift_state_carries_across_calls_and_resets():
    one = Drift(tau=50, sigma=0.3).apply(np.ones((1000, 2)), np.random.default_rng(3))
    split = Drift(tau=50, sigma=0.3)
    rng = np.random.default_rng(3)
    two = np.concatenate([split.apply(np.ones((400, 2)), rng), split.apply(np.ones((600, 2)), rng)])
    np.testing.assert_allclose(two, one)
    assert np.all(one[:, 0] == one[:, 1])  # channels share the presentation's gain
    split.reset()
    assert split.apply(np.ones(1), rng)[0] == 1.0


def test_adaptation_scales_by_factor_to_the_number_of_previous_showings():
    adapt = Adaptation(factor=0.8)
    rng = np.random.default_rng(0)
    first = adapt.apply(np.full(4, 10.0), rng, stimulus_ids=["a", "b", "a", "a"])
    np.testing.assert_allclose(first, [10, 10, 8, 6.4])
    second = adapt.apply(np.full((2, 3), 10.0), rng, stimulus_ids=["a", "c"])
    np.testing.assert_allclose(second, [[10 * 0.8**3] * 3, [10.0] * 3])
    adapt.reset()
    assert adapt.apply(np.array([1.0]), rng, stimulus_ids=["a"])[0] == 1.0
    with pytest.raises(RigError, match="stimulus_ids"):
        adapt.apply(np.ones(2), rng)


def test_seeded_runs_repeat_and_chain_composes():
    def run(seed):
        chain = Chain([Adaptation(0.9), Drift(30, 0.2), GainNoise(0.2), PoissonNoise(0.2, 20)])
        return chain.apply(np.linspace(0, 5, 50), np.random.default_rng(seed), stimulus_ids=list(range(50)))
    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


@pytest.mark.parametrize("make", [lambda: GainNoise(-1), lambda: PoissonNoise(0), lambda: Drift(tau=0),
                                  lambda: Adaptation(float("nan"))])
def test_bad_parameters_are_refused(make):
    with pytest.raises(RigError):
        make()


def test_bad_shape_is_refused():
    with pytest.raises(RigError, match="shape"):
        GainNoise(0.2).apply(np.ones((2, 2, 2)), np.random.default_rng(0))
