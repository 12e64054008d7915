"""The experiment engine: the closed loop of every running thread, and the rigs' side of it.

Threads live in the database. For each running thread the engine keeps a small runtime
(``server.thread_runtime``) that it can always rebuild from the database: the scores every ``tell``
consumed are committed with the codes asked next, the full optimizer state at snapshot generations
(0, 1, 2, 4, ...), and the state after the last tell is replayed from those, so a pending generation is
re-asked from it and returns the same codes. That is how a restarted server continues the same
evolution bit for bit, reusing every presentation already recorded.

Each step of a thread (complete the answered generation, start the next, prepare the BATCH it
owes: ``server.steps``, where a generation is asked, rendered, persisted, scored and told) is one
transaction that commits before any image of it leaves; on a rig that runs one thread, the RESULTS
that answers a round is stored in the transaction of the step it completes, and the ACK goes out
just before that step's BATCH (a rig with several threads gets its ACK at once). The engine sends
the BATCH from the PNGs just rendered, never read back from the archive, whose writes start once
the BATCH is sent, run in the background and are awaited before it is told. Torch and
database work runs on one worker thread (``_compute``), never on the event loop, in jobs of bounded
size (a large generation renders in chunks) so no session's step freezes another's; PNG encoding
and archive writes fan out to all cores.
A generation is only asked and rendered while its rig is connected. A step that fails on storage (a full
disk, a database another program holds locked: ``storage_fault``) is retried on a runtime rebuilt later
(``Engine._stall``); any other failure fails its thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import difflib
import errno
import gc
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker

from generators.base import GeneratorError
from rig_client.protocol import PROTOCOL_MINOR, ErrorCode, Message
from server import RigInputError, ServerError, StorageUnavailable, ThreadNotReady, admission, live, manifold, steps
from server.session_config import ObjectiveConfig
from server.settings import Settings
from server.store import queries, records
from server.store.archive import ImageArchive
from server.store.db import BackgroundCheckpoints, StepConnection, Transaction
from server.store.models import (
    ENDED_THREAD_STATUSES, Batch, EventLevel, Thread, ThreadStatus, utcnow,
)
from server.thread_runtime import ThreadRuntime, build_runtime, code_chunks
from server.transport import SILENT, PeerBudget
from server.weights import GeneratorCache

log = logging.getLogger(__name__)

RECONCILE_S = 0.5  # how often the engine re-reads thread intent even without a wake-up
STORAGE_RETRY_S = (1.0, 60.0)  # first and longest wait before a thread stalled on storage tries again
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES})
# SQLite's primary result codes of a storage fault: a full disk, an I/O error, a read-only file, and a database
# another program (an sqlite3 shell, DB Browser for SQLite) held locked for longer than the busy timeout.
LOCKED_SQLITE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
STORAGE_SQLITE_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY,
                                  *LOCKED_SQLITE_CODES})
REFUSALS_RECORDED = (20, 1.0)  # refused RESULTS recorded per rig: a burst, then so many a second
CHANGES_SHOWN = 8  # relabelled channels a rig.channels_changed message names (its data has all)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8  # mallopt parameters (<malloc.h>)
MALLOC_ARENAS = 2  # the arenas glibc may make (its default: 8 per core), each keeping its largest use


def freeze_heap() -> None:
    """Collect garbage once, then hide every object alive now from the cyclic collector (``gc.freeze``).

    Modules, the app and loaded networks are some 300 000 objects that never become garbage; a full
    collection walks them all (0.2 s on 2 cores with DCGAN loaded), and it would fall on the hot path.
    """
    gc.collect()
    gc.freeze()


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the system (elsewhere: no-op).

    Each generation allocates its tensors afresh and frees them. By default glibc returns blocks over
    its dynamic threshold, and the top of the heap, to the system, so the next generation page-faults
    that memory in again: on the main thread 40 DCGAN images render 1.1-1.25x slower so
    (``bench/freed_memory.py``). With this, blocks of up to 32 MB come from the heap (larger ones are still
    mapped and unmapped: a tensor of more than about 40 images of 256 px), and no heap shrinks. The top pad
    covers the compute worker, whose arena grows in heaps of 64 MB that glibc unmaps as soon as one is free,
    whatever the trim threshold: at 256 px that munmap put several ms into a step's writes after the render
    (``bench/hot_path.py``). Every arena keeps its largest use for the process's life, and a thread that ever
    worked (a REST worker that built an NWB export) has one of its own by default, so the arenas are capped:
    the server keeps at most ``MALLOC_ARENAS`` arenas' peaks, its threads sharing them.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, TypeError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    mallopt(M_TOP_PAD, 128 * 2**20)  # the pad a free heap must leave before glibc unmaps it: more than it holds
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)  # threads that have an arena keep it; later ones share


def storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is the data directory's storage failing (full, read-only, unwritable, I/O errors, the database
    locked by another program), which the operator can fix, rather than a bug: the engine retries such a step
    instead of failing its thread."""
    error = _driver_error(exc)
    if isinstance(error, sqlite3.Error):
        return _sqlite_code(error) in STORAGE_SQLITE_CODES
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def storage_advice(exc: BaseException, settings: Settings) -> str:
    """A storage fault and what to do: close the program that holds the database locked, make writable the highest
    folder (or file) under the data folder that cannot be written, or free disk space in the folder that failed."""
    error, code = _driver_error(exc), _sqlite_code(exc)
    data_dir, database = Path(os.path.abspath(settings.data_dir)), make_url(settings.database_url).database
    database = database and os.path.abspath(database)  # in full, as the start-up log names the data folder
    if code in LOCKED_SQLITE_CODES:
        return (f"the database {database} is locked by another program (an sqlite3 shell, DB Browser for SQLite?): "
                "close it")
    filename = database if code is not None else getattr(error, "filename", None)
    if code == sqlite3.SQLITE_READONLY or (isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES)):
        folder = unwritable(data_dir, Path(filename)) if filename else data_dir
        return f"{error}. Make {folder} writable"
    folder = Path(os.path.abspath(filename)).parent if filename else data_dir
    return f"{error}. Free disk space in {folder} (or make it writable)"


def unwritable(data_dir: Path, path: Path) -> Path:
    """The highest of ``data_dir``, the folders under it down to ``path`` and ``path`` itself that cannot be written
    (a read-only mount of ``images/`` is ``images``, not the folder of the file that failed in it); ``path``'s
    folder when each can be (fixed meanwhile), or when ``path`` is not in ``data_dir``. Both are taken as absolute
    paths (a relative ``--data-dir`` and the absolute path of a file that failed in it), and so is the answer."""
    data_dir, path = Path(os.path.abspath(data_dir)), Path(os.path.abspath(path))
    try:
        parts = path.relative_to(data_dir).parts
    except ValueError:
        return path.parent
    candidates = [data_dir.joinpath(*parts[:n]) for n in range(len(parts) + 1)]
    return next((p for p in candidates if p.exists() and not os.access(p, os.W_OK)), path.parent)


def _driver_error(exc: BaseException) -> BaseException:
    return getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error


def _sqlite_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc`` (SQLAlchemy's wrapping too), None for another error."""
    exc = _driver_error(exc)
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF if isinstance(exc, sqlite3.Error) else None


@dataclass
class Stall:
    """A thread whose step failed on storage: its runtime is dropped and rebuilt at ``retry_at`` (monotonic)."""

    error: str  # the thread's ``last_error`` while it lasts
    since: float
    wait_s: float  # doubles with each failed try, up to ``STORAGE_RETRY_S[1]``
    retry_at: float
    database: bool  # the database failed (not the image archive): a write of the thread's that succeeds ends the wait


def start_event(runtime: ThreadRuntime, name: str, restarted: bool, waiting: bool) -> tuple[str, str, dict] | None:
    """The event of a thread's runtime just built (``steps.log_in``'s kind, message and data): ``thread.started``,
    or ``thread.resumed`` when the server's start took up a thread with a history (``restarted``), naming the
    generation it resumes at and what becomes of its batch. None for a start while it waits for its rig
    (``waiting``): ``thread.waiting_for_rig`` says so, and ``thread.running`` when the rig connects."""
    inflight, number = runtime.inflight, runtime.first_generation
    if not restarted or (number == 0 and inflight is None):
        return None if waiting else ("thread.started", f"thread {runtime.id} {name!r} started from generation "
                                     f"{number}", {"generation": number})
    data = {"generation": number, "pending": inflight is not None, "batch_id": None, "resent": False}
    if inflight is None:
        at = f"generation {number}, not asked yet"
    else:
        data.update(generation=inflight.number, batch_id=inflight.batch_id, resent=inflight.resend)
        if inflight.resend:
            at = (f"generation {inflight.number}: its batch {inflight.batch_id} is sent again with the "
                  f"{len(inflight.awaiting)} stimuli it still owes")
        elif inflight.batch_id:
            at = f"generation {inflight.number}: its last batch is answered, so it is scored next"
        else:
            at = f"generation {inflight.number}: its batch is sent once its rig is connected"
    return "thread.resumed", f"thread {runtime.id} {name!r} resumed after a server restart at {at}", data


def paused_at_restart(db: DBSession, thread: Thread) -> tuple[str, str, dict] | None:
    """The restart event of a thread paused when the server started (``start_event``'s for a thread whose
    runtime is built only once a user resumes it), None for one without a history."""
    pending = queries.pending_generation(db, thread.id)
    number = pending.number if pending is not None else len(queries.complete_generations(db, thread.id))
    if pending is None and number == 0:
        return None
    at = f"generation {number}{' (pending)' if pending is not None else ', not asked yet'}"
    return ("thread.resumed", f"thread {thread.id} {thread.name!r} taken up paused after a server restart at {at}: "
            "it goes on once resumed", {"generation": number, "pending": pending is not None, "batch_id": None,
                                        "resent": False, "paused": True})


def log_hello(db: Transaction, rig: str, minor: int, header: dict, references: int) -> None:
    """A HELLO's ``rig.connected`` event (no session; the record of its channels, labels and setup), and, when it
    differs from the rig's previous recorded HELLO (``queries.last_hello``, so also across a server restart), an
    event in each active session with a thread on the rig not ended: ``rig.channels_changed``, a warning, for other
    channels or labels (those threads score channels by number, which may now be other units), and
    ``rig.setup_changed`` for another setup (the session's record then holds both)."""
    after = {"channels": header["channels"], "channel_labels": header.get("channel_labels")}
    previous = queries.last_hello(db, rig)
    steps.log_in(db, None, None, "rig.connected", f"rig {rig!r} connected (protocol 1.{minor})",
                 {"rig": rig, "minor": minor, **after, "cached_references": references, "setup": header.get("setup")})
    if previous is None or previous.get("channels") is None:  # the rig's first HELLO
        return
    before = {"channels": previous["channels"], "channel_labels": previous.get("channel_labels")}
    if (change := channels_change(before, after)) is not None:
        message = (f"rig {rig!r} reconnected with other channels: {change}; the session's threads score the channels "
                   "by number: check that they still record the units you meant (retarget the thread otherwise)")
        for session_id in queries.rig_sessions(db, rig):
            steps.log_in(db, session_id, None, "rig.channels_changed", message,
                         {"rig": rig, "before": before, "after": after}, EventLevel.WARNING)
    if (change := setup_change(previous.get("setup"), header.get("setup"))) is not None:
        for session_id in queries.rig_sessions(db, rig):
            steps.log_in(db, session_id, None, "rig.setup_changed",
                         f"rig {rig!r} reconnected with another setup: {change}",
                         {"rig": rig, "before": previous.get("setup"), "after": header.get("setup")})


def setup_change(before: dict | None, after: dict | None) -> str | None:
    """What differs between two HELLOs' ``setup``: each field changed, added or gone (``viewing_distance_cm 57 ->
    60``), a nested object's by its path (``display.refresh_hz 60 -> 120``); names and values as JSON, each cut at
    60 characters; the first ``CHANGES_SHOWN``. None if nothing."""

    def leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
        """(path, value as JSON: 1 and true differ) of each value not an object, or an empty one below the top."""
        if isinstance(value, dict) and (value or not path):
            for name, inner in value.items():
                yield from leaves(inner, (*path, name))
        else:
            yield path, json.dumps(value, ensure_ascii=False, sort_keys=True)

    def cut(text: str | None) -> str:
        return "(none)" if text is None else text if len(text) <= 60 else text[:57] + "..."

    def name(path: tuple[str, ...]) -> str:  # each name escaped as in JSON: no newline reaches the log
        return cut(".".join(json.dumps(part, ensure_ascii=False)[1:-1] for part in path))

    old, new = dict(leaves(before or {})), dict(leaves(after or {}))
    changes = [f"{name(path)} {cut(old.get(path))} -> {cut(new.get(path))}" for path in {**old, **new}
               if old.get(path) != new.get(path)]
    more = f" and {len(changes) - CHANGES_SHOWN} more fields" if len(changes) > CHANGES_SHOWN else ""
    return "; ".join(changes[:CHANGES_SHOWN]) + more if changes else None


def channels_change(before: dict, after: dict) -> str | None:
    """What differs between two HELLOs' ``channels`` and ``channel_labels``: ``3 channels -> 2 channels``, or each
    relabelled channel (``channel 2 'blocks.6:5' -> 'blocks.6:67'``, the first ``CHANGES_SHOWN``); None if nothing."""
    if before["channels"] != after["channels"]:
        return f"{_channels(before['channels'])} -> {_channels(after['channels'])}"
    unlabelled = [None] * after["channels"]
    changes = [f"channel {i} {_label(old)} -> {_label(new)}" for i, (old, new)
               in enumerate(zip(before["channel_labels"] or unlabelled, after["channel_labels"] or unlabelled))
               if old != new]
    more = f" and {len(changes) - CHANGES_SHOWN} more channels" if len(changes) > CHANGES_SHOWN else ""
    return ", ".join(changes[:CHANGES_SHOWN]) + more if changes else None


def _channels(count: int) -> str:
    return f"{count} channel{'' if count == 1 else 's'}"


def _label(label: str | None) -> str:
    return "unlabelled" if label is None else repr(label)


def close_rigs(rig: str, connected, gone=frozenset()) -> frozenset[str]:
    """The ``connected`` rig names close to ``rig`` but not it: a typo or a case difference in a session's rig name;
    none for a rig ``gone`` (connected under exactly this name before, then silent: its name is right)."""
    if rig in gone:
        return frozenset()
    folded = rig.casefold()
    return frozenset(name for name in connected
                     if name != rig and difflib.SequenceMatcher(None, folded, name.casefold()).ratio() >= 0.6)


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
        self._refusals = PeerBudget(*REFUSALS_RECORDED)  # results.refused rows (and lines) per rig
        self._gone_rigs: set[str] = set()  # every rig that was connected and went silent in this process's life
        self._steps: set[asyncio.Task] = set()  # thread steps in progress (kept so none is collected)
        self._stalled: dict[int, Stall] = {}  # threads waiting for their storage to work again
        self._reconcile_failing = False  # the last reconcile failed on storage (logged once until one succeeds)
        # Threads this process's start took up (not paused), until their runtime is built: their start event
        # says they resumed after a restart. None until the first reconcile, which logs the paused ones' at once.
        self._restarted: set[int] | None = None
        self._at_start: frozenset[int] = frozenset()  # the threads it took up (``_rigs_grace_until``)
        self._passing: dict[int, str] = {}  # thread id -> a last_error its next round or end clears (_take)
        # Threads waiting for their rig whose wait is logged -> the connected rigs with a close name it warned of.
        self._waits: dict[int, frozenset[str]] = {}
        self._wait_errors: dict[int, str] = {}  # thread id -> its waiting warning (its last_error), cleared as it runs
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actmax-compute")
        # The reconcile's read of thread intent, off the compute worker: queued there behind a step, it ran
        # between the step's commit and its send and held the GIL from the event loop that sends the BATCH.
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actmax-reconcile")
        self._step_db = StepConnection(sessions)  # the compute worker's transactions (``_transact``)
        self._checkpoints = BackgroundCheckpoints(sessions)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        # Until then (monotonic), the threads this process's start took up do not wait for a rig not yet connected.
        self._rigs_grace_until = float("inf")
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def wake(self) -> None:
        """Ask the engine to re-read thread intent now (thread-safe; the REST API calls it)."""
        if self._loop is not None and self._wake_event is not None:
            self._loop.call_soon_threadsafe(self._wake_event.set)

    async def run(self) -> None:
        """Reconcile running threads with the database and time out stalled batches until closed."""
        keep_freed_memory()
        freeze_heap()
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        self._rigs_grace_until = time.monotonic() + self.settings.heartbeat_s * self.settings.liveness
        while not self._closed:
            try:
                await self._reconcile()
                await self._check_timeouts()
            except Exception as exc:  # the loop must outlive any one failure; the event log says what
                if self._closed:
                    return  # its workers shut down under it
                if not storage_fault(exc):
                    log.exception("engine reconcile failed")
                elif not self._reconcile_failing:
                    log.warning("engine reconcile failed on storage: %s; retrying every %g s (logged once until it "
                                "works)", storage_advice(exc, self.settings), RECONCILE_S)
                self._reconcile_failing = storage_fault(exc)
            else:
                if self._reconcile_failing:
                    log.info("engine reconcile works again")
                self._reconcile_failing = False
            if not self._steps:  # the REST API's writes; a step's are checkpointed after its send
                self._checkpoints.request()
            try:
                await asyncio.wait_for(self._wake_event.wait(), RECONCILE_S)
            except TimeoutError:
                pass
            self._wake_event.clear()

    async def close(self) -> None:
        """Cancel and await every step (none starts after this began: ``_spawn``), then stop the workers."""
        self._closed = True
        self.wake()
        for step in list(self._steps):
            step.cancel()
        await asyncio.gather(*self._steps, return_exceptions=True)
        self._compute.shutdown(wait=True, cancel_futures=True)
        self._reads.shutdown(wait=True, cancel_futures=True)
        self._step_db.close()
        self._checkpoints.close()
        gc.unfreeze()  # what ``freeze_heap`` hid may now become garbage

    async def _offload(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._compute, fn, *args)

    async def _transact(self, fn, *args, held: list | None = None):
        """``fn(db, *args)`` in one transaction on the driver (``StepConnection``), on the compute worker;
        ``held``: keep the live items it publishes at commit there (``live.hold``)."""
        def in_transaction():
            with self._step_db.begin() as db:
                if held is not None:
                    live.hold(db, held)
                return fn(db, *args)
        return await self._offload(in_transaction)

    def _step(self, runtime: ThreadRuntime) -> None:
        """Start the thread's next step (a RESULTS that completes a round takes it in ``_answer``)."""
        self._spawn(self._advance(runtime))

    def _spawn(self, step) -> None:
        """Run a step coroutine as a task the engine keeps (so none is collected) and cancels on close; once
        ``close`` began, drop it (a RESULTS handled meanwhile: the restart takes its thread up from the database)."""
        if self._closed:
            step.close()
            return
        task = asyncio.get_running_loop().create_task(step)
        self._steps.add(task)
        task.add_done_callback(self._steps.discard)

    # ------------------------------------------------------------------ transport handler
    async def on_hello(self, rig: str, header: dict) -> dict:
        """Remember the rig's channels, cached references and minor version; log its channel labels (the
        record of them), and warn its sessions when they differ from its previous HELLO's (``log_hello``). Its
        threads start (or block) at the next reconcile.

        The transport fills in heartbeat and size limits; WELCOME's ``minor`` is the lower of the rig's and ours.
        A connection the database cannot record now (``storage_fault``) is refused ``internal``: the rig says HELLO
        again later.
        """
        references, minor = set(header.get("cached_references", [])), min(header.get("minor", 0), PROTOCOL_MINOR)
        try:
            await self._transact(log_hello, rig, minor, header, len(references))
        except Exception as exc:
            if not storage_fault(exc):
                raise
            raise StorageUnavailable(f"the server cannot record this rig's connection now "
                                     f"({storage_advice(exc, self.settings)}); say HELLO again") from None
        self._rig_references[rig], self.rig_channels[rig], self.rig_minor[rig] = references, header["channels"], minor
        self.wake()
        return {"minor": minor}

    def rig_channel_count(self, rig: str) -> int | None:
        """The channels ``rig`` announced, or None when it is not connected (the REST API checks objectives)."""
        return self.rig_channels.get(rig)

    async def on_connected(self, rig: str) -> None:
        """A rig (re)joined: resend its outstanding batches under their own ids (§6.5), start what waited; not
        for a thread the rig has too few channels for (the reconcile blocks it)."""
        runtimes = [runtime for runtime in self._threads.values() if runtime.rig == rig]
        if not runtimes:
            return
        threads = {t.id: t for t in await asyncio.get_running_loop().run_in_executor(self._reads, self._live_threads)}
        connected = self._connected_rigs()
        for runtime in runtimes:
            thread = threads.get(runtime.id)
            if thread is None or self._rig_state(thread, connected)[0] != ThreadStatus.RUNNING:
                continue
            if runtime.inflight is not None and runtime.inflight.batch_id:
                runtime.inflight.resend = True
            self._step(runtime)

    async def on_replaced(self, rig: str, heard_s_ago: float) -> None:
        """A HELLO took ``rig``'s name from a connection still live: a warning in each session the rig serves."""
        channels = self.rig_channels.get(rig)
        await self._offload(self._log_rig_event, rig, "rig.replaced",
                            f"rig {rig!r} replaced: a new connection said HELLO as {rig!r} ({channels} channels) while "
                            f"the earlier one was live (heard {heard_s_ago:.1f} s ago); the new one answers its "
                            "threads from now on. If two rig programs use this name, stop one: rig names must be unique",
                            {"rig": rig, "channels": channels, "heard_s_ago": round(heard_s_ago, 3)})

    async def on_disconnect(self, rig: str, why: str = SILENT) -> None:
        self._rig_references.pop(rig, None)
        self.rig_channels.pop(rig, None)
        self.rig_minor.pop(rig, None)
        self._gone_rigs.add(rig)
        try:
            await self._offload(self._log_rig_event, rig, "rig.lost", f"rig {rig!r} {why}", {"rig": rig})
        except Exception as exc:
            if not storage_fault(exc):
                raise
            log.warning("rig %r %s; its rig.lost event is not recorded: %s", rig, why,
                        storage_advice(exc, self.settings))
        self.wake()

    def _log_rig_event(self, rig: str, kind: str, message: str, data: dict) -> None:
        """A warning in each active session with a thread on ``rig`` not ended, also a blocked or paused one (their
        dashboards and watches show it); in no session when there is none."""
        with self._db.begin() as db:
            for session_id in queries.rig_sessions(db, rig) or [None]:
                steps.log_in(db, session_id, None, kind, message, data, EventLevel.WARNING)

    async def on_results(self, rig: str, header: dict) -> dict:
        """Record presentations idempotently; the RESULTS that answers the last stimulus of a round completes
        its generation and sends the next (in the same transaction when the rig runs one thread, see ``_answer``).

        Raises ``RigInputError`` for results the store cannot take (the transport replies ERROR).
        """
        received, received_at = time.monotonic(), utcnow()
        try:
            recorded = await self._answer(rig, header, received, received_at)
        except RigInputError as exc:
            await self.on_refused(rig, header["batch_id"], exc)
            raise
        except Exception as exc:
            if self._closed:  # its workers shut down under it
                raise RigInputError(ErrorCode.INTERNAL, "the server is stopping; keep these results and send them "
                                    "again once it is back") from None
            if not storage_fault(exc):
                raise
            raise StorageUnavailable(f"the server cannot store results now ({storage_advice(exc, self.settings)}); "
                                     "keep them and send them again") from None
        if recorded.late:  # stored, not scored; the rig drops the batch
            raise await self._transact(steps.closed_batch, rig, header["batch_id"], recorded)
        return {"batch_id": header["batch_id"], "accepted": recorded.accepted, "duplicates": recorded.duplicates}

    def _answered(self, recorded: steps.Recorded, header: dict) -> dict:
        """The live ``batch.answered`` notice of a stored RESULTS (``live.hub.publish``'s arguments)."""
        runtime = self._threads.get(recorded.thread_id)
        return dict(kind="batch.answered", message=f"{len(recorded.answered)} stimuli answered",
                    thread_id=recorded.thread_id, session_id=runtime.session_id if runtime is not None else None,
                    data={"batch_id": header["batch_id"], "accepted": recorded.accepted,
                          "done": bool(header.get("done"))})

    async def _answer(self, rig: str, header: dict, received: float, received_at) -> steps.Recorded:
        """Store a RESULTS. When it belongs to the outstanding round of its rig's only thread, it is stored in
        the transaction of the step it completes (``steps.answer``), under the thread's lock, which the task
        sending that step's BATCH releases: that rig has nothing to show until the BATCH, so the ACK can wait
        for it (the transport hears the rig meanwhile). A rig with several threads gets the ACK at once: it
        shows another thread's batch meanwhile."""
        runtime = self._awaiting(rig, header["batch_id"])
        if runtime is not None and sum(r.rig == rig for r in self._threads.values()) > 1:
            runtime = None
        if runtime is not None:
            await runtime.lock.acquire()
            if self._awaiting(rig, header["batch_id"]) is runtime:
                return await self._answer_round(runtime, rig, header, received, received_at)
            runtime.lock.release()  # the round moved on while this waited
        recorded = await self._transact(steps.record_results, rig, header, received_at)
        self._stored(recorded, header, received)
        return recorded

    def _stored(self, recorded: steps.Recorded, header: dict, received: float) -> None:
        """A RESULTS stored on its own (not in a step's transaction): publish it, rebuild its thread now if it is
        stalled on the database, and count it for the thread's round out when that round still awaits its stimuli."""
        live.hub.publish(**self._answered(recorded, header))
        stall = self._stalled.get(recorded.thread_id)
        if stall is not None and stall.database and recorded.thread_id not in self._threads:
            stall.retry_at = received  # the database takes the thread's writes again: rebuild it now, not after its wait
            self.wake()
        # The round out may still await these stimuli: a runtime rebuilt meanwhile read the database before
        # they were stored, or they answer an earlier round of its generation, sent again after a timeout.
        runtime = self._threads.get(recorded.thread_id)
        inflight = runtime.inflight if runtime is not None else None
        if inflight is not None and inflight.generation_id == recorded.generation_id and inflight.awaiting:
            inflight.last_activity = received
            done = inflight.batch_id == header["batch_id"] and bool(header.get("done"))
            if inflight.answered(recorded.answered, done):
                runtime.answered_at, runtime.compute_s = received, 0.0
                self._step(runtime)

    def _awaiting(self, rig: str, batch_id: str) -> ThreadRuntime | None:
        """The running thread whose outstanding round is ``batch_id``, sent to ``rig``."""
        return next((r for r in self._threads.values() if r.rig == rig and r.inflight is not None
                     and r.inflight.batch_id == batch_id), None)

    async def _answer_round(self, runtime: ThreadRuntime, rig: str, header: dict, received: float,
                            received_at) -> steps.Recorded:
        """``_answer`` for ``runtime``'s outstanding round; called holding its lock, which this releases (at
        once, or through the task it starts to send the step's BATCH after the ACK)."""
        runtime.inflight.last_activity = received
        runtime.answered_at, runtime.compute_s = received, 0.0  # matters when this RESULTS answers the round
        cached, held = self._rig_references.setdefault(runtime.rig, set()), []
        try:
            recorded, step = await self._transact(steps.answer, runtime, rig, header, received_at,
                                                  self._channels(rig), frozenset(cached), self._archive, held=held)
        except RigInputError:
            runtime.lock.release()
            raise
        except Exception as exc:  # the step failed and took the presentations' transaction with it
            failure = exc
        else:
            held.insert(0, self._answered(recorded, header))
            self._spawn(self._after_answer(runtime, step, held))
            return recorded
        # Outside the except: a storage fault that fails the store below too is the rig's ERROR, not a chained trace.
        try:  # the runtime may hold what was rolled back: it goes first, then the presentations are stored
            await self._fail(runtime.id, failure)
            recorded = await self._transact(steps.record_results, rig, header, received_at)
        finally:
            runtime.lock.release()
        self._stored(recorded, header, received)  # the stall's rebuild may have read the database before them
        return recorded

    async def _after_answer(self, runtime: ThreadRuntime, step, held: list) -> None:
        """Once the ACK is out: the rest of the step ``steps.answer`` took (renders, the send), then its live
        items; frees the lock."""
        try:
            if step is not None:
                await self._take(runtime, step, held)  # publishes them after the send
            else:
                live.publish_held(held)
        finally:
            runtime.lock.release()

    async def on_refused(self, rig: str, batch_id: str, exc: RigInputError) -> None:
        """A refused RESULTS (by the transport or here) is an event and its thread's ``last_error``, within the rig's
        budget (``REFUSALS_RECORDED``): a rig that floods refused RESULTS writes no more rows nor lines."""
        if self._refusals.allow(rig):
            await self._offload(self._refused, rig, batch_id, exc)

    def _refused(self, rig: str, batch_id: str, exc: RigInputError) -> None:
        """The refusal's event; for a thread not ended, also its ``last_error`` until its next round or its end
        (an ended thread keeps the reason it ended with)."""
        with self._db.begin() as db:
            batch = db.get(Batch, batch_id)
            message = f"RESULTS from rig {rig!r} for batch {batch_id!r} refused ({exc.code}): {exc.message}"
            if batch is None or batch.rig != rig:
                steps.log_in(db, None, None, "results.refused", message, level=EventLevel.WARNING)
                return
            data = {"rig": rig, "batch_id": batch_id, "code": str(exc.code)}
            thread = db.get(Thread, batch.thread_id)
            if thread.status in ENDED_THREAD_STATUSES:
                steps.log_in(db, batch.session_id, thread.id, "results.refused",
                             f"thread {thread.id} {thread.name!r} ({thread.status.value}): {message}", data,
                             EventLevel.WARNING)
                return
            log.warning(message)
            records.set_thread_error(db, thread.id, "results.refused", message, level=EventLevel.WARNING, data=data)
            self._passing[thread.id] = message

    # ------------------------------------------------------------------ thread lifecycle
    async def _reconcile(self) -> None:
        """Match each live thread's status to its rig (running, waiting_for_rig, blocked); keep runtimes
        for running and waiting threads and for paused ones finishing their generation; log each wait for a rig
        (``_note_wait``); advance the idle ones. For one liveness period after the server's start (heartbeat x
        liveness), a thread the start took up is not marked waiting for a rig that has not said HELLO yet: its rig
        reconnects meanwhile."""
        wanted: dict[int, ThreadStatus] = {}
        threads = await asyncio.get_running_loop().run_in_executor(self._reads, self._live_threads)
        connected = self._connected_rigs()  # one view of the rigs for every decision and message below
        if self._restarted is None:
            await self._offload(self._log_paused_at_restart, [t.id for t in threads if t.status == ThreadStatus.PAUSED])
            self._restarted = {t.id for t in threads if t.status != ThreadStatus.PAUSED}
            self._at_start = frozenset(self._restarted)
        grace = self._at_start if time.monotonic() < self._rigs_grace_until else frozenset()
        for thread in threads:
            status = thread.status
            if status != ThreadStatus.PAUSED:
                target, reason = self._rig_state(thread, connected)
                if thread.id in grace and target == ThreadStatus.WAITING_FOR_RIG:
                    target = status
                if target != status and await self._offload(self._set_rig_state, thread.id, status, target, reason,
                                                             sorted(connected)):
                    status = target
                    if target == ThreadStatus.WAITING_FOR_RIG:
                        self._waits[thread.id] = close_rigs(thread.rig, connected, self._gone_rigs)
            wanted[thread.id] = status
        for thread_id in [t for t in self._waits if wanted.get(t) != ThreadStatus.WAITING_FOR_RIG]:
            del self._waits[thread_id]
            self._wait_errors.pop(thread_id, None)
        for thread_id, runtime in list(self._threads.items()):
            status = wanted.get(thread_id)
            runtime.paused = status == ThreadStatus.PAUSED
            if status not in (ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG) and \
                    not (runtime.paused and runtime.inflight is not None):
                del self._threads[thread_id]
                if status is None:  # stopped (alone or with its session)
                    self._spawn(self._left_pending(runtime))
        for thread_id in set(self._stalled) - set(wanted):
            del self._stalled[thread_id]  # it ended meanwhile (stopped)
        now = time.monotonic()
        for thread_id, status in wanted.items():
            if thread_id in self._threads or status not in (ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG):
                continue
            stall = self._stalled.get(thread_id)
            if stall is not None and now < stall.retry_at:
                continue
            try:
                runtime = await self._offload(self._start_thread, thread_id, stall is None,
                                              thread_id in self._restarted)
            except Exception as exc:
                self._restarted.discard(thread_id)  # its next start is a user's resume or a stall's retry, no restart
                await self._fail(thread_id, exc)
                continue
            if runtime is not None:
                self._threads[thread_id] = runtime
                self._restarted.discard(thread_id)
        for thread in threads:
            if wanted[thread.id] == ThreadStatus.WAITING_FOR_RIG and thread.id not in grace:
                await self._note_wait(thread, connected)
        for runtime in list(self._threads.values()):
            inflight = runtime.inflight
            if runtime.lock.locked():
                continue  # a step (perhaps a long render) is under way
            if inflight is None or inflight.batch_id is None or not inflight.awaiting or inflight.resend:
                self._step(runtime)

    def _live_threads(self) -> list[queries.LiveThread]:
        with self._db() as db:
            return queries.live_threads(db)

    def _connected_rigs(self) -> dict[str, int]:
        """The rigs connected now (HELLO handled, the transport holds them), with their channels."""
        rigs = self.transport.rigs() if self.transport is not None else []
        return {rig: self.rig_channels[rig] for rig in rigs if rig in self.rig_channels}

    def _rig_state(self, thread: queries.LiveThread, connected: dict[str, int]) -> tuple[ThreadStatus, str | None]:
        """running, waiting_for_rig (its rig is not in ``connected``) or blocked (too few channels), with the
        reason."""
        channels = connected.get(thread.rig)
        if channels is None:
            return ThreadStatus.WAITING_FOR_RIG, None
        problems = admission.check_objective(ObjectiveConfig.stored(thread.objective), thread.rig, channels)
        if problems:
            return ThreadStatus.BLOCKED, f"objective {problems[0].msg}; retarget the thread or connect a rig with more"
        return ThreadStatus.RUNNING, None

    def _set_rig_state(self, thread_id: int, old: ThreadStatus, new: ThreadStatus, reason: str | None,
                       connected: list[str]) -> bool:
        """Move a thread between running, waiting_for_rig and blocked unless the user changed it meanwhile;
        ``connected``: the rigs the decision saw."""
        with self._db.begin() as db:
            changed = db.execute(
                update(Thread).where(Thread.id == thread_id, Thread.status == old).values(status=new)
            ).rowcount
            if not changed:
                return False
            thread = db.get(Thread, thread_id)
            if (waited := self._wait_errors.pop(thread_id, None)) is not None:  # its rig is back: the wait passed
                records.clear_thread_error(db, thread_id, waited)
                if self._passing.get(thread_id) == waited:
                    del self._passing[thread_id]
            if new == ThreadStatus.BLOCKED:
                records.set_thread_error(db, thread_id, "thread.blocked", reason, level=EventLevel.WARNING)
            elif new == ThreadStatus.RUNNING:
                steps.log_in(db, None, thread_id, "thread.running",
                             f"thread {thread_id} {thread.name!r} running: its rig is connected")
            else:
                self._log_wait(db, thread, connected)
            return True

    async def _note_wait(self, thread: queries.LiveThread, connected: dict[str, int]) -> None:
        """Log that a thread waits for its rig once per wait (a thread created waiting, or waiting at the server's
        start), and again when a rig whose name is close to its rig's connects meanwhile (a warning: a typo)."""
        close, logged = close_rigs(thread.rig, connected, self._gone_rigs), self._waits.get(thread.id)
        if logged is not None and close <= logged:
            return
        if await self._offload(self._log_wait_of, thread.id, sorted(connected)):
            self._waits[thread.id] = close | (logged or frozenset())

    def _log_wait_of(self, thread_id: int, connected: list[str]) -> bool:
        """``_log_wait`` in a transaction of its own, unless the thread stopped waiting meanwhile."""
        with self._db.begin() as db:
            thread = db.get(Thread, thread_id)
            if thread.status != ThreadStatus.WAITING_FOR_RIG:
                return False
            self._log_wait(db, thread, connected)
            return True

    def _log_wait(self, db: DBSession, thread: Thread, connected: list[str]) -> None:
        """The ``thread.waiting_for_rig`` event of a thread that waits for its rig; when a ``connected`` rig's name
        is close to its rig's, a warning that is also its ``last_error`` until its first round once its rig connects."""
        why, level = self._waiting_for(thread.session.rig, connected)
        if level == EventLevel.WARNING:
            thread.last_error = self._passing[thread.id] = self._wait_errors[thread.id] = why
        steps.log_in(db, None, thread.id, "thread.waiting_for_rig",
                     f"thread {thread.id} {thread.name!r} waiting_for_rig: {why}", level=level)

    def _waiting_for(self, rig: str, connected: list[str]) -> tuple[str, EventLevel]:
        """Why a thread waits for ``rig``, which is not among the ``connected`` rigs; a warning when a
        connected rig's name is close to it (a typo), unless ``rig`` was connected before and went silent."""
        if rig in self._gone_rigs:
            return f"waiting for rig {rig!r} to connect again: it went silent", EventLevel.INFO
        if not connected:
            return f"waiting for rig {rig!r} to connect", EventLevel.INFO
        names = ", ".join(map(repr, connected))
        if close_rigs(rig, connected):
            return (f"waiting for rig {rig!r}, which is not connected; connected: {names}. Rig names are exact "
                    "and case-sensitive: is the session's rig name right?"), EventLevel.WARNING
        return f"waiting for rig {rig!r} to connect (connected: {names})", EventLevel.INFO

    def _start_thread(self, thread_id: int, announce: bool, restarted: bool) -> ThreadRuntime | None:
        """The thread's runtime, rebuilt from the database; None if it ended since ``_reconcile`` read its
        status (a step that finished it ran in between on the compute worker), or waits for another thread.
        ``announce``: log the start (a thread stalled on storage logs its recovery instead); ``restarted``: the
        server's start took it up (it resumes after a restart). A ``last_error`` it has now (a refusal from before
        a restart, a block that lifted) is cleared by its next round or its end (``_take``)."""
        with self._db.begin() as db:
            thread = db.get(Thread, thread_id)
            if thread.status not in (ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG):
                return None
            try:
                runtime = build_runtime(db, thread_id, self.generators.get, self._archive, self.settings.render_chunk)
            except ThreadNotReady as exc:  # a Manifold map waiting for its source evolution: its last_error says so
                thread.last_error = str(exc)  # written only when it changes
                return None
            if (waited := manifold.waiting_message(thread)) is not None:
                records.clear_thread_error(db, thread_id, waited)
            if thread.last_error and thread.last_error != waited:
                self._passing[thread_id] = thread.last_error
            if announce and (event := start_event(runtime, thread.name, restarted,
                                                  thread.status == ThreadStatus.WAITING_FOR_RIG)) is not None:
                steps.log_in(db, runtime.session_id, thread_id, *event)
        freeze_heap()  # its generator and optimizer live as long as the thread
        return runtime

    def _log_paused_at_restart(self, thread_ids: list[int]) -> None:
        """At the server's start, the restart event of each paused thread with a history: its runtime is built
        only when a user resumes it, and that resume is no restart (its event is ``thread.started``, or
        ``thread.waiting_for_rig`` while its rig is not connected)."""
        with self._db.begin() as db:
            for thread_id in thread_ids:
                thread = db.get(Thread, thread_id)
                if (event := paused_at_restart(db, thread)) is not None:
                    steps.log_in(db, thread.session_id, thread_id, *event)

    async def _fail(self, thread_id: int, exc: Exception) -> None:
        """A step or start of the thread raised: its runtime goes. A storage fault stalls it (``_stall``),
        anything else fails it; nothing once ``close`` began (its workers shut down under the step: the restart
        takes the thread up as the database has it)."""
        self._threads.pop(thread_id, None)
        if self._closed:
            log.debug("thread %s: step ended by the server's stop (%s)", thread_id, exc)
        elif storage_fault(exc):
            await self._stall(thread_id, exc)
        elif not await self._offload(self._thread_error, thread_id, "thread.failed", f"failed: {exc}",
                                     EventLevel.ERROR, ThreadStatus.FAILED):
            log.info("thread %s had ended (a user stopped it) as its step raised: %s", thread_id, exc)
        else:
            # A generator's or our own error says all in one line (e.g. weights gone at a restart); others are bugs.
            explained = isinstance(exc, (GeneratorError, ServerError))
            log.error("thread %s failed: %s", thread_id, exc, exc_info=None if explained else exc)

    def _thread_error(self, thread_id: int, kind: str, message: str, level: EventLevel,
                      status: ThreadStatus | None = None) -> bool:
        with self._db.begin() as db:
            return records.set_thread_error(db, thread_id, kind, message, status=status, level=level)

    async def _stall(self, thread_id: int, exc: Exception) -> None:
        """Rebuild the thread once its storage works again: tried after 1 s, then waiting twice as long each
        time (at most ``STORAGE_RETRY_S[1]``). The episode's first failure is logged, and is the thread's
        ``last_error`` and an event if the database can take them; its recovery is too (``_unstall``)."""
        now, stall = time.monotonic(), self._stalled.get(thread_id)
        if stall is not None:
            stall.wait_s = min(2 * stall.wait_s, STORAGE_RETRY_S[1])
            stall.retry_at = now + stall.wait_s
            log.debug("thread %s: storage still fails (%s); next try in %g s", thread_id, exc, stall.wait_s)
            return
        error = (f"storage failed: {storage_advice(exc, self.settings)}; the thread tries again on its own (waiting "
                 f"up to {STORAGE_RETRY_S[1]:g} s between tries), losing nothing")
        self._stalled[thread_id] = Stall(error, now, STORAGE_RETRY_S[0], now + STORAGE_RETRY_S[0],
                                         _sqlite_code(exc) is not None)
        log.warning("thread %s: %s", thread_id, error)
        try:
            await self._offload(self._thread_error, thread_id, "thread.storage_failed", error, EventLevel.WARNING)
        except Exception as failure:
            if not storage_fault(failure):
                raise  # else the database is full too: the log line above is the record

    def storage_problem(self) -> str | None:
        """The storage failure a thread is stalled on (the first of them), for ``/health``; None when none is."""
        return next((f"thread {thread_id}: {stall.error}" for thread_id, stall in self._stalled.items()), None)

    def stall_of(self, thread_id: int) -> str | None:
        """The storage failure ``thread_id`` is stalled on (its ``last_error``, which a full database may not have
        taken: the REST API shows it from here), None when it is not stalled."""
        stall = self._stalled.get(thread_id)
        return stall.error if stall is not None else None

    async def _unstall(self, runtime: ThreadRuntime) -> None:
        """The stalled thread's step wrote again: clear its ``last_error`` and log its recovery."""
        stall = self._stalled.pop(runtime.id)
        message = (f"thread {runtime.id}: storage works again after {time.monotonic() - stall.since:.0f} s; "
                   "the thread goes on")

        def record(db):
            records.clear_thread_error(db, runtime.id, stall.error)
            steps.log_in(db, runtime.session_id, runtime.id, "thread.storage_recovered", message)
        await self._transact(record)

    async def _left_pending(self, runtime: ThreadRuntime) -> None:
        """Once its step (if any) is done: the event of a thread stopped with a generation pending."""
        async with runtime.lock:
            if runtime.inflight is not None:
                await self._transact(steps.left_pending, runtime)

    # ------------------------------------------------------------------ one generation
    async def _advance(self, runtime: ThreadRuntime) -> None:
        """Move a thread one step (one transaction, see ``steps.next_step``), then send the round it prepared."""
        async with runtime.lock:
            if self._threads.get(runtime.id) is runtime:
                await self._take(runtime)

    async def _take(self, runtime: ThreadRuntime, step=None, held: list | None = None) -> None:
        """Take the thread's step (``step``: what ``steps.answer`` already took, else ``steps.next_step`` now),
        render a large generation chunk by chunk, send the round, then publish the step's live items (``held``:
        those of ``steps.answer``); the caller holds the thread's lock."""
        held = [] if held is None else held
        try:
            cached = self._rig_references.setdefault(runtime.rig, set())
            if step is None:
                step = await self._transact(steps.next_step, runtime, self._channels(runtime.rig),
                                            frozenset(cached), self._archive, held=held)
            while step is steps.RENDER:  # one compute job per chunk: other threads and rigs get the worker between
                rendered = []
                for chunk in code_chunks(runtime.next_codes, runtime.render_chunk):
                    rendered += await self._offload(steps.render, runtime, chunk, self._archive)
                runtime.next_images = rendered
                step = await self._transact(steps.next_step, runtime, self._channels(runtime.rig),
                                            frozenset(cached), self._archive, held=held)
            wrote = step is steps.FINISHED or (  # a told generation or a new round, not a resend
                step is not None and step.header["batch_id"] != runtime.inflight.batch_id)
            if step is steps.FINISHED:
                self._threads.pop(runtime.id, None)
            elif step is not None:
                await self._send_round(runtime, step, cached, held)
            if runtime.snapshot is not None:  # after the send: the rig does not wait for it
                await self._store_snapshot(runtime)
            if wrote and runtime.id in self._stalled:
                await self._unstall(runtime)
            if wrote and (error := self._passing.pop(runtime.id, None)) is not None:
                await self._transact(records.clear_thread_error, runtime.id, error)
        except Exception as exc:
            await self._fail(runtime.id, exc)
        finally:
            live.publish_held(held)

    async def _store_snapshot(self, runtime: ThreadRuntime) -> None:
        """``steps.store_snapshot``, best effort: a snapshot that could not be written is a warning event
        (``thread.snapshot_failed``, when the database takes it), not a failed thread (a restart replays from the
        one before)."""
        number = runtime.snapshot.number
        try:
            await self._transact(steps.store_snapshot, runtime)
        except Exception as exc:
            runtime.snapshot = None
            message = (f"{runtime.drift.name}: the optimizer state after generation {number} was not stored "
                       f"({storage_advice(exc, self.settings) if storage_fault(exc) else exc}); the thread goes on, "
                       "and a restart replays its generations from the state stored before")
            try:
                await self._transact(steps.log_in, runtime.session_id, runtime.id, "thread.snapshot_failed", message,
                                     {"generation": number}, EventLevel.WARNING)
            except Exception:  # the database takes nothing now: the server log has it
                log.warning(message)

    def _channels(self, rig: str) -> int:
        """The channels ``rig`` announced, 0 when it is not connected."""
        connected = self.transport is not None and self.transport.connected(rig)
        return self.rig_channels.get(rig, 0) if connected else 0

    # ------------------------------------------------------------------ sending
    async def _send_round(self, runtime: ThreadRuntime, message: Message, cached: set[str], held: list) -> None:
        """Send a prepared BATCH (new, or the outstanding one again), its ``batch.sent`` notice added to ``held``;
        the rig caches the references it carries.

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
        inflight.last_activity = now = time.monotonic()
        data = {"batch_id": batch_id, "generation": inflight.number, "resent": resend}
        if runtime.answered_at is not None and not resend:  # how long the rig waited, and the compute in it
            data.update(waited_ms=1000 * (now - runtime.answered_at), compute_ms=1000 * runtime.compute_s)
            runtime.answered_at = None
        held.append(dict(kind="batch.sent", message=f"generation {inflight.number}: {len(stimuli)} stimuli "
                         f"{'resent' if resend else 'sent'}", session_id=runtime.session_id, thread_id=runtime.id,
                         data=data))
        inflight.archive_in(self._archive)  # in the background while the rig shows the round
        self._checkpoints.request()  # likewise

    def _forget_batch(self, batch_id: str) -> None:
        with self._db.begin() as db:
            db.delete(db.get(Batch, batch_id))

    async def _check_timeouts(self) -> None:
        """A round unanswered for ``batch_timeout_s`` is given up on: re-queue its stimuli or score NaN.

        The clock stops while the rig is away: what it shows meanwhile comes with its RESULTS after it
        reconnects (docs/protocol.md §6.5), and its resent round starts the clock again (until it is sent, the
        clock stays stopped: a rig back after the timeout gets its round, not a timeout and a second round).
        """
        now = time.monotonic()
        for runtime in list(self._threads.values()):
            inflight = runtime.inflight
            if inflight is None or not inflight.batch_id or not inflight.awaiting:
                continue
            if not self._channels(runtime.rig) or inflight.resend:
                inflight.last_activity = now  # stopped: it restarts from here, or from the resend
                continue
            if now - inflight.last_activity >= self.settings.batch_timeout_s:
                await self._transact(steps.log_in, runtime.session_id, runtime.id, "round.timed_out",
                                     f"thread {runtime.id} generation {inflight.number}: {len(inflight.awaiting)} "
                                     f"stimuli unanswered after {self.settings.batch_timeout_s:g} s", None,
                                     EventLevel.WARNING)
                inflight.awaiting.clear()
                self._step(runtime)
