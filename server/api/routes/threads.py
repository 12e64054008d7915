"""Threads: read, pause/resume/stop (a small state machine), extend, retarget, generations and presentations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session as DBSession

import generators
from server.admission import Problem, check_objective
from server.api.deps import (
    DB, MAX_ID, Archive, Generators, Id, Limit, Offset, RigChannels, Via, Wake, check_generations, get_or_404,
    paginate, refuse,
)
from server.api.schemas import ErrorDetail, GenerationSummary, Page, PresentationRead, Retarget, ThreadRead
from server.session_config import SessionConfig
from server.store.archive import ImageArchive
from server.store.models import (
    ENDED_THREAD_STATUSES,
    LIVE_THREAD_STATUSES,
    Batch,
    Generation,
    GenerationStatus,
    Presentation,
    SessionStatus,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
)
from server.store.queries import reference_stimuli, rig_latencies
from server.store import records
from server.store.records import end_session_if_done, log_event, set_objective
from server.thread_runtime import ReferencesLost, stored_references

router = APIRouter(prefix="/threads", tags=["threads"], responses={404: {"model": ErrorDetail}})

# action -> (statuses it may start from, status it leads to); everything else is a 409.
# (The engine moves live threads between running, waiting_for_rig and blocked as their rig comes and goes.)
TRANSITIONS: dict[str, tuple[frozenset[ThreadStatus], ThreadStatus]] = {
    "pause": (LIVE_THREAD_STATUSES, ThreadStatus.PAUSED),
    "resume": (frozenset({ThreadStatus.PAUSED, ThreadStatus.FAILED}), ThreadStatus.RUNNING),
    "stop": (LIVE_THREAD_STATUSES | {ThreadStatus.PAUSED}, ThreadStatus.STOPPED),
}

# action -> statuses in which the thread already is as the action would leave it: a repeat (a retry after a
# timeout, say) answers the thread unchanged, with no event.
ALREADY: dict[str, frozenset[ThreadStatus]] = {
    "pause": frozenset({ThreadStatus.PAUSED}),
    "resume": frozenset({ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG}),
    "stop": frozenset({ThreadStatus.STOPPED}),
}
# An evolution may be extended while it has not ended, and once finished (it goes on from its stored state).
EXTENDABLE = LIVE_THREAD_STATUSES | {ThreadStatus.PAUSED, ThreadStatus.FINISHED}

CONFLICT = {409: {"model": ErrorDetail, "description": "The thread's status does not allow this action."}}


class Extend(BaseModel):
    """``POST /threads/{id}/extend``: the thread's new total of generations."""

    model_config = ConfigDict(extra="forbid")

    n_generations: int = Field(strict=True, ge=1, le=10_000, description="The thread's new total of generations: more "
                               "than it has asked so far (the session's config keeps the number it was created with).")


def _transition(db: DBSession, wake: Callable[[], None], thread_id: int, action: str, via: str) -> Thread:
    """Apply ``action`` atomically (a conditional UPDATE, so a concurrent engine write cannot be lost); a thread
    already as the action would leave it (``ALREADY``) is returned unchanged."""
    allowed, target = TRANSITIONS[action]
    session = get_or_404(db, Thread, thread_id).session
    if action == "resume" and session.status == SessionStatus.STOPPED:  # a failed thread of a stopped session
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot resume thread {thread_id}: its session {session.id} "
                            "is stopped")
    # Running again, or stopped: what the thread reported (a refusal, a wait) has passed or is moot.
    values = {"status": target}
    if target in (ThreadStatus.RUNNING, ThreadStatus.STOPPED):
        values["last_error"] = None
    changed = db.execute(
        update(Thread).where(Thread.id == thread_id, Thread.status.in_(allowed)).values(**values)
    ).rowcount
    thread = get_or_404(db, Thread, thread_id)
    if not changed:
        db.rollback()
        if thread.status in ALREADY[action]:
            return thread  # done before: a repeat changes nothing
        detail = (f"cannot {action} thread {thread_id}: it is {thread.status.value}"
                  f" (allowed from: {', '.join(sorted(s.value for s in allowed))})")
        if thread.last_error and thread.status in LIVE_THREAD_STATUSES:  # held back, or a refusal not yet cleared
            detail += f"; its last error: {thread.last_error}"
        elif action == "resume" and thread.status == ThreadStatus.FINISHED:
            detail += (f"; extend it to go on: `POST /threads/{thread_id}/extend` with more generations"
                       if thread.kind == "evolution" else
                       f"; a {thread.kind} thread has a fixed design: add a new {thread.kind} thread to show more")
        raise HTTPException(status.HTTP_409_CONFLICT, detail)
    log_event(
        db, f"thread.{target.value}", f"thread {thread_id} {thread.name!r} {target.value} via {via}", thread_id=thread_id
    )
    if target == ThreadStatus.STOPPED:
        end_session_if_done(db, thread.session_id)
    elif session.status == SessionStatus.FINISHED:  # a failed thread resumed: its session runs again
        session.status = SessionStatus.ACTIVE
    db.commit()
    db.refresh(thread)
    wake()
    return thread


def thread_read(thread: Thread, engine) -> ThreadRead:
    """The thread as stored, with the storage failure the engine holds it stalled on (``Engine.stall_of``) as its
    ``last_error``: on a full disk the database may not have taken that."""
    read = ThreadRead.model_validate(thread)
    stall_of = getattr(engine, "stall_of", None)  # an engine without it (a stand-in) stalls nothing
    error = stall_of(thread.id) if stall_of is not None else None
    return read if error is None else read.model_copy(update={"last_error": error})


@router.get("/{thread_id}", response_model=ThreadRead)
def get_thread(thread_id: Id, db: DB, request: Request) -> ThreadRead:
    """The thread; while it is stalled on storage, ``last_error`` says so even if the database could not take it."""
    return thread_read(get_or_404(db, Thread, thread_id), request.app.state.engine)


@router.post("/{thread_id}/pause", response_model=ThreadRead, responses=CONFLICT)
def pause_thread(thread_id: Id, db: DB, wake: Wake, via: Via) -> Thread:
    """running, waiting_for_rig or blocked -> paused: the current generation is still scored and told,
    no new one is asked. A paused thread is returned unchanged."""
    return _transition(db, wake, thread_id, "pause", via)


@router.post("/{thread_id}/resume", response_model=ThreadRead, responses={409: {
    "model": ErrorDetail, "description": "The thread's status does not allow this action, its generator's weights "
    "do not load now, or the image archive lost reference images that cannot be rebuilt."}})
def resume_thread(thread_id: Id, db: DB, wake: Wake, cache: Generators, archive: Archive, via: Via) -> Thread:
    """paused, or failed once its cause is fixed (not in a stopped session) -> running (the engine makes it
    waiting_for_rig or blocked if its rig says so); last_error is cleared. A thread whose generator does not
    load now (its weights, as a session's creation checks them), or whose session's reference images the archive
    lost and their source no longer renders, stays as it is: 409 with the reason. A running or waiting_for_rig
    thread is returned unchanged."""
    thread = get_or_404(db, Thread, thread_id)
    if thread.status in TRANSITIONS["resume"][0]:
        _check_generator(thread, cache)
        _check_references(db, thread, archive)
    return _transition(db, wake, thread_id, "resume", via)


def _check_generator(thread: Thread, cache, action: str = "resume") -> None:
    """A 409 naming the reason unless the thread's generator loads from where the server looks now."""
    config = SessionConfig.stored(thread.session.config_json).thread(thread.name)
    try:
        cache.get(config.generator, config.weights, config.generator_options)
    except generators.GeneratorError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot {action} thread {thread.id}: {error}") from None


def _check_references(db: DBSession, thread: Thread, archive: ImageArchive, action: str = "resume") -> None:
    """A 409 naming the lost images unless the archive holds the session's references, or their source renders
    again those it lost (the engine then archives them again at the thread's start)."""
    config = SessionConfig.stored(thread.session.config_json)
    try:
        stored_references(reference_stimuli(db, thread.session_id), config, archive)
    except ReferencesLost as error:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot {action} thread {thread.id}: {error}") from None


@router.post("/{thread_id}/stop", response_model=ThreadRead, responses=CONFLICT)
def stop_thread(thread_id: Id, db: DB, wake: Wake, via: Via) -> Thread:
    """Any status but stopped, finished or failed -> stopped (final). A stopped thread is returned unchanged."""
    return _transition(db, wake, thread_id, "stop", via)


@router.post("/{thread_id}/extend", response_model=ThreadRead, responses={409: {
    "model": ErrorDetail, "description": "Not an evolution, stopped or failed, in a stopped session, the source of a "
    "Manifold map, or (finished) its generator or references do not load now."}})
def extend_thread(thread_id: Id, body: Extend, db: DB, wake: Wake, cache: Generators, archive: Archive) -> Thread:
    """An evolution's new total of generations, more than it has asked so far: running, waiting_for_rig, blocked or
    paused, it goes on to the new total; finished, it goes on (running, its session active again) from its stored
    optimizer state, checked as ``resume`` checks a failed thread. The same total again returns it unchanged. The
    session's stored config keeps the n_generations it was created with; the ``thread.extended`` event records
    the change."""
    thread = get_or_404(db, Thread, thread_id)
    _check_extendable(db, thread)
    if thread.status == ThreadStatus.FINISHED:
        _check_generator(thread, cache, "extend")
        _check_references(db, thread, archive, "extend")
    # Take the write lock before deciding: a step that would finish the thread now waits, and reads the new total.
    db.execute(update(Thread).where(Thread.id == thread_id).values(n_generations=Thread.n_generations))
    db.refresh(thread)
    _check_extendable(db, thread)
    asked = db.scalar(select(func.count()).select_from(Generation).where(Generation.thread_id == thread_id))
    if body.n_generations <= asked:
        db.rollback()
        refuse([Problem(("n_generations",), f"thread {thread_id} has asked {asked} generation(s) already: give more "
                        f"than {asked} (it runs {thread.n_generations})")])
    if body.n_generations == thread.n_generations:
        db.rollback()
        return thread  # extended to this before: a repeat changes nothing
    records.extend_thread(db, thread, body.n_generations)
    db.commit()
    db.refresh(thread)
    wake()
    return thread


def _check_extendable(db: DBSession, thread: Thread) -> None:
    """A 409 unless ``extend`` may change the thread: an evolution not stopped or failed, not in a stopped session,
    and, once finished, the source of no Manifold map that may build its grid again (the grid would change)."""
    reason = None
    if thread.kind != "evolution":
        reason = f"a {thread.kind} thread has a fixed design; add a new {thread.kind} thread to show more"
    elif thread.status not in EXTENDABLE:
        then = "resume it first" if thread.status == ThreadStatus.FAILED else "add a new thread to go on"
        reason = (f"it is {thread.status.value} (allowed from: {', '.join(sorted(s.value for s in EXTENDABLE))}); "
                  f"{then}")
    elif thread.session.status == SessionStatus.STOPPED:
        reason = f"its session {thread.session_id} is stopped"
    elif thread.status == ThreadStatus.FINISHED:
        config = SessionConfig.stored(thread.session.config_json)
        maps = [t for t in thread.session.threads if t.kind == "manifold" and t.status not in (
            ThreadStatus.FINISHED, ThreadStatus.STOPPED) and config.thread(t.name).source == thread.name]
        if maps:
            reason = (f"Manifold map {maps[0].id} {maps[0].name!r} builds its grid on the {thread.n_generations} "
                      "generations it has; let the map finish or stop it first, or add a new evolution thread")
    if reason is not None:
        db.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot extend thread {thread.id}: {reason}")


@router.post("/{thread_id}/retarget", response_model=ThreadRead, responses=CONFLICT)
def retarget_thread(thread_id: Id, body: Retarget, db: DB, wake: Wake, rig_channels: RigChannels) -> Thread:
    """Change the thread's objective from its next generation on (an event records that generation's number and
    both objectives; the session's stored config keeps the one the thread was created with). The objective it has
    (as stored) returns it unchanged."""
    thread = get_or_404(db, Thread, thread_id)
    if thread.status in ENDED_THREAD_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot retarget thread {thread_id}: it is {thread.status.value}")
    rig = thread.session.rig
    refuse(check_objective(body.objective, rig, rig_channels(rig), ("objective",)))
    if thread.objective_json == body.objective.model_dump(mode="json", exclude_none=True):
        return thread  # retargeted to this before (or created with it): a repeat changes nothing
    set_objective(db, thread, body.objective)
    if thread.status == ThreadStatus.BLOCKED:  # the engine re-checks it against the rig
        thread.status, thread.last_error = ThreadStatus.RUNNING, None
    db.commit()
    wake()
    return thread


@router.get("/{thread_id}/generations", response_model=Page[GenerationSummary])
def list_thread_generations(thread_id: Id, db: DB, offset: Offset = 0, limit: Limit = 100,
                            status_: Annotated[GenerationStatus | None, Query(alias="status")] = None,
                            ) -> Page[GenerationSummary]:
    """The thread's generations in order (``status``: only those pending or complete), each with its rig latency."""
    get_or_404(db, Thread, thread_id)
    query = select(Generation).where(Generation.thread_id == thread_id)
    if status_ is not None:
        query = query.where(Generation.status == status_)
    page = paginate(db, query, Generation.number, GenerationSummary, offset, limit)
    latency = rig_latencies(db, thread_id)
    page.items = [g.model_copy(update={"rig_latency_s": latency.get(g.id)}) for g in page.items]
    return page


@router.get("/{thread_id}/presentations", response_model=Page[PresentationRead])
def list_thread_presentations(
    thread_id: Id,
    db: DB,
    offset: Offset = 0,
    limit: Limit = 100,
    generation: Annotated[int | None, Query(ge=0, le=MAX_ID, description=(
        "Only the showings of this generation's batches (0-based number; its reference images too). A number "
        "the thread cannot reach is a `422`."))] = None,
    kind: Annotated[StimulusKind | None, Query(description="Only showings of `synthetic` or of `reference` images.")
                    ] = None,
    stimulus_id: Annotated[str | None, Query(min_length=1, max_length=128, description=(
        "Only the showings of this image. An id that is no image of the thread's session is a `422`."))] = None,
) -> Page[PresentationRead]:
    """Presentations of the thread's batches (synthetic and reference images), in arrival order; ``generation``,
    ``kind`` and ``stimulus_id`` keep only some of them."""
    thread = get_or_404(db, Thread, thread_id)
    query = select(Presentation).join(Batch, Presentation.batch_id == Batch.id).where(Batch.thread_id == thread_id)
    if generation is not None:
        check_generations(thread, generation, ("query", "generation"))
        query = query.join(Generation, Batch.generation_id == Generation.id).where(Generation.number == generation)
    if kind is not None:
        query = query.join(Stimulus, Presentation.stimulus_id == Stimulus.id).where(Stimulus.kind == kind)
    if stimulus_id is not None:
        stimulus = db.get(Stimulus, stimulus_id)
        if stimulus is None or stimulus.session_id != thread.session_id:
            raise HTTPException(422, [{"type": "value_error", "loc": ["query", "stimulus_id"], "msg": (
                f"{stimulus_id!r} is no image of session {thread.session_id} (thread {thread.id}'s); its images' ids "
                "are in GET /generations/{id} (stimulus_ids) and in these presentations")}])
        query = query.where(Presentation.stimulus_id == stimulus_id)
    return paginate(db, query, Presentation.id, PresentationRead, offset, limit)
