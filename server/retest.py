"""Retest threads: an evolution's best images shown again, for an unbiased measure of each.

An evolution's best score is the largest of many noisy means, so it is biased up (the winner's curse), and
the images ranked first are not reliably the truly best. A retest thread waits for its source evolution to
end (``server.manifold.source_generations``, as a Manifold map does), ranks the source's images by the mean
over all their stored showings under the source's objective (an image shown again, a GA elite, pooled by the
sha256 of its PNG), and shows the ``top`` best as one generation with repeats by the ``fixed-design``
optimizer, with the session's references. Those showings were not used to choose the images, so their mean
estimates each image's response without the bias. Stimulus ``index`` = the image's rank (0 = best).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from server import ServerError
from server.drift import mean_sem
from server.manifold import showing_values, source_generations
from server.objectives import score_label
from server.session_config import RetestConfig
from server.store import queries
from server.store.models import Generation, StimulusKind, Thread, decode_codes


@dataclass
class ShownImage:
    """A distinct image of a thread (by the sha256 of its PNG) and the values of all its scored showings."""

    content_hash: str
    code: np.ndarray
    generation: int  # the first generation that showed it
    index: int  # its place in that generation
    values: list[float] = field(default_factory=list)  # one per scored showing with a finite value

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")


def ranked_images(db: DBSession, thread: Thread, generations: list[Generation]) -> list[ShownImage]:
    """The distinct images of an evolution's told ``generations``, best first by the mean over all their scored
    showings under the thread's objective (ties: the first shown first); images without a finite showing are left
    out. A retarget changes which objective scored a generation, not the one ranking them all."""
    images: dict[str, ShownImage] = {}
    for generation in generations:
        values = showing_values(db, thread, generation, thread.objective_json)
        codes = decode_codes(generation.codes, generation.n_stimuli)
        for stimulus in generation.stimuli:
            if stimulus.kind == StimulusKind.SYNTHETIC:
                image = images.setdefault(stimulus.content_hash, ShownImage(
                    stimulus.content_hash, codes[stimulus.index], generation.number, stimulus.index))
                image.values += values.get(stimulus.id, [])
    shown = [image for image in images.values() if image.values]
    return sorted(shown, key=lambda image: (-image.mean, image.generation, image.index))


def retest_config(thread: Thread) -> RetestConfig:
    """A retest thread's settings, from its session's stored config (read as stored, so that a report runs where
    the server's reference folder is not)."""
    stored = next(t for t in thread.session.config_json["threads"] if t["name"] == thread.name)
    return RetestConfig.model_validate(stored["retest"])


def _own_generation(db: DBSession, thread: Thread) -> Generation | None:
    """The retest's one generation, once asked."""
    return db.scalars(select(Generation).where(Generation.thread_id == thread.id)).first()


def design_codes(db: DBSession, thread: Thread, config: RetestConfig) -> np.ndarray:
    """The codes of the source's ``top`` best images, best first. Once the retest has asked them they are its
    generation's codes: showings stored for the source later (a late RESULTS) change no design being shown."""
    if (asked := _own_generation(db, thread)) is not None:
        return decode_codes(asked.codes, asked.n_stimuli)
    source, generations = source_generations(db, thread)
    ranked = ranked_images(db, source, generations)
    if not ranked:
        raise ServerError(f"retest {thread.name!r}: no image of evolution {source.name!r} has a scored showing")
    return np.stack([image.code for image in ranked[:config.top]])


def _mean_sem_n(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, standard error (None below two values: one showing has none) and number of ``values``."""
    mean, sem = mean_sem(values)
    return mean, sem if len(values) > 1 else None, len(values)


def retest_table(db: DBSession, thread: Thread) -> dict | None:
    """What a retest measured: each image shown again (by rank) with its retest mean ± SEM and number of showings
    beside its mean over the showings of the evolution that chose it, and each reference image's mean ± SEM in the
    same generation; None until the retest has a scored showing."""
    generation = _own_generation(db, thread)
    values = showing_values(db, thread, generation) if generation is not None else {}
    if not values:
        return None
    source_name = retest_config(thread).source
    source = queries.thread_named(db, thread.session_id, source_name)
    evolution = {image.code.tobytes(): image for image in
                 ranked_images(db, source, queries.complete_generations(db, source.id))}
    codes = decode_codes(generation.codes, generation.n_stimuli)
    images = []
    for stimulus in generation.stimuli:
        if stimulus.kind != StimulusKind.SYNTHETIC:
            continue
        chosen = evolution.get(codes[stimulus.index].tobytes())
        mean, sem, n = _mean_sem_n(values.get(stimulus.id, []))
        images.append({
            "rank": stimulus.index + 1, "content_hash": stimulus.content_hash,
            "retest_mean": mean, "retest_sem": sem, "retest_n": n,
            "evolution_generation": None if chosen is None else chosen.generation,
            "evolution_mean": None if chosen is None else chosen.mean,
            "evolution_n": 0 if chosen is None else len(chosen.values)})
    references = []
    for reference in queries.reference_stimuli(db, thread.session_id):
        mean, sem, n = _mean_sem_n(values.get(reference.id, []))
        references.append({"stimulus_id": reference.id, "content_hash": reference.content_hash, "mean": mean,
                           "sem": sem, "n": n})
    return {"thread": thread.name, "source": source_name, "generation_status": generation.status.value,
            "label": score_label(generation.objective_json or thread.objective_json),
            "evolution_label": score_label(source.objective_json), "images": images, "references": references}
