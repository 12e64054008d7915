"""A rig whose onsets are hours off the server's clock (local time written as UTC) is warned about once per
session, and what it sent is stored as sent. A real engine over ZeroMQ and SQLite, with `RigClient` as the rig."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import select

from rig_client.client import Presentation, RigClient
from server.store.models import Event, EventLevel, Generation
from server.store.models import Presentation as PresentationRow
from tests.server.test_engine import RIG, LiveEngine


@pytest.fixture
def live(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as engine:
        yield engine


def shown(batch, shift_s: float) -> list[Presentation]:
    return [Presentation(s.stimulus_id, [float(i)], time.time() + shift_s, batch.response_window_ms)
            for i, s in enumerate(batch.stimuli)]


@pytest.mark.parametrize("shift_h, expected", [
    (9, "onsets are 9.0 h ahead of this server's clock"),  # Tokyo local time as UTC
    (-5, "onsets are 5.0 h behind this server's clock"),  # New York
    (0, None),
])
def test_onsets_hours_off_warn_once_per_session_and_are_stored_as_sent(live, caplog, shift_h, expected):
    thread_id = live.create(n_generations=3)
    sent: dict[str, float] = {}
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        for generation in range(2):
            batch = rig.next_batch(timeout=60)
            assert batch.generation == generation
            presentations = shown(batch, shift_h * 3600)
            half = len(presentations) // 2
            rig.send_results(batch.batch_id, presentations[:half], done=False).result(30)  # two RESULTS a batch
            rig.send_results(batch.batch_id, presentations[half:]).result(30)
            sent |= {p.presentation_id: p.onset for p in presentations}
        assert rig.next_batch(timeout=60).generation == 2  # scored and told as usual

    with live.sessions() as db:
        warnings = db.scalars(select(Event).where(Event.kind == "rig.clock_offset")).all()
        stored = dict(db.execute(select(PresentationRow.presentation_id, PresentationRow.onset)).all())
        told = db.scalars(select(Generation.number).where(Generation.thread_id == thread_id,
                                                          Generation.status == "complete")).all()
    assert stored == sent and sorted(told) == [0, 1]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "onsets are" in r.getMessage()]
    if expected is None:
        assert warnings == [] and logged == []
        return
    event, = warnings
    assert event.level == EventLevel.WARNING and event.thread_id == thread_id
    assert expected in event.message and "local time instead of UTC" in event.message
    assert "docs/protocol.md §11" in event.message
    assert event.data_json["rig"] == RIG and event.data_json["offset_s"] == pytest.approx(shift_h * 3600, abs=60)
    assert logged == [event.message]


def test_onsets_days_off_ask_for_unix_seconds(live):
    live.create(n_generations=1)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        rig.send_results(batch.batch_id, shown(batch, 86400 * -20000)).result(30)  # MATLAB datenum days, say
    with live.sessions() as db:
        event, = db.scalars(select(Event).where(Event.kind == "rig.clock_offset")).all()
    assert "20000 days behind" in event.message and "unix seconds" in event.message
