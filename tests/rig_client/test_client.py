"""RigClient against a real Transport running on an asyncio loop in a background thread."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import threading
import time

import numpy as np
import pytest
import zmq
from sqlalchemy import select

from rig_client import RigError
from rig_client.client import Batch, Presentation, RigClient
from rig_client.protocol import (
    PROTOCOL_MINOR, Message, MessageType, ProtocolError, batch_message, decode, encode, encode_png, error,
)
from server.transport import Transport
from tests.rig_client.conftest import run_session, storage_fails

FAST = {"heartbeat_s": 0.05, "liveness": 6}  # expiry after 0.3 s


class Lab:
    """Handler playing the experiment engine: dedupes presentations, resends outstanding batches."""

    def __init__(self):
        self.hellos: list[dict] = []
        self.presentations: dict[str, dict] = {}
        self.outstanding = None  # callable(hello header) -> Message, sent on connect
        self.refuse = False
        self.minor = None  # WELCOME's minor; None: left out, as a 1.0 server does
        self.known_batches = {"b1", "b2"}
        self.failures = 0  # RESULTS to fail on (the transport answers ERROR internal)
        self.received: list[list[str]] = []  # presentation ids of each RESULTS, as they arrived
        self.done: list[bool] = []  # the `done` of each RESULTS, as they arrived
        self.refused_stimuli: set[str] = set()  # a RESULTS with one of these is refused (bad_field)
        self.transport: Transport | None = None

    async def on_hello(self, rig_name, header):
        if self.refuse:
            raise ProtocolError("refused", "no session is waiting for this rig")
        self.hellos.append(header)
        return {"server": "lab"} if self.minor is None else {"server": "lab", "minor": self.minor}

    async def on_results(self, rig_name, header):
        self.received.append([p["presentation_id"] for p in header["presentations"]])
        self.done.append(header["done"])
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        if header["batch_id"] not in self.known_batches:
            raise ProtocolError("unknown_batch", f"batch {header['batch_id']} was never sent")
        if refused := self.refused_stimuli & {p["stimulus_id"] for p in header["presentations"]}:
            raise ProtocolError("bad_field", f"stimuli {sorted(refused)} are not part of the batch")
        new = [p for p in header["presentations"] if p["presentation_id"] not in self.presentations]
        self.presentations.update((p["presentation_id"], p) for p in new)
        return {"batch_id": header["batch_id"], "accepted": len(new),
                "duplicates": len(header["presentations"]) - len(new)}

    async def on_disconnect(self, rig_name, why):
        pass

    async def on_connected(self, rig_name):
        if self.outstanding is not None:
            await self.transport.send(rig_name, self.outstanding(self.hellos[-1]))


class ServerThread:
    """A Transport serving on its own event loop thread."""

    def __init__(self, ctx, endpoint, handler, **transport):
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main():
            handler.transport = Transport(endpoint, handler, context=ctx, **{**FAST, **transport})
            ready.set()
            await handler.transport.run()

        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()
        self.running = asyncio.run_coroutine_threadsafe(main(), self.loop)
        assert ready.wait(5)

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def send(self, msg) -> bool:
        return self.call(self.handler.transport.send("rig-a", msg))

    def stop(self):
        self.call(self.handler.transport.close())
        self.running.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def lab(zmq_context, endpoint):
    server = ServerThread(zmq_context, endpoint, Lab())
    yield server
    server.stop()


@pytest.fixture
def client(zmq_context, endpoint, lab):
    with RigClient(endpoint, "rig-a", channels=2, reconnect_max_s=0.2, context=zmq_context,
                   **FAST) as c:
        yield c


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 6, 3), dtype=np.uint8)


def batch(batch_id, stimuli):
    return batch_message(batch_id=batch_id, session_id="s1", thread_id="t1", generation=3,
                         response_window_ms=[50, 200], stimuli=stimuli)


def presentations(b: Batch) -> list[Presentation]:
    return [Presentation(s.stimulus_id, [1.0, 2.5], time.time(), (50, 200)) for s in b.stimuli]


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_hello_welcome(client, lab):
    assert client.wait_connected(5) and client.connected
    assert lab.handler.hellos == [{"rig": "rig-a", "protocol": 1, "minor": PROTOCOL_MINOR, "channels": 2,
                                   "cached_references": []}]
    assert client.minor == 0  # this server's WELCOME says no minor: a 1.0 server


def test_the_heartbeat_is_the_servers_once_welcomed(zmq_context, endpoint, lab):
    """The rig's own heartbeat bounds the wait for WELCOME; then the server's applies (the presenter waits two of
    them before it connects again)."""
    with RigClient(endpoint, "rig-a", channels=2, context=zmq_context, heartbeat_s=0.5, liveness=6) as c:
        assert c.wait_connected(5)
        assert c.heartbeat_s == FAST["heartbeat_s"]


def test_labels_go_in_hello_and_the_welcomes_minor_is_kept(zmq_context, endpoint, lab):
    with pytest.raises(ProtocolError, match="channel_labels"):
        RigClient(endpoint, "rig-b", channels=2, labels=["only-one"], context=zmq_context)
    lab.handler.minor = 1
    with RigClient(endpoint, "rig-b", channels=2, labels=["e1-u1", "e2-u1"], context=zmq_context, **FAST) as rig:
        assert rig.wait_connected(5) and rig.minor == 1
    assert lab.handler.hellos[-1]["channel_labels"] == ["e1-u1", "e2-u1"]


def test_the_rigs_setup_goes_in_hello_and_a_bad_one_fails_at_construction(zmq_context, endpoint, lab):
    setup = {"program": "my-rig 2.0", "viewing_distance_cm": 57, "screen": {"refresh_hz": 120}}
    with RigClient(endpoint, "rig-c", channels=1, setup=setup, context=zmq_context, **FAST) as rig:
        assert rig.wait_connected(5)
        said = json.loads(json.dumps(setup))
        setup["viewing_distance_cm"] = float("nan")  # the caller's dict changes: a HELLO after a reconnect says the
        assert rig._hello_header["setup"] == said  # setup given (a NaN would fail the I/O thread for good)
    assert lab.handler.hellos[-1]["setup"] == said
    for bad in (["a list"], {"notes": "x" * 5000}):
        with pytest.raises(ProtocolError, match="field 'setup' must be a JSON object of at most 4096 bytes"):
            RigClient(endpoint, "rig-d", channels=1, setup=bad, context=zmq_context)


def test_heartbeats_keep_an_idle_connection(client, lab):
    assert client.wait_connected(5)
    time.sleep(1.0)  # over 3 expiry periods
    assert client.connected and lab.handler.transport.connected("rig-a")
    assert len(lab.handler.hellos) == 1


def test_second_program_with_the_same_name_replaces_the_first(zmq_context, endpoint, client):
    assert client.wait_connected(5)
    with RigClient(endpoint, "rig-a", channels=2, context=zmq_context, **FAST) as second:
        assert second.wait_connected(5)
        with pytest.raises(RigError, match="replaced"):
            client.next_batch(timeout=5)
        assert second.connected


def test_batch_with_pngs_and_reference_sent_once(client, lab):
    assert client.wait_connected(5)
    assert lab.send(batch("b1", [("g0", "synthetic", encode_png(image(0))),
                                 ("ref-cat", "reference", encode_png(image(1)))]))
    got = client.next_batch(timeout=5)
    assert (got.batch_id, got.session_id, got.thread_id, got.generation) == ("b1", "s1", "t1", 3)
    assert got.response_window_ms == (50, 200)
    assert [(s.stimulus_id, s.kind) for s in got.stimuli] == [("g0", "synthetic"),
                                                              ("ref-cat", "reference")]
    np.testing.assert_array_equal(got.stimuli[0].image(), image(0))
    # The images are read-only views of the frames ZeroMQ received, not copies; `png` copies on demand.
    sent = encode_png(image(0))
    assert isinstance(got.stimuli[0].data, memoryview) and got.stimuli[0].data.readonly
    assert got.stimuli[0].data == sent and type(got.stimuli[0].png) is bytes and got.stimuli[0].png == sent
    assert pickle.loads(pickle.dumps(got)) == got  # a rig may hand a batch to another process
    # The reference is named by id only from now on.
    msg = batch("b2", [("g1", "synthetic", encode_png(image(2))), ("ref-cat", "reference", None)])
    assert len(msg.frames) == 1 and lab.send(msg)
    got = client.next_batch(timeout=5)
    np.testing.assert_array_equal(got.stimuli[1].image(), image(1))
    np.testing.assert_array_equal(got.stimuli[0].image(), image(2))
    assert client.next_batch(timeout=0.05) is None


def test_results_ack_duplicates_and_refusal(client, lab):
    assert client.wait_connected(5)
    lab.send(batch("b1", [("g0", "synthetic", encode_png(image(0)))]))
    shown = presentations(client.next_batch(timeout=5))
    ack = client.send_results("b1", shown, done=False).result(5)
    assert ack == {"batch_id": "b1", "accepted": 1, "duplicates": 0}
    assert client.send_results("b1", shown).result(5)["duplicates"] == 1  # resend is safe
    assert lab.handler.presentations[shown[0].presentation_id]["rates"] == [1.0, 2.5]

    refused = client.send_results("b9", shown)
    with pytest.raises(ProtocolError) as err:
        refused.result(5)
    assert err.value.code == "unknown_batch"
    assert client.errors[-1]["code"] == "unknown_batch"

    with pytest.raises(ProtocolError, match="2 channels"):
        client.send_results("b1", [Presentation("g0", [1.0], time.time(), (50, 200))])


def test_a_burst_of_not_registered_is_one_warning_and_one_hello(zmq_context, endpoint, caplog):
    """A restarted server answers each message the rig had on its way with not_registered: the rig says
    HELLO once and logs one warning for them all. The server here is a bare ROUTER socket."""
    router = zmq_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    welcome = Message(MessageType.WELCOME, {"server": "bare", "heartbeat_ms": 50, "liveness": 100,
                                            "max_message_bytes": 2**20})

    def receive(mtype):
        while True:
            identity, *frames = router.recv_multipart()
            if decode(frames).type == mtype:
                return identity

    caplog.set_level(logging.DEBUG, logger="rig_client.client")
    try:
        with RigClient(endpoint, "rig-a", channels=2, context=zmq_context, **FAST) as client:
            identity = receive(MessageType.HELLO)
            router.send_multipart([identity, *encode(welcome)])
            for _ in range(3):
                receive(MessageType.HEARTBEAT)
            for _ in range(3):
                router.send_multipart([identity, *encode(error(
                    "not_registered", "send HELLO first", in_reply_to=MessageType.HEARTBEAT))])
            assert receive(MessageType.HELLO) == identity  # the same socket (docs/protocol.md §6.4)
            router.send_multipart([identity, *encode(welcome)])
            assert client.wait_connected(5)
    finally:
        router.close(linger=0)
    assert [e["code"] for e in client.errors] == ["not_registered"] * 3
    warned = [r for r in caplog.records if "not_registered" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(warned) == 1


def test_results_the_server_failed_on_are_sent_again_until_stored(client, lab):
    """docs/protocol.md §8: ERROR internal stored nothing; the rig sends that RESULTS again after a
    backoff, and holds the batch's later RESULTS back meanwhile so they keep their order."""
    assert client.wait_connected(5)
    lab.send(batch("b1", [("g0", "synthetic", encode_png(image(0))), ("g1", "synthetic", encode_png(image(1)))]))
    shown = presentations(client.next_batch(timeout=5))
    first, rest = shown[:1], shown[1:]
    lab.handler.failures = 1
    uploads = [client.send_results("b1", first, done=False)]
    wait_until(lambda: client.errors)
    uploads.append(client.send_results("b1", rest))
    assert [u.result(10) for u in uploads] == [{"batch_id": "b1", "accepted": 1, "duplicates": 0}] * 2
    ids = [[p.presentation_id] for p in shown]
    assert lab.handler.received == [ids[0], ids[0], ids[1]]
    assert [(e["code"], e["batch_id"]) for e in client.errors] == [("internal", "b1")]


def full_precision(n: int, channels: int, seed: int = 0) -> list[Presentation]:
    """``n`` presentations of stimuli g0, g1, ... with rates of 16-17 digits, as a spike count over a
    window gives: some 19 bytes of JSON per channel."""
    rng = np.random.default_rng(seed)
    return [Presentation(f"g{i}", (rng.random(channels) * 100).tolist(), time.time(), (50, 200)) for i in range(n)]


def test_an_upload_over_the_message_limit_is_stored_whole_as_several_results(zmq_context, endpoint):
    """384 channels x 300 presentations is some 2 MiB of RESULTS, over the 1 MiB header limit (docs/protocol.md
    §3): the client sends it as several, in order, done: true on the last only, each once the server stored
    the one before (the first failed once, and was sent again before the second went). Every rate is
    stored exactly, once; the future gets one ACK for them all. Heartbeats of 0.5 s: encoding 2 MiB in this
    process under CI's load stalled it past the 0.3 s of the other tests, and the reconnect resent a part."""
    shown = full_precision(300, 384)
    lab = ServerThread(zmq_context, endpoint, Lab(), heartbeat_s=0.5, liveness=10)
    try:
        with RigClient(endpoint, "rig-a", channels=384, reconnect_max_s=0.2, context=zmq_context, heartbeat_s=0.5,
                       liveness=10) as rig:
            assert rig.wait_connected(5)
            lab.handler.failures = 1
            ack = rig.send_results("b1", shown).result(30)
    finally:
        lab.stop()
    assert ack == {"batch_id": "b1", "accepted": 300, "duplicates": 0}
    h = lab.handler
    assert len(h.received) >= 4 and h.received[0] == h.received[1]  # at least 3 RESULTS, the first sent twice
    parts = h.received[1:]
    assert [pid for part in parts for pid in part] == [p.presentation_id for p in shown]
    assert h.done == [False] * len(parts) + [True]
    assert [h.presentations[p.presentation_id]["rates"] for p in shown] == [p.rates for p in shown]


def test_a_refused_part_of_an_upload_stops_the_rest_and_the_corrected_upload_completes_it(zmq_context, endpoint, lab):
    """The server refuses the second RESULTS of a split upload (it stored none of it): the future fails with
    that refusal and the last RESULTS, done: true, is never sent. The upload sent again once corrected
    stores the rest; the first RESULTS' presentations are duplicates."""
    shown = full_precision(300, 384)
    lab.handler.refused_stimuli = {"g200"}  # in the second RESULTS: each holds some 140 presentations
    with RigClient(endpoint, "rig-a", channels=384, context=zmq_context, **FAST) as rig:
        assert rig.wait_connected(5)
        with pytest.raises(ProtocolError) as err:
            rig.send_results("b1", shown).result(30)
        assert err.value.code == "bad_field" and "g200" in err.value.message
        rig.send_results("b2", shown[:1]).result(10)  # any RESULTS still on the wire arrives before this one
        h = lab.handler
        assert h.done == [False, False, True] and h.received[2] == [shown[0].presentation_id]
        first = len(h.received[0])
        h.refused_stimuli.clear()
        ack = rig.send_results("b1", shown).result(30)
    assert ack == {"batch_id": "b1", "accepted": 300 - first, "duplicates": first}
    assert [h.presentations[p.presentation_id]["rates"] for p in shown] == [p.rates for p in shown]
    assert h.done[3:] == [False] * (len(h.done) - 4) + [True]


def test_a_split_upload_resent_after_the_server_forgot_the_rig_is_stored_once(zmq_context, endpoint, monkeypatch):
    """The server forgets the rig (expiry) before a split upload: its first RESULTS meets not_registered, and
    after HELLO and WELCOME the parts go in order. The same upload sent again is all duplicates."""
    monkeypatch.setitem(FAST, "heartbeat_s", 5.0)  # so the RESULTS, not a HEARTBEAT, meets not_registered
    lab = ServerThread(zmq_context, endpoint, Lab())
    shown = full_precision(300, 384)
    try:
        with RigClient(endpoint, "rig-a", channels=384, context=zmq_context, **FAST) as rig:
            assert rig.wait_connected(5)
            lab.call(lab.handler.transport._unbind("rig-a"))
            assert rig.send_results("b1", shown).result(30) == {"batch_id": "b1", "accepted": 300, "duplicates": 0}
            assert [(e["code"], e["batch_id"]) for e in rig.errors] == [("not_registered", "b1")]
            assert rig.send_results("b1", shown).result(30) == {"batch_id": "b1", "accepted": 0, "duplicates": 300}
        h = lab.handler
        parts = len(h.received) // 2
        assert [pid for part in h.received[:parts] for pid in part] == [p.presentation_id for p in shown]
        assert h.received[parts:] == h.received[:parts] and h.done == ([False] * (parts - 1) + [True]) * 2
        assert len(h.hellos) == 2 and len(h.presentations) == 300
    finally:
        lab.stop()


def test_the_limit_the_server_announced_splits_uploads_and_a_presentation_over_it_is_refused(zmq_context, endpoint):
    """A server whose WELCOME says max_message_bytes 16 KiB gets RESULTS under it; a presentation of 1024
    channels alone is over it, and the upload is refused before anything is sent, saying what to do."""
    lab = ServerThread(zmq_context, endpoint, Lab(), max_message_bytes=16 * 1024)
    try:
        with RigClient(endpoint, "rig-a", channels=384, context=zmq_context, **FAST) as rig:
            assert rig.wait_connected(5)
            shown = full_precision(10, 384)
            assert rig.send_results("b1", shown).result(10)["accepted"] == 10
        h = lab.handler
        assert len(h.received) >= 5 and h.done[-1] and not any(h.done[:-1])
        assert [h.presentations[p.presentation_id]["rates"] for p in shown] == [p.rates for p in shown]
        with RigClient(endpoint, "rig-b", channels=1024, context=zmq_context, **FAST) as rig:
            assert rig.wait_connected(5)
            with pytest.raises(ProtocolError) as err:
                rig.send_results("b1", full_precision(2, 1024))
        assert err.value.code == "too_large"
        assert "of stimulus 'g0' alone makes a RESULTS header of" in err.value.message
        assert "the server's max_message_bytes is 16384" in err.value.message
        assert "raise the server's ACTMAX_MAX_MESSAGE_BYTES" in err.value.message
        assert len(h.received) == len(h.done)  # nothing more arrived
    finally:
        lab.stop()


def test_a_384_channel_rig_showing_each_stimulus_four_times_has_every_showing_scored(tmp_path, endpoint):
    """The engine: 40 images and 2 references, each shown four times in one batch by a 384-channel rig, some
    1.2 MiB of RESULTS. The round stays open until the last RESULTS (every presentation of a stimulus goes
    in the same one): every showing is stored and scored, none comes after the generation was scored (which
    the server would answer batch_closed)."""
    from server.store.models import Generation
    from server.store.models import Presentation as PresentationRow
    from tests.server.test_engine import RIG, LiveEngine

    with LiveEngine(tmp_path / "data", endpoint) as live:
        thread_id = live.create(optimizer_params={"population": 40}, n_generations=1)
        with RigClient(endpoint, RIG, channels=384) as rig:
            batch = rig.next_batch(timeout=60)
            rng = np.random.default_rng(7)
            shown = [Presentation(s.stimulus_id, (rng.random(384) * 100).tolist(), time.time(), batch.response_window_ms)
                     for _ in range(4) for s in batch.stimuli]
            ack = rig.send_results(batch.batch_id, shown).result(60)  # after the generation's scores are stored
            assert ack == {"batch_id": batch.batch_id, "accepted": len(shown), "duplicates": 0}
        with live.sessions() as db:
            stored = dict(db.execute(select(PresentationRow.presentation_id, PresentationRow.rates_json)).all())
            generation = db.scalars(select(Generation).where(Generation.thread_id == thread_id,
                                                             Generation.number == 0)).one()
            synthetic = [s.id for s in generation.stimuli if s.kind == "synthetic"]
            scores = generation.scores_json
    assert stored == {p.presentation_id: p.rates for p in shown}
    mean = {sid: np.mean([p.rates[0] for p in shown if p.stimulus_id == sid]) for sid in synthetic}
    np.testing.assert_allclose(scores, [mean[sid] for sid in synthetic], rtol=1e-12)


@pytest.mark.slow
def test_results_the_server_could_not_store_are_stored_once_and_the_generation_goes_on(actmax_server):
    """The server's storage fails (a full disk) when the RESULTS that ends a round arrives: ERROR internal. The
    rig sends it again until the server stores it; every presentation is stored once and the next generation
    comes, not the batch timeout's re-show."""
    process, api = actmax_server
    thread = run_session(api, "retry-rig", population=4, references=1, generations=2)
    with RigClient(process.zmq_endpoint, "retry-rig", channels=1, reconnect_max_s=0.2) as rig:
        first = rig.next_batch(timeout=60)
        shown = [Presentation(s.stimulus_id, [float(i)], time.time(), first.response_window_ms)
                 for i, s in enumerate(first.stimuli)]
        with storage_fails(process):
            upload = rig.send_results(first.batch_id, shown)
            wait_until(lambda: rig.errors, timeout=30)
        assert upload.result(60) == {"batch_id": first.batch_id, "accepted": len(shown), "duplicates": 0}
        assert rig.next_batch(timeout=60).generation == 1
    assert {e["code"] for e in rig.errors} == {"internal"}
    assert all("cannot store results now" in e["message"] for e in rig.errors)
    stored = [p["presentation_id"] for p in api.get(f"/threads/{thread['id']}/presentations")["items"]]
    assert sorted(stored) == sorted(p.presentation_id for p in shown)
    assert "Traceback" not in process.log_path.read_text()  # a full disk is a warning, not a logged crash


def test_unknown_reference_resynchronises(client, lab):
    assert client.wait_connected(5)
    lab.send(batch("b1", [("ref-dog", "reference", None)]))
    wait_until(lambda: len(lab.handler.hellos) == 2)
    assert client.next_batch(timeout=0.1) is None
    assert client.wait_connected(5)


def test_reconnect_after_server_restart(zmq_context, endpoint, lab, client):
    assert client.wait_connected(5)
    lab.send(batch("b1", [("ref-cat", "reference", encode_png(image(1)))]))
    shown = presentations(client.next_batch(timeout=5))
    lab.stop()
    wait_until(lambda: not client.connected)
    upload = client.send_results("b1", shown)  # queued while the server is down

    restarted = Lab()
    restarted.outstanding = lambda hello: batch("b2", [
        ("ref-cat", "reference", None if "ref-cat" in hello["cached_references"]
         else encode_png(image(1)))])
    lab.__init__(zmq_context, endpoint, restarted)  # the fixture stops this one
    assert upload.result(10) == {"batch_id": "b1", "accepted": 1, "duplicates": 0}
    assert restarted.hellos[-1]["cached_references"] == ["ref-cat"]
    got = client.next_batch(timeout=5)
    assert got.batch_id == "b2"
    np.testing.assert_array_equal(got.stimuli[0].image(), image(1))


def test_the_key_hint_on_silence_is_only_for_a_rig_this_server_never_welcomed(zmq_context, endpoint, caplog):
    caplog.set_level(logging.WARNING, logger="rig_client.client")

    def silences():
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("server silent")]

    with RigClient(endpoint, "rig-a", channels=2, reconnect_max_s=0.2, context=zmq_context, **FAST) as c:
        wait_until(lambda: silences())  # no server yet: keys may be why
        assert "--server-key and --rig-key" in silences()[0]
        server = ServerThread(zmq_context, endpoint, Lab())
        assert c.wait_connected(5)
        server.stop()  # a server that answered, then went quiet: its keys are not the cause
        caplog.clear()
        wait_until(lambda: len(silences()) >= 3)  # the welcomed socket's, then new sockets'
        assert not any("key" in m for m in silences()), silences()
        assert c.ever_welcomed
    caplog.clear()  # the same rig program back with a new client (`actmax rig present` after an outage)
    with RigClient(endpoint, "rig-a", channels=2, reconnect_max_s=0.2, context=zmq_context, welcomed_before=True,
                   **FAST) as c:
        wait_until(lambda: len(silences()) >= 2)
        assert not any("key" in m for m in silences()), silences()
        assert c.ever_welcomed


def test_refused_hello_raises_rig_error(zmq_context, endpoint, lab):
    lab.handler.refuse = True
    with RigClient(endpoint, "rig-a", channels=2, context=zmq_context, **FAST) as c:
        with pytest.raises(RigError, match="refused"):
            c.wait_connected(5)
        with pytest.raises(RigError, match="refused"):
            c.next_batch()
        assert not c.connected


def test_closed_client_and_bad_arguments(zmq_context, endpoint):
    c = RigClient(endpoint, "rig-a", channels=2, context=zmq_context, **FAST)
    c.close()
    c.close()
    with pytest.raises(RigError, match="closed"):
        c.next_batch(timeout=0)
    with pytest.raises(ProtocolError, match="rig"):
        RigClient(endpoint, "rig a", channels=2, context=zmq_context)
    with pytest.raises(ProtocolError, match="channels"):
        RigClient(endpoint, "rig-a", channels=0, context=zmq_context)


@pytest.mark.parametrize("endpoint", ["notanendpoint", "tcp://127.0.0.1", "tcp://*:5555", "http://host:80"])
def test_bad_endpoint_is_refused_with_a_valid_example(endpoint):
    with pytest.raises(ValueError, match=r"use tcp://HOST:PORT \(e.g. tcp://127.0.0.1:5555\)"):
        RigClient(endpoint, "rig-a", channels=1)


def test_not_registered_answer_keeps_the_results_for_the_resend(zmq_context, endpoint, monkeypatch):
    """docs/protocol.md §8: ERROR not_registered names the batch_id but settles nothing.

    Heartbeats every 5 s, so the RESULTS (not a HEARTBEAT) is what meets not_registered."""
    monkeypatch.setitem(FAST, "heartbeat_s", 5.0)
    lab = ServerThread(zmq_context, endpoint, Lab())
    try:
        with RigClient(endpoint, "rig-a", channels=2, context=zmq_context, **FAST) as client:
            assert client.wait_connected(5)
            lab.send(batch("b1", [("s1", "synthetic", encode_png(image(2)))]))
            shown = presentations(client.next_batch(timeout=5))
            lab.call(lab.handler.transport._unbind("rig-a"))  # the server forgets the rig (expiry)
            upload = client.send_results("b1", shown)  # not_registered, then resent after HELLO
            assert upload.result(10) == {"batch_id": "b1", "accepted": 1, "duplicates": 0}
            assert [(e["code"], e["batch_id"]) for e in client.errors] == [("not_registered", "b1")]
            assert len(lab.handler.hellos) == 2
    finally:
        lab.stop()
