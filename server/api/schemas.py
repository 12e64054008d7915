"""Response models: the REST contract (kept apart from the ORM models in ``server.store.models``)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    SkipValidation,
    ValidationInfo,
    computed_field,
    field_validator,
)

from server.objectives import score_label
from server.session_config import ObjectiveConfig, SessionConfig
from server.store.models import (
    EventLevel,
    GenerationStatus,
    SessionStatus,
    StimulusKind,
    ThreadStatus,
    decode_codes,
)

Item = TypeVar("Item")


class _FromORM(BaseModel):
    model_config = ConfigDict(from_attributes=True, validate_by_name=True, validate_by_alias=True)


class ErrorDetail(BaseModel):
    """The body of every error but a request's validation 422 (``HTTPValidationError``): 401, 404, 409, 413, 500,
    501, 503."""

    detail: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    db: bool = Field(description="Whether the database can be read and written (and no request met a database "
                     "error in the last minute).")
    problem: str | None = Field(None, description="What is wrong when degraded, and what to do.")


class SessionRead(_FromORM):
    id: int
    name: str
    rig: str
    animal: str
    array: str
    notes: str
    status: SessionStatus = Field(description="active, stopped or finished (every thread ended, failed ones too: "
                                  "`threads_by_status` tells them apart).")
    created_at: datetime
    # A SessionConfig to clients, served as stored (one was dumped there): not validated again on every read.
    config: SkipValidation[SerializeAsAny[SessionConfig]] = Field(
        validation_alias="config_json", description="The config, seeds filled in.")
    threads_by_status: dict[ThreadStatus, int] = Field(
        validation_alias="threads", description='How many of its threads have each status, those with none left out: '
        '{"finished": 2, "failed": 1} is a finished session one of whose threads failed.')

    @field_validator("threads_by_status", mode="before")
    @classmethod
    def _count(cls, threads: list | dict) -> dict:
        return threads if isinstance(threads, dict) else dict(Counter(thread.status for thread in threads))


class ThreadRead(_FromORM):
    id: int
    session_id: int
    name: str
    kind: str
    generator: str
    generator_version: str | None
    optimizer: str
    optimizer_params: dict[str, Any] = Field(validation_alias="optimizer_params_json")
    objective: dict[str, Any] = Field(validation_alias="objective_json")
    seed: int
    n_generations: int
    repeats: int
    status: ThreadStatus = Field(description="running, waiting_for_rig, blocked, paused, stopped, finished or failed.")
    last_error: str | None = Field(description="Why it is blocked, stalled, waiting or failed; or the latest refusal of "
                                              "its rig's results, until its next round or its end.")
    created_at: datetime

    @computed_field(description='What its scores are, for a chart axis: "score (spikes/s)" for a channels objective, '
                                'else "score = <expression>" (a z-score has no unit).')
    @property
    def score_label(self) -> str:
        return score_label(self.objective)


class SessionWithThreads(SessionRead):
    threads: list[ThreadRead]
    channel_labels: list[str] | None = Field(
        None, description="Channel labels of the session rig's last HELLO that sent them (protocol 1.1) at or "
        "before the session's last presentation; null if it never did. Channel i of every presentation's rates "
        "is labels[i].")
    rig_setup: dict[str, Any] | None = Field(
        None, description="What the session rig's program said of itself in its last HELLO (protocol 1.2 `setup`: e.g. "
        "its viewing distance, or a simulation's noise) at or before the session's last presentation; null if it "
        "said nothing.")


class GeneratorRead(BaseModel):
    name: str
    found: bool = Field(description="Whether its weights load from where the server looks.")
    source: str = Field(description='ACTMAX_WEIGHTS_DIR/<name> when that folder exists, else "standard locations".')
    weights_sha256: str | None
    problem: str | None = Field(description="Why it does not load, with every path tried.")


class Retarget(BaseModel):
    """``POST /threads/{id}/retarget``: the thread's new objective (``session_config.md``, objective)."""

    model_config = ConfigDict(extra="forbid")

    objective: ObjectiveConfig


class GenerationSummary(_FromORM):
    id: int
    thread_id: int
    number: int
    status: GenerationStatus
    n_stimuli: int
    n_scored: int
    scores: list[float | None] | None = Field(
        validation_alias="scores_json", description="Per stimulus; null = not scored."
    )
    mean_score: float | None
    max_score: float | None
    reference_mean: float | None
    objective: dict[str, Any] | None = Field(validation_alias="objective_json",
                                             description="The thread's objective this generation was scored with.")
    asked_at: datetime
    completed_at: datetime | None
    rig_latency_s: float | None = Field(
        None, description="Mean seconds from sending each of its batches to the rig's first results.")


class GenerationRead(GenerationSummary):
    stimulus_ids: list[str] = Field(description="Synthetic stimuli in generation order (scores align with them).")


class StimulusRead(_FromORM):
    id: str
    session_id: int
    thread_id: int | None
    generation_id: int | None
    kind: StimulusKind
    index: int | None
    code: list[float] | None = Field(description="Latent code; null for reference images.")
    content_hash: str = Field(description="sha256 of the PNG bytes.")
    generator: str | None
    generator_version: str | None
    weights_sha256: str | None
    created_at: datetime

    @field_validator("code", mode="before")
    @classmethod
    def _decode(cls, code: bytes | list[float] | None) -> list[float] | None:
        return decode_codes(code).tolist() if isinstance(code, bytes) else code


class PresentationRead(_FromORM):
    id: int
    presentation_id: str
    stimulus_id: str
    batch_id: str
    rig: str
    onset: float = Field(description="Rig clock, unix seconds.")
    rates: list[float | None] = Field(validation_alias="rates_json", description="One rate per channel.")
    window_start_ms: float
    window_end_ms: float
    received_at: datetime
    trial_facts: dict[str, Any] | None = Field(
        None, validation_alias="trial_json", description="Protocol 1.1 trial facts as the rig sent them; null: none.")


class EventRead(_FromORM):
    id: int
    session_id: int | None
    thread_id: int | None
    time: datetime
    level: EventLevel
    kind: str
    message: str
    data: dict[str, Any] | None = Field(validation_alias="data_json")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    total: int = Field(description="Rows in the whole collection.")
    offset: int
    limit: int


class ManifoldPlaneRead(BaseModel):
    """The analysis of one plane of a Manifold map (docs/tuning_maps.md explains each part)."""

    plane: str
    signature: dict[str, Any]
    persistence: dict[str, Any]
    axis_ratio: dict[str, Any]
    kent: dict[str, Any]
    smoothing: float = Field(description="The spline's smoothing factor s (sum of SEM^2; 0 with one trial per point).")
    note: str | None = Field(description="What was left out and why (e.g. reliability, with one trial per point).")
    split_half: dict[str, Any] | None
    bootstrap: dict[str, Any] | None


class CurvePoint(BaseModel):
    """One completed generation on the score curve (scores in the objective's units, spikes/s by default)."""

    generation: int
    generation_id: int
    mean: float | None
    sem: float | None = Field(description="Standard error of the mean over the generation's scored images.")
    max: float | None
    reference_mean: float | None
    reference_sem: float | None = Field(description="Over the reference images; null before the drift monitor.")
    best_stimulus_id: str | None = Field(description="The generation's highest-scoring image.")
    completed_at: datetime | None


class CurveSegment(BaseModel):
    """Generations scored with one objective, from ``from_generation`` to the next segment's."""

    from_generation: int
    score_label: str = Field(description="What these generations' scores are, as the thread's ``score_label``.")


class Curve(BaseModel):
    thread_id: int
    total: int = Field(description="Completed generations asked for; points are evenly decimated when more than max_points.")
    points: list[CurvePoint]
    segments: list[CurveSegment] = Field(description="Where each objective begins, among the completed generations "
                                         "from from_generation on (all of them without it): more than one after a "
                                         "retarget.")


class BatchTiming(BaseModel):
    batch_id: str
    thread_id: int
    generation: int
    sent_at: datetime
    first_result_ms: float | None = Field(description="Sent -> first presentation stored.")
    complete_ms: float | None = Field(description="Sent -> generation complete.")
    turnaround_ms: float | None = Field(description="Previous generation complete -> this batch sent (server time).")


class RigSummary(BaseModel):
    rig: str
    connected: bool
    channels: int | None = Field(description="Channels announced in its HELLO; null when not connected.")
    sessions: list[int] = Field(description="The active sessions whose rig this is.")


class RigStatus(BaseModel):
    rig: str
    connected: bool
    channels: int | None
    channel_labels: list[str] | None = Field(
        None, description="Labels of the rig's latest HELLO that sent them (protocol 1.1); null if none did.")
    setup: dict[str, Any] | None = Field(
        None, description="What the rig's program said of itself in its latest HELLO (protocol 1.2); null if nothing.")
    minor: int | None = Field(None, description="Protocol minor version negotiated with the connected rig.")
    heard_s_ago: float | None = Field(description="Seconds since the rig's last message or heartbeat.")
    heartbeat_s: float | None
    scored_channels: dict[int, list[str]] = Field(description="Channel -> the threads whose objective scores it.")
    batches: list[BatchTiming] = Field(description="The latest batches, newest first.")


MAX_INT = 2**63 - 1  # SQLite's INTEGER, as server.api.deps.MAX_ID (which imports this module)


class NoteCreate(BaseModel):
    """``POST /sessions/{id}/notes``: a note for the session's record, written afterwards too (``session.note``)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    text: str = Field(min_length=1, max_length=2000, description='e.g. "animal broke fixation".')
    thread_id: int | None = Field(None, strict=True, ge=0, le=MAX_INT,
                                  description="The thread of the session the note is about; null: the session.")
    generations: tuple[int, int] | None = Field(
        None, description="[first, last]: the thread's generations the note is about (0-based, both included); "
        "needs thread_id.")

    @field_validator("generations")
    @classmethod
    def _generations(cls, generations: tuple[int, int] | None, info: ValidationInfo) -> tuple[int, int] | None:
        if generations is None:
            return None
        if "thread_id" in info.data and info.data["thread_id"] is None:  # (absent: thread_id is refused itself)
            raise ValueError("generations need thread_id: the thread whose generations they are")
        first, last = generations
        if not 0 <= first <= last <= MAX_INT:
            raise ValueError(f"[{first}, {last}] is no range of generations: give [first, last] with "
                             "0 <= first <= last (numbers from 0, as GET /threads/{id}/generations shows them)")
        return generations
