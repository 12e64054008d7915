"""A session report from its database: score per generation against references, best images, summary."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from analysis.serialization import json_safe
from server.objectives import Objective
from server.store import queries
from server.store.archive import ImageArchive
from server.store.db import make_db_engine, make_sessionmaker
from server.store.models import (
    Batch,
    Generation,
    GenerationStatus,
    Presentation,
    Stimulus,
    StimulusKind,
    Thread,
)


@dataclass
class ThreadSummary:
    thread_id: int
    name: str
    optimizer: str
    generations: int
    first_generation_mean: float
    last_generation_mean: float
    best_reference: float
    reference_mean: float
    best_score: float
    channels: list[str]  # the channels the objective scores, by the rig's labels (``ch<index>`` without)


def _channel_names(db, thread: Thread) -> list[str]:
    """The thread's objective channels as the rig labelled them in HELLO (protocol 1.1), else ``ch<index>``."""
    labels = queries.rig_channel_labels(db, thread.session.rig) or []
    return [labels[c] if c < len(labels) else f"ch{c}" for c in thread.objective_json["channels"]]


def _thread_curves(db, thread: Thread) -> dict[str, np.ndarray]:
    generations = db.scalars(
        select(Generation).where(Generation.thread_id == thread.id, Generation.status == GenerationStatus.COMPLETE)
        .order_by(Generation.number)
    ).all()
    as_array = lambda values: np.array([np.nan if v is None else v for v in values], dtype=float)  # noqa: E731
    return {
        "number": np.array([g.number for g in generations]),
        "mean": as_array([g.mean_score for g in generations]),
        "max": as_array([g.max_score for g in generations]),
        "reference_mean": as_array([g.reference_mean for g in generations]),
    }


def _reference_scores(db, thread: Thread) -> dict[str, float]:
    """Each reference image's mean score under this thread's objective, over the thread's batches."""
    objective = Objective.from_config(thread.objective_json)
    rows = db.execute(
        select(Presentation.stimulus_id, Presentation.rates_json)
        .join(Batch, Batch.id == Presentation.batch_id)
        .join(Stimulus, Stimulus.id == Presentation.stimulus_id)
        .where(Batch.thread_id == thread.id, Stimulus.kind == StimulusKind.REFERENCE)
    ).all()
    by_reference: dict[str, list[float]] = {}
    for stimulus_id, rates in rows:
        score = objective.score(rates)
        by_reference.setdefault(stimulus_id, []).append(score)
    return {k: float(np.nanmean(v)) for k, v in by_reference.items()}


def _best_stimuli(db, thread: Thread, n: int) -> list[tuple[str, float, str]]:
    """The n best-scoring synthetic stimuli of a thread: (stimulus id, score, content hash)."""
    best: list[tuple[float, str, str]] = []
    for generation in db.scalars(select(Generation).where(Generation.thread_id == thread.id,
                                                          Generation.status == GenerationStatus.COMPLETE)):
        for stimulus in generation.stimuli:
            score = (generation.scores_json or [None] * (stimulus.index + 1))[stimulus.index]
            if score is not None:
                best.append((score, stimulus.id, stimulus.content_hash))
    best.sort(reverse=True)
    return [(sid, score, digest) for score, sid, digest in best[:n]]


def write_session_report(database_url: str, data_dir: Path, session_id: int, out_dir: Path) -> list[ThreadSummary]:
    """Write scores.png, best_images.png and summary.json for a session; return the per-thread summaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    archive = ImageArchive(data_dir)
    db_engine = make_db_engine(database_url)
    summaries, montage_rows = [], []
    try:
        with make_sessionmaker(db_engine)() as db:
            threads = db.scalars(select(Thread).where(Thread.session_id == session_id).order_by(Thread.id)).all()
            fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4), squeeze=False)
            for ax, thread in zip(axes[0], threads):
                curves = _thread_curves(db, thread)
                references = _reference_scores(db, thread)
                best = _best_stimuli(db, thread, 8)
                ax.plot(curves["number"], curves["mean"], label="generation mean", color="C0")
                ax.plot(curves["number"], curves["max"], label="generation max", color="C0", alpha=0.4)
                ax.plot(curves["number"], curves["reference_mean"], label="reference mean", color="C1")
                if references:
                    ax.axhline(max(references.values()), color="C1", ls="--", label="best reference")
                title = thread.name if thread.name == thread.optimizer else f"{thread.name} ({thread.optimizer})"
                channels = _channel_names(db, thread)
                ax.set(title=title, xlabel="generation", ylabel=f"score ({', '.join(channels)})")
                ax.legend(fontsize=8)
                summaries.append(ThreadSummary(
                    thread_id=thread.id, name=thread.name, optimizer=thread.optimizer,
                    generations=len(curves["number"]),
                    first_generation_mean=float(curves["mean"][0]) if len(curves["mean"]) else float("nan"),
                    last_generation_mean=float(curves["mean"][-1]) if len(curves["mean"]) else float("nan"),
                    best_reference=max(references.values()) if references else float("nan"),
                    reference_mean=float(np.nanmean(curves["reference_mean"])) if len(curves["mean"]) else float("nan"),
                    best_score=best[0][1] if best else float("nan"), channels=channels,
                ))
                montage_rows.append([Image.open(io.BytesIO(archive.read(d))).convert("RGB") for _, _, d in best])
            fig.tight_layout()
            fig.savefig(out_dir / "scores.png", dpi=120)
            plt.close(fig)
    finally:
        db_engine.dispose()
    _write_montage(montage_rows, out_dir / "best_images.png")
    (out_dir / "summary.json").write_text(json.dumps(json_safe([asdict(s) for s in summaries]), indent=2))
    return summaries


def _write_montage(rows, path: Path, side: int = 96) -> None:
    """Best images of each thread, one row per thread."""
    from PIL import Image

    columns = max((len(r) for r in rows), default=0)
    sheet = Image.new("RGB", (max(columns, 1) * side, max(len(rows), 1) * side), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            sheet.paste(image.resize((side, side)), (x * side, y * side))
    sheet.save(path)
