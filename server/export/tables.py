"""The tidy tables of one session, built once from the store; the NWB, Parquet and CSV exports all read them.

Six pandas DataFrames (``SessionTables``), described column by column in docs/export.md:
``session`` (one row: the recording and its subject), ``channels``, ``threads``, ``generations``,
``stimuli`` (one row per image, references first) and ``presentations`` (one row per showing, in onset
order). A new fact about a session gets its column here, and every format exports it.

Optional columns appear only when the store holds the data:
- channel labels: those of the session rig's latest HELLO that sent them (``queries.rig_channel_labels``;
  rigs on protocol 1.1 send them) when they match the channel count; otherwise ``channels.label`` is empty;
- trial facts (e.g. ``fixation_broken``, ``dropped_frames``, ``photodiode_onset``, ``baseline_rates``):
  every key of a presentation's ``trial_json`` object, one column each, missing values empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

import optimizers
from server.objectives import objective_channels
from server.session_config import FlaggedTrialsConfig
from server.store import queries
from server.store.models import (
    LIVE_THREAD_STATUSES,
    Batch,
    Generation,
    GenerationStatus,
    Presentation,
    Session,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
    decode_codes,
)

TRIAL_FACTS_ATTRIBUTE = "trial_json"  # a presentation's optional JSON object of per-trial facts
LIVE_STATUSES = (*LIVE_THREAD_STATUSES, ThreadStatus.PAUSED)  # threads that have not ended


# What each column holds: the NWB column descriptions and docs/export.md say the same.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "session": {
        "session_id": "Id of the session in the actmax store.",
        "session_name": "Human name of the recording.",
        "rig": "Name of the rig that ran it.",
        "animal": "Animal identifier as configured.",
        "array": "Electrode array / recording site.",
        "notes": "Free-text notes.",
        "subject_id": "Subject identifier (config subject_id, else animal, else 'unknown').",
        "species": "Species, Latin binomial ('' when not configured).",
        "sex": "Subject sex: M, F, U (unknown), O (other).",
        "age": "Subject age, ISO 8601 duration ('P0D/', 0 days or older, when not configured).",
        "lab": "Lab ('' when not configured).",
        "experimenter": "Experimenter, 'Last, First' ('' when not configured).",
        "session_start_time": "Configured start time, else when the session was created (UTC).",
        "created_at": "When the session was created on the server (UTC).",
        "response_window_ms": "Spike-counting window after onset requested from the rig, [start, end] ms.",
    },
    "channels": {
        "channel": "Channel index: position in every presentation's rates.",
        "label": "Channel label reported by the rig ('' when it gave none).",
    },
    "threads": {
        "thread_id": "Id of the thread in the actmax store.",
        "thread_name": "Thread name, unique in the session.",
        "kind": "'evolution' or 'manifold'.",
        "generator": "Generator network turning latent codes into images.",
        "generator_version": "Version of the generator's weights the engine loaded.",
        "optimizer": "Optimizer name ('manifold' for a manifold thread's fixed design).",
        "optimizer_params": "Optimizer hyperparameters as configured (a manifold thread's grid).",
        "objective_channels": "Channels whose rates make the thread's score.",
        "objective_combine": "How those channels' rates combine into one score: 'mean' or 'sum' (empty for an "
                             "expression).",
        "objective_expression": "The objective expression that makes the score (empty when channels combine).",
        "seed": "Seed of the thread's optimizer.",
        "n_generations": "Generations the thread was configured to run.",
        "repeats": "Presentations of each image per generation.",
        "status": "Final status: 'finished' or 'stopped'.",
    },
    "generations": {
        "thread_id": "Thread the generation belongs to.",
        "generation": "Generation number in its thread, from 0.",
        "status": "'complete' (scored, optimizer told) or 'pending' (its thread stopped first).",
        "n_stimuli": "Synthetic images the optimizer asked for.",
        "n_scored": "Of those, images with a finite score.",
        "mean_score": "Mean score of the scored synthetic images.",
        "max_score": "Highest score among them.",
        "reference_mean": "Mean score of the reference images shown with this generation.",
        "best_score_so_far": "Best score the optimizer had seen after this generation.",
        "sigma": "Step size of the optimizer after this generation (NaN for optimizers without one).",
        "mean_norm": "Norm of the optimizer's search mean (population mean for GA) after this generation.",
        "asked_at": "When the optimizer proposed the codes (UTC).",
        "completed_at": "When the generation was scored (UTC; empty while pending).",
    },
    "stimuli": {
        "stimulus_id": "Id the rig saw (uuid for synthetic images, 'ref-...' for references).",
        "kind": "'synthetic' (rendered from a latent code) or 'reference' (natural image).",
        "thread_id": "Thread that made a synthetic image (-1/empty for references).",
        "generation": "Generation that made it (-1/empty for references).",
        "index_in_generation": "Position in its generation's codes (-1/empty for references).",
        "score": "The image's score under its thread's objective (NaN: not scored, or a reference).",
        "content_hash": "sha256 of the PNG bytes sent to the rig.",
        "png_path": "Path of the PNG in the server's data folder.",
        "generator": "Generator that rendered it ('' for references).",
        "generator_version": "Version of that generator ('' for references).",
        "weights_sha256": "sha256 of the generator weights ('' when unknown).",
        "latent_code": "Latent code the image was rendered from (empty for references).",
        "created_at": "When the image was made (UTC).",
    },
    "presentations": {
        "presentation_id": "Rig-made id of this showing (uuid).",
        "stimulus_id": "Image shown.",
        "stimulus_index": "Row of that image in the stimuli table (and in the NWB image container).",
        "thread_id": "Thread whose batch showed it.",
        "generation": "Generation of that batch.",
        "batch_id": "Batch that carried it.",
        "rig": "Rig that showed it.",
        "onset": "Stimulus onset on the rig's clock, unix seconds.",
        "window_start_ms": "Start of the spike-counting window after onset, ms.",
        "window_end_ms": "End of the spike-counting window after onset, ms.",
        "rates": "Spike rate per channel in the window, spikes/s (NaN where the rig sent none).",
        "scored": "Whether these rates entered a generation's scores.",
        "received_at": "When the server stored it (UTC).",
    },
}
TRIAL_FACT_DESCRIPTION = "Trial fact reported by the rig with this presentation."


class ExportError(ValueError):
    """A session that cannot be exported (unknown, or still running); the message says what to do."""


# What to do about an ExportError, in the words of its reader: REST routes, or `actmax` commands.
REST_HINTS = {"list": "GET /sessions", "stop": "POST /sessions/{id}/stop or /threads/{{id}}/stop"}
CLI_HINTS = {"list": "`actmax session list`", "stop": "`actmax session stop {id}` or `actmax thread stop ID`"}


class SessionRunning(ExportError):
    """The session still has running or paused threads: its record is not final yet."""


@dataclass
class SessionTables:
    session: pd.DataFrame
    channels: pd.DataFrame
    threads: pd.DataFrame
    generations: pd.DataFrame
    stimuli: pd.DataFrame
    presentations: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        """``(name, table)`` pairs in a fixed order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def session_tables(db: DBSession, session_id: int, hints: dict[str, str] = REST_HINTS) -> SessionTables:
    """All tables of a finished (or stopped) session.

    Raises ``ExportError`` for an unknown session and ``SessionRunning`` while any thread has not ended
    (``LIVE_STATUSES``): an export is a final record, so a live session is refused rather than written half-done.
    Their messages say what to do with ``hints`` (``REST_HINTS`` or ``CLI_HINTS``).
    """
    session = db.get(Session, session_id)
    if session is None:
        raise ExportError(f"session {session_id} not found; list sessions with {hints['list']}")
    live = [f"{t.name} ({t.status.value})" for t in session.threads if t.status in LIVE_STATUSES]
    if live:
        raise SessionRunning(f"session {session_id} is still running: {', '.join(live)}; wait until its threads "
                             f"finish or stop them ({hints['stop'].format(id=session_id)}), then export")
    stimuli = _stimuli(db, session)
    presentations = _presentations(db, session, stimuli)
    return SessionTables(
        session=_session(session),
        channels=_channels(db, session, presentations),
        threads=_threads(session),
        generations=_generations(db, session),
        stimuli=stimuli,
        presentations=presentations,
    )


def session_start_time(session: Session) -> datetime:
    """The configured start time, else when the session was created (timezone-aware)."""
    configured = session.config_json.get("session_start_time")
    return datetime.fromisoformat(configured) if configured else session.created_at


def _session(session: Session) -> pd.DataFrame:
    config = session.config_json
    return pd.DataFrame([{
        "session_id": session.id,
        "session_name": session.name,
        "rig": session.rig,
        "animal": session.animal,
        "array": session.array,
        "notes": session.notes,
        "subject_id": config.get("subject_id") or session.animal or "unknown",
        "species": config.get("species", ""),
        "sex": config.get("sex", "U"),
        "age": config.get("age") or "P0D/",
        "lab": config.get("lab", ""),
        "experimenter": config.get("experimenter", ""),
        "session_start_time": session_start_time(session).astimezone(UTC),
        "created_at": session.created_at,
        "response_window_ms": list(config.get("response_window_ms", [])),
    }])


def _channels(db: DBSession, session: Session, presentations: pd.DataFrame) -> pd.DataFrame:
    n = max((len(r) for r in presentations["rates"]), default=0)
    labels = queries.rig_channel_labels(db, session.rig)
    labels = labels if labels is not None and len(labels) == n else [""] * n
    return pd.DataFrame({"channel": np.arange(n), "label": pd.Series(labels, dtype=str)})


def _threads(session: Session) -> pd.DataFrame:
    return pd.DataFrame([{
        "thread_id": t.id,
        "thread_name": t.name,
        "kind": t.kind,
        "generator": t.generator,
        "generator_version": t.generator_version or "",
        "optimizer": t.optimizer,
        "optimizer_params": t.optimizer_params_json,
        "objective_channels": objective_channels(t.objective_json),
        "objective_combine": "" if "expression" in t.objective_json else t.objective_json.get("combine", "mean"),
        "objective_expression": t.objective_json.get("expression", ""),
        "seed": t.seed,
        "n_generations": t.n_generations,
        "repeats": t.repeats,
        "status": t.status.value,
    } for t in session.threads])


def _state_summary(g: Generation) -> tuple[float, float, float]:
    """(sigma, norm of the search mean, best score so far) after a generation's tell; NaN where there is none.

    Read from the stored summary; databases written before summaries were kept have the full state.
    """
    summary = g.optimizer_summary_json
    if summary is None and g.optimizer_state is not None:
        summary = optimizers.state_summary(optimizers.loads_state(g.optimizer_state))
    summary = summary or {}
    return tuple(np.nan if summary.get(k) is None else summary[k] for k in ("sigma", "mean_norm", "best_score"))


def _generations(db: DBSession, session: Session) -> pd.DataFrame:
    rows = []
    for g in db.scalars(select(Generation).join(Thread).where(Thread.session_id == session.id)
                        .order_by(Generation.thread_id, Generation.number)):
        sigma, mean_norm, best = _state_summary(g)
        rows.append({
            "thread_id": g.thread_id, "generation": g.number, "status": g.status.value, "n_stimuli": g.n_stimuli,
            "n_scored": g.n_scored, "mean_score": g.mean_score, "max_score": g.max_score,
            "reference_mean": g.reference_mean, "best_score_so_far": best, "sigma": sigma, "mean_norm": mean_norm,
            "asked_at": g.asked_at, "completed_at": g.completed_at,
        })
    return _frame(rows, ["thread_id", "generation", "status", "n_stimuli", "n_scored", "mean_score", "max_score",
                         "reference_mean", "best_score_so_far", "sigma", "mean_norm", "asked_at", "completed_at"],
                  floats=["mean_score", "max_score", "reference_mean"])


def _stimuli(db: DBSession, session: Session) -> pd.DataFrame:
    rows = []
    # Generation columns one by one: the whole row would fetch its codes and optimizer state per stimulus.
    query = (select(Stimulus, Generation.number, Generation.scores_json)
             .outerjoin(Generation, Generation.id == Stimulus.generation_id).where(Stimulus.session_id == session.id)
             .order_by(Stimulus.kind != StimulusKind.REFERENCE, Stimulus.thread_id, Generation.number,
                       Stimulus.index, Stimulus.id))
    for s, number, scores in db.execute(query):
        scores = scores or []
        rows.append({
            "stimulus_id": s.id, "kind": s.kind.value, "thread_id": s.thread_id,
            "generation": number, "index_in_generation": s.index,
            "score": scores[s.index] if s.index is not None and s.index < len(scores) else None,
            "content_hash": s.content_hash, "png_path": s.png_path, "generator": s.generator or "",
            "generator_version": s.generator_version or "", "weights_sha256": s.weights_sha256 or "",
            "latent_code": [] if s.code is None else decode_codes(s.code).tolist(), "created_at": s.created_at,
        })
    return _frame(rows, ["stimulus_id", "kind", "thread_id", "generation", "index_in_generation", "score",
                         "content_hash", "png_path", "generator", "generator_version", "weights_sha256",
                         "latent_code", "created_at"],
                  ints=["thread_id", "generation", "index_in_generation"], floats=["score"])


def _presentations(db: DBSession, session: Session, stimuli: pd.DataFrame) -> pd.DataFrame:
    image_index = {sid: i for i, sid in enumerate(stimuli["stimulus_id"])}
    flagged = FlaggedTrialsConfig.model_validate(session.config_json.get("flagged_trials", {}))
    query = (select(Presentation, Batch.thread_id, Generation.number, Generation.status, Generation.completed_at)
             .join(Batch, Batch.id == Presentation.batch_id).join(Generation, Generation.id == Batch.generation_id)
             .where(Batch.session_id == session.id).order_by(Presentation.onset, Presentation.id))
    rows, facts = [], []
    for p, thread_id, number, status, completed_at in db.execute(query):
        rows.append({
            "presentation_id": p.presentation_id, "stimulus_id": p.stimulus_id,
            "stimulus_index": image_index[p.stimulus_id], "thread_id": thread_id, "generation": number,
            "batch_id": p.batch_id, "rig": p.rig, "onset": p.onset,
            "window_start_ms": p.window_start_ms, "window_end_ms": p.window_end_ms,
            "rates": [np.nan if r is None else float(r) for r in p.rates_json],
            # Scored: its generation completed, it arrived before that (a late upload changed no score), and the
            # session's flagged-trial policy scores it.
            "scored": status == GenerationStatus.COMPLETE and completed_at is not None
            and p.received_at <= completed_at and flagged.scores(getattr(p, TRIAL_FACTS_ATTRIBUTE)),
            "received_at": p.received_at,
        })
        facts.append(getattr(p, TRIAL_FACTS_ATTRIBUTE, None))
    frame = _frame(rows, ["presentation_id", "stimulus_id", "stimulus_index", "thread_id", "generation", "batch_id",
                          "rig", "onset", "window_start_ms", "window_end_ms", "rates", "scored", "received_at"])
    return frame.assign(**trial_fact_columns(facts))


def trial_fact_columns(facts: list[dict[str, Any] | None]) -> dict[str, list[Any]]:
    """One column per key any presentation's trial facts hold, in first-seen order; None where absent."""
    keys = list(dict.fromkeys(key for f in facts if f for key in f))
    return {key: [(f or {}).get(key) for f in facts] for key in keys}


def _frame(rows: list[dict], columns: list[str], ints: list[str] = (), floats: list[str] = ()) -> pd.DataFrame:
    """A DataFrame with these columns even when empty; nullable integers and float NaN for missing values."""
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({**{c: "Int64" for c in ints}, **{c: "float64" for c in floats}})


TABULAR_FORMATS = ("parquet", "csv")


def write_tables(tables: SessionTables, out_dir: str | Path, fmt: str) -> list[Path]:
    """Write each table as ``<out_dir>/<name>.parquet`` or ``.csv``; returns the paths written.

    Dict cells (``threads.optimizer_params``) become JSON text in both formats; list cells (rates, latent
    codes, channels) stay lists in Parquet and become JSON arrays in CSV; times stay UTC timestamps.
    """
    if fmt not in TABULAR_FORMATS:
        raise ExportError(f"unknown table format {fmt!r}; use one of {', '.join(TABULAR_FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in tables.items():
        frame = frame.copy()
        for column in frame.columns:
            if frame[column].map(lambda v: isinstance(v, dict) or (fmt == "csv" and isinstance(v, list))).any():
                frame[column] = frame[column].map(_json_text)
        path = out_dir / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def _json_text(value: Any) -> str:
    """JSON text for a list or dict cell; NaN becomes null (JSON has no NaN)."""
    if isinstance(value, list):
        value = [None if isinstance(x, float) and np.isnan(x) else x for x in value]
    return json.dumps(value)
