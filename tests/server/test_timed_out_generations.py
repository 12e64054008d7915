"""The ``generation.timed_out`` warning: what a generation lost to unanswered rounds, images and references apart."""

from __future__ import annotations

from sqlalchemy import select

from rig_client.client import RigClient
from server.store.models import Event
from tests.server.test_engine import RIG, LiveEngine, answer


def timed_out_events(live: LiveEngine, thread_id: int) -> list[Event]:
    with live.sessions() as db:
        return db.scalars(select(Event).where(Event.thread_id == thread_id, Event.kind == "generation.timed_out")).all()


def run_generation_0(live: LiveEngine, thread_id: int, rounds: list) -> None:
    """Answer generation 0's rounds, each with ``keep(presentations)``, then wait for generation 1."""
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        for keep in rounds:
            batch = rig.next_batch(timeout=60)
            assert batch.generation == 0
            rig.send_results(batch.batch_id, keep(answer(batch)), done=True).result(30)
        assert rig.next_batch(timeout=60).generation == 1


def test_a_lost_reference_is_named_as_one_and_no_image_is_said_unscored(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create(n_generations=2)
        lost = None

        def without_a_reference(presentations):
            nonlocal lost
            lost = lost or next(p.stimulus_id for p in presentations if p.stimulus_id.startswith("ref-"))
            return [p for p in presentations if p.stimulus_id != lost]

        run_generation_0(live, thread_id, [without_a_reference, without_a_reference])
        (event,) = timed_out_events(live, thread_id)
        assert event.message == (f"thread {thread_id} 'a': generation 0: 1 of 2 reference image(s) (left out of the "
                                 "reference mean) unscored after 2 rounds")
        assert event.data_json == {"unscored_images": 0, "unscored_references": 1}


def test_no_warning_when_every_image_and_reference_scored_though_a_repeat_was_lost(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create(n_generations=2, repeats=2)
        run_generation_0(live, thread_id, [list, lambda presentations: [], lambda presentations: []])
        assert timed_out_events(live, thread_id) == []
