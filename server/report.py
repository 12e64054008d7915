"""A session report from its database: score per generation against references, best images, summary, and a
methods paragraph (methods.txt) of how each thread ran."""

from __future__ import annotations

import bisect
import io
import json
import logging
import re
import sys
import textwrap
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select

from analysis.serialization import json_safe
from server import ServerError
from server.drift import mean_sem
from server.engine import channels_change
from server.export.tables import ThreadProvenance, manifold_configs, software_text, thread_provenance
from server.images import SKIMAGE_REFERENCES
from server.objectives import Objective, channel_ranges, objective_channels, objective_segments, score_label
from server.session_config import FlaggedTrialsConfig, ReferenceConfig
from server.retest import retest_config, retest_table
from server.store import queries
from server.store.archive import ImageArchive
from server.store.db import make_sessionmaker, offline_db_engine
from server.store.models import Event, Generation, GenerationStatus, Session, Stimulus, StimulusKind, Thread

log = logging.getLogger(__name__)


@dataclass
class ThreadSummary:
    thread_id: int
    name: str
    optimizer: str
    generations: int
    objective_from_generation: int  # the current objective's first generation (0 unless retargeted)
    first_generation_mean: float  # of that generation: means are compared within one objective
    last_generation_mean: float
    best_reference: float  # the best reference image's mean over the current objective's generations
    reference_mean: float
    best_score: float  # the best distinct image's mean over all its presentations: the top of images_ranked noisy
    # estimates, so biased high (expect it lower when shown again); compare last_generation_mean with best_reference
    channels: list[str]  # the channels the objective scores, by the rig's labels when the first of its generations
    # was recorded (``ch<index>`` without)
    best_score_presentations: int = 0  # the scored presentations best_score is the mean of
    best_reference_presentations: int = 0  # the scored presentations best_reference is the mean of
    images_ranked: int = 0  # the distinct images of the current objective's generations best_score is the top of
    best_images: list[dict] = field(default_factory=list)  # the best BEST_IMAGES, as best_score: sha256,
    # generations that showed it, score, presentations


@dataclass(frozen=True)
class Run:
    """A run of a thread's completed generations scored by one objective (more than one after a retarget): its first
    generation, the objective, and the channel labels the rig recorded it under (``queries.labels_during``: those
    at its first generation, then each relabelling before its end, with its time)."""

    number: int
    objective: dict
    labels: list[tuple[datetime | None, list[str]]]

    @property
    def start_labels(self) -> list[str]:
        """The labels the run began under: those that name its channels on figures and in summary.json."""
        return self.labels[0][1] if self.labels else []


def _runs(db, thread: Thread, generations: list[Generation]) -> list[Run]:
    """The objective runs of the thread's completed ``generations`` in order; one of the thread's objective from
    generation 0 without any."""
    segments = objective_segments([(g.number, g.objective_json or thread.objective_json) for g in generations])
    segments = segments or [(0, thread.objective_json)]
    starts = [number for number, _ in segments]
    ids: dict[int, list[int]] = {}
    for g in generations:
        ids.setdefault(bisect.bisect_right(starts, g.number) - 1, []).append(g.id)
    return [Run(number, objective, queries.labels_during(db, thread.session, ids.get(k, []))
                if objective_channels(objective) else []) for k, (number, objective) in enumerate(segments)]


def _channel_names(db, thread: Thread, objective: dict | None = None, labels: list[str] | None = None) -> list[str]:
    """The channels of ``objective`` as the rig labelled them in HELLO (protocol 1.1), else ``ch<index>``; by
    default the objective and labels of the thread's last run (``Run.start_labels``)."""
    if objective is None or labels is None:
        run = _runs(db, thread, _completed_generations(db, thread))[-1]
        objective, labels = objective or run.objective, run.start_labels if labels is None else labels
    return [labels[c] if c < len(labels) else f"ch{c}" for c in objective_channels(objective)]


STRIP_IMAGES = 12  # best images under an evolution curve (evenly spaced generations, last included)
BEST_IMAGES = 8  # best distinct images per evolution in best_images.png and summary.json
# The figures are at most a page's text width, so that printed at page width their smallest text is SMALL_TEXT or
# more; images are laid out in rows of so many that their labels fit side by side at that size.
FIGURE_WIDTH = 7.0  # inches
SMALL_TEXT = 8  # points: legends, image labels, retarget markers
STRIP_ROW = 6  # images per row of an evolution figure's strip ("gen 12" over "11.9 (n=3)")
IMAGE_ROW = 4  # images per row in best_images.png and a retest figure ("31.1 spikes/s (n=3)")


def _mean_sem(values) -> tuple[float, float]:
    """``drift.mean_sem`` with NaN for "no value", for plotting."""
    return tuple(np.nan if v is None else v for v in mean_sem(values))


def _finite_mean(values: np.ndarray) -> float:
    """The mean of the finite values; NaN (and no warning) without any."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


NAMED_CHANNELS = 4  # an axis label names this many channels; more are counted (a Neuropixels probe has 384)


def _score_label(db, thread: Thread, objective: dict | None = None, labels: list[str] | None = None) -> str:
    """What scores by ``objective`` (the thread's by default) are: spikes/s of its channels' rates (named by
    ``labels``, as ``_channel_names``), else its expression."""
    objective = objective or thread.objective_json
    label = score_label(objective)
    if not objective.get("channels"):
        return label
    names = _channel_names(db, thread, objective, labels)
    if len(names) <= NAMED_CHANNELS:
        return f"{label} of {', '.join(names)}"
    return f"{label}, {objective.get('combine', 'mean')} of {len(names)} channels ({names[0]}, {names[1]}, … {names[-1]})"


def _segments(db, thread: Thread, generations: list[Generation]) -> list[tuple[int, str]]:
    """(first generation, score label) of each objective the generations were scored with, in order (``_runs``):
    its channels named by the labels they had at its first generation."""
    return [(run.number, _score_label(db, thread, run.objective, run.start_labels))
            for run in _runs(db, thread, generations)]


def _completed_generations(db, thread: Thread) -> list[Generation]:
    return db.scalars(
        select(Generation).where(Generation.thread_id == thread.id, Generation.status == GenerationStatus.COMPLETE)
        .order_by(Generation.number)
    ).all()


def _thread_curves(generations: list[Generation], references: dict[int, dict[str, float]]) -> dict[str, np.ndarray]:
    """Per completed generation: number, mean ± SEM and max over its images, reference mean ± SEM over references."""
    as_array = lambda values: np.array([np.nan if v is None else v for v in values], dtype=float)  # noqa: E731
    mean_sem = np.array([_mean_sem(g.scores_json or []) for g in generations]).reshape(-1, 2)
    reference = np.array([_mean_sem(references[g.id].values()) for g in generations]).reshape(-1, 2)
    return {
        "number": np.array([g.number for g in generations]),
        "mean": mean_sem[:, 0], "sem": mean_sem[:, 1],
        "max": as_array([g.max_score for g in generations]),
        "reference_mean": as_array([g.reference_mean for g in generations]), "reference_sem": reference[:, 1],
    }


def _reference_scores(db, thread: Thread, generations: list[Generation]) -> dict[int, dict[str, float]]:
    """Per generation id, each reference image's score in it, as the engine scored the generation: with its
    images, which a ``zscore`` or ``baseline`` objective scores each presentation against (finite scores only)."""
    flagged = FlaggedTrialsConfig.model_validate(thread.session.config_json.get("flagged_trials", {}))
    references = frozenset(db.scalars(select(Stimulus.id).where(Stimulus.session_id == thread.session_id,
                                                                 Stimulus.kind == StimulusKind.REFERENCE)))
    scores = {}
    for g in generations:
        shown = {s: [(r.rates, r.baseline) for r in responses]
                 for s, responses in queries.scored_responses(db, g.id, flagged).items()}
        scored = Objective.from_config(g.objective_json or thread.objective_json).score_generation(shown, references)
        scores[g.id] = {s: v for s, v in scored.items() if s in references and np.isfinite(v)}
    return scores


def _scored_presentations(db, thread: Thread, generations: list[Generation]) -> dict[int, dict[str, int]]:
    """Per generation id, how many presentations of each stimulus the session's flagged-trial policy scored."""
    flagged = FlaggedTrialsConfig.model_validate(thread.session.config_json.get("flagged_trials", {}))
    return {g.id: {s: len(shown) for s, shown in queries.scored_responses(db, g.id, flagged).items()}
            for g in generations}


def _best_reference(scores: dict[int, dict[str, float]],
                    presentations: dict[int, dict[str, int]]) -> tuple[float, int] | None:
    """The best reference image's mean score over the generations that showed it, and how many scored
    presentations that is the mean of; None without any."""
    per: dict[str, list[float]] = {}
    for generation in scores.values():
        for stimulus_id, score in generation.items():
            per.setdefault(stimulus_id, []).append(score)
    if not per:
        return None
    stimulus_id = max(per, key=lambda s: np.mean(per[s]))
    return float(np.mean(per[stimulus_id])), sum(presentations[g].get(stimulus_id, 0) for g in scores)


@dataclass(frozen=True)
class Best:
    """A distinct synthetic image (the sha256 of its PNG) at the mean of its scores in the generations that showed it
    under one objective (a GA elite is shown again), each score the mean of that generation's presentations of it:
    ``presentations`` in all, shown first in ``generation`` (stimulus ``stimulus_id``), last in ``last_generation``."""

    stimulus_id: str
    generation: int
    score: float
    content_hash: str
    presentations: int
    last_generation: int

    @property
    def generations(self) -> str:
        """Where it was shown: ``3`` or ``8-10``."""
        return str(self.generation) if self.generation == self.last_generation else \
            f"{self.generation}-{self.last_generation}"


def _showings(db, thread: Thread) -> list[Best]:
    """Each scored showing of the thread's images: a synthetic stimulus of a completed generation with a finite
    score, and the presentations that scored it."""
    generations = _completed_generations(db, thread)
    presentations = _scored_presentations(db, thread, generations)
    rows = db.execute(
        select(Stimulus.id, Stimulus.index, Stimulus.content_hash, Generation.id, Generation.number,
               Generation.scores_json)
        .join(Generation, Generation.id == Stimulus.generation_id)
        .where(Generation.thread_id == thread.id, Generation.status == GenerationStatus.COMPLETE,
               Stimulus.kind == StimulusKind.SYNTHETIC)
    ).all()
    return [Best(sid, number, scores[index], digest, presentations[gid].get(sid, 0), number)
            for sid, index, digest, gid, number, scores in rows
            if scores and scores[index] is not None and np.isfinite(scores[index])]


def _pooled(showings: list[Best]) -> list[Best]:
    """One Best per distinct image: the mean of its showings' scores, their presentations summed."""
    by_image: dict[str, list[Best]] = {}
    for showing in sorted(showings, key=lambda b: b.generation):
        by_image.setdefault(showing.content_hash, []).append(showing)
    return [Best(shown[0].stimulus_id, shown[0].generation, float(np.mean([b.score for b in shown])), digest,
                 sum(b.presentations for b in shown), shown[-1].generation) for digest, shown in by_image.items()]


def _best_stimuli(db, thread: Thread, n: int | None, from_generation: int = 0) -> list[Best]:
    """The n best distinct images of a thread (every one with None), best first, from generation
    ``from_generation`` on: an image shown again (a GA elite) counts once, at the mean of all its showings."""
    pooled = _pooled([b for b in _showings(db, thread) if b.generation >= from_generation])
    return sorted(pooled, key=lambda b: (-b.score, b.generation))[:n]


def _best_per_generation(db, thread: Thread) -> list[tuple[int, Best]]:
    """Each completed generation's best image, in generation order, as (generation, image): its images ranked at
    the mean of all their showings under that generation's objective."""
    starts = [number for number, _ in objective_segments(
        [(g.number, g.objective_json or thread.objective_json) for g in _completed_generations(db, thread)])]
    segment = lambda number: bisect.bisect_right(starts, number)  # noqa: E731 (the showings of one objective pool)
    showings, by_segment = _showings(db, thread), {}
    for showing in showings:
        by_segment.setdefault(segment(showing.generation), []).append(showing)
    pooled = {(k, b.content_hash): b for k, group in by_segment.items() for b in _pooled(group)}
    best: dict[int, Best] = {}
    for showing in showings:
        image = pooled[segment(showing.generation), showing.content_hash]
        if showing.generation not in best or image.score > best[showing.generation].score:
            best[showing.generation] = image
    return [(number, best[number]) for number in sorted(best)]


def _ranked(db, thread: Thread, generations: list[Generation], references: dict[int, dict[str, float]],
            since: int) -> tuple[list[Best], tuple[float, int] | None]:
    """The thread's distinct images from generation ``since`` on (one objective), best first, and its best reference
    image there (``_best_reference``)."""
    shown = [g for g in generations if g.number >= since]
    return (_best_stimuli(db, thread, None, since),
            _best_reference({g.id: references[g.id] for g in shown}, _scored_presentations(db, thread, shown)))


def _best_image_text(ranked: list[Best], best_reference: tuple[float, int] | None, last: Generation,
                     since: int) -> str:
    """The best image at its mean, why that is biased high, and the comparisons that are not: the last generation's
    mean and the best reference image's; empty without a scored image."""
    if not ranked:
        return ""
    best, scope = ranked[0], f" of generations {since} on (the last objective)" if since else ""
    scores = [v for v in last.scores_json or [] if v is not None and np.isfinite(v)]
    fair = [f"the last generation's {len(scores)} images scored {np.mean(scores):.3g} on average"] if scores else []
    if best_reference is not None:
        fair.append(f"the best reference image {best_reference[0]:.3g} ({_of_presentations(best_reference[1])})")
    counts = _range([b.presentations for b in ranked])
    return (f" Its best image{scope} scored {best.score:.3g} ({_of_presentations(best.presentations)}, "
            f"generation{'s' * (best.generation != best.last_generation)} {best.generations}), the highest of "
            f"{len(ranked)} distinct images each scored from {counts} presentation{'s' * (counts != '1')}: the "
            "maximum of noisy estimates is biased high, so expect it to be lower when shown again."
            + (f" Means over many images or presentations are not biased so: {', '.join(fair)}." if fair else ""))


def _of_presentations(n: int) -> str:
    """``the mean of 3 presentations``, ``from 1 presentation``."""
    return f"the mean of {n} presentations" if n > 1 else f"from {n} presentation{'s' * (n != 1)}"


def _range(values: list[int]) -> str:
    """``3``, or ``1-3`` when they differ."""
    low, high = min(values, default=0), max(values, default=0)
    return str(low) if low == high else f"{low}-{high}"


def _curve_axes(ax, curves: dict[str, np.ndarray], best_reference: tuple[float, int] | None,
                segments: list[tuple[int, str]]) -> None:
    """Mean ± SEM, max, reference mean ± SEM and the best reference (its mean, of how many presentations) against
    generation; a curve without a value is left out, legend entry included. The y axis names the scores' unit;
    after a retarget, a marker at each objective's first generation names its unit instead, and the curves are
    not joined across it. Each curve has its own line style (greyscale print) and the legend lies under the axes."""
    from matplotlib.colors import to_rgb
    from matplotlib.ticker import MaxNLocator

    if len(segments) > 1:  # a NaN row before each change of objective leaves a gap
        at = np.searchsorted(curves["number"], [number for number, _ in segments[1:]])
        curves = {key: np.insert(values.astype(float), at, np.nan) for key, values in curves.items()}
    x = curves["number"]
    if np.isfinite(curves["mean"]).any():
        ax.fill_between(x, curves["mean"] - curves["sem"], curves["mean"] + curves["sem"], color="C0", alpha=0.25, lw=0)
        ax.plot(x, curves["mean"], color="C0", lw=1.8, label="generation mean ± SEM")
        ax.plot(x, curves["max"], color="C0", ls=":", label="generation max (its best image: biased high)")
    if np.isfinite(curves["reference_mean"]).any():
        ax.fill_between(x, curves["reference_mean"] - curves["reference_sem"],
                        curves["reference_mean"] + curves["reference_sem"], facecolor=(*to_rgb("C1"), 0.2),
                        edgecolor="C1", hatch="////", lw=0)
        ax.plot(x, curves["reference_mean"], color="C1", ls=REFERENCE_MEAN_STYLE, label="reference mean ± SEM")
    if best_reference is not None:
        since = f", generations {segments[-1][0]} on" if len(segments) > 1 else ""
        score, presentations = best_reference
        ax.axhline(score, color="C1", ls="--", lw=1,
                   label=f"best reference image (mean of {presentations} presentations{since})")
    if len(segments) > 1:
        for number, label in segments:
            ax.axvline(number, color="0.4", ls="-.", lw=1)
            ax.annotate(_wrapped(label, fontsize=SMALL_TEXT), (number, 0), xycoords=("data", "axes fraction"),
                        xytext=(3, 3), textcoords="offset points", va="bottom", fontsize=SMALL_TEXT, rotation=90)
    ax.set(xlabel="generation", ylabel=_wrapped(_axis_label(segments)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no generation 0.25
    if ax.get_legend_handles_labels()[1]:
        _legend_below(ax)


#: The reference mean's line, dash-dot-dot: told from the generation mean (solid) without its colour (greyscale
#: print), and from the max (dotted), the best reference (dashed) and a retarget's marker (dash-dot).
REFERENCE_MEAN_STYLE = (0, (6, 2, 1.5, 2, 1.5, 2))


def _legend_below(ax) -> None:
    """The axes' legend under its x axis (ticks, tick labels, label), where it hides no data; a constrained layout
    makes room for it."""
    from matplotlib.transforms import ScaledTranslation

    tick, label = ax.xaxis.majorTicks[0], ax.xaxis.label
    depth = (tick.get_tick_padding() + tick.get_pad() + 1.2 * tick.label1.get_size() + ax.xaxis.labelpad
             + 1.2 * label.get_size() * (label.get_text().count("\n") + 1) + SMALL_TEXT / 2)  # points
    ax.legend(fontsize=SMALL_TEXT, loc="upper center", bbox_to_anchor=(0.5, 0), borderaxespad=0,
              bbox_transform=ax.transAxes + ScaledTranslation(0, -depth / 72, ax.figure.dpi_scale_trans))


LABEL_LINE = 32  # characters of a score label's line at 10 pt: about 180 pt, within the ~230 pt a score axes is high


def _wrapped(label: str, fontsize: float = 10) -> str:
    """``label`` in lines that fit along a score axes at ``fontsize`` (its own line breaks kept, never a word cut)."""
    return "\n".join(textwrap.fill(line, int(LABEL_LINE * 10 / fontsize), break_long_words=False,
                                   break_on_hyphens=False) for line in label.split("\n"))


def _axis_label(segments: list[tuple[int, str]]) -> str:
    if len(segments) == 1:
        return segments[0][1]
    changes = ", ".join(str(number) for number, _ in segments[1:])
    return f"score (objective changed at\ngeneration {changes}: see markers)"


def _evolution_figure(path: Path, title: str, segments: list[tuple[int, str]], curves, best_reference,
                      per_generation: list[tuple[int, Best]], archive):
    """The standard evolution figure: the score curve above a strip of each generation's best image; returns
    the saved Figure. Constrained layout keeps the strip's titles clear of the curve's axis label."""
    from matplotlib.figure import Figure
    from PIL import Image

    picks = [per_generation[i] for i in _spaced(len(per_generation), STRIP_IMAGES)]
    rows, columns = -(-len(picks) // STRIP_ROW) or 1, min(max(len(picks), 1), STRIP_ROW)
    fig = Figure(figsize=(FIGURE_WIDTH, 4.6 + 1.5 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, columns, height_ratios=[4.6, *[1.5] * rows])
    _curve_axes(fig.add_subplot(grid[0, :]), curves, best_reference, segments)
    fig.axes[0].set_title(title)
    for k, (number, best) in enumerate(picks):
        ax = fig.add_subplot(grid[1 + k // STRIP_ROW, k % STRIP_ROW])
        ax.imshow(Image.open(io.BytesIO(archive.read(best.content_hash))).convert("RGB"))
        ax.set_axis_off()
        ax.set_title(f"gen {number}\n{best.score:.3g} (n={best.presentations})", fontsize=SMALL_TEXT)
    fig.savefig(path, dpi=120)
    return fig


def _scores_figure(panels: int):
    """The figure of scores.png, one score axes per evolution, one under the other: (figure, axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIGURE_WIDTH, 4.4 * max(panels, 1)), layout="constrained")
    return fig, fig.subplots(max(panels, 1), 1, squeeze=False)[:, 0]


def _spaced(total: int, most: int) -> list[int]:
    if total <= most:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, most)})


def _manifold_figure(db, thread: Thread, path: Path, archive):
    """The Manifold map of the first plane, with its level sets, beside the images on its grid; returns the saved
    Figure, or None while the map has no data."""
    from matplotlib.figure import Figure
    from PIL import Image

    from analysis.manifold import analyze
    from analysis.plots import chart_labels, draw_map, map_extent
    from server.manifold import manifold_data, plane_axes

    try:
        data = manifold_data(db, thread.id)
    except ServerError:
        return None
    data = replace(data, planes=data.planes[:1], trials=data.trials[:1])
    (result,) = analyze(data, reliability=False)
    smoothed, n = result["map"], len(data.theta)
    images = {index: digest for index, digest in db.execute(
        select(Stimulus.index, Stimulus.content_hash)
        .where(Stimulus.thread_id == thread.id, Stimulus.kind == StimulusKind.SYNTHETIC, Stimulus.index < n * n))}
    side = 48
    sheet = Image.new("RGB", (n * side, n * side), "white")
    for index, digest in images.items():
        i, j = divmod(index, n)  # θ index across, φ index up, as in the map
        image = Image.open(io.BytesIO(archive.read(digest))).convert("RGB").resize((side, side))
        sheet.paste(image, (i * side, (n - 1 - j) * side))
    labels = chart_labels(plane_axes(data.planes[0]))
    fig = Figure(figsize=(FIGURE_WIDTH, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    draw_map(left, smoothed.values, smoothed.theta, smoothed.phi, signature=result["signature"],
             label=_wrapped(data.label))
    fig.suptitle(f"{thread.name}: Manifold map, plane {data.planes[0]}")
    left.set(title="smoothed, with its level sets", **labels)
    right.imshow(sheet, extent=map_extent(data.theta, data.phi))
    right.set(title="images on the grid", **labels)
    fig.savefig(path, dpi=120)
    return fig


RETEST_IMAGES = 10  # retested images pictured under the retest figure (the best; the JSON has them all)


def _retest_report(db, thread: Thread, out_dir: Path, archive):
    """retest_<thread>.json: ``retest.retest_table``; retest_<thread>.png: `_retest_figure`. Returns the saved
    Figure, or None while the retest has no scored showing."""
    table = retest_table(db, thread)
    if table is None:
        return None
    (out_dir / f"retest_{_file_part(thread)}.json").write_text(json.dumps(json_safe(table), indent=2), encoding="utf-8")
    fig = _retest_figure(thread.name, table, archive)
    fig.savefig(out_dir / f"retest_{_file_part(thread)}.png", dpi=120)
    return fig


def _retest_figure(name: str, table: dict, archive):
    """Each image's retest mean ± SEM against its evolution mean, beside the reference images' means in the same
    generation, above the best images shown again."""
    from matplotlib.figure import Figure
    from PIL import Image

    value = lambda v: np.nan if v is None else v  # noqa: E731
    images, shown = table["images"], table["images"][:RETEST_IMAGES]
    rows = -(-len(shown) // IMAGE_ROW) or 1
    fig = Figure(figsize=(FIGURE_WIDTH, 5.2 + 2.1 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, IMAGE_ROW, height_ratios=[5.2, *[2.1] * rows])
    ax = fig.add_subplot(grid[0, :])
    x = np.array([value(i["evolution_mean"]) for i in images], dtype=float)
    ax.errorbar(x, [value(i["retest_mean"]) for i in images], yerr=[value(i["retest_sem"]) for i in images],
                fmt="o", color="C0", label="retested image: mean ± SEM of its new showings")
    for k, reference in enumerate(table["references"]):
        if reference["mean"] is not None:
            ax.axhline(reference["mean"], color="C1", lw=0.8, ls="--",
                       label="reference image, same generation" if k == 0 else None)
    finite = x[np.isfinite(x)]
    if finite.size:
        ax.plot([finite.min(), finite.max()], [finite.min(), finite.max()], color="0.5", lw=0.8, label="retest = evolution")
    ax.set(title=f"{name}: the best images of {table['source']!r} shown again",
           xlabel=_wrapped(f"evolution: mean over all its showings, {table['evolution_label']}"),
           ylabel=_wrapped(f"retest, {table['label']}"))
    _legend_below(ax)
    for k, image in enumerate(shown):
        thumb = fig.add_subplot(grid[1 + k // IMAGE_ROW, k % IMAGE_ROW])
        thumb.imshow(Image.open(io.BytesIO(archive.read(image["content_hash"]))).convert("RGB"))
        thumb.set_axis_off()
        thumb.set_title(f"#{image['rank']}\nretest {value(image['retest_mean']):.3g} (n={image['retest_n']})\n"
                        f"evolution {value(image['evolution_mean']):.3g} (n={image['evolution_n']})",
                        fontsize=SMALL_TEXT)
    return fig


#: Characters a file name cannot hold on Windows or an SMB share (and "/" nowhere), replaced in report file names.
_NOT_IN_FILE_NAMES = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def _file_part(thread: Thread) -> str:
    """The thread's name as part of a report file name: as it is when every system can hold it, else with the
    characters they cannot (``/``, ``:``, ``?``, ...; a leading dot; a letter this machine's file names cannot
    encode) replaced by ``_`` and the thread id added, so two names never share a file. The figures show the name
    itself."""
    encoding = sys.getfilesystemencoding()  # latin-1 on a de_DE.ISO-8859-1 machine: no Japanese file names
    safe = "".join(c if c.encode(encoding, "ignore") else "_" for c in _NOT_IN_FILE_NAMES.sub("_", thread.name))
    safe = safe.strip(" ")
    safe = "_" + safe[1:] if safe.startswith(".") else safe
    return thread.name if safe == thread.name else f"{safe}-{thread.id}"


def write_session_report(database_url: str, data_dir: Path, session_id: int, out_dir: Path) -> list[ThreadSummary]:
    """Write the session's figures and summary.json; return the per-thread summaries.

    scores.png: every evolution's score curve; evolution_<thread>.png: a curve above its best image per
    generation; best_images.png: each evolution's best distinct images, labelled; manifold_<thread>.png:
    each Manifold map beside the images on its grid; retest_<thread>.json and .png: ``_retest_report``;
    methods.txt: ``methods_text``. Letters of the names the fonts lack are logged once, not once per figure.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summaries = _write_session_report(database_url, data_dir, session_id, out_dir)
    missing = set()
    for warning in caught:
        if (glyph := _MISSING_GLYPH.match(str(warning.message))) is not None:
            missing.add(chr(int(glyph[1])))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing:
        log.warning("report figures: %d letter(s) of the names (%s) are not in matplotlib's fonts and are drawn as "
                    "empty boxes; install a font that has them and name it in matplotlibrc (docs/dashboard.md, "
                    "Report figures)", len(missing), "".join(sorted(missing)))
    return summaries


#: matplotlib's warning for a letter its fonts lack: "Glyph 12489 (\N{KATAKANA LETTER DO}) missing from font(s) ...".
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")


def _write_session_report(database_url: str, data_dir: Path, session_id: int, out_dir: Path) -> list[ThreadSummary]:
    archive = ImageArchive(data_dir)
    db_engine = offline_db_engine(database_url)
    summaries, best_rows = [], []
    try:
        with make_sessionmaker(db_engine)() as db:
            threads = db.scalars(select(Thread).where(Thread.session_id == session_id).order_by(Thread.id)).all()
            if not threads:
                raise ServerError(f"session {session_id} not found; list sessions with `actmax session list`")
            out_dir.mkdir(parents=True, exist_ok=True)
            evolutions = [t for t in threads if t.kind == "evolution"]
            fig, axes = _scores_figure(len(evolutions))
            for thread in threads:
                if thread.kind == "manifold":
                    _manifold_figure(db, thread, out_dir / f"manifold_{_file_part(thread)}.png", archive)
                    continue
                if thread.kind == "retest":
                    _retest_report(db, thread, out_dir, archive)
                    continue
                ax = axes[evolutions.index(thread)]
                generations = _completed_generations(db, thread)
                references = _reference_scores(db, thread, generations)
                curves = _thread_curves(generations, references)
                segments = _segments(db, thread, generations)
                since = segments[-1][0]  # scores of different objectives are not compared
                ranked, best_reference = _ranked(db, thread, generations, references, since)
                best = ranked[:BEST_IMAGES]
                title = thread.name if thread.name == thread.optimizer else f"{thread.name} ({thread.optimizer})"
                _curve_axes(ax, curves, best_reference, segments)
                ax.set(title=title)
                _evolution_figure(out_dir / f"evolution_{_file_part(thread)}.png", title, segments, curves, best_reference,
                                  _best_per_generation(db, thread), archive)
                first = np.flatnonzero(curves["number"] == since)
                summaries.append(ThreadSummary(
                    thread_id=thread.id, name=thread.name, optimizer=thread.optimizer,
                    generations=len(curves["number"]), objective_from_generation=since,
                    first_generation_mean=float(curves["mean"][first[0]]) if first.size else float("nan"),
                    last_generation_mean=float(curves["mean"][-1]) if len(curves["mean"]) else float("nan"),
                    best_reference=float("nan") if best_reference is None else best_reference[0],
                    reference_mean=_finite_mean(curves["reference_mean"][curves["number"] >= since]),
                    best_score=best[0].score if best else float("nan"), channels=_channel_names(db, thread),
                    best_score_presentations=best[0].presentations if best else 0,
                    best_reference_presentations=0 if best_reference is None else best_reference[1],
                    images_ranked=len(ranked),
                    best_images=[{"sha256": b.content_hash, "generations": b.generations, "score": b.score,
                                  "presentations": b.presentations} for b in best],
                ))
                best_rows.append((thread.name, ranked, " spikes/s" if thread.objective_json.get("channels") else ""))
            fig.savefig(out_dir / "scores.png", dpi=120)
            methods = methods_text(db, threads[0].session)
    finally:
        db_engine.dispose()
    _best_images_figure(best_rows, archive, out_dir / "best_images.png")
    (out_dir / "summary.json").write_text(json.dumps(json_safe([asdict(s) for s in summaries]), indent=2),
                                          encoding="utf-8")
    (out_dir / "methods.txt").write_text(methods, encoding="utf-8")
    return summaries


def retest_lines(database_url: str, session_id: int) -> list[str]:
    """A line per retest of the session that has measured something: its name and ``retest_text``."""
    db_engine = offline_db_engine(database_url)
    try:
        with make_sessionmaker(db_engine)() as db:
            threads = db.scalars(select(Thread).where(Thread.session_id == session_id, Thread.kind == "retest")
                                 .order_by(Thread.id)).all()
            return [f"{thread.name}: {retest_text(table)}" for thread in threads
                    if (table := retest_table(db, thread)) is not None]
    finally:
        db_engine.dispose()


def methods_text(db, session: Session) -> str:
    """What a methods section starts from, as the store recorded it: the session's rig, channels, references and
    response window, what its record notes (`_record_text`), then a paragraph per thread (generator and weights,
    optimizer with every hyperparameter it ran with, seed, population and generations, objective, software)."""
    # The stored config as it is (not validated: a reference folder of the server need not exist here).
    references = ReferenceConfig.model_construct(**session.config_json.get("references", {}))
    labels = queries.session_channel_labels(db, session)  # a thread's paragraph names those it recorded under
    names = f" ({', '.join(SKIMAGE_REFERENCES[:references.count])})" if references.source == "skimage" else ""
    start, end = session.config_json["response_window_ms"]
    channels = ("its channels unlabelled" if not labels else
                f"its channels labelled {', '.join(f'{i} {label!r}' for i, label in enumerate(labels))}"
                if len(labels) <= NAMED_CHANNELS else
                f"its {len(labels)} channels labelled {labels[0]!r} (0) to {labels[-1]!r} ({len(labels) - 1})")
    paragraphs = [
        f"Session {session.id} {session.name!r} was recorded on rig {session.rig!r} "
        f"(animal {session.animal or 'not given'}, array {session.array or 'not given'}; {channels}) from "
        f"{session.created_at:%Y-%m-%d %H:%M} UTC. Each image's score was computed from the spike rates counted "
        f"{start:g}-{end:g} ms after its onset. {references.count} reference images from {references.source}{names} "
        "were shown with every generation."]
    if (record := _record_text(db, session)):
        paragraphs.append(record)
    provenance = thread_provenance(db, session)
    for thread in sorted(session.threads, key=lambda t: t.id):
        paragraphs.append(_thread_methods(db, thread, provenance[thread.id]))
    return "\n\n".join(paragraphs) + "\n"


RECORD_KINDS = ("session.note", "rig.channels_changed")  # the events that change how the session is read


def _record_text(db, session: Session) -> str:
    """What the session's record holds that changes how to read it, a line each, oldest first: the users' notes
    (``session.note``: on a thread, on some of its generations) and the rig coming back with other channels
    (``rig.channels_changed``); empty without any."""
    events = db.scalars(select(Event).where(Event.session_id == session.id, Event.kind.in_(RECORD_KINDS))
                        .order_by(Event.time, Event.id)).all()
    names = {thread.id: thread.name for thread in session.threads}
    lines = []
    for event in events:
        data, when = event.data_json or {}, _utc(event.time)
        if event.kind == "session.note":
            first, last = data.get("generations") or (None, None)
            on = "" if data.get("thread_id") is None else f" on thread {names.get(data['thread_id'])!r}" + (
                "" if first is None else f", generation {first}" if first == last else f", generations {first}-{last}")
            lines.append(f"- {when}, a note{on}: {data.get('text', event.message)}")
        else:
            lines.append(f"- {when}, rig {data['rig']!r} came back with other channels: "
                         f"{channels_change(data['before'], data['after'])}. The threads went on scoring their "
                         "channels by number, so a channel may be another unit before this time than after; the "
                         "session's labels above are those at its last presentation, a thread's those it "
                         "recorded under.")
    return "Noted in the session's record:\n" + "\n".join(lines) if lines else ""


def _thread_methods(db, thread: Thread, provenance: ThreadProvenance) -> str:
    generations = _completed_generations(db, thread)
    hyperparameters = provenance.hyperparameters
    settings = ", ".join(f"{key}={_brief(value)}" for key, value in hyperparameters.items()) or "not recorded"
    runs = _runs(db, thread, generations)
    objectives = _segments_text([(run.number, _objective_text(run)) for run in runs])
    software = "; then ".join(f"{software_text(r)} on {r.get('device', '?')}, {r.get('precision', '?')} precision"
                              for r in provenance.software) or "not recorded"
    manifold = manifold_configs(thread.session).get(thread.id)
    design = (f" (the grid of a Manifold map around thread {manifold.source!r}: planes {', '.join(manifold.planes)}, "
              f"{manifold.step_deg:g} degree steps)" if manifold is not None else "")
    if thread.kind == "retest":
        retest = retest_config(thread)
        design = (f" (the {retest.top} best images of thread {retest.source!r}, by the mean over all their showings "
                  "there, shown again)")
    return (f"Thread {thread.name!r} ({thread.kind}, id {thread.id}): images were rendered by the generator "
            f"{thread.generator} {_weights_text(db, thread)}, from latent codes proposed by the {thread.optimizer} "
            f"optimizer{design} (seed {thread.seed}; hyperparameters {settings}), "
            f"{_images_per_generation(generations, hyperparameters)}, "
            f"each shown {thread.repeats} time(s) per generation; {len(generations)} of {thread.n_generations} "
            f"generations completed ({thread.status.value}).{_extensions_text(db, thread)} Scores: {objectives}. "
            f"Software: {software}."
            + (_best_image_text(*_ranked(db, thread, generations, _reference_scores(db, thread, generations),
                                         runs[-1].number), generations[-1], runs[-1].number)
               if thread.kind == "evolution" and generations else "")
            + (f" {retest_text(table)}" if thread.kind == "retest" and (table := retest_table(db, thread)) else ""))


def retest_text(table: dict) -> str:
    """What a retest measured, in a sentence: its images' mean when shown again against their evolution mean, and
    the reference images' in the same generation."""
    def mean(values) -> str:
        finite = [v for v in values if v is not None]
        return f"{np.mean(finite):.3g}" if finite else "nothing"

    images, references = table["images"], table["references"]
    shown = sorted({i["retest_n"] for i in images}) or [0]
    return (f"Shown again ({_range(shown)} scored presentations each), its "
            f"{len(images)} images scored {mean(i['retest_mean'] for i in images)} on average, against "
            f"{mean(i['evolution_mean'] for i in images)} over their showings in {table['source']!r}; the reference "
            f"images scored {mean(r['mean'] for r in references)} on average in the same generation, the best "
            f"{max((r['mean'] for r in references if r['mean'] is not None), default=float('nan')):.3g}.")


def _images_per_generation(generations: list[Generation], hyperparameters: dict) -> str:
    """How many images the completed generations had, as stored: one count, or each run of generations with its
    count (sphere-cma's centre joins generation 1: "10 images in generation 0, 11 from generation 1 on (10 samples
    and the centre)")."""
    population = hyperparameters.get("population")
    if not generations:
        return f"{population or '?'} images per generation"
    runs: list[list[int]] = []  # [first, last, images]
    for g in generations:
        if runs and runs[-1][2] == g.n_stimuli:
            runs[-1][1] = g.number
        else:
            runs.append([g.number, g.number, g.n_stimuli])
    centre = lambda n: (f" ({population} samples and the centre)"  # noqa: E731
                        if hyperparameters.get("include_center") and population and n == population + 1 else "")
    images = lambda n: f"{n} image{'s' * (n != 1)}"  # noqa: E731
    if len(runs) == 1:
        return f"{images(runs[0][2])} per generation{centre(runs[0][2])}"
    return ", ".join(
        f"{images(n) if i == 0 else n} "
        + (f"in generation {first}" if first == last else
           f"from generation {first} on" if i == len(runs) - 1 else f"in generations {first}-{last}") + centre(n)
        for i, (first, last, n) in enumerate(runs))


def _weights_text(db, thread: Thread) -> str:
    """The generator versions and weights the thread's images were rendered with, by generation when they changed."""
    rows = db.execute(
        select(Generation.number, Stimulus.generator_version, Stimulus.weights_sha256)
        .join(Generation, Generation.id == Stimulus.generation_id)
        .where(Stimulus.thread_id == thread.id, Stimulus.kind == StimulusKind.SYNTHETIC)
        .distinct().order_by(Generation.number)).all()
    runs: list[tuple[int, int, tuple]] = []  # (first, last generation, (version, sha256))
    for number, version, sha256 in rows:
        if runs and runs[-1][2] == (version, sha256):
            runs[-1] = (runs[-1][0], number, runs[-1][2])
        else:
            runs.append((number, number, (version, sha256)))
    if not runs:
        return f"{thread.generator_version or ''} (no image rendered)".lstrip()
    texts = [f"version {version or 'unknown'} (weights sha256 {sha256 or 'unknown'})" for _, _, (version, sha256)
             in runs]
    if len(runs) == 1:
        return texts[0]
    return ", then ".join(f"{text} for generation{f' {first}' if first == last else f's {first}-{last}'}"
                          for text, (first, last, _) in zip(texts, runs))


def _objective_text(run: Run) -> str:
    """A run's objective: its expression, or its channels by the labels they were recorded under, each
    relabelling within the run with its time (``0 (blocks.6:67 until 2026-11-30 09:31:01 UTC, then
    blocks.6:5)``; more than ``NAMED_CHANNELS`` as ranges, "relabelled at" those times)."""
    objective = run.objective
    if "expression" in objective:
        return f"the expression {objective['expression']}"
    channels = objective_channels(objective)
    label = lambda labels, c: labels[c] if c < len(labels) else "unlabelled"  # noqa: E731
    changes = {c: [(at, label(later, c)) for (_, before), (at, later) in zip(run.labels, run.labels[1:])
                   if label(before, c) != label(later, c)] for c in channels}

    def name(c: int) -> str:
        first = label(run.start_labels, c)
        if first == "unlabelled" and not changes[c]:
            return str(c)
        return f"{c} ({first}" + "".join(f" until {_utc(at)}, then {new}" for at, new in changes[c]) + ")"

    if len(channels) <= NAMED_CHANNELS:
        listed = ", ".join(map(name, channels))
    else:
        times = sorted({at for moved in changes.values() for at, _ in moved})
        listed = channel_ranges(channels) + (f" (relabelled at {', '.join(map(_utc, times))})" if times else "")
    return f"the {objective.get('combine', 'mean')} rate (spikes/s) of channel{'s' * (len(channels) > 1)} {listed}"


def _utc(time: datetime) -> str:
    return f"{time:%Y-%m-%d %H:%M:%S} UTC"


def _extensions_text(db, thread: Thread) -> str:
    """Each change of the thread's number of generations (``thread.extended``) with its time, and whether the
    thread had finished before it (an optional stopping rule a methods section names): `` It was created for 14
    generations, then extended to 17 at 2026-11-30 09:31:48 UTC, after it had finished.``; empty without any."""
    events = db.scalars(select(Event).where(Event.thread_id == thread.id,
                                            Event.kind.in_(("thread.extended", "thread.finished")))
                        .order_by(Event.id)).all()
    created, changes, finished = None, [], False
    for event in events:
        if event.kind == "thread.finished":
            finished = True
            continue
        data = event.data_json or {}
        created = data["from"] if created is None else created
        changes.append(f"{'extended' if data['to'] > data['from'] else 'shortened'} to {data['to']} at "
                       f"{_utc(event.time)}" + (", after it had finished" if finished else ""))
        finished = False
    return f" It was created for {created} generations, then {'; then '.join(changes)}." if changes else ""


def _segments_text(segments: list[tuple[int, str]]) -> str:
    """One objective, or each with the generation it applied from (a retarget)."""
    if len(segments) == 1:
        return segments[0][1]
    return "; then ".join(f"{text} from generation {number}" for number, text in segments)


def _brief(value) -> str:
    """A hyperparameter for prose: a long vector by its length, an array recorded by fingerprint by its hash."""
    if isinstance(value, list) and len(value) > 8:
        return f"<{len(value)} numbers>"
    if isinstance(value, dict) and "sha256" in value:
        return f"<array sha256 {value['sha256'][:12]}>"
    return json.dumps(value)


def _best_images_figure(rows: list[tuple[str, list[Best], str]], archive, path: Path):
    """Each evolution's best distinct images (``rows``: thread name, its ranked images, the scores' unit), a row
    per thread titled with how many images its best are the best of and why the top one is biased high; each
    image labelled by the generations that showed it and its mean score over its n presentations; returns the
    saved Figure."""
    from matplotlib.figure import Figure
    from PIL import Image

    columns = max((min(len(ranked), IMAGE_ROW) for _, ranked, _ in rows), default=1) or 1
    width = FIGURE_WIDTH * columns / IMAGE_ROW
    titles = [textwrap.fill(
        f"{name}: the best {min(len(ranked), BEST_IMAGES)} of {len(ranked)} images, each at the mean of its n "
        f"presentations (n = {_range([b.presentations for b in ranked])}); the best of many noisy means is biased "
        "high: expect it to be lower when shown again" if ranked else f"{name}: no scored image",
        int(width * 72 / (0.6 * SMALL_TEXT)), break_long_words=False) for name, ranked, _ in rows]  # ~0.6 em a letter
    image_rows = [-(-min(len(ranked), BEST_IMAGES) // IMAGE_ROW) or 1 for _, ranked, _ in rows]
    heights = [2.1 * n + 0.2 * (title.count("\n") + 1) for n, title in zip(image_rows, titles)] or [2.3]
    fig = Figure(figsize=(width, sum(heights)), layout="constrained")
    subfigures = fig.subfigures(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]
    for subfigure, title, n, (_, ranked, unit) in zip(subfigures, titles, image_rows, rows):
        subfigure.suptitle(title, fontsize=SMALL_TEXT)
        for k, ax in enumerate(subfigure.subplots(n, columns, squeeze=False).ravel()):
            ax.set_axis_off()
            if k < min(len(ranked), BEST_IMAGES):
                image = ranked[k]
                ax.imshow(Image.open(io.BytesIO(archive.read(image.content_hash))).convert("RGB"))
                ax.set_title(f"gen {image.generations}\n{image.score:.3g}{unit} (n={image.presentations})",
                             fontsize=SMALL_TEXT)
    fig.savefig(path, dpi=120)
    return fig
