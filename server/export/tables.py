"""The tidy tables of one session, built once from the store; the NWB, Parquet and CSV exports all read them.

Seven pandas DataFrames (``SessionTables``), described column by column in docs/export.md:
``session`` (one row: the recording and its subject), ``channels``, ``threads``, ``generations``,
``stimuli`` (one row per image, references first), ``presentations`` (one row per showing, in onset
order) and ``events`` (the session's event log: pauses, rig losses, stops, retargets, notes, ...).
A new fact about a session gets its column here, and every format exports it.

Optional columns appear only when the store holds the data:
- channel labels: ``channels.label`` is the label the session's rig sent in its last HELLO before the
  session's last presentation (rigs on protocol 1.1 send them; empty otherwise); when the rig came back with
  other labels during the session, ``earlier_labels`` and ``replaced_at`` hold the ones before
  (``queries.session_label_history``);
- trial facts (e.g. ``fixation_broken``, ``dropped_frames``, ``photodiode_onset``, ``baseline_rates``):
  every key of a presentation's ``trial_json`` object, one column each, missing values empty;
- manifold grid points (``plane``, ``theta_deg``, ``phi_deg`` of the stimuli) when the session has a
  manifold thread.

What a thread ran with is read from its events (``thread_provenance``): the hyperparameters of its
``thread.optimizer`` event and the software of its ``thread.runtime`` events.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

import optimizers
from analysis.tuning import grid_axis
from rig_client.version import package_version
from server.objectives import objective_channels
from server.session_config import FlaggedTrialsConfig, ManifoldConfig, SessionConfig, age_problem
from server.store import queries
from server.store.models import (
    LIVE_THREAD_STATUSES,
    Batch,
    Generation,
    GenerationStatus,
    Event,
    Presentation,
    Session,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
    decode_codes,
)

TRIAL_FACTS_ATTRIBUTE = "trial_json"  # a presentation's optional JSON object of per-trial facts
OPTIMIZER_EVENT, RUNTIME_EVENT = "thread.optimizer", "thread.runtime"  # what a thread ran with (``thread_provenance``)
LIVE_STATUSES = (*LIVE_THREAD_STATUSES, ThreadStatus.PAUSED)  # threads that have not ended
TIME = "datetime64[us, UTC]"  # a time column's dtype, kept also where every cell is empty (NaT)


# What each column holds: the NWB column descriptions and docs/export.md say the same.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "session": {
        "session_id": "Id of the session in the actmax store.",
        "session_name": "Human name of the recording.",
        "rig": "Name of the rig that ran it.",
        "rig_setup": "What the rig's program said of itself in its HELLO while it served the session (protocol 1.2 "
                     "setup: e.g. viewing distance, a simulation's noise), as JSON ('' when it said nothing).",
        "animal": "Animal identifier as configured.",
        "array": "Electrode array / recording site.",
        "notes": "Free-text notes.",
        "subject_id": "Subject identifier (config subject_id, else animal, else 'unknown').",
        "species": "Species, Latin binomial ('' when not configured).",
        "sex": "Subject sex: M, F, U (unknown), O (other).",
        "age": "Subject age, ISO 8601 duration ('P0D/', 0 days or older, when not configured).",
        "lab": "Lab ('' when not configured).",
        "experimenter": "Experimenter, 'Last, First' ('' when not configured).",
        "session_start_time": "Configured start time with its time zone, else when the session was created (UTC).",
        "created_at": "When the session was created on the server (UTC).",
        "response_window_ms": "Spike-counting window after onset requested from the rig, [start, end] ms.",
    },
    "channels": {
        "channel": "Channel index: position in every presentation's rates.",
        "label": "Channel label the rig reported in its last HELLO while it recorded the session ('' when it gave "
                 "none).",
        "earlier_labels": "Labels the channel had earlier in the session, oldest first, when the rig came back with "
                          "other labels ('' where that HELLO had no such channel).",
        "replaced_at": "When each of earlier_labels was replaced: the time of the HELLO that brought the next "
                       "labels (UTC).",
    },
    "threads": {
        "thread_id": "Id of the thread in the actmax store.",
        "thread_name": "Thread name, unique in the session.",
        "kind": "'evolution', 'manifold' or 'retest'.",
        "generator": "Generator network turning latent codes into images.",
        "generator_version": "Version of the generator's weights the engine loaded.",
        "optimizer": "Optimizer name ('fixed-design' for a manifold thread's grid and a retest's images).",
        "optimizer_params": "Optimizer hyperparameters as configured (empty for a manifold or retest thread).",
        "optimizer_hyperparameters": "Every hyperparameter the optimizer ran with: the configured ones, its preset's "
                                     "and the generator's defaults (empty when the thread never started).",
        "manifold": "A manifold thread's grid as configured: source thread, planes, step_deg (empty for an "
                    "evolution).",
        "objective_channels": "Channels whose rates make the score; the thread's final objective (a retarget "
                              "changes it: the generations table has each generation's).",
        "objective_combine": "How those channels' rates combine into one score: 'mean' or 'sum' (empty for an "
                             "expression).",
        "objective_expression": "The objective expression that makes the score (empty when channels combine).",
        "seed": "Seed of the thread's optimizer.",
        "n_generations": "The thread's total of generations: as configured, or as a later `thread extend` set it.",
        "repeats": "Presentations of each image per generation.",
        "status": "Final status: 'finished', 'stopped' or 'failed'.",
        "created_at": "When the thread was added to the session (UTC); later than the session's for a thread added "
                      "while it ran.",
        "ended_at": "When the thread ended (UTC): its last event of its final status (thread.finished, "
                    "thread.stopped or thread.failed; empty when none was logged).",
        "software": "Software that ran the thread, one record per distinct setup at its starts and resumes: actmax, "
                    "python, torch, numpy, device, precision, generator, generator_version, weights_sha256 "
                    "(empty when not recorded).",
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
        "objective_channels": "Channels whose rates made this generation's scores.",
        "objective_combine": "How they combined: 'mean' or 'sum' (empty for an expression).",
        "objective_expression": "The expression that made this generation's scores (empty when channels combine).",
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
        "png_path": "Path of the PNG relative to the server's data folder.",
        "generator": "Generator that rendered it ('' for references).",
        "generator_version": "Version of that generator ('' for references).",
        "weights_sha256": "sha256 of the generator weights ('' when unknown).",
        "latent_code": "Latent code the image was rendered from (empty for references).",
        "created_at": "When the image was made (UTC).",
        "plane": "Manifold grid plane of the image ('pc2-3', 'pc49-50', 'random'; '' outside a manifold).",
        "theta_deg": "Its grid point's angle along the plane's first axis, degrees (NaN outside a manifold).",
        "phi_deg": "Its grid point's angle along the plane's second axis, degrees (NaN outside a manifold).",
    },
    "presentations": {
        "presentation_id": "Rig-made id of this showing (uuid).",
        "stimulus_id": "Image shown.",
        "stimulus_index": "Row of that image in the stimuli table (and in the NWB image container), from 0.",
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
    "events": {
        "event_id": "Id of the event in the actmax store (GET /sessions/{id}/events); the table is in this order.",
        "time": "When the server logged it (UTC, the server's clock).",
        "kind": "What happened, e.g. 'thread.paused', 'rig.lost', 'thread.retargeted', 'session.note' "
                "(docs/export.md).",
        "level": "'info', 'warning' or 'error'.",
        "thread_id": "Thread it concerns (-1/empty for the session or its rig).",
        "message": "The event in words, as the dashboard and `actmax session watch` show it.",
        "data": "Its facts, an object as JSON (key=value text in NWB); empty when it has none.",
    },
}
TRIAL_FACT_DESCRIPTION = "Trial fact reported by the rig with this presentation."


class ExportError(ValueError):
    """A session that cannot be exported (unknown, or still running); the message says what to do."""


# What to do about an ExportError or a warning, in the words of its reader: REST routes, or `actmax` commands.
REST_HINTS = {"list": "GET /sessions", "stop": "POST /sessions/{id}/stop or /threads/{{id}}/stop",
              "subject": "the query parameter {field}=", "tables": "`actmax export csv` on the server"}
CLI_HINTS = {"list": "`actmax session list`", "stop": "`actmax session stop {id}` or `actmax thread stop ID`",
             "subject": "--{option}", "tables": "`actmax export csv` or `actmax export parquet`"}


class SessionRunning(ExportError):
    """The session still has running or paused threads: its record is not final yet."""


class NoPresentations(ExportError):
    """The session has no presentation: an NWB file of empty tables is refused (DANDI and nwbinspector reject it)."""


class MissingImage(ExportError):
    """A stimulus's PNG is not in the archive (a data folder copied without ``images/``?)."""


SEXES = get_args(SessionConfig.model_fields["sex"].annotation)
UNKNOWN_SUBJECT = "unknown"  # subject_id when neither it nor the animal is configured
# DANDI's form for species (nwbinspector's check_subject_species_form): a Latin binomial or an NCBI taxonomy link.
SPECIES = re.compile(r"[A-Z][a-z]* [a-z]+|http://purl\.obolibrary\.org/obo/NCBITaxon_\d+")


def subject_overrides(**given: str | None) -> dict[str, str]:
    """The subject metadata given at export (``subject_id``, ``species``, ``sex``, ``age``; None: not given),
    checked as the session config checks it; ``ExportError`` naming the first bad one."""
    subject = {field: value for field, value in given.items() if value is not None}
    for field in ("subject_id", "species"):
        if field in subject and not 0 < len(subject[field]) <= 200:
            raise ExportError(f"{field} {subject[field][:50]!r}: give 1 to 200 characters")
    if subject.get("sex", SEXES[0]) not in SEXES:
        raise ExportError(f"sex {subject['sex']!r}: give M, F, U (unknown) or O (other)")
    if (problem := age_problem(subject.get("age", ""))) is not None:
        raise ExportError(f"age {problem}")
    return subject


def dandi_warning(tables: SessionTables, hints: dict[str, str] = REST_HINTS) -> str | None:
    """What DANDI requires of the subject that the export lacks or has in a form it refuses (``nwbinspector
    --config dandi`` reports it as critical), and how to give it (``hints``); None when nothing is wrong."""
    meta = tables.session.iloc[0]
    species, subject_id = meta["species"], meta["subject_id"]
    wrong = {}
    if not SPECIES.fullmatch(species):
        wrong["species"] = f"{f'{species!r} is not' if species else 'give'} a Latin binomial such as 'Macaca mulatta'"
    if subject_id == UNKNOWN_SUBJECT:
        wrong["subject_id"] = f"written as {UNKNOWN_SUBJECT!r}"
    elif "/" in subject_id:  # check_subject_id_no_slashes: DANDI makes the id a folder name
        wrong["subject_id"] = f"{subject_id!r} has a '/', which DANDI refuses: e.g. {subject_id.replace('/', '-')!r}"
    if not wrong:
        return None
    given = ", ".join(hints["subject"].format(field=f, option=f.replace("_", "-")) for f in wrong)
    return (f"session {meta['session_id']}'s subject metadata fails DANDI's critical checks (nwbinspector --config "
            f"dandi): {', '.join(f'{field} ({why})' for field, why in wrong.items())}; give {given}, or set it in "
            "the session config")


def require_presentations(tables: SessionTables, hints: dict[str, str] = REST_HINTS) -> None:
    """``NoPresentations`` unless the session has a presentation (an NWB export needs one)."""
    if tables.presentations.empty:
        raise NoPresentations(f"session {tables.session['session_id'].item()} has no presentations: an NWB file of "
                              f"empty tables is not written (DANDI and nwbinspector reject it); its threads, "
                              f"generations and images export as tables with {hints['tables']}")


@dataclass
class SessionTables:
    session: pd.DataFrame
    channels: pd.DataFrame
    threads: pd.DataFrame
    generations: pd.DataFrame
    stimuli: pd.DataFrame
    presentations: pd.DataFrame
    events: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        """``(name, table)`` pairs in a fixed order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def session_tables(db: DBSession, session_id: int, hints: dict[str, str] = REST_HINTS,
                   subject: dict[str, str] | None = None) -> SessionTables:
    """All tables of a finished (or stopped) session; ``subject`` (``subject_overrides``) over its config's.

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
    events = _events(db, session)
    return SessionTables(
        session=_session(session, subject or {},
                         queries.rig_setup(db, session.rig, queries.last_presentation_time(db, session))),
        channels=_channels(db, session, presentations),
        threads=_threads(session, thread_provenance(db, session), events),
        generations=_generations(db, session),
        stimuli=stimuli,
        presentations=presentations,
        events=events,
    )


def session_start_time(session: Session) -> datetime:
    """The configured start time with its time zone, else when the session was created (UTC)."""
    configured = session.config_json.get("session_start_time")
    return datetime.fromisoformat(configured) if configured else session.created_at


def _session(session: Session, subject: dict[str, str], rig_setup: dict | None) -> pd.DataFrame:
    config = session.config_json | subject
    return pd.DataFrame([{
        "session_id": session.id,
        "session_name": session.name,
        "rig": session.rig,
        "rig_setup": rig_setup or {},  # {}: an empty cell, in a text column however the rig was
        "animal": session.animal,
        "array": session.array,
        "notes": session.notes,
        "subject_id": config.get("subject_id") or session.animal or UNKNOWN_SUBJECT,
        "species": config.get("species", ""),
        "sex": config.get("sex", "U"),
        "age": config.get("age") or "P0D/",
        "lab": config.get("lab", ""),
        "experimenter": config.get("experimenter", ""),
        "session_start_time": session_start_time(session),
        "created_at": session.created_at,
        "response_window_ms": list(config.get("response_window_ms", [])),
    }])


def _channels(db: DBSession, session: Session, presentations: pd.DataFrame) -> pd.DataFrame:
    """One row per channel: its last label, and its earlier ones when the rig's labels changed in the session."""
    n = max((len(r) for r in presentations["rates"]), default=0)
    history = queries.session_label_history(db, session)
    labels = [_label(history[-1][1] if history else [], c) for c in range(n)]
    frame = pd.DataFrame({"channel": np.arange(n), "label": pd.Series(labels, dtype=str)})
    if len(history) < 2:
        return frame
    replaced_at = [time for time, _ in history[1:]]
    return frame.assign(earlier_labels=[[_label(earlier, c) for _, earlier in history[:-1]] for c in range(n)],
                        replaced_at=[replaced_at] * n)


def _label(labels: list[str], channel: int) -> str:
    """A HELLO's label of ``channel`` ('' when it had no such channel: the rig came back with fewer)."""
    return labels[channel] if channel < len(labels) else ""


def _objective(objective: dict) -> dict[str, Any]:
    """The objective columns of a thread or generation row."""
    return {"objective_channels": objective_channels(objective),
            "objective_combine": "" if "expression" in objective else objective.get("combine", "mean"),
            "objective_expression": objective.get("expression", "")}


def manifold_configs(session: Session) -> dict[int, ManifoldConfig]:
    """Each manifold thread's grid settings, by thread id, from the session's stored config."""
    configs = {t["name"]: t for t in session.config_json["threads"]}
    return {t.id: ManifoldConfig.model_validate(configs[t.name]["manifold"])
            for t in session.threads if t.kind == "manifold"}


@dataclass(frozen=True)
class ThreadProvenance:
    """How a thread ran, as its events record it."""

    hyperparameters: dict[str, Any]  # every one its optimizer ran with ({} when it never started)
    software: list[dict[str, str]]  # distinct ``thread.runtime`` records, in order ([] when none was logged)


def thread_provenance(db: DBSession, session: Session) -> dict[int, ThreadProvenance]:
    """Per thread id: the hyperparameters of its last ``thread.optimizer`` event (logged when it starts fresh: its
    own, its preset's and the generator's defaults) and the distinct ``data`` of its ``thread.runtime`` events
    (logged at each start or resume: versions, device, precision, generator weights), in the order first seen."""
    hyperparameters: dict[int, dict] = {}
    software: dict[int, list[dict]] = {}
    for thread_id, kind, data in db.execute(
            select(Event.thread_id, Event.kind, Event.data_json).where(
                Event.session_id == session.id, Event.thread_id.is_not(None),
                Event.kind.in_((OPTIMIZER_EVENT, RUNTIME_EVENT))).order_by(Event.id)):
        if kind == OPTIMIZER_EVENT:
            hyperparameters[thread_id] = (data or {}).get("hyperparameters", {})
        elif data and data not in software.setdefault(thread_id, []):
            software[thread_id].append(data)
    return {t.id: ThreadProvenance(hyperparameters.get(t.id, {}), software.get(t.id, [])) for t in session.threads}


def software_text(record: dict[str, str]) -> str:
    """A ``thread.runtime`` record's versions: ``actmax 0.16.0 (python 3.11.9, torch 2.5.1, numpy 2.1.0)``."""
    versions = ", ".join(f"{name} {record[name]}" for name in ("python", "torch", "numpy") if record.get(name))
    return f"actmax {record.get('actmax', 'unknown')}" + (f" ({versions})" if versions else "")


def _threads(session: Session, provenance: dict[int, ThreadProvenance], events: pd.DataFrame) -> pd.DataFrame:
    manifolds = manifold_configs(session)
    last = {(thread_id, kind): time for thread_id, kind, time in events[["thread_id", "kind", "time"]]
            .itertuples(index=False) if not pd.isna(thread_id)}  # the last event of each kind, per thread
    return pd.DataFrame([{
        "thread_id": t.id,
        "thread_name": t.name,
        "kind": t.kind,
        "generator": t.generator,
        "generator_version": t.generator_version or "",
        "optimizer": t.optimizer,
        "optimizer_params": t.optimizer_params_json,
        "optimizer_hyperparameters": provenance[t.id].hyperparameters,
        "manifold": manifolds[t.id].model_dump(mode="json") if t.id in manifolds else {},
        **_objective(t.objective_json),
        "seed": t.seed,
        "n_generations": t.n_generations,
        "repeats": t.repeats,
        "status": t.status.value,
        "created_at": t.created_at,
        "ended_at": last.get((t.id, f"thread.{t.status.value}")),
        "software": json.dumps(provenance[t.id].software) if provenance[t.id].software else "",  # JSON in every format
    } for t in session.threads]).astype({"created_at": TIME, "ended_at": TIME})


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
    for g, thread_objective in db.execute(select(Generation, Thread.objective_json).join(Thread)
                                          .where(Thread.session_id == session.id)
                                          .order_by(Generation.thread_id, Generation.number)):
        sigma, mean_norm, best = _state_summary(g)
        rows.append({
            "thread_id": g.thread_id, "generation": g.number, "status": g.status.value, "n_stimuli": g.n_stimuli,
            "n_scored": g.n_scored, "mean_score": g.mean_score, "max_score": g.max_score,
            "reference_mean": g.reference_mean, "best_score_so_far": best, "sigma": sigma, "mean_norm": mean_norm,
            # The objective recorded when it was asked (databases from before retargets: its thread's).
            **_objective(g.objective_json or thread_objective),
            "asked_at": g.asked_at, "completed_at": g.completed_at,
        })
    return _frame(rows, ["thread_id", "generation", "status", "n_stimuli", "n_scored", "mean_score", "max_score",
                         "reference_mean", "best_score_so_far", "sigma", "mean_norm", "objective_channels",
                         "objective_combine", "objective_expression", "asked_at", "completed_at"],
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
    frame = _frame(rows, ["stimulus_id", "kind", "thread_id", "generation", "index_in_generation", "score",
                          "content_hash", "png_path", "generator", "generator_version", "weights_sha256",
                          "latent_code", "created_at"],
                   ints=["thread_id", "generation", "index_in_generation"], floats=["score"])
    manifolds = manifold_configs(session)
    if not manifolds:
        return frame
    points = [_grid_point(manifolds.get(t), i) for t, i in zip(frame["thread_id"], frame["index_in_generation"])]
    return frame.assign(plane=[p[0] for p in points], theta_deg=[p[1] for p in points],
                        phi_deg=[p[2] for p in points])


def _grid_point(manifold: ManifoldConfig | None, index: int) -> tuple[str, float, float]:
    """(plane, θ, φ in degrees) of a manifold stimulus ``index`` = plane * n² + i * n + j at (θ[i], φ[j]);
    ('', NaN, NaN) for other stimuli."""
    if manifold is None:
        return "", np.nan, np.nan
    n = manifold.n
    plane, point = divmod(index, n * n)
    axis = np.rad2deg(grid_axis(manifold.step_deg, n))
    return manifold.planes[plane], float(axis[point // n]), float(axis[point % n])


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


def _events(db: DBSession, session: Session) -> pd.DataFrame:
    """The session's event log in the order it was written (as ``GET /sessions/{id}/events``)."""
    rows = [{"event_id": e.id, "time": e.time, "kind": e.kind, "level": e.level.value, "thread_id": e.thread_id,
             "message": e.message, "data": e.data_json or {}}
            for e in db.scalars(select(Event).where(Event.session_id == session.id).order_by(Event.id))]
    return _frame(rows, ["event_id", "time", "kind", "level", "thread_id", "message", "data"], ints=["thread_id"],
                  times=["time"])


def trial_fact_columns(facts: list[dict[str, Any] | None]) -> dict[str, pd.Series]:
    """One column per key any presentation's trial facts hold, in first-seen order, empty where absent:
    nullable booleans or integers when every value given is one (``dropped_frames`` 2 stays 2, not 2.0)."""
    keys = list(dict.fromkeys(key for f in facts if f for key in f))
    return {key: _fact_column([(f or {}).get(key) for f in facts]) for key in keys}


def _fact_column(values: list[Any]) -> pd.Series:
    given = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in given):
        return pd.Series(values, dtype="boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in given):
        return pd.Series(values, dtype="Int64")
    return pd.Series(values)


def _frame(rows: list[dict], columns: list[str], ints: list[str] = (), floats: list[str] = (),
           times: list[str] = ()) -> pd.DataFrame:
    """A DataFrame with these columns even when empty; nullable integers, float NaN and NaT for missing values."""
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({**{c: "Int64" for c in ints}, **{c: "float64" for c in floats}, **{c: TIME for c in times}})


TABULAR_FORMATS = ("parquet", "csv")


def table_paths(out_dir: str | Path, fmt: str) -> list[Path]:
    """The files ``write_tables`` writes: ``<out_dir>/<table>.<fmt>``, in ``SessionTables`` order."""
    return [Path(out_dir) / f"{f.name}.{fmt}" for f in fields(SessionTables)]


def write_tables(tables: SessionTables, out_dir: str | Path, fmt: str) -> list[Path]:
    """Write each table as ``<out_dir>/<name>.parquet`` or ``.csv`` (each replaced whole, ``replace_file``);
    returns the paths written.

    Dict cells (``threads.optimizer_params``, ``events.data``) become JSON text in both formats; list cells (rates,
    latent codes, channels) stay lists in Parquet and become JSON arrays in CSV (an empty cell where absent: a
    reference's latent code; times in them ISO 8601 text). Times stay timestamps in Parquet and are ISO 8601 text in CSV, as in NWB.
    Parquet files carry the exporting actmax's version in their schema metadata (``actmax_version``).
    """
    if fmt not in TABULAR_FORMATS:
        raise ExportError(f"unknown table format {fmt!r}; use one of {', '.join(TABULAR_FORMATS)}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for (_, frame), path in zip(tables.items(), table_paths(out_dir, fmt)):
        frame = frame.copy()
        for column in frame.columns:
            if frame[column].map(lambda v: isinstance(v, dict) or (fmt == "csv" and isinstance(v, list))).any():
                frame[column] = frame[column].map(lambda v: None if v is None else _json_text(v))
            elif fmt == "csv" and pd.api.types.is_datetime64_any_dtype(frame[column]):
                frame[column] = frame[column].map(iso_text)
        if fmt == "parquet":
            replace_file(path, lambda tmp: _write_parquet(frame, tmp))
        else:
            replace_file(path, lambda tmp: frame.to_csv(tmp, index=False))
    return table_paths(out_dir, fmt)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as Parquet, with ``actmax_version`` (the exporting actmax's) in the file's schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), b"actmax_version": package_version()}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def replace_file(path: str | Path, write) -> None:
    """``write(tmp)`` to ``<stem>.partial<suffix>``, then rename it to ``path``: an export that fails or is
    stopped leaves ``path`` as it was (a kill leaves the partial file), never half-written."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def iso_text(value: Any) -> str:
    """ISO 8601 text of a time cell ("" when empty, as pandas' NaT)."""
    return "" if pd.isna(value) else value.isoformat()


def _json_text(value: Any) -> str:
    """JSON text for a list or dict cell; NaN becomes null (JSON has no NaN); an empty dict or list is an empty
    cell (absent: docs/export.md)."""
    if isinstance(value, dict | list) and not value:
        return ""
    if isinstance(value, list):
        value = [None if isinstance(x, float) and np.isnan(x) else x for x in value]
    return json.dumps(value, default=iso_text)  # times (``channels.replaced_at``) as ISO 8601 text
