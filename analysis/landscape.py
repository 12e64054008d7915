"""Statistics of tuning landscapes (spec B3-B6) and their trend with depth (spec C3, "Landscapes").

`landscape_statistics` reduces one raw sphere map to the level-set signature scalars, the axis ratio and
a Kent fit; `summarize` tables them by layer (mean, SEM, n) with each statistic's Spearman ρ with depth
over units and a verdict against the published direction, or why there is none. `spearman` gives ρ with an exact
permutation p for few units, where scipy's t approximation is far off (p = 0 for any perfect order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import permutations
from typing import Any

import numpy as np

#: (row key, label, expected sign of Spearman rho with depth, what the spec expects); sign 0: no claim.
STATISTICS = (
    ("lowest_loop_index", "lowest single-loop index", -1, "decreases"),
    ("auc_loop", "loop AUC", 0, "-"),
    ("auc_line", "line AUC", -1, "decreases"),
    ("axis_ratio", "axis ratio (top 4 levels)", -1, "decreases"),
    ("kent_r2", "Kent R²", 0, "-"),
    ("kent_kappa", "Kent κ", 0, "-"),
    ("kent_beta", "Kent β", 0, "-"),
    ("max_min_ratio", "RBF max/min (0.6-0.9)", -1, "→ 1"),
    ("global_local_ratio", "RBF global/local", 0, "> 1"),
)
#: Significance level of the Spearman trends: above it a trend is not claimed in either direction.
ALPHA = 0.05
#: Fewest units a verdict rests on: Spearman's ρ needs 3, and so does the share of units above 1.
MIN_UNITS = 3
#: Most units whose Spearman p is exact, from all n! pairings (8! = 40 320); above it scipy's t approximation.
EXACT_UNITS = 8


def landscape_statistics(values: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> dict[str, Any]:
    """Signature scalars, axis ratio and Kent fit of a raw map rectified at 0; NaN if it is never > 0."""
    from analysis.isotropy import fit_kent, levelset_axis_ratio
    from analysis.topology import levelset_signature
    from analysis.tuning import sphere_points

    rect = np.maximum(values, 0.0)
    i, j = np.unravel_index(np.argmax(values), values.shape)
    centre = sphere_points(0.0, 0.0)
    out: dict[str, Any] = {
        "map_max": float(values.max()), "map_min": float(values.min()),
        "map_centre": float(values[len(theta) // 2, len(phi) // 2]),
        "map_positive_frac": float((values > 0).mean()),
        "peak_theta_deg": float(np.rad2deg(theta[i])), "peak_phi_deg": float(np.rad2deg(phi[j])),
        "peak_offset_deg": float(np.rad2deg(np.arccos(np.clip(sphere_points(theta[i], phi[j]) @ centre, -1, 1)))),
    }
    nan_stats = dict.fromkeys(("lowest_loop_index", "auc_loop", "auc_line", "auc_branch", "axis_ratio",
                               "kent_r2", "kent_kappa", "kent_beta"), float("nan"))
    if rect.max() <= 0:
        return {**out, **nan_stats, "signature": None}
    sig = levelset_signature(rect, theta=theta, phi=phi)
    kent = fit_kent(rect, theta, phi)
    return {**out, "lowest_loop_index": sig.lowest_loop_index, "auc_loop": sig.auc_loop,
            "auc_line": sig.auc_line, "auc_branch": sig.auc_branch,
            "axis_ratio": levelset_axis_ratio(rect, theta, phi).mean_top,
            "kent_r2": kent.r2, "kent_kappa": kent.kappa, "kent_beta": kent.beta,
            "signature": sig.vector.tolist()}


def summarize(rows: Sequence[dict[str, Any]], layers: Sequence[str],
              not_run: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Per layer mean, SEM and count of every statistic, and its Spearman ρ with depth over units.

    `not_run` maps statistics that were not computed to the reason (e.g. "--no-rbf"): their verdict says so
    rather than that data is missing."""
    by_layer = {layer: {key: mean_sem([r.get(key) for r in rows if r["layer"] == layer]) for key, *_ in STATISTICS}
                for layer in layers}
    trend = {}
    for key, _, sign, expected in STATISTICS:
        pairs = [(r["depth"], float(r[key])) for r in rows
                 if r.get(key) is not None and np.isfinite(float(r[key]))]
        depth, vals = (np.array(x, dtype=float) for x in zip(*pairs)) if pairs else (np.array([]),) * 2
        vals = trend_values(key, vals)
        rho, p = (spearman(depth, vals) if len(vals) >= MIN_UNITS and np.ptp(depth) > 0 and np.ptp(vals) > 0
                  else (float("nan"), float("nan")))
        verdict = (f"not run ({not_run[key]})" if not_run and key in not_run
                   else _verdict(key, sign, float(rho), float(p), depth, vals))
        trend[key] = {"rho": float(rho), "p": float(p), "n": len(vals), "expected": expected, "verdict": verdict}
    return {"layers": list(layers), "by_layer": by_layer, "spearman": trend}


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's ρ of ``x`` and ``y`` (ties at their average rank, as scipy ranks them) and its two-sided p.

    Up to `EXACT_UNITS` pairs p is exact: the share of all n! pairings of the ranks whose |ρ| is at least the
    observed one: a perfect order of 3 has p = 2/3! = 1/3 and of 4 p = 2/4! = 1/12, where scipy's t approximation
    says 0. Above, p is that approximation."""
    from scipy.stats import rankdata, spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size > EXACT_UNITS:
        rho, p = spearmanr(x, y)
        return float(rho), float(p)
    rx, ry = rankdata(x) - (x.size + 1) / 2, rankdata(y) - (y.size + 1) / 2  # centred ranks
    scale = np.sqrt((rx @ rx) * (ry @ ry))
    rho = float(rx @ ry / scale)
    pairings = ry[_permutations(x.size)] @ rx / scale
    return rho, float(np.mean(np.abs(pairings) >= abs(rho) - 1e-12))


@lru_cache(maxsize=EXACT_UNITS)
def _permutations(n: int) -> np.ndarray:
    """Every ordering of ``range(n)``, one a row (n!, n)."""
    return np.array(list(permutations(range(n))), dtype=np.intp).reshape(-1, n)


def trend_values(key: str, values: np.ndarray) -> np.ndarray:
    """What the trend of statistic ``key`` is computed on: |ratio − 1| for the RBF max/min (the spec's claim
    is "→ 1"), else the values themselves."""
    return np.abs(values - 1.0) if key == "max_min_ratio" else values


def mean_sem(values: Iterable[Any]) -> dict[str, float]:
    """Mean, SEM and count of the finite ``values`` (None counts as missing)."""
    vals = finite_values(values)
    sem = float(vals.std(ddof=1) / np.sqrt(vals.size)) if vals.size > 1 else float("nan")
    return {"mean": float(vals.mean()) if vals.size else float("nan"), "sem": sem, "n": int(vals.size)}


def _verdict(key: str, sign: int, rho: float, p: float, depth: np.ndarray, vals: np.ndarray) -> str:
    """The verdict on a statistic's claim, or why there is none; "-" for a statistic the spec makes no claim on."""
    if sign == 0 and key != "global_local_ratio":
        return "-"
    if vals.size < MIN_UNITS:  # n counts the units where the statistic is defined
        return f"too few units (n {vals.size} < {MIN_UNITS})"
    if key == "global_local_ratio":
        above = float(np.mean(vals > 1))
        return f"{'holds' if above > 0.5 else 'does not hold'} ({above:.0%} of units > 1)"
    if np.ptp(depth) == 0:
        return "no trend to test (every unit in one layer)"
    if np.ptp(vals) == 0:
        return "no trend to test (every unit has the same value)"
    if not p < ALPHA:
        return f"no significant trend (p ≥ {ALPHA})"
    return f"holds (p < {ALPHA})" if np.sign(rho) == sign else f"opposite direction (p < {ALPHA})"


def finite_values(values: Iterable[Any]) -> np.ndarray:
    """The finite numbers among ``values`` (None counts as missing), as a float array."""
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]
