"""The tuning map of a Manifold experiment, analysed: per plane, the spline-smoothed map, its level-set
signature, mesh persistence, axis ratio and Kent fit, and the signature's reliability (spec B).

`ManifoldData` holds single-trial scores per grid point; `server.manifold.manifold_data` reads it from a
recorded thread, and anything else (a simulation, a file) can build one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ManifoldData:
    """Single-trial scores per grid point, per plane, of a manifold thread."""

    planes: list[str]
    theta: np.ndarray
    phi: np.ndarray
    trials: list[list[np.ndarray]]  # [plane][grid point] -> 1-D array of single-trial scores


def analyze(data: ManifoldData, *, n_levels: int = 21, n_boot: int = 100, seed: int = 0,
            reliability: bool = True) -> list[dict]:
    """Per plane: smoothed map, level-set signature, mesh persistence, axis ratio, Kent fit (to the raw
    trial means) and (unless
    ``reliability`` is False) split-half and bootstrap reliability of the signature."""
    from analysis.isotropy import fit_kent, levelset_axis_ratio
    from analysis.persistence import grid_mesh, superlevel_persistence
    from analysis.topology import bootstrap_signature, levelset_signature, split_half_reliability
    from analysis.tuning import smooth_sphere_map

    rng = np.random.default_rng(seed)
    results = []
    for plane, trials in zip(data.planes, data.trials):
        smoothed = smooth_sphere_map(trials, data.theta, data.phi)
        raw = np.array([t.mean() if t.size else np.nan for t in trials]).reshape(len(data.theta), len(data.phi))
        mesh = grid_mesh(smoothed.theta, smoothed.phi)
        result = {
            "plane": plane,
            "raw_map": raw,
            "map": smoothed,
            "signature": levelset_signature(smoothed.values, n_levels, smoothed.theta, smoothed.phi),
            "persistence": superlevel_persistence(mesh.grid_to_vertices(smoothed.values), mesh),
            "axis_ratio": levelset_axis_ratio(smoothed.values, smoothed.theta, smoothed.phi, n_levels=n_levels),
            "kent": fit_kent(raw, data.theta, data.phi),  # fitted to the measured grid, not the spline
        }
        if reliability:
            result["split_half"] = split_half_reliability(trials, data.theta, data.phi, n_levels=n_levels, rng=rng)
            result["bootstrap"] = bootstrap_signature(trials, data.theta, data.phi, n_boot=n_boot, rng=rng)
        results.append(result)
    return results


def summary(results: list[dict]) -> list[dict]:
    """The JSON-able part of `analyze` (no maps)."""
    return [{
        "plane": r["plane"],
        "signature": r["signature"].to_dict(),
        "persistence": r["persistence"].to_dict(),
        "axis_ratio": r["axis_ratio"].to_dict(),
        "kent": r["kent"].to_dict(),
        "split_half": r["split_half"].to_dict() if "split_half" in r else None,
        "bootstrap": r["bootstrap"].to_dict() if "bootstrap" in r else None,
    } for r in results]
