"""Blackrock Neurotech (Cerebus, NSP, Gemini hubs) through pycbsdk, the CereLink SDK's binding.

Spike packets (front-end channels) carry the channel id in ``header.chid`` and the sorted unit in
``header.type`` (0: unsorted); a unit is labelled ``chanC-uU``. Digital-input packets become the
marker ``dinV`` with V the input word (e.g. a strobed stimulus code or a photodiode bit). Times are
the device clock, ``header.time`` in nanoseconds: the recorder's clock.

**Untested on hardware**: this machine has no Cerebus device and Blackrock's nPlay simulator is not
available here; the packet conversion is tested on packets built with pycbsdk's own C structures.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

import numpy as np

from rig_client import RigError
from rig_client.spikes import Events, RecorderClock, SpikeSource

DEVICE_CLOCK_HZ = 1e9  # header.time is in nanoseconds (protocol 4.x)


class PacketBuffer:
    """Collects spike and digital-input packets from pycbsdk callbacks (its own thread)."""

    def __init__(self, labels: Sequence[str]):
        self.index = {label: i for i, label in enumerate(labels)}
        self._spikes: collections.deque = collections.deque()
        self._markers: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.skipped = 0
        self.clock = RecorderClock("the Blackrock device", "the NSP was restarted or its clock reset, which "
                                   "starts its clock from zero")

    def on_spike(self, header, data) -> None:
        unit = self.index.get(f"chan{header.chid}-u{header.type}")
        with self._lock:
            if unit is None:
                self.skipped += 1
            else:
                self._spikes.append((header.time, unit))

    def on_digital(self, header, data) -> None:
        value = data[0] | data[1] << 8 | data[2] << 16 | data[3] << 24
        with self._lock:
            self._markers.append((header.time, f"din{value}"))

    def take(self) -> Events:
        with self._lock:
            spikes, markers = list(self._spikes), list(self._markers)
            self._spikes.clear()
            self._markers.clear()
        spike_times = np.array([t for t, _ in spikes], np.float64) / DEVICE_CLOCK_HZ
        marker_times = np.array([t for t, _ in markers], np.float64) / DEVICE_CLOCK_HZ
        self.clock.advance(spike_times, "spike packets")  # each kind in the order it came
        self.clock.advance(marker_times, "digital-input packets")
        return Events(spike_times, [u for _, u in spikes], marker_times, [n for _, n in markers])


class BlackrockSource(SpikeSource):
    """Spikes of the units in ``labels`` (``chanC-uU``) from a running Cerebus session."""

    def __init__(self, labels: Sequence[str], device: str = "HUB1"):
        try:
            from pycbsdk import ChannelType, DeviceType, Session
        except ImportError:
            raise RigError("the Blackrock adapter needs pycbsdk: pip install 'actmax[blackrock]'") \
                from None
        if not labels:
            raise RigError("name the units to record, e.g. ['chan1-u1', 'chan2-u0']")
        try:
            device_type = DeviceType[device.upper()]
        except KeyError:
            raise RigError(f"unknown Blackrock device {device!r}; one of "
                           f"{', '.join(d.name for d in DeviceType)}") from None
        self.labels = tuple(labels)
        self._buffer = PacketBuffer(self.labels)
        try:
            self._session = Session(device_type)
        except OSError as exc:  # pycbsdk's wheel does not bundle the SDK library on every platform
            raise RigError("pycbsdk could not load libcbsdk, the CereLink SDK library it binds: build it from "
                           "CereLink with cmake -DCBSDK_BUILD_SHARED=ON and set CBSDK_LIB_PATH to the library "
                           f"file, or CBSDK_LIB_DIR to its folder ({str(exc).splitlines()[0]})") from None
        self._session.on_event(ChannelType.FRONTEND)(self._buffer.on_spike)
        self._session.on_event(ChannelType.DIGITAL_IN)(self._buffer.on_digital)

    def poll(self) -> Events:
        return self._buffer.take()

    def close(self) -> None:
        self._session.close()
