"""The experiment engine over a real ZeroMQ transport and a real SQLite file, with `RigClient` as the rig.

The engine runs in-process on an event loop in a background thread; the rig is the library a lab uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
import subprocess
import sys
import threading
import uuid
import time
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import func, select

from rig_client.client import Presentation, RigClient
from rig_client.protocol import PROTOCOL_MINOR, VERSION, Message, MessageType, ProtocolError, decode, encode
from rig_client.trials import TrialPresentation
from server.session_config import SessionConfig
from server import ServerError
from server.engine import Engine
from server.live import hub
from server.settings import Settings
from server.store.archive import ImageArchive
from server.store.db import make_db_engine, make_sessionmaker, upgrade
from server.store.models import Batch, Event, Generation, GenerationStatus, Stimulus, Thread, ThreadStatus
from server.store.models import Presentation as PresentationRow
from server.store.records import create_session, stop_session
from server.transport import Transport
from tests.conftest import wait_port_free
from tests.server.conftest import count_in_the_file

RIG = "test-rig"


class LiveEngine:
    """Engine + Transport running on their own event loop thread."""

    def __init__(self, data_dir, endpoint, batch_timeout_s=300.0, **settings):
        self.settings = Settings(data_dir=data_dir, zmq_endpoint=endpoint, token="t", heartbeat_s=0.5,
                                 batch_timeout_s=batch_timeout_s, device="cpu", **settings)
        self.db_engine = make_db_engine(self.settings.database_url, background_checkpoints=True)  # as serve makes it
        upgrade(self.db_engine)
        self.sessions = make_sessionmaker(self.db_engine)
        self.engine = Engine(self.settings, self.sessions, ImageArchive(data_dir))
        self.transport = Transport(endpoint, self.engine, heartbeat_s=0.5, liveness=5)
        self.engine.transport = self.transport
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tasks = [asyncio.run_coroutine_threadsafe(c, self.loop) for c in (self.transport.run(), self.engine.run())]

    def create(self, session: dict | None = None, **thread) -> int:
        config = SessionConfig.model_validate({
            "name": "t", "rig": RIG, "references": {"source": "skimage", "count": 2}, **(session or {}),
            "threads": [{"name": "a", "generator": "dcgan-faces", "optimizer": "cma",
                         "optimizer_params": {"population": 6}, "objective": {"channels": [0]},
                         "seed": 3, "n_generations": 3, **thread}],
        })
        with self.sessions.begin() as db:
            session = create_session(db, config)
            thread_id = session.threads[0].id
        self.engine.wake()
        return thread_id

    def __enter__(self) -> LiveEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self):
        async def shutdown():
            await self.engine.close()
            await self.transport.close()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
        for task in self.tasks:
            task.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.db_engine.dispose()
        wait_port_free(self.settings.zmq_endpoint)  # for an engine started again on it, as tests do


@pytest.fixture
def live(tmp_path, endpoint):
    engine = LiveEngine(tmp_path, endpoint)
    yield engine
    engine.close()


def answer(batch, rates_of=lambda i, s: [float(i)]):
    return [Presentation(s.stimulus_id, rates_of(i, s), time.time(), batch.response_window_ms)
            for i, s in enumerate(batch.stimuli)]


def snapshot(live) -> dict:
    with live.sessions() as db:
        return {
            "presentations": db.scalar(select(func.count()).select_from(PresentationRow)),
            "batches": db.scalar(select(func.count()).select_from(Batch)),
            "generations": [(g.number, g.status, g.optimizer_state, json.dumps(g.scores_json))
                            for g in db.scalars(select(Generation).order_by(Generation.number))],
        }


def test_scores_reach_the_optimizer_by_stimulus_and_duplicates_change_nothing(live):
    thread_id = live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        assert batch is not None and batch.generation == 0
        kinds = [s.kind for s in batch.stimuli]
        assert kinds.count("synthetic") == 6 and kinds.count("reference") == 2
        presentations = answer(batch)
        ack = rig.send_results(batch.batch_id, presentations).result(30)
        assert ack["accepted"] == len(presentations) and ack["duplicates"] == 0
        second = rig.next_batch(timeout=60)
        assert second is not None and second.generation == 1
        deadline = time.monotonic() + 30  # generation 0's optimizer state is written just after that BATCH's send
        while snapshot(live)["generations"][0][2] is None:
            assert time.monotonic() < deadline, "generation 0's optimizer state was never written"
            time.sleep(0.02)

        before = snapshot(live)
        again = rig.send_results(batch.batch_id, presentations).result(30)
        assert again == {"batch_id": batch.batch_id, "accepted": 0, "duplicates": len(presentations)}
        assert rig.next_batch(timeout=1.0) is None
        assert snapshot(live) == before

    # Generation 0's scores are the rates sent for each code, in code order.
    sent = {s.stimulus_id: float(i) for i, s in enumerate(batch.stimuli)}
    with live.sessions() as db:
        generation = db.scalars(select(Generation).where(Generation.thread_id == thread_id,
                                                         Generation.number == 0)).one()
        expected = [sent[s.id] for s in generation.stimuli if s.kind == "synthetic"]
        assert generation.status == GenerationStatus.COMPLETE
        assert generation.scores_json == expected
        references = [v for k, v in sent.items() if k.startswith("ref-")]
        assert generation.reference_mean == pytest.approx(np.mean(references))


def test_results_that_break_the_rules_get_errors_and_the_loop_goes_on(live):
    live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        bad = [
            ("unknown_batch", "nope", answer(batch)),
            ("bad_field", batch.batch_id, [Presentation("not-in-batch", [1.0], time.time(), (50, 200))]),
        ]
        for code, batch_id, presentations in bad:
            with pytest.raises(ProtocolError) as error:
                rig.send_results(batch_id, presentations).result(30)
            assert error.value.code == code
        rig.send_results(batch.batch_id, answer(batch)).result(30)
        assert rig.next_batch(timeout=60).generation == 1


def test_unanswered_stimuli_are_requeued_then_scored_nan(live):
    thread_id = live.create(n_generations=2)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        dropped = {s.stimulus_id for s in batch.stimuli if s.kind == "synthetic"}
        dropped = set(sorted(dropped)[:2])
        kept = [p for p in answer(batch) if p.stimulus_id not in dropped]
        rig.send_results(batch.batch_id, kept, done=True).result(30)
        requeue = rig.next_batch(timeout=60)
        assert requeue.generation == 0 and {s.stimulus_id for s in requeue.stimuli} == dropped
        rig.send_results(requeue.batch_id, [], done=True).result(30)  # dropped again
        nxt = rig.next_batch(timeout=60)
        assert nxt.generation == 1
    with live.sessions() as db:
        generation = db.scalars(select(Generation).where(Generation.thread_id == thread_id,
                                                         Generation.number == 0)).one()
        scores = {s.id: generation.scores_json[s.index] for s in generation.stimuli}
        assert {k for k, v in scores.items() if v is None} == dropped
        assert generation.n_scored == 4
        events = db.scalars(select(Event.kind).where(Event.thread_id == thread_id)).all()
        assert "generation.timed_out" in events


@pytest.mark.parametrize("policy", ["reshow", "score"])
def test_flagged_presentations_are_stored_and_reshown_or_scored_as_configured(live, policy):
    thread_id = live.create(session={"flagged_trials": {"policy": policy}}, n_generations=2)
    setup = {"program": "a rig", "viewing_distance_cm": 57}
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1, labels=["elec7-u2"], setup=setup) as rig:
        batch = rig.next_batch(timeout=60)
        assert rig.minor == PROTOCOL_MINOR
        broken, dropped = sorted(s.stimulus_id for s in batch.stimuli if s.kind == "synthetic")[:2]
        facts = {broken: {"fixation_broken": True}, dropped: {"dropped_frames": 2}}
        first = [TrialPresentation(s.stimulus_id, [100.0 if s.stimulus_id in facts else float(i)], time.time(),
                                   batch.response_window_ms, **facts.get(s.stimulus_id, {}),
                                   baseline_rates=[1.5], baseline_window_ms=(-100, 0))
                 for i, s in enumerate(batch.stimuli)]
        rig.send_results(batch.batch_id, first).result(30)
        nxt = rig.next_batch(timeout=60)
        if policy == "reshow":  # both shown again; one clean answer, one broken again
            assert nxt.generation == 0 and {s.stimulus_id for s in nxt.stimuli} == {broken, dropped}
            again = [TrialPresentation(broken, [7.0], time.time(), batch.response_window_ms),
                     TrialPresentation(dropped, [100.0], time.time(), batch.response_window_ms, fixation_broken=True)]
            rig.send_results(nxt.batch_id, again).result(30)
            assert rig.next_batch(timeout=60).generation == 1
        else:
            assert nxt.generation == 1
    with live.sessions() as db:
        generation = db.scalars(select(Generation).where(Generation.thread_id == thread_id,
                                                         Generation.number == 0)).one()
        scores = {s.id: generation.scores_json[s.index] for s in generation.stimuli}
        stored = {p.presentation_id: p.trial_json for p in db.scalars(select(PresentationRow))}
        hello = db.scalars(select(Event.data_json).where(Event.kind == "rig.connected")).all()
    assert {p.presentation_id: p.to_json()["fixation_broken"] for p in first} == \
        {pid: stored[pid]["fixation_broken"] for pid in (p.presentation_id for p in first)}
    assert all(stored[p.presentation_id]["baseline_rates"] == [1.5] for p in first)
    assert hello[-1] == {"rig": RIG, "minor": PROTOCOL_MINOR, "channels": 1, "channel_labels": ["elec7-u2"],
                         "cached_references": 0, "setup": setup}
    if policy == "reshow":
        assert len(stored) == len(first) + 2  # every presentation stored once, flagged ones too
        assert scores[broken] == 7.0 and scores[dropped] is None and generation.n_scored == 5
    else:
        assert len(stored) == len(first) and scores[broken] == scores[dropped] == 100.0


def test_pause_holds_the_next_generation_and_resume_continues(live):
    thread_id = live.create(n_generations=5)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        with live.sessions.begin() as db:
            db.get(Thread, thread_id).status = ThreadStatus.PAUSED
        live.engine.wake()
        time.sleep(1.0)
        rig.send_results(batch.batch_id, answer(batch)).result(30)
        assert rig.next_batch(timeout=2.0) is None  # paused: generation 0 recorded, nothing new sent
        with live.sessions.begin() as db:
            db.get(Thread, thread_id).status = ThreadStatus.RUNNING
        live.engine.wake()
        nxt = rig.next_batch(timeout=60)
        assert nxt is not None and nxt.generation == 1
    with live.sessions() as db:
        statuses = db.scalars(select(Generation.status).where(Generation.thread_id == thread_id)
                              .order_by(Generation.number)).all()
        assert statuses[0] == GenerationStatus.COMPLETE


def test_a_thread_stopped_while_its_batch_is_out_leaves_its_generation_pending_and_says_so(live):
    thread_id = live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        rig.send_results(batch.batch_id, answer(batch)[:3], done=False).result(30)
        with live.sessions.begin() as db:
            stop_session(db, db.get(Thread, thread_id).session)
        live.engine.wake()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not left_pending(live):
            time.sleep(0.1)
        rig.send_results(batch.batch_id, answer(batch)[3:]).result(30)  # what the rig showed meanwhile is kept
        assert rig.next_batch(timeout=2.0) is None
    with live.sessions() as db:
        generation = db.scalars(select(Generation)).one()
        stored = db.scalar(select(func.count()).select_from(PresentationRow))
    assert left_pending(live) == [(f"thread {thread_id} 'a' stopped with generation 0 pending: it is never scored or "
                                   "told; its 3 scorable presentation(s) so far stay stored, and any its rig "
                                   "still sends for it are stored too, unscored",
                                   {"generation": 0, "presentations": 3})]
    assert generation.status == GenerationStatus.PENDING and generation.scores_json is None
    assert stored == len(batch.stimuli)


def test_a_step_that_raises_after_a_user_stopped_its_thread_leaves_it_stopped(live, caplog):
    """Stopping a session just after creating it raced the engine's first step of a retest thread, whose source had no
    complete generation: the step raised and the stopped thread became failed. Stopped is final."""
    thread_id = live.create()
    with live.sessions.begin() as db:
        stop_session(db, db.get(Thread, thread_id).session)
    with caplog.at_level(logging.INFO, logger="server.engine"):
        asyncio.run_coroutine_threadsafe(live.engine._fail(thread_id, ServerError("the source has no generation")),
                                         live.loop).result(30)
    with live.sessions() as db:
        thread = db.get(Thread, thread_id)
        kinds = db.scalars(select(Event.kind).where(Event.thread_id == thread_id)).all()
    assert (thread.status, thread.last_error) == (ThreadStatus.STOPPED, None)
    assert "thread.failed" not in kinds and kinds.count("thread.stopped") == 1
    said = [r.getMessage() for r in caplog.records]
    assert f"thread {thread_id} had ended (a user stopped it) as its step raised: the source has no generation" in said
    assert f"thread {thread_id} failed: the source has no generation" not in said


def left_pending(live) -> list:
    with live.sessions() as db:
        return db.execute(select(Event.message, Event.data_json).where(Event.kind == "generation.left_pending")).all()


def test_a_stalled_round_times_out(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint, batch_timeout_s=1.0) as live:
        live.create(n_generations=1)
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
            requeued = rig.next_batch(timeout=30)  # no answer at all: re-sent after the timeout
            assert requeued.generation == 0
            assert {s.stimulus_id for s in requeued.stimuli} == {s.stimulus_id for s in first.stimuli}
            rig.send_results(requeued.batch_id, answer(requeued)).result(30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with live.sessions() as db:
                    if db.scalar(select(Thread.status)) == ThreadStatus.FINISHED:
                        break
                time.sleep(0.2)
        with live.sessions() as db:
            assert db.scalar(select(Thread.status)) == ThreadStatus.FINISHED
            assert db.scalar(select(func.count()).select_from(Stimulus).where(Stimulus.kind == "synthetic")) == 6


def test_a_generation_nobody_answered_pauses_its_thread_until_resumed(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint, batch_timeout_s=1.0) as live:
        thread_id = live.create(n_generations=3)
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first, requeued = rig.next_batch(timeout=60), rig.next_batch(timeout=30)  # neither answered
            assert first.generation == requeued.generation == 0
            assert rig.next_batch(timeout=4.0) is None  # paused, not evolving on NaN
            with live.sessions() as db:
                thread = db.get(Thread, thread_id)
                assert thread.status == ThreadStatus.PAUSED
                assert "generation 0: no image scored after 2 rounds" in thread.last_error
                generation = db.scalars(select(Generation).where(Generation.thread_id == thread_id)).one()
                assert generation.status == GenerationStatus.COMPLETE and generation.n_scored == 0
                thread.status = ThreadStatus.RUNNING  # resumed
                db.commit()
            live.engine.wake()
            assert rig.next_batch(timeout=60).generation == 1


@contextlib.contextmanager
def raw_rig(live, zmq_context):
    """A raw DEALER that said HELLO (one channel, no cached references): the wire without `RigClient`."""
    import zmq

    dealer = zmq_context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(live.settings.zmq_endpoint)
    try:
        dealer.send_multipart(encode(Message(MessageType.HELLO, {"rig": RIG, "protocol": 1, "channels": 1,
                                                                 "cached_references": []})))
        yield dealer
    finally:
        dealer.close(linger=0)


def test_references_travel_once_then_by_id(live, zmq_context):
    """On the wire (a raw DEALER): the first batch carries reference PNGs, later batches name them only."""
    live.create()
    with raw_rig(live, zmq_context) as dealer:
        batches = []
        deadline = time.monotonic() + 60
        while len(batches) < 2 and time.monotonic() < deadline:
            if not dealer.poll(1000):
                continue
            message = decode(dealer.recv_multipart())
            if message.type != MessageType.BATCH:
                continue
            batches.append(message)
            presentations = [{"presentation_id": str(uuid.uuid4()), "stimulus_id": s["stimulus_id"],
                              "onset": time.time(), "rates": [1.0], "window_ms": [50, 200]}
                             for s in message.header["stimuli"]]
            dealer.send_multipart(encode(Message(MessageType.RESULTS, {
                "batch_id": message.header["batch_id"], "presentations": presentations, "done": True})))
        first, second = batches
        references = lambda m: [s for s in m.header["stimuli"] if s["kind"] == "reference"]  # noqa: E731
        assert len(references(first)) == 2 and all(s["frame"] is not None for s in references(first))
        assert {s["stimulus_id"] for s in references(second)} == {s["stimulus_id"] for s in references(first)}
        assert all(s["frame"] is None for s in references(second))
        assert len(second.frames) == len(second.header["stimuli"]) - 2  # only the new synthetic images


def test_results_refused_as_malformed_are_events_of_their_batchs_thread(live, zmq_context):
    """An onset in milliseconds fails the message's validation, before the engine: still the thread's error."""
    thread_id = live.create()
    with raw_rig(live, zmq_context) as dealer:
        batch = None
        while batch is None or batch.type != MessageType.BATCH:
            assert dealer.poll(60_000)
            batch = decode(dealer.recv_multipart())
        stimulus = batch.header["stimuli"][0]["stimulus_id"]
        header = {"batch_id": batch.header["batch_id"], "presentations": [
            {"presentation_id": str(uuid.uuid4()), "stimulus_id": stimulus, "onset": time.time() * 1000,
             "rates": [1.0], "window_ms": [50, 200]}]}
        dealer.send_multipart([VERSION, b"RESULTS", json.dumps(header).encode()])  # as a buggy rig would
        reply = None
        while reply is None or reply.type != MessageType.ERROR:
            assert dealer.poll(30_000)
            reply = decode(dealer.recv_multipart())
        assert reply.header["code"] == "bad_field" and reply.header["batch_id"] == batch.header["batch_id"]
    with live.sessions() as db:
        error = db.get(Thread, thread_id).last_error
        kinds = db.scalars(select(Event.kind).where(Event.thread_id == thread_id)).all()
    assert "results.refused" in kinds and "onset" in error and batch.header["batch_id"] in error


def test_a_rig_that_floods_refused_results_writes_a_bounded_number_of_events(live, zmq_context):
    """Each refused RESULTS is an event row: 300 for batches that do not exist, sent at once, write the rig's
    burst of them (and about one a second after), not 300."""
    from server.engine import REFUSALS_RECORDED

    with raw_rig(live, zmq_context) as dealer:
        started = time.monotonic()
        for i in range(300):
            dealer.send_multipart(encode(Message(MessageType.RESULTS, {
                "batch_id": f"bogus-{i}", "presentations": [], "done": True})))
        codes = []
        while len(codes) < 300:
            assert dealer.poll(30_000)
            if (reply := decode(dealer.recv_multipart())).type == MessageType.ERROR:
                codes.append(reply.header["code"])
        elapsed = time.monotonic() - started
    assert set(codes) == {"unknown_batch"}  # every one is still answered
    with live.sessions() as db:
        rows = db.scalar(select(func.count()).select_from(Event).where(Event.kind == "results.refused"))
    burst, per_s = REFUSALS_RECORDED
    assert burst <= rows <= burst + per_s * elapsed + 1, (rows, elapsed)


def test_a_paused_thread_scores_and_tells_its_generation_then_asks_nothing(live):
    thread_id = live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        with live.sessions.begin() as db:
            db.get(Thread, thread_id).status = ThreadStatus.PAUSED
        live.engine.wake()
        deadline = time.monotonic() + 30
        while not live.engine._threads[thread_id].paused:  # the engine has read the pause
            assert time.monotonic() < deadline, "the engine never saw the pause"
            time.sleep(0.05)
        rig.send_results(batch.batch_id, answer(batch), done=True).result(30)
        assert rig.next_batch(timeout=3) is None  # paused: no generation 1
        generations = snapshot(live)["generations"]
        assert [(number, status) for number, status, *_ in generations] == [(0, "complete")]
        with live.sessions.begin() as db:
            db.get(Thread, thread_id).status = ThreadStatus.RUNNING
        live.engine.wake()
        assert rig.next_batch(timeout=60).generation == 1


class WithBaseline(Presentation):
    """A protocol 1.1 presentation carrying the rig's baseline rates."""

    def to_json(self):
        return {**super().to_json(), "baseline_rates": [1.5], "baseline_window_ms": [-100.0, 0.0]}


def test_baseline_rates_are_stored_and_a_baseline_objective_subtracts_them(live):
    thread_id = live.create(objective={"expression": "baseline(rate(0))"})
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        sent = {s.stimulus_id: float(i) for i, s in enumerate(batch.stimuli)}
        rig.send_results(batch.batch_id, [WithBaseline(s, [v], time.time(), batch.response_window_ms)
                                          for s, v in sent.items()], done=True).result(30)
        assert rig.next_batch(timeout=60).generation == 1
    with live.sessions() as db:
        assert all(facts["baseline_rates"] == [1.5] for facts in db.scalars(select(PresentationRow.trial_json)))
        generation = db.scalars(select(Generation).where(Generation.thread_id == thread_id,
                                                         Generation.number == 0)).one()
        assert generation.objective_json == {"expression": "baseline(rate(0))"}
        expected = [sent[s.id] - 1.5 for s in generation.stimuli]
        assert generation.scores_json == pytest.approx(expected)


def test_a_generation_is_one_commit_and_its_batch_is_sent_from_memory(live):
    """RESULTS -> next BATCH: one commit holds the presentations and the step; no image is read back. (Generation
    0's optimizer state is committed after that BATCH is sent.)"""
    import hashlib

    from sqlalchemy import event

    thread_id = live.create()
    commits = []  # on the ORM's connections, and on the engine's own (its steps run on the driver)
    event.listen(live.db_engine, "commit", lambda connection: commits.append(time.monotonic()))
    live.engine._step_db._connection.set_trace_callback(
        lambda statement: statement == "COMMIT" and commits.append(time.monotonic()))
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        deadline = time.monotonic() + 30
        while True:  # the status change its rig's HELLO causes (waiting_for_rig -> running) is not a step's
            with live.sessions() as db:
                if db.get(Thread, thread_id).status == ThreadStatus.RUNNING:
                    break
            assert time.monotonic() < deadline, "the thread never became running"
            time.sleep(0.05)

        def no_reading(content_hash):
            raise AssertionError(f"image {content_hash} read back from the archive on the hot path")

        live.engine._archive.read = no_reading

        async def subscribe():
            return hub.subscribe()
        subscription = asyncio.run_coroutine_threadsafe(subscribe(), live.loop).result(10)
        sent_at = time_sends(live)
        commits.clear()
        rig.send_results(batch.batch_id, answer(batch)).result(30)
        second = rig.next_batch(timeout=60)
        assert second is not None and second.generation == 1
        assert len([at for at in commits if at < sent_at(second.batch_id)]) == 1
        sent, deadline = [], time.monotonic() + 10
        while not sent and time.monotonic() < deadline:  # published just after the send
            items = asyncio.run_coroutine_threadsafe(subscription.get(1), live.loop).result(5)
            sent = [i["data"] for i in items if i["kind"] == "batch.sent" and i["data"]["batch_id"] == second.batch_id]
        subscription.close()
    assert 0 < sent[0]["compute_ms"] < sent[0]["waited_ms"]  # how long the rig waited, and the render and tell in it
    with live.sessions() as db:
        stored = {s.id: s.content_hash for s in db.scalars(select(Stimulus))}
        batch_row = db.get(Batch, second.batch_id)
        assert batch_row.sent_at is not None
    for stimulus in second.stimuli:  # what left is exactly what was committed before it left
        if stimulus.kind == "synthetic":
            assert hashlib.sha256(stimulus.png).hexdigest() == stored[stimulus.stimulus_id]


def time_sends(live) -> Callable[[str], float]:
    """Record when the engine's transport finished sending each BATCH (monotonic seconds); the lookup by batch id
    waits up to 10 s for the record, since the rig can hold a BATCH before the coroutine that sent it resumes."""
    sent, send = {}, live.transport.send

    async def timed_send(rig_name, message):
        ok = await send(rig_name, message)
        if ok:
            sent[message.header["batch_id"]] = time.monotonic()
        return ok

    def sent_at(batch_id: str) -> float:
        deadline = time.monotonic() + 10
        while batch_id not in sent:
            assert time.monotonic() < deadline, f"BATCH {batch_id} was never sent"
            time.sleep(0.005)
        return sent[batch_id]

    live.transport.send = timed_send
    return sent_at

def test_a_generation_is_archived_after_its_batch_left_and_before_it_is_told(live):
    """The archive writes (a file and an fsync per image) start only once the BATCH is out, so they never
    delay it; the tell waits for them, so a told generation's images are all on disk."""
    import hashlib

    thread_id = live.create()
    archive, sent_at, writes = live.engine._archive, time_sends(live), []
    save_all = archive.save_all

    def timed_save_all(pngs):
        pngs = list(pngs)
        writes.append((time.monotonic(), {hashlib.sha256(png).hexdigest() for png in pngs}))
        save_all(pngs)

    archive.save_all = timed_save_all
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batches = [rig.next_batch(timeout=60)]
        for _ in range(2):
            rig.send_results(batches[-1].batch_id, answer(batches[-1])).result(30)
            batches.append(rig.next_batch(timeout=60))
        assert [b.generation for b in batches] == [0, 1, 2]
        with live.sessions() as db:
            told = db.scalars(select(Generation).where(Generation.thread_id == thread_id,
                                                       Generation.status == GenerationStatus.COMPLETE)).all()
            assert sorted(g.number for g in told) == [0, 1]
            for generation in told:
                hashes = {s.content_hash for s in generation.stimuli if s.kind == "synthetic"}
                for content_hash in hashes:  # on disk, whole
                    assert hashlib.sha256(archive.path(content_hash).read_bytes()).hexdigest() == content_hash
                batch = next(b for b in batches if b.generation == generation.number)
                started = [at for at, written in writes if hashes <= written]
                assert started and started[0] >= sent_at(batch.batch_id)

def test_the_engine_checkpoints_the_wal_in_the_background(live):
    """The server's commits never copy the WAL into the database file; the engine's checkpoints (after each
    BATCH, and when idle) do, so the told generations reach the file itself while the server runs."""
    from sqlalchemy import make_url

    path = make_url(live.settings.database_url).database
    live.create()
    with live.db_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        assert rig.next_batch(timeout=60).generation == 1
        deadline = time.monotonic() + 10
        while count_in_the_file(path, "SELECT count(*) FROM generations WHERE status = 'complete'") < 1:
            assert time.monotonic() < deadline, "generation 0 never reached the database file"
            time.sleep(0.05)

def test_a_steps_live_items_go_out_after_its_batch(live, monkeypatch):
    """The round's ``batch.answered``, the ``generation.completed`` its step commits and the ``batch.sent`` are
    published in that order once the next BATCH is out: no dashboard runs in the rig's wait."""
    live.create()
    sent_at, published, publish = time_sends(live), [], hub.publish

    def timed_publish(kind, *args, **kwargs):
        published.append((time.monotonic(), kind, kwargs.get("data") or {}))
        publish(kind, *args, **kwargs)

    monkeypatch.setattr(hub, "publish", timed_publish)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        second = rig.next_batch(timeout=60)
        assert second.generation == 1

    def step_items():
        return [(at, kind) for at, kind, data in published
                if (kind == "batch.answered" and data["batch_id"] == first.batch_id)
                or (kind == "generation.completed" and data["generation"] == 0)
                or (kind == "batch.sent" and data["batch_id"] == second.batch_id)]
    deadline = time.monotonic() + 10
    while len(step_items()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    items = step_items()
    assert [kind for _, kind in items] == ["batch.answered", "generation.completed", "batch.sent"]
    assert all(at >= sent_at(second.batch_id) for at, _ in items)

@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_ack_waits_for_the_step_only_on_a_rig_with_one_thread(live, monkeypatch, n_threads):
    """One thread: its rig has nothing to show until the next BATCH, so the round's last RESULTS commits with
    the step and the ACK comes with the BATCH. Two threads: the rig shows the other thread's batch while this
    one computes, so the ACK must not wait for the step."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from server import steps

    config = SessionConfig.model_validate({
        "name": "t", "rig": RIG, "references": {"source": "skimage", "count": 2},
        "threads": [{"name": name, "generator": "dcgan-faces", "optimizer": "cma", "optimizer_params": {"population": 6},
                     "objective": {"channels": [0]}, "seed": seed, "n_generations": 3}
                    for name, seed in list(zip("ab", (3, 4)))[:n_threads]],
    })
    with live.sessions.begin() as db:
        create_session(db, config)
    live.engine.wake()
    hold, release, render = threading.Event(), threading.Event(), steps.render

    def held_render(*args):
        if hold.is_set():
            release.wait(30)
        return render(*args)

    monkeypatch.setattr(steps, "render", held_render)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = [rig.next_batch(timeout=60) for _ in range(n_threads)]
        hold.set()  # the next render waits until the test releases it
        ack = rig.send_results(first[0].batch_id, answer(first[0]))
        if n_threads == 2:
            assert ack.result(10)["accepted"] == len(first[0].stimuli)  # while the step is held
        else:
            with pytest.raises(FutureTimeout):
                ack.result(2)
        release.set()
        assert ack.result(30)["accepted"] == len(first[0].stimuli)
        following = rig.next_batch(timeout=60)
        assert following is not None and following.generation == 1 and following.thread_id == first[0].thread_id


FREED_RSS = """
import ctypes
import ctypes.util
import sys
import threading
import numpy as np
from server.engine import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
elif sys.argv[1] == "thresholds":  # what keep_freed_memory set before round 19
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
def steps(thread):
    for _ in range(3):  # as a step's tensors come and go: two of 24 MB, then freed
        blocks = [np.ones(3 * 2**20) for _ in range(2)]
        held = rss()
        del blocks
        print(thread, held - rss())
worker = threading.Thread(target=steps, args=("worker",))  # as the engine's compute worker: an arena of its own
worker.start()
worker.join()
steps("main")
# Eight threads that stay alive (a pool's), each using 48 MB in its turn: what the process keeps of them.
before, turns, done = rss(), [threading.Event() for _ in range(9)], threading.Event()
def turn(i):
    turns[i].wait()
    blocks = [np.ones(3 * 2**20) for _ in range(2)]
    del blocks
    turns[i + 1].set()
    done.wait()
pool = [threading.Thread(target=turn, args=(i,)) for i in range(8)]
for thread in pool:
    thread.start()
turns[0].set()
turns[8].wait()
print("pool", rss() - before)
done.set()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc on Linux")
def test_the_engine_keeps_freed_memory_for_the_next_step_in_few_arenas():
    """Bytes given back to the system when each of three steps frees its blocks, on a worker and on the main
    thread, and what eight pool threads working in turn leave held. On a worker glibc unmaps a heap of the
    thread's arena once it is free, whatever the thresholds (the top pad keeps it: that munmap put several ms
    into steps at 256 px); each arena keeps its peak, so the arenas are capped."""
    def run(setting):
        done = subprocess.run([sys.executable, "-c", FREED_RSS, setting], capture_output=True, text=True,
                              timeout=60, check=True)
        out = {"main": [], "worker": [], "pool": []}
        for line in done.stdout.splitlines():
            where, size = line.split()
            out[where].append(int(size))
        return out
    default, thresholds, kept = run("default"), run("thresholds"), run("keep")
    assert default["worker"][0] > 40 * 2**20  # glibc gives blocks this large back at once
    assert min(thresholds["worker"][1:]) > 20 * 2**20  # a heap of the worker's arena unmapped at every step
    assert max(kept["main"] + kept["worker"]) < 2**20
    assert thresholds["pool"][0] > 300 * 2**20  # eight arenas, each keeping its 48 MB
    assert kept["pool"][0] < 150 * 2**20  # at most two
