"""The experiment engine: the one place a generation is asked, generated, persisted, sent, scored and told.

Threads live in the database. For each running thread the engine keeps a small runtime (optimizer,
generator, the generation in flight) that it can always rebuild from the database: the optimizer state
after every ``tell`` is committed with the scores it consumed, and a pending generation is re-asked
from that state, which returns the same codes. That is how a restarted server continues the same
evolution bit for bit, reusing every presentation already recorded.

Torch and database work runs on one worker thread (``_compute``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker

import generators
import optimizers
from rig_client.protocol import Message, ProtocolError, batch_message
from server import ServerError, live, monitor
from rig_client.protocol import encode_png as array_to_png
from server.images import encode_images, load_references
from server.manifold import ManifoldNotReady, design_for
from server.objectives import Objective
from server.settings import Settings
from server.store.archive import ImageArchive
from server.store.records import PresentationRecord, log_event, record_presentations
from server.store.models import (
    Batch,
    BatchStatus,
    EventLevel,
    Generation,
    GenerationStatus,
    Presentation,
    Session,
    SessionStatus,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
    decode_codes,
    encode_codes,
    utcnow,
)

log = logging.getLogger(__name__)

RECONCILE_S = 0.5  # how often the engine re-reads thread intent even without a wake-up
MAX_REQUEUES = 1  # extra rounds for stimuli a rig did not answer before they are scored NaN
REFERENCE_SIZE = 128


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
    batch_id: str | None = None  # None: the current round still has to be sent
    awaiting: set[str] = field(default_factory=set)  # stimuli of the last batch not answered yet
    rounds: int = 0
    last_activity: float = field(default_factory=time.monotonic)


@dataclass
class ThreadRuntime:
    """What the engine holds in memory for one running thread (rebuildable from the database)."""

    id: int
    session_id: int
    rig: str
    seed: int
    window_ms: tuple[float, float]
    repeats: int
    n_generations: int
    objective: Objective
    generator: Any
    optimizer: Any
    reference_ids: list[str]
    inflight: InFlight | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Engine:
    """Runs every running thread's closed loop and answers the rigs (the transport's handler)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[DBSession], archive: ImageArchive):
        self.settings = settings
        self._db = sessions
        self._archive = archive
        self.transport = None  # set by the app before run(); server.transport.Transport
        self._threads: dict[int, ThreadRuntime] = {}
        self._generators: dict[str, Any] = {}
        self._rig_references: dict[str, set[str]] = {}  # reference ids each connected rig caches
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actmax-compute")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def wake(self) -> None:
        """Ask the engine to re-read thread intent now (thread-safe; the REST API calls it)."""
        if self._loop is not None and self._wake_event is not None:
            self._loop.call_soon_threadsafe(self._wake_event.set)

    async def run(self) -> None:
        """Reconcile running threads with the database and time out stalled batches until closed."""
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        while not self._closed:
            try:
                await self._reconcile()
                await self._check_timeouts()
            except Exception:  # the loop must outlive any one failure; the event log says what
                log.exception("engine reconcile failed")
            try:
                await asyncio.wait_for(self._wake_event.wait(), RECONCILE_S)
            except TimeoutError:
                pass
            self._wake_event.clear()

    async def close(self) -> None:
        self._closed = True
        self.wake()
        self._compute.shutdown(wait=True, cancel_futures=True)

    async def _offload(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._compute, fn, *args)

    # ------------------------------------------------------------------ transport handler
    async def on_hello(self, rig: str, header: dict) -> dict:
        """Remember which references the rig caches; the transport fills in heartbeat and size limits."""
        self._rig_references[rig] = set(header.get("cached_references", []))
        await self._offload(self._log, None, None, "rig_hello", f"rig {rig!r} connected",
                            {"channels": header.get("channels"), "cached_references": len(self._rig_references[rig])})
        return {"server": "actmax"}

    async def on_connected(self, rig: str) -> None:
        """A rig (re)joined: send it whatever its threads are waiting on."""
        for runtime in list(self._threads.values()):
            if runtime.rig == rig and runtime.inflight is not None:
                runtime.inflight.batch_id = None  # resend the round in flight
                asyncio.get_running_loop().create_task(self._advance(runtime))

    async def on_disconnect(self, rig: str) -> None:
        self._rig_references.pop(rig, None)
        await self._offload(self._log, None, None, "rig_lost", f"rig {rig!r} went silent", None, EventLevel.WARNING)

    async def on_results(self, rig: str, header: dict) -> dict:
        """Record presentations idempotently; a complete generation is told and the next one sent."""
        received = time.monotonic()
        thread_id, answered, duplicates = await self._offload(self._record_results, rig, header)
        runtime = self._threads.get(thread_id)
        inflight = runtime.inflight if runtime is not None else None
        if inflight is not None and inflight.batch_id == header["batch_id"]:
            inflight.last_activity = received
            inflight.awaiting -= answered
            if header.get("done"):
                inflight.awaiting.clear()  # the rig will not answer the rest of this batch
            if not inflight.awaiting:
                asyncio.get_running_loop().create_task(self._advance(runtime))
        live.hub.publish("batch_answered", f"{len(answered)} stimuli answered", thread_id=thread_id,
                         session_id=runtime.session_id if runtime is not None else None,
                         data={"batch_id": header["batch_id"], "accepted": len(answered), "done": bool(header.get("done"))})
        return {"batch_id": header["batch_id"], "accepted": len(answered), "duplicates": duplicates}

    def _record_results(self, rig: str, header: dict) -> tuple[int, set[str], int]:
        """Validate and store a RESULTS message; (thread id, stimuli answered now, duplicate count)."""
        with self._db.begin() as db:
            batch = db.get(Batch, header["batch_id"])
            if batch is None:
                raise ProtocolError("unknown_batch", f"batch {header['batch_id']!r} was never sent")
            if batch.rig != rig:
                raise ProtocolError("unknown_batch", f"batch {batch.id!r} was sent to rig {batch.rig!r}, not {rig!r}")
            thread = db.get(Thread, batch.thread_id)
            objective = Objective.from_config(thread.objective_json)
            wanted = {s.id for s in self._generation_stimuli(db, batch.generation_id, batch.session_id)}
            for p in header["presentations"]:
                if p["stimulus_id"] not in wanted:
                    raise ProtocolError("bad_field", f"stimulus {p['stimulus_id']!r} is not part of batch {batch.id!r}")
                objective.check_rates(p["rates"])
            records = [
                PresentationRecord(p["presentation_id"], p["stimulus_id"], float(p["onset"]), list(p["rates"]),
                                   float(p["window_ms"][0]), float(p["window_ms"][1]))
                for p in header["presentations"]
            ]
            accepted, duplicates = record_presentations(db, batch.id, records)
            stimulus_of = {r.presentation_id: r.stimulus_id for r in records}
            return batch.thread_id, {stimulus_of[pid] for pid in accepted}, len(duplicates)

    # ------------------------------------------------------------------ thread lifecycle
    async def _reconcile(self) -> None:
        """Start runtimes for running threads, drop those paused or stopped, advance the idle ones."""
        running = set(await self._offload(self._running_thread_ids))
        for thread_id in list(self._threads):
            if thread_id not in running:
                del self._threads[thread_id]
        for thread_id in running - set(self._threads):
            try:
                self._threads[thread_id] = await self._offload(self._build_runtime, thread_id)
            except ManifoldNotReady:
                continue
            except Exception as exc:
                log.exception("thread %s cannot start", thread_id)
                await self._offload(self._fail_thread, thread_id, exc)
                continue
        for runtime in list(self._threads.values()):
            inflight = runtime.inflight
            if inflight is None or inflight.batch_id is None or not inflight.awaiting:
                asyncio.get_running_loop().create_task(self._advance(runtime))

    def _running_thread_ids(self) -> list[int]:
        with self._db() as db:
            query = (
                select(Thread.id)
                .join(Session, Session.id == Thread.session_id)
                .where(Thread.status == ThreadStatus.RUNNING, Session.status == SessionStatus.ACTIVE)
            )
            return list(db.scalars(query))

    def _fail_thread(self, thread_id: int, exc: Exception) -> None:
        with self._db.begin() as db:
            db.get(Thread, thread_id).status = ThreadStatus.STOPPED
            self._log_in(db, None, thread_id, "thread_failed", f"thread {thread_id} stopped: {exc}",
                         level=EventLevel.ERROR)

    def _generator(self, name: str):
        if name not in self._generators:
            self._generators[name] = generators.load(name, device=self.settings.device)
        return self._generators[name]

    def _build_runtime(self, thread_id: int) -> ThreadRuntime:
        """Rebuild a thread from the database: optimizer state after the last tell, the pending generation."""
        with self._db.begin() as db:
            thread = db.get(Thread, thread_id)
            session = db.get(Session, thread.session_id)
            generator = self._generator(thread.generator)
            thread.generator_version = generator.version
            if thread.kind == "manifold":
                optimizer = design_for(db, thread)  # ManifoldNotReady until its source evolution ends
            else:
                optimizer = optimizers.create(
                    thread.optimizer, generator.latent_dim, seed=thread.seed,
                    **optimizer_params(thread.optimizer, generator, thread.optimizer_params_json),
                )
            last = db.scalars(
                select(Generation).where(Generation.thread_id == thread_id, Generation.status == GenerationStatus.COMPLETE)
                .order_by(Generation.number.desc()).limit(1)
            ).first()
            if last is not None:
                optimizer.load_state_dict(optimizers.loads_state(last.optimizer_state))
            references = self._ensure_references(db, session)
            window = session.config_json.get("response_window_ms", [50, 200])
            runtime = ThreadRuntime(
                id=thread.id, session_id=session.id, rig=session.rig, seed=thread.seed,
                window_ms=(float(window[0]), float(window[1])), repeats=thread.repeats,
                n_generations=thread.n_generations, objective=Objective.from_config(thread.objective_json),
                generator=generator, optimizer=optimizer, reference_ids=references,
            )
            pending = db.scalars(
                select(Generation).where(Generation.thread_id == thread_id, Generation.status == GenerationStatus.PENDING)
            ).first()
            if pending is not None:
                runtime.inflight = self._resume_pending(db, runtime, pending)
            self._log_in(db, session.id, thread.id, "thread_started",
                         f"thread {thread.name!r} running from generation {0 if last is None else last.number + 1}")
            return runtime

    def _resume_pending(self, db: DBSession, runtime: ThreadRuntime, pending: Generation) -> InFlight:
        """Re-ask the restored optimizer; it must return exactly the codes stored before the crash."""
        codes = runtime.optimizer.ask()
        stored = decode_codes(pending.codes, pending.n_stimuli)
        if codes.shape != stored.shape or not np.array_equal(codes, stored):
            raise ServerError(
                f"generation {pending.number} of thread {runtime.id}: the restored optimizer asked different "
                "codes than were stored; the optimizer state in the database is inconsistent"
            )
        ids = [s.id for s in pending.stimuli if s.kind == StimulusKind.SYNTHETIC]
        return InFlight(pending.id, pending.number, stored, ids)

    def _ensure_references(self, db: DBSession, session: Session) -> list[str]:
        """The session's reference stimuli, archived on first use."""
        existing = db.scalars(
            select(Stimulus.id).where(Stimulus.session_id == session.id, Stimulus.kind == StimulusKind.REFERENCE)
            .order_by(Stimulus.created_at, Stimulus.id)
        ).all()
        if existing:
            return list(existing)
        spec = session.config_json.get("references", {"source": "skimage", "count": 10})
        ids = []
        for pixels in load_references(spec.get("source", "skimage"), spec.get("count", 10), REFERENCE_SIZE):
            image = self._archive.save(array_to_png(pixels))
            stimulus_id = f"ref-{session.id}-{image.content_hash[:12]}"
            if stimulus_id not in ids:
                db.add(Stimulus(id=stimulus_id, session_id=session.id, kind=StimulusKind.REFERENCE,
                                content_hash=image.content_hash, png_path=image.png_path))
                ids.append(stimulus_id)
        db.flush()
        return ids

    # ------------------------------------------------------------------ one generation
    async def _advance(self, runtime: ThreadRuntime) -> None:
        """Move a thread one step: complete a finished generation, start the next, send what is missing."""
        async with runtime.lock:
            if self._threads.get(runtime.id) is not runtime:
                return
            try:
                inflight = runtime.inflight
                if inflight is not None and inflight.batch_id is not None and not inflight.awaiting:
                    # The last round is answered (or given up on): another round, or tell.
                    owed_rounds = inflight.rounds < runtime.repeats + MAX_REQUEUES
                    if await self._offload(self._is_complete, runtime) or not owed_rounds:
                        if await self._offload(self._complete_generation, runtime, not owed_rounds):
                            self._threads.pop(runtime.id, None)
                            return
                    else:
                        inflight.batch_id = None
                        inflight.rounds += 1
                if runtime.inflight is None:
                    runtime.inflight = await self._offload(self._start_generation, runtime)
                    runtime.inflight.rounds = 1
                if runtime.inflight.batch_id is None:
                    await self._send_round(runtime)
            except Exception as exc:
                log.exception("thread %s failed", runtime.id)
                self._threads.pop(runtime.id, None)
                await self._offload(self._fail_thread, runtime.id, exc)

    def _start_generation(self, runtime: ThreadRuntime) -> InFlight:
        """Ask, render, archive and persist a new generation (status pending)."""
        codes = runtime.optimizer.ask()
        pngs = encode_images(runtime.generator.generate(codes))
        provenance = runtime.generator.provenance
        with self._db.begin() as db:
            generation = Generation(thread_id=runtime.id, number=runtime.optimizer.generation,
                                    codes=encode_codes(codes), n_stimuli=len(codes))
            db.add(generation)
            db.flush()
            ids = []
            for index, (code, png) in enumerate(zip(codes, pngs)):
                image = self._archive.save(png)
                stimulus = Stimulus(
                    id=uuid.uuid4().hex, session_id=runtime.session_id, thread_id=runtime.id,
                    generation_id=generation.id, kind=StimulusKind.SYNTHETIC, index=index,
                    code=encode_codes(code), content_hash=image.content_hash, png_path=image.png_path,
                    generator=provenance["name"], generator_version=provenance["version"],
                    weights_sha256=provenance.get("weights_sha256"),
                )
                db.add(stimulus)
                ids.append(stimulus.id)
            return InFlight(generation.id, generation.number, codes, ids)

    def _presentation_rates(self, db: DBSession, generation_id: int) -> dict[str, list[list[float]]]:
        """Rates of every presentation made for this generation's batches, by stimulus."""
        rows = db.execute(
            select(Presentation.stimulus_id, Presentation.rates_json)
            .join(Batch, Batch.id == Presentation.batch_id)
            .where(Batch.generation_id == generation_id)
            .order_by(Presentation.id)
        )
        rates: dict[str, list[list[float]]] = {}
        for stimulus_id, values in rows:
            rates.setdefault(stimulus_id, []).append([np.nan if v is None else v for v in values])
        return rates

    def _missing(self, db: DBSession, runtime: ThreadRuntime) -> list[str]:
        """Stimulus ids (with repeats) still owed for the in-flight generation."""
        counts = dict(
            db.execute(
                select(Presentation.stimulus_id, func.count())
                .join(Batch, Batch.id == Presentation.batch_id)
                .where(Batch.generation_id == runtime.inflight.generation_id)
                .group_by(Presentation.stimulus_id)
            ).all()
        )
        owed = []
        for stimulus_id in runtime.inflight.stimulus_ids + runtime.reference_ids:
            owed += [stimulus_id] * max(0, runtime.repeats - counts.get(stimulus_id, 0))
        return owed

    def _is_complete(self, runtime: ThreadRuntime) -> bool:
        with self._db() as db:
            return not self._missing(db, runtime)

    def _complete_generation(self, runtime: ThreadRuntime, timed_out: bool) -> bool:
        """Score, tell, and commit the optimizer state with the scores it used. True when the thread is done."""
        inflight = runtime.inflight
        with self._db.begin() as db:
            rates = self._presentation_rates(db, inflight.generation_id)
            scores = np.array([self._mean_score(runtime, rates.get(s)) for s in inflight.stimulus_ids])
            reference = [self._mean_score(runtime, rates.get(s)) for s in runtime.reference_ids]
            runtime.optimizer.tell(inflight.codes, scores)
            generation = db.get(Generation, inflight.generation_id)
            scored = scores[np.isfinite(scores)]
            generation.status = GenerationStatus.COMPLETE
            generation.optimizer_state = optimizers.dumps_state(runtime.optimizer.state_dict())
            generation.scores_json = scores.tolist()
            generation.n_scored = int(scored.size)
            generation.mean_score = float(scored.mean()) if scored.size else None
            generation.max_score = float(scored.max()) if scored.size else None
            finite_refs = [r for r in reference if np.isfinite(r)]
            generation.reference_mean = float(np.mean(finite_refs)) if finite_refs else None
            generation.completed_at = utcnow()
            monitor.generation_completed(db, runtime.session_id, runtime.id, generation.number, scores, reference, rates)
            for batch in db.scalars(select(Batch).where(Batch.generation_id == inflight.generation_id)):
                if batch.status == BatchStatus.SENT:
                    batch.status = BatchStatus.TIMED_OUT if timed_out else BatchStatus.COMPLETE
                    batch.completed_at = generation.completed_at
            if timed_out:
                self._log_in(db, runtime.session_id, runtime.id, "generation_timed_out",
                             f"generation {inflight.number}: {inflight.codes.shape[0] - scored.size} stimuli "
                             f"unscored after {inflight.rounds} rounds; the optimizer saw NaN for them",
                             level=EventLevel.WARNING)
            finished = generation.number + 1 >= runtime.n_generations
            if finished:
                db.get(Thread, runtime.id).status = ThreadStatus.FINISHED
                self._log_in(db, runtime.session_id, runtime.id, "thread_finished",
                             f"finished after {generation.number + 1} generations")
        runtime.inflight = None
        return finished

    def _mean_score(self, runtime: ThreadRuntime, rates: list[list[float]] | None) -> float:
        if not rates:
            return float("nan")
        scores = runtime.objective(np.array(rates))
        finite = scores[np.isfinite(scores)]
        return float(finite.mean()) if finite.size else float("nan")

    # ------------------------------------------------------------------ sending
    async def _send_round(self, runtime: ThreadRuntime) -> None:
        """Send every stimulus the in-flight generation still owes (cached references by id only)."""
        if self.transport is None or not self.transport.connected(runtime.rig):
            return
        cached = self._rig_references.setdefault(runtime.rig, set())
        message = await self._offload(self._prepare_batch, runtime, frozenset(cached))
        if message is None:  # nothing owed: the generation is complete
            runtime.inflight.batch_id, runtime.inflight.awaiting = "", set()
            asyncio.get_running_loop().create_task(self._advance(runtime))
            return
        if not await self.transport.send(runtime.rig, message):
            return  # the rig left meanwhile; on_connected sends the round when it is back
        stimuli = message.header["stimuli"]
        cached.update(s["stimulus_id"] for s in stimuli if s["kind"] == "reference")
        runtime.inflight.batch_id = message.header["batch_id"]
        runtime.inflight.awaiting = {s["stimulus_id"] for s in stimuli}
        runtime.inflight.last_activity = time.monotonic()
        live.hub.publish("batch_sent", f"generation {runtime.inflight.number}: {len(stimuli)} stimuli sent",
                         session_id=runtime.session_id, thread_id=runtime.id,
                         data={"batch_id": runtime.inflight.batch_id, "generation": runtime.inflight.number})

    def _prepare_batch(self, runtime: ThreadRuntime, cached: frozenset[str]) -> Message | None:
        """A BATCH of the owed stimuli in a seeded random order, references interleaved."""
        inflight = runtime.inflight
        with self._db.begin() as db:
            owed = list(dict.fromkeys(self._missing(db, runtime)))
            if not owed:
                return None
            order = np.random.default_rng([runtime.seed, inflight.number, inflight.rounds]).permutation(len(owed))
            references = set(runtime.reference_ids)
            entries = []
            for i in order:
                stimulus_id = owed[i]
                kind = "reference" if stimulus_id in references else "synthetic"
                png = None if kind == "reference" and stimulus_id in cached else \
                    self._archive.read(db.get(Stimulus, stimulus_id).content_hash)
                entries.append((stimulus_id, kind, png))
            batch = Batch(id=uuid.uuid4().hex, session_id=runtime.session_id, thread_id=runtime.id,
                          generation_id=inflight.generation_id, rig=runtime.rig)
            db.add(batch)
        return batch_message(batch_id=batch.id, session_id=str(runtime.session_id), thread_id=str(runtime.id),
                             generation=inflight.number, response_window_ms=runtime.window_ms, stimuli=entries)

    async def _check_timeouts(self) -> None:
        """A round unanswered for ``batch_timeout_s`` is given up on: re-queue its stimuli or score NaN."""
        now = time.monotonic()
        for runtime in list(self._threads.values()):
            inflight = runtime.inflight
            if inflight is None or not inflight.batch_id or not inflight.awaiting:
                continue
            if now - inflight.last_activity >= self.settings.batch_timeout_s:
                await self._offload(self._log, runtime.session_id, runtime.id, "round_timed_out",
                                    f"generation {inflight.number}: {len(inflight.awaiting)} stimuli unanswered "
                                    f"after {self.settings.batch_timeout_s:g} s", None, EventLevel.WARNING)
                inflight.awaiting.clear()
                asyncio.get_running_loop().create_task(self._advance(runtime))

    # ------------------------------------------------------------------ event log
    def _log(self, session_id, thread_id, kind, message, data=None, level=EventLevel.INFO) -> None:
        with self._db.begin() as db:
            self._log_in(db, session_id, thread_id, kind, message, data, level)

    @staticmethod
    def _log_in(db, session_id, thread_id, kind, message, data=None, level=EventLevel.INFO) -> None:
        """An event row in the session record, and the same line in the server log."""
        log.log(logging.WARNING if level in (EventLevel.WARNING, EventLevel.ERROR) else logging.INFO, message)
        log_event(db, kind, message, level=level, session_id=session_id, thread_id=thread_id, data=data)

    @staticmethod
    def _generation_stimuli(db: DBSession, generation_id: int, session_id: int) -> list[Stimulus]:
        return list(db.scalars(
            select(Stimulus).where(
                (Stimulus.generation_id == generation_id)
                | ((Stimulus.session_id == session_id) & (Stimulus.kind == StimulusKind.REFERENCE))
            )
        ))


def optimizer_params(name: str, generator, user: dict) -> dict:
    """The generator's latent-geometry defaults the optimizer accepts, overridden by the thread's own."""
    accepted = set(optimizers.hyperparameter_names(name))
    defaults = {k: v for k, v in generator.default_init().items() if k in accepted and v is not None}
    return {**defaults, **user}
