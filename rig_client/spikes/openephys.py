"""Open Ephys GUI: spikes and TTL events from its Event Broadcaster plugin over ZeroMQ.

Set the Event Broadcaster to the **JSON** format (the one ``open_ephys.streaming.EventListener``
of open-ephys-python-tools reads). It publishes two-frame messages on a PUB socket (port 5557 by
default): an envelope, then a JSON object with ``event_type`` ``"spike"`` (``electrode``,
``sorted_id``, ``sample_number``, ``sample_rate``...) or ``"ttl"`` (``line``, ``state``,
``sample_number``, ``sample_rate``...).

Times are ``sample_number / sample_rate``: the acquisition board's clock is the recorder's clock.
A unit is labelled ``ELECTRODE-uSORTED_ID`` (``-u0``: unsorted threshold crossings); a TTL rising
edge on line L is the marker ``ttlL``.

The broadcaster sends events only, no heartbeats, and a SUB socket cannot tell a silent publisher
from none at all: so the source fails (`RigError`) when no JSON message has come ``silence_s`` after
it started, rather than report 0 spikes/s from a recorder it never heard. Messages wait in memory
(no receive high-water mark) until `poll` takes them, so a slow poll loses none. Acquisition stopped
and started again starts the sample numbers from zero: the source then fails too (`RecorderClock`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import zmq

from rig_client import RigError
from rig_client.spikes import Events, RecorderClock, SpikeSource

log = logging.getLogger(__name__)


def unit_label(event: dict) -> str:
    return f"{event['electrode']}-u{int(event['sorted_id'])}"


def to_events(messages: Sequence[dict], labels: Sequence[str], clock: RecorderClock | None = None
              ) -> tuple[Events, int]:
    """Events from decoded Event Broadcaster JSON objects, and how many were skipped.

    Spikes of units not in ``labels`` and malformed objects are skipped (and logged). ``clock`` checks that each
    stream's times do not go back (acquisition restarted), with every event's time, skipped units' too.
    """
    index = {label: i for i, label in enumerate(labels)}
    spikes, channels, markers, names, skipped = [], [], [], [], 0
    streams: dict[str, list[float]] = {}
    for event in messages:
        try:
            t = int(event["sample_number"]) / float(event["sample_rate"])
            streams.setdefault(str(event.get("stream", "")), []).append(t)
            if event["event_type"] == "spike":
                unit = index.get(unit_label(event))
                if unit is None:
                    skipped += 1
                    continue
                spikes.append(t)
                channels.append(unit)
            elif event["event_type"] == "ttl" and int(event["state"]) > 0:
                markers.append(t)
                names.append(f"ttl{int(event['line'])}")
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            log.warning("skipping a malformed Event Broadcaster message: %.200r", event)
            skipped += 1
    for stream, times in streams.items() if clock is not None else ():
        clock.advance(times, stream)
    return Events(spikes, channels, markers, names), skipped


class OpenEphysSource(SpikeSource):
    """Subscribes to an Event Broadcaster; ``labels`` are the units to report, in channel order.

    `poll` raises `RigError` if no JSON message has arrived ``silence_s`` after the source started,
    and logs a warning when messages stop for ``silence_s`` later (a quiet recording is real data); and when
    a stream's clock goes back (acquisition started again).
    """

    def __init__(self, labels: Sequence[str], endpoint: str = "tcp://127.0.0.1:5557", *,
                 context: zmq.Context | None = None, silence_s: float = 10.0):
        if not labels:
            raise RigError("name the units to record, e.g. ['CH1-u0', 'CH2-u1'] "
                           "(electrode name from the Spike Detector, then -u and the sorted id)")
        self.labels = tuple(labels)
        self.endpoint, self.silence_s = endpoint, silence_s
        self.skipped = 0
        self.heard: float | None = None  # time.monotonic() of the last JSON message; None: never
        self.clock = RecorderClock("the Open Ephys GUI", "its acquisition was stopped and started again, which "
                                   "starts its sample numbers from zero")
        self._started, self._warned = time.monotonic(), False
        self._ctx = context or zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        # No receive high-water mark: the broadcaster sends one message per spike. At ZeroMQ's default
        # of 1000 (plus the GUI's send queue of 1000 and the socket buffers) a busy array filled the
        # queue within seconds between polls, and the PUB then dropped the newest spikes unseen.
        # Unpolled messages now wait in memory for `poll`.
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(endpoint)

    def poll(self) -> Events:
        messages = []
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                break
            try:
                messages.append(json.loads(frames[-1].decode("utf-8")))
            except (UnicodeDecodeError, ValueError):
                log.warning("skipping a non-JSON Event Broadcaster message; set its format to JSON")
                self.skipped += 1
        self._check_heard(bool(messages))
        events, skipped = to_events(messages, self.labels, self.clock)
        self.skipped += skipped
        return events

    def _check_heard(self, now_heard: bool) -> None:
        now = time.monotonic()
        if now_heard:
            self.heard, self._warned = now, False
        elif self.heard is None and now - self._started > self.silence_s:
            not_json = f" ({self.skipped} non-JSON messages: set its format to JSON)" if self.skipped else ""
            raise RigError(f"no Event Broadcaster message from {self.endpoint} in {self.silence_s:g} s"
                           f"{not_json}; check that the Open Ephys GUI is running and acquiring, that its "
                           "signal chain has an Event Broadcaster with format JSON, and that its port is this "
                           "endpoint's")
        elif self.heard is not None and now - self.heard > self.silence_s and not self._warned:
            log.warning("no Event Broadcaster message from %s for over %g s: is the Open Ephys GUI still "
                        "acquiring?", self.endpoint, self.silence_s)
            self._warned = True

    def close(self) -> None:
        self._socket.close(linger=0)
