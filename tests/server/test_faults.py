"""Fault injection: the simulated rig (a real process) drops, delays, disconnects and duplicates; the image
archive becomes unwritable.

For each fault the server keeps running, the thread finishes, and the database holds every
presentation that arrived exactly once — no more, no fewer than the rig reports having sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time

import numpy as np
import pytest
from sqlalchemy import func, select

import generators
import optimizers
from rig_client.client import RigClient
from server.launch import start_sim_rig, stop
from server.store.models import Event, Generation, Presentation, Stimulus, Thread, ThreadStatus, decode_codes
from server.thread_runtime import optimizer_params
from tests.server.test_end_to_end import UNIT, wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_reconnect import thread_status

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


def wait_archived(live) -> None:
    """Wait until the synthetic images stored so far are in the archive (its writes follow the send)."""
    with live.sessions() as db:
        hashes = db.scalars(select(Stimulus.content_hash).where(Stimulus.kind == "synthetic")).all()
    wait_until(lambda: all(live.engine._archive.holds(h) for h in hashes), 30, "the images archived")


@contextlib.contextmanager
def read_only(path):
    """``path``, a folder or a file, really unwritable, even to root (a read-only bind mount of itself; else its
    modes, and those of a folder's subfolders)."""
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", "-o", "ro", path, path], capture_output=True).returncode:
            pytest.skip("root without the right to mount: cannot make a file or folder read-only")
        try:
            yield
        finally:
            subprocess.run(["umount", path], check=True)
        return
    if not path.is_dir():
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    folders = [path, *(sub for sub in path.iterdir() if sub.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        yield
    finally:
        for folder in folders:
            folder.chmod(0o755)


def test_an_unwritable_archive_stalls_the_thread_until_it_is_writable_then_it_goes_on(tmp_path, endpoint, caplog):
    """The archive write of generation 1 fails: the thread keeps running with a clear ``last_error``, logs
    it once while retrying, and once the folder is writable scores generation 1 from what the rig showed."""
    caplog.set_level(logging.INFO, logger="server.engine")
    with LiveEngine(tmp_path, endpoint) as live, RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        thread_id = live.create(n_generations=3)
        first = rig.next_batch(timeout=60)
        wait_archived(live)
        with read_only(tmp_path / "images"):
            rig.send_results(first.batch_id, answer(first)).result(30)
            second = rig.next_batch(timeout=60)  # sent from memory; its archive writes fail
            shown = answer(second)
            rig.send_results(second.batch_id, shown).result(30)
            wait_until(lambda: thread_id in live.engine._stalled and live.engine._stalled[thread_id].wait_s >= 4,
                       30, "two retries that failed")
            with live.sessions() as db:
                thread = db.get(Thread, thread_id)
                assert thread.status == ThreadStatus.RUNNING
                assert thread.last_error.startswith("storage failed: [Errno ")
                assert f"Make {tmp_path / 'images'}" in thread.last_error  # the folder that failed, and the fix
                assert live.engine.storage_problem() == f"thread {thread_id}: {thread.last_error}"  # for /health
        third = rig.next_batch(timeout=60)
        assert third.generation == 2
        rig.send_results(third.batch_id, answer(third)).result(30)
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FINISHED, 60, "the thread finished")

    with live.sessions() as db:
        kinds = db.scalars(select(Event.kind).where(Event.thread_id == thread_id)).all()
        generations = db.scalars(select(Generation).order_by(Generation.number)).all()
        stimulus_index = dict(db.execute(select(Stimulus.id, Stimulus.index)
                                         .where(Stimulus.generation_id == generations[1].id)).all())
        assert db.get(Thread, thread_id).last_error is None
        assert db.scalar(select(func.count()).select_from(Presentation)) == 3 * 8
    assert kinds.count("thread.storage_failed") == kinds.count("thread.storage_recovered") == 1
    assert "thread.failed" not in kinds
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in warnings] == [logging.WARNING] and "storage failed" in warnings[0].getMessage()
    assert [g.status for g in generations] == ["complete"] * 3
    score_of = {p.stimulus_id: p.rates[0] for p in shown}  # each stimulus shown once: its score is its rate
    assert generations[1].scores_json == [score_of[s] for s in sorted(stimulus_index, key=stimulus_index.get)]
    params = optimizer_params("cma", generators.load("dcgan-faces", device="cpu"), {"population": 6})
    replayed = optimizers.create("cma", 100, seed=3, **params)
    for g in generations:  # the evolution is the one those scores make
        codes = replayed.ask()
        assert (codes == decode_codes(g.codes, g.n_stimuli)).all()
        replayed.tell(codes, np.array(g.scores_json, dtype=float))
