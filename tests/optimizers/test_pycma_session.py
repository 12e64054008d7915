"""A session thread runs pycma: the engine records its state before the first tell."""

from __future__ import annotations

from sqlalchemy import select

from rig_client.client import RigClient
from server.store.models import Generation, Thread
from tests.server.test_engine import RIG, LiveEngine, answer


def test_a_pycma_thread_starts_and_steps(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create(optimizer="pycma", optimizer_params={"population": 6}, n_generations=2)
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            for generation in range(2):
                batch = rig.next_batch(timeout=60)
                assert batch is not None and batch.generation == generation
                rig.send_results(batch.batch_id, answer(batch)).result(30)
        with live.sessions() as db:
            thread = db.get(Thread, thread_id)
            assert thread.last_error is None
            told = db.scalars(select(Generation).where(Generation.thread_id == thread_id)).all()
            assert [g.number for g in told] == [0, 1]
