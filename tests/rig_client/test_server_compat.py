"""Protocol 1.1 messages against the real `actmax serve`, over a raw DEALER socket.

The server negotiates 1.1, stores trial facts, and shows a flagged presentation's stimulus again.
"""

from __future__ import annotations

import uuid

import pytest
import zmq

from rig_client.protocol import TRIAL_FACTS, Message, MessageType, decode, encode
from tests.rig_client.conftest import run_session

pytestmark = pytest.mark.slow

LABELS = ["elec1-u1", "elec2-u1"]


def connect(server, rig: str):
    """A session for ``rig``, a DEALER that said a 1.1 HELLO, the WELCOME and the first BATCH; and the thread."""
    process, api = server
    thread = run_session(api, rig, population=4, references=1, generations=3)
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(process.zmq_endpoint)
    dealer.send_multipart(encode(Message(MessageType.HELLO, {
        "rig": rig, "protocol": 1, "minor": 1, "channels": 2, "cached_references": [],
        "channel_labels": LABELS})))
    welcome = receive(dealer, MessageType.WELCOME)
    return dealer, welcome, receive(dealer, MessageType.BATCH), thread


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


def test_server_negotiates_11_stores_trial_facts_and_shows_labels(actmax_server):
    dealer, welcome, batch, thread = connect(actmax_server, "compat-a")
    assert welcome.header["minor"] == 1
    stimuli = [s["stimulus_id"] for s in batch.header["stimuli"]]
    sent = [presentation(s) for s in stimuli]
    dealer.send_multipart(encode(Message(MessageType.RESULTS, {
        "batch_id": batch.header["batch_id"], "done": True, "presentations": sent})))
    ack = receive(dealer, MessageType.ACK)
    api = actmax_server[1]
    rig = api.get("/rigs/compat-a")
    dealer.close(0)
    assert rig["connected"] and rig["minor"] == 1 and rig["channel_labels"] == LABELS
    assert ack.header["accepted"] == len(stimuli) and ack.header["duplicates"] == 0
    assert api.get(f"/sessions/{thread['session_id']}")["channel_labels"] == LABELS
    stored = {p["presentation_id"]: p["trial_facts"]
              for p in api.get(f"/threads/{thread['id']}/presentations")["items"]}
    assert stored == {p["presentation_id"]: {k: p[k] for k in TRIAL_FACTS} for p in sent}


def test_a_10_rig_is_welcomed_with_minor_0(actmax_server):
    process, _ = actmax_server
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(process.zmq_endpoint)
    dealer.send_multipart(encode(Message(MessageType.HELLO, {
        "rig": "compat-10", "protocol": 1, "channels": 2, "cached_references": []})))
    try:
        assert receive(dealer, MessageType.WELCOME).header["minor"] == 0
    finally:
        dealer.close(0)


def test_flagged_presentation_is_shown_again(actmax_server):
    dealer, _, batch, _ = connect(actmax_server, "compat-b")
    stimuli = batch.header["stimuli"]
    flagged = next(s["stimulus_id"] for s in stimuli if s["kind"] == "synthetic")
    dealer.send_multipart(encode(Message(MessageType.RESULTS, {
        "batch_id": batch.header["batch_id"], "done": True,
        "presentations": [presentation(s["stimulus_id"], s["stimulus_id"] == flagged) for s in stimuli]})))
    receive(dealer, MessageType.ACK)
    try:
        again = receive(dealer, MessageType.BATCH)
        assert [s["stimulus_id"] for s in again.header["stimuli"]] == [flagged]  # nothing else is owed
    finally:
        dealer.close(0)
