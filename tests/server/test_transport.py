"""Transport against a real ROUTER, driven by raw DEALER sockets on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import numpy as np
import pytest
import zmq
import zmq.asyncio

from rig_client.protocol import (
    VERSION, Message, MessageType, ProtocolError, batch_message, decode, encode, encode_png,
)
from rig_client.version import package_version
from server import RigInputError, ServerError
from server.transport import Transport

HB = 0.05  # heartbeat_s in tests: expiry after HB * LIVENESS
LIVENESS = 5


class Recorder:
    """Handler that records calls; ``fail_results`` makes on_results raise it."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.results: list[dict] = []
        self.refuse: set[str] = set()
        self.fail_results: Exception | None = None

    async def on_hello(self, rig_name, header):
        self.events.append(("hello", rig_name))
        if rig_name in self.refuse:
            raise ProtocolError("refused", f"no session is waiting for rig {rig_name}")
        return {}

    async def on_results(self, rig_name, header):
        if self.fail_results is not None:
            raise self.fail_results
        self.results.append(header)
        return {"batch_id": header["batch_id"], "accepted": len(header["presentations"]),
                "duplicates": 0}

    async def on_disconnect(self, rig_name, why):
        self.events.append(("disconnect", rig_name))
        self.why_gone = why

    async def on_connected(self, rig_name):
        self.events.append(("connected", rig_name))


def hello(rig="rig-a", channels=2):
    return encode(Message(MessageType.HELLO, {"rig": rig, "protocol": 1, "channels": channels,
                                              "cached_references": []}))


def results(batch_id="b1", rates=(1.0, 2.0)):
    p = {"presentation_id": str(uuid.uuid4()), "stimulus_id": "s1", "onset": 1.7e9,
         "rates": list(rates), "window_ms": [50, 200]}
    return encode(Message(MessageType.RESULTS, {"batch_id": batch_id, "presentations": [p],
                                                "done": True}))


def raw(mtype: bytes, header) -> list[bytes]:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return [VERSION, mtype, body]


class Harness:
    """A running Transport plus DEALER sockets, all closed on exit."""

    def __init__(self, ctx, endpoint, **kwargs):
        self.ctx = zmq.asyncio.Context.shadow(ctx)
        self.handler = Recorder()
        kwargs = {"heartbeat_s": HB, "liveness": LIVENESS, **kwargs}
        self.transport = Transport(endpoint, self.handler, context=ctx, **kwargs)
        self.endpoint = endpoint
        self.dealers: list[zmq.asyncio.Socket] = []

    async def __aenter__(self):
        self.task = asyncio.create_task(self.transport.run())
        return self

    async def __aexit__(self, *exc):
        await self.transport.close()
        await self.task
        for d in self.dealers:
            d.close(linger=0)

    def dealer(self, *, connect: bool = True) -> zmq.asyncio.Socket:
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        if connect:
            d.connect(self.endpoint)
        self.dealers.append(d)
        return d

    @staticmethod
    async def reply(d, *, skip_heartbeats=True, timeout=2.0) -> Message:
        while True:
            msg = decode(await asyncio.wait_for(d.recv_multipart(), timeout))
            if not (skip_heartbeats and msg.type == MessageType.HEARTBEAT):
                return msg

    async def register(self, rig="rig-a", channels=2):
        d = self.dealer()
        await d.send_multipart(hello(rig, channels))
        msg = await self.reply(d)
        assert msg.type == MessageType.WELCOME, msg
        return d


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 20))


def test_hello_welcome_results_ack(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = h.dealer()
            await d.send_multipart(hello(channels=2))
            welcome = await h.reply(d)
            assert welcome.header == {"server": f"actmax {package_version()}", "heartbeat_ms": 50,
                                      "liveness": LIVENESS, "max_message_bytes": 64 * 2**20}
            await asyncio.sleep(0.01)
            assert h.handler.events == [("hello", "rig-a"), ("connected", "rig-a")]
            assert h.transport.connected("rig-a") and h.transport.rigs() == ["rig-a"]
            await d.send_multipart(results("b7"))
            ack = await h.reply(d)
            assert ack.type == MessageType.ACK
            assert ack.header == {"batch_id": "b7", "accepted": 1, "duplicates": 0}

    run(scenario())


def test_send_batch_to_rig_and_to_unknown_rig(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = await h.register()
            png = encode_png(np.zeros((2, 2, 3), np.uint8))
            msg = batch_message(batch_id="b1", session_id="s", thread_id="t", generation=0,
                                response_window_ms=[50, 200], stimuli=[("x", "synthetic", png)])
            assert await h.transport.send("rig-a", msg)
            got = await h.reply(d)
            assert got.type == MessageType.BATCH and got.frames == [png]
            assert not await h.transport.send("rig-b", msg)

    run(scenario())


@pytest.mark.parametrize("frames, code", [
    (raw(b"HELLO", b"{}")[1:], "bad_version"),
    ([b"AMX2", b"HELLO", b"{}"], "bad_version"),
    (raw(b"HELLO", b"{not json"), "bad_json"),
    (raw(b"HELLO", [1, 2]), "bad_json"),
    (raw(b"HELLO", {"rig": "rig-a", "protocol": 1, "channels": 2}), "missing_field"),
    (raw(b"HELLO", {"rig": "rig a", "protocol": 1, "channels": 2, "cached_references": []}),
     "bad_field"),
    (raw(b"GOODBYE", {}), "unknown_type"),
    (raw(b"HEARTBEAT", {}) + [b"x" * 5000, b"y" * 5000], "too_large"),
    (raw(b"HELLO", b"[" * 3000 + b"]" * 3000), "bad_json"),  # deeper than Python's recursion limit
    (raw(b"HELLO", b'{"rig":' + b"[" * 3000 + b"]" * 3000 + b"}"), "bad_json"),
    (raw(b"RESULTS", {"batch_id": "", "presentations": [], "done": True}), "bad_field"),
    (raw(b"RESULTS", {"batch_id": "b" * 129, "presentations": [], "done": True}), "bad_field"),
    (raw(b"RESULTS", b'{"batch_id": "\\ud800", "presentations": [], "done": true}'), "bad_json"),  # not text
    (raw(b"RESULTS", b'{"batch_id": "b", "done": true, "presentations": [{"presentation_id": '
                     b'"3f2b8c1e-9d4a-4c2e-8f1a-2b3c4d5e6f70", "stimulus_id": "s", "onset": 1, '
                     b'"rates": [1e999, 0], "window_ms": [0, 1]}]}'), "bad_json"),
])
def test_malformed_messages_get_error_and_transport_survives(zmq_context, endpoint, frames, code):
    async def scenario():
        async with Harness(zmq_context, endpoint, max_message_bytes=8192) as h:
            d = h.dealer()
            await d.send_multipart(frames)
            reply = await h.reply(d)
            assert reply.type == MessageType.ERROR and reply.header["code"] == code, reply
            await d.send_multipart(hello())
            assert (await h.reply(d)).type == MessageType.WELCOME

    run(scenario())


def test_frame_over_the_hard_limit_drops_the_connection_only(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint, max_message_bytes=1024) as h:
            d = h.dealer()
            await d.send_multipart(raw(b"HEARTBEAT", b"{}") + [b"x" * 2048])
            with pytest.raises(asyncio.TimeoutError):
                await h.reply(d, timeout=0.3)
            await h.register()

    run(scenario())


def test_unregistered_identity_and_wrong_direction(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = h.dealer()
            await d.send_multipart(results())
            reply = await h.reply(d)
            assert reply.header["code"] == "not_registered"
            assert reply.header["in_reply_to"] == "RESULTS"
            await d.send_multipart(encode(Message(MessageType.ERROR, {
                "code": "unknown_reference", "message": "x", "in_reply_to": None})))
            d2 = await h.register("rig-b")
            await d2.send_multipart(encode(Message(MessageType.ACK, {
                "batch_id": "b", "accepted": 0, "duplicates": 0})))
            assert (await h.reply(d2)).header["code"] == "unexpected_type"
            # Nothing came back for the ERROR: the next message on d is for the HEARTBEAT below.
            await d.send_multipart(encode(Message(MessageType.HEARTBEAT)))
            assert (await h.reply(d)).header["in_reply_to"] == "HEARTBEAT"

    run(scenario())


def test_rates_must_match_declared_channels(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = await h.register(channels=3)
            await d.send_multipart(results("b2", rates=[1.0, 2.0]))
            reply = await h.reply(d)
            assert reply.header["code"] == "bad_field" and reply.header["batch_id"] == "b2"
            assert h.handler.results == []

    run(scenario())


def test_handler_errors_become_error_replies(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = await h.register()
            h.handler.fail_results = ProtocolError("unknown_batch", "no batch b1 for this rig")
            await d.send_multipart(results("b1"))
            reply = await h.reply(d)
            assert reply.header == {"code": "unknown_batch", "message": "no batch b1 for this rig",
                                    "in_reply_to": "RESULTS", "batch_id": "b1"}
            h.handler.fail_results = RigInputError("bad_field", "rates has 1 channel(s) but this thread scores 3")
            await d.send_multipart(results("b1"))
            reply = await h.reply(d)
            assert reply.header == {"code": "bad_field", "message": "rates has 1 channel(s) but this thread scores 3",
                                    "in_reply_to": "RESULTS", "batch_id": "b1"}
            h.handler.fail_results = RuntimeError("database is locked")
            await d.send_multipart(results("b1"))
            reply = await h.reply(d)
            assert reply.header["code"] == "internal" and "database" not in reply.header["message"]
            h.handler.fail_results = None
            await d.send_multipart(results("b1"))
            assert (await h.reply(d)).type == MessageType.ACK

            async def bad_ack(rig_name, header):
                return {"batch_id": header["batch_id"], "accepted": "all"}
            h.handler.on_results = bad_ack
            await d.send_multipart(results("b1"))
            reply = await h.reply(d)
            assert (reply.header["code"], reply.header["batch_id"]) == ("internal", "b1")
            h.handler.fail_results = ProtocolError("Not A Code", "")
            h.handler.on_results = Recorder.on_results.__get__(h.handler)
            await d.send_multipart(results("b1"))
            assert (await h.reply(d)).header["code"] == "internal"

    run(scenario())


def test_a_slow_results_holds_up_only_its_own_connection(zmq_context, endpoint):
    """While rig A's RESULTS waits in the handler for longer than A's expiry (HB * LIVENESS), the socket is
    still read: A's heartbeats keep it connected, rig B says HELLO and gets its RESULTS answered, and A's
    replies come afterwards in the order A sent."""
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            a = await h.register("rig-a")
            gate, answered = asyncio.Event(), []

            async def slow_for_a(rig_name, header):
                if rig_name == "rig-a" and header["batch_id"] == "a1":
                    await gate.wait()
                answered.append(header["batch_id"])
                return {"batch_id": header["batch_id"], "accepted": 1, "duplicates": 0}
            h.handler.on_results = slow_for_a
            await a.send_multipart(results("a1"))
            await a.send_multipart(results("a2"))
            b = await h.register("rig-b")
            await b.send_multipart(results("b1"))
            assert (await h.reply(b)).header["batch_id"] == "b1"
            for _ in range(3 * LIVENESS):  # three expiries long
                await a.send_multipart(encode(Message(MessageType.HEARTBEAT)))
                await asyncio.sleep(HB)
            assert h.transport.connected("rig-a") and answered == ["b1"]
            gate.set()
            assert [(await h.reply(a)).header["batch_id"] for _ in range(2)] == ["a1", "a2"]
            assert answered == ["b1", "a1", "a2"]

    run(scenario())


def test_a_connection_that_floods_stops_the_reading_until_it_has_room(zmq_context, endpoint, monkeypatch):
    """Past MAX_QUEUED_MESSAGES waiting, nothing more is read (ZeroMQ holds it); every RESULTS is still
    answered, in order."""
    from server import transport

    monkeypatch.setattr(transport, "MAX_QUEUED_MESSAGES", 3)

    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = await h.register()
            gate = asyncio.Event()

            async def gated(rig_name, header):
                await gate.wait()
                return {"batch_id": header["batch_id"], "accepted": 1, "duplicates": 0}
            h.handler.on_results = gated
            for i in range(8):
                await d.send_multipart(results(f"b{i}"))
            await asyncio.sleep(0.3)
            assert sum(len(inbox.messages) for inbox in h.transport._inboxes.values()) == 3  # the rest not read
            gate.set()
            assert [(await h.reply(d)).header["batch_id"] for _ in range(8)] == [f"b{i}" for i in range(8)]
            await asyncio.sleep(0.05)
            assert not h.transport._inboxes

    run(scenario())


def test_refused_hello(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            h.handler.refuse.add("rig-x")
            d = h.dealer()
            await d.send_multipart(hello("rig-x"))
            reply = await h.reply(d)
            assert reply.header["code"] == "refused" and reply.header["in_reply_to"] == "HELLO"
            assert not h.transport.connected("rig-x")

    run(scenario())


def test_heartbeats_and_expiry_calls_on_disconnect(zmq_context, endpoint):
    hb = 0.25  # expiry after 1.25 s of silence: a loaded machine's scheduling hiccups stay well below it

    async def scenario():
        async with Harness(zmq_context, endpoint, heartbeat_s=hb) as h:
            d = await h.register()
            beat = await h.reply(d, skip_heartbeats=False)
            assert beat.type == MessageType.HEARTBEAT
            # Keep talking for longer than the expiry: still connected.
            for _ in range(8):
                await d.send_multipart(encode(Message(MessageType.HEARTBEAT)))
                await asyncio.sleep(hb)
            assert h.transport.connected("rig-a")
            for _ in range(100):  # expiry is hb * LIVENESS; allow for a loaded machine
                await asyncio.sleep(hb)
                if not h.transport.connected("rig-a"):
                    break
            assert not h.transport.connected("rig-a")
            assert h.handler.events[-1] == ("disconnect", "rig-a")
            await d.send_multipart(encode(Message(MessageType.HEARTBEAT)))
            assert (await h.reply(d)).header["code"] == "not_registered"

    run(scenario())


def test_reconnect_with_new_identity_rebinds(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            old = await h.register()
            new = await h.register()  # same rig name, new socket = new identity
            assert h.handler.events == [("hello", "rig-a"), ("connected", "rig-a")] * 2
            assert (await h.reply(old)).header["code"] == "replaced"
            msg = Message(MessageType.HEARTBEAT)
            assert await h.transport.send("rig-a", msg)
            assert (await h.reply(new, skip_heartbeats=False)).type == MessageType.HEARTBEAT
            await old.send_multipart(results())
            assert (await h.reply(old)).header["code"] == "not_registered"
            await new.send_multipart(results())
            assert (await h.reply(new)).type == MessageType.ACK

    run(scenario())


def test_a_rig_let_go_for_another_hello_on_its_connection_is_not_said_to_have_gone_silent(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = await h.register("rig-a")
            await d.send_multipart(hello("rig-b"))
            assert (await h.reply(d)).type == MessageType.WELCOME
            assert ("disconnect", "rig-a") in h.handler.events
            assert h.handler.why_gone == "was let go: its connection said HELLO as rig 'rig-b' instead"

    run(scenario())


def test_a_gone_rig_costs_one_failed_send_line_per_connection(zmq_context, endpoint, caplog):
    """Heartbeats and batches to a rig whose connection is gone fail until it expires: one WARNING for
    them all. Its next connection replaces it (the ``replaced`` notice to the gone one fails quietly);
    when that one goes too, that is a new line."""
    png = encode_png(np.zeros((2, 2, 3), np.uint8))
    batch = batch_message(batch_id="b1", session_id="s", thread_id="t", generation=0,
                          response_window_ms=[50, 200], stimuli=[("x", "synthetic", png)])

    async def gone(h, d):
        d.close(linger=0)
        while await h.transport.send("rig-a", batch):  # until the ROUTER has seen the connection close
            await asyncio.sleep(HB)
        for _ in range(3):
            assert not await h.transport.send("rig-a", batch)
            await asyncio.sleep(HB)  # heartbeats fail meanwhile

    def failed_sends():
        return [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.getMessage().startswith("could not send")]

    async def scenario():
        async with Harness(zmq_context, endpoint, liveness=1000) as h:
            caplog.set_level(logging.DEBUG, logger="server.transport")
            await gone(h, await h.register())
            assert len(failed_sends()) == 1 and "to rig rig-a" in failed_sends()[0]
            await gone(h, await h.register())
            assert len(failed_sends()) == 2

    run(scenario())


def test_a_rigs_error_text_is_logged_quoted_on_one_line_within_its_budget(zmq_context, endpoint, caplog):
    forged = "x\n2026-12-01 05:00:00,000+0000 CRITICAL server.engine: FORGED"

    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            caplog.set_level(logging.INFO, logger="server.transport")
            d = await h.register()
            for _ in range(40):
                await d.send_multipart(raw(b"ERROR", {"code": "unknown_reference", "message": forged,
                                                      "in_reply_to": "BATCH"}))
            await d.send_multipart(raw(b"HEARTBEAT", {}))
            await asyncio.sleep(0.3)

    run(scenario())
    reported = [r.getMessage() for r in caplog.records if "reports error" in r.getMessage()]
    assert reported and all("\n" not in line and "\\n2026" in line for line in reported), reported
    assert len(reported) < 40  # the peer's line budget (a burst of 20)


def test_send_validates_and_close_twice_is_harmless(zmq_context, endpoint):
    async def scenario():
        h = Harness(zmq_context, endpoint)
        async with h:
            await h.register()
            with pytest.raises(ProtocolError) as err:
                await h.transport.send("rig-a", Message(MessageType.ACK, {"batch_id": "b"}))
            assert err.value.code == "missing_field"
        await h.transport.close()
        await h.transport.run()  # returns at once: already closed

    run(scenario())


def test_run_twice_is_an_error(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            await asyncio.sleep(0)
            with pytest.raises(ServerError, match="already running"):
                await h.transport.run()

    run(scenario())


def test_bind_failure_is_a_clear_server_error(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint):
            with pytest.raises(ServerError, match="free port"):
                Transport(endpoint, Recorder(), context=zmq_context)

    run(scenario())


def test_reply_leaves_out_a_batch_id_that_is_not_an_id(zmq_context, endpoint):
    """Found by the fuzz test: a HEARTBEAT may carry any extra field, "batch_id": "" included."""
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = h.dealer()
            await d.send_multipart(raw(b"HEARTBEAT", {"batch_id": ""}))
            reply = await h.reply(d)
            assert reply.header["code"] == "not_registered" and "batch_id" not in reply.header

    run(scenario())
