"""Spike sources and windowed counting: what turns a recording into the rates a rig reports.

A `SpikeSource` yields `Events` on the recorder's clock: spike (or threshold-crossing) times per
channel/unit, and named markers (stimulus onsets, sync pulses). `SpikeBuffer` keeps what a source
delivered; `count_in_window` turns spike times and onsets into rates per presentation, after
mapping the presenter's onsets onto the recorder's clock with a `ClockFit` made from sync pulses.

Adapters: `replay` (a recorded NPZ file), `lsl` (Lab Streaming Layer), `openephys` (the Open
Ephys GUI's Event Broadcaster), `blackrock` (pycbsdk). docs/rigs.md says how to connect each.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np

from rig_client import RigError


@dataclasses.dataclass
class Events:
    """Spikes and markers, times in seconds on the recorder's clock.

    ``channels[i]`` is the channel index (into the source's ``labels``) of the spike at
    ``spike_times[i]``; ``marker_names[i]`` names the marker at ``marker_times[i]``.
    """

    spike_times: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    channels: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, np.int64))
    marker_times: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    marker_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.spike_times = np.asarray(self.spike_times, np.float64).reshape(-1)
        self.channels = np.asarray(self.channels, np.int64).reshape(-1)
        self.marker_times = np.asarray(self.marker_times, np.float64).reshape(-1)
        self.marker_names = [str(n) for n in self.marker_names]
        if len(self.spike_times) != len(self.channels):
            raise RigError(f"{len(self.spike_times)} spike times but {len(self.channels)} channel "
                           "indices; give one channel per spike")
        if len(self.marker_times) != len(self.marker_names):
            raise RigError(f"{len(self.marker_times)} marker times but {len(self.marker_names)} "
                           "marker names; give one name per marker")


class SpikeSource(abc.ABC):
    """A live or recorded stream of spikes and markers; ``labels`` names its channels/units.

    ``outages``: the ``[start, end]`` stretches, recorder clock, in which the source was away (a live
    stream that broke off and was found again) and spikes may be missing; ``end`` is ``inf`` while it
    is away, and ``lost`` then says what went. Windows that overlap an outage are not to be counted
    (`in_outage`).
    """

    labels: tuple[str, ...]
    outages: Sequence[Sequence[float]] = ()
    lost = ""

    @property
    def away(self) -> bool:
        """The source is in an outage now: it delivers nothing until it is back."""
        return bool(self.outages) and self.outages[-1][1] == np.inf

    @abc.abstractmethod
    def poll(self) -> Events:
        """Events that arrived since the last call (never blocks for long)."""

    def now(self) -> float:
        """The recorder's clock now, for sources that can read it (a presenter aligns to it)."""
        raise RigError(f"{type(self).__name__} cannot read the recorder's clock; use a source "
                       "that can (replay, lsl) or align with sync pulses (fit_clock)")

    def close(self) -> None:
        """Release sockets or files."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CLOCK_BACK_S = 1.0  # a recorder clock that goes back further restarted (events may come a little out of order)


class RecorderClock:
    """The time a recorder's clock has reached, per stream: `advance` raises `RigError` when it goes back more than
    ``CLOCK_BACK_S``. A recorder restarts its clock when acquisition is stopped and started again, and a window
    counted across that would mix times of two clocks. ``recorder`` names it, ``restart`` says what restarts it."""

    def __init__(self, recorder: str, restart: str):
        self.recorder, self.restart = recorder, restart
        self.reached: dict[str, float] = {}

    def advance(self, times: Sequence[float], stream: str = "") -> None:
        """Times in the order the recorder sent them."""
        times = np.asarray(times, np.float64)
        if not len(times):
            return
        reached = np.maximum.accumulate(np.concatenate([[self.reached.get(stream, -np.inf)], times]))
        back = reached[:-1] - times > CLOCK_BACK_S
        if back.any():
            i = int(np.argmax(back))
            which = f" (stream {stream!r})" if stream else ""
            raise RigError(f"{self.recorder}'s clock{which} went back from {reached[i]:.3f} s to {times[i]:.3f} s: "
                           f"{self.restart}. Times from before and after it cannot be compared, so spikes would be "
                           "counted in the wrong windows: restart the rig program once the recorder runs again (the "
                           "server resends what the rig still owes)")
        self.reached[stream] = float(reached[-1])


class SpikeBuffer:
    """Everything a source delivered so far: sorted spike times per channel, markers by name."""

    def __init__(self, n_channels: int):
        self._spikes: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
        self._markers: dict[str, list[np.ndarray]] = {}

    def add(self, events: Events) -> None:
        if len(events.channels) and not (0 <= events.channels.min()
                                         and events.channels.max() < len(self._spikes)):
            raise RigError(f"spike channel index out of range 0..{len(self._spikes) - 1}; does "
                           "the source's label list match its spike stream?")
        for c in np.unique(events.channels):
            self._spikes[c].append(events.spike_times[events.channels == c])
        for name in set(events.marker_names):
            mask = np.array([n == name for n in events.marker_names])
            self._markers.setdefault(name, []).append(events.marker_times[mask])

    def spikes(self) -> list[np.ndarray]:
        """Sorted spike times of each channel."""
        return [np.sort(np.concatenate(parts)) if parts else np.empty(0) for parts in self._spikes]

    def markers(self, name: str) -> np.ndarray:
        """Sorted times of the markers called ``name``."""
        parts = self._markers.get(name, [])
        return np.sort(np.concatenate(parts)) if parts else np.empty(0)


@dataclasses.dataclass(frozen=True)
class ClockFit:
    """``recorder = recorder_ref + slope * (presenter - presenter_ref)``, fitted to sync pulses.

    The reference points (the pulses' mean times) keep the map exact at unix-time magnitudes.
    ``residual_rms_s`` and ``residual_max_s`` say how well the pulses fit a line: the jitter of
    the pulse timing, or a wrong pairing when large.
    """

    slope: float
    presenter_ref: float
    recorder_ref: float
    residual_rms_s: float
    residual_max_s: float
    n_pulses: int

    def to_recorder(self, presenter_times) -> np.ndarray:
        t = np.asarray(presenter_times, np.float64)
        return self.recorder_ref + self.slope * (t - self.presenter_ref)


def fit_clock(presenter_times: Sequence[float], recorder_times: Sequence[float]) -> ClockFit:
    """Least-squares line from the presenter's clock to the recorder's, over the same sync pulses.

    The i-th pulse the presenter sent must be the i-th the recorder saw. Evenly spaced pulses
    paired off by one fit just as well (same residual, every time one interval off): jitter the
    pulse intervals or check one known pulse (docs/rigs.md, "Clock alignment").
    """
    x = np.asarray(presenter_times, np.float64).reshape(-1)
    y = np.asarray(recorder_times, np.float64).reshape(-1)
    if len(x) != len(y):
        raise RigError(f"the presenter sent {len(x)} sync pulses but the recorder saw {len(y)}; "
                       "check the sync line, or drop the pulses from before recording started")
    if len(x) < 2 or np.ptp(x) == 0:
        raise RigError("need at least 2 sync pulses at different times to fit the clocks")
    xm, ym = x.mean(), y.mean()
    slope = float(np.dot(x - xm, y - ym) / np.dot(x - xm, x - xm))
    residual = (y - ym) - slope * (x - xm)
    return ClockFit(slope, float(xm), float(ym), float(np.sqrt(np.mean(residual**2))),
                    float(np.abs(residual).max()), len(x))


@dataclasses.dataclass(frozen=True)
class WindowCounts:
    """Rates (spikes/s) per presentation and channel: ``rates`` after onset, ``baseline`` before."""

    rates: np.ndarray  # (presentations, channels)
    baseline: np.ndarray | None  # (presentations, channels) or None without a baseline window
    onsets: np.ndarray  # onsets on the recorder's clock, seconds


def count_in_window(spikes: Sequence[np.ndarray], onsets: Sequence[float],
                    window_ms: tuple[float, float],
                    baseline_ms: tuple[float, float] | None = None,
                    clock: ClockFit | None = None) -> WindowCounts:
    """Spike counts in ``[onset + start, onset + end)`` divided by the window length.

    ``spikes``: sorted spike times per channel on the recorder's clock. ``onsets``: on the
    presenter's clock, mapped through ``clock`` (None: already on the recorder's clock). ``baseline_ms`` is a window relative to onset
    (e.g. ``(-100, 0)``); windows are half-open, so adjacent windows never count a spike twice.
    """
    t = np.asarray(onsets, np.float64).reshape(-1)
    if clock is not None:
        t = clock.to_recorder(t)

    def rates(window: tuple[float, float]) -> np.ndarray:
        start, end = window
        if not end > start:
            raise RigError(f"window {window} ms: end must be after start")
        lo, hi = t + start / 1000, t + end / 1000
        out = np.empty((len(t), len(spikes)))
        for c, s in enumerate(spikes):
            out[:, c] = np.searchsorted(s, hi, "left") - np.searchsorted(s, lo, "left")
        return out / ((end - start) / 1000)

    return WindowCounts(rates(window_ms), None if baseline_ms is None else rates(baseline_ms), t)


def in_outage(onsets, windows_ms: Sequence[tuple[float, float]], outages: Sequence[Sequence[float]],
              latency_s: float = 0.0) -> np.ndarray:
    """Which presentations overlap an outage, from their earliest window start to their latest window end.

    ``onsets``: seconds, recorder clock; ``windows_ms``: the windows counted around each onset (response,
    baseline); ``outages``: ``[start, end]`` in seconds, ``end`` inf while still away. An outage starts at
    the last moment the source was known complete, and spikes up to ``latency_s`` older may not have
    arrived by then, so each is widened back by that much. Windows are half-open, as counted.
    """
    t = np.asarray(onsets, np.float64).reshape(-1)
    lo = t + min(w[0] for w in windows_ms) / 1000
    hi = t + max(w[1] for w in windows_ms) / 1000
    hit = np.zeros(len(t), bool)
    for start, end in outages:
        hit |= (lo < end) & (hi > start - latency_s)
    return hit

