"""Protocol 1.1 messages against the real `actmax serve`, over a raw DEALER socket.

What the server does today with 1.1 fields, and (xfail until the engine implements it) what a 1.1
server must do with a flagged presentation.
"""

from __future__ import annotations

import uuid

import pytest
import zmq

from rig_client.protocol import Message, MessageType, decode, encode
from tests.rig_client.conftest import run_session

pytestmark = pytest.mark.slow

LABELS = ["elec1-u1", "elec2-u1"]


def connect(server, rig: str):
    """A session for ``rig``, a DEALER that said a 1.1 HELLO, the WELCOME and the first BATCH."""
    process, api = server
    run_session(api, rig, population=4, references=1, generations=3)
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(process.zmq_endpoint)
    dealer.send_multipart(encode(Message(MessageType.HELLO, {
        "rig": rig, "protocol": 1, "minor": 1, "channels": 2, "cached_references": [],
        "channel_labels": LABELS})))
    welcome = receive(dealer, MessageType.WELCOME)
    return dealer, welcome, receive(dealer, MessageType.BATCH)


def receive(dealer, mtype: MessageType, timeout_s: float = 60) -> Message:
    """The next message of ``mtype`` (answering heartbeats meanwhile)."""
    while dealer.poll(timeout_s * 1000):
        msg = decode(dealer.recv_multipart())
        if msg.type == mtype:
            return msg
        assert msg.type == MessageType.HEARTBEAT, msg
        dealer.send_multipart(encode(Message(MessageType.HEARTBEAT)))
    raise AssertionError(f"no {mtype} within {timeout_s} s")


def presentation(stimulus_id: str, flagged: bool = False) -> dict:
    return {"presentation_id": str(uuid.uuid4()), "stimulus_id": stimulus_id, "onset": 1.7e9,
            "rates": [5.0, 1.0], "window_ms": [50, 200], "fixation_broken": flagged,
            "dropped_frames": 0, "photodiode_onset": 1.7e9 + 0.012, "baseline_rates": [2.0, 1.0],
            "baseline_window_ms": [-100, 0]}


def test_server_accepts_11_hello_and_trial_facts(actmax_server):
    dealer, welcome, batch = connect(actmax_server, "compat-a")  # the HELLO with labels was welcomed
    stimuli = [s["stimulus_id"] for s in batch.header["stimuli"]]
    dealer.send_multipart(encode(Message(MessageType.RESULTS, {
        "batch_id": batch.header["batch_id"], "done": True,
        "presentations": [presentation(s) for s in stimuli]})))
    ack = receive(dealer, MessageType.ACK)
    assert ack.header["accepted"] == len(stimuli) and ack.header["duplicates"] == 0
    dealer.close(0)


@pytest.mark.xfail(strict=True, reason="the server side of protocol 1.1 (engine: store trial facts, "
                   "do not score flagged presentations, re-queue their stimuli) is not wired yet")
def test_flagged_presentation_is_shown_again(actmax_server):
    dealer, _, batch = connect(actmax_server, "compat-b")
    stimuli = batch.header["stimuli"]
    flagged = next(s["stimulus_id"] for s in stimuli if s["kind"] == "synthetic")
    dealer.send_multipart(encode(Message(MessageType.RESULTS, {
        "batch_id": batch.header["batch_id"], "done": True,
        "presentations": [presentation(s["stimulus_id"], s["stimulus_id"] == flagged) for s in stimuli]})))
    receive(dealer, MessageType.ACK)
    try:
        again = receive(dealer, MessageType.BATCH)
        assert flagged in {s["stimulus_id"] for s in again.header["stimuli"]}
    finally:
        dealer.close(0)
