"""The Open Ephys adapter against a real ZeroMQ publisher speaking the Event Broadcaster's JSON."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import zmq

from rig_client import RigError
from rig_client.spikes import SpikeBuffer, count_in_window
from rig_client.spikes.openephys import OpenEphysSource

RATE = 30000.0


def spike(electrode: str, sorted_id: int, sample: int) -> dict:
    return {"event_type": "spike", "stream": "example_data", "source_node": 104, "electrode": electrode,
            "num_channels": 4, "sample_rate": RATE, "sample_number": sample, "sorted_id": sorted_id,
            "amp1": -80.0, "amp2": -20.0, "amp3": -5.0, "amp4": -1.0}


def ttl(line: int, state: int, sample: int) -> dict:
    return {"event_type": "ttl", "stream": "example_data", "source_node": 104, "sample_rate": RATE,
            "channel_name": "TTL", "sample_number": sample, "line": line, "state": state}


@pytest.fixture
def publisher():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    yield pub, f"tcp://127.0.0.1:{port}", ctx
    pub.close(0)
    ctx.term()


def wait_heard(pub: zmq.Socket, source: OpenEphysSource) -> None:
    """Send TTLs at sample 0 until the source has one (PUB/SUB joins late)."""
    deadline = time.monotonic() + 10
    while source.heard is None:
        assert time.monotonic() < deadline, "the subscriber never received a message"
        pub.send_multipart([b"ttl", json.dumps(ttl(1, 1, 0)).encode()])
        time.sleep(0.02)
        source.poll()


def test_spikes_and_ttls_from_an_event_broadcaster(publisher):
    pub, endpoint, ctx = publisher
    source = OpenEphysSource(["TT1-u1", "TT2-u0"], endpoint, context=ctx)
    buffer = SpikeBuffer(2)
    deadline = time.monotonic() + 10
    while not len(buffer.markers("ttl7")):  # PUB/SUB joins late: warm up until one arrives
        assert time.monotonic() < deadline, "the subscriber never received a message"
        pub.send_multipart([b"ttl", json.dumps(ttl(7, 1, 0)).encode()])
        time.sleep(0.02)
        buffer.add(source.poll())
    onset = 3 * int(RATE)  # 3 s into the recording
    sent = [ttl(1, 1, onset), ttl(1, 0, onset + 300),  # falling edge: no marker
            spike("TT1", 1, onset + 1800), spike("TT1", 1, onset + 3000), spike("TT2", 0, onset - 1500),
            spike("TT1", 2, onset + 2000),  # a unit not asked for
            {"event_type": "spike", "electrode": "TT1"}]  # malformed
    for event in sent:
        pub.send_multipart([event["event_type"].encode(), json.dumps(event).encode()])
    pub.send_multipart([b"junk", b"\xff not json"])
    deadline = time.monotonic() + 10
    while source.skipped < 3:
        assert time.monotonic() < deadline, f"only {source.skipped} of 3 bad messages seen"
        buffer.add(source.poll())
        time.sleep(0.01)
    source.close()
    np.testing.assert_array_equal(buffer.markers("ttl1"), [3.0])
    counts = count_in_window(buffer.spikes(), buffer.markers("ttl1"), (50, 200), baseline_ms=(-100, 0))
    # TT1-u1 at +60 ms and +100 ms; TT2-u0 at -50 ms
    np.testing.assert_allclose(counts.rates, [[2 / 0.15, 0.0]])
    np.testing.assert_allclose(counts.baseline, [[0.0, 1 / 0.1]])


def test_a_source_never_heard_from_fails_instead_of_reporting_zero_spikes(publisher):
    """Nothing publishing (GUI closed, wrong port), or a broadcaster not set to JSON: `poll` says so once
    ``silence_s`` have passed, where it used to return no spikes forever."""
    pub, endpoint, ctx = publisher
    with OpenEphysSource(["TT1-u1"], endpoint, context=ctx, silence_s=0.3) as silent:
        assert len(silent.poll().spike_times) == 0  # not yet: a subscriber takes a moment to join
        time.sleep(0.4)
        with pytest.raises(RigError, match=f"no Event Broadcaster message from {endpoint} in 0.3 s; .*GUI is "
                           "running.*format JSON.*port"):
            silent.poll()
    with OpenEphysSource(["TT1-u1"], endpoint, context=ctx, silence_s=10) as binary:
        deadline = time.monotonic() + 10
        while not binary.skipped:  # a broadcaster left on its binary format
            assert time.monotonic() < deadline, "the subscriber never received a message"
            pub.send_multipart([b"spike", b"\x00\x01 binary event"])
            time.sleep(0.02)
            binary.poll()
        binary.silence_s = 0
        with pytest.raises(RigError, match=r"non-JSON messages: set its format to JSON"):
            binary.poll()


def test_a_quiet_recording_is_real_data_and_its_silence_only_logged(publisher, caplog):
    pub, endpoint, ctx = publisher
    with OpenEphysSource(["TT1-u1"], endpoint, context=ctx, silence_s=0.3) as source:
        wait_heard(pub, source)
        time.sleep(0.4)
        with caplog.at_level(logging.WARNING, logger="rig_client.spikes.openephys"):
            for _ in range(3):
                assert len(source.poll().spike_times) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"no Event Broadcaster message from {endpoint} for over 0.3 s: is the Open Ephys GUI still acquiring?"]


def test_a_slow_poll_loses_no_spikes(publisher):
    """Tens of thousands of events between two polls (a busy array while the presenter waits for a
    batch) all arrive: the subscriber's queue has no high-water mark. At ZeroMQ's default of 1000, 13 999 of the
    20 000 sent here arrived: the publisher dropped the rest.

    The test's publisher must drop none itself. Its queue is 10 000 (the GUI's is ZeroMQ's default, 1000), but a
    ZeroMQ publisher learns what its I/O thread has sent only every half queue, so it drops once that thread falls
    5000 messages behind: sent as fast as Python can (about 50 000 a second), a stall under load dropped 301. At
    10 000 a second that thread may fall half a second behind."""
    pub, endpoint, ctx = publisher
    pub.setsockopt(zmq.SNDHWM, 10_000)  # for the subscriber connecting below
    n = 20_000
    with OpenEphysSource(["TT1-u1"], endpoint, context=ctx) as source:
        wait_heard(pub, source)
        for i in range(n):  # no poll in between
            pub.send_multipart([b"spike", json.dumps(spike("TT1", 1, 30 + i)).encode()])
            if i % 100 == 99:
                time.sleep(0.01)
        buffer, got = SpikeBuffer(1), 0
        deadline = time.monotonic() + 20
        while got < n and time.monotonic() < deadline:
            time.sleep(0.2)  # the last of them may still be on their way
            events = source.poll()
            buffer.add(events)
            got += len(events.spike_times)
    assert got == n
    np.testing.assert_array_equal(buffer.spikes()[0], (30 + np.arange(n)) / RATE)


def test_acquisition_started_again_fails_the_source_rather_than_count_across_two_clocks(publisher):
    """The GUI starts its sample numbers from zero when acquisition is stopped and started again: the source says
    so, where counting on would put the new spikes in windows of the old clock. Events a little out of order, and a
    stream with a clock of its own, are no restart."""
    pub, endpoint, ctx = publisher
    with OpenEphysSource(["TT1-u1"], endpoint, context=ctx) as source:
        wait_heard(pub, source)
        at_100_s = int(100 * RATE)
        for event in [spike("TT1", 1, at_100_s), spike("TT1", 1, at_100_s - int(0.5 * RATE)),
                      {**spike("TT1", 1, int(2 * RATE)), "stream": "second_board"}]:
            pub.send_multipart([b"spike", json.dumps(event).encode()])
        buffer, deadline = SpikeBuffer(1), time.monotonic() + 10
        while len(buffer.spikes()[0]) < 3:
            assert time.monotonic() < deadline, "the spikes did not arrive"
            buffer.add(source.poll())
            time.sleep(0.01)
        np.testing.assert_array_equal(buffer.spikes()[0], [2.0, 99.5, 100.0])
        pub.send_multipart([b"spike", json.dumps(spike("TT1", 1, int(0.25 * RATE))).encode()])
        deadline = time.monotonic() + 10
        with pytest.raises(RigError, match=r"^the Open Ephys GUI's clock \(stream 'example_data'\) went back from "
                           r"100\.000 s to 0\.250 s: its acquisition was stopped and started again.*restart the rig "
                           r"program"):
            while time.monotonic() < deadline:
                source.poll()
                time.sleep(0.01)
