"""Manifold threads: the tuning map around a finished evolution, presented and analysed.

The design is a fixed set of grid codes (spec B1) built from the source thread's trajectory, shown as
one generation with repeats by the ``fixed-design`` optimizer, so presentations, references,
timeouts and resume work as for an evolution. Stimulus ``index`` = plane * n² +
i * n + j for grid point (theta[i], phi[j]) of that plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from analysis.tuning import grid_axis, pca_sphere_grid
from server import ServerError, ThreadNotReady
from server.objectives import Objective
from server.session_config import ManifoldConfig, SessionConfig
from server.store import queries
from server.store.models import Batch, Presentation, Stimulus, StimulusKind, Thread, ThreadStatus, decode_codes

PLANE_PCS = {"pc2-3": (0, 1, 2), "pc49-50": (0, 48, 49), "random": (0, 1, 2)}


class ManifoldNotReady(ThreadNotReady):
    """The source evolution has not finished; the manifold thread waits for it."""


def manifold_config(thread: Thread) -> ManifoldConfig:
    """A manifold thread's grid settings, from its session's config."""
    return SessionConfig.model_validate(thread.session.config_json).thread(thread.name).manifold


def source_trajectory(db: DBSession, thread: Thread, source_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(every code of the source evolution in order, its final generation's codes)."""
    source = queries.thread_named(db, thread.session_id, source_name)
    if source.status == ThreadStatus.FAILED:
        raise ServerError(f"manifold {thread.name!r}: its evolution {source.name!r} failed ({source.last_error})")
    if source.status not in (ThreadStatus.FINISHED, ThreadStatus.STOPPED):
        raise ManifoldNotReady(f"manifold {thread.name!r} waits for evolution {source.name!r} to finish")
    generations = queries.complete_generations(db, source.id)
    if not generations:
        raise ServerError(f"manifold {thread.name!r}: evolution {source.name!r} has no complete generation")
    codes = [decode_codes(g.codes, g.n_stimuli) for g in generations]
    return np.concatenate(codes), codes[-1]


def design_codes(db: DBSession, thread: Thread, config: ManifoldConfig) -> np.ndarray:
    """The grid codes of every plane, stacked (deterministic: the random plane is seeded by the thread)."""
    codes, final = source_trajectory(db, thread, config.source)
    rng = np.random.default_rng(thread.seed)
    grids = [
        pca_sphere_grid(codes, final_codes=final, step_deg=config.step_deg, n=config.n,
                        pcs=PLANE_PCS[plane], random_plane=plane == "random", rng=rng)
        for plane in config.planes
    ]
    return np.concatenate([g.codes for g in grids])


@dataclass
class ManifoldData:
    """Single-trial scores per grid point, per plane, of a manifold thread."""

    planes: list[str]
    theta: np.ndarray
    phi: np.ndarray
    trials: list[list[np.ndarray]]  # [plane][grid point] -> 1-D array of single-trial scores


def manifold_data(db: DBSession, thread_id: int) -> ManifoldData:
    """Read a manifold thread's presentations back onto its grid (objective applied per trial)."""
    thread = db.get(Thread, thread_id)
    if thread is None or thread.kind != "manifold":
        raise ServerError(f"thread {thread_id} is not a manifold thread")
    settings = manifold_config(thread)
    n = settings.n
    axis = grid_axis(settings.step_deg, n)
    objective = Objective.from_config(thread.objective_json)
    rows = db.execute(
        select(Stimulus.index, Presentation.rates_json)
        .join(Presentation, Presentation.stimulus_id == Stimulus.id)
        .join(Batch, Batch.id == Presentation.batch_id)
        .where(Stimulus.thread_id == thread_id, Stimulus.kind == StimulusKind.SYNTHETIC, Batch.thread_id == thread_id)
    ).all()
    per_point: dict[int, list[float]] = {}
    for index, rates in rows:
        score = objective.score(rates)
        if np.isfinite(score):
            per_point.setdefault(index, []).append(score)
    if not per_point:
        raise ServerError(f"manifold thread {thread_id} has no responses yet")
    planes = settings.planes
    trials = [[np.array(per_point.get(p * n * n + k, [])) for k in range(n * n)] for p in range(len(planes))]
    return ManifoldData(planes, axis, axis, trials)


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
