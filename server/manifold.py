"""Manifold threads: the tuning map around a finished evolution, presented and read back (the map's
analysis is `analysis.manifold`).

The design is a fixed set of grid codes (spec B1) built from the source thread's trajectory, shown as
one generation with repeats; the engine runs it through the same ask/tell path as an optimizer, so
presentations, references, timeouts and resume work the same. Stimulus ``index`` = plane * n² +
i * n + j for grid point (theta[i], phi[j]) of that plane.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from analysis.manifold import ManifoldData
from analysis.tuning import grid_axis, pca_sphere_grid
from server import ServerError
from server.store.models import (
    Batch,
    Generation,
    GenerationStatus,
    Presentation,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
    decode_codes,
)

PLANE_PCS = {"pc2-3": (0, 1, 2), "pc49-50": (0, 48, 49), "random": (0, 1, 2)}


class ManifoldNotReady(ServerError):
    """The source evolution has not finished; the manifold thread waits for it."""


class FixedDesign:
    """A fixed set of codes shown as one generation; the optimizer interface the engine drives."""

    def __init__(self, codes: np.ndarray):
        self.codes = codes
        self.generation = 0

    def ask(self) -> np.ndarray:
        return self.codes

    def tell(self, codes: np.ndarray, scores: np.ndarray) -> None:
        self.generation += 1

    def state_dict(self) -> dict:
        return {"generation": self.generation}

    def load_state_dict(self, state: dict) -> None:
        self.generation = int(state["generation"])


def source_trajectory(db: DBSession, thread: Thread) -> tuple[np.ndarray, np.ndarray]:
    """(every code of the source evolution in order, its final generation's codes)."""
    source = db.scalars(select(Thread).where(Thread.session_id == thread.session_id,
                                             Thread.name == thread.optimizer_params_json["source"])).one()
    if source.status not in (ThreadStatus.FINISHED, ThreadStatus.STOPPED):
        raise ManifoldNotReady(f"manifold {thread.name!r} waits for evolution {source.name!r} to finish")
    generations = db.scalars(select(Generation).where(Generation.thread_id == source.id,
                                                      Generation.status == GenerationStatus.COMPLETE)
                             .order_by(Generation.number)).all()
    if not generations:
        raise ServerError(f"manifold {thread.name!r}: evolution {source.name!r} has no complete generation")
    codes = [decode_codes(g.codes, g.n_stimuli) for g in generations]
    return np.concatenate(codes), codes[-1]


def design_for(db: DBSession, thread: Thread) -> FixedDesign:
    """The grid codes of every plane, stacked (deterministic: the random plane is seeded by the thread)."""
    settings = thread.optimizer_params_json
    codes, final = source_trajectory(db, thread)
    rng = np.random.default_rng(thread.seed)
    grids = [
        pca_sphere_grid(codes, final_codes=final, step_deg=settings["step_deg"], n=180 // settings["step_deg"] + 1,
                        pcs=PLANE_PCS[plane], random_plane=plane == "random", rng=rng)
        for plane in settings["planes"]
    ]
    return FixedDesign(np.concatenate([g.codes for g in grids]))


def manifold_data(db: DBSession, thread_id: int) -> ManifoldData:
    """Read a manifold thread's presentations back onto its grid (objective applied per trial)."""
    from server.objectives import Objective

    thread = db.get(Thread, thread_id)
    if thread is None or thread.kind != "manifold":
        raise ServerError(f"thread {thread_id} is not a manifold thread")
    settings = thread.optimizer_params_json
    n = 180 // settings["step_deg"] + 1
    axis = grid_axis(settings["step_deg"], n)
    objective = Objective.from_config(thread.objective_json)
    rows = db.execute(
        select(Stimulus.index, Presentation.rates_json)
        .join(Presentation, Presentation.stimulus_id == Stimulus.id)
        .join(Batch, Batch.id == Presentation.batch_id)
        .where(Stimulus.thread_id == thread_id, Stimulus.kind == StimulusKind.SYNTHETIC, Batch.thread_id == thread_id)
    ).all()
    per_point: dict[int, list[float]] = {}
    for index, rates in rows:
        score = objective(np.array([[np.nan if r is None else r for r in rates]]))[0]
        if np.isfinite(score):
            per_point.setdefault(index, []).append(score)
    if not per_point:
        raise ServerError(f"manifold thread {thread_id} has no responses yet")
    planes = settings["planes"]
    trials = [[np.array(per_point.get(p * n * n + k, [])) for k in range(n * n)] for p in range(len(planes))]
    return ManifoldData(planes, axis, axis, trials)
