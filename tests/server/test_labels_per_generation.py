"""Each generation's channels named by the labels the rig had when it was recorded: a rig that came back with other
labels mid-session relabelled every generation with its last labels (curve segments, report figures, summary.json,
methods.txt), even naming a unit a thread never recorded. And a thread extended is said to be in methods.txt."""

from __future__ import annotations

import json
import uuid

import numpy as np
from sqlalchemy import select

from server import report, steps
from server.engine import log_hello
from server.session_config import SessionConfig
from server.store import records
from server.store.archive import ImageArchive
from server.store.models import (
    Batch, Event, Generation, GenerationStatus, Stimulus, StimulusKind, Thread, ThreadStatus, encode_codes,
)
from server.store.records import PresentationRecord, create_session, record_presentations
from tests.server.conftest import LiveServer, session_config, thread_config
from tests.server.test_report import png

RIG = "rig-relabelled"  # its own rig: the module's server has other tests' HELLOs
BEFORE = ["u-a0", "u-a1", "u-a2", "u-a3"]
AFTER = ["u-b0", "u-a1", "u-b2", "u-a3"]  # channels 0 and 2 are other units after the rig came back


def hello(live_server: LiveServer, labels: list[str]) -> None:
    with live_server.sessions.begin() as db:
        log_hello(db, RIG, 1, {"channels": len(labels), "channel_labels": labels}, 0)


def record_generation(live_server: LiveServer, thread_id: int, number: int, channel: int) -> None:
    """A completed generation of two images scoring ``channel``, and its presentations, received now."""
    archive = ImageArchive(live_server.settings.data_dir)
    with live_server.sessions.begin() as db:
        thread = db.get(Thread, thread_id)
        generation = Generation(thread_id=thread_id, number=number, codes=encode_codes(np.zeros((2, 2))), n_stimuli=2,
                                status=GenerationStatus.COMPLETE, scores_json=[5.0, 7.0], max_score=7.0,
                                reference_mean=None, n_scored=2, objective_json={"channels": [channel]})
        thread.objective_json = {"channels": [channel]}
        db.add(generation)
        db.flush()
        batch = Batch(id=uuid.uuid4().hex, session_id=thread.session_id, thread_id=thread_id,
                      generation_id=generation.id, rig=RIG)
        db.add(batch)
        presented = []
        for index, rate in enumerate((5.0, 7.0)):
            image = archive.save(png(40 * number + 10 * index + thread_id % 7))
            stimulus = Stimulus(id=uuid.uuid4().hex, session_id=thread.session_id, thread_id=thread_id,
                                generation_id=generation.id, kind=StimulusKind.SYNTHETIC, index=index,
                                content_hash=image.content_hash, png_path=image.png_path)
            db.add(stimulus)
            rates = [0.0] * 4
            rates[channel] = rate
            presented.append(PresentationRecord(uuid.uuid4().hex, stimulus.id, 0.0, rates, 50, 200))
        db.flush()
        record_presentations(db, batch, presented)


def test_each_segment_names_the_labels_its_generations_were_recorded_under(live_server: LiveServer, client,
                                                                           tmp_path):
    """Thread 'early' scored channel 0 (u-a0) and ended; 'late' scored channel 0, then channel 2 (u-a2) from
    generation 2, and the rig came back with u-b0 and u-b2 on those channels during its generation 3. Every label
    was the last HELLO's: 'early' and 'late''s first segment named u-b0, a unit they never recorded."""
    hello(live_server, BEFORE)
    with live_server.sessions.begin() as db:
        session = create_session(db, SessionConfig.model_validate(session_config(
            rig=RIG, threads=[thread_config("early", objective={"channels": [0]}),
                              thread_config("late", objective={"channels": [0]})])))
        session_id, (early, late) = session.id, [t.id for t in session.threads]
    for number in range(2):
        record_generation(live_server, early, number, 0)
        record_generation(live_server, late, number, 0)
    record_generation(live_server, late, 2, 2)  # retargeted to channel 2
    hello(live_server, AFTER)
    record_generation(live_server, late, 3, 2)
    with live_server.sessions() as db:
        relabelled = db.scalar(select(Event.time).where(Event.kind == "rig.connected").order_by(Event.id.desc()))
        assert db.scalar(select(Event.kind).where(Event.session_id == session_id)
                         .order_by(Event.id.desc())) == "rig.channels_changed"

    curve = client.get(f"/threads/{late}/curve")
    assert curve.status_code == 200, curve.text
    assert curve.json()["segments"] == [
        {"from_generation": 0, "score_label": "score (spikes/s) of ch 0 (u-a0)"},
        {"from_generation": 2, "score_label": "score (spikes/s) of ch 2 (u-a2)"}]
    assert client.get(f"/threads/{late}/curve", params={"from_generation": 2}).json()["segments"] == [
        {"from_generation": 2, "score_label": "score (spikes/s) of ch 2 (u-a2)"}]
    assert client.get(f"/threads/{early}/curve").json()["segments"] == [
        {"from_generation": 0, "score_label": "score (spikes/s) of ch 0 (u-a0)"}]

    settings = live_server.settings
    report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    with live_server.sessions() as db:  # the markers of scores.png and evolution_late.png
        thread = db.get(Thread, late)
        assert report._segments(db, thread, report._completed_generations(db, thread)) == [
            (0, "score (spikes/s) of u-a0"), (2, "score (spikes/s) of u-a2")]
    summary = {s["name"]: s for s in json.loads((tmp_path / "summary.json").read_text())}
    assert summary["early"]["channels"] == ["u-a0"] and summary["late"]["channels"] == ["u-a2"]
    paragraphs = (tmp_path / "methods.txt").read_text(encoding="utf-8").split("\n\n")
    early_text, late_text = (next(p for p in paragraphs if p.startswith(f"Thread {name!r}")) for name in ("early", "late"))
    assert "Scores: the mean rate (spikes/s) of channel 0 (u-a0). " in early_text
    assert (f"Scores: the mean rate (spikes/s) of channel 0 (u-a0) from generation 0; then the mean rate (spikes/s) of "
            f"channel 2 (u-a2 until {relabelled:%Y-%m-%d %H:%M:%S} UTC, then u-b2) from generation 2. ") in late_text
    assert "u-b0" not in early_text + late_text
    assert "It was created for" not in early_text


def test_methods_text_names_each_extension_of_a_thread(live_server: LiveServer, client, tmp_path):
    """A thread created for 25 generations and extended, once while it ran and once after it had finished, read
    "2 of 35 generations completed (running)": an optional stopping rule a methods section has to name."""
    with live_server.sessions.begin() as db:
        session = create_session(db, SessionConfig.model_validate(session_config(
            rig=RIG, threads=[thread_config("extended", n_generations=25)])))
        session_id, thread_id = session.id, session.threads[0].id
    for number in range(2):
        record_generation(live_server, thread_id, number, 3)
    extended = client.post(f"/threads/{thread_id}/extend", json={"n_generations": 30})
    assert extended.status_code == 200, extended.text
    with live_server.sessions.begin() as db:  # it finished; a finished thread is extended as the route does it
        thread = db.get(Thread, thread_id)
        thread.status = ThreadStatus.FINISHED
        steps.log_in(db, session_id, thread_id, "thread.finished", f"thread {thread_id} finished")
        records.extend_thread(db, thread, 35)
    with live_server.sessions() as db:
        first, second = db.scalars(select(Event.time).where(Event.thread_id == thread_id,
                                                            Event.kind == "thread.extended").order_by(Event.id))

    settings = live_server.settings
    report.write_session_report(settings.database_url, settings.data_dir, session_id, tmp_path)
    text = next(p for p in (tmp_path / "methods.txt").read_text(encoding="utf-8").split("\n\n")
                if p.startswith("Thread 'extended'"))
    assert (f"2 of 35 generations completed (running). It was created for 25 generations, then extended to 30 at "
            f"{first:%Y-%m-%d %H:%M:%S} UTC; then extended to 35 at {second:%Y-%m-%d %H:%M:%S} UTC, after it had "
            "finished. Scores: ") in text
