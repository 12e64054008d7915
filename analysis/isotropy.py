"""How round is a tuning peak: level-set axis ratios (spec B4), Kent fits and the RBF probe (B6).

Chart coordinates follow ``analysis.tuning``: (θ, φ) in radians, ``values[i, j]`` at
``(theta[i], phi[j])``, unit vector ``(cosθ cosφ, sinθ cosφ, sinφ)``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.stats import spearmanr
from skimage.measure import points_in_poly

from analysis import AnalysisError
from analysis.topology import chart_axes, levelset_signature
from analysis.tuning import sphere_points


@dataclass(frozen=True)
class AxisRatio:
    """Max/min great-circle distance from the peak over the loops enclosing it, per level."""

    levels: np.ndarray
    ratios: np.ndarray  # NaN where no closed level curve encloses the peak
    peak: tuple[float, float]  # (θ, φ) of the map's maximum, radians
    mean_top: float  # mean of the ratios of the top ``n_top`` levels that have one
    n_top: int

    def to_dict(self) -> dict:
        return {"levels": self.levels.tolist(),
                "ratios": [None if np.isnan(r) else float(r) for r in self.ratios],
                "peak": list(self.peak), "mean_top": None if np.isnan(self.mean_top) else self.mean_top,
                "n_top": self.n_top}


def levelset_axis_ratio(values, theta=None, phi=None, *, n_levels: int = 21, n_top: int = 4) -> AxisRatio:
    """Axis ratio of the peak (spec B4): at each level, merge the closed level curves that enclose
    the map's maximum (point-in-polygon in the chart) and take max/min of their great-circle
    distances to it; ``mean_top`` averages the highest ``n_top`` levels with such a curve.
    1 is a circular (isotropic) peak."""
    if n_top < 1:
        raise AnalysisError(f"n_top must be at least 1, got {n_top}")
    values = np.asarray(values, dtype=float)
    sig = levelset_signature(values, n_levels, theta, phi)
    theta, phi = chart_axes(values.shape, theta, phi)
    i, j = np.unravel_index(np.argmax(values), values.shape)
    peak_chart = np.array([[theta[i], phi[j]]])
    peak = sphere_points(theta[i], phi[j])
    ratios = np.full(n_levels, np.nan)
    for k, curves in enumerate(sig.contours):
        loops = [c for c in curves if np.array_equal(c[0], c[-1]) and points_in_poly(peak_chart, c)[0]]
        if not loops:
            continue
        points = sphere_points(*np.concatenate(loops).T)
        dist = np.arccos(np.clip(points @ peak, -1.0, 1.0))
        if dist.min() > 0:
            ratios[k] = dist.max() / dist.min()
    finite = ratios[np.isfinite(ratios)]
    mean_top = float(finite[-n_top:].mean()) if finite.size else float("nan")
    return AxisRatio(sig.levels, ratios, (float(theta[i]), float(phi[j])), mean_top, n_top)


def kent_axes(theta0: float, phi0: float, psi: float) -> np.ndarray:
    """Rows μ1 (the mean direction at chart (θ0, φ0)), μ2, μ3 (μ2 at angle ψ from the θ direction
    towards the φ direction in the tangent plane)."""
    mu1 = sphere_points(theta0, phi0)
    e_theta = np.array([-np.sin(theta0), np.cos(theta0), 0.0])
    e_phi = np.array([-np.cos(theta0) * np.sin(phi0), -np.sin(theta0) * np.sin(phi0), np.cos(phi0)])
    mu2 = np.cos(psi) * e_theta + np.sin(psi) * e_phi
    mu3 = -np.sin(psi) * e_theta + np.cos(psi) * e_phi
    return np.stack([mu1, mu2, mu3])


def _kent_exponent(points, theta0, phi0, psi, kappa, beta) -> np.ndarray:
    m = kent_axes(theta0, phi0, psi)
    x = np.asarray(points, dtype=float)
    return kappa * (x @ m[0]) + beta * ((x @ m[1]) ** 2 - (x @ m[2]) ** 2)


def kent(points, *, theta0: float, phi0: float, psi: float, kappa: float, beta: float,
         A: float = 1.0, b: float = 0.0) -> np.ndarray:
    """f = b + A·exp(κ μ1·x + β[(μ2·x)² − (μ3·x)²]) at unit vectors ``points`` (..., 3).
    No normalisation constant: the peak rises A·e^κ above b."""
    return b + A * np.exp(_kent_exponent(points, theta0, phi0, psi, kappa, beta))


_KENT_NAMES = ("theta0", "phi0", "psi", "kappa", "beta", "A", "b")


@dataclass(frozen=True)
class KentFit:
    """Fitted Kent parameters (angles in radians, ψ folded into (-π/2, π/2]), the peak height
    above b (A·e^κ) and R² of the fit."""

    theta0: float
    phi0: float
    psi: float
    kappa: float
    beta: float
    A: float
    b: float
    height: float
    r2: float

    def params(self) -> dict:
        """The arguments of ``kent``."""
        return {name: getattr(self, name) for name in _KENT_NAMES}

    def to_dict(self) -> dict:
        return {**self.params(), "height": self.height, "r2": self.r2}


def fit_kent(values, theta=None, phi=None) -> KentFit:
    """Least-squares Kent fit of a chart map (collapsed pole points counted once).

    Starts at the map's maximum with four orientations ψ and keeps the best fit;
    bounds: κ, β ≥ 0, A ≥ 0.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or not np.all(np.isfinite(values)):
        raise AnalysisError(f"values must be a finite 2-D map, got shape {values.shape}")
    theta, phi = chart_axes(values.shape, theta, phi)
    pole = np.isclose(np.abs(phi), np.pi / 2)
    keep = ~(pole[None, :] & (np.arange(theta.size) > 0)[:, None])
    points = sphere_points(theta[:, None], phi[None, :])[keep]
    y = values[keep]
    if y.size < len(_KENT_NAMES) + 1:
        raise AnalysisError(f"a Kent fit needs more than {len(_KENT_NAMES)} distinct grid points")
    i, j = np.unravel_index(np.argmax(values), values.shape)

    def residual(p):  # the peak height H = A·e^κ replaces A: no overflow for large κ
        theta0, phi0, psi, kappa, beta, height, b = p
        return b + height * np.exp(_kent_exponent(points, theta0, phi0, psi, kappa, beta) - kappa) - y

    lower = [-np.pi, -np.pi / 2, -np.pi, 0.0, 0.0, 0.0, -np.inf]
    upper = [np.pi, np.pi / 2, np.pi, np.inf, np.inf, np.inf, np.inf]
    best = None
    for psi0 in (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4):
        start = [theta[i], np.clip(phi[j], -1.5, 1.5), psi0, 2.0, 0.25, max(y.max() - y.min(), 1e-12), y.min()]
        fit = least_squares(residual, start, bounds=(lower, upper), x_scale="jac")
        if best is None or fit.cost < best.cost:
            best = fit
    theta0, phi0, psi, kappa, beta, height, b = (float(v) for v in best.x)
    psi = (psi + np.pi / 2) % np.pi - np.pi / 2
    psi = np.pi / 2 if psi == -np.pi / 2 else psi
    ss_tot = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - 2 * best.cost / ss_tot if ss_tot > 0 else float("nan")
    return KentFit(theta0, phi0, psi, kappa, beta, height * np.exp(-kappa), b, height, float(r2))


_MODES = {"min": (1.0, 50, 1.5), "max": (-1.0, 75, 1.5), "max_abinit": (-1.0, 100, 3.0), "none": (0.0, 50, 1.5)}


@dataclass(frozen=True)
class RBFProbe:
    """Samples of one probe condition: per target level, ``n`` codes with their activation and
    distance to the peak code."""

    mode: str
    levels: np.ndarray  # (L,) target fractions r of f*
    f_star: float
    activation: np.ndarray  # (L, n)
    distance: np.ndarray  # (L, n)
    codes: np.ndarray  # (L, n, dim) float32

    @property
    def fraction(self) -> np.ndarray:
        """Reached activation as a fraction of f*."""
        return self.activation / self.f_star


def rbf_probe(activation_fn: Callable[[torch.Tensor], torch.Tensor],
              distance_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z_star, *,
              levels=np.arange(0, 1.01, 0.1), mode: str = "max", n: int = 40, steps: int | None = None,
              lr: float = 0.1, sigma_init: float | None = None, alpha: float = 5.0, kick: float = 0.3,
              rng=None) -> RBFProbe:
    """Sample codes on the level sets of a unit around its peak ``z_star`` (spec B6).

    activation_fn: (n, dim) codes -> (n,) activations, differentiable in torch.
    distance_fn: ((n, dim) codes, (1, dim) peak) -> (n,) distances, differentiable.
    For each level r, Adam (``lr``) runs ``steps`` on ``n`` perturbations with loss
    |f − r·f*| + alpha·s·d, s = +1 ("min"), −1 ("max", "max_abinit") or 0 ("none").
    Codes start at z* + N(0, σ²) (σ = 1.5; steps 50 min, 75 max, 50 none), or for
    "max_abinit" at N(0, 3²) with no z* (100 steps). Samples whose activation is exactly 0 drop
    the distance term and get a N(0, kick²) kick after the step.
    """
    if mode not in _MODES:
        raise AnalysisError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    sign, default_steps, default_sigma = _MODES[mode]
    steps = default_steps if steps is None else int(steps)
    sigma = default_sigma if sigma_init is None else float(sigma_init)
    if n < 1 or steps < 0 or lr <= 0 or sigma < 0:
        raise AnalysisError("n must be >= 1, steps >= 0, lr > 0 and sigma_init >= 0")
    levels = np.atleast_1d(np.asarray(levels, dtype=float))
    rng = np.random.default_rng(rng)
    z_star = torch.as_tensor(np.asarray(z_star), dtype=torch.get_default_dtype()).reshape(1, -1)
    dim = z_star.shape[1]
    with torch.no_grad():
        f_star = float(activation_fn(z_star).reshape(-1)[0])
    if not 0 < f_star < np.inf:
        raise AnalysisError(f"the activation at z_star must be positive and finite, got {f_star}")
    origin = torch.zeros_like(z_star) if mode == "max_abinit" else z_star
    acts, dists, codes = [], [], []
    for r in levels:
        dz = torch.as_tensor(sigma * rng.standard_normal((n, dim)), dtype=z_star.dtype).requires_grad_()
        optimizer = torch.optim.Adam([dz], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            z = origin + dz
            f = activation_fn(z).reshape(-1)
            dead = f.detach() == 0
            loss = (torch.abs(f - r * f_star) + alpha * sign * distance_fn(z, z_star).reshape(-1) * ~dead).mean()
            loss.backward()
            optimizer.step()
            if dead.any():
                with torch.no_grad():
                    noise = torch.as_tensor(kick * rng.standard_normal((n, dim)), dtype=dz.dtype)
                    dz += noise * dead[:, None]
        with torch.no_grad():
            z = origin + dz
            acts.append(activation_fn(z).reshape(-1).numpy().astype(float))
            dists.append(distance_fn(z, z_star).reshape(-1).numpy().astype(float))
            codes.append(z.numpy().astype(np.float32))
    return RBFProbe(mode, levels, f_star, np.array(acts), np.array(dists), np.array(codes))


def _reach(frac: np.ndarray) -> str:
    """The reached f/f* of a probe's finite samples, for a note."""
    if not frac.size:
        return "no finite sample"
    lo, hi = frac.min(), frac.max()
    return f"all {frac.size} samples at f/f* = {lo:.2g}" if lo == hi else f"reached f/f* {lo:.2g}-{hi:.2g}"


def rbf_ratios(results: Mapping[str, RBFProbe], *, bins=(0.6, 0.7, 0.8, 0.9), half_width: float = 0.05,
               min_count: int = 10) -> dict:
    """Statistics of spec B6 from probes keyed by mode (needs "min" and "max").

    Samples are binned by reached f/f* into [c − half_width, c + half_width) around each bin
    centre c; a bin counts for a ratio when both conditions have ``min_count`` samples in it.
    max_min_ratio: mean over bins of mean d(max) / mean d(min) (1 for a radial basis function);
    global_local_ratio: the same for d(max_abinit) / d(max) when "max_abinit" is given;
    per mode, the linear fit of distance on f/f* over all samples (slope, intercept) and Spearman ρ.
    Samples with a non-finite f/f* or distance are left out. What is undefined is NaN, and ``notes``
    says why: a ratio with no bin to count, a fit whose samples all reached one f/f* (e.g. 0: every
    sample's activation is 0) or a probe with non-finite samples.
    """
    for key in ("min", "max"):
        if key not in results:
            raise AnalysisError(f"results needs a {key!r} probe, got {sorted(results)}")
    notes = []
    samples = {}
    for mode, probe in results.items():
        frac, dist = probe.fraction.ravel(), probe.distance.ravel()
        finite = np.isfinite(frac) & np.isfinite(dist)
        if not finite.all():
            notes.append(f"{mode}: {np.sum(~finite)} of {finite.size} samples non-finite, left out")
        samples[mode] = frac[finite], dist[finite]

    def bin_means(mode):
        frac, dist = samples[mode]
        out = []
        for c in bins:
            inside = (frac >= c - half_width) & (frac < c + half_width)
            out.append(dist[inside].mean() if inside.sum() >= min_count else np.nan)
        return np.array(out)

    def ratio(num, den):
        r = bin_means(num) / bin_means(den)
        if np.isfinite(r).any():
            return float(np.nanmean(r))
        centres = ", ".join(f"{c:g}" for c in bins)
        notes.append(f"{num}/{den} undefined: no f/f* bin ({centres} ± {half_width:g}) holds {min_count} samples "
                     f"of both {num} ({_reach(samples[num][0])}) and {den} ({_reach(samples[den][0])})")
        return float("nan")

    stats = {"bins": list(bins), "max_min_ratio": ratio("max", "min"),
             "global_local_ratio": ratio("max_abinit", "max") if "max_abinit" in results else float("nan")}
    for mode in results:
        frac, dist = samples[mode]
        fit = dict.fromkeys(("slope", "intercept", "spearman"), float("nan"))
        if np.unique(frac).size > 1:
            slope, intercept = np.polyfit(frac, dist, 1)
            fit.update(slope=float(slope), intercept=float(intercept))
            if np.ptp(dist) > 0:
                fit["spearman"] = float(spearmanr(frac, dist).statistic)
            else:
                notes.append(f"{mode}: no rank correlation, every distance is {dist[0]:.3g}")
        else:
            notes.append(f"{mode}: no distance fit, {_reach(frac)}")
        stats[mode] = {"bin_mean_distance": bin_means(mode).tolist(), **fit}
    stats["notes"] = notes
    return stats
