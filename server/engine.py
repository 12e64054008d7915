"""The experiment engine: the one place a generation is asked, rendered, persisted, sent, scored and told.

Threads live in the database. For each running thread the engine keeps a small runtime
(``server.thread_runtime``) that it can always rebuild from the database: the optimizer state after
every ``tell`` is committed with the scores it consumed, and a pending generation is re-asked from
that state, which returns the same codes. That is how a restarted server continues the same
evolution bit for bit, reusing every presentation already recorded. Reads are in
``server.store.queries``, writes in ``server.store.records``.

Each step of a thread (complete the answered generation, start the next, prepare the BATCH it
owes) is one transaction that commits before any image of it leaves; the BATCH is sent from the
PNGs just rendered, never read back from the archive, whose writes run in the background and
are awaited before the generation is told. Torch and database work runs on one worker thread
(``_compute``), never on the event loop, in jobs of bounded size (a large generation renders in
chunks) so no session's step freezes another's; PNG encoding and archive writes fan out to all cores.
A generation is only asked and rendered while its rig is connected.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker

import optimizers
from rig_client.protocol import PROTOCOL_MINOR, ErrorCode, Message, batch_message, encode_png
from server import RigInputError, ThreadNotReady, admission, live, monitor
from server.images import parallel_map, parallel_submit, to_pixels
from server.objectives import Objective
from server.session_config import ObjectiveConfig
from server.settings import Settings
from server.store import queries, records
from server.store.archive import ArchivedImage, ImageArchive
from server.store.models import Batch, EventLevel, Generation, GenerationStatus, Thread, ThreadStatus, utcnow
from server.thread_runtime import InFlight, ThreadRuntime, build_runtime, code_chunks, is_snapshot, owed_stimuli
from server.weights import GeneratorCache

log = logging.getLogger(__name__)

RECONCILE_S = 0.5  # how often the engine re-reads thread intent even without a wake-up
MAX_REQUEUES = 1  # extra rounds for stimuli a rig did not answer before they are scored NaN
FINISHED = object()  # what ``_next_step`` returns when the thread's runtime is done (finished, or paused and told)
RENDER = object()  # what ``_next_step`` returns when the codes it asked are to be rendered in chunks first


class Engine:
    """Runs every running thread's closed loop and answers the rigs (the transport's handler)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[DBSession], archive: ImageArchive):
        self.settings = settings
        self._db = sessions
        self._archive = archive
        self.transport = None  # set by the app before run(); server.transport.Transport
        self._threads: dict[int, ThreadRuntime] = {}
        # Shared with the REST API, which loads generators to check a session's weights.
        self.generators = GeneratorCache(settings.device, settings.weights_dir, settings.precision)
        self.rig_channels: dict[str, int] = {}  # channels each connected rig announced in HELLO
        self._rig_references: dict[str, set[str]] = {}  # reference ids each connected rig caches
        self.rig_minor: dict[str, int] = {}  # protocol minor version negotiated with each connected rig
        self._steps: set[asyncio.Task] = set()  # thread steps in progress (kept so none is collected)
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
        for step in list(self._steps):
            step.cancel()
        await asyncio.gather(*self._steps, return_exceptions=True)
        self._compute.shutdown(wait=True, cancel_futures=True)

    async def _offload(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._compute, fn, *args)

    def _step(self, runtime: ThreadRuntime) -> None:
        """Start the thread's next step (the one place that does); ``_advance`` decides what it is."""
        task = asyncio.get_running_loop().create_task(self._advance(runtime))
        self._steps.add(task)
        task.add_done_callback(self._steps.discard)

    # ------------------------------------------------------------------ transport handler
    async def on_hello(self, rig: str, header: dict) -> dict:
        """Remember the rig's channels, cached references and minor version; log its channel labels (the
        record of them). Its threads start (or block) at the next reconcile.

        The transport fills in heartbeat and size limits; WELCOME's ``minor`` is the lower of the rig's and ours.
        """
        self._rig_references[rig] = set(header.get("cached_references", []))
        self.rig_channels[rig] = header["channels"]
        minor = self.rig_minor[rig] = min(header.get("minor", 0), PROTOCOL_MINOR)
        await self._offload(self._log, None, None, "rig.connected", f"rig {rig!r} connected (protocol 1.{minor})",
                            {"rig": rig, "minor": minor, "channels": header.get("channels"),
                             "channel_labels": header.get("channel_labels"),
                             "cached_references": len(self._rig_references[rig])})
        self.wake()
        return {"server": "actmax", "minor": minor}

    def rig_channel_count(self, rig: str) -> int | None:
        """The channels ``rig`` announced, or None when it is not connected (the REST API checks objectives)."""
        return self.rig_channels.get(rig)

    async def on_connected(self, rig: str) -> None:
        """A rig (re)joined: resend its outstanding batches under their own ids (§6.5), start what waited."""
        for runtime in list(self._threads.values()):
            if runtime.rig == rig:
                if runtime.inflight is not None and runtime.inflight.batch_id:
                    runtime.inflight.resend = True
                self._step(runtime)

    async def on_disconnect(self, rig: str) -> None:
        self._rig_references.pop(rig, None)
        self.rig_channels.pop(rig, None)
        self.rig_minor.pop(rig, None)
        await self._offload(self._log, None, None, "rig.lost", f"rig {rig!r} went silent", None, EventLevel.WARNING)
        self.wake()

    async def on_results(self, rig: str, header: dict) -> dict:
        """Record presentations idempotently; a complete generation is told and the next one sent.

        Raises ``RigInputError`` for results the store cannot take (the transport replies ERROR).
        """
        received, received_at = time.monotonic(), utcnow()
        try:
            thread_id, answered, accepted, duplicates = await self._offload(self._record_results, rig, header,
                                                                            received_at)
        except RigInputError as exc:
            await self.on_refused(rig, header["batch_id"], exc)
            raise
        runtime = self._threads.get(thread_id)
        inflight = runtime.inflight if runtime is not None else None
        if inflight is not None and inflight.batch_id == header["batch_id"]:
            inflight.last_activity = received
            inflight.awaiting -= answered
            if header.get("done"):
                inflight.awaiting.clear()  # the rig will not answer the rest of this batch
            if not inflight.awaiting:
                self._step(runtime)
        live.hub.publish("batch.answered", f"{len(answered)} stimuli answered", thread_id=thread_id,
                         session_id=runtime.session_id if runtime is not None else None,
                         data={"batch_id": header["batch_id"], "accepted": accepted, "done": bool(header.get("done"))})
        return {"batch_id": header["batch_id"], "accepted": accepted, "duplicates": duplicates}

    def _record_results(self, rig: str, header: dict, received_at) -> tuple[int, set[str], int, int]:
        """Validate and store a RESULTS message arrived at ``received_at``.

        Returns (thread id, stimuli answered now, presentations stored now, duplicate count). New
        presentations for a batch whose generation is already scored are refused (``batch_closed``).
        """
        with self._db.begin() as db:
            batch = db.get(Batch, header["batch_id"])
            if batch is None:
                raise RigInputError(ErrorCode.UNKNOWN_BATCH, f"batch {header['batch_id']!r} was never sent")
            if batch.rig != rig:
                raise RigInputError(ErrorCode.UNKNOWN_BATCH,
                                    f"batch {batch.id!r} was sent to rig {batch.rig!r}, not {rig!r}")
            objective = Objective.from_config(queries.generation_objective(db, batch.generation_id))
            wanted = queries.batch_stimulus_ids(db, batch)
            for p in header["presentations"]:
                if p["stimulus_id"] not in wanted:
                    raise RigInputError(ErrorCode.BAD_FIELD,
                                        f"stimulus {p['stimulus_id']!r} is not part of batch {batch.id!r}")
                objective.check_rates(p["rates"])
            presentations = [records.PresentationRecord.from_message(p) for p in header["presentations"]]
            if db.get(Generation, batch.generation_id).status == GenerationStatus.COMPLETE:
                new = {p.presentation_id for p in presentations} - queries.stored_presentation_ids(
                    db, [p.presentation_id for p in presentations])
                if new:
                    raise RigInputError(ErrorCode.BATCH_CLOSED,
                                        f"batch {batch.id!r} is closed: its generation was scored when every stimulus "
                                        f"had been answered; {len(new)} new presentation(s) were not stored")
            accepted, duplicates = records.record_presentations(db, batch.id, presentations, received_at=received_at)
            if header.get("done"):
                records.close_batch(db, batch, received_at)
            stimulus_of = {p.presentation_id: p.stimulus_id for p in presentations}
            return batch.thread_id, {stimulus_of[pid] for pid in accepted}, len(accepted), len(duplicates)

    async def on_refused(self, rig: str, batch_id: str, exc: RigInputError) -> None:
        """A refused RESULTS (by the transport or here) is an event and its thread's ``last_error``."""
        await self._offload(self._refused, rig, batch_id, exc)

    def _refused(self, rig: str, batch_id: str, exc: RigInputError) -> None:
        with self._db.begin() as db:
            batch = db.get(Batch, batch_id)
            message = f"RESULTS from rig {rig!r} for batch {batch_id!r} refused ({exc.code}): {exc.message}"
            if batch is None or batch.rig != rig:
                self._log_in(db, None, None, "results.refused", message, level=EventLevel.WARNING)
            else:
                log.warning(message)
                records.set_thread_error(db, batch.thread_id, "results.refused", message, level=EventLevel.WARNING,
                                         data={"rig": rig, "batch_id": batch_id, "code": str(exc.code)})

    # ------------------------------------------------------------------ thread lifecycle
    async def _reconcile(self) -> None:
        """Match each live thread's status to its rig (running, waiting_for_rig, blocked); keep runtimes
        for running and waiting threads and for paused ones finishing their generation; advance the idle ones."""
        wanted: dict[int, ThreadStatus] = {}
        for thread in await self._offload(self._live_threads):
            status = thread.status
            if status != ThreadStatus.PAUSED:
                target, reason = self._rig_state(thread)
                if target != status and await self._offload(self._set_rig_state, thread.id, status, target, reason):
                    status = target
            wanted[thread.id] = status
        for thread_id, runtime in list(self._threads.items()):
            status = wanted.get(thread_id)
            runtime.paused = status == ThreadStatus.PAUSED
            if status not in (ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG) and \
                    not (runtime.paused and runtime.inflight is not None):
                del self._threads[thread_id]
        for thread_id, status in wanted.items():
            if thread_id in self._threads or status not in (ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG):
                continue
            try:
                runtime = await self._offload(self._start_thread, thread_id)
                if runtime is not None:
                    self._threads[thread_id] = runtime
            except ThreadNotReady:
                continue
            except Exception as exc:
                log.exception("thread %s cannot start", thread_id)
                await self._offload(self._fail_thread, thread_id, exc)
        for runtime in list(self._threads.values()):
            inflight = runtime.inflight
            if runtime.lock.locked():
                continue  # a step (perhaps a long render) is under way
            if inflight is None or inflight.batch_id is None or not inflight.awaiting or inflight.resend:
                self._step(runtime)

    def _live_threads(self) -> list[queries.LiveThread]:
        with self._db() as db:
            return queries.live_threads(db)

    def _rig_state(self, thread: queries.LiveThread) -> tuple[ThreadStatus, str | None]:
        """running, waiting_for_rig (its rig is not connected) or blocked (too few channels), with the reason."""
        channels = self.rig_channels.get(thread.rig)
        if channels is None or self.transport is None or not self.transport.connected(thread.rig):
            return ThreadStatus.WAITING_FOR_RIG, None
        problems = admission.check_objective(ObjectiveConfig.model_validate(thread.objective), thread.rig, channels)
        if problems:
            return ThreadStatus.BLOCKED, f"objective {problems[0].msg}; retarget the thread or connect a rig with more"
        return ThreadStatus.RUNNING, None

    def _set_rig_state(self, thread_id: int, old: ThreadStatus, new: ThreadStatus, reason: str | None) -> bool:
        """Move a thread between running, waiting_for_rig and blocked unless the user changed it meanwhile."""
        with self._db.begin() as db:
            changed = db.execute(
                update(Thread).where(Thread.id == thread_id, Thread.status == old).values(status=new)
            ).rowcount
            if not changed:
                return False
            if new == ThreadStatus.BLOCKED:
                records.set_thread_error(db, thread_id, "thread.blocked", reason, level=EventLevel.WARNING)
            else:
                thread = db.get(Thread, thread_id)
                rig = "its rig is connected" if new == ThreadStatus.RUNNING else "waiting for its rig to connect"
                self._log_in(db, None, thread_id, f"thread.{new.value}",
                             f"thread {thread_id} {thread.name!r} {new.value}: {rig}")
            return True

    def _start_thread(self, thread_id: int) -> ThreadRuntime | None:
        """The thread's runtime, rebuilt from the database; None if it ended since ``_reconcile`` read its
        status (a step that finished it ran in between on the compute worker)."""
        with self._db.begin() as db:
            if db.get(Thread, thread_id).status not in (ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG):
                return None
            runtime = build_runtime(db, thread_id, self.generators.get, self._archive, self.settings.render_chunk)
            thread = db.get(Thread, thread_id)
            self._log_in(db, runtime.session_id, thread_id, "thread.started",
                         f"thread {thread_id} {thread.name!r} started from generation {runtime.first_generation}")
            return runtime

    def _fail_thread(self, thread_id: int, exc: Exception) -> None:
        with self._db.begin() as db:
            log.error("thread %s failed: %s", thread_id, exc)
            records.set_thread_error(db, thread_id, "thread.failed", f"failed: {exc}", status=ThreadStatus.FAILED)

    # ------------------------------------------------------------------ one generation
    async def _advance(self, runtime: ThreadRuntime) -> None:
        """Move a thread one step (one transaction, see ``_next_step``), then send the round it prepared."""
        async with runtime.lock:
            if self._threads.get(runtime.id) is not runtime:
                return
            try:
                cached = self._rig_references.setdefault(runtime.rig, set())
                step = await self._offload(self._next_step, runtime, self._channels(runtime.rig), frozenset(cached))
                while step is RENDER:  # one compute job per chunk: other threads and rigs get the worker between
                    rendered = []
                    for chunk in code_chunks(runtime.next_codes, runtime.render_chunk):
                        rendered += await self._offload(self._render, runtime, chunk)
                    runtime.next_images = rendered
                    step = await self._offload(self._next_step, runtime, self._channels(runtime.rig),
                                               frozenset(cached))
                if step is FINISHED:
                    self._threads.pop(runtime.id, None)
                elif step is not None:
                    await self._send_round(runtime, step, cached)
            except Exception as exc:
                log.exception("thread %s failed", runtime.id)
                self._threads.pop(runtime.id, None)
                await self._offload(self._fail_thread, runtime.id, exc)

    def _channels(self, rig: str) -> int:
        """The channels ``rig`` announced, 0 when it is not connected."""
        connected = self.transport is not None and self.transport.connected(rig)
        return self.rig_channels.get(rig, 0) if connected else 0

    def _next_step(self, runtime: ThreadRuntime, channels: int, cached: frozenset[str]) -> Message | object | None:
        """Complete an answered generation, start the next, and prepare the BATCH still owed.

        One transaction: the scores, the optimizer state after ``tell``, the next generation's codes
        and stimuli and the batch row commit together, before any image of it leaves. A generation of
        more than ``render_chunk`` images is the exception: its codes are asked, the transaction
        commits what came before, and ``RENDER`` asks the caller to render them chunk by chunk before
        calling again (a crash in between re-asks the same codes from the committed state). Returns the
        BATCH to send, ``FINISHED`` (also for a paused thread once its generation is told), or None (a
        round is out, or the rig is not connected or lacks a channel the generation is scored on:
        ``channels`` is what the connected rig announced, 0 if none is). A round still out is sent again
        under its own ``batch_id`` (with only its unanswered stimuli, and no new batch row) when
        ``resend`` is set: the rig reconnected, or the runtime was rebuilt.
        """
        with self._db.begin() as db:
            while True:
                inflight = runtime.inflight
                if inflight is not None and inflight.resend and inflight.batch_id and inflight.awaiting:
                    if not channels:  # not connected
                        return None
                    inflight.resend = False
                    owed = [s for s in owed_stimuli(db, runtime, inflight) if s in inflight.awaiting]
                    return self._prepare_batch(db, runtime, cached, owed, batch_id=inflight.batch_id)
                owed = None
                if inflight is not None and inflight.batch_id is not None and not inflight.awaiting:
                    # The last round is answered (or given up on): another round, or tell.
                    responses = queries.scored_responses(db, inflight.generation_id, runtime.flagged)
                    owed = owed_stimuli(db, runtime, inflight, responses)
                    if not owed or inflight.rounds >= runtime.repeats + MAX_REQUEUES:
                        if self._complete_generation(db, runtime, responses, timed_out=bool(owed)):
                            return FINISHED
                        owed = None
                    else:
                        inflight.batch_id = None
                        inflight.rounds += 1
                if runtime.inflight is None and runtime.paused:
                    return FINISHED  # paused: told what it showed, asks nothing new
                if runtime.inflight is None:
                    if not channels:
                        return None  # nothing is rendered for an absent rig; on_connected starts it
                    runtime.inflight = self._start_generation(db, runtime)
                    if runtime.inflight is None:
                        return RENDER
                    owed = runtime.inflight.stimulus_ids + runtime.reference_ids  # nothing presented yet
                if runtime.inflight.batch_id is not None or channels < ObjectiveConfig.model_validate(
                        queries.generation_objective(db, runtime.inflight.generation_id)).n_channels:
                    return None
                if owed is None:
                    owed = owed_stimuli(db, runtime, runtime.inflight)
                message = self._prepare_batch(db, runtime, cached, owed)
                if message is not None:
                    return message
                runtime.inflight.batch_id, runtime.inflight.awaiting = "", set()  # nothing owed: complete it

    def _start_generation(self, db: DBSession, runtime: ThreadRuntime) -> InFlight | None:
        """Ask, render, archive and add a new generation (status pending); its PNGs stay in memory to send.

        None when the codes asked are more than one chunk and not rendered yet (``runtime.next_codes``).
        """
        if runtime.next_codes is None:
            runtime.next_codes = runtime.optimizer.ask()
        codes = runtime.next_codes
        if runtime.next_images is None:
            if len(codes) > runtime.render_chunk:
                return None
            runtime.next_images = self._render(runtime, codes)
        encoded, runtime.next_codes, runtime.next_images = runtime.next_images, None, None
        pngs, images = [png for png, _ in encoded], [image for _, image in encoded]
        generation, ids = records.add_generation(db, runtime.session_id, runtime.id, runtime.optimizer.generation,
                                                 codes, images, runtime.generator.provenance)
        # Read after the insert took the write lock, so a concurrent retarget is wholly before or after.
        generation.objective_json = db.get(Thread, runtime.id).objective_json
        archived = parallel_submit(self._archive.save_all, pngs)  # off the hot path; awaited before the tell
        return InFlight(generation.id, generation.number, codes, ids, dict(zip(ids, pngs)), archived, rounds=1)

    def _render(self, runtime: ThreadRuntime, codes: np.ndarray) -> list[tuple[bytes, ArchivedImage]]:
        """The PNG and archive address (written later) of each code's image."""
        return parallel_map(self._encode, to_pixels(runtime.generator.generate(codes)))

    def _encode(self, pixels: np.ndarray) -> tuple[bytes, ArchivedImage]:
        """One image's PNG and its archive address; runs on the image pool, all cores."""
        png = encode_png(pixels)
        return png, self._archive.address(png)

    def _complete_generation(self, db: DBSession, runtime: ThreadRuntime,
                             responses: dict[str, list[queries.Response]], timed_out: bool) -> bool:
        """Score ``responses`` (the generation's scored presentations), tell, and record the optimizer state with
        the scores it used. True when the thread is done."""
        inflight = runtime.inflight
        if inflight.archived is not None:
            inflight.archived.result()  # the images of a told generation must survive a power loss
        shown = {s: [(r.rates, r.baseline) for r in shown_at] for s, shown_at in responses.items()}
        objective = Objective.from_config(queries.generation_objective(db, inflight.generation_id))
        scored = objective.score_generation(shown, frozenset(runtime.reference_ids))
        scores = np.array([scored.get(s, np.nan) for s in inflight.stimulus_ids])
        reference = [scored.get(s, np.nan) for s in runtime.reference_ids]
        rates = {s: [r.rates for r in shown_at] for s, shown_at in responses.items()}
        runtime.optimizer.tell(inflight.codes, scores)
        state = runtime.optimizer.state_dict()
        generation = records.complete_generation(
            db, inflight.generation_id, scores, reference,
            optimizers.dumps_state(state) if is_snapshot(inflight.number) else None,
            optimizers.state_summary(state), timed_out=timed_out)
        monitor.generation_completed(db, runtime.session_id, runtime.id, generation.number, scores, reference, rates)
        if timed_out:
            self._log_in(db, runtime.session_id, runtime.id, "generation.timed_out",
                         f"thread {runtime.id} generation {inflight.number}: "
                         f"{inflight.codes.shape[0] - generation.n_scored} stimuli "
                         f"unscored after {inflight.rounds} rounds; the optimizer saw NaN for them",
                         level=EventLevel.WARNING)
        runtime.inflight = None
        finished = generation.number + 1 >= runtime.n_generations
        if finished:
            thread = db.get(Thread, runtime.id)
            thread.status = ThreadStatus.FINISHED
            self._log_in(db, runtime.session_id, runtime.id, "thread.finished",
                         f"thread {runtime.id} {thread.name!r} finished after {generation.number + 1} generations")
            records.end_session_if_done(db, runtime.session_id)
        return finished

    # ------------------------------------------------------------------ sending
    def _prepare_batch(self, db: DBSession, runtime: ThreadRuntime, cached: frozenset[str],
                       owed: list[str], batch_id: str | None = None) -> Message | None:
        """A BATCH of the ``owed`` stimuli in a seeded random order, references interleaved (cached ones by id).

        A new batch (no ``batch_id``) gets its row here; ``_forget_batch`` removes it if the send fails.
        """
        inflight = runtime.inflight
        owed = list(dict.fromkeys(owed))
        if not owed:
            return None
        order = np.random.default_rng([runtime.seed, inflight.number, inflight.rounds]).permutation(len(owed))
        entries = []
        for i in order:
            stimulus_id = owed[i]
            if stimulus_id in runtime.reference_pngs:
                entries.append((stimulus_id, "reference",
                                None if stimulus_id in cached else runtime.reference_pngs[stimulus_id]))
            else:
                entries.append((stimulus_id, "synthetic", inflight.pngs[stimulus_id]))
        if batch_id is None:
            batch_id = records.add_batch(db, uuid.uuid4().hex, runtime.session_id, runtime.id, inflight.generation_id,
                                         runtime.rig).id
        return batch_message(batch_id=batch_id, session_id=str(runtime.session_id), thread_id=str(runtime.id),
                             generation=inflight.number, response_window_ms=runtime.window_ms, stimuli=entries)

    async def _send_round(self, runtime: ThreadRuntime, message: Message, cached: set[str]) -> None:
        """Send a prepared BATCH (new, or the outstanding one again); the rig caches the references it carries.

        A new batch that could not be sent loses its row: batch rows are sends that happened.
        """
        inflight, batch_id = runtime.inflight, message.header["batch_id"]
        resend = batch_id == inflight.batch_id
        if not await self.transport.send(runtime.rig, message):
            if not resend:
                await self._offload(self._forget_batch, batch_id)
            return  # the rig left meanwhile; on_connected sends the round when it is back
        stimuli = message.header["stimuli"]
        cached.update(s["stimulus_id"] for s in stimuli if s["kind"] == "reference")
        if not resend:
            inflight.batch_id, inflight.awaiting = batch_id, {s["stimulus_id"] for s in stimuli}
        inflight.last_activity = time.monotonic()
        live.hub.publish("batch.sent", f"generation {inflight.number}: {len(stimuli)} stimuli "
                         f"{'resent' if resend else 'sent'}", session_id=runtime.session_id, thread_id=runtime.id,
                         data={"batch_id": batch_id, "generation": inflight.number, "resent": resend})

    def _forget_batch(self, batch_id: str) -> None:
        with self._db.begin() as db:
            db.delete(db.get(Batch, batch_id))

    async def _check_timeouts(self) -> None:
        """A round unanswered for ``batch_timeout_s`` is given up on: re-queue its stimuli or score NaN."""
        now = time.monotonic()
        for runtime in list(self._threads.values()):
            inflight = runtime.inflight
            if inflight is None or not inflight.batch_id or not inflight.awaiting:
                continue
            if now - inflight.last_activity >= self.settings.batch_timeout_s:
                await self._offload(self._log, runtime.session_id, runtime.id, "round.timed_out",
                                    f"thread {runtime.id} generation {inflight.number}: {len(inflight.awaiting)} "
                                    "stimuli unanswered "
                                    f"after {self.settings.batch_timeout_s:g} s", None, EventLevel.WARNING)
                inflight.awaiting.clear()
                self._step(runtime)

    # ------------------------------------------------------------------ event log
    def _log(self, session_id, thread_id, kind, message, data=None, level=EventLevel.INFO) -> None:
        with self._db.begin() as db:
            self._log_in(db, session_id, thread_id, kind, message, data, level)

    @staticmethod
    def _log_in(db, session_id, thread_id, kind, message, data=None, level=EventLevel.INFO) -> None:
        """An event row in the session record, and the same line in the server log."""
        log.log(logging.WARNING if level in (EventLevel.WARNING, EventLevel.ERROR) else logging.INFO, message)
        records.log_event(db, kind, message, level=level, session_id=session_id, thread_id=thread_id, data=data)
