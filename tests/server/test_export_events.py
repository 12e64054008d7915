"""The exports carry the day's record: the session's event log (pauses, a rig lost, threads added and stopped,
notes), when each thread was added and ended, and the channel labels a rig changed while it served the session.

The session is written as the server writes it: REST (real HTTP, with the stand-in engine) creates it and pauses,
resumes, adds and stops threads; the store's own functions log the rig's HELLOs and record the generations and
presentations the engine would. Every check compares the export with the SQLite file read directly.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import pyarrow.parquet
from PIL import Image

from server.cli import main as actmax
from server.export.nwb import _key_value_text
from server.steps import log_in
from server.store import records
from server.store.archive import ImageArchive
from server.store.models import EventLevel
from tests.server.conftest import TOKEN, LiveServer

pynwb = pytest.importorskip("pynwb", reason="pip install -e '.[nwb]'")

RIG = "rig-M"
LABELS = ["blocks.6:5", "blocks.6:12", "blocks.6:67"]  # the rig's HELLO before the session
RECALIBRATED = ["blocks.6:67", "blocks.6:12", "blocks.6:5"]  # its HELLO after a calibration mid-session
NOTE = "animal broke fixation"


def hello(db, labels: list[str]) -> None:
    """The ``rig.connected`` event the engine logs for a HELLO."""
    log_in(db, None, None, "rig.connected", f"rig {RIG!r} connected (protocol 1.1)",
           {"rig": RIG, "minor": 1, "channels": len(labels), "channel_labels": labels, "cached_references": 0})


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def show_generation(live: LiveServer, session_id: int, thread_id: int, number: int) -> None:
    """A generation of two images, each shown once and scored, as the engine records it."""
    archive = ImageArchive(live.settings.data_dir)
    images = [archive.save(png(10 * number + i + 1)) for i in range(2)]
    with live.sessions.begin() as db:
        generation_id, _, stimuli = records.add_generation(
            db, thread_id, number, np.zeros((2, 4)), images, {"name": "dcgan-faces", "version": "1.0"}, session_id)
        batch_id = records.add_batch(db, records.new_id(), session_id, thread_id, generation_id, RIG)
        batch = records.queries.batch(db, batch_id)
        records.record_presentations(db, batch, [
            records.PresentationRecord(records.new_id(), stimulus, time.time(), [1.0, 2.0, 3.0 + i], 50, 200)
            for i, stimulus in enumerate(stimuli)])
        records.complete_generation(db, generation_id, np.array([3.0, 4.0]), [], {}, timed_out=False)


@pytest.fixture(scope="module")
def day(live_server: LiveServer, tmp_path_factory):
    """A session on a rig whose channels are recalibrated between two generations of thread 'a': 'a' paused for a
    break during which thread 'c' was added, the rig lost and back with other labels, a note, thread 'b' stopped
    early, 'a' finished; then the session's NWB, Parquet and CSV exports, made by the CLI."""
    live_server.engine.rigs[RIG] = 3
    with live_server.sessions.begin() as db:
        hello(db, LABELS)
    api = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    thread = {"generator": "dcgan-faces", "optimizer": "cma", "objective": {"channels": [2]}, "n_generations": 2}
    session = api.post("/sessions", json={"name": "midsession", "rig": RIG, "animal": "M7", "species": "Macaca mulatta",
                                          "threads": [thread | {"name": "a"}, thread | {"name": "b"}]}).json()
    session_id = session["id"]
    a, b = (t["id"] for t in session["threads"])
    show_generation(live_server, session_id, a, 0)
    assert api.post(f"/threads/{a}/pause").status_code == 200
    added = api.post(f"/sessions/{session_id}/threads", json=thread | {"name": "c"})
    assert added.status_code == 201, added.text
    c = added.json()["id"]
    assert api.post(f"/threads/{a}/resume").status_code == 200
    with live_server.sessions.begin() as db:
        log_in(db, session_id, None, "rig.lost", f"rig {RIG!r} went silent", {"rig": RIG}, EventLevel.WARNING)
        hello(db, RECALIBRATED)
        log_in(db, session_id, None, "rig.channels_changed", f"rig {RIG!r} reconnected with other channels: channel 0 "
               f"'{LABELS[0]}' -> '{RECALIBRATED[0]}'", {"rig": RIG, "before": {"channels": 3, "channel_labels": LABELS},
                                                         "after": {"channels": 3, "channel_labels": RECALIBRATED}},
               EventLevel.WARNING)
        log_in(db, session_id, a, "session.note", f"note: {NOTE} (thread {a} 'a', generations 0-0)",
               {"text": NOTE, "thread_id": a, "generations": [0, 0]})
    show_generation(live_server, session_id, a, 1)
    assert api.post(f"/threads/{b}/stop").status_code == 200
    assert api.post(f"/threads/{c}/stop").status_code == 200
    with live_server.sessions.begin() as db:
        log_in(db, session_id, a, "thread.finished", f"thread {a} 'a' finished after 2 generations")
        records.finish_thread(db, a)
        records.end_session_if_done(db, session_id)
        hello(db, ["newday-a", "newday-b", "newday-c"])  # a later recording's: not this session's
    api.close()

    out = tmp_path_factory.mktemp("day")
    for fmt, path in (("nwb", out / "day.nwb"), ("parquet", out / "parquet"), ("csv", out / "csv")):
        assert export(fmt, live_server.settings.data_dir, session_id, path) == 0
    return live_server, session_id, {"a": a, "b": b, "c": c}, out


def export(fmt: str, data: Path, session_id: int, out: Path) -> int:
    return actmax(["export", fmt, "--data-dir", str(data), "--session", str(session_id), "--out", str(out)])


def read_tables(out: Path, name: str) -> dict[str, pd.DataFrame]:
    """Table ``name`` from each format of the export in ``out``."""
    with pynwb.NWBHDF5IO(str(out / "day.nwb"), "r") as io_:
        nwb = io_.read().processing["evolution"][name].to_dataframe()
    return {"nwb": nwb, "parquet": pd.read_parquet(out / "parquet" / f"{name}.parquet"),
            "csv": pd.read_csv(out / "csv" / f"{name}.csv", keep_default_na=False)}


def stored_time(text: str) -> str:
    """A time as the database stores it (naive UTC text), as the exports write it (ISO 8601, UTC)."""
    return datetime.fromisoformat(text).isoformat() + "+00:00"


def as_text(value) -> str:
    """A time cell of any format as ISO 8601 text ('' when empty)."""
    return "" if value is None or value == "" or pd.isna(value) else pd.Timestamp(value).isoformat()


def test_every_format_holds_the_sessions_event_log(day):
    live, session_id, threads, out = day
    with sqlite3.connect(live.settings.database_url.removeprefix("sqlite:///")) as db:
        stored = [(i, stored_time(t), kind, level, -1 if thread is None else thread, message,
                   json.loads(data) if data else {})
                  for i, t, kind, level, thread, message, data in db.execute(
                      "SELECT id, time, kind, level, thread_id, message, data_json FROM events WHERE session_id = ? "
                      "ORDER BY id", (session_id,))]
    kinds = [row[2] for row in stored]
    for kind in ("session.created", "thread.paused", "thread.added", "thread.running", "rig.lost",
                 "rig.channels_changed", "session.note", "thread.stopped", "thread.finished", "session.finished"):
        assert kind in kinds
    assert "rig.connected" not in kinds  # logged with no session: the channels table has what they changed
    for fmt, events in read_tables(out, "events").items():
        data = [json.loads(d) if d else {} for d in events["data"]] if fmt != "nwb" else list(events["data"])
        exported = [(int(i), as_text(t), kind, level, -1 if pd.isna(thread) or thread == "" else int(thread), message,
                     d) for i, t, kind, level, thread, message, d in zip(
                         events["event_id"], events["time"], events["kind"], events["level"], events["thread_id"],
                         events["message"], data)]
        if fmt == "nwb":  # objects are key=value text in NWB (nwbinspector refuses JSON objects in a text cell)
            note = next(row for row in exported if row[2] == "session.note")
            assert note[6] == f'text="{NOTE}", thread_id={threads["a"]}, generations=[0, 0]'
            assert next(r for r in exported if r[2] == "rig.channels_changed")[6].startswith(
                'rig="rig-M", before=(channels=3, channel_labels=["blocks.6:5", ')
            assert exported == [row[:6] + (_key_value_text(row[6]),) for row in stored]
        else:
            assert exported == stored, fmt
    parquet = pd.read_parquet(out / "parquet" / "events.parquet")
    assert str(parquet["time"].dtype) == "datetime64[us, UTC]" and str(parquet["thread_id"].dtype) == "Int64"


def test_threads_say_when_they_were_added_and_when_they_ended(day):
    live, session_id, threads, out = day
    with sqlite3.connect(live.settings.database_url.removeprefix("sqlite:///")) as db:
        created = {name: stored_time(t) for name, t in db.execute(
            "SELECT name, created_at FROM threads WHERE session_id = ?", (session_id,))}
        ended = {name: stored_time(t) for name, t in db.execute(
            "SELECT t.name, max(e.time) FROM events e JOIN threads t ON t.id = e.thread_id WHERE t.session_id = ? "
            "AND e.kind = 'thread.' || t.status GROUP BY t.id", (session_id,))}
        added, = db.execute("SELECT time FROM events WHERE kind = 'thread.added' AND session_id = ?",
                            (session_id,)).fetchone()
    at = {name: datetime.fromisoformat(t) for name, t in created.items()}
    assert at["a"] < at["c"] <= datetime.fromisoformat(stored_time(added))  # added during the break
    assert ended.keys() == {"a", "b", "c"}
    for fmt, table in read_tables(out, "threads").items():
        table = table.set_index("thread_name")
        assert {name: as_text(table.loc[name, "created_at"]) for name in created} == created, fmt
        assert {name: as_text(table.loc[name, "ended_at"]) for name in ended} == ended, fmt
        assert table["status"].to_dict() == {"a": "finished", "b": "stopped", "c": "stopped"}, fmt


def test_channels_relabelled_during_the_session_keep_their_earlier_labels(day, tmp_path):
    live, session_id, _, out = day
    with sqlite3.connect(live.settings.database_url.removeprefix("sqlite:///")) as db:
        (recalibrated,) = db.execute("SELECT time FROM events WHERE kind = 'rig.connected' AND json_extract("
                                     "data_json, '$.channel_labels[0]') = ?", (RECALIBRATED[0],)).fetchone()
    for fmt, channels in read_tables(out, "channels").items():
        loads = json.loads if fmt == "csv" else list
        assert channels["label"].tolist() == RECALIBRATED, fmt  # the last labels, one row per channel
        assert [loads(c) for c in channels["earlier_labels"]] == [[label] for label in LABELS], fmt
        # pandas reads Parquet's list of UTC timestamps as numpy's, without the zone
        replaced_at = [[as_text(pd.Timestamp(t, tz="UTC") if fmt == "parquet" else t) for t in loads(c)]
                       for c in channels["replaced_at"]]
        assert replaced_at == [[stored_time(recalibrated)]] * 3, fmt
    schema = pyarrow.parquet.read_schema(out / "parquet" / "channels.parquet")
    assert str(schema.field("replaced_at").type) == "list<element: timestamp[us, tz=UTC]>"

    # Without the recalibration the rig served the session with one set of labels: no earlier ones.
    data = tmp_path / "data"
    shutil.copytree(live.settings.data_dir, data, ignore=shutil.ignore_patterns("*.sqlite*"))
    with sqlite3.connect(live.settings.data_dir / "actmax.sqlite") as source, \
            sqlite3.connect(data / "actmax.sqlite") as db:
        source.backup(db)
        db.execute("DELETE FROM events WHERE kind = 'rig.connected' AND time = ?", (recalibrated,))
    assert export("csv", data, session_id, tmp_path / "csv") == 0
    channels = pd.read_csv(tmp_path / "csv" / "channels.csv")
    assert channels.columns.tolist() == ["channel", "label"] and channels["label"].tolist() == LABELS


def test_nwbinspector_finds_nothing_wrong_with_the_new_tables(day):
    nwbinspector = pytest.importorskip("nwbinspector", reason="pip install -e '.[nwb]'")
    _, _, _, out = day
    messages = list(nwbinspector.inspect_nwbfile(nwbfile_path=str(out / "day.nwb")))
    serious = [m for m in messages if m.importance in (nwbinspector.Importance.CRITICAL,
                                                        nwbinspector.Importance.BEST_PRACTICE_VIOLATION)]
    assert not serious, [f"{m.check_function_name}: {m.message}" for m in serious]
    assert not [m for m in messages if m.object_name in ("events", "channels", "threads")], \
        [f"{m.object_name} {m.check_function_name}: {m.message}" for m in messages]
