"""PCA hemisphere grid (spec B1) and spherical-spline smoothing (spec B2)."""
import numpy as np
import pytest

from analysis import AnalysisError
from analysis.tuning import grid_axis, highest_pc, pca_sphere_grid, smooth_sphere_map, sphere_points


def evolution(dim=60, n_gen=30, pop=10, seed=0):
    """Codes of a fake evolution drifting away from the origin along one direction."""
    rng = np.random.default_rng(seed)
    drift = rng.standard_normal(dim)
    drift /= np.linalg.norm(drift)
    gens = [g * 0.5 * drift + rng.standard_normal((pop, dim)) * (1 + 0.02 * np.arange(dim)) for g in range(n_gen)]
    return np.concatenate(gens), gens[-1]


def test_grid_is_the_pc_hemisphere():
    codes, final = evolution()
    grid = pca_sphere_grid(codes, final_codes=final)
    radius = np.linalg.norm(final, axis=1).mean()
    assert grid.radius == pytest.approx(radius)
    assert grid.codes.shape == (121, codes.shape[1])
    np.testing.assert_allclose(np.linalg.norm(grid.codes, axis=1), radius)
    np.testing.assert_allclose(grid.basis @ grid.basis.T, np.eye(3), atol=1e-12)
    assert np.rad2deg(grid.theta) == pytest.approx(np.arange(-90, 91, 18))
    # Independent PCA: the axes are PC1..PC3 up to sign, PC1 pointing towards the last code.
    centred = codes - codes.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(grid.basis @ vt[:3].T), np.eye(3), atol=1e-10)
    assert centred[-1] @ grid.basis[0] > 0
    # θ-major flattening: (θ, φ) = (0, 0) is R·PC1, (90°, 0) is R·PC2, φ = 90° is R·PC3.
    def code(t_deg, p_deg):
        i = int(np.flatnonzero(np.isclose(np.rad2deg(grid.theta), t_deg))[0])
        j = int(np.flatnonzero(np.isclose(np.rad2deg(grid.phi), p_deg))[0])
        return grid.codes[i * len(grid.phi) + j]
    np.testing.assert_allclose(code(0, 0), radius * grid.basis[0], atol=1e-12)
    np.testing.assert_allclose(code(90, 0), radius * grid.basis[1], atol=1e-12)
    np.testing.assert_allclose(code(-54, 90), radius * grid.basis[2], atol=1e-12)


@pytest.mark.parametrize("step", [18, 9, 20, 7])
def test_the_default_grid_is_the_hemisphere_at_any_step(step):
    codes, final = evolution()
    grid = pca_sphere_grid(codes, final_codes=final, step_deg=step)
    n = {18: 11, 9: 21, 20: 10, 7: 26}[step]
    assert len(grid.theta) == len(grid.phi) == n
    assert np.rad2deg(grid.theta[-1]) == pytest.approx(step * (n - 1) / 2) and step * (n + 1) / 2 > 90
    with pytest.raises(AnalysisError, match="must be positive"):
        pca_sphere_grid(codes, final_codes=final, step_deg=0)


@pytest.mark.parametrize("step, n, n_unique", [(18, 11, 101), (9, 21, 401), (9, 11, 121)])
def test_poles_collapse(step, n, n_unique):
    codes, final = evolution()
    grid = pca_sphere_grid(codes, final_codes=final, step_deg=step, n=n)
    assert grid.unique.sum() == n_unique
    distinct = np.unique(np.round(grid.codes, 9), axis=0)
    assert len(distinct) == n_unique
    np.testing.assert_allclose(np.unique(np.round(grid.codes[grid.unique], 9), axis=0), distinct)


def test_control_planes():
    codes, final = evolution(n_gen=8)
    _, _, vt = np.linalg.svd(codes - codes.mean(0), full_matrices=False)
    control = pca_sphere_grid(codes, radius=5.0, pcs=(0, 48, 49))
    np.testing.assert_allclose(np.abs(control.basis[1:] @ vt[48:50].T), np.eye(2), atol=1e-10)
    a = pca_sphere_grid(codes, radius=5.0, random_plane=True, rng=3)
    b = pca_sphere_grid(codes, radius=5.0, random_plane=True, rng=3)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_allclose(a.basis @ a.basis.T, np.eye(3), atol=1e-12)
    assert np.abs(a.basis[1:] @ vt[:50].T).max() < 1e-10


def test_grid_rejects_bad_arguments():
    codes, final = evolution(n_gen=3)
    with pytest.raises(AnalysisError, match="final_codes"):
        pca_sphere_grid(codes)
    with pytest.raises(AnalysisError, match="pcs"):
        pca_sphere_grid(codes, radius=1.0, pcs=(0, 1, 1))
    with pytest.raises(AnalysisError, match="PC50"):
        pca_sphere_grid(codes, radius=1.0, pcs=(0, 48, 49))  # 30 codes have at most 30 PCs
    with pytest.raises(AnalysisError, match="step_deg"):
        pca_sphere_grid(codes, radius=1.0, step_deg=20, n=11)


def test_a_plane_needs_more_codes_than_its_highest_pc():
    """The rule session admission applies: a centred PCA of n codes has n - 1 PCs."""
    codes, _ = evolution(n_gen=6)
    assert highest_pc((0, 48, 49)) == 50 and highest_pc((0, 1, 2)) == 3
    assert highest_pc((0, 1, 2), random_plane=True) == 1  # only PC1; e2, e3 are random
    pca_sphere_grid(codes[:51], radius=1.0, pcs=(0, 48, 49))
    with pytest.raises(AnalysisError, match="needs PC50, but only 49 PCs exist for 50 codes"):
        pca_sphere_grid(codes[:50], radius=1.0, pcs=(0, 48, 49))
    pca_sphere_grid(codes[:2], radius=1.0, random_plane=True, rng=0)


def bump(theta, phi, centre, kappa=3.0):
    """A von Mises-Fisher bump on the chart."""
    return np.exp(kappa * (sphere_points(theta, phi) @ sphere_points(*centre) - 1))


def test_smoothing_keeps_coordinates():
    theta = phi = grid_axis(18, 11)
    centre = (np.deg2rad(40), np.deg2rad(-30))
    truth = 10 * bump(theta[:, None], phi[None, :], centre)
    smoothed = smooth_sphere_map([[v] for v in truth.ravel()], theta, phi)
    assert smoothed.values.shape == (181, 181)
    assert np.rad2deg(smoothed.theta) == pytest.approx(np.arange(-90, 91))
    i, j = np.unravel_index(smoothed.values.argmax(), smoothed.values.shape)
    assert abs(np.rad2deg(smoothed.theta[i]) - 40) <= 2 and abs(np.rad2deg(smoothed.phi[j]) + 30) <= 2
    fine = 10 * bump(smoothed.theta[:, None], smoothed.phi[None, :], centre)
    assert np.abs(smoothed.values - fine).max() < 0.1


def test_smoothing_factor_pole_values_and_clip():
    theta = phi = grid_axis(18, 11)
    rng = np.random.default_rng(0)
    trials = np.empty((11, 11), dtype=object)
    for i in range(11):
        for j in range(11):
            trials[i, j] = 1.0 + np.sin(phi[j]) + 0.3 * rng.standard_normal(4 + (i + j) % 3)
    smoothed = smooth_sphere_map(trials, theta, phi)
    expected_s = sum(t.var(ddof=1) / t.size for t in trials[:, 1:-1].ravel())  # SEM² of the sample variance
    assert smoothed.smoothing == pytest.approx(expected_s)
    south, north = (np.concatenate(trials[:, j]).mean() for j in (0, -1))
    assert smoothed.pole_values == pytest.approx((south, north))
    assert smoothed.values[:, -1].mean() == pytest.approx(north, abs=0.3)
    assert smoothed.values[:, 0].mean() == pytest.approx(south, abs=0.3)
    negative = smooth_sphere_map([t - 5 for t in trials.ravel()], theta, phi)
    assert negative.values.min() == 0.0
    assert smooth_sphere_map([t - 5 for t in trials.ravel()], theta, phi, clip_min=None).values.min() < 0


def test_one_trial_per_point_leaves_no_noise_estimate():
    theta = phi = grid_axis(18, 11)
    rng = np.random.default_rng(1)
    trials = [[v] for v in 1 + rng.random(121)]
    assert smooth_sphere_map(trials, theta, phi).smoothing == 0.0  # interpolates: no SEM to smooth by
    trials[12] = [1.0, 3.0]  # one interior point with repeats: its SEM² alone, 2 / 2
    assert smooth_sphere_map(trials, theta, phi).smoothing == pytest.approx(1.0)


def test_smoothing_rejects_bad_trials():
    theta = phi = grid_axis(18, 11)
    with pytest.raises(AnalysisError, match="one trial array per grid point"):
        smooth_sphere_map([[1.0]] * 120, theta, phi)
    trials = [[1.0]] * 121
    trials[60] = []
    with pytest.raises(AnalysisError, match="no trials"):
        smooth_sphere_map(trials, theta, phi)
    with pytest.raises(AnalysisError, match="theta"):
        smooth_sphere_map([[1.0]] * 121, theta[::-1], phi)
