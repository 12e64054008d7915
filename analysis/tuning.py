"""Manifold (tuning-map) experiments: the PCA hemisphere grid and its spherical-spline smoothing.

Coordinates (used by every ``analysis`` module that takes ``theta``/``phi``):

* A grid point (θ, φ) is the unit vector ``cosθ·cosφ·e1 + sinθ·cosφ·e2 + sinφ·e3`` in the basis
  (e1, e2, e3) = (PC1, PC2, PC3) by default. θ is the longitude (towards PC2), φ the latitude
  (towards PC3); both are in radians and span [-π/2, π/2], so the chart is the hemisphere
  centred on PC1. φ = ±π/2 are the poles ±PC3, where every θ gives the same code.
* Maps are arrays ``values[i, j]`` at ``(theta[i], phi[j])``: θ on axis 0, φ on axis 1.
* ``scipy.interpolate.RectSphereBivariateSpline`` wants a colatitude u in the open interval (0, π)
  and a longitude v in [-π, π); we pass u = φ + π/2 (so φ = -π/2, the -PC3 pole, is the spline's
  u = 0 pole) and v = θ. This is a reflection of the usual colatitude π/2 - φ, hence an isometry
  of the sphere, and it keeps the grid's φ order. The spline is periodic in v: the unsampled back
  hemisphere |θ| > π/2 is a gap it bridges smoothly, so values right at θ = ±π/2 are the least
  constrained of the map.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis import AnalysisError

N_PCS = 50


@dataclass(frozen=True)
class SphereGrid:
    """Codes of a hemisphere grid, flattened θ-major: ``codes[i * len(phi) + j]`` is (theta[i], phi[j])."""

    codes: np.ndarray  # (n_theta * n_phi, dim)
    theta: np.ndarray  # (n_theta,) radians
    phi: np.ndarray  # (n_phi,) radians
    unique: np.ndarray  # (n_theta * n_phi,) bool: False where a pole point repeats an earlier code
    basis: np.ndarray  # (3, dim) orthonormal axes e1, e2, e3
    radius: float


@dataclass(frozen=True)
class SphereMap:
    """A smoothed map ``values[i, j]`` at ``(theta[i], phi[j])`` (radians) and the spline's settings."""

    values: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    smoothing: float  # the spline's s
    pole_values: tuple[float, float] | None  # (φ = -π/2, φ = +π/2) when the grid reaches the poles
    fitted: np.ndarray  # the spline at the grid's own points (n_theta, n_phi), clipped as values are


def grid_axes(theta, phi, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A (θ, φ) grid's axes as float arrays, each at least ``min_size`` increasing angles in radians within
    ±π/2 (raises ``AnalysisError`` naming the axis otherwise)."""
    axes = np.asarray(theta, dtype=float), np.asarray(phi, dtype=float)
    for name, ax in zip(("theta", "phi"), axes):
        if ax.ndim != 1 or ax.size < min_size or np.any(np.diff(ax) <= 0) or np.abs(ax).max() > np.pi / 2 + 1e-9:
            raise AnalysisError(f"{name} must be >= {min_size} increasing angles in radians within ±π/2")
    return axes


def sphere_points(theta, phi) -> np.ndarray:
    """Unit vectors (..., 3) of chart coordinates (θ, φ) in radians; broadcasts its arguments."""
    theta, phi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(phi, float))
    return np.stack([np.cos(theta) * np.cos(phi), np.sin(theta) * np.cos(phi), np.sin(phi)], -1)


def grid_axis(step_deg: float, n: int) -> np.ndarray:
    """The n angles (radians) ``step_deg * (k - (n-1)/2)``, symmetric about 0 and within ±90°."""
    if n < 2:
        raise AnalysisError(f"n must be at least 2, got {n}")
    if step_deg <= 0 or step_deg * (n - 1) / 2 > 90 + 1e-9:
        raise AnalysisError(f"step_deg={step_deg} with n={n} must be positive and reach at most 90°")
    return np.deg2rad(step_deg * (np.arange(n) - (n - 1) / 2))


def highest_pc(pcs: Sequence[int], random_plane: bool = False) -> int:
    """The highest PC (1-based) a `pca_sphere_grid` plane is built on. A centred PCA of n codes has
    n - 1 PCs, so the evolution must make more codes than this."""
    return (pcs[0] if random_plane else max(pcs)) + 1


def pca_sphere_grid(codes, *, final_codes=None, step_deg: float = 18.0, n: int | None = None,
                    pcs: Sequence[int] = (0, 1, 2), radius: float | None = None,
                    random_plane: bool = False, rng=None) -> SphereGrid:
    """The Manifold hemisphere grid (spec B1) from the codes of one evolution.

    codes: (n_codes, dim), every code of the evolution in order (the last is the final best).
    final_codes: the final generation; its mean norm is the radius unless ``radius`` is given.
    step_deg, n: grid step and points per axis; the default n covers the hemisphere, ±90° (11 at 18°,
        21 at 9°; 180/step_deg + 1, rounded down), and a smaller n a band around PC1.
    pcs: zero-based PCs for (e1, e2, e3); (0, 48, 49) is the PC49-PC50 control plane.
    random_plane: replace e2 and e3 by random unit vectors orthogonal to the first 50 PCs
        (drawn with ``rng``), the random-plane control.
    PCA is centred; PC1's sign makes the last code's centred projection positive.
    """
    codes = np.asarray(codes, dtype=float)
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise AnalysisError(f"codes must be (n_codes >= 2, dim), got shape {codes.shape}")
    if len(pcs) != 3 or len(set(pcs)) != 3 or min(pcs) < 0:
        raise AnalysisError(f"pcs must be three distinct non-negative PC indices, got {tuple(pcs)}")
    if radius is None:
        if final_codes is None:
            raise AnalysisError("pass final_codes (the final generation) or an explicit radius")
        final_codes = np.asarray(final_codes, dtype=float)
        if final_codes.ndim != 2 or final_codes.shape[1] != codes.shape[1]:
            raise AnalysisError(f"final_codes must be (n, {codes.shape[1]}), got {final_codes.shape}")
        radius = float(np.linalg.norm(final_codes, axis=1).mean())
    if not radius > 0:
        raise AnalysisError(f"radius must be positive, got {radius}")

    centred = codes - codes.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    n_pcs = min(N_PCS, codes.shape[0] - 1, codes.shape[1])
    needed = highest_pc(pcs, random_plane)
    if needed > n_pcs:
        raise AnalysisError(f"pcs={tuple(pcs)} needs PC{needed}, but only {n_pcs} PCs "
                            f"exist for {codes.shape[0]} codes of dim {codes.shape[1]}")
    pc_axes = vt[:n_pcs].copy()
    if centred[-1] @ pc_axes[0] < 0:
        pc_axes[0] = -pc_axes[0]
    e1 = pc_axes[pcs[0]]
    if random_plane:
        if codes.shape[1] < n_pcs + 2:
            raise AnalysisError(f"random_plane needs dim >= {n_pcs + 2}, got {codes.shape[1]}")
        rng = np.random.default_rng(rng)
        others = []
        for _ in range(2):
            v = rng.standard_normal(codes.shape[1])
            for axis in [*pc_axes, *others]:
                v -= (v @ axis) * axis
            others.append(v / np.linalg.norm(v))
        basis = np.stack([e1, *others])
    else:
        basis = np.stack([e1, pc_axes[pcs[1]], pc_axes[pcs[2]]])

    if n is None:  # the hemisphere; grid_axis reports a step <= 0
        n = int(180 / step_deg + 1e-9) + 1 if step_deg > 0 else 2
    theta = grid_axis(step_deg, n)
    phi = grid_axis(step_deg, n)
    unit = sphere_points(theta[:, None], phi[None, :]).reshape(-1, 3)
    grid_codes = radius * unit @ basis  # the basis is orthonormal, so every code has norm radius
    at_pole = np.isclose(np.abs(phi), np.pi / 2)
    unique = ~(at_pole[None, :] & (np.arange(n) > 0)[:, None])
    return SphereGrid(grid_codes, theta, phi, unique.ravel(), basis, radius)


def _trials_grid(trials, n_theta: int, n_phi: int) -> list[list[np.ndarray]]:
    """Nested [i][j] lists of 1-D trial arrays from a flat θ-major sequence or an (nθ, nφ) object array."""
    if isinstance(trials, np.ndarray) and trials.dtype == object:
        trials = trials.reshape(-1)
    flat = list(trials)
    if len(flat) != n_theta * n_phi:
        raise AnalysisError(f"trials must hold one trial array per grid point "
                            f"({n_theta} x {n_phi} = {n_theta * n_phi}), got {len(flat)}")
    arrays = []
    for k, t in enumerate(flat):
        t = np.atleast_1d(np.asarray(t, dtype=float))
        if t.ndim != 1 or not np.all(np.isfinite(t)):
            raise AnalysisError(f"trials[{k}] must be a 1-D array of finite responses")
        arrays.append(t)
    return [arrays[i * n_phi:(i + 1) * n_phi] for i in range(n_theta)]


def smooth_sphere_map(trials, theta, phi, *, s: float | None = None, resolution_deg: float = 1.0,
                      clip_min: float | None = 0.0) -> SphereMap:
    """Spherical bicubic spline of a grid's trial means (spec B2), evaluated on a fine (θ, φ) grid.

    trials: one 1-D array of single-trial responses per grid point, a flat θ-major sequence
        (``SphereGrid.codes`` order) or an (n_theta, n_phi) object array. Pole points may be
        empty as long as each pole column has some trials.
    theta, phi: the grid axes (radians, increasing, within ±π/2).
    s: the spline's smoothing factor; default Σ SEM² (sample variance / n) over the non-pole points
        with 2 or more trials. With one trial per point there is no noise estimate: s = 0, the
        spline interpolates.
    The pole values are the means of all single trials in each pole column (not exact).
    Returns the map on ``resolution_deg`` steps over the grid's extent (181 x 181 for ±90° at 1°),
    clipped below at ``clip_min`` (None: no clipping), and the spline at the grid points (``fitted``).
    """
    theta, phi = grid_axes(theta, phi, 4)
    if resolution_deg <= 0:
        raise AnalysisError(f"resolution_deg must be positive, got {resolution_deg}")
    grid = _trials_grid(trials, theta.size, phi.size)
    poles = np.isclose(np.abs(phi), np.pi / 2)
    if poles.any() and not (poles[0] and poles[-1]):
        raise AnalysisError("phi must reach both poles or neither")
    inner = np.flatnonzero(~poles)
    means = np.empty((theta.size, inner.size))
    sem2 = 0.0
    for i in range(theta.size):
        for c, j in enumerate(inner):
            t = grid[i][j]
            if t.size == 0:
                raise AnalysisError(f"grid point (theta[{i}], phi[{j}]) has no trials")
            means[i, c] = t.mean()
            if t.size > 1:
                sem2 += t.var(ddof=1) / t.size
    pole_values = None
    if poles.any():
        pole_values = []
        for j in (0, phi.size - 1):
            column = np.concatenate([grid[i][j] for i in range(theta.size)])
            if column.size == 0:
                raise AnalysisError(f"the pole column phi[{j}] has no trials")
            pole_values.append(float(column.mean()))
        pole_values = tuple(pole_values)
    smoothing = sem2 if s is None else float(s)
    if smoothing < 0:
        raise AnalysisError(f"s must be >= 0, got {s}")
    from scipy.interpolate import RectSphereBivariateSpline  # here: it costs the server's start 0.4 s

    spline = RectSphereBivariateSpline(phi[inner] + np.pi / 2, theta, means.T, s=smoothing,
                                       pole_values=pole_values, pole_exact=False)
    step = np.deg2rad(resolution_deg)
    fine_theta = _fine_axis(theta[0], theta[-1], step)
    fine_phi = _fine_axis(phi[0], phi[-1], step)
    values, fitted = (_evaluate(spline, t, p, clip_min) for t, p in ((fine_theta, fine_phi), (theta, phi)))
    return SphereMap(values, fine_theta, fine_phi, smoothing, pole_values, fitted)


def _evaluate(spline, theta: np.ndarray, phi: np.ndarray, clip_min: float | None) -> np.ndarray:
    u, v = np.meshgrid(np.clip(phi + np.pi / 2, 0, np.pi), theta)
    values = spline.ev(u.ravel(), v.ravel()).reshape(u.shape)
    return values if clip_min is None else np.maximum(values, clip_min)


def _fine_axis(lo: float, hi: float, step: float) -> np.ndarray:
    return np.linspace(lo, hi, int(round((hi - lo) / step)) + 1)
