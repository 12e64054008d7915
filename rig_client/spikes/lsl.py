"""Lab Streaming Layer (pylsl): a spike stream plus an optional marker stream.

Streams this adapter reads (what a sorter or acquisition bridge publishes):

- **spikes**: irregular rate, one ``int32`` channel; each sample is the index of the unit that
  fired and its time stamp is the spike time. The unit labels are in the stream description,
  ``<desc><units><unit><label>elec3-unit1</label></unit>...</units></desc>`` (`spike_outlet`
  writes one).
- **markers** (optional): irregular rate, one ``string`` channel; each sample names an event at
  its time stamp, e.g. ``onset`` (photodiode) or ``sync`` (a sync pulse). One integer channel (event codes)
  is read too, each code named by its digits (``"7"``).

Time stamps are clock-synchronised by liblsl, so both streams arrive on this machine's LSL clock
(``pylsl.local_clock()``): that is the recorder's clock. An outlet must stamp on its own LSL clock (or
leave the stamp out): a stamp more than ``STAMP_OFF_S`` from the clock now, e.g. ``time.time()``, makes
`poll` raise `RigError`, as it would fall in no window and read as rates of 0 spikes/s. A spike stream
of another format (not one integer channel) is refused when it is opened, and so is a marker stream that is not
one string or integer channel (its other channels, or floats' names such as ``7.0``, would be read wrong).

A stream that breaks off (its outlet closed or crashed, the network went) fails the source: `poll`
raises `RigError` naming it, rather than return no spikes from then on, which would read as rates
of 0 spikes/s. With ``reconnect=True`` it is looked for again at every poll instead, and the time it
was away is an outage (`SpikeSource.outages`), so that windows which overlap it are not counted.
liblsl's own recovery stays off (``recover=False``): it reconnects without saying when spikes went
missing.

LSL finds streams by multicast. Keep discovery on one machine with an ``lsl_api.cfg`` (see
docs/rigs.md) named by the ``LSLAPICFG`` environment variable before pylsl is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rig_client import RigError
from rig_client.spikes import Events, SpikeSource

SPIKE_TYPE = "Spikes"
MARKER_TYPE = "Markers"
STAMP_OFF_S = 300.0  # a stamp further from the LSL clock now is on another clock: far beyond any recorder's latency
FORMATS = ("undefined", "float32", "double64", "string", "int32", "int16", "int8", "int64")  # by pylsl's cf_ value


def _pylsl():
    try:
        import pylsl
    except ImportError:
        raise RigError("the LSL adapter needs pylsl: pip install 'actmax[lsl]'") from None
    return pylsl


def spike_outlet(name: str, labels: Sequence[str]):
    """A `pylsl.StreamOutlet` in this adapter's spike format (for bridges, tests and demos)."""
    pylsl = _pylsl()
    info = pylsl.StreamInfo(name, SPIKE_TYPE, 1, pylsl.IRREGULAR_RATE, pylsl.cf_int32,
                            f"{name}-spikes")
    units = info.desc().append_child("units")
    for label in labels:
        units.append_child("unit").append_child_value("label", label)
    return pylsl.StreamOutlet(info)


def marker_outlet(name: str):
    """A `pylsl.StreamOutlet` of string markers."""
    pylsl = _pylsl()
    return pylsl.StreamOutlet(pylsl.StreamInfo(name, MARKER_TYPE, 1, pylsl.IRREGULAR_RATE,
                                               pylsl.cf_string, f"{name}-markers"))


def unit_labels(info) -> tuple[str, ...]:
    """The unit labels in a spike stream's description (empty if it has none)."""
    labels, unit = [], info.desc().child("units").child("unit")
    while not unit.empty():
        labels.append(unit.child_value("label"))
        unit = unit.next_sibling("unit")
    return tuple(labels)


def to_events(spike_samples, spike_stamps, marker_samples=(), marker_stamps=()) -> Events:
    """Events from pulled LSL chunks: unit indices + stamps, marker strings + stamps."""
    units = np.asarray(spike_samples).reshape(-1) if len(spike_samples) else np.zeros(0, np.int64)
    if units.dtype.kind not in "iu":  # a float or string channel (bool is refused too)
        bad = next(u for u in np.asarray(spike_samples, object).reshape(-1) if not isinstance(u, (int, np.integer)))
        raise RigError(f"LSL spike sample {bad!r} is no unit index: each sample must be the integer index of "
                       "the unit that fired, in one int32 channel (publish with rig_client.spikes.lsl.spike_outlet)")
    return Events(spike_stamps, units.astype(np.int64), marker_stamps, [m[0] for m in marker_samples])


def check_format(info) -> None:
    """`RigError` unless ``info`` (a `pylsl.StreamInfo`) is a spike stream of one integer channel."""
    pylsl = _pylsl()
    count, form = info.channel_count(), info.channel_format()
    if count != 1 or form not in (pylsl.cf_int8, pylsl.cf_int16, pylsl.cf_int32, pylsl.cf_int64):
        raise RigError(f"LSL stream {info.name()!r} has {count} {FORMATS[form]} channel(s); a spike stream needs "
                       "one integer channel (int32), each sample the index of the unit that fired: publish it "
                       "with rig_client.spikes.lsl.spike_outlet, or with pylsl.StreamInfo(name, 'Spikes', 1, "
                       "pylsl.IRREGULAR_RATE, pylsl.cf_int32)")


def check_marker_format(info) -> None:
    """`RigError` unless ``info`` is a marker stream of one string or integer channel."""
    pylsl = _pylsl()
    count, form = info.channel_count(), info.channel_format()
    if count != 1 or form not in (pylsl.cf_string, pylsl.cf_int8, pylsl.cf_int16, pylsl.cf_int32, pylsl.cf_int64):
        raise RigError(f"LSL stream {info.name()!r} has {count} {FORMATS[form]} channel(s); a marker stream needs "
                       "one string channel, each sample the name of an event (or one integer channel of event "
                       "codes): publish it with rig_client.spikes.lsl.marker_outlet, or with pylsl.StreamInfo(name, "
                       "'Markers', 1, pylsl.IRREGULAR_RATE, pylsl.cf_string)")


class LSLSource(SpikeSource):
    """Reads the named spike stream (and marker stream) found on the network within ``timeout``.

    ``reconnect``: a stream that breaks off starts an outage, and every `poll` then looks for it again
    (for up to ``RESOLVE_S``); it is back once every stream is, its units unchanged. Otherwise a lost
    stream makes `poll` raise `RigError`.
    """

    RESOLVE_S = 0.2

    def __init__(self, spike_stream: str, marker_stream: str | None = None, *,
                 timeout: float = 5.0, reconnect: bool = False):
        self._streams = [(name, stream_type) for name, stream_type in
                         ((spike_stream, SPIKE_TYPE), (marker_stream, MARKER_TYPE)) if name is not None]
        self.reconnect = reconnect
        self.outages: list[list[float]] = []
        self._inlets = []
        for name, stream_type in self._streams:
            inlet = self._open(name, stream_type, timeout)
            if inlet is None:
                raise RigError(f"no LSL stream named {name!r} of type {stream_type!r} found within "
                               f"{timeout:.0f} s; is its outlet running, and does lsl_api.cfg "
                               "let this machine see it?")
            self._inlets.append(inlet)
        self.labels = unit_labels(self._inlets[0].info(timeout))
        if not self.labels:
            raise RigError(f"LSL stream {spike_stream!r} lists no units in <desc><units>; publish "
                           "it with rig_client.spikes.lsl.spike_outlet or add the labels")
        self._complete = self.now()  # every spike stamped before this (less the recorder's latency) is in

    @staticmethod
    def _open(name: str, stream_type: str, timeout: float):
        """An inlet on the stream ``name`` of ``stream_type``, open, or None where none answered in time."""
        pylsl = _pylsl()
        found = [s for s in pylsl.resolve_byprop("name", name, minimum=1, timeout=timeout)
                 if s.type() == stream_type]
        if not found:
            return None
        (check_format if stream_type == SPIKE_TYPE else check_marker_format)(found[0])
        inlet = pylsl.StreamInlet(found[0], processing_flags=pylsl.proc_clocksync, recover=False)
        try:
            inlet.open_stream(timeout)  # samples pushed from now on reach us
            inlet.time_correction(max(timeout, 2.0))  # now: the first pull would wait for it (0.6 s here)
        except RuntimeError:  # it went again, or did not answer in time
            inlet.close_stream()
            return None
        return inlet

    def _lose(self, name: str) -> None:
        """Start an outage at the last poll that pulled every stream, and let the inlets go."""
        message = (f"LSL stream {name!r} was lost (its outlet stopped, or the network to it went); rates from here "
                   "on would be missing spikes")
        if not self.reconnect:
            raise RigError(f"{message}, so none are sent. Restart its outlet, then this rig: the server shows an "
                           "unanswered batch again") from None
        self.lost = message
        self.outages.append([self._complete, np.inf])
        for inlet in self._inlets:
            inlet.close_stream()
        self._inlets = []

    def _come_back(self) -> None:
        """Look for every stream again; once all answer, with the same units, the outage ends now."""
        inlets = []
        for name, stream_type in self._streams:
            inlet = self._open(name, stream_type, self.RESOLVE_S)
            if inlet is None:
                for other in inlets:
                    other.close_stream()
                return
            inlets.append(inlet)
        try:
            labels = unit_labels(inlets[0].info(self.RESOLVE_S))
        except RuntimeError:  # gone again (pylsl's LostError), or no answer in time: still away
            labels = None
        if labels != self.labels:
            for inlet in inlets:
                inlet.close_stream()
            if labels is None:
                return
            raise RigError(f"LSL stream {self._streams[0][0]!r} came back listing units {list(labels)}, not "
                           f"{list(self.labels)}: a rig's channels are fixed while it runs; restart this rig "
                           "to use the new units")
        self._inlets = inlets
        self._complete = self.outages[-1][1] = self.now()

    def _pull(self, i: int, max_samples: int):
        """A chunk of stream ``i``; `RigError` where its stamps are on another clock than LSL's."""
        try:
            samples, stamps = self._inlets[i].pull_chunk(timeout=0.0, max_samples=max_samples)
        except RuntimeError as exc:  # pylsl's LostError (pylsl.util from 1.17, pylsl.pylsl before)
            if type(exc).__name__ != "LostError":
                raise
            self._lose(self._streams[i][0])
            return [], []
        off = np.asarray(stamps, np.float64) - self.now()  # stamps come clock-synchronised (proc_clocksync)
        if len(off) and np.abs(off).max() > STAMP_OFF_S:
            worst = off[np.argmax(np.abs(off))]
            raise RigError(f"LSL stream {self._streams[i][0]!r} stamps its samples {worst:+.0f} s from this "
                           f"machine's LSL clock (more than {STAMP_OFF_S:.0f} s): its outlet stamps them on another "
                           "clock (such as time.time()), so every window would count 0 spikes/s. Stamp each "
                           "sample with pylsl.local_clock(), or push it without a time stamp so that LSL stamps it")
        return samples, stamps

    def poll(self) -> Events:
        if self.away:
            self._come_back()
            if self.away:
                return Events()
        now = self.now()
        spikes, stamps = self._pull(0, 100_000)
        markers, marker_stamps = ((), ())
        if len(self._streams) > 1 and self._inlets:
            markers, marker_stamps = self._pull(1, 10_000)
        if not self.away:
            self._complete = now
        events = to_events(spikes, stamps, markers, marker_stamps)
        if len(events.channels) and events.channels.max() >= len(self.labels):
            raise RigError(f"LSL spike sample names unit {events.channels.max()} but the stream "
                           f"lists {len(self.labels)} units")
        return events

    def now(self) -> float:
        return _pylsl().local_clock()

    def close(self) -> None:
        for inlet in self._inlets:
            inlet.close_stream()
