"""Replay a recorded session from an NPZ file: for tests, demos and offline re-analysis.

The file (``numpy.savez``; write it with `save`) holds, times in seconds on the recorder's clock:

======================  ==========  ===================================================
``spike_times``         float64 n   time of every spike, any order
``spike_channels``      int n       channel index of each spike (into ``labels``)
``labels``              str c       one label per channel/unit, e.g. ``elec12-unit1``
``marker_times``        float64 m   optional: onsets, sync pulses, trial events
``marker_names``        str m       optional: the name of each marker (``onset``, ``sync``...)
======================  ==========  ===================================================
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rig_client import RigError
from rig_client.spikes import Events, SpikeSource


def save(path: str | Path, events: Events, labels: Sequence[str]) -> None:
    """Write ``events`` (and the channel ``labels``) in the replay format."""
    np.savez(path, spike_times=events.spike_times, spike_channels=events.channels,
             labels=np.asarray(labels, dtype=str), marker_times=events.marker_times,
             marker_names=np.asarray(events.marker_names, dtype=str))


def load(path: str | Path) -> tuple[Events, tuple[str, ...]]:
    """The events and labels of a replay file, checked; `RigError` names what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise RigError(f"{path}: not a readable NPZ replay file ({exc}); write one with "
                       "rig_client.spikes.replay.save") from None
    missing = {"spike_times", "spike_channels", "labels"} - data.keys()
    if missing:
        raise RigError(f"{path}: missing array(s) {', '.join(sorted(missing))}; see "
                       "rig_client/spikes/replay.py for the format")
    labels = tuple(str(x) for x in data["labels"].reshape(-1))
    events = Events(data["spike_times"], data["spike_channels"],
                    data.get("marker_times", np.empty(0)),
                    list(data.get("marker_names", np.empty(0, str))))
    if len(events.channels) and (events.channels.min() < 0 or events.channels.max() >= len(labels)):
        raise RigError(f"{path}: spike_channels must index labels (0..{len(labels) - 1})")
    if not (np.isfinite(events.spike_times).all() and np.isfinite(events.marker_times).all()):
        raise RigError(f"{path}: spike and marker times must be finite")
    return events, labels


class ReplaySource(SpikeSource):
    """Plays a replay file: all at once, or paced at ``speed`` times real time.

    Paced, the recorder's clock is the file's: an event at file time ``t`` is released once
    ``(now - start) * speed`` seconds have passed since the first event, ``now`` from ``clock``.
    The recording ends at its last event (``last_time``): a paced `poll` past it raises `RigError`,
    as a recorder that stopped would, rather than return no spikes that read as rates of 0.
    """

    def __init__(self, path: str | Path, *, paced: bool = False, speed: float = 1.0,
                 clock=time.monotonic):
        if speed <= 0:
            raise RigError("speed must be > 0")
        events, self.labels = load(path)
        self.path = path
        order = np.argsort(events.spike_times, kind="stable")
        self._spikes = events.spike_times[order], events.channels[order]
        order = np.argsort(events.marker_times, kind="stable")
        self._markers = events.marker_times[order], [events.marker_names[i] for i in order]
        times = np.concatenate([events.spike_times, events.marker_times])
        self.first_time = float(times.min()) if len(times) else 0.0
        self.last_time = float(times.max()) if len(times) else 0.0
        self._paced, self._speed, self._clock = paced, speed, clock
        self._started = clock()
        self._released = -np.inf

    def now(self) -> float:
        """The recorder clock's current time (infinite when not paced: everything is out)."""
        if not self._paced:
            return np.inf
        return self.first_time + (self._clock() - self._started) * self._speed

    def poll(self) -> Events:
        lo, hi = self._released, self.now()
        if self._paced and hi > self.last_time:
            raise RigError(f"replay file {self.path} ended (its last event is at {self.last_time:g} s, "
                           f"{self.last_time - self.first_time:g} s after its first); windows past it would "
                           "count 0 spikes, so none are counted. Replay a recording longer than the session")
        self._released = hi
        t, c = self._spikes
        s = slice(np.searchsorted(t, lo, "right"), np.searchsorted(t, hi, "right"))
        mt, mn = self._markers
        m = slice(np.searchsorted(mt, lo, "right"), np.searchsorted(mt, hi, "right"))
        return Events(t[s], c[s], mt[m], mn[m])
