"""Checks a session or thread must pass before anything is written, beyond ``SessionConfig``'s own:
the server runs fewer threads than ``ACTMAX_MAX_ACTIVE_THREADS``, the generator's weights load, the optimizer
accepts its hyperparameters, the references exist, a manifold's source evolution makes enough codes for the PCs
of its planes, and the objective's channels are among those the session's rig announced (when it is connected).

Each problem is a ``Problem`` naming the field (the path of a 422 ``detail`` item) and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import generators
import optimizers
from analysis.tuning import highest_pc
from server.images import check_references
from server.manifold import PLANE_PCS
from server.session_config import ConfigError, ObjectiveConfig, SessionConfig, ThreadConfig, clip
from server.thread_runtime import optimizer_params
from server.weights import GeneratorCache


@dataclass(frozen=True)
class Problem:
    loc: tuple[str | int, ...]
    msg: str

    def to_json(self) -> dict:
        return {"type": "value_error", "loc": ["body", *self.loc], "msg": clip(self.msg)}


def check_capacity(active: int, adding: int, limit: int, loc: tuple[str | int, ...] = ()) -> list[Problem]:
    """A problem if ``adding`` threads to the ``active`` ones (not ended, on the whole server) would pass ``limit``:
    each costs memory and compute from its creation, even while its rig is away."""
    if active + adding <= limit:
        return []
    return [Problem(loc, f"the server runs {active} active thread(s) (running, waiting for their rig, blocked or "
                         f"paused) and takes at most {limit} (ACTMAX_MAX_ACTIVE_THREADS); {adding} more would pass it: "
                         "stop sessions or threads that are not needed, or raise ACTMAX_MAX_ACTIVE_THREADS")]


def check_session(config: SessionConfig, cache: GeneratorCache, rig_channels: int | None, active_threads: int,
                  max_active_threads: int) -> list[Problem]:
    """Every problem of a new session (empty: it can be created) on a server that runs ``active_threads``."""
    problems = check_capacity(active_threads, len(config.threads), max_active_threads, ("threads",))
    if problems:
        return problems  # said first and alone: building generators and optimizers for a refused session is waste
    try:
        check_references(config.references.source, config.references.count)
    except ConfigError as error:
        field, _, message = str(error).partition(": ")
        problems.append(Problem(("references", field.split(".")[-1]), message))
    for i, thread in enumerate(config.threads):
        problems += check_thread(thread, cache, config.rig, rig_channels, ("threads", i), config.threads)
    return problems


def check_thread(thread: ThreadConfig, cache: GeneratorCache, rig: str, rig_channels: int | None,
                 loc: tuple[str | int, ...] = (), session_threads: Sequence[ThreadConfig] = ()) -> list[Problem]:
    """The problems of one thread's settings for a session on ``rig`` (which announced ``rig_channels``);
    a manifold's planes are checked against its source among ``session_threads``."""
    problems = check_objective(thread.objective, rig, rig_channels, (*loc, "objective"))
    try:
        generator = cache.get(thread.generator, thread.weights, thread.generator_options)
        generators.base.ignores_codes(generator)  # raises for NaN or infinite images (its warnings come at the start)
    except generators.GeneratorError as error:
        field = "generator_options" if isinstance(error, generators.GeneratorOptionError) else \
            "weights" if thread.weights else "generator"
        return [*problems, Problem((*loc, field), str(error))]
    if thread.kind == "evolution":
        try:
            _optimizer(thread, generator)
        except (ValueError, TypeError) as error:
            problems.append(Problem((*loc, "optimizer_params"), f"{thread.optimizer} refuses these settings: {error}"))
    elif thread.kind == "manifold":
        source = next((t for t in session_threads if t.name == thread.manifold.source and t.kind == "evolution"), None)
        if source is not None:
            problems += check_planes(thread, source, generator, (*loc, "manifold", "planes"))
    return problems


def _optimizer(thread: ThreadConfig, generator) -> optimizers.Optimizer:
    params = optimizer_params(thread.optimizer, generator, thread.optimizer_params)
    return optimizers.create(thread.optimizer, generator.latent_dim, seed=0, **params)


def check_planes(thread: ThreadConfig, source: ThreadConfig, generator, loc: tuple[str | int, ...]) -> list[Problem]:
    """A problem per plane of a manifold built on a PC its source evolution will not have: a centred PCA of
    n codes has n - 1 PCs, and the evolution makes n_generations x population codes."""
    try:
        population = len(_optimizer(source, generator).ask())
    except (ValueError, TypeError):
        return []  # the source's own check says why
    n_codes = source.n_generations * population
    problems = []
    for plane in thread.manifold.planes:
        needed = highest_pc(PLANE_PCS[plane], plane == "random")
        if n_codes <= needed:
            problems.append(Problem(loc, (
                f"plane {plane!r} needs PC{needed}, and a PCA of n codes has n - 1 PCs: evolution {source.name!r} "
                f"must make more than {needed} codes, but its n_generations x population is {source.n_generations} "
                f"x {population} = {n_codes}; raise its n_generations or population, or drop the plane")))
    return problems


def check_objective(objective: ObjectiveConfig, rig: str, rig_channels: int | None,
                    loc: tuple[str | int, ...] = ("objective",)) -> list[Problem]:
    """A problem if the connected rig announced fewer channels than the objective reads."""
    if rig_channels is None or objective.n_channels <= rig_channels:
        return []
    return [Problem(loc, f"reads channel {objective.n_channels - 1} but rig {rig!r} announced {rig_channels} "
                         f"channel(s) (0..{rig_channels - 1}); choose channels the rig records")]
