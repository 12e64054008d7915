"""Open Ephys GUI: spikes and TTL events from its Event Broadcaster plugin over ZeroMQ.

Set the Event Broadcaster to the **JSON** format (the one ``open_ephys.streaming.EventListener``
of open-ephys-python-tools reads). It publishes two-frame messages on a PUB socket (port 5557 by
default): an envelope, then a JSON object with ``event_type`` ``"spike"`` (``electrode``,
``sorted_id``, ``sample_number``, ``sample_rate``...) or ``"ttl"`` (``line``, ``state``,
``sample_number``, ``sample_rate``...).

Times are ``sample_number / sample_rate``: the acquisition board's clock is the recorder's clock.
A unit is labelled ``ELECTRODE-uSORTED_ID`` (``-u0``: unsorted threshold crossings); a TTL rising
edge on line L is the marker ``ttlL``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import zmq

from rig_client import RigError
from rig_client.spikes import Events, SpikeSource

log = logging.getLogger(__name__)


def unit_label(event: dict) -> str:
    return f"{event['electrode']}-u{int(event['sorted_id'])}"


def to_events(messages: Sequence[dict], labels: Sequence[str]) -> tuple[Events, int]:
    """Events from decoded Event Broadcaster JSON objects, and how many were skipped.

    Spikes of units not in ``labels`` and malformed objects are skipped (and logged).
    """
    index = {label: i for i, label in enumerate(labels)}
    spikes, channels, markers, names, skipped = [], [], [], [], 0
    for event in messages:
        try:
            t = int(event["sample_number"]) / float(event["sample_rate"])
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
    return Events(spikes, channels, markers, names), skipped


class OpenEphysSource(SpikeSource):
    """Subscribes to an Event Broadcaster; ``labels`` are the units to report, in channel order."""

    def __init__(self, labels: Sequence[str], endpoint: str = "tcp://127.0.0.1:5557", *,
                 context: zmq.Context | None = None):
        if not labels:
            raise RigError("name the units to record, e.g. ['CH1-u0', 'CH2-u1'] "
                           "(electrode name from the Spike Detector, then -u and the sorted id)")
        self.labels = tuple(labels)
        self.skipped = 0
        self._ctx = context or zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
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
        events, skipped = to_events(messages, self.labels)
        self.skipped += skipped
        return events

    def close(self) -> None:
        self._socket.close(linger=0)
