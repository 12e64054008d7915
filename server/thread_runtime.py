"""A running thread in memory: its settings, optimizer and generator, and the generation in flight.

Everything here is rebuilt from the database: the thread's settings from its session's validated
``SessionConfig``, the optimizer from its last snapshot replayed through the told generations after
it, and a pending generation by re-asking that state, which returns the same codes, together with
its outstanding batch (the last one sent) and the stimuli that batch still owes. The generator must be
the one the thread's images were made with (``check_generator``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

import optimizers
from analysis.serialization import json_safe
from generators.base import GeneratorError, ignores_codes
from rig_client.protocol import encode_png
from rig_client.version import package_version
from server import ServerError, ThreadNotReady, manifold, retest
from server.images import encode_images, load_references, parallel_submit, reference_files
from server.monitor import DriftHistory
from server.session_config import FlaggedTrialsConfig, SessionConfig, ThreadConfig
from server.store import queries, records
from server.store.archive import ImageArchive
from server.store.db import Transaction
from server.store.models import (
    BatchStatus,
    EventLevel,
    Generation,
    Session,
    Stimulus,
    StimulusKind,
    Thread,
    decode_codes,
)

log = logging.getLogger(__name__)

REFERENCE_SIZE = 128
SCALE_TOLERANCE = 4  # a sigma0 or radius this many times off the generator's default is warned about


class GeneratorChanged(ThreadNotReady):
    """The server loaded other weights, precision or generator version than the thread's images were made with:
    the thread waits (its ``last_error`` says for what) until a server loads theirs, or a user stops it."""


class ReferencesLost(ServerError):
    """The image archive lost reference images that their source no longer renders as stored: a thread of their
    session cannot start until the archive's files (or the reference files) are back."""


@dataclass
class InFlight:
    """A thread's pending generation: the codes asked, their stimuli, and the round last sent.

    Each round is one BATCH holding every stimulus still owed (a stimulus appears once per batch);
    ``repeats`` rounds are normal, up to ``MAX_REQUEUES`` more re-queue what a rig did not answer.
    """

    generation_id: int
    number: int
    codes: np.ndarray
    stimulus_ids: list[str]  # synthetic stimuli in code order
    pngs: dict[str, bytes]  # each synthetic stimulus's PNG as archived, sent from memory
    archived: Future | None = None  # the archive writes of those PNGs, started once sent (awaited before the tell)
    batch_id: str | None = None  # None: the current round still has to be sent
    awaiting: set[str] = field(default_factory=set)  # stimuli of the last batch not answered yet
    rounds: int = 0
    resend: bool = False  # rig reconnected or runtime rebuilt: send the outstanding batch again under its own id
    last_activity: float = field(default_factory=time.monotonic)

    def archive_in(self, archive: ImageArchive) -> Future:
        """Write the PNGs to ``archive`` in the background (started once; rewrites are skipped); the writes.

        The engine starts them after the round's send, so they never hold up the rig, and the tell
        awaits them: the images of a told generation survive a power loss."""
        if self.archived is None:
            self.archived = parallel_submit(archive.save_all, list(self.pngs.values()))
        return self.archived

    def answered(self, stimuli: set[str], done: bool) -> bool:
        """Count a RESULTS of the last batch (``done``: the rig will answer no more of it); True once the
        round is answered."""
        self.awaiting -= stimuli
        if done:
            self.awaiting.clear()
        return not self.awaiting


class Snapshot(NamedTuple):
    """A snapshot generation's optimizer state after ``tell``, kept until ``steps.store_snapshot`` writes it."""

    generation_id: int
    number: int
    state: dict


@dataclass
class ThreadRuntime:
    """What the engine holds in memory for one running thread (rebuildable from the database)."""

    id: int
    session_id: int
    rig: str
    seed: int
    window_ms: tuple[int, int]  # whole ms, as configured and sent in BATCH
    repeats: int
    flagged: FlaggedTrialsConfig  # which presentations score and answer their stimulus
    generator: Any
    optimizer: optimizers.Optimizer
    reference_ids: list[str]
    reference_pngs: dict[str, bytes]
    first_generation: int
    render_chunk: int  # images per compute job (``Settings.render_chunk``)
    drift: DriftHistory  # what the drift alarm remembers of the thread's curve
    inflight: InFlight | None = None
    next_codes: np.ndarray | None = None  # asked after the last tell; not yet a generation in the database
    next_images: list | None = None  # their (PNG, archived image) pairs once rendered
    paused: bool = False  # finish (score and tell) the generation in flight, start no new one
    snapshot: Snapshot | None = None  # a snapshot generation's state until written after its step's BATCH is out
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answered_at: float | None = None  # monotonic time the rig began to wait for the next BATCH (its round answered)
    compute_s: float = 0.0  # seconds of tell, ask and render since then (``batch.sent`` reports both)

    @contextmanager
    def computing(self):
        """Count the enclosed work (the generator's and the optimizer's) in ``compute_s``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.compute_s += time.perf_counter() - start


def build_runtime(db: DBSession, thread_id: int, load_generator: Callable[[str, str | None, dict], Any],
                  archive: ImageArchive, render_chunk: int) -> ThreadRuntime:
    """Rebuild a running thread: its settings, the optimizer after its last tell, its pending generation; logged as
    ``thread.runtime``.

    Raises ``ThreadNotReady`` while the thread waits for another (a Manifold map or a retest for its source), or for a
    server that loads the generator its images were made with (``GeneratorChanged``).
    """
    thread = db.get(Thread, thread_id)
    session = thread.session
    session_config = SessionConfig.stored(session.config_json)
    config = session_config.thread(thread.name)
    generator = load_generator(config.generator, config.weights, config.generator_options)
    check_generator(db, thread, config, generator)
    thread.generator_version = generator.provenance["version"]
    optimizer = create_optimizer(db, thread, config, generator)
    last = restore_optimizer(db, optimizer, thread_id)
    pending = queries.pending_generation(db, thread_id)
    if last is None and pending is None:
        record_start(db, thread, generator, optimizer)
    window = session_config.response_window_ms
    references = ensure_references(db, session, session_config, archive)
    runtime = ThreadRuntime(
        id=thread.id, session_id=session.id, rig=session.rig, seed=config.seed,
        window_ms=tuple(window), repeats=config.repeats,
        flagged=session_config.flagged_trials, generator=generator,
        optimizer=optimizer, reference_ids=list(references), reference_pngs=references,
        first_generation=0 if last is None else last.number + 1, render_chunk=render_chunk,
        drift=DriftHistory.load(db, thread_id, session_config.drift),
    )
    if pending is not None:
        runtime.inflight = resume_pending(db, runtime, pending, archive)
    record_runtime(db, thread, generator)
    return runtime


def check_generator(db: DBSession, thread: Thread, config: ThreadConfig, generator) -> None:
    """Raise ``GeneratorChanged`` unless ``generator`` is the one the thread's latest images were made with (name,
    version with its precision, weights sha256); a thread without images takes any. The refusal is the thread's
    ``last_error`` and, once per change of it, an error event (``thread.generator_changed``) naming both."""
    made = db.execute(select(Stimulus.generator, Stimulus.generator_version, Stimulus.weights_sha256)
                      .where(Stimulus.thread_id == thread.id, Stimulus.kind == StimulusKind.SYNTHETIC)
                      .order_by(Stimulus.generation_id.desc()).limit(1)).one_or_none()
    loaded = generator.provenance
    if made is None or tuple(made) == (loaded["name"], loaded["version"], loaded["weights_sha256"]):
        return
    name, version, sha256 = made
    base, _, precision = version.partition("+")
    same_code = loaded["version"].partition("+")[0] == base
    code = "" if same_code else f", an actmax whose {name} is version {base}"
    fix = (f"Put the file it started with back at {config.weights} (it goes on once that is there, on a server "
           f"with{'' if same_code else f' {name} version {base} and'} `--precision {precision or 'float32'}`)"
           if config.weights else
           f"Restart the server with those weights (in ACTMAX_WEIGHTS_DIR/{name}/ or {name}'s standard place: "
           f"`actmax weights list` shows the sha256 a server finds){code} and `--precision {precision or 'float32'}`")
    message = (f"its images were made by {name} {version} with weights sha256 {sha256}, but this server loaded "
               f"{loaded['name']} {loaded['version']} with weights sha256 {loaded['weights_sha256']}: it waits "
               f"rather than go on with another generator. {fix}, or stop the thread and start a new one")
    if thread.last_error != message:
        log.error("thread %s %r: %s", thread.id, thread.name, message)
        records.set_thread_error(db, thread.id, "thread.generator_changed", message, data={
            "made_with": {"generator": name, "generator_version": version, "weights_sha256": sha256},
            "loaded": {"generator": loaded["name"], "generator_version": loaded["version"],
                       "weights_sha256": loaded["weights_sha256"]}})
    raise GeneratorChanged(message)


def record_runtime(db: DBSession, thread: Thread, generator) -> None:
    """Log the ``thread.runtime`` event of a runtime just built: the software and the generator it runs with."""
    provenance = generator.provenance
    data = {"actmax": package_version(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "device": str(generator.device),
            "precision": str(generator.dtype).removeprefix("torch."), "generator": provenance["name"],
            "generator_version": provenance["version"], "weights_sha256": provenance["weights_sha256"]}
    message = (f"thread {thread.id} {thread.name!r} runs {data['generator']} {data['generator_version']} (weights "
               f"sha256 {str(data['weights_sha256'])[:12]}) in {data['precision']} on {data['device']}: actmax "
               f"{data['actmax']}, python {data['python']}, torch {data['torch']}, numpy {data['numpy']}")
    log.info(message)
    records.log_event(db, "thread.runtime", message, session_id=thread.session_id, thread_id=thread.id, data=data)


def rendered(generator, codes: np.ndarray) -> torch.Tensor:
    """``generator``'s images of ``codes``, on its device; ``GeneratorError`` when a pixel is NaN or infinite
    (broken weights, codes the network or its precision overflows on), for such images must not be shown or scored."""
    images = generator.generate(codes)
    if math.isfinite(images.sum()):  # one reduction: pixels in [0, 1] sum to a finite number unless one is not
        return images
    broken = (~torch.isfinite(images.flatten(1)).all(1)).cpu().numpy()
    provenance, precision = generator.provenance, str(generator.dtype).removeprefix("torch.")
    sha = f" (weights sha256 {provenance['weights_sha256'][:12]})" if provenance["weights_sha256"] else ""
    if generator.dtype != torch.float32:
        fix = (f"{precision} overflows on them: serve with `actmax serve --precision float32` (or "
               "ACTMAX_PRECISION=float32)")
    elif broken.all():
        fix = (f"broken weights render them for every code: check them with `actmax weights verify {generator.name}` "
               "and put intact ones in place")
    else:
        fix = "codes far from the prior can overflow a network: keep them nearer it (`sphere-cma`, a smaller `sigma0`)"
    norm, prior = float(np.linalg.norm(np.asarray(codes)[broken], axis=1).max()), generator.default_init()["radius"]
    raise GeneratorError(
        f"{provenance['name']} {provenance['version']}{sha} rendered NaN or infinite pixels for {int(broken.sum())} "
        f"of {len(broken)} codes (norm up to {norm:.3g}; its prior's is about {prior:.3g}), which are neither shown "
        f"nor scored; {fix}; then start a new thread")


def code_chunks(codes: np.ndarray, size: int) -> list[np.ndarray]:
    """``codes`` in consecutive chunks of at most ``size`` rows: the engine renders one chunk per compute job."""
    return [codes[i:i + size] for i in range(0, len(codes), size)]


def is_snapshot(number: int) -> bool:
    """Whether generation ``number`` keeps the full optimizer state: 0, 1, 2, 4, 8, ... (O(g) bytes in all)."""
    return number & (number - 1) == 0


def restore_optimizer(db: DBSession, optimizer: optimizers.Optimizer, thread_id: int) -> Generation | None:
    """Load the thread's last snapshot into the fresh ``optimizer`` and replay every later told generation (ask,
    then tell its stored scores), which reproduces the state after the last tell bit for bit; with no snapshot
    (the server stopped before it wrote generation 0's, ``steps.store_snapshot``), replay them all from the fresh
    state. Returns the last told generation (None for a fresh thread)."""
    snapshot = queries.last_snapshot(db, thread_id)
    if snapshot is not None:
        try:
            optimizer.load_state_dict(optimizers.loads_state(snapshot.optimizer_state))
        except optimizers.OptimizerError as error:
            eigenbasis = db.get(Thread, thread_id).optimizer_params_json.get("eigenbasis")
            if eigenbasis is None:
                raise
            raise ServerError(f"{error}: its eigenbasis file {eigenbasis} changed since the thread started; put back "
                              f"the file it started with, then `actmax thread resume {thread_id}`") from None
    last = snapshot
    for generation in queries.complete_generations(db, thread_id, after=-1 if snapshot is None else snapshot.number):
        codes = check_codes(optimizer.ask(), generation)
        optimizer.tell(codes, np.array([np.nan if s is None else s for s in generation.scores_json], dtype=float))
        last = generation
    return last


def check_codes(codes: np.ndarray, generation: Generation) -> np.ndarray:
    """``codes`` if the restored optimizer asked exactly what ``generation`` stored; else ServerError."""
    stored = decode_codes(generation.codes, generation.n_stimuli)
    if codes.shape != stored.shape or not np.array_equal(codes, stored):
        raise ServerError(
            f"generation {generation.number} of thread {generation.thread_id}: the restored optimizer asked "
            "different codes than were stored; the optimizer state in the database is inconsistent"
        )
    return codes


def owed_stimuli(db: Transaction, runtime: ThreadRuntime, inflight: InFlight,
                 scored: dict[str, list[queries.Response]] | None = None) -> list[str]:
    """Stimulus ids (with repeats) still owed for ``inflight``'s generation: flagged presentations do not count.

    ``scored``: the generation's ``queries.scored_responses`` when the caller has read them already.
    """
    if scored is None:
        scored = queries.scored_responses(db, inflight.generation_id, runtime.flagged)
    owed = []
    for stimulus_id in inflight.stimulus_ids + runtime.reference_ids:
        owed += [stimulus_id] * max(0, runtime.repeats - len(scored.get(stimulus_id, ())))
    return owed


def create_optimizer(db: DBSession, thread: Thread, config: ThreadConfig, generator) -> optimizers.Optimizer:
    """The thread's optimizer, fresh; a Manifold thread's is a fixed design of its grid codes, a retest's of its
    source's best images."""
    params = optimizer_params(config.optimizer, generator, config.optimizer_params)
    if config.manifold is not None:
        params["codes"] = manifold.design_codes(db, thread, config.manifold)
    elif config.retest is not None:
        params["codes"] = retest.design_codes(db, thread, config.retest)
    return optimizers.create(config.optimizer, generator.latent_dim, seed=config.seed, **params)


def optimizer_params(name: str, generator, user: dict) -> dict:
    """The thread's own hyperparameters, with the generator's latent-geometry defaults for those neither it nor
    the preset ``name`` sets (``optimizers.with_generator_defaults``)."""
    return optimizers.with_generator_defaults(name, user, generator.default_init())


def record_start(db: DBSession, thread: Thread, generator, optimizer: optimizers.Optimizer) -> None:
    """Log a fresh thread's ``thread.optimizer`` event: every hyperparameter its optimizer runs with, as resolved from
    the thread's own, its preset's and the generator's defaults (arrays in ``data``; large ones by SHA-256); and a
    ``thread.unusual_settings`` warning for each of ``unusual_settings``."""
    hyperparameters = json_safe(optimizer.state_dict()["hyperparameters"])
    hyperparameters = {**{k: v for k, v in thread.optimizer_params_json.items() if k not in hyperparameters},
                       **hyperparameters}  # what it was made from but does not keep, e.g. hess-cma's eigenbasis file
    listed = ", ".join(f"{key}={_brief(value)}" for key, value in hyperparameters.items())
    where = f"thread {thread.id} {thread.name!r}"
    records.log_event(db, "thread.optimizer", f"{where}: {optimizer.name} runs with {listed}",
                      session_id=thread.session_id, thread_id=thread.id,
                      data={"optimizer": optimizer.name, "hyperparameters": hyperparameters})
    for warning in unusual_settings(generator, optimizer):
        records.log_event(db, "thread.unusual_settings", f"{where}: {warning}", level=EventLevel.WARNING,
                          session_id=thread.session_id, thread_id=thread.id)


def _brief(value) -> str:
    """A hyperparameter for a log line: a vector by its length, an array stored by fingerprint by its hash."""
    if isinstance(value, list):
        return f"<{len(value)} numbers>"
    if isinstance(value, dict) and "sha256" in value:
        return f"<sha256 {value['sha256'][:12]}>"
    return repr(value)


def unusual_settings(generator, optimizer: optimizers.Optimizer) -> list[str]:
    """What in a thread's settings is likely a mistake, though it runs: a ``sigma0`` or ``radius`` more than
    ``SCALE_TOLERANCE`` times off the generator's ``default_init``, weights that render another image size than the
    generator's name says, or one image for every code (``generators.base.ignores_codes``, which raises
    ``GeneratorError`` for a generator whose images of prior codes are not finite: the thread fails)."""
    defaults, root_d = generator.default_init(), math.sqrt(generator.latent_dim)
    warnings = []
    for key in ("sigma0", "radius"):
        value, default = optimizer.hyperparameters.get(key), defaults.get(key)
        if key not in optimizer.generator_defaults or value is None or not default:
            continue
        ratio = value / default
        if 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE:
            continue
        scale = f" (σ₀√d {value * root_d:.3g} against {default * root_d:.3g})" if key == "sigma0" else ""
        warnings.append(f"{key} {value:g} is {ratio:.2g}× {generator.name}'s default {default:g}{scale}, which is "
                        f"matched to its latent (codes of norm about {defaults['radius']:g}); give {key} {default:g} "
                        "unless that is meant")
    if generator.named_image_size not in (None, generator.image_size):
        warnings.append(f"the weights render {generator.image_size}-px images, not the {generator.named_image_size}-px "
                        f"that {generator.name} names: check the weights (and their config.json)")
    if (problem := ignores_codes(generator)) is not None:
        warnings.append(problem)
    return warnings


def resume_pending(db: DBSession, runtime: ThreadRuntime, pending: Generation, archive: ImageArchive) -> InFlight:
    """Re-ask the restored optimizer (it must return exactly the codes stored before the crash) and take up
    the last batch sent: while the rig has not said ``done`` for it, the stimuli it still owes are awaited,
    and sent again under the same ``batch_id`` once the rig is connected.

    The generation's PNGs are read back once. Any the archive lost (a power loss before their
    fsync) are rendered again from the stored codes and must hash to what was committed.
    """
    stored = check_codes(runtime.optimizer.ask(), pending)
    stimuli = sorted((s for s in pending.stimuli if s.kind == StimulusKind.SYNTHETIC), key=lambda s: s.index)
    if not all(archive.holds(s.content_hash) for s in stimuli):
        pngs = [png for chunk in code_chunks(stored, runtime.render_chunk)
                for png in encode_images(rendered(runtime.generator, chunk))]  # chunked as the engine renders
        for stimulus, png in zip(stimuli, pngs, strict=True):
            if archive.save(png).content_hash != stimulus.content_hash:
                raise ServerError(
                    f"stimulus {stimulus.id} of generation {pending.number} is missing from the image archive "
                    "and renders differently now (other generator weights or device, or an older actmax's PNG "
                    "encoder?); restore the archive")
    inflight = InFlight(pending.id, pending.number, stored, [s.id for s in stimuli],
                        {s.id: archive.read(s.content_hash) for s in stimuli}, rounds=1)
    batches = queries.generation_batches(db, pending.id)
    if batches:
        last = batches[-1]
        inflight.batch_id, inflight.rounds = last.id, len(batches)
        if last.status == BatchStatus.SENT:
            # Every round holds all that was owed when it was sent, so what is owed now was in the last one.
            inflight.awaiting = set(owed_stimuli(db, runtime, inflight)) - queries.batch_answered(db, last.id)
            inflight.resend = bool(inflight.awaiting)  # the rig may never have received it
    return inflight


def ensure_references(db: DBSession, session: Session, config: SessionConfig,
                      archive: ImageArchive) -> dict[str, bytes]:
    """The session's reference stimuli (id -> PNG, in order), archived on first use. Those the archive lost are
    rendered again from their source (``stored_references``) and archived again, which a warning event says."""
    existing = queries.reference_stimuli(db, session.id)
    if existing:
        references, rebuilt = stored_references(existing, config, archive)
        if rebuilt:
            archive.save_all(references[stimulus_id] for stimulus_id in rebuilt)
            message = (f"session {session.id}: the image archive had lost {len(rebuilt)} reference image(s) "
                       f"({', '.join(rebuilt)}); rebuilt from {config.references.source}, byte for byte as stored")
            log.warning(message)
            records.log_event(db, "session.references_rebuilt", message, level=EventLevel.WARNING,
                              session_id=session.id, data={"stimuli": rebuilt, "source": config.references.source})
        return references
    references = {}
    for pixels in load_references(config.references.source, config.references.count, REFERENCE_SIZE):
        png = encode_png(pixels)
        image = archive.save(png)
        stimulus_id = f"ref-{session.id}-{image.content_hash[:12]}"
        if stimulus_id not in references:
            db.add(Stimulus(id=stimulus_id, session_id=session.id, kind=StimulusKind.REFERENCE,
                            content_hash=image.content_hash, png_path=image.png_path))
            references[stimulus_id] = png
    db.flush()
    return references


def stored_references(stimuli: list[Stimulus], config: SessionConfig,
                      archive: ImageArchive) -> tuple[dict[str, bytes], list[str]]:
    """The PNGs of a session's archived reference ``stimuli`` (id -> PNG, in order) and the ids of those the archive
    lost (missing, or no longer their sha256) that were rendered again from ``config.references.source``, exactly
    as stored (the same sha256); ``ReferencesLost`` names any that cannot be. Nothing is written."""
    pngs = {s.id: png for s in stimuli if (png := archive.read_intact(s.content_hash)) is not None}
    lost = [s for s in stimuli if s.id not in pngs]
    if not lost:
        return pngs, []
    source = config.references.source
    count = config.references.count if source == "skimage" else len(reference_files(source))
    try:  # a folder's files may have been added or renamed since: any of them may be the one
        rendered = {archive.address(png).content_hash: png
                    for png in map(encode_png, load_references(source, count, REFERENCE_SIZE))}
    except (OSError, ValueError):  # a file that is no image, or one removed meanwhile
        rendered = {}
    pngs |= {s.id: rendered[s.content_hash] for s in lost if s.content_hash in rendered}
    if missing := [s for s in lost if s.id not in pngs]:
        listed = ", ".join(f"{s.id} at {s.png_path}" for s in missing[:3]) + \
            (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        images = f"{len(missing)} reference image(s) ({listed})"
        if source == "skimage":
            raise ReferencesLost(archive.lost(f"{images}, which scikit-image renders differently now"))
        raise ReferencesLost(f"{archive.lost(f'{images}, which {source} no longer holds')}, or put the reference "
                             f"files back in {source}")
    return {s.id: pngs[s.id] for s in stimuli}, [s.id for s in lost]
