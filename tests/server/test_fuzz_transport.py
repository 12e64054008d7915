"""Hypothesis against the ZeroMQ transport over real sockets: every message gets the reply
docs/protocol.md names (exactly one, or none for an ERROR and a registered rig's HEARTBEAT), and
nothing a peer sends raises in the server. Run longer with ``ACTMAX_FUZZ_EXAMPLES=5000``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import uuid

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_client.protocol import VERSION, MessageType, ProtocolError, decode
from server.transport import Transport
from tests.server.test_transport import Recorder, hello

FUZZ_EXAMPLES = int(os.environ.get("ACTMAX_FUZZ_EXAMPLES", "400"))
PROBE_ID = "probe-1f0c"  # a batch_id the fuzzed messages never use
PROBE = [VERSION, b"ACK", json.dumps({"batch_id": PROBE_ID, "accepted": 0, "duplicates": 0}).encode()]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
           | st.text(max_size=40) | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


def presentation():
    valid = {"presentation_id": st.uuids().map(str), "stimulus_id": st.just("s1"),
             "onset": st.just(1.7e9), "rates": st.just([1.0, 2.0]), "window_ms": st.just([50, 200])}
    return _mostly_valid(valid)


def near_valid_headers():
    """Headers of the right shape with some fields missing or replaced by anything."""
    hello_fields = {"rig": st.sampled_from(["rig-a", "", "r" * 65, "\udc80"]),
                    "protocol": st.sampled_from([1, 1, 1, 2, True, 1.0]),
                    "channels": st.sampled_from([2, 0, 4097, -1, 2.5]),
                    "cached_references": st.lists(st.text(max_size=130), max_size=3)}
    results_fields = {"batch_id": st.sampled_from(["b1", "", "b" * 129, "\ud800"]) | st.text(max_size=5),
                      "presentations": st.lists(presentation(), max_size=3),
                      "done": st.booleans() | scalars}
    error_fields = {"code": st.sampled_from(["refused", "Bad", ""]), "message": st.text(max_size=5),
                    "in_reply_to": st.sampled_from([None, "HELLO", "NOPE"])}
    return st.one_of(*map(_mostly_valid, (hello_fields, results_fields, error_fields)))


def _mostly_valid(fields: dict) -> st.SearchStrategy[dict]:
    """Each field usually present and drawn from its own strategy, sometimes missing or junk."""
    def drop(header: dict, key: str | None) -> dict:
        return {k: v for k, v in header.items() if k != key}

    header = st.fixed_dictionaries({k: st.one_of(v, v, v, json_values) for k, v in fields.items()})
    return st.builds(drop, header, st.sampled_from([None, None, None, *fields]))


def header_bytes():
    encoded = (near_valid_headers() | json_values).map(lambda h: json.dumps(h).encode())
    deep = st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
    literals = st.sampled_from([b'{"x": 1e999}', b'{"x": NaN}', b'{"x": -Infinity}', b"\xff", b""])
    return encoded | deep | literals | st.binary(max_size=64)


structured = st.tuples(
    st.sampled_from([VERSION] * 8 + [b"AMX2", b""]),
    st.sampled_from([t.value.encode() for t in MessageType] + [b"NOPE", b"hello"]),
    header_bytes(),
    st.lists(st.binary(max_size=40), max_size=2) | st.just([]),
).map(lambda t: [t[0], t[1], t[2], *t[3]])
messages = st.one_of(structured, structured, structured, st.lists(st.binary(max_size=20), min_size=1, max_size=4))


def expected_replies(frames: list[bytes], registered: bool) -> int:
    """What docs/protocol.md §5 and §4.7 promise for one message from this peer."""
    try:
        msg = decode(frames)
    except ProtocolError as exc:
        return 0 if exc.in_reply_to == MessageType.ERROR else 1
    if msg.type == MessageType.ERROR or (registered and msg.type == MessageType.HEARTBEAT):
        return 0
    return 1


class ServerThread:
    """A Transport on its own event loop thread."""

    def __init__(self, ctx: zmq.Context, endpoint: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            self.transport = Transport(endpoint, Recorder(), heartbeat_s=60, liveness=5, context=ctx)
            return asyncio.ensure_future(self.transport.run())

        self.running = asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.transport.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_every_hostile_message_gets_the_documented_reply(zmq_context, endpoint, caplog):
    server = ServerThread(zmq_context, endpoint)
    counts: collections.Counter[str] = collections.Counter()

    source = iter(range(1, 2**24))  # a loopback source address per peer: one HELLO budget each

    @given(frames=messages, registered=st.booleans())
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(frames, registered):
        dealer = zmq_context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(f"tcp://127.{'.'.join(map(str, next(source).to_bytes(3, 'big')))}:0;"
                           f"{endpoint.removeprefix('tcp://')}")
            if registered:
                dealer.send_multipart(hello(f"rig-{uuid.uuid4().hex[:8]}"))
                assert decode(receive(dealer)).type == MessageType.WELCOME
                counts["registered"] += 1
            dealer.send_multipart(frames)
            dealer.send_multipart(PROBE)
            replies = []
            while (reply := decode(receive(dealer))).header.get("batch_id") != PROBE_ID:
                replies.append(reply)
            assert len(replies) == expected_replies(frames, registered), (frames, replies)
            counts.update(r.header.get("code", r.type) for r in replies)
            counts["messages"] += 1
        finally:
            dealer.close(linger=0)

    with caplog.at_level(logging.WARNING, logger="server.transport"):
        try:
            fuzz()
        finally:
            server.stop()
    print(f"transport fuzz: {dict(counts)}")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "the transport raised"


def receive(dealer: zmq.Socket) -> list[bytes]:
    """The next non-HEARTBEAT message; the server answers within 5 s or the test fails.

    PROBE always gets an ERROR naming its batch_id (not_registered, or unexpected_type).
    """
    while True:
        assert dealer.poll(5000), "no reply within 5 s"
        frames = dealer.recv_multipart()
        if frames[1] != b"HEARTBEAT":
            return frames


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
