"""Nothing is shown twice and nothing is lost across reconnects, restarts and stalls; the engine-side
protocol agreements (docs/protocol.md §4.5, §6.5, §8) and its housekeeping.

The first tests run the engine in-process with `RigClient` as the rig; the last ones run `actmax serve`
and `actmax rig sim` as real processes, SIGKILL the server at random moments or SIGSTOP the rig past
its liveness, and count every showing the rig made against the stored presentations.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import signal
import sqlite3
import time
from collections import Counter

import numpy as np
import pytest
from sqlalchemy import select

import generators
import optimizers
from rig_client.client import Presentation, RigClient
from rig_client.protocol import ProtocolError
from server.launch import ServerProcess, server_with_sim_rig, start_sim_rig, stop
from server.store.models import Batch, Event, Generation, Thread, ThreadStatus, decode_codes, utcnow
from server.store.models import Presentation as PresentationRow
from server.thread_runtime import optimizer_params
from tests.server.test_end_to_end import UNIT, wait_until
from tests.server.test_engine import RIG, LiveEngine, answer, live  # noqa: F401  (the fixture)


def on_loop(live, coroutine, timeout=60):
    return asyncio.run_coroutine_threadsafe(coroutine, live.loop).result(timeout)


def set_status(live, thread_id: int, status: ThreadStatus) -> None:
    with live.sessions.begin() as db:
        db.get(Thread, thread_id).status = status
    live.engine.wake()


def thread_status(live, thread_id: int) -> ThreadStatus:
    with live.sessions() as db:
        return db.get(Thread, thread_id).status


def test_ack_counts_presentations_not_stimuli(live):
    live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        presentations = answer(batch)
        shown_again = Presentation(batch.stimuli[0].stimulus_id, [9.0], time.time(), batch.response_window_ms)
        ack = rig.send_results(batch.batch_id, [*presentations, shown_again]).result(30)
    assert ack["accepted"] == len(batch.stimuli) + 1 and ack["duplicates"] == 0


def test_a_resent_batch_keeps_its_id_and_holds_only_what_is_still_owed(live):
    live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
        half = answer(first)[: len(first.stimuli) // 2]
        rig.send_results(first.batch_id, half, done=False).result(30)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:  # a new program: it knows no batch
        again = rig.next_batch(timeout=60)
        assert again.batch_id == first.batch_id
        assert {s.stimulus_id for s in again.stimuli} == \
            {s.stimulus_id for s in first.stimuli} - {p.stimulus_id for p in half}
        rig.send_results(again.batch_id, answer(again)).result(30)
        assert rig.next_batch(timeout=60).generation == 1
    with live.sessions() as db:
        assert len(db.scalars(select(Batch).where(Batch.id == first.batch_id)).all()) == 1


def test_a_rig_restarted_with_fewer_channels_mid_generation_completes_it(live):
    """The objective scores channel 0; the rig answered half the batch with 2 channels and the rest with 1."""
    thread_id = live.create(n_generations=2)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=2) as rig:
        first = rig.next_batch(timeout=60)
        half = answer(first, lambda i, s: [float(i), 1.0])[: len(first.stimuli) // 2]
        rig.send_results(first.batch_id, half, done=False).result(30)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        again = rig.next_batch(timeout=60)
        rig.send_results(again.batch_id, answer(again)).result(30)
        assert rig.next_batch(timeout=60).generation == 1
    assert thread_status(live, thread_id) == ThreadStatus.RUNNING
    with live.sessions() as db:
        point = db.scalars(select(Event.data_json).where(Event.kind == "generation.completed")).one()
    assert point["channel_rates"][1] == 1.0 and point["n_scored"] == 6


def events_of(live, kind: str) -> list[str]:
    with live.sessions() as db:
        return db.scalars(select(Event.message).where(Event.kind == kind)).all()


def test_the_batch_timeout_waits_while_the_rig_is_away(tmp_path, endpoint):
    """Away longer than the timeout (liveness 0.5 s x 5): the same round is resent, not a new one."""
    with LiveEngine(tmp_path, endpoint, batch_timeout_s=3.0) as live:
        thread_id = live.create()
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
        def lost() -> list:  # an event of the session: its watch and dashboard show it
            with live.sessions() as db:
                return db.execute(select(Event.session_id, Event.level).where(Event.kind == "rig.lost")).all()

        with live.sessions() as db:
            session_id = db.get(Thread, thread_id).session_id
        assert wait_until(lost, 30, "the server to see the rig leave") == [(session_id, "warning")]
        time.sleep(4.0)
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            again = rig.next_batch(timeout=60)
            assert again.batch_id == first.batch_id
            rig.send_results(again.batch_id, answer(again)).result(30)
            assert rig.next_batch(timeout=60).generation == 1
        assert events_of(live, "round.timed_out") == []


def test_a_server_restart_leaves_a_thread_resumed_event_and_no_false_rig_name_warning(tmp_path, endpoint):
    """The event names the generation and its resent batch. The rig says HELLO the moment the server is back,
    while the engine decides whether the thread waits for it: that decision and its message see the same rigs
    (before, the message often read "waiting for rig 'test-rig', which is not connected; connected: 'test-rig'")."""
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create()
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
            rig.send_results(first.batch_id, answer(first)[:3], done=False).result(30)
    with RigClient(endpoint, RIG, channels=1) as rig, LiveEngine(tmp_path, endpoint) as live:
        assert rig.next_batch(timeout=60).batch_id == first.batch_id
        with live.sessions() as db:
            resumed = db.execute(select(Event.thread_id, Event.message, Event.data_json)
                                 .where(Event.kind == "thread.resumed")).one()
            waiting = db.scalars(select(Event.level).where(Event.kind == "thread.waiting_for_rig")).all()
    assert "warning" not in waiting
    owed = len(first.stimuli) - 3
    assert resumed == (thread_id, f"thread {thread_id} 'a' resumed after a server restart at generation 0: its batch "
                       f"{first.batch_id} is sent again with the {owed} stimuli it still owes",
                       {"generation": 0, "pending": True, "batch_id": first.batch_id, "resent": True})


def test_a_thread_waiting_for_a_rig_whose_name_differs_from_a_connected_ones_only_in_case_warns(live):
    with RigClient(live.settings.zmq_endpoint, RIG.upper(), channels=1) as rig:
        assert rig.wait_connected(30)
        thread_id = live.create()  # for rig "test-rig"
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.WAITING_FOR_RIG, 30, "the thread to wait")
        waiting = wait_until(lambda: events_of(live, "thread.waiting_for_rig"), 30, "the event")
    with live.sessions() as db:
        level = db.scalar(select(Event.level).where(Event.kind == "thread.waiting_for_rig"))
    assert level == "warning" and "'TEST-RIG'" in waiting[0] and "case-sensitive" in waiting[0]


def test_late_answers_to_a_timed_out_round_answer_the_round_that_replaced_it(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint, batch_timeout_s=2.0) as live:
        live.create()
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
            requeued = rig.next_batch(timeout=30)  # the same stimuli, after the timeout, as a new round
            assert requeued.batch_id != first.batch_id and requeued.generation == 0
            rig.send_results(first.batch_id, answer(first)).result(30)  # the first round, shown late
            nxt = rig.next_batch(timeout=30)
            assert nxt.generation == 1
            assert len(events_of(live, "round.timed_out")) == 1  # the re-queued round was not waited for


def test_a_rig_that_has_the_batch_ignores_the_resend_and_its_resent_results_complete_it(live):
    live.create(n_generations=2)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
        on_loop(live, live.transport._unbind(RIG, notify=False))  # expired, as after a stall: it must HELLO again
        rig.send_results(first.batch_id, answer(first)).result(60)  # not_registered, HELLO, resend, ACK
        nxt = rig.next_batch(timeout=60)
        assert nxt.generation == 1  # the resent copy of generation 0 never reached the presentation loop
    with live.sessions() as db:
        numbers = db.scalars(select(Generation.number).join(Batch, Batch.generation_id == Generation.id)).all()
    assert sorted(numbers) == [0, 1]  # one batch each: generation 0 was never sent as a new round


def test_a_rebuilt_thread_resends_its_outstanding_batch_to_a_rig_already_connected(live):
    """The rig reconnects while the thread is paused; the generation in flight is still shown (a paused
    thread keeps its runtime until that generation is told), under the same batch id."""
    thread_id = live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
        set_status(live, thread_id, ThreadStatus.PAUSED)
        wait_until(lambda: getattr(live.engine._threads.get(thread_id), "paused", False), 30, "the pause")
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        assert rig.wait_connected(30)
        set_status(live, thread_id, ThreadStatus.RUNNING)
        again = rig.next_batch(timeout=30)
        assert again is not None and again.batch_id == first.batch_id


def test_new_presentations_for_a_scored_generation_are_stored_unscored_closed_and_resends_are_duplicates(live):
    live.create(n_generations=2)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        presentations = answer(batch)
        rig.send_results(batch.batch_id, presentations, done=False).result(30)  # every stimulus answered
        assert rig.next_batch(timeout=60).generation == 1  # so generation 0 was scored without `done`
        late = Presentation(batch.stimuli[0].stimulus_id, [5.0], time.time(), batch.response_window_ms)
        with pytest.raises(ProtocolError) as error:
            rig.send_results(batch.batch_id, [late], done=True).result(30)
        assert error.value.code == "batch_closed" and "1 new presentation(s) are stored, not scored" in str(error.value)
        again = rig.send_results(batch.batch_id, [*presentations, late], done=True).result(30)
        assert again["accepted"] == 0 and again["duplicates"] == len(presentations) + 1
    with live.sessions() as db:
        stored = db.scalars(select(PresentationRow.presentation_id)).all()
        events = db.scalars(select(Event).where(Event.kind == "results.late")).all()
    assert late.presentation_id in stored and len(stored) == len(presentations) + 1
    assert [e.data_json["presentations"] for e in events] == [1]


def test_no_batch_row_for_a_send_that_failed(live):
    real_send, failed = live.transport.send, []

    async def send_failing_once(rig, message):
        if not failed:
            failed.append(message.header["batch_id"])
            return False
        return await real_send(rig, message)

    live.transport.send = send_failing_once
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        assert rig.wait_connected(30)
        live.create()
        batch = rig.next_batch(timeout=60)
    with live.sessions() as db:
        assert db.scalars(select(Batch.id)).all() == [batch.batch_id]
    assert failed and failed[0] != batch.batch_id


def test_received_at_is_when_the_results_arrived_not_when_the_compute_queue_reached_them(live):
    live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        time.sleep(0.5)  # let the engine finish sending

        def busy():
            time.sleep(2.0)
            return utcnow()

        blocked = asyncio.run_coroutine_threadsafe(live.engine._offload(busy), live.loop)
        sent_at = utcnow()
        rig.send_results(batch.batch_id, answer(batch)).result(30)
        freed_at = blocked.result(30)
    with live.sessions() as db:
        received = db.scalars(select(PresentationRow.received_at)).all()
    assert received and all(sent_at <= r < freed_at for r in received)


def test_nothing_is_rendered_for_a_rig_that_is_not_connected(live):
    thread_id = live.create()  # at the engine's start: it waits once its rigs' grace (one liveness period) is over
    wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.WAITING_FOR_RIG, 30, "the wait")  # visible
    time.sleep(2.0)  # four reconcile rounds
    with live.sessions() as db:
        assert db.scalars(select(Generation).where(Generation.thread_id == thread_id)).all() == []
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        assert rig.next_batch(timeout=60).generation == 0


def test_full_states_only_at_snapshot_generations_and_replay_reproduces_them(live):
    thread_id = live.create(n_generations=6)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        for _ in range(6):
            batch = rig.next_batch(timeout=60)
            rig.send_results(batch.batch_id, answer(batch, lambda i, s: [float(hash(s.stimulus_id) % 97)])).result(30)
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FINISHED, 60, "the end")
    with live.sessions() as db:
        generations = db.scalars(select(Generation).order_by(Generation.number)).all()
        assert [g.number for g in generations if g.optimizer_state is not None] == [0, 1, 2, 4]
        assert all(g.optimizer_summary_json["sigma"] > 0 for g in generations)
        params = optimizer_params("cma", generators.load("dcgan-faces", device="cpu"), {"population": 6})
        replayed = optimizers.create("cma", 100, seed=3, **params)
        replayed.load_state_dict(optimizers.loads_state(generations[2].optimizer_state))
        for g in generations[3:5]:
            codes = replayed.ask()
            assert (codes == decode_codes(g.codes, g.n_stimuli)).all()
            replayed.tell(codes, np.array([np.nan if s is None else s for s in g.scores_json]))
        assert optimizers.dumps_state(replayed.state_dict()) == generations[4].optimizer_state


@pytest.mark.parametrize("written, failing", [(0, False), (1, False), (0, True)],
                         ids=["no-snapshot-written", "only-generation-0s", "every-write-failed"])
def test_a_server_stopped_before_it_wrote_snapshots_resumes_bit_for_bit(tmp_path, endpoint, monkeypatch, written,
                                                                         failing):
    """A snapshot generation's full optimizer state is written after its step's BATCH is out, in a transaction of
    its own (``steps.store_snapshot``), so the step's commit holds none. A server stopped before writing any (or all
    but generation 0's), or whose writes failed (the thread goes on), resumes from the snapshot before, or from the
    fresh optimizer: the pending generation is asked again identical (``resume_pending`` refuses other codes) and
    the thread runs to its end."""
    from server import steps

    store = steps.store_snapshot

    def stopped_before(db, runtime):  # the server stops between the step's commit and this write, or it fails
        if runtime.snapshot.number < written:
            store(db, runtime)
        elif failing:
            raise sqlite3.OperationalError("disk I/O error")
        else:
            runtime.snapshot = None
    monkeypatch.setattr(steps, "store_snapshot", stopped_before)
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create(n_generations=6)
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            for _ in range(3):
                batch = rig.next_batch(timeout=60)
                rig.send_results(batch.batch_id, answer(batch, lambda i, s: [float(hash(s.stimulus_id) % 97)])).result(30)
            assert rig.next_batch(timeout=60).generation == 3  # generations 0, 1 and 2 told, 3 pending
        if failing:  # generation 2's write comes after generation 3's BATCH left: let it fail before the stop

            def failed_writes() -> int:
                with live.sessions() as db:
                    return len(db.scalars(select(Event).where(Event.kind == "thread.snapshot_failed")).all())
            wait_until(lambda: failed_writes() == 3, 30, "generation 2's snapshot write to fail")
    with live.sessions() as db:
        generations = db.scalars(select(Generation).order_by(Generation.number)).all()
        thread = db.get(Thread, thread_id)
        assert (thread.status, thread.last_error) == (ThreadStatus.RUNNING, None)
        warned = db.scalars(select(Event).where(Event.kind == "thread.snapshot_failed")).all()
        assert [(e.level, e.data_json["generation"]) for e in warned] == ([("warning", n) for n in (0, 1, 2)]
                                                                          if failing else [])
    assert [g.number for g in generations if g.optimizer_state is not None] == list(range(written))
    assert [g.status for g in generations] == ["complete"] * 3 + ["pending"]

    monkeypatch.setattr(steps, "store_snapshot", store)
    with LiveEngine(tmp_path, endpoint) as live:
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            for number in range(3, 6):
                batch = rig.next_batch(timeout=60)
                assert batch.generation == number
                rig.send_results(batch.batch_id, answer(batch, lambda i, s: [float(hash(s.stimulus_id) % 97)])).result(30)
            wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FINISHED, 60, "the end")
        with live.sessions() as db:
            resumed = db.scalars(select(Generation).order_by(Generation.number)).all()
    assert [g.number for g in resumed if g.optimizer_state is not None] == [*range(written), 4]
    assert decode_codes(resumed[3].codes, 6).tobytes() == decode_codes(generations[3].codes, 6).tobytes()


# ---------------------------------------------------------------------------------- real processes
def outstanding(live, thread_id: int) -> set[str]:
    """The id of the batch the engine awaits answers for, if any."""
    runtime = live.engine._threads.get(thread_id)
    inflight = runtime and runtime.inflight
    return {inflight.batch_id} if inflight and inflight.batch_id and inflight.awaiting else set()


def session_config(n_generations: int, repeats: int) -> dict:
    return {"name": "kills", "rig": RIG, "references": {"source": "skimage", "count": 2},
            "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma",
                         "optimizer_params": {"population": 6}, "objective": {"channels": [0]}, "seed": 11,
                         "n_generations": n_generations, "repeats": repeats}]}


def assert_each_stimulus_shown_exactly_repeats_times(record, database, n_generations, repeats, per_generation):
    """What the rig showed (its record) is what the database holds, and each stimulus ``repeats`` times."""
    shown = [json.loads(line) for line in record.read_text().splitlines()]
    with sqlite3.connect(database) as db:
        generation_of = dict(db.execute("SELECT b.id, g.number FROM batches b JOIN generations g "
                                        "ON g.id = b.generation_id").fetchall())
        stored = db.execute("SELECT presentation_id, stimulus_id, batch_id FROM presentations").fetchall()
    counts = Counter((generation_of[p["batch_id"]], p["stimulus_id"]) for p in shown)
    extra = {key: n - repeats for key, n in counts.items() if n != repeats}
    assert extra == {}, f"showings other than {repeats} per stimulus: {extra}"
    assert len(counts) == n_generations * per_generation
    assert {(p["presentation_id"], p["stimulus_id"], p["batch_id"]) for p in shown} == set(stored)  # 0 lost


@pytest.mark.slow
@pytest.mark.parametrize("render_chunk", [
    "4",  # 6 images rendered in chunks of 4: kills also land between a tell and its next generation's rows
    "64",  # the default: the last RESULTS, the tell and the next generation are one transaction
])
def test_server_killed_at_random_moments_loses_nothing_and_shows_nothing_twice(tmp_path, render_chunk):
    data, record, rig_log = tmp_path / "data", tmp_path / "shown.jsonl", tmp_path / "rig.log"
    server = ServerProcess(data, secrets.token_urlsafe(16), env={"ACTMAX_RENDER_CHUNK": render_chunk})
    moments = random.Random()
    kills = []
    with server_with_sim_rig(server, RIG, [UNIT], rig_log,
                             extra=["--record", str(record), "--delay", "0.4"]) as (api, rig):
        session = api.post("/sessions", session_config(n_generations=6, repeats=2))
        (thread,) = api.get(f"/sessions/{session['id']}/threads")
        for _ in range(3):
            kills.append(round(moments.uniform(0.5, 4.0), 2))
            time.sleep(kills[-1])
            server.kill()
            server.start()
        wait_until(lambda: api.get(f"/threads/{thread['id']}")["status"] == "finished", 300, "the thread to finish",
                   [(server.process, server.log_path), (rig, rig_log)])
    print(f"SIGKILLs after {kills} s")
    assert_each_stimulus_shown_exactly_repeats_times(record, data / "actmax.sqlite", 6, 2, per_generation=6 + 2)


@pytest.mark.slow
def test_a_rig_stalled_past_its_liveness_shows_nothing_twice(tmp_path, endpoint):
    live = LiveEngine(tmp_path / "data", endpoint, batch_timeout_s=120.0)  # liveness 0.5 s x 5
    record, rig_log = tmp_path / "shown.jsonl", tmp_path / "rig.log"
    rig = start_sim_rig(endpoint, RIG, [UNIT], rig_log, extra=["--record", str(record), "--delay", "0.5"])
    stalls = 0
    try:
        thread_id = live.create(n_generations=5)
        wait_until(lambda: live.transport.connected(RIG), 60, "the rig", [(rig, rig_log)])
        stalled = set()
        for _ in range(2):  # each while a batch is outstanding (its stimuli with the rig, unanswered)
            stalled.add(wait_until(lambda: outstanding(live, thread_id) - stalled, 120, "an outstanding batch",
                                   [(rig, rig_log)]).pop())
            rig.send_signal(signal.SIGSTOP)
            time.sleep(4.0)  # past 2.5 s: the server expires the rig
            stalls += not live.transport.connected(RIG)
            rig.send_signal(signal.SIGCONT)
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FINISHED, 240,
                   "the thread to finish", [(rig, rig_log)])
    finally:
        rig.send_signal(signal.SIGCONT)
        stop(rig)
        live.close()
    assert stalls == 2
    assert_each_stimulus_shown_exactly_repeats_times(record, tmp_path / "data" / "actmax.sqlite", 5, 1,
                                                     per_generation=6 + 2)
