"""Fault injection: the simulated rig (a real process) drops, delays, disconnects and duplicates.

For each fault the server keeps running, the thread finishes, and the database holds every
presentation that arrived exactly once — no more, no fewer than the rig reports having sent.
"""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from server.launch import start_sim_rig, stop
from server.store.models import Event, Generation, Presentation, Thread, ThreadStatus
from tests.server.test_end_to_end import UNIT
from tests.server.test_engine import RIG, LiveEngine

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "fault",
    [
        ["--drop", "0.3"],
        ["--delay", "1.5"],
        ["--disconnect-every", "2"],
        ["--duplicate", "1.0"],
    ],
    ids=["drop", "delay", "disconnect", "duplicate"],
)
def test_the_server_survives_a_faulty_rig(tmp_path, endpoint, fault):
    live = LiveEngine(tmp_path / "data", endpoint, batch_timeout_s=20.0)
    record = tmp_path / "presented.jsonl"
    rig_log = tmp_path / "rig.log"
    rig = None
    try:
        thread_id = live.create(n_generations=3)
        rig = start_sim_rig(endpoint, RIG, [UNIT], rig_log, seed=5, extra=["--record", str(record), *fault])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert rig.poll() is None, rig_log.read_text()[-3000:]
            with live.sessions() as db:
                if db.get(Thread, thread_id).status == ThreadStatus.FINISHED:
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"thread did not finish under fault {fault}:\n{rig_log.read_text()[-3000:]}")
    finally:
        stop(rig)
        live.close()

    sent = [json.loads(line) for line in record.read_text().splitlines()]
    with live.sessions() as db:
        stored = db.execute(select(Presentation.presentation_id, Presentation.stimulus_id, Presentation.batch_id,
                                   Presentation.rates_json)).all()
        generations = db.scalars(select(Generation).where(Generation.thread_id == thread_id)).all()
        events = db.scalars(select(Event.kind)).all()
        n_stored = db.scalar(select(func.count()).select_from(Presentation))
    assert n_stored == len({row[0] for row in stored})  # each presentation once
    assert {(p["presentation_id"], p["stimulus_id"], p["batch_id"], tuple(p["rates"])) for p in sent} == \
        {(pid, sid, bid, tuple(rates)) for pid, sid, bid, rates in stored}
    assert [g.status for g in sorted(generations, key=lambda g: g.number)] == ["complete"] * 3
    if fault[0] == "--drop":
        assert "round.timed_out" not in events  # `done` let the server re-queue without waiting
        assert sum(g.n_scored for g in generations) <= 3 * 6
    if fault[0] == "--disconnect-every":
        assert events.count("rig.connected") >= 2
