"""Manifold threads: the tuning map around a finished evolution, presented and read back (the map's
analysis is `analysis.manifold`); and what they share with retest threads (``server/retest.py``): waiting for
the source evolution to end, then reading its told generations.

The design is a fixed set of grid codes (spec B1) built from the source thread's trajectory, shown as
one generation with repeats by the ``fixed-design`` optimizer, so presentations, references,
timeouts and resume work as for an evolution. Stimulus ``index`` = plane * n² +
i * n + j for grid point (theta[i], phi[j]) of that plane.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session as DBSession

from analysis.manifold import ManifoldData
from analysis.tuning import grid_axis, pca_sphere_grid
from server import ServerError, ThreadNotReady
from server.objectives import Objective, score_label
from server.session_config import FlaggedTrialsConfig, ManifoldConfig, SessionConfig, ThreadConfig
from server.store import queries
from server.store.models import (
    Generation,
    StimulusKind,
    Thread,
    ThreadStatus,
    decode_codes,
)

PLANE_PCS = {"pc2-3": (0, 1, 2), "pc49-50": (0, 48, 49), "random": (0, 1, 2)}


def plane_axes(plane: str) -> tuple[str, str]:
    """The names of a plane's θ and φ axes (PC1 is the centre of every plane)."""
    if plane == "random":
        return "random axis 1", "random axis 2"
    return tuple(f"PC{pc + 1}" for pc in PLANE_PCS[plane][1:])


class SourceNotReady(ThreadNotReady):
    """The source evolution has not ended; the manifold or retest thread waits for it."""


def thread_config(thread: Thread) -> ThreadConfig:
    """A thread's settings, from its session's config."""
    return SessionConfig.stored(thread.session.config_json).thread(thread.name)


def manifold_config(thread: Thread) -> ManifoldConfig:
    """A manifold thread's grid settings, from its session's config."""
    return thread_config(thread).manifold


def waiting_message(thread: Thread) -> str | None:
    """A manifold or retest thread's ``last_error`` while its source evolution runs; None for an evolution."""
    source = thread_config(thread).source
    return None if source is None else f"{thread.kind} {thread.name!r} waits for evolution {source!r} to finish"


def source_generations(db: DBSession, thread: Thread) -> tuple[Thread, list[Generation]]:
    """A manifold or retest thread's source evolution, once it has finished or was stopped, and its told
    generations in order; ``SourceNotReady`` while it runs, ``ServerError`` when there is nothing to build on."""
    where = f"{thread.kind} {thread.name!r}"
    source = queries.thread_named(db, thread.session_id, thread_config(thread).source)  # an evolution: validated
    if source.status == ThreadStatus.FAILED:
        raise ServerError(f"{where}: its evolution {source.name!r} failed ({source.last_error})")
    if source.status not in (ThreadStatus.FINISHED, ThreadStatus.STOPPED):
        raise SourceNotReady(waiting_message(thread))
    generations = queries.complete_generations(db, source.id)
    if not generations:
        raise ServerError(f"{where}: evolution {source.name!r} has no complete generation")
    return source, generations


def source_trajectory(db: DBSession, thread: Thread) -> tuple[np.ndarray, np.ndarray]:
    """(every code of the source evolution in order, its final generation's codes)."""
    codes = [decode_codes(g.codes, g.n_stimuli) for g in source_generations(db, thread)[1]]
    return np.concatenate(codes), codes[-1]


def design_codes(db: DBSession, thread: Thread, config: ManifoldConfig) -> np.ndarray:
    """The grid codes of every plane, stacked (deterministic: the random plane is seeded by the thread)."""
    codes, final = source_trajectory(db, thread)
    rng = np.random.default_rng(thread.seed)
    grids = [
        pca_sphere_grid(codes, final_codes=final, step_deg=config.step_deg, n=config.n,
                        pcs=PLANE_PCS[plane], random_plane=plane == "random", rng=rng)
        for plane in config.planes
    ]
    return np.concatenate([g.codes for g in grids])


def manifold_data(db: DBSession, thread_id: int) -> ManifoldData:
    """Read a manifold thread's scored presentations back onto its grid, each valued as the engine scored its
    generation (``showing_values``: a ``zscore`` against all of them, a reference baseline against the references)."""
    thread = db.get(Thread, thread_id)
    if thread is None:
        raise ServerError(f"thread {thread_id} not found; list a session's threads with GET /sessions/{{id}}/threads")
    if thread.kind != "manifold":
        raise ServerError(f"thread {thread_id} is not a manifold thread (its kind: {thread.kind})")
    settings = manifold_config(thread)
    n = settings.n
    axis = grid_axis(settings.step_deg, n)
    per_point: dict[int, list[float]] = {}
    for generation in thread.generations:  # one: the map
        index = {s.id: s.index for s in generation.stimuli if s.kind == StimulusKind.SYNTHETIC}
        for stimulus_id, values in showing_values(db, thread, generation).items():
            if stimulus_id in index:
                per_point.setdefault(index[stimulus_id], []).extend(values)
    planes = settings.planes
    if thread.status == ThreadStatus.FAILED and len(per_point) < len(planes) * n * n:
        raise ServerError(f"manifold thread {thread_id} ended before its map was complete: {thread.last_error}")
    if not per_point:
        raise ServerError(f"manifold thread {thread_id} has no scored responses yet")
    trials = [[np.array(per_point.get(p * n * n + k, [])) for k in range(n * n)] for p in range(len(planes))]
    return ManifoldData(planes, axis, axis, trials, score_label(thread.objective_json))


def showing_values(db: DBSession, thread: Thread, generation: Generation,
                   objective: dict | None = None) -> dict[str, list[float]]:
    """Each stimulus's value at each scored showing in ``generation`` (finite values only), by ``objective``
    (default: the one the generation was scored with) in the generation's context, as the engine scores it:
    a ``zscore`` against all its presentations, a reference ``baseline`` against its reference images."""
    flagged = FlaggedTrialsConfig.model_validate(thread.session.config_json.get("flagged_trials", {}))
    references = {s.id for s in queries.reference_stimuli(db, thread.session_id)}
    shown = {(stimulus_id, k): [(r.rates, r.baseline)]  # one "stimulus" per showing: its score is that showing's
             for stimulus_id, responses in queries.scored_responses(db, generation.id, flagged).items()
             for k, r in enumerate(responses)}
    scorer = Objective.from_config(objective or generation.objective_json or thread.objective_json)
    values: dict[str, list[float]] = {}
    for (stimulus_id, _), value in scorer.score_generation(shown, {key for key in shown if key[0] in references}).items():
        if np.isfinite(value):
            values.setdefault(stimulus_id, []).append(value)
    return values



def plot_plane(data: ManifoldData, result: dict, title: str, path=None) -> bytes:
    """PNG of one plane of `analysis.manifold.analyze`: the smoothed map with its level sets, its axes
    named after the plane, coloured in the scores' unit."""
    from analysis.plots import plot_map

    smoothed = result["map"]
    return plot_map(smoothed.values, smoothed.theta, smoothed.phi, signature=result["signature"], title=title,
                    axis_names=plane_axes(result["plane"]), label=data.label, path=path)
