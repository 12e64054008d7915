"""The tuning map of a Manifold experiment, analysed: per plane, the spline-smoothed map, its level-set
signature, mesh persistence, axis ratio and Kent fit, and the signature's reliability (spec B).

`ManifoldData` holds single-trial scores per grid point; `server.manifold.manifold_data` reads it from a
recorded thread, and anything else (a simulation, a file) can build one.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

NO_REPEATS = ("one trial per grid point: no noise estimate, so the spline interpolates (s = 0) and split-half "
              "and bootstrap reliability cannot be computed; record the map with repeats >= 2 for both")
NOT_REQUESTED = "reliability not requested: split-half and bootstrap reliability were not computed"


@dataclass
class ManifoldData:
    """Single-trial scores per grid point, per plane, of a manifold thread."""

    planes: list[str]
    theta: np.ndarray
    phi: np.ndarray
    trials: list[list[np.ndarray]]  # [plane][grid point] -> 1-D array of single-trial scores
    label: str = "response"  # what the scores are, with their unit (a figure's colour bar)

    def unrepeated_planes(self) -> list[str]:
        """The planes with one trial per grid point: no noise estimate, no reliability."""
        return [plane for plane, trials in zip(self.planes, self.trials) if not _repeated(trials)]


def _repeated(trials: list[np.ndarray]) -> bool:
    return any(t.size >= 2 for t in trials)


def analyze(data: ManifoldData, *, n_levels: int = 21, n_boot: int = 100, seed: int = 0,
            reliability: bool = True, progress=None) -> list[dict]:
    """Per plane: smoothed map, level-set signature, mesh persistence, axis ratio, Kent fit and (unless
    ``reliability`` is False, or the plane has one trial per grid point) split-half and bootstrap
    reliability of the signature; ``note`` says what was left out and why.

    The Kent fit is made on the trial means at the grid points (``raw_map``, each pole column pooled into
    one value), not on the spline. ``progress``: a tqdm bar (``reset``, ``set_description``, ``update``)
    advanced once per stage.
    """
    from analysis.isotropy import fit_kent, levelset_axis_ratio
    from analysis.persistence import grid_mesh, superlevel_persistence
    from analysis.topology import bootstrap_signature, levelset_signature, split_half_reliability
    from analysis.tuning import smooth_sphere_map

    planes = [(plane, trials, _repeated(trials)) for plane, trials in zip(data.planes, data.trials)]
    if progress is not None:
        progress.reset(total=sum(3 if reliability and repeated else 1 for *_, repeated in planes))
    rng = np.random.default_rng(seed)
    results = []
    for plane, trials, repeated in planes:
        with _stage(progress, f"{plane}: map"):
            smoothed = smooth_sphere_map(trials, data.theta, data.phi)
            raw = np.array([t.mean() if t.size else np.nan for t in trials]).reshape(len(data.theta), len(data.phi))
            if smoothed.pole_values is not None:
                raw[:, 0], raw[:, -1] = smoothed.pole_values
            mesh = grid_mesh(smoothed.theta, smoothed.phi)
            result = {
                "plane": plane,
                "raw_map": raw,
                "map": smoothed,
                "signature": levelset_signature(smoothed.values, n_levels, smoothed.theta, smoothed.phi),
                "persistence": superlevel_persistence(mesh.grid_to_vertices(smoothed.values), mesh),
                "axis_ratio": levelset_axis_ratio(smoothed.values, smoothed.theta, smoothed.phi, n_levels=n_levels),
                "kent": fit_kent(raw, data.theta, data.phi),
                "note": NO_REPEATS if not repeated else None if reliability else NOT_REQUESTED,
            }
        if reliability and repeated:
            with _stage(progress, f"{plane}: split halves"):
                result["split_half"] = split_half_reliability(trials, data.theta, data.phi, n_levels=n_levels,
                                                              rng=rng)
            with _stage(progress, f"{plane}: bootstrap ({n_boot})"):
                result["bootstrap"] = bootstrap_signature(trials, data.theta, data.phi, n_boot=n_boot, rng=rng)
        results.append(result)
    return results


@contextmanager
def _stage(progress, name: str):
    """Name a stage on the progress bar while it runs, then count it."""
    if progress is not None:
        progress.set_description(name)
    yield
    if progress is not None:
        progress.update()


def summary(results: list[dict]) -> list[dict]:
    """The JSON-able part of `analyze` (no maps)."""
    return [{
        "plane": r["plane"],
        "signature": r["signature"].to_dict(),
        "persistence": r["persistence"].to_dict(),
        "axis_ratio": r["axis_ratio"].to_dict(),
        "kent": r["kent"].to_dict(),
        "smoothing": r["map"].smoothing,
        "note": r["note"],
        "split_half": r["split_half"].to_dict() if "split_half" in r else None,
        "bootstrap": r["bootstrap"].to_dict() if "bootstrap" in r else None,
    } for r in results]
