"""Level-set topology of a tuning map on the (θ, φ) chart (spec B3) and its reliability.

Superlevel topology changes only at critical values: a maximum creates a loop, a saddle merges
or splits loops, and ridges leaving the chart show up as lines. The signature counts, at 21
levels between the map's min and max, the contour components (branches), the closed ones
(loops) and the open ones (lines, which end on the chart border: θ = ±90° or the degenerate
pole edges φ = ±90°). ``analysis.persistence`` computes the same on a sphere mesh without the
chart border.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.measure import find_contours

from analysis import AnalysisError
from analysis.tuning import smooth_sphere_map

SCALARS = ("auc_branch", "auc_loop", "auc_line", "lowest_loop_index", "lowest_branch_index")
INDEX_SCALARS = ("lowest_loop_index", "lowest_branch_index")  # level indices: integers


@dataclass(frozen=True)
class LevelSetSignature:
    """Counts per level, the 42-d signature [n_loop, n_line] and its scalars (spec B3)."""

    levels: np.ndarray
    level_frac: np.ndarray  # levels / max (the AUC abscissa; not normalised by min)
    n_branch: np.ndarray
    n_loop: np.ndarray
    n_line: np.ndarray
    auc_branch: float
    auc_loop: float
    auc_line: float
    lowest_loop_index: int
    lowest_branch_index: int
    contours: list = field(repr=False, compare=False)  # per level: list of (n, 2) (θ, φ) curves, radians

    @property
    def vector(self) -> np.ndarray:
        """The signature [n_loop(levels), n_line(levels)]."""
        return np.concatenate([self.n_loop, self.n_line])

    def to_dict(self) -> dict:
        """JSON-ready numbers (contours left out)."""
        return {
            "levels": self.levels.tolist(), "level_frac": self.level_frac.tolist(),
            "n_branch": self.n_branch.tolist(), "n_loop": self.n_loop.tolist(),
            "n_line": self.n_line.tolist(), "signature": self.vector.tolist(),
            **{name: getattr(self, name) for name in SCALARS},
        }


def chart_axes(shape, theta, phi) -> tuple[np.ndarray, np.ndarray]:
    """Validated (theta, phi) axes for a map of ``shape``; None means even spacing over ±π/2."""
    axes = []
    for name, ax, n in (("theta", theta, shape[0]), ("phi", phi, shape[1])):
        ax = np.linspace(-np.pi / 2, np.pi / 2, n) if ax is None else np.asarray(ax, dtype=float)
        if ax.shape != (n,) or np.any(np.diff(ax) <= 0):
            raise AnalysisError(f"{name} must be {n} increasing angles (radians) to match values")
        axes.append(ax)
    return axes[0], axes[1]


def lowest_single_index(counts) -> int:
    """Walk down from just below the top level while exactly one component remains (spec B3).

    Returns the lowest index of that run; the top index when the level just below the top is
    not single, and also when every level below the top is single (the reference code's rule).
    """
    counts = np.asarray(counts)
    top = counts.size - 1
    for i in range(top - 1, -1, -1):
        if counts[i] != 1:
            return i + 1
    return top


def levelset_signature(values, n_levels: int = 21, theta=None, phi=None) -> LevelSetSignature:
    """Topological signature of a map ``values[i, j]`` at ``(theta[i], phi[j])`` (spec B3).

    Levels are ``linspace(min, max, n_levels)``; contours are skimage marching squares.
    theta, phi: the map's axes in radians (default: even spacing over ±π/2), used only to
    express the returned contours in angles.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or min(values.shape) < 2 or not np.all(np.isfinite(values)):
        raise AnalysisError(f"values must be a finite 2-D map, got shape {values.shape}")
    if n_levels < 2:
        raise AnalysisError(f"n_levels must be at least 2, got {n_levels}")
    theta, phi = chart_axes(values.shape, theta, phi)
    vmin, vmax = values.min(), values.max()
    if vmax <= 0:
        raise AnalysisError("values must have a positive maximum (levels are normalised by it)")
    levels = np.linspace(vmin, vmax, n_levels)
    counts = np.zeros((3, n_levels), dtype=int)
    contours = []
    rows, cols = np.arange(values.shape[0]), np.arange(values.shape[1])
    for k, level in enumerate(levels):
        curves = find_contours(values, level) if vmax > vmin else []
        n_loop = sum(np.array_equal(c[0], c[-1]) for c in curves)
        counts[:, k] = len(curves), n_loop, len(curves) - n_loop
        contours.append([np.column_stack([np.interp(c[:, 0], rows, theta), np.interp(c[:, 1], cols, phi)])
                         for c in curves])
    level_frac = levels / vmax
    n_branch, n_loop, n_line = counts
    return LevelSetSignature(
        levels, level_frac, n_branch, n_loop, n_line,
        float(np.trapezoid(n_branch, level_frac)), float(np.trapezoid(n_loop, level_frac)),
        float(np.trapezoid(n_line, level_frac)),
        lowest_single_index(n_loop), lowest_single_index(n_branch), contours)


@dataclass(frozen=True)
class SplitHalf:
    """Per split: correlation of the two halves' smoothed maps and 42-d signatures, and how often
    the two halves give identical counts (agreement over the 42 entries)."""

    map_corr: np.ndarray
    signature_corr: np.ndarray  # NaN where a half's signature is constant
    agreement: np.ndarray
    scalar_diff: dict  # scalar name -> |half A - half B| per split

    def to_dict(self) -> dict:
        def floats(values):
            return [None if np.isnan(v) else float(v) for v in values]

        def mean(values):
            return float(np.nanmean(values)) if np.isfinite(values).any() else None

        return {"map_corr": floats(self.map_corr), "signature_corr": floats(self.signature_corr),
                "agreement": self.agreement.tolist(),
                "scalar_diff": {k: v.tolist() for k, v in self.scalar_diff.items()},
                "mean_map_corr": mean(self.map_corr), "mean_signature_corr": mean(self.signature_corr),
                "mean_agreement": float(np.mean(self.agreement))}


@dataclass(frozen=True)
class SignatureBootstrap:
    """The signature scalars of the full data, their bootstrap samples and percentile intervals."""

    estimate: dict
    samples: dict  # scalar name -> (n_boot,)
    ci: dict  # scalar name -> (low, high)
    level: float

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "ci": {k: list(v) for k, v in self.ci.items()},
                "level": self.level, "n_boot": len(next(iter(self.samples.values())))}


def _signature_of(trials, theta, phi, n_levels, smoothing_kw):
    smoothed = smooth_sphere_map(trials, theta, phi, **smoothing_kw)
    return smoothed, levelset_signature(smoothed.values, n_levels, smoothed.theta, smoothed.phi)


def split_half_reliability(trials, theta, phi, *, n_splits: int = 20, n_levels: int = 21, rng=None,
                           **smoothing_kw) -> SplitHalf:
    """Split each grid point's trials at random into two halves, smooth and sign both, compare.

    Points with fewer than 2 trials (e.g. collapsed pole points) go whole to both halves.
    ``smoothing_kw`` passes on to ``smooth_sphere_map``.
    """
    if n_splits < 1:
        raise AnalysisError(f"n_splits must be at least 1, got {n_splits}")
    rng = np.random.default_rng(rng)
    flat = _flat_trials(trials)
    if not any(t.size >= 2 for t in flat):
        raise AnalysisError("trials need at least 2 repeats at some grid points to split them")
    map_corr, sig_corr, agreement = [], [], []
    diffs = {name: [] for name in SCALARS}
    for _ in range(n_splits):
        halves = ([], [])
        for t in flat:
            if t.size < 2:
                halves[0].append(t)
                halves[1].append(t)
                continue
            order = rng.permutation(t.size)
            halves[0].append(t[order[: t.size // 2]])
            halves[1].append(t[order[t.size // 2:]])
        (map_a, sig_a), (map_b, sig_b) = (_signature_of(h, theta, phi, n_levels, smoothing_kw) for h in halves)
        map_corr.append(_corr(map_a.values.ravel(), map_b.values.ravel()))
        sig_corr.append(_corr(sig_a.vector, sig_b.vector))
        agreement.append(float(np.mean(sig_a.vector == sig_b.vector)))
        for name in SCALARS:
            diffs[name].append(abs(getattr(sig_a, name) - getattr(sig_b, name)))
    return SplitHalf(np.array(map_corr), np.array(sig_corr), np.array(agreement),
                     {k: np.array(v) for k, v in diffs.items()})


def _flat_trials(trials) -> list[np.ndarray]:
    if isinstance(trials, np.ndarray) and trials.dtype == object:
        trials = trials.reshape(-1)
    return [np.atleast_1d(np.asarray(t, dtype=float)).ravel() for t in trials]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def bootstrap_signature(trials, theta, phi, *, n_boot: int = 200, level: float = 0.95,
                        n_levels: int = 21, rng=None, **smoothing_kw) -> SignatureBootstrap:
    """Percentile bootstrap of the signature scalars, resampling residuals around the smoothed map.

    Each resample puts, at every grid point, the spline's value there plus that point's own deviations
    from its trial mean, drawn with replacement and rescaled by √(n/(n−1)) (so their variance is the
    sample variance), and is smoothed and signed as the data were (its own s = Σ SEM²). Resampling the raw
    trials instead treats the rough trial means as the true map: its resamples are noisier than the data
    and, with few trials, smoothed less, so they grow extra loops and the intervals sat above the estimate.
    Needs 2 or more trials at some grid points (points with one trial keep the spline's value). The
    intervals of the integer level indices end on observed indices (the lower one rounded down, the
    upper one up)."""
    if n_boot < 2:
        raise AnalysisError(f"n_boot must be at least 2, got {n_boot}")
    if not 0 < level < 1:
        raise AnalysisError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(rng)
    flat = _flat_trials(trials)
    if not any(t.size >= 2 for t in flat):
        raise AnalysisError("trials need at least 2 repeats at some grid points to resample them")
    smoothed, full = _signature_of(flat, theta, phi, n_levels, smoothing_kw)
    deviations = [(t - t.mean()) * np.sqrt(t.size / (t.size - 1)) if t.size >= 2 else np.zeros_like(t)
                  for t in flat]
    samples = {name: np.empty(n_boot) for name in SCALARS}
    for b in range(n_boot):
        resampled = [fit + d[rng.integers(0, d.size, d.size)] if d.size else d
                     for fit, d in zip(smoothed.fitted.ravel(), deviations)]
        _, sig = _signature_of(resampled, theta, phi, n_levels, smoothing_kw)
        for name in SCALARS:
            samples[name][b] = getattr(sig, name)
    tail = (1 - level) / 2 * 100
    ci = {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in samples.items()}
    for k in INDEX_SCALARS:  # an index interval ends on observed indices, widened outwards
        ci[k] = (int(np.percentile(samples[k], tail, method="lower")),
                 int(np.percentile(samples[k], 100 - tail, method="higher")))
    return SignatureBootstrap({name: getattr(full, name) for name in SCALARS}, samples, ci, level)
