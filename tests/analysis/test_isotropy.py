"""Axis ratios (spec B4), Kent fits and the RBF probe (spec B6, C2.5)."""
import json

import numpy as np
import pytest
import torch

from analysis import AnalysisError
from analysis.isotropy import RBFProbe, fit_kent, kent, kent_axes, levelset_axis_ratio, rbf_probe, rbf_ratios
from analysis.tuning import grid_axis, sphere_points

FINE = np.deg2rad(np.arange(-90, 91))
POINTS = sphere_points(FINE[:, None], FINE[None, :])
PEAK = dict(theta0=np.deg2rad(20), phi0=np.deg2rad(-10))


def test_kent_matches_its_formula():
    axes = kent_axes(0.4, -0.3, 0.7)
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-12)
    x = sphere_points(0.1, 0.2)
    expected = 2 + 3 * np.exp(5 * x @ axes[0] + 1.5 * ((x @ axes[1]) ** 2 - (x @ axes[2]) ** 2))
    assert kent(x, theta0=0.4, phi0=-0.3, psi=0.7, kappa=5, beta=1.5, A=3, b=2) == pytest.approx(expected)


def test_round_bump_has_ratio_one():
    ratio = levelset_axis_ratio(kent(POINTS, **PEAK, psi=0.0, kappa=5.0, beta=0.0), FINE, FINE)
    assert ratio.peak == pytest.approx((PEAK["theta0"], PEAK["phi0"]))
    assert ratio.mean_top == pytest.approx(1.0, abs=0.02)
    assert np.isnan(ratio.ratios[0])  # the lowest level encloses nothing: it is the border
    json.dumps(ratio.to_dict())


@pytest.mark.parametrize("kappa, beta, psi", [(8.0, 2.0, 0.5), (10.0, 3.0, -0.3), (20.0, 2.0, 1.2)])
def test_kent_bump_axis_ratio(kappa, beta, psi):
    values = kent(POINTS, **PEAK, psi=psi, kappa=kappa, beta=beta)
    ratio = levelset_axis_ratio(values, FINE, FINE)
    expected = np.sqrt((kappa + 2 * beta) / (kappa - 2 * beta))
    assert ratio.mean_top == pytest.approx(expected, rel=0.03)


def test_kent_fit_recovers_parameters():
    grid = grid_axis(9, 21)
    points = sphere_points(grid[:, None], grid[None, :])
    truth = dict(theta0=0.3, phi0=-0.2, psi=0.5, kappa=6.0, beta=2.0, A=5 * np.exp(-6.0), b=1.0)
    values = kent(points, **truth) + 0.01 * np.random.default_rng(0).standard_normal((21, 21))
    fit = fit_kent(values, grid, grid)
    for name, value in truth.items():
        assert fit.params()[name] == pytest.approx(value, rel=0.05, abs=0.02), name
    assert fit.r2 > 0.99
    noise = fit_kent(1 + np.random.default_rng(1).random((21, 21)), grid, grid)
    assert noise.r2 < 0.3
    json.dumps(fit.to_dict())


def test_kent_fit_rejects_bad_input():
    with pytest.raises(AnalysisError, match="values"):
        fit_kent(np.full((5, 5), np.nan))


PEAK_CODE = np.array([0.5, -0.2, 0.1, 0.3])
LEVELS = [0.6, 0.7, 0.8, 0.9]


def euclidean(z, z0):
    return torch.linalg.norm(z - z0, dim=1)


def radial(z):
    return 100 * torch.exp(-euclidean(z, torch.as_tensor(PEAK_CODE, dtype=z.dtype)[None]) / 2.0)


EIGVALS = torch.tensor([0.05, 0.1, 0.2, 0.2])


def quadratic(z):
    dz = z - torch.as_tensor(PEAK_CODE, dtype=z.dtype)[None]
    return 100 * torch.exp(-0.5 * (dz ** 2 * EIGVALS).sum(1))


def probes(fn, steps=200):
    return {mode: rbf_probe(fn, euclidean, PEAK_CODE, levels=LEVELS, mode=mode, n=20, steps=steps, rng=1)
            for mode in ("min", "max")}


def test_rbf_toy_is_isotropic():
    results = probes(radial, steps=100)
    stats = rbf_ratios(results)
    assert stats["max_min_ratio"] == pytest.approx(1.0, abs=0.05)
    # Level r of exp(-d/2) sits at d = -2 ln r; the probes reach it.
    expected = -2 * np.log(LEVELS)
    np.testing.assert_allclose(stats["min"]["bin_mean_distance"], expected, rtol=0.1, atol=0.03)
    assert stats["min"]["slope"] < 0 and stats["min"]["spearman"] < -0.9
    assert np.isnan(stats["global_local_ratio"])


def test_anisotropic_quadratic_ratio():
    results = probes(quadratic)
    stats = rbf_ratios(results)
    lam = EIGVALS.numpy()
    assert stats["max_min_ratio"] == pytest.approx(np.sqrt(lam.max() / lam.min()), rel=0.05)
    assert results["max"].codes.shape == (4, 20, 4)
    assert np.quantile(np.abs(results["min"].fraction - np.array(LEVELS)[:, None]), 0.9) < 0.02

def squared(z, z0):
    return ((z - z0) ** 2).sum(1)


def test_with_a_squared_distance_the_quadratic_ratio_is_the_eigenvalue_ratio():
    """The project's distances are squared (LPIPS-like): a level set zᵀΛz = c has squared semi-axes c/λ."""
    results = {mode: rbf_probe(quadratic, squared, PEAK_CODE, levels=LEVELS, mode=mode, n=20, steps=150, rng=1,
                               alpha=1.0) for mode in ("min", "max")}  # a squared distance needs a gentler weight
    lam = EIGVALS.numpy()
    assert rbf_ratios(results)["max_min_ratio"] == pytest.approx(lam.max() / lam.min(), rel=0.05)


def test_global_probe_and_modes():
    results = probes(quadratic, steps=60)
    results["max_abinit"] = rbf_probe(quadratic, euclidean, PEAK_CODE, levels=LEVELS, mode="max_abinit",
                                      n=20, rng=2)
    stats = rbf_ratios(results)
    assert stats["global_local_ratio"] == pytest.approx(1.0, abs=0.15)  # one peak: global = local
    free = rbf_probe(quadratic, euclidean, PEAK_CODE, levels=[0.5], mode="none", n=8, rng=0)
    assert free.activation.shape == (1, 8) and np.abs(free.fraction - 0.5).max() < 0.05
    again = rbf_probe(quadratic, euclidean, PEAK_CODE, levels=[0.5], mode="none", n=8, rng=0)
    np.testing.assert_array_equal(again.codes, free.codes)


def test_rbf_rejects_bad_arguments():
    with pytest.raises(AnalysisError, match="mode"):
        rbf_probe(quadratic, euclidean, PEAK_CODE, mode="widest")
    with pytest.raises(AnalysisError, match="'min'"):
        rbf_ratios({"max": None})
    with pytest.raises(AnalysisError, match="z_star"):
        rbf_probe(lambda z: torch.zeros(len(z)), euclidean, PEAK_CODE)
    with pytest.raises(AnalysisError, match="positive and finite"):
        rbf_probe(lambda z: torch.full((len(z),), float("inf")), euclidean, PEAK_CODE)


def probe_of(mode, activation, distance, f_star=10.0):
    """A probe from given samples: rows are levels 0.6 and 0.9, f* = 10."""
    activation = np.asarray(activation, dtype=float)
    return RBFProbe(mode, np.array([0.6, 0.9]), f_star, activation, np.asarray(distance, dtype=float),
                    np.zeros((*activation.shape, 1), np.float32))


REACHED = [[6.0, 6.1, 5.9], [9.0, 8.9, 9.1]]  # f/f* in the 0.6 and 0.9 bins


def test_a_probe_whose_samples_are_all_dead_is_nan_with_a_note():
    """max_abinit from a global start that never wakes the unit (f = 0 at every sample, as a study unit's did):
    f/f* is constant, so no distance fit (np.polyfit raised LinAlgError) and no global/local ratio."""
    results = {"min": probe_of("min", REACHED, [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]),
               "max": probe_of("max", REACHED, [[4.0, 4.0, 4.0], [3.0, 3.0, 3.0]]),
               "max_abinit": probe_of("max_abinit", np.zeros((2, 3)), [[5.0, 6.0, 7.0], [5.5, 6.5, 7.5]])}
    stats = rbf_ratios(results, bins=(0.6, 0.9), min_count=3)
    assert stats["max_min_ratio"] == pytest.approx((2.0 + 3.0) / 2)
    assert np.isnan(stats["global_local_ratio"])
    dead = stats["max_abinit"]
    assert np.isnan([dead["slope"], dead["intercept"], dead["spearman"]]).all()
    assert np.isnan(dead["bin_mean_distance"]).all()
    assert stats["min"]["slope"] == pytest.approx(-1.0 / 0.3, rel=0.05) and stats["min"]["spearman"] < -0.8
    assert stats["notes"] == [
        "max_abinit/max undefined: no f/f* bin (0.6, 0.9 ± 0.05) holds 3 samples of both max_abinit "
        "(all 6 samples at f/f* = 0) and max (reached f/f* 0.59-0.91)",
        "max_abinit: no distance fit, all 6 samples at f/f* = 0"]
    json.dumps(stats)  # plain numbers and strings


def test_non_finite_samples_are_left_out_with_a_note():
    distance = [[2.0, np.nan, 2.0], [1.0, 1.0, np.inf]]
    results = {"min": probe_of("min", REACHED, distance), "max": probe_of("max", REACHED, distance)}
    stats = rbf_ratios(results, bins=(0.6, 0.9), min_count=2)
    assert stats["max_min_ratio"] == pytest.approx(1.0)
    assert stats["min"]["bin_mean_distance"] == pytest.approx([2.0, 1.0])
    assert np.isfinite([stats["min"]["slope"], stats["min"]["intercept"]]).all()
    assert stats["notes"] == ["min: 2 of 6 samples non-finite, left out", "max: 2 of 6 samples non-finite, left out"]


def test_equal_distances_have_no_rank_correlation_and_a_note():
    results = {"min": probe_of("min", REACHED, [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]),
               "max": probe_of("max", REACHED, np.full((2, 3), 3.0))}
    stats = rbf_ratios(results, bins=(0.6, 0.9), min_count=3)
    assert np.isnan(stats["max"]["spearman"]) and stats["max"]["slope"] == pytest.approx(0.0, abs=1e-9)
    assert stats["notes"] == ["max: no rank correlation, every distance is 3"]


def test_kent_fit_of_a_sharp_peak():
    axis = np.deg2rad(np.arange(-90, 91, 5))
    values = kent(sphere_points(axis[:, None], axis[None, :]), theta0=-0.4, phi0=0.5, psi=-0.2,
                  kappa=60.0, beta=10.0, A=3 * np.exp(-60.0), b=0.5)
    fit = fit_kent(values, axis, axis)
    assert fit.kappa == pytest.approx(60.0, rel=0.02) and fit.beta == pytest.approx(10.0, rel=0.05)
    assert fit.height == pytest.approx(3.0, rel=0.02) and fit.r2 > 0.999
