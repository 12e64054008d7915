"""A session report from its database: score per generation against references, best images, summary, and a
methods paragraph (methods.txt) of how each thread ran."""

from __future__ import annotations

import io
import json
import textwrap
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from sqlalchemy import select

from analysis.serialization import json_safe
from server import ServerError
from server.drift import mean_sem
from server.export.tables import ThreadProvenance, manifold_configs, software_text, thread_provenance
from server.images import SKIMAGE_REFERENCES
from server.objectives import Objective, channel_ranges, objective_channels, objective_segments, score_label
from server.session_config import FlaggedTrialsConfig, ReferenceConfig
from server.store import queries
from server.store.archive import ImageArchive
from server.store.db import make_db_engine, make_sessionmaker
from server.store.models import Generation, GenerationStatus, Session, Stimulus, StimulusKind, Thread


@dataclass
class ThreadSummary:
    thread_id: int
    name: str
    optimizer: str
    generations: int
    objective_from_generation: int  # the current objective's first generation (0 unless retargeted)
    first_generation_mean: float  # of that generation: means are compared within one objective
    last_generation_mean: float
    best_reference: float  # over the current objective's generations, as the best score
    reference_mean: float
    best_score: float
    channels: list[str]  # the channels the objective scores, by the rig's labels (``ch<index>`` without)


def _channel_names(db, thread: Thread, objective: dict | None = None) -> list[str]:
    """The channels of ``objective`` (the thread's by default) as the rig labelled them in HELLO (protocol 1.1),
    else ``ch<index>``."""
    labels = queries.session_channel_labels(db, thread.session) or []
    return [labels[c] if c < len(labels) else f"ch{c}" for c in objective_channels(objective or thread.objective_json)]


STRIP_COLUMNS = 12  # best images under an evolution curve (evenly spaced generations, last included)


def _mean_sem(values) -> tuple[float, float]:
    """``drift.mean_sem`` with NaN for "no value", for plotting."""
    return tuple(np.nan if v is None else v for v in mean_sem(values))


def _finite_mean(values: np.ndarray) -> float:
    """The mean of the finite values; NaN (and no warning) without any."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


NAMED_CHANNELS = 4  # an axis label names this many channels; more are counted (a Neuropixels probe has 384)


def _score_label(db, thread: Thread, objective: dict | None = None) -> str:
    """What scores by ``objective`` (the thread's by default) are: spikes/s of its channels' rates, else its
    expression."""
    objective = objective or thread.objective_json
    label = score_label(objective)
    if not objective.get("channels"):
        return label
    names = _channel_names(db, thread, objective)
    if len(names) <= NAMED_CHANNELS:
        return f"{label} of {', '.join(names)}"
    return f"{label}, {objective.get('combine', 'mean')} of {len(names)} channels ({names[0]}, {names[1]}, … {names[-1]})"


def _segments(db, thread: Thread, generations: list[Generation]) -> list[tuple[int, str]]:
    """(first generation, score label) of each objective the generations were scored with, in order."""
    return [(number, _score_label(db, thread, objective)) for number, objective
            in objective_segments([(g.number, g.objective_json or thread.objective_json) for g in generations])]


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


def _best_reference(scores: dict[int, dict[str, float]]) -> float | None:
    """The best reference image's mean score over the generations that showed it; None without any."""
    per: dict[str, list[float]] = {}
    for generation in scores.values():
        for stimulus_id, score in generation.items():
            per.setdefault(stimulus_id, []).append(score)
    return max((float(np.mean(v)) for v in per.values()), default=None)


@dataclass(frozen=True)
class Best:
    """A scored synthetic image: where it came from and its content hash."""

    stimulus_id: str
    generation: int
    score: float
    content_hash: str


def _scored_images(db, thread: Thread) -> list[Best]:
    rows = db.execute(
        select(Stimulus.id, Stimulus.index, Stimulus.content_hash, Generation.number, Generation.scores_json)
        .join(Generation, Generation.id == Stimulus.generation_id)
        .where(Generation.thread_id == thread.id, Generation.status == GenerationStatus.COMPLETE,
               Stimulus.kind == StimulusKind.SYNTHETIC)
    ).all()
    return [Best(sid, number, scores[index], digest) for sid, index, digest, number, scores in rows
            if scores and scores[index] is not None and np.isfinite(scores[index])]


def _best_stimuli(db, thread: Thread, n: int, from_generation: int = 0) -> list[Best]:
    """The n best-scoring distinct images of a thread from generation ``from_generation`` on (an elite shown
    again counts once, at its best)."""
    seen, best = set(), []
    for image in sorted(_scored_images(db, thread), key=lambda b: (-b.score, b.generation)):
        if image.generation >= from_generation and image.content_hash not in seen:
            seen.add(image.content_hash)
            best.append(image)
        if len(best) == n:
            break
    return best


def _best_per_generation(db, thread: Thread) -> list[Best]:
    """The best image of each completed generation, in generation order."""
    best: dict[int, Best] = {}
    for image in _scored_images(db, thread):
        if image.generation not in best or image.score > best[image.generation].score:
            best[image.generation] = image
    return [best[g] for g in sorted(best)]


def _curve_axes(ax, curves: dict[str, np.ndarray], best_reference: float | None,
                segments: list[tuple[int, str]]) -> None:
    """Mean ± SEM, max, reference mean ± SEM and the best reference against generation; a curve without a
    value is left out, legend entry included. The y axis names the scores' unit; after a retarget, a marker
    at each objective's first generation names its unit instead, and the curves are not joined across it."""
    if len(segments) > 1:  # a NaN row before each change of objective leaves a gap
        at = np.searchsorted(curves["number"], [number for number, _ in segments[1:]])
        curves = {key: np.insert(values.astype(float), at, np.nan) for key, values in curves.items()}
    x = curves["number"]
    if np.isfinite(curves["mean"]).any():
        ax.fill_between(x, curves["mean"] - curves["sem"], curves["mean"] + curves["sem"], color="C0", alpha=0.25, lw=0)
        ax.plot(x, curves["mean"], color="C0", label="generation mean ± SEM")
        ax.plot(x, curves["max"], color="C0", ls=":", label="generation max")
    if np.isfinite(curves["reference_mean"]).any():
        ax.fill_between(x, curves["reference_mean"] - curves["reference_sem"],
                        curves["reference_mean"] + curves["reference_sem"], color="C1", alpha=0.25, lw=0)
        ax.plot(x, curves["reference_mean"], color="C1", label="reference mean ± SEM")
    if best_reference is not None:
        since = f" (generations {segments[-1][0]} on)" if len(segments) > 1 else ""
        ax.axhline(best_reference, color="C1", ls="--", lw=1, label=f"best reference image{since}")
    if len(segments) > 1:
        for number, label in segments:
            ax.axvline(number, color="0.4", ls="-.", lw=1)
            ax.annotate(_wrapped(label, fontsize=7), (number, 0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                        textcoords="offset points", va="bottom", fontsize=7, rotation=90)
    ax.set(xlabel="generation", ylabel=_wrapped(_axis_label(segments)))
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7, loc="best")


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
                      per_generation: list[Best], archive):
    """The standard evolution figure: the score curve above a strip of each generation's best image; returns
    the saved Figure. Constrained layout keeps the strip's titles clear of the curve's axis label."""
    from matplotlib.figure import Figure
    from PIL import Image

    picks = [per_generation[i] for i in _spaced(len(per_generation), STRIP_COLUMNS)]
    fig = Figure(figsize=(11, 5.6), layout="constrained")
    grid = fig.add_gridspec(2, max(len(picks), 1), height_ratios=[3, 1.1])
    _curve_axes(fig.add_subplot(grid[0, :]), curves, best_reference, segments)
    fig.axes[0].set_title(title)
    for column, best in enumerate(picks):
        ax = fig.add_subplot(grid[1, column])
        ax.imshow(Image.open(io.BytesIO(archive.read(best.content_hash))).convert("RGB"))
        ax.set_axis_off()
        ax.set_title(f"gen {best.generation}\n{best.score:.3g}", fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _scores_figure(panels: int):
    """The figure of scores.png, one score axes per evolution: (figure, axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * max(panels, 1), 4), layout="constrained")
    return fig, fig.subplots(1, max(panels, 1), squeeze=False)[0]


def _spaced(total: int, most: int) -> list[int]:
    if total <= most:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, most)})


def _manifold_figure(db, thread: Thread, path: Path, archive) -> bool:
    """The Manifold map of the first plane beside the images on its grid; False while the map has no data."""
    from matplotlib.figure import Figure
    from PIL import Image

    from analysis.manifold import analyze
    from analysis.plots import chart_labels, map_extent
    from server.manifold import manifold_data, plane_axes

    try:
        data = manifold_data(db, thread.id)
    except ServerError:
        return False
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
    fig = Figure(figsize=(11, 5))
    left, right = fig.subplots(1, 2)
    shown = left.imshow(smoothed.values.T, origin="lower", cmap="inferno", aspect="equal",
                        extent=map_extent(smoothed.theta, smoothed.phi))
    fig.colorbar(shown, ax=left, label=data.label)
    left.set(title=f"{thread.name}: Manifold map, plane {data.planes[0]}", **labels)
    right.imshow(sheet, extent=map_extent(data.theta, data.phi))
    right.set(title="images on the grid", **labels)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_session_report(database_url: str, data_dir: Path, session_id: int, out_dir: Path) -> list[ThreadSummary]:
    """Write the session's figures and summary.json; return the per-thread summaries.

    scores.png: every evolution's score curve; evolution_<thread>.png: a curve above its best image per
    generation; best_images.png: each evolution's best distinct images, labelled; manifold_<thread>.png:
    each Manifold map beside the images on its grid; methods.txt: ``methods_text``.
    """
    archive = ImageArchive(data_dir)
    db_engine = make_db_engine(database_url)
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
                    _manifold_figure(db, thread, out_dir / f"manifold_{thread.name}.png", archive)
                    continue
                ax = axes[evolutions.index(thread)]
                generations = _completed_generations(db, thread)
                references = _reference_scores(db, thread, generations)
                curves = _thread_curves(generations, references)
                segments = _segments(db, thread, generations) or [(0, _score_label(db, thread))]
                since = segments[-1][0]  # scores of different objectives are not compared
                best = _best_stimuli(db, thread, 8, since)
                best_reference = _best_reference({g.id: references[g.id] for g in generations if g.number >= since})
                title = thread.name if thread.name == thread.optimizer else f"{thread.name} ({thread.optimizer})"
                _curve_axes(ax, curves, best_reference, segments)
                ax.set(title=title)
                _evolution_figure(out_dir / f"evolution_{thread.name}.png", title, segments, curves, best_reference,
                                  _best_per_generation(db, thread), archive)
                first = np.flatnonzero(curves["number"] == since)
                summaries.append(ThreadSummary(
                    thread_id=thread.id, name=thread.name, optimizer=thread.optimizer,
                    generations=len(curves["number"]), objective_from_generation=since,
                    first_generation_mean=float(curves["mean"][first[0]]) if first.size else float("nan"),
                    last_generation_mean=float(curves["mean"][-1]) if len(curves["mean"]) else float("nan"),
                    best_reference=float("nan") if best_reference is None else best_reference,
                    reference_mean=_finite_mean(curves["reference_mean"]),
                    best_score=best[0].score if best else float("nan"), channels=_channel_names(db, thread),
                ))
                best_rows.append((thread.name, best, " spikes/s" if thread.objective_json.get("channels") else ""))
            fig.savefig(out_dir / "scores.png", dpi=120)
            methods = methods_text(db, threads[0].session)
    finally:
        db_engine.dispose()
    _best_images_figure(best_rows, archive, out_dir / "best_images.png")
    (out_dir / "summary.json").write_text(json.dumps(json_safe([asdict(s) for s in summaries]), indent=2))
    (out_dir / "methods.txt").write_text(methods)
    return summaries


def methods_text(db, session: Session) -> str:
    """What a methods section starts from, as the store recorded it: the session's rig, channels, references and
    response window, then a paragraph per thread (generator and weights, optimizer with every hyperparameter it ran
    with, seed, population and generations, objective, software)."""
    # The stored config as it is (not validated: a reference folder of the server need not exist here).
    references = ReferenceConfig.model_construct(**session.config_json.get("references", {}))
    labels = queries.session_channel_labels(db, session)
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
    provenance = thread_provenance(db, session)
    for thread in sorted(session.threads, key=lambda t: t.id):
        paragraphs.append(_thread_methods(db, thread, provenance[thread.id], labels or []))
    return "\n\n".join(paragraphs) + "\n"


def _thread_methods(db, thread: Thread, provenance: ThreadProvenance, labels: list[str]) -> str:
    generations = _completed_generations(db, thread)
    hyperparameters = provenance.hyperparameters
    population = hyperparameters.get("population") or (generations[0].n_stimuli if generations else "?")
    settings = ", ".join(f"{key}={_brief(value)}" for key, value in hyperparameters.items()) or "not recorded"
    objectives = _segments_text([(number, _objective_text(objective, labels)) for number, objective in
                                 objective_segments([(g.number, g.objective_json or thread.objective_json)
                                                     for g in generations])]
                                or [(0, _objective_text(thread.objective_json, labels))])
    software = "; then ".join(f"{software_text(r)} on {r.get('device', '?')}, {r.get('precision', '?')} precision"
                              for r in provenance.software) or "not recorded"
    manifold = manifold_configs(thread.session).get(thread.id)
    design = (f" (the grid of a Manifold map around thread {manifold.source!r}: planes {', '.join(manifold.planes)}, "
              f"{manifold.step_deg:g} degree steps)" if manifold is not None else "")
    return (f"Thread {thread.name!r} ({thread.kind}, id {thread.id}): images were rendered by the generator "
            f"{thread.generator} {_weights_text(db, thread)}, from latent codes proposed by the {thread.optimizer} "
            f"optimizer{design} (seed {thread.seed}; hyperparameters {settings}), {population} images per generation, "
            f"each shown {thread.repeats} time(s) per generation; {len(generations)} of {thread.n_generations} "
            f"generations completed ({thread.status.value}). Scores: {objectives}. Software: {software}.")


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


def _objective_text(objective: dict, labels: list[str]) -> str:
    name = lambda c: f"{c} ({labels[c]})" if c < len(labels) else str(c)  # noqa: E731
    if "expression" in objective:
        return f"the expression {objective['expression']}"
    channels = objective_channels(objective)
    listed = ", ".join(map(name, channels)) if len(channels) <= NAMED_CHANNELS else channel_ranges(channels)
    return f"the {objective.get('combine', 'mean')} rate (spikes/s) of channel{'s' * (len(channels) > 1)} {listed}"


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


def _best_images_figure(rows: list[tuple[str, list[Best], str]], archive, path: Path) -> None:
    """Each evolution's best distinct images, one row per thread, labelled by thread, generation and score (with
    the row's unit)."""
    from matplotlib.figure import Figure
    from PIL import Image

    columns = max((len(best) for _, best, _ in rows), default=1) or 1
    fig = Figure(figsize=(1.4 * columns, 1.75 * max(len(rows), 1)))
    axes = fig.subplots(max(len(rows), 1), columns, squeeze=False)
    for row, (name, best, unit) in enumerate(rows):
        for column, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if column < len(best):
                image = best[column]
                ax.imshow(Image.open(io.BytesIO(archive.read(image.content_hash))).convert("RGB"))
                ax.set_title(f"{name} gen {image.generation}\n{image.score:.3g}{unit}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
