"""Fair compute: a large generation renders in chunks, and other sessions' steps run in between.

The engine runs torch and database work on one worker; a generation of more than
``render_chunk`` images is asked and committed apart from its rendering, which is one job per
chunk. These tests use the real engine, ZeroMQ and SQLite with DCGAN, and `RigClient` rigs.
"""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy import select

import generators
import optimizers
from rig_client.client import RigClient
from server.store.models import Generation, GenerationStatus, decode_codes
from server.thread_runtime import optimizer_params, restore_optimizer
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import LiveEngine, answer

BIG, SMALL = 160, 2  # images per generation of the large and the small session


def generations(live, thread_id: int) -> list[Generation]:
    with live.sessions() as db:
        return db.scalars(select(Generation).where(Generation.thread_id == thread_id)
                          .order_by(Generation.number)).all()


def create(live, rig: str, population: int, n_generations: int) -> int:
    return live.create({"name": rig, "rig": rig}, optimizer_params={"population": population},
                       n_generations=n_generations)


def answer_batches(live, rig: str, stop: threading.Event) -> threading.Thread:
    """A rig in its own thread that answers every batch at once until ``stop``."""
    def run():
        with RigClient(live.settings.zmq_endpoint, rig, channels=1) as client:
            while not stop.is_set():
                batch = client.next_batch(timeout=0.2)
                if batch is not None:
                    client.send_results(batch.batch_id, answer(batch)).result(30)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_another_session_runs_generations_while_a_large_one_renders(tmp_path, endpoint):
    live = LiveEngine(tmp_path, endpoint, render_chunk=4)
    stop = threading.Event()
    try:
        big = create(live, "big-rig", BIG, n_generations=2)
        small = create(live, "small-rig", SMALL, n_generations=500)
        small_rig = answer_batches(live, "small-rig", stop)
        with RigClient(live.settings.zmq_endpoint, "big-rig", channels=1) as rig:
            for _ in range(2):
                batch = rig.next_batch(timeout=120)
                rig.send_results(batch.batch_id, answer(batch)).result(60)
            wait_until(lambda: all(g.status == GenerationStatus.COMPLETE for g in generations(live, big))
                       and len(generations(live, big)) == 2, 120, "the large session to finish")
    finally:
        stop.set()
        small_rig.join(10)
        live.close()
    first, second = generations(live, big)
    # Between the large session's tell of generation 0 and its generation 1 (160 images rendered in
    # 40 jobs), the small session's results were recorded and new generations asked.
    between = [g for g in generations(live, small) if first.completed_at < g.asked_at < second.asked_at]
    assert len(between) >= 2, [g.asked_at for g in generations(live, small)]


def test_a_crash_before_a_chunked_generation_is_stored_resumes_with_the_same_codes(tmp_path, endpoint):
    """Killed after generation 0's tell committed, while generation 1 renders: the restart asks it again, identical."""
    live = LiveEngine(tmp_path, endpoint, render_chunk=2)
    thread_id = create(live, "test-rig", BIG, n_generations=2)
    try:
        with RigClient(live.settings.zmq_endpoint, "test-rig", channels=1) as rig:
            batch = rig.next_batch(timeout=120)
            rig.send_results(batch.batch_id, answer(batch)).result(60)
            wait_until(lambda: generations(live, thread_id)[0].status == GenerationStatus.COMPLETE, 60,
                       "generation 0 to be told")
    finally:
        live.close()  # mid-render: the worker's queue of chunks is dropped
    assert len(generations(live, thread_id)) == 1, "the crash came too late: generation 1 was stored"

    params = optimizer_params("cma", generators.load("dcgan-faces", device="cpu"), {"population": BIG})
    restored = optimizers.create("cma", 100, seed=3, **params)
    with live.sessions() as db:
        assert restore_optimizer(db, restored, thread_id).number == 0
    expected = restored.ask()

    with LiveEngine(tmp_path, endpoint, render_chunk=2) as live:
        with RigClient(live.settings.zmq_endpoint, "test-rig", channels=1) as rig:
            batch = rig.next_batch(timeout=120)
            assert batch.generation == 1 and sum(s.kind == "synthetic" for s in batch.stimuli) == BIG
    second = generations(live, thread_id)[1]
    np.testing.assert_array_equal(decode_codes(second.codes, second.n_stimuli), expected)  # bit for bit
