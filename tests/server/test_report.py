"""Session report figures: SEM bands from the stored scores, best images de-duplicated by content and reported at
the mean of all their showings."""

from __future__ import annotations

import io
import json
import math
import uuid
import warnings

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from server import report
from server.session_config import SessionConfig
from server.store.archive import ImageArchive
from server.store.models import Batch, Generation, GenerationStatus, Stimulus, StimulusKind, Thread, encode_codes
from server.store.records import PresentationRecord, create_session, record_presentations
from tests.server.conftest import session_config, thread_config


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def session(db_sessions, settings):
    return record_session(db_sessions, settings)


def record_session(db_sessions, settings, objective: dict | None = None, references: bool = True):
    """Two generations; the elite (same PNG) is shown in both; two references answered in each (or never)."""
    archive = ImageArchive(settings.data_dir)
    elite, other, third = (archive.save(png(v)) for v in (10, 20, 30))
    scores = [[9.0, 1.0, 2.0], [9.0, 4.0, 8.0]]
    config = session_config(threads=[thread_config(objective=objective)]) if objective else session_config()
    with db_sessions.begin() as db:
        session = create_session(db, SessionConfig.model_validate(config))
        thread = session.threads[0]
        refs = [Stimulus(id=f"ref{i}", session_id=session.id, kind=StimulusKind.REFERENCE,
                         content_hash=other.content_hash, png_path=other.png_path) for i in range(2)]
        db.add_all(refs)
        for number, values in enumerate(scores):
            generation = Generation(thread_id=thread.id, number=number, codes=encode_codes(np.zeros((3, 2))),
                                    n_stimuli=3, status=GenerationStatus.COMPLETE, scores_json=values,
                                    max_score=max(values), reference_mean=0.0, n_scored=3)
            db.add(generation)
            db.flush()
            for index, image in enumerate((elite, other, third)):
                db.add(Stimulus(id=uuid.uuid4().hex, session_id=session.id, thread_id=thread.id,
                                generation_id=generation.id, kind=StimulusKind.SYNTHETIC, index=index,
                                content_hash=image.content_hash, png_path=image.png_path))
            batch = Batch(id=uuid.uuid4().hex, session_id=session.id, thread_id=thread.id,
                          generation_id=generation.id, rig="rig-A")
            db.add(batch)
            db.flush()
            rates = [[0, 0, 0, 2.0 + number], [0, 0, 0, 6.0 + number]] if references else []  # channel 3 is scored
            record_presentations(db, batch, [PresentationRecord(uuid.uuid4().hex, f"ref{i}", 0.0, r, 50, 200)
                                                for i, r in enumerate(rates)])
        return session.id, thread.id, scores


def test_curves_carry_sem_over_images_and_over_references(db_sessions, session):
    _, thread_id, scores = session
    with db_sessions() as db:
        thread = db.get(Thread, thread_id)
        generations = report._completed_generations(db, thread)
        curves = report._thread_curves(generations, report._reference_scores(db, thread, generations))
    np.testing.assert_allclose(curves["mean"], [np.mean(s) for s in scores])
    np.testing.assert_allclose(curves["sem"], [np.std(s, ddof=1) / np.sqrt(3) for s in scores])
    np.testing.assert_allclose(curves["reference_sem"], [2.0, 2.0])  # |6 - 2| / 2 = std(ddof 1) / sqrt(2)


def test_best_images_count_an_elite_once(db_sessions, session):
    _, thread_id, _ = session  # every image is shown in both generations
    with db_sessions() as db:
        best = report._best_stimuli(db, db.get(Thread, thread_id), 8)
        per_generation = report._best_per_generation(db, db.get(Thread, thread_id))
    assert [(b.generations, b.score) for b in best] == [("0-1", 9.0), ("0-1", 5.0), ("0-1", 2.5)]
    assert len({b.content_hash for b in best}) == 3
    assert [(number, b.score) for number, b in per_generation] == [(0, 9.0), (1, 9.0)]


def test_report_writes_the_figures(session, settings, tmp_path):
    session_id, _, _ = session
    (summary,) = report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    assert summary.best_score == 9.0 and summary.generations == 2
    for name in ("scores.png", "evolution_t0.png", "best_images.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_relative_objective_scores_its_references_against_their_generation(db_sessions, settings, tmp_path):
    """A z-score is relative to the generation's presentations: alone, a reference has none (NaN, numpy's
    "Mean of empty slice"). Scored with its generation, as the engine did, the best reference is finite, and
    the axis says what the score is."""
    session_id, thread_id, _ = record_session(db_sessions, settings, {"expression": "zscore(rate(3))"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (summary,) = report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    assert math.isclose(summary.best_reference, 1.0)  # rates 2 and 6 (then 3 and 7): z-scores -1 and +1
    with db_sessions() as db:
        assert report._score_label(db, db.get(Thread, thread_id)) == "score = zscore(rate(3))"


def test_the_score_axis_names_its_unit_and_the_legend_only_drawn_curves(db_sessions, session):
    from matplotlib.figure import Figure

    _, thread_id, _ = session
    with db_sessions() as db:
        assert report._score_label(db, db.get(Thread, thread_id)) == "score (spikes/s) of ch3"
        # A probe's worth of channels is counted, not listed: the label stays one line of the figure.
        probe = report._score_label(db, db.get(Thread, thread_id), {"channels": list(range(384)), "combine": "sum"})
        assert probe == "score (spikes/s), sum of 384 channels (ch0, ch1, … ch383)"
    nan = np.full(2, np.nan)
    curves = {"number": np.arange(2), "mean": np.ones(2), "sem": np.zeros(2), "max": np.ones(2),
              "reference_mean": nan, "reference_sem": nan}  # no reference was scored
    ax = Figure().subplots()
    report._curve_axes(ax, curves, None, [(0, "score = zscore(rate(3))")])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["generation mean ± SEM",
                                                                    "generation max (its best image: biased high)"]
    assert ax.get_ylabel() == "score = zscore(rate(3))"


def test_a_session_without_reference_responses_says_so(db_sessions, settings, tmp_path, capsys):
    from server.cli import main

    session_id, _, _ = record_session(db_sessions, settings, references=False)
    capsys.readouterr()
    assert main(["analyze", "session", str(session_id), "--data-dir", str(settings.data_dir),
                 "--out", str(tmp_path)]) == 0
    assert "last mean 7.000, no reference scored" in capsys.readouterr().out


def test_a_retarget_is_marked_and_means_are_compared_within_one_objective(db_sessions, session, settings, tmp_path,
                                                                         capsys):
    from matplotlib.figure import Figure

    from server.cli import main

    session_id, thread_id, scores = session
    with db_sessions.begin() as db:  # retargeted before generation 1, as the engine records it
        thread = db.get(Thread, thread_id)
        first, second = db.scalars(select(Generation).where(Generation.thread_id == thread_id)
                                   .order_by(Generation.number)).all()
        first.objective_json = thread.objective_json
        first.reference_mean = 4.0  # spikes/s of ch3: (2 + 6) / 2; generation 1's is in z-scores
        thread.objective_json = second.objective_json = {"expression": "zscore(rate(3))"}
    with db_sessions() as db:
        thread = db.get(Thread, thread_id)
        generations = report._completed_generations(db, thread)
        segments = report._segments(db, thread, generations)
        curves = report._thread_curves(generations, report._reference_scores(db, thread, generations))
    assert segments == [(0, "score (spikes/s) of ch3"), (1, "score = zscore(rate(3))")]
    ax = Figure().subplots()
    report._curve_axes(ax, curves, None, segments)
    assert ax.get_ylabel() == "score (objective changed at\ngeneration 1: see markers)"
    assert [t.get_text() for t in ax.texts] == ["score (spikes/s) of ch3", "score = zscore(rate(3))"]
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "-.") == [0, 1]

    capsys.readouterr()
    assert main(["analyze", "session", str(session_id), "--data-dir", str(settings.data_dir),
                 "--out", str(tmp_path)]) == 0
    assert "objective changed at generation 1, mean there 7.000, last mean 7.000" in capsys.readouterr().out
    (summary,) = report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    assert summary.objective_from_generation == 1 and summary.first_generation_mean == np.mean(scores[1])
    assert summary.best_reference == 1.0  # the z-scores of generation 1's references only
    assert summary.reference_mean == 0.0  # generation 1's alone: not a mean of spikes/s and z-scores


def test_methods_text_names_each_generator_a_thread_rendered_with_and_what_was_not_recorded(db_sessions, session,
                                                                                            settings, tmp_path):
    """A thread whose images changed weights (a database from before restarts were refused) says which generations
    each rendered; a thread without ``thread.optimizer``/``thread.runtime`` events says they were not recorded."""
    session_id, thread_id, _ = session
    with db_sessions.begin() as db:
        for stimulus, number in db.execute(select(Stimulus, Generation.number).join(Generation)
                                           .where(Stimulus.thread_id == thread_id)):
            stimulus.generator_version, stimulus.weights_sha256 = "1.0", ("a" if number == 0 else "b") * 64
    report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    header, thread = (tmp_path / "methods.txt").read_text().strip().split("\n\n")
    assert f"Session {session_id} " in header and "its channels unlabelled" in header
    assert f"version 1.0 (weights sha256 {'a' * 64}) for generation 0, then version 1.0 (weights sha256 " \
           f"{'b' * 64}) for generation 1" in thread
    assert "hyperparameters not recorded" in thread and "Software: not recorded." in thread
    assert "3 images per generation" in thread and "2 of " in thread


PROBE_LABELS = [f"imec0-ch{c:03d}" for c in range(384)]


@pytest.fixture
def probe_figures(db_sessions, settings, tmp_path):
    """Both figures of a thread scoring the mean of a labelled 384-channel probe, each drawn by Agg: [(scores
    figure, its renderer), (evolution figure, its renderer)]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from server.store.models import Event

    _, thread_id, _ = record_session(db_sessions, settings, {"channels": list(range(384))}, references=False)
    with db_sessions.begin() as db:
        db.add(Event(kind="rig.connected", message="rig connected",
                     data_json={"rig": "rig-A", "channel_labels": PROBE_LABELS}))
    with db_sessions() as db:
        thread = db.get(Thread, thread_id)
        generations = report._completed_generations(db, thread)
        segments = report._segments(db, thread, generations)
        curves = report._thread_curves(generations, report._reference_scores(db, thread, generations))
        per_generation = report._best_per_generation(db, thread)
    assert segments == [(0, "score (spikes/s), mean of 384 channels (imec0-ch000, imec0-ch001, … imec0-ch383)")]
    scores, (ax,) = report._scores_figure(1)
    report._curve_axes(ax, curves, (4.0, 20), segments)
    evolution = report._evolution_figure(tmp_path / "evolution.png", "t0 (cma)", segments, curves, (4.0, 20),
                                         per_generation, ImageArchive(settings.data_dir))
    drawn = []
    for figure in (scores, evolution):
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)  # lays the figure out
        drawn.append((figure, renderer))
    return drawn


def test_a_long_score_label_is_wrapped_within_its_axes(probe_figures):
    """An 80-character label ran past the axes: clipped at both ends in scores.png, and in the evolution figure
    a tight save added blank space above the plot for it."""
    for figure, renderer in probe_figures:
        ax = figure.axes[0]
        label, box = ax.yaxis.label.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert figure.bbox.x0 <= label.x0 and label.x1 <= figure.bbox.x1
        assert box.y0 <= label.y0 and label.y1 <= box.y1
        assert "\n" in ax.get_ylabel() and "(imec0-ch000," in ax.get_ylabel()  # wrapped between words


def test_the_strip_titles_lie_below_the_generation_axis_label(probe_figures):
    """The strip's "gen N" titles reached up into the curve's "generation" label (the middle one overlapped it)."""
    _, (evolution, renderer) = probe_figures
    curve, *strip = evolution.axes
    assert len(strip) == 2 and curve.get_xlabel() == "generation"
    xlabel = curve.xaxis.label.get_window_extent(renderer)
    assert all(ax.title.get_window_extent(renderer).y1 <= xlabel.y0 for ax in strip)


def test_methods_text_counts_a_probes_channels(db_sessions, settings):
    """384 labelled channels: the first and last label and a range, not 384 of each (7 600 characters)."""
    from server.store.models import Event, Session

    session_id, _, _ = record_session(db_sessions, settings, {"channels": list(range(384))}, references=False)
    with db_sessions.begin() as db:
        db.add(Event(kind="rig.connected", message="rig connected",
                     data_json={"rig": "rig-A", "channel_labels": PROBE_LABELS}))
    with db_sessions() as db:
        text = report.methods_text(db, db.get(Session, session_id))
    assert "its 384 channels labelled 'imec0-ch000' (0) to 'imec0-ch383' (383)" in text
    assert "the mean rate (spikes/s) of channels 0-383 (384 channels)" in text
    assert "imec0-ch200" not in text


def record_showings(db_sessions, settings, generations: list[dict[int, list[float]]], objective: dict | None = None):
    """A thread whose generations show images (by the red of their PNG) with each presentation's rate on the scored
    channel 3, and two references (rates 2 and 6) once each; the stored scores are the means of those rates, as
    the engine scores them. Returns (session id, thread id)."""
    archive = ImageArchive(settings.data_dir)
    config = session_config(threads=[thread_config(objective=objective)]) if objective else session_config()
    with db_sessions.begin() as db:
        session = create_session(db, SessionConfig.model_validate(config))
        thread = session.threads[0]
        reference = archive.save(png(250))
        db.add_all(Stimulus(id=f"ref{i}", session_id=session.id, kind=StimulusKind.REFERENCE,
                            content_hash=reference.content_hash, png_path=reference.png_path) for i in range(2))
        for number, shown in enumerate(generations):
            scores = [float(np.mean(rates)) for rates in shown.values()]
            generation = Generation(thread_id=thread.id, number=number, codes=encode_codes(np.zeros((len(shown), 2))),
                                    n_stimuli=len(shown), status=GenerationStatus.COMPLETE, scores_json=scores,
                                    max_score=max(scores), reference_mean=4.0, n_scored=len(shown))
            batch = Batch(id=uuid.uuid4().hex, session_id=session.id, thread_id=thread.id, rig="rig-A")
            db.add(generation)
            db.flush()
            batch.generation_id = generation.id
            db.add(batch)
            records = [PresentationRecord(uuid.uuid4().hex, f"ref{i}", 0.0, [0, 0, 0, rate], 50, 200)
                       for i, rate in enumerate((2.0, 6.0))]
            for index, (value, rates) in enumerate(shown.items()):
                image = archive.save(png(value))
                stimulus = Stimulus(id=uuid.uuid4().hex, session_id=session.id, thread_id=thread.id,
                                    generation_id=generation.id, kind=StimulusKind.SYNTHETIC, index=index,
                                    content_hash=image.content_hash, png_path=image.png_path)
                db.add(stimulus)
                records += [PresentationRecord(uuid.uuid4().hex, stimulus.id, 0.0, [0, 0, 0, rate], 50, 200)
                            for rate in rates]
            db.flush()
            record_presentations(db, batch, records)
        return session.id, thread.id


ELITE = [{10: [26.7], 20: [20.0]}, {10: [53.3], 30: [10.0]}, {10: [13.3], 40: [30.0]}]  # a GA elite, image 10


def test_an_image_shown_again_is_reported_at_the_mean_of_all_its_showings(db_sessions, settings, tmp_path):
    """An elite scored 26.7, 53.3 and 13.3 in three generations was reported at its best showing, 53.3: the more
    often shown, the more biased. It is 31.1, the mean of its 3 presentations, wherever a best image is named."""
    session_id, thread_id = record_showings(db_sessions, settings, ELITE)
    (summary,) = report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    assert math.isclose(summary.best_score, 31.1) and summary.best_score_presentations == 3
    assert summary.images_ranked == 4
    assert [(b["generations"], round(b["score"], 1), b["presentations"]) for b in summary.best_images] == [
        ("0-2", 31.1, 3), ("2", 30.0, 1), ("0", 20.0, 1), ("1", 10.0, 1)]
    assert json.loads((tmp_path / "summary.json").read_text())[0]["best_score_presentations"] == 3
    # The other side of the comparison says what it is too: a reference's mean over its presentations.
    assert summary.best_reference == 6.0 and summary.best_reference_presentations == 3

    with db_sessions() as db:
        thread = db.get(Thread, thread_id)
        ranked = report._best_stimuli(db, thread, None)
        per_generation = report._best_per_generation(db, thread)
    figure = report._best_images_figure([("ga", ranked, " spikes/s")], ImageArchive(settings.data_dir),
                                        tmp_path / "best.png")
    (row,) = figure.subfigs
    assert [ax.get_title() for ax in row.axes] == [
        "gen 0-2\n31.1 spikes/s (n=3)", "gen 2\n30 spikes/s (n=1)", "gen 0\n20 spikes/s (n=1)",
        "gen 1\n10 spikes/s (n=1)"]
    title = row._suptitle.get_text().replace("\n", " ")
    assert "the best 4 of 4 images, each at the mean of its n presentations (n = 1-3)" in title
    assert "expect it to be lower when shown again" in title
    # The evolution strip: each generation's best image, at its mean over all its showings.
    assert [(number, round(b.score, 1), b.presentations) for number, b in per_generation] == [
        (0, 31.1, 3), (1, 31.1, 3), (2, 31.1, 3)]
    evolution = report._evolution_figure(tmp_path / "evolution.png", "ga", [(0, "score")],
                                         _curves(db_sessions, thread_id), (6.0, 3), per_generation,
                                         ImageArchive(settings.data_dir))
    assert [ax.get_title() for ax in evolution.axes[1:]] == [f"gen {g}\n31.1 (n=3)" for g in range(3)]
    assert "best reference image (mean of 3 presentations)" in [
        t.get_text() for t in evolution.axes[0].get_legend().get_texts()]


def _curves(db_sessions, thread_id):
    with db_sessions() as db:
        thread = db.get(Thread, thread_id)
        generations = report._completed_generations(db, thread)
        return report._thread_curves(generations, report._reference_scores(db, thread, generations))


def test_an_image_is_the_mean_of_its_showings_with_repeats_and_within_one_objective(db_sessions, settings):
    """Shown with 3 repeats in generations 0 and 1 (scores 20 and 50): 35 from 6 presentations. After a retarget
    at generation 2 its score there is of another objective, so generation 2's strip image stands alone."""
    session_id, thread_id = record_showings(
        db_sessions, settings, [{10: [10, 20, 30]}, {10: [40, 50, 60]}, {10: [1, 2, 3]}])
    with db_sessions.begin() as db:  # retargeted before generation 2, as the engine records it
        thread = db.get(Thread, thread_id)
        *before, last = db.scalars(select(Generation).where(Generation.thread_id == thread_id)
                                   .order_by(Generation.number)).all()
        for generation in before:
            generation.objective_json = thread.objective_json
        thread.objective_json = last.objective_json = {"expression": "rate(3) * 2"}
    with db_sessions() as db:
        thread = db.get(Thread, thread_id)
        (after,) = report._best_stimuli(db, thread, None, 2)
        per_generation = report._best_per_generation(db, thread)
    assert (after.score, after.presentations, after.generations) == (2.0, 3, "2")
    assert [(number, b.score, b.presentations) for number, b in per_generation] == [
        (0, 35.0, 6), (1, 35.0, 6), (2, 2.0, 3)]


def test_methods_text_says_what_the_best_image_is_worth(db_sessions, settings):
    """The best image is the top of many noisy means: methods.txt says so, beside the means that are fair to
    compare (the last generation's, the best reference's), each with how many it is the mean of."""
    from server.store.models import Session

    session_id, _ = record_showings(db_sessions, settings, ELITE)
    with db_sessions() as db:
        text = report.methods_text(db, db.get(Session, session_id))
    assert ("Its best image scored 31.1 (the mean of 3 presentations, generations 0-2), the highest of 4 distinct "
            "images each scored from 1-3 presentations: the maximum of noisy estimates is biased high, so expect it "
            "to be lower when shown again.") in text
    assert ("Means over many images or presentations are not biased so: the last generation's 2 images scored 21.6 "
            "on average, the best reference image 6 (the mean of 3 presentations).") in text


def test_methods_text_counts_images_per_generation_from_the_stored_generations(db_sessions, settings):
    """sphere-cma's centre joins its samples from generation 1 on: "population=2" is not 2 images per generation."""
    from server.store.models import Event, Session

    session_id, thread_id = record_showings(
        db_sessions, settings, [{10: [1.0], 20: [2.0]}, {30: [1.0], 40: [2.0], 50: [3.0]},
                                {60: [1.0], 70: [2.0], 80: [3.0]}])
    with db_sessions.begin() as db:
        db.add(Event(session_id=session_id, thread_id=thread_id, kind="thread.optimizer", message="optimizer",
                     data_json={"hyperparameters": {"population": 2, "include_center": True}}))
    with db_sessions() as db:
        text = report.methods_text(db, db.get(Session, session_id))
    assert "2 images in generation 0, 3 from generation 1 on (2 samples and the centre), each shown" in text
    assert report._images_per_generation([], {"population": 40}) == "40 images per generation"


def test_the_demo_table_labels_both_sides_of_the_comparison():
    from server.demo import table

    summary = report.ThreadSummary(
        thread_id=1, name="ga", optimizer="ga", generations=3, objective_from_generation=0,
        first_generation_mean=23.35, last_generation_mean=21.65, best_reference=6.0, reference_mean=4.0,
        best_score=31.1, channels=["ch3"], best_score_presentations=3, best_reference_presentations=3,
        images_ranked=4)
    header, row, *note = table([summary]).splitlines()
    assert header.split()[-6:] == ["best", "ref", "(n)", "best", "image", "(n)"]
    assert row.split()[-4:] == ["6.000", "(3)", "31.100", "(3)"]
    assert "last mean vs best ref is the fair comparison" in note[0]
    assert "the highest of each thread's images' means (4 images), biased high" in note[1]


@pytest.mark.parametrize(("name", "file"), [("PIT/AIT ch0", "evolution_PIT_AIT ch0-{id}.png"),
                                            ("..", "evolution__.-{id}.png"), ("ch:1?*", "evolution_ch_1__-{id}.png"),
                                            ("Ölkanne スレッド", "evolution_Ölkanne スレッド.png")])
def test_a_thread_name_any_file_system_cannot_hold_is_made_safe_in_file_names(db_sessions, session, settings, tmp_path,
                                                                                name, file):
    """A name with '/' stopped the whole report; ':' and '?' made files a Windows share cannot hold."""
    session_id, thread_id, _ = session
    with db_sessions.begin() as db:
        db.get(Thread, thread_id).name = name
    report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path / "out")
    assert (tmp_path / "out" / file.format(id=thread_id)).stat().st_size > 0
    assert {p.parent for p in tmp_path.rglob("evolution_*")} == {tmp_path / "out"}  # nothing written outside it


def test_the_generation_axis_is_ticked_at_whole_generations():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    curves = {key: np.array([1.0, 2.0, 3.0]) for key in ("mean", "sem", "max", "reference_mean", "reference_sem")}
    report._curve_axes(ax, {**curves, "number": np.array([0, 1, 2])}, None, [(0, "score")])
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_a_name_the_file_system_encoding_cannot_hold_is_replaced_in_file_names(monkeypatch):
    """On a de_DE.ISO-8859-1 machine file names are latin-1: a Japanese thread name stopped the report."""
    monkeypatch.setattr(report.sys, "getfilesystemencoding", lambda: "iso8859-1")
    thread = Thread(id=7, name="Ölkanne スレッド")
    assert report._file_part(thread) == "Ölkanne ____-7"


def test_letters_the_fonts_lack_are_logged_once_not_warned_per_figure(db_sessions, session, settings, tmp_path, caplog):
    """A Japanese thread name gave a dozen "Glyph ... missing from font(s) DejaVu Sans" warnings per report."""
    session_id, thread_id, _ = session
    with db_sessions.begin() as db:
        db.get(Thread, thread_id).name = "スレ"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path / "out")
    assert not [w for w in caught if "missing from font" in str(w.message)]
    (message,) = [r.getMessage() for r in caplog.records if "not in matplotlib's fonts" in r.getMessage()]
    assert "2 letter(s) of the names (スレ)" in message
