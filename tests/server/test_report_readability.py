"""The session report read in print and in greyscale, and for what its record says: line styles that tell the curves
apart without colour, a legend that hides no data, level sets that stand out from both ends of the colour map, text
of 8 pt or more on figures no wider than a page, none of it overlapping; methods.txt with the users' notes and the
rig's channel changes."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patheffects import Stroke
from matplotlib.text import Text
from PIL import Image
from sqlalchemy import select

from analysis.plots import map_figure
from server import report
from server.engine import log_hello
from server.store.archive import ImageArchive
from server.store.models import Event, Generation, Thread
from tests.server.conftest import LiveServer
from tests.server.test_manifold_analysis import RATES, record_map
from tests.server.test_report import png, record_session, record_showings

LABELS = ["blocks.6:67", "blocks.6:12", "blocks.6:5", "blocks.6:3"]


def luminance(color) -> float:
    """WCAG 2's relative luminance of an sRGB colour."""
    rgb = np.asarray(to_rgb(color))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast(a, b) -> float:
    """WCAG 2's contrast ratio, 1 to 21."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def dashes(line) -> tuple:
    """What a line looks like without its colour: its style and dash pattern."""
    return line.get_linestyle(), line._unscaled_dash_pattern


def curve_figure(segments):
    curves = {"number": np.arange(6), "mean": np.linspace(1, 6, 6), "sem": np.full(6, 0.5),
              "max": np.linspace(3, 9, 6), "reference_mean": np.full(6, 4.0), "reference_sem": np.full(6, 0.5)}
    fig, (ax,) = report._scores_figure(1)
    report._curve_axes(ax, curves, (5.0, 20), segments)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    return fig, ax, renderer


def test_the_reference_mean_is_told_apart_without_colour_and_the_legend_lies_below_the_data():
    """Generation mean and reference mean were both solid, told apart by hue alone (not in greyscale print), and
    the legend at loc="best" hid a point of the max curve."""
    fig, ax, renderer = curve_figure([(0, "score (spikes/s) of ch3"), (3, "score = zscore(rate(3))")])
    lines = {line.get_label(): line for line in ax.lines}
    curves = [lines[label] for label in ("generation mean ± SEM", "generation max (its best image: biased high)",
                                         "reference mean ± SEM")]
    curves.append(next(line for label, line in lines.items() if label.startswith("best reference image")))
    markers = [line for label, line in lines.items() if label.startswith("_")]  # the retarget's
    assert len(markers) == 2
    assert len({dashes(line) for line in curves}) == 4  # each curve its own style
    assert dashes(lines["reference mean ± SEM"]) != dashes(markers[0])
    # The legend draws each style (its handles are lines of the same dashes).
    legend = ax.get_legend()
    assert [dashes(h) for h in legend.legend_handles] == [dashes(line) for line in curves]

    box, xlabel, legend_box = (ax.get_window_extent(renderer), ax.xaxis.label.get_window_extent(renderer),
                               legend.get_window_extent(renderer))
    assert legend_box.y1 <= xlabel.y0 <= box.y0  # under the axes and its "generation" label
    assert fig.bbox.x0 <= legend_box.x0 and legend_box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= legend_box.y0


def level_set_lines(ax) -> list:
    lines = [line for line in ax.lines if line.get_xydata().shape[0] > 1]
    assert lines, "no level set drawn"
    return lines


def assert_level_sets_stand_out(ax):
    """Each level set line, by its colour or by the colour of its edge (a wider stroke under it), has WCAG's
    non-text contrast (3:1) against every colour of the map's colour map, both ends included."""
    cmap = ax.images[0].get_cmap()
    colours = cmap(np.linspace(0, 1, 256))[:, :3]
    for line in level_set_lines(ax):
        strokes = [effect for effect in line.get_path_effects() if isinstance(effect, Stroke)]
        edges = [effect._gc["foreground"] for effect in strokes if effect._gc["linewidth"] > line.get_linewidth()]
        for colour in colours:
            assert max(contrast(c, colour) for c in [line.get_color(), *edges]) >= 3, (line.get_color(), colour)


def test_level_sets_stand_out_from_both_ends_of_the_colour_map_in_the_map_figure():
    """Cyan on inferno: about 1.2:1 over the pale yellow peaks, gone in greyscale."""
    theta = np.deg2rad(np.linspace(-90, 90, 11))
    ax = map_figure(RATES, theta, theta).axes[0]
    cmap = ax.images[0].get_cmap()
    assert luminance(cmap(0.0)) < 0.01 and luminance(cmap(1.0)) > 0.8  # a dark and a pale end to stand out from
    assert_level_sets_stand_out(ax)


class Drawn:
    """The figures a report saves (``Figure.savefig``, with the file) and, drawn again, the texts each draws."""

    def __init__(self, monkeypatch):
        self.saved: list[tuple[Figure, str]] = []
        self._drawing: list | None = None
        save, draw = Figure.savefig, Text.draw

        def savefig(fig, path, **kwargs):
            self.saved.append((fig, str(path)))
            return save(fig, path, **kwargs)

        def text_draw(text, renderer):
            draw(text, renderer)
            if self._drawing is not None and text.get_visible() and text.get_text().strip():
                self._drawing.append((text, text.get_window_extent(renderer)))

        monkeypatch.setattr(Figure, "savefig", savefig)
        monkeypatch.setattr(Text, "draw", text_draw)

    def texts(self, fig: Figure) -> list:
        self._drawing = []
        try:
            fig.draw(FigureCanvasAgg(fig).get_renderer())
            return self._drawing
        finally:
            self._drawing = None


def assert_readable(drawn: Drawn, fig: Figure, path: str):
    """No wider than a page's text width (7 in) as saved, text of 8 pt or more, inside the figure, none of it on
    another; legends under their axes."""
    name = path.rsplit("/", 1)[-1]
    with Image.open(path) as image:
        assert image.size[0] / image.info["dpi"][0] <= 7.0 + 1e-3, name
    assert fig.get_figwidth() <= 7.0, name
    texts = drawn.texts(fig)
    assert texts, name
    for text, box in texts:
        assert text.get_fontsize() >= 8, (name, text.get_text(), text.get_fontsize())
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, (name, text.get_text())
        assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1, (name, text.get_text())
    boxes = [(text.get_text(), box.expanded(1, 1).padded(-0.5)) for text, box in texts]
    for i, (a, first) in enumerate(boxes):
        for b, second in boxes[i + 1:]:
            assert not first.overlaps(second), (name, a, b)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if ax.get_legend() is not None:
            assert ax.get_legend().get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0, name


def test_every_report_figure_prints_its_text_at_8_pt_or_more_without_overlaps(db_sessions, settings, tmp_path,
                                                                            monkeypatch):
    """Figures were 11 in wide at 120 dpi with 7 pt legends and image labels (6 pt in the retest figure): about 4 pt
    printed at a page's width. An evolution of 14 generations with four-digit scores, retargeted, on a labelled
    rig; a Manifold map (which drew no level sets); a retest of 10 images."""
    drawn = Drawn(monkeypatch)
    with db_sessions.begin() as db:
        db.add(Event(kind="rig.connected", message="rig connected", data_json={"rig": "rig-A", "channel_labels": LABELS}))
    generations = [{10 * number + k: [1000.0 + 40 * number + 7 * k] * 3 for k in range(4)} for number in range(14)]
    session_id, thread_id = record_showings(db_sessions, settings, generations)
    with db_sessions.begin() as db:
        thread = db.get(Thread, thread_id)
        thread.name = "a fairly long evolution name"
        for generation in db.scalars(select(Generation).where(Generation.thread_id == thread_id)):
            generation.objective_json = {"channels": [3]} if generation.number < 7 else {"channels": [2, 3]}
        thread.objective_json = {"channels": [2, 3]}
    report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path / "evolution")
    map_thread = record_map(db_sessions, settings.data_dir, repeats=1)
    with db_sessions() as db:
        map_session = db.get(Thread, map_thread).session_id
    report.write_session_report(settings.database_url, settings.data_dir, map_session, tmp_path / "map")

    archive = ImageArchive(settings.data_dir)
    images = [{"rank": k + 1, "content_hash": archive.save(png(200 + k)).content_hash, "retest_mean": 1234.5 - k,
               "retest_sem": 12.5, "retest_n": 12, "evolution_mean": 1987.6 - k, "evolution_n": 10}
              for k in range(12)]
    table = {"thread": "retest", "source": "a fairly long evolution name", "label": "score (spikes/s)",
             "evolution_label": "score (spikes/s)", "images": images,
             "references": [{"mean": 1000.0 + k} for k in range(2)]}
    retest = report._retest_figure("retest", table, archive)
    retest.savefig(tmp_path / "retest.png", dpi=120)

    names = sorted(path.rsplit("/", 1)[-1] for _, path in drawn.saved)
    assert names == ["best_images.png", "best_images.png", "evolution_a fairly long evolution name.png",
                     "evolution_evolve.png", "manifold_map.png", "retest.png", "scores.png", "scores.png"]
    for fig, path in drawn.saved:
        assert_readable(drawn, fig, path)
    # The report's Manifold map draws its level sets as `actmax analyze manifold`'s figure does.
    (manifold,) = [fig for fig, path in drawn.saved if path.endswith("manifold_map.png")]
    assert_level_sets_stand_out(manifold.axes[0])


def test_methods_text_lists_the_notes_and_the_rigs_channel_changes(live_server: LiveServer, client, tmp_path):
    """methods.txt said nothing of a note ("animal broke fixation, generations 12-14") nor of the rig coming back
    with another unit on a scored channel: it labelled the whole session with the last labels."""
    settings = live_server.settings
    with live_server.sessions.begin() as db:
        log_hello(db, "rig-A", 1, {"channels": 4, "channel_labels": LABELS}, 0)  # the HELLO the session starts with
    session_id, thread_id, _ = record_session(live_server.sessions, settings)
    report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path / "before")
    assert len((tmp_path / "before" / "methods.txt").read_text().strip().split("\n\n")) == 2  # nothing noted yet
    note = client.post(f"/sessions/{session_id}/notes", json={
        "text": "animal broke fixation", "thread_id": thread_id, "generations": [12, 14]})
    assert note.status_code == 201, note.text
    with live_server.sessions.begin() as db:
        log_hello(db, "rig-A", 1, {"channels": 4, "channel_labels": [*LABELS[:2], "blocks.6:67", LABELS[3]]}, 0)
    assert client.post(f"/sessions/{session_id}/notes", json={"text": "lights on"}).status_code == 201
    assert client.post(f"/sessions/{session_id}/notes", json={
        "text": "reward doubled", "thread_id": thread_id, "generations": [3, 3]}).status_code == 201

    report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    header, record, thread = (tmp_path / "methods.txt").read_text(encoding="utf-8").strip().split("\n\n")
    assert f"Session {session_id} " in header and "2 'blocks.6:5'" in header and thread.startswith("Thread 't0'")
    title, *lines = record.split("\n")
    assert title == "Noted in the session's record:"
    assert len(lines) == 4
    assert lines[0].endswith(" UTC, a note on thread 't0', generations 12-14: animal broke fixation")
    assert " UTC, rig 'rig-A' came back with other channels: channel 2 'blocks.6:5' -> 'blocks.6:67'. " in lines[1]
    assert "a channel may be another unit before this time than after" in lines[1]
    assert lines[2].endswith(" UTC, a note: lights on")
    assert lines[3].endswith(" UTC, a note on thread 't0', generation 3: reward doubled")
