"""SQLAlchemy ORM models: the one schema of the SQLite store.

Every change to these classes needs an Alembic migration in ``server/store/migrations/versions``;
``tests/server/test_store.py`` fails while the two disagree.

Conventions the engine relies on:
- times are timezone-aware UTC ``datetime``s (``utcnow()``), except ``Presentation.onset``,
  which is the rig's clock in unix seconds;
- ``*_json`` columns hold plain Python values (dict/list) serialised as JSON; a float NaN
  is stored as ``null``;
- ``codes``/``code`` hold little-endian float64 bytes (``encode_codes``/``decode_codes``).

The engine's hot-path statements (in ``queries`` and ``records``) skip the ORM and write through the
sqlite3 driver; ``stored_time``/``stored_json`` and ``read_time``/``read_json`` are the column formats
they use, the same text ``UTCDateTime`` and ``JSONValue`` store (``tests/server/test_store.py`` checks).
"""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from analysis.serialization import json_safe

# Named constraints, so later migrations can alter them on SQLite (batch mode needs names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the store's clock)."""
    return datetime.now(UTC)


def encode_codes(codes: np.ndarray) -> bytes:
    """Latent code(s) as little-endian float64 bytes, for ``Generation.codes`` and ``Stimulus.code``."""
    return np.ascontiguousarray(codes, dtype="<f8").tobytes()


def decode_codes(data: bytes, n: int | None = None) -> np.ndarray:
    """Inverse of ``encode_codes``: shape ``(n, dim)`` if ``n`` is given, else ``(dim,)``."""
    flat = np.frombuffer(data, dtype="<f8").astype(np.float64)
    return flat if n is None else flat.reshape(n, -1)


class JSONValue(TypeDecorator):
    """JSON text; non-finite floats (NaN, inf) and numpy scalars become valid JSON."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return json_safe(value)


def stored_json(value: Any) -> str | None:
    """A ``JSONValue`` column's text for ``value`` (None: SQL NULL)."""
    return None if value is None else json.dumps(json_safe(value))


def read_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def stored_time(value: datetime) -> str:
    """A ``UTCDateTime`` column's text for an aware ``value``: naive UTC, as SQLAlchemy writes SQLite DATETIME."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def read_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime (SQLite stores naive text; this restores the zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use server.store.models.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class SessionStatus(enum.StrEnum):
    ACTIVE = "active"
    STOPPED = "stopped"  # a user stopped it (every thread stopped)
    FINISHED = "finished"  # every thread ended on its own (finished, stopped or failed)


class ThreadStatus(enum.StrEnum):
    RUNNING = "running"  # stepping, or held back (``ThreadNotReady``, ``last_error`` says why): a Manifold map until
    # its source evolution ends, a thread while the server's generator is not the one its images were made with
    WAITING_FOR_RIG = "waiting_for_rig"  # its session's rig is not connected; starts when it is
    BLOCKED = "blocked"  # the rig announced too few channels for the objective (``last_error`` says)
    PAUSED = "paused"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"  # the engine could not go on (``last_error`` says why)


LIVE_THREAD_STATUSES = frozenset({ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG, ThreadStatus.BLOCKED})
ENDED_THREAD_STATUSES = frozenset({ThreadStatus.STOPPED, ThreadStatus.FINISHED, ThreadStatus.FAILED})


class GenerationStatus(enum.StrEnum):
    PENDING = "pending"
    COMPLETE = "complete"


class StimulusKind(enum.StrEnum):
    SYNTHETIC = "synthetic"
    REFERENCE = "reference"


class BatchStatus(enum.StrEnum):
    SENT = "sent"
    COMPLETE = "complete"
    TIMED_OUT = "timed_out"


def _status(enum_cls: type[enum.StrEnum]) -> Enum:
    """A VARCHAR column with a CHECK constraint holding the enum's values."""
    return Enum(
        enum_cls,
        name=enum_cls.__name__.lower(),
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda cls: [member.value for member in cls],
        validate_strings=True,
    )


class EventLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Session(Base):
    """One recording: a rig, an animal, an array, and the threads evolved in it."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    rig: Mapped[str] = mapped_column(String(200))
    animal: Mapped[str] = mapped_column(String(200), default="")
    array: Mapped[str] = mapped_column(String(200), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    config_json: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    status: Mapped[SessionStatus] = mapped_column(_status(SessionStatus), default=SessionStatus.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The ``Idempotency-Key`` of the POST that created it: a repeat of that POST answers this session.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), index=True, unique=True)

    threads: Mapped[list[Thread]] = relationship(back_populates="session", order_by="Thread.id")


class Thread(Base):
    """One evolution (or fixed-design experiment) inside a session."""

    __tablename__ = "threads"
    __table_args__ = (UniqueConstraint("session_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    generator: Mapped[str] = mapped_column(String(100))
    generator_version: Mapped[str | None] = mapped_column(String(100))  # set when the engine loads it
    optimizer: Mapped[str] = mapped_column(String(100))
    optimizer_params_json: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    objective_json: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    seed: Mapped[int] = mapped_column(Integer)
    n_generations: Mapped[int] = mapped_column(Integer)
    repeats: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[ThreadStatus] = mapped_column(_status(ThreadStatus), default=ThreadStatus.RUNNING)
    last_error: Mapped[str | None] = mapped_column(Text)  # the latest refusal or failure, for REST
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    session: Mapped[Session] = relationship(back_populates="threads")
    generations: Mapped[list[Generation]] = relationship(
        back_populates="thread", order_by="Generation.number"
    )


class Generation(Base):
    """The codes one ``ask`` returned and, once complete, the scores and the optimizer state after ``tell``."""

    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("thread_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id"))
    number: Mapped[int] = mapped_column(Integer)  # 0-based
    status: Mapped[GenerationStatus] = mapped_column(
        _status(GenerationStatus), default=GenerationStatus.PENDING
    )
    codes: Mapped[bytes] = mapped_column(LargeBinary)  # (n_stimuli, dim) float64, encode_codes
    n_stimuli: Mapped[int] = mapped_column(Integer)
    # optimizers.dumps_state after tell, kept at snapshot generations only (0, 1, 2, 4, 8, ...) and written after
    # their step (may be missing after a crash); the others are replayed from the last one stored, or from the
    # fresh optimizer, through ask/tell (server.thread_runtime.restore_optimizer)
    optimizer_state: Mapped[bytes | None] = mapped_column(LargeBinary)
    optimizer_summary_json: Mapped[dict | None] = mapped_column(JSONValue)  # optimizers.state_summary after tell
    scores_json: Mapped[list[float | None] | None] = mapped_column(JSONValue)  # per stimulus, NaN -> null
    mean_score: Mapped[float | None] = mapped_column(Float)
    max_score: Mapped[float | None] = mapped_column(Float)
    reference_mean: Mapped[float | None] = mapped_column(Float)
    objective_json: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)  # the thread's objective when asked
    n_scored: Mapped[int] = mapped_column(Integer, default=0)
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    thread: Mapped[Thread] = relationship(back_populates="generations")
    stimuli: Mapped[list[Stimulus]] = relationship(order_by="Stimulus.index")


class Stimulus(Base):
    """One image: a synthetic code rendered by a generator, or a reference (natural) image.

    ``id`` is what the rig sees and must be unique across the whole store (a uuid for synthetic
    images; e.g. ``f"ref-{session_id}-{content_hash[:12]}"`` for references).
    """

    __tablename__ = "stimuli"
    # A session's references, found without reading its synthetic stimuli (every RESULTS checks them); also
    # the index on session_id.
    __table_args__ = (Index("ix_stimuli_session_kind", "session_id", "kind"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id"), index=True)
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id"), index=True)
    kind: Mapped[StimulusKind] = mapped_column(_status(StimulusKind))
    index: Mapped[int | None] = mapped_column(Integer)  # position in its generation
    code: Mapped[bytes | None] = mapped_column(LargeBinary)  # (dim,) float64, encode_codes
    content_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the PNG bytes (not indexed: never searched)
    png_path: Mapped[str] = mapped_column(String(200))  # relative to data_dir
    generator: Mapped[str | None] = mapped_column(String(100))
    generator_version: Mapped[str | None] = mapped_column(String(100))
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Batch(Base):
    """What was sent to which rig for one generation, and when it was answered."""

    __tablename__ = "batches"
    # A rig's latest batches (the dashboard's rig panel), without reading every session's.
    __table_args__ = (Index("ix_batches_rig_sent_at", "rig", "sent_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # uuid4 hex
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id"), index=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    rig: Mapped[str] = mapped_column(String(200))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    results_first_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[BatchStatus] = mapped_column(_status(BatchStatus), default=BatchStatus.SENT)


class Presentation(Base):
    """One showing of one stimulus and the rates it evoked; ``presentation_id`` (rig-made) is unique."""

    __tablename__ = "presentations"

    id: Mapped[int] = mapped_column(primary_key=True)
    presentation_id: Mapped[str] = mapped_column(String(64), unique=True)
    stimulus_id: Mapped[str] = mapped_column(ForeignKey("stimuli.id"), index=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    rig: Mapped[str] = mapped_column(String(200))
    onset: Mapped[float] = mapped_column(Float)  # rig clock, unix seconds
    rates_json: Mapped[list[float | None]] = mapped_column(JSONValue)  # one rate per channel
    window_start_ms: Mapped[float] = mapped_column(Float)
    window_end_ms: Mapped[float] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Protocol 1.1 trial facts as sent (fixation_broken, dropped_frames, photodiode_onset, baseline_rates,
    # baseline_window_ms); None when the rig sent none. server.export.tables.TRIAL_FACTS_ATTRIBUTE names it.
    trial_json: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)


# Every kind of event the server logs (an ``Event.kind``), with what it means; docs/rest_api.md "Events" has the
# details (``tests/server/test_rest_loose_ends.py`` checks both against the kinds the code logs).
EVENT_KINDS: dict[str, str] = {
    "session.created": "a session was created",
    "session.finished": "every thread of the session ended on its own",
    "session.stopped": "a user stopped the session",
    "session.note": "a user's note (POST /sessions/{id}/notes)",
    "session.references_rebuilt": "reference images the archive lost, rendered again from their source",
    "thread.added": "a thread was added to the session",
    "thread.optimizer": "the hyperparameters a new thread's optimizer runs with",
    "thread.unusual_settings": "a setting far from the generator's own",
    "thread.runtime": "the server built the thread: the software, device and weights it runs on",
    "thread.generator_changed": "the server loaded other weights than the thread's images were made with",
    "thread.started": "a thread was taken up while its rig is connected",
    "thread.resumed": "a thread with a history taken up after a server restart",
    "thread.running": "the thread runs (resumed, or its rig connected)",
    "thread.waiting_for_rig": "the thread waits for its rig to connect",
    "thread.blocked": "the rig announced too few channels for the thread's objective",
    "thread.paused": "the thread was paused",
    "thread.stopped": "the thread was stopped",
    "thread.retargeted": "the thread's objective changed",
    "thread.extended": "the thread's number of generations changed",
    "thread.finished": "the thread ran all its generations",
    "thread.failed": "the engine could not go on with the thread",
    "thread.storage_failed": "the thread's data could not be written; it retries",
    "thread.storage_recovered": "the thread's data is written again",
    "thread.snapshot_failed": "a snapshot generation's optimizer state could not be written; the thread goes on",
    "results.refused": "RESULTS the server refused",
    "results.late": "presentations for a batch whose generation was already scored",
    "round.timed_out": "stimuli of a batch went unanswered within the batch timeout",
    "generation.timed_out": "a generation ended with images or references unscored",
    "generation.left_pending": "the thread stopped with this generation in flight",
    "generation.completed": "a generation was scored: the curve point",
    "drift.reference": "the reference images' rates drifted",
    "channel.silent": "a recorded channel fell silent (scored or not)",
    "rig.connected": "a rig said HELLO",
    "rig.lost": "a rig went silent",
    "rig.replaced": "a second connection said HELLO under a live rig's name",
    "rig.channels_changed": "a rig came back with other channels",
    "rig.setup_changed": "a rig came back with another setup (protocol 1.2 HELLO)",
    "rig.clock_offset": "a rig's onsets lie far from their arrival (its clock)",
}
# Items of the live stream (``GET /live``) that are not logged: never in the event log.
LIVE_NOTICES: dict[str, str] = {
    "batch.sent": "a BATCH went to the rig",
    "batch.answered": "RESULTS of a batch were stored",
}


class Event(Base):
    """A log line for the session record: state changes, timeouts, alarms (``EVENT_KINDS``)."""

    __tablename__ = "events"
    # A thread's events of one kind (the drift monitor reads its curve at every generation); also the index on
    # thread_id.
    __table_args__ = (Index("ix_events_thread_kind", "thread_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id"), index=True)
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id"))
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[EventLevel] = mapped_column(_status(EventLevel), default=EventLevel.INFO)
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data_json: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
