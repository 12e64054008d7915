"""A thread's steps: the database work the engine runs on its compute worker, one transaction each.

``record_results`` stores a rig's RESULTS (and warns, once per session, when their onsets are far off the
server's clock). ``next_step`` completes the generation whose last round
is answered (score, ``tell``, the optimizer state), starts the next (``ask``, render, its stimuli)
and prepares the BATCH still owed. ``answer`` does both for the RESULTS that answers a round, in one
transaction. Each function works in the transaction it is given
(``server.engine.Engine`` opens it and sends what comes back); reads are in
``server.store.queries``, writes in ``server.store.records``.
"""

from __future__ import annotations

import logging
import statistics
from typing import NamedTuple

import numpy as np

import optimizers
from rig_client.protocol import ErrorCode, Message, batch_message, encode_png
from server import RigInputError, monitor
from server.images import parallel_map, to_pixels
from server.objectives import Objective
from server.store import queries, records
from server.store.archive import ArchivedImage, ImageArchive
from server.store.db import Transaction
from server.store.models import EventLevel, GenerationStatus
from server.thread_runtime import InFlight, Snapshot, ThreadRuntime, is_snapshot, owed_stimuli, rendered

log = logging.getLogger(__name__)

MAX_REQUEUES = 1  # extra rounds for stimuli a rig did not answer before they are scored NaN
FINISHED = object()  # what ``next_step`` returns when the thread's runtime is done (finished, or paused and told)
RENDER = object()  # what ``next_step`` returns when the codes it asked are to be rendered in chunks first
CLOCK_LIMIT_S = 15 * 60  # a RESULTS whose median onset is further from its arrival warns: `rig.clock_offset`
MAX_ZONE_OFFSET_H = 14  # the largest UTC offset of a time zone (UTC+14)


class Recorded(NamedTuple):
    """What storing one RESULTS did."""

    thread_id: int
    generation_id: int
    answered: set[str]  # stimuli answered now
    accepted: int  # presentations stored now
    duplicates: int  # presentations stored before
    late: bool = False  # stored after the batch's generation was scored: not scored, and the batch is closed


def record_results(db: Transaction, rig: str, header: dict, received_at) -> Recorded:
    """Validate and store a RESULTS message arrived at ``received_at``.

    New presentations for a batch whose generation is already scored are stored, not scored (``late``): the
    engine then answers ``batch_closed``, so that the rig drops the batch, and nothing the animal did is lost.
    """
    batch = queries.batch(db, header["batch_id"])
    if batch is None:
        raise RigInputError(ErrorCode.UNKNOWN_BATCH, f"batch {header['batch_id']!r} was never sent")
    if batch.rig != rig:
        raise RigInputError(ErrorCode.UNKNOWN_BATCH,
                            f"batch {batch.id!r} was sent to rig {batch.rig!r}, not {rig!r}")
    objective = Objective.from_config(batch.objective)
    wanted = queries.batch_stimulus_ids(db, batch)
    for p in header["presentations"]:
        if p["stimulus_id"] not in wanted:
            raise RigInputError(ErrorCode.BAD_FIELD,
                                f"stimulus {p['stimulus_id']!r} is not part of batch {batch.id!r}")
        objective.check_rates(p["rates"])
    presentations = [records.PresentationRecord.from_message(p) for p in header["presentations"]]
    accepted, duplicates = records.record_presentations(db, batch, presentations, received_at=received_at)
    stored = set(accepted)
    _check_clock(db, rig, batch, [p.onset for p in presentations if p.presentation_id in stored], received_at)
    if header.get("done"):
        records.close_batch(db, batch.id, received_at)
    stimulus_of = {p.presentation_id: p.stimulus_id for p in presentations}
    return Recorded(batch.thread_id, batch.generation_id, {stimulus_of[pid] for pid in accepted}, len(accepted),
                    len(duplicates), late=batch.generation_status == GenerationStatus.COMPLETE and bool(accepted))


def _check_clock(db: Transaction, rig: str, batch: queries.BatchRow, onsets: list[float], received_at) -> None:
    """Warn, once per session (``rig.clock_offset``), when the median of the onsets just stored is more than
    ``CLOCK_LIMIT_S`` from when their RESULTS arrived: a rig writing local time as UTC is hours off. What is
    stored does not change."""
    if not onsets:
        return
    offset = statistics.median(onsets) - received_at.timestamp()
    if abs(offset) <= CLOCK_LIMIT_S:
        return
    hours = abs(offset) / 3600
    cause = ("is the rig writing local time instead of UTC, or is its clock wrong" if hours <= MAX_ZONE_OFFSET_H
             else "does the rig send unix seconds (not MATLAB datenum days)")
    if offset < 0:
        cause += ", or did it send them long after showing them (a resend after an outage)"
    span = f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} days"
    message = (f"rig {rig!r}: onsets are {span} {'ahead of' if offset > 0 else 'behind'} this server's clock "
               f"(the median of {len(onsets)} presentation(s) of batch {batch.id!r}, against their arrival): {cause} "
               "(docs/protocol.md §11, Time)? They are stored as sent; analyses by time are off until the rig is "
               "fixed. Logged once per session")
    data = {"rig": rig, "batch_id": batch.id, "offset_s": offset, "presentations": len(onsets)}
    if records.log_event_once(db, "rig.clock_offset", message, session_id=batch.session_id,
                              thread_id=batch.thread_id, level=EventLevel.WARNING, data=data) is not None:
        log.warning(message)


def closed_batch(db: Transaction, rig: str, batch_id: str, recorded: Recorded) -> RigInputError:
    """The answer to a RESULTS stored ``late``: its event, and the ``batch_closed`` the rig drops the batch on."""
    batch = queries.batch(db, batch_id)
    message = (f"batch {batch_id!r} is closed: its generation was scored before these arrived; their "
               f"{recorded.accepted} new presentation(s) are stored, not scored, and a rig drops this batch")
    log_in(db, batch.session_id, batch.thread_id, "results.late", f"RESULTS from rig {rig!r}: {message}",
           {"rig": rig, "batch_id": batch_id, "presentations": recorded.accepted}, EventLevel.WARNING)
    return RigInputError(ErrorCode.BATCH_CLOSED, message)


def answer(db: Transaction, runtime: ThreadRuntime, rig: str, header: dict, received_at, channels: int,
           cached: frozenset[str], archive: ImageArchive) -> tuple[Recorded, Message | object | None]:
    """Store a RESULTS for ``runtime``'s outstanding round; when the round is then answered (or the rig is
    ``done`` with it), take the thread's ``next_step`` in the same transaction: one commit stores the
    presentations, the tell and the next generation. Returns what was recorded and the step (None: none)."""
    recorded = record_results(db, rig, header, received_at)
    if not runtime.inflight.answered(recorded.answered, bool(header.get("done"))):
        return recorded, None
    return recorded, next_step(db, runtime, channels, cached, archive)


def next_step(db: Transaction, runtime: ThreadRuntime, channels: int, cached: frozenset[str],
              archive: ImageArchive) -> Message | object | None:
    """Complete an answered generation, start the next, and prepare the BATCH still owed.

    One transaction: the scores, the optimizer state's summary after ``tell``, the next generation's codes
    and stimuli and the batch row commit together, before any image of it leaves (a snapshot generation's full
    optimizer state is written once the BATCH is out: ``store_snapshot``). A generation of
    more than ``render_chunk`` images is the exception: its codes are asked, the transaction
    commits what came before, and ``RENDER`` asks the caller to render them chunk by chunk before
    calling again (a crash in between re-asks the same codes from the committed state). Returns the
    BATCH to send, ``FINISHED`` (also for a paused thread once its generation is told), or None (a
    round is out, or the rig is not connected or lacks a channel the generation is scored on:
    ``channels`` is what the connected rig announced, 0 if none is). A round still out is sent again
    under its own ``batch_id`` (with only its unanswered stimuli, and no new batch row) when
    ``resend`` is set: the rig reconnected, or the runtime was rebuilt.
    """
    while True:
        inflight = runtime.inflight
        if inflight is not None and inflight.resend and inflight.batch_id and inflight.awaiting:
            if not channels:  # not connected
                return None
            inflight.resend = False
            owed = [s for s in owed_stimuli(db, runtime, inflight) if s in inflight.awaiting]
            return prepare_batch(db, runtime, cached, owed, batch_id=inflight.batch_id)
        owed = None
        if inflight is not None and inflight.batch_id is not None and not inflight.awaiting:
            # The last round is answered (or given up on): another round, or tell.
            responses = queries.scored_responses(db, inflight.generation_id, runtime.flagged)
            owed = owed_stimuli(db, runtime, inflight, responses)
            if not owed or inflight.rounds >= runtime.repeats + MAX_REQUEUES:
                if complete_generation(db, runtime, responses, archive, timed_out=bool(owed)):
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
            started = start_generation(db, runtime, archive)
            if started is None:
                return RENDER
            runtime.inflight, objective = started
            owed = runtime.inflight.stimulus_ids + runtime.reference_ids  # nothing presented yet
        else:
            objective = queries.generation_objective(db, runtime.inflight.generation_id)
        if runtime.inflight.batch_id is not None or channels < Objective.from_config(objective).n_channels:
            return None
        if owed is None:
            owed = owed_stimuli(db, runtime, runtime.inflight)
        message = prepare_batch(db, runtime, cached, owed)
        if message is not None:
            return message
        runtime.inflight.batch_id, runtime.inflight.awaiting = "", set()  # nothing owed: complete it


def start_generation(db: Transaction, runtime: ThreadRuntime, archive: ImageArchive) -> tuple[InFlight, dict] | None:
    """Ask, render and add a new generation (status pending); its PNGs stay in memory to send, and are
    archived once sent (``InFlight.archive_in``).
    Returns it with the objective it is scored with, or None when the codes asked are more than one chunk
    and not rendered yet (``runtime.next_codes``).
    """
    if runtime.next_codes is None:
        with runtime.computing():
            runtime.next_codes = runtime.optimizer.ask()
    codes = runtime.next_codes
    if runtime.next_images is None:
        if len(codes) > runtime.render_chunk:
            return None
        runtime.next_images = render(runtime, codes, archive)
    encoded, runtime.next_codes, runtime.next_images = runtime.next_images, None, None
    pngs, images = [png for png, _ in encoded], [image for _, image in encoded]
    number = runtime.optimizer.generation
    generation_id, objective, ids = records.add_generation(db, runtime.id, number, codes, images,
                                                           runtime.generator.provenance, runtime.session_id)
    return InFlight(generation_id, number, codes, ids, dict(zip(ids, pngs)), rounds=1), objective


def render(runtime: ThreadRuntime, codes: np.ndarray, archive: ImageArchive) -> list[tuple[bytes, ArchivedImage]]:
    """The PNG and archive address (written later) of each code's image, encoded on all cores; ``GeneratorError``
    when an image is not finite (``thread_runtime.rendered``): its step fails the thread, and nothing of the
    generation is committed or sent."""
    def encode(pixels: np.ndarray) -> tuple[bytes, ArchivedImage]:
        png = encode_png(pixels)
        return png, archive.address(png)
    with runtime.computing():
        return parallel_map(encode, to_pixels(rendered(runtime.generator, codes)))


def complete_generation(db: Transaction, runtime: ThreadRuntime, responses: dict[str, list[queries.Response]],
                        archive: ImageArchive, timed_out: bool) -> bool:
    """Score ``responses`` (the generation's scored presentations), tell, and record the scores with the summary
    of the optimizer state after it (the full state of a snapshot generation is kept for ``store_snapshot``). True
    when the thread is done."""
    inflight = runtime.inflight
    inflight.archive_in(archive).result()  # the images of a told generation must survive a power loss
    shown = {s: [(r.rates, r.baseline) for r in shown_at] for s, shown_at in responses.items()}
    objective = Objective.from_config(queries.generation_objective(db, inflight.generation_id))
    scored = objective.score_generation(shown, frozenset(runtime.reference_ids))
    scores = np.array([scored.get(s, np.nan) for s in inflight.stimulus_ids])
    reference = [scored.get(s, np.nan) for s in runtime.reference_ids]
    reference_rates = {s: [r.rates for r in responses[s]] for s in runtime.reference_ids if s in responses}
    with runtime.computing():
        runtime.optimizer.tell(inflight.codes, scores)
    state = runtime.optimizer.state_dict()
    if is_snapshot(inflight.number):  # serialised once the BATCH is out (later asks and tells leave ``state`` alone)
        runtime.snapshot = Snapshot(inflight.generation_id, inflight.number, state)
    n_scored = records.complete_generation(db, inflight.generation_id, scores, reference,
                                           optimizers.state_summary(state), timed_out=timed_out)
    monitor.generation_completed(db, runtime.drift, runtime.session_id, runtime.id, inflight.number, scores, reference,
                                 reference_rates, objective.channels)
    images, references = len(scores) - n_scored, int(np.isnan(reference).sum())
    if timed_out and (images or references):
        lost = []
        if images:
            lost.append(f"{images} of {len(scores)} image(s) (the optimizer saw NaN for them)")
        if references:
            lost.append(f"{references} of {len(reference)} reference image(s) (left out of the reference mean)")
        log_in(db, runtime.session_id, runtime.id, "generation.timed_out",
               f"{runtime.drift.name}: generation {inflight.number}: {' and '.join(lost)} unscored after "
               f"{inflight.rounds} rounds", data={"unscored_images": images, "unscored_references": references},
               level=EventLevel.WARNING)
    runtime.inflight = None
    name = records.finish_thread(db, runtime.id, inflight.number + 1)  # None: an extension leaves more to ask
    if timed_out and not n_scored and name is None:
        reason = (f"generation {inflight.number}: no image scored after {inflight.rounds} rounds, so the thread "
                  "paused instead of evolving on nothing; check the rig and the recording, then resume it")
        if records.pause_thread(db, runtime.id, reason):
            log_in(db, runtime.session_id, runtime.id, "thread.paused", f"{runtime.drift.name}: {reason}",
                   level=EventLevel.WARNING)
            runtime.paused = True
    if name is not None:
        log_in(db, runtime.session_id, runtime.id, "thread.finished",
              f"thread {runtime.id} {name!r} finished after {inflight.number + 1} generations")
        records.end_session_if_done(db, runtime.session_id)
    return name is not None


def store_snapshot(db: Transaction, runtime: ThreadRuntime) -> None:
    """Write the full optimizer state ``complete_generation`` kept for a snapshot generation. The engine runs this
    after the step's BATCH is out, so the rig does not wait for its serialising and its pages (about 1.3 ms at
    100 dimensions). It is not needed to go on: a server that stopped before it, or failed it, resumes from the
    snapshot before (``restore_optimizer``)."""
    snapshot, runtime.snapshot = runtime.snapshot, None
    records.store_snapshot(db, snapshot.generation_id, optimizers.dumps_state(snapshot.state))


def prepare_batch(db: Transaction, runtime: ThreadRuntime, cached: frozenset[str],
                  owed: list[str], batch_id: str | None = None) -> Message | None:
    """A BATCH of the ``owed`` stimuli in a seeded random order, references interleaved (cached ones by id).

    The order is the round's shuffle of every stimulus of the generation, so the batch sent again under its
    ``batch_id`` (with fewer stimuli owed) keeps its relative order; a new round is shuffled anew.
    A new batch (no ``batch_id``) gets its row here; the engine removes it if the send fails.
    """
    inflight = runtime.inflight
    if not owed:
        return None
    every = inflight.stimulus_ids + runtime.reference_ids
    shuffled = np.random.default_rng([runtime.seed, inflight.number, inflight.rounds]).permutation(len(every))
    rank = {every[i]: position for position, i in enumerate(shuffled.tolist())}
    entries = []
    for stimulus_id in sorted(set(owed), key=rank.__getitem__):
        if stimulus_id in runtime.reference_pngs:
            entries.append((stimulus_id, "reference",
                            None if stimulus_id in cached else runtime.reference_pngs[stimulus_id]))
        else:
            entries.append((stimulus_id, "synthetic", inflight.pngs[stimulus_id]))
    if batch_id is None:
        batch_id = records.add_batch(db, records.new_id(), runtime.session_id, runtime.id, inflight.generation_id,
                                     runtime.rig)
    return batch_message(batch_id=batch_id, session_id=str(runtime.session_id), thread_id=str(runtime.id),
                         generation=inflight.number, response_window_ms=runtime.window_ms, stimuli=entries)


def left_pending(db: Transaction, runtime: ThreadRuntime) -> None:
    """The event of a thread stopped with a generation in flight: it stays ``pending`` for good (the optimizer
    is never told it), and the presentations stored for it, and any its rig still sends, are kept unscored."""
    inflight = runtime.inflight
    shown = sum(map(len, queries.scored_responses(db, inflight.generation_id, runtime.flagged).values()))
    log_in(db, runtime.session_id, runtime.id, "generation.left_pending",
           f"{runtime.drift.name} stopped with generation {inflight.number} pending: it is never scored or told; its "
           f"{shown} scorable presentation(s) so far stay stored, and any its rig still sends for it are stored "
           "too, unscored",
           {"generation": inflight.number, "presentations": shown})


def log_in(db: Transaction, session_id, thread_id, kind, message, data=None, level=EventLevel.INFO) -> None:
    """An event row in the session record, and the same line in the server log."""
    log.log(logging.WARNING if level in (EventLevel.WARNING, EventLevel.ERROR) else logging.INFO, message)
    records.log_event(db, kind, message, level=level, session_id=session_id, thread_id=thread_id, data=data)
