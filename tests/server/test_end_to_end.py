"""End to end: `actmax serve` and `actmax rig sim` as real processes over real sockets and a real SQLite file.

The server is killed (SIGKILL) mid-evolution and restarted on the same database; the thread must go on
at the next generation with the identical optimizer state. The pending generation's images are deleted
from the archive meanwhile (as a power loss before their background fsync would): the restarted server
renders them again from the committed codes, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time

import numpy as np
import pytest

import generators
import optimizers
from server.store.db import make_db_engine, make_sessionmaker
from server.thread_runtime import optimizer_params, restore_optimizer
from server.launch import ServerProcess, server_with_sim_rig
from server.store.models import decode_codes

pytestmark = pytest.mark.slow

UNIT = "blocks.6:67"  # cheap to compute, driven by DCGAN faces


def session_config(n_generations: int) -> dict:
    return {
        "name": "e2e",
        "rig": "e2e-rig",
        "references": {"source": "skimage", "count": 3},
        "threads": [{
            "name": "cma",
            "generator": "dcgan-faces",
            "optimizer": "cma",
            "optimizer_params": {"population": 12},
            "objective": {"channels": [0]},
            "seed": 7,
            "n_generations": n_generations,
        }],
    }


def wait_until(predicate, timeout: float, what: str, processes=()):
    """Poll ``predicate``; fail with the log of any process (Popen, log path) that died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process, log in processes:
            assert process.poll() is None, f"a process died waiting for {what}:\n{log.read_text()[-3000:]}"
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def complete_generations(api, thread_id: int) -> list[dict]:
    return [g for g in api.get(f"/threads/{thread_id}/generations")["items"] if g["status"] == "complete"]


def generation_rows(database) -> dict[int, tuple]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT number, status, codes, n_stimuli, optimizer_state FROM generations ORDER BY number")
        return {number: (status, codes, n, state) for number, status, codes, n, state in rows}


N_GENERATIONS = 16


def test_closed_loop_survives_a_server_crash(tmp_path):
    data = tmp_path / "data"
    record = tmp_path / "presented.jsonl"
    server = ServerProcess(data, secrets.token_urlsafe(16))
    rig_log = tmp_path / "rig.log"
    with server_with_sim_rig(server, "e2e-rig", [UNIT], rig_log, extra=["--record", str(record)]) as (api, rig):
        # Enough generations that two still run after the restart even when the loop outpaces the polling
        # (the kill lands a few generations after the fifth).
        session = api.post("/sessions", session_config(n_generations=N_GENERATIONS))
        (thread,) = api.get(f"/sessions/{session['id']}/threads")
        wait_until(lambda: len(complete_generations(api, thread["id"])) >= 5, 240, "5 generations",
                   [(server.process, server.log_path), (rig, rig_log)])
        assert api.get("/rigs") == [{"rig": "e2e-rig", "connected": True, "channels": 1, "sessions": [session["id"]]}]

        server.kill()
        before = generation_rows(data / "actmax.sqlite")
        last = max(n for n, row in before.items() if row[0] == "complete")

        # A fresh optimizer restored from the committed snapshot and scores must ask the next generation.
        params = optimizer_params("cma", generators.load("dcgan-faces", device="cpu"), {"population": 12})
        restored = optimizers.create("cma", 100, seed=7, **params)
        db_engine = make_db_engine(f"sqlite:///{data / 'actmax.sqlite'}")
        with make_sessionmaker(db_engine)() as db:
            assert restore_optimizer(db, restored, thread["id"]).number == last
        db_engine.dispose()
        expected_next = restored.ask()

        # The step that committed generation `last` committed `last + 1` with it; its images are
        # archived in the background, so take them away as a power loss may.
        pending_files = pending_image_files(data)
        assert len(pending_files) == 12
        for path, _ in pending_files:
            path.unlink(missing_ok=True)

        server.start()
        wait_until(lambda: len(complete_generations(api, thread["id"])) >= last + 3, 240,
                   "two generations after the restart", [(server.process, server.log_path), (rig, rig_log)])
        for path, content_hash in pending_files:  # rendered again, identical
            assert hashlib.sha256(path.read_bytes()).hexdigest() == content_hash
        wait_until(lambda: api.get(f"/threads/{thread['id']}")["status"] == "finished", 240,
                   "the thread to finish", [(server.process, server.log_path), (rig, rig_log)])

    after = generation_rows(data / "actmax.sqlite")
    assert sorted(after) == list(range(N_GENERATIONS)) and all(row[0] == "complete" for row in after.values())
    for number in range(last + 1):  # what was committed before the crash is untouched
        assert after[number] == before[number]
    status, codes, n, _ = after[last + 1]
    np.testing.assert_array_equal(decode_codes(codes, n), expected_next)  # bit for bit

    # Scores rise: the last generations beat the first.
    generations = sorted(complete_generations_from_db(data / "actmax.sqlite"))
    first_mean, last_means = generations[0][1], [m for _, m in generations[-2:]]
    assert min(last_means) > first_mean

    # The database holds exactly what the rig presented, each presentation once.
    presented = [json.loads(line) for line in record.read_text().splitlines()]
    with sqlite3.connect(data / "actmax.sqlite") as db:
        stored = db.execute("SELECT presentation_id, stimulus_id, batch_id, rates_json FROM presentations").fetchall()
    assert len(stored) == len({row[0] for row in stored})
    assert {(p["presentation_id"], p["stimulus_id"], p["batch_id"], tuple(p["rates"])) for p in presented} == \
        {(pid, sid, bid, tuple(json.loads(rates))) for pid, sid, bid, rates in stored}


def pending_image_files(data) -> list[tuple]:
    """(archive path, content hash) of the pending generation's synthetic stimuli."""
    with sqlite3.connect(data / "actmax.sqlite") as db:
        rows = db.execute("SELECT s.png_path, s.content_hash FROM stimuli s JOIN generations g "
                          "ON s.generation_id = g.id WHERE g.status = 'pending' AND s.kind = 'synthetic'").fetchall()
    return [(data / png_path, content_hash) for png_path, content_hash in rows]


def complete_generations_from_db(database) -> list[tuple[int, float]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT number, mean_score FROM generations WHERE status = 'complete'").fetchall()
