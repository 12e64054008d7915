"""``actmax rig present``: show each batch full-screen and answer it with rates from a spike source.

Each stimulus is shown at a size in degrees of visual angle (from the screen's distance and
width), for a duration, then a blank inter-stimulus interval. A photodiode patch in the bottom-left
corner is white exactly while a stimulus is on. Every flip is timed; an interval longer than 1.5
refresh periods is a dropped frame. Rates are counted in the batch's response window on the
recorder's clock, the presenter's clock mapped onto it by a least-squares fit over (flip time,
recorder time) pairs read at every onset. Drawing uses pyglet (OpenGL).

A live source that breaks off (an LSL outlet restarted) stops the showing, and the rig leaves the
server until the source is back. Showings whose windows overlap the outage are not answered: the
server resends them, in the batch still owed, when the rig connects again.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rig_client import RigError
from rig_client.connection import (
    add_connection_arguments, connection_keys, non_negative, non_negative_int, positive, rig_setup,
)
from rig_client.protocol import MAX_WINDOW_MS
from rig_client.spikes import ClockFit, SpikeBuffer, SpikeSource, count_in_window, fit_clock, in_outage

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Display:
    """Viewing geometry: eye-to-screen distance and visible screen width (cm), width in pixels."""

    distance_cm: float
    width_cm: float
    width_px: int

    def pixels(self, degrees: float) -> int:
        """On-screen size in pixels of ``degrees`` of visual angle, centred on the line of sight."""
        return round(2 * self.distance_cm * math.tan(math.radians(degrees) / 2)
                     * self.width_px / self.width_cm)


@dataclasses.dataclass
class Trial:
    """One showing: onset flip (presenter clock, s), flips while on, and dropped frames."""

    onset: float
    flips: list[float]
    dropped_frames: int
    recorder_time: float | None  # the recorder's clock read right after the onset flip


class Presenter:
    """Draws stimuli in a pyglet window and times its flips (``clock``: the presenter's clock)."""

    def __init__(self, window, display: Display, *, size_deg: float, duration_ms: float,
                 isi_ms: float, refresh_hz: float, photodiode_px: int = 40,
                 clock: Callable[[], float] = time.perf_counter):
        import pyglet

        if min(size_deg, duration_ms, refresh_hz) <= 0 or isi_ms < 0:
            raise RigError("need size, duration and refresh rate > 0 and an ISI >= 0")
        self.pyglet, self.window, self.clock = pyglet, window, clock
        self.size_px = display.pixels(size_deg)
        if self.size_px < 1:
            one_px = math.degrees(2 * math.atan(display.width_cm / display.width_px / 2 / display.distance_cm))
            raise RigError(f"--size-deg {size_deg:g} comes to {self.size_px} px on this display ({display.width_px} "
                           f"px over {display.width_cm:g} cm seen from {display.distance_cm:g} cm): nothing would "
                           f"be shown. Give at least --size-deg {one_px:.2g} (1 px), or check --width-cm and "
                           "--distance-cm")
        self.duration_s, self.isi_s, self.period = duration_ms / 1000, isi_ms / 1000, 1 / refresh_hz
        self.patch = pyglet.shapes.Rectangle(0, 0, photodiode_px, photodiode_px, color=(0, 0, 0))
        self.intervals: list[float] = []  # every flip-to-flip interval while a stimulus was on
        self._last_flip = None

    def _flip(self) -> float:
        """Swap buffers; without a blocking vsync (e.g. Xvfb) wait out the refresh period."""
        self.window.flip()
        now = self.clock()
        if self._last_flip is not None and now - self._last_flip < self.period:
            time.sleep(self.period - (now - self._last_flip))
            now = self.clock()
        self._last_flip = now
        return now

    def _draw(self, sprite) -> float:
        self.window.switch_to()
        self.window.dispatch_events()
        self.window.clear()
        if sprite is not None:
            sprite.draw()
        self.patch.color = (255, 255, 255) if sprite is not None else (0, 0, 0)
        self.patch.draw()
        return self._flip()

    def sprite(self, image: np.ndarray):
        """A centred sprite of an ``(H, W, 3)`` uint8 image, scaled to the configured size."""
        h, w, _ = image.shape
        data = self.pyglet.image.ImageData(w, h, "RGB", np.ascontiguousarray(image).tobytes(),
                                           pitch=-3 * w)  # rows top to bottom
        sprite = self.pyglet.sprite.Sprite(data)
        sprite.scale = self.size_px / max(w, h)
        sprite.position = ((self.window.width - sprite.width) / 2,
                           (self.window.height - sprite.height) / 2, 0)
        return sprite

    def show(self, image: np.ndarray, recorder_now: Callable[[], float] | None) -> Trial:
        """Stimulus on for the duration, then off for the ISI; returns its timing."""
        sprite = self.sprite(image)
        onset = self._draw(sprite)
        recorder_time = recorder_now() if recorder_now is not None else None
        flips = [onset]
        while flips[-1] - onset < self.duration_s - self.period / 2:
            flips.append(self._draw(sprite))
        offset = self._draw(None)
        intervals = np.diff(flips + [offset])
        self.intervals.extend(intervals.tolist())
        while self.clock() - offset < self.isi_s - self.period / 2:
            self._draw(None)
        return Trial(onset, flips, int(np.sum(intervals > 1.5 * self.period)), recorder_time)


def flip_statistics(intervals: Sequence[float], refresh_hz: float) -> dict:
    """Flip-interval figures in ms: mean, SD, median, 99th percentile, max, dropped count."""
    x = np.asarray(intervals) * 1000
    if not len(x):
        return {"flips": 0}
    return {"flips": len(x), "mean_ms": float(x.mean()), "sd_ms": float(x.std()),
            "median_ms": float(np.median(x)), "p99_ms": float(np.percentile(x, 99)),
            "max_ms": float(x.max()), "dropped": int(np.sum(x > 1500 / refresh_hz))}


# --- spike sources on the command line ----------------------------------------------------------


def _replay(arg: str) -> SpikeSource:
    from rig_client.spikes.replay import ReplaySource

    return ReplaySource(arg, paced=True)


def _lsl(arg: str) -> SpikeSource:
    from rig_client.spikes.lsl import LSLSource

    spikes, _, markers = arg.partition(",")
    return LSLSource(spikes, markers or None, reconnect=True)


# Sources that can read the recorder's clock, which the presenter aligns its flips to.
SOURCES = {"replay": _replay, "lsl": _lsl}


def open_source(spec: str) -> SpikeSource:
    """``KIND:ARG``: replay:FILE.npz (paced in real time) or lsl:SPIKES[,MARKERS]."""
    kind, _, arg = spec.partition(":")
    if kind not in SOURCES or not arg:
        raise RigError(f"--spikes {spec!r}: expected replay:FILE.npz or lsl:SPIKES[,MARKERS]")
    return SOURCES[kind](arg)


# --- the rig program ----------------------------------------------------------------------------


class LateSpikes:
    """Spikes that arrived after the windows they fall in were counted and sent: the recorder's
    latency outran ``--latency-ms``. `counted` notes a batch's windows, `check` every later poll,
    and `report` says, once per batch, how many came late and which latency would have covered them.
    """

    def __init__(self, latency_s: float):
        self.latency_s = latency_s
        self.batch_id: str | None = None
        self._lo = self._hi = np.empty(0)
        self._closed = 0.0  # the batch's last window end, recorder clock
        self.n, self.after_s = 0, 0.0  # spikes late, and latest arrival after self._closed

    def counted(self, batch_id: str, lo: np.ndarray, hi: np.ndarray) -> None:
        """A batch was counted over the windows ``[lo, hi)`` (recorder clock)."""
        self.batch_id, self._lo, self._hi = batch_id, np.asarray(lo), np.asarray(hi)
        self._closed, self.n, self.after_s = float(self._hi.max()), 0, 0.0

    def check(self, events, now: float) -> None:
        """Note the spikes of a poll made at recorder time ``now`` that fall in counted windows."""
        t = events.spike_times[:, None]
        late = int(np.sum(((t >= self._lo) & (t < self._hi)).any(axis=1)))
        if late:
            self.n += late
            self.after_s = max(self.after_s, now - self._closed)

    def report(self) -> str | None:
        """The warning for the counted batch (None: nothing came late), once."""
        if not self.n:
            return None
        n, self.n = self.n, 0
        need = math.ceil(self.after_s * 1000 - 1e-6)  # whole ms, not 201 for 200.0000001
        return (f"batch {self.batch_id}: {n} spikes arrived after its rates were counted and sent, "
                f"the last by {need} ms after its last window closed: the recorder's latency is over "
                f"--latency-ms {self.latency_s * 1000:g}; raise it to at least {need} (measured at the poll "
                "that brought them, so up to a poll interval more than needed)")


class PresenterRig:
    """Batches from the server -> screen -> spike counts -> RESULTS with trial facts.

    ``connect()`` returns a `RigClient`. While the spike source is away the rig leaves the server, which then
    stops the clock of the batch the rig owes and keeps it; once the source is back the rig connects again,
    and the server resends what is still owed, the showings the outage spoiled included.
    """

    def __init__(self, connect: Callable, presenter: Presenter, source: SpikeSource, *,
                 baseline_ms: tuple[float, float], latency_ms: float, record: Path | None):
        self.presenter, self.source = presenter, source
        self.buffer = SpikeBuffer(len(source.labels))
        self.now = source.now
        self.now()  # fails now, with the reason, for a source without a clock readout
        self.baseline_ms, self.latency_s = baseline_ms, latency_ms / 1000
        self.late = LateSpikes(self.latency_s)
        self.pairs: list[tuple[float, float]] = []  # (presenter, recorder) times at every onset
        self.record = record
        self.unix_offset = time.time() - presenter.clock()
        self.stop = threading.Event()
        self.connect = connect
        self.client = connect()

    def run(self) -> None:
        while not self.stop.is_set():
            batch = self.client.next_batch(timeout=0.2)
            self.poll()
            if self.source.away:  # a batch in hand is not shown: the server resends it once the rig is back
                self.rejoin_once_back()
            elif batch is not None and self.serve(batch):
                self.rejoin_once_back()
        self.warn_late()

    def poll(self) -> None:
        """What the source delivered into the buffer; a `RigError` (a source that cannot go on) ends the rig."""
        was_away = self.source.away
        events = self.source.poll()
        self.late.check(events, self.now())
        self.buffer.add(events)
        if self.source.away and not was_away:
            log.warning("%s; showing nothing until it is back (restart its outlet; Ctrl-C stops this rig)",
                        self.source.lost)
        elif was_away and not self.source.away:
            start, end = self.source.outages[-1]
            log.warning("the spike source is back after %.1f s", end - start)

    def rejoin_once_back(self) -> None:
        """Leave the server, poll the source until it is back, and connect again once its baseline window is clear
        of the outage: the server then resends the batch the rig owes, less what it answered."""
        self.client.close()
        left = told = time.monotonic()
        log.warning("left the server until the spike source is back; it keeps the batch this rig owes")
        while self.source.away and not self.stop.wait(0.3):
            self.poll()
            if time.monotonic() - told > 60:
                told = time.monotonic()
                log.warning("still waiting for the spike source, %.0f s now", told - left)
        # A HELLO within two heartbeats of the rig's last message would read as another program using its name.
        clear_s = self.source.outages[-1][1] - min(self.baseline_ms[0], 0.0) / 1000 - self.now()
        wait_s = max(left + 2 * self.client.heartbeat_s + 0.5 - time.monotonic(), clear_s)
        if not self.stop.wait(max(wait_s, 0.0)):  # a server silent now is down, not refusing the rig's keys
            self.client = self.connect(welcomed_before=self.client.ever_welcomed)

    def warn_late(self) -> None:
        message = self.late.report()
        if message:
            log.warning(message)

    def serve(self, batch) -> bool:
        """Show the batch and answer it; True when an outage of the source left some of it unanswered."""
        from rig_client.trials import TrialPresentation, to_send

        trials = []
        for stimulus in batch.stimuli:
            trials.append(self.presenter.show(stimulus.image(), self.now))
            self.poll()
            if self.source.away:  # the rest would have no spikes to count: it stays owed
                break
        self.pairs += [(t.onset, t.recorder_time) for t in trials]
        fit = fit_clock(*zip(*self.pairs)) if len(self.pairs) >= 2 else \
            ClockFit(1.0, self.pairs[0][0], self.pairs[0][1], 0.0, 0.0, 1)
        last = fit.to_recorder(trials[-1].onset) + batch.response_window_ms[1] / 1000
        while self.now() < last + self.latency_s:  # let the last window's spikes arrive
            time.sleep(0.01)
        self.poll()
        counts = count_in_window(self.buffer.spikes(), [t.onset for t in trials],
                                 batch.response_window_ms, self.baseline_ms, clock=fit)
        self.warn_late()  # the previous batch's late spikes, all in by now
        windows = [np.asarray(w) / 1000 for w in (batch.response_window_ms, self.baseline_ms)]
        missing = in_outage(counts.onsets, (batch.response_window_ms, self.baseline_ms), self.source.outages,
                            self.latency_s)
        self.late.counted(batch.batch_id, np.concatenate([counts.onsets + w[0] for w in windows]),
                          np.concatenate([counts.onsets + w[1] for w in windows]))
        presentations = [
            TrialPresentation(s.stimulus_id, counts.rates[i].tolist(), t.onset + self.unix_offset,
                              tuple(batch.response_window_ms), dropped_frames=t.dropped_frames,
                              baseline_rates=counts.baseline[i].tolist(),
                              baseline_window_ms=self.baseline_ms)
            for i, (s, t) in enumerate(zip(batch.stimuli, trials))]
        # Those in an outage would miss spikes, those a 1.0 server would score flagged: both are shown again.
        sent = to_send([p for p, gap in zip(presentations, missing) if not gap], self.client.minor)
        owed = len(trials) < len(batch.stimuli) or bool(missing.any())
        if sent or not owed:
            self.client.send_results(batch.batch_id, sent, done=not owed)
        log.info("batch %s: %d of %d shown, %d with dropped frames, %d in the spike source's outage (%d kept back "
                 "from a 1.0 server); clock fit residual %.3f ms RMS over %d onsets", batch.batch_id, len(trials),
                 len(batch.stimuli), sum(p.flagged for p in presentations), int(missing.sum()),
                 len(presentations) - int(missing.sum()) - len(sent), fit.residual_rms_s * 1000, fit.n_pulses)
        if self.record:
            with open(self.record, "a", encoding="utf-8") as f:
                for p, t, rec, gap in zip(presentations, trials, counts.onsets, missing):
                    f.write(json.dumps({"batch_id": batch.batch_id, **p.to_json(),
                                        "onset_recorder": float(rec), "sent": p in sent, "in_outage": bool(gap),
                                        "flips": len(t.flips)}) + "\n")
        return owed


def window_size(text: str) -> tuple[int, int]:
    """argparse type: ``WIDTHxHEIGHT`` in pixels, both > 0."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if min(w, h) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT in pixels, e.g. 800x600")
    return w, h


def open_window(size: tuple[int, int] | None):
    """A pyglet window of ``size``, or full screen; `RigError` where there is no display."""
    try:
        import pyglet.window  # opens a hidden window at import: needs a display too

        if size:
            return pyglet.window.Window(*size, vsync=True, caption="actmax")
        return pyglet.window.Window(fullscreen=True, vsync=True)
    except ImportError:
        raise RigError("rig present draws with pyglet, which is not installed: "
                       "pip install 'actmax[presenter]'") from None
    except Exception as exc:  # pyglet has a NoSuchDisplayException per platform
        if type(exc).__name__ != "NoSuchDisplayException":
            raise
        raise RigError("no display: run it on the rig's screen, or under xvfb-run for a test") from None


def add_parser(rig_commands) -> None:
    present = rig_commands.add_parser(
        "present", help="show batches full-screen and answer them from a spike source",
        description="Connect as a rig, show every batch full-screen (size in degrees, duration, "
        "ISI, photodiode patch), time every flip, count spikes from a spike source in the "
        "response window and send the rates with trial facts. See docs/rigs.md.")
    add_connection_arguments(present, "rig")
    present.add_argument("--spikes", required=True, metavar="KIND:ARG",
                         help="spike source: replay:FILE.npz (paced) or lsl:SPIKES[,MARKERS]; an LSL stream "
                         "that breaks off is waited for, and the server resends what its outage spoiled")
    geometry = present.add_argument_group("display")
    geometry.add_argument("--distance-cm", type=positive, default=57.0,
                          help="eye to screen distance (default 57: 1 cm = 1 degree)")
    geometry.add_argument("--width-cm", type=positive, default=53.0,
                          help="visible screen width (default 53: measure yours, the stimulus size depends on it)")
    geometry.add_argument("--size-deg", type=positive, default=4.0,
                          help="stimulus size in degrees, at least 1 px on the screen (default 4)")
    geometry.add_argument("--window", type=window_size, metavar="WxH",
                          help="a window of this size instead of full screen (for tests and demos)")
    geometry.add_argument("--refresh-hz", type=positive, default=60.0,
                          help="the display's refresh rate (default 60)")
    geometry.add_argument("--photodiode-px", type=non_negative_int, default=40,
                          help="photodiode patch size in pixels (default 40; 0: none)")
    timing = present.add_argument_group("timing")
    timing.add_argument("--duration-ms", type=positive, default=100.0, help="stimulus duration (default 100)")
    timing.add_argument("--isi-ms", type=non_negative, default=100.0, help="blank between stimuli (default 100)")
    timing.add_argument("--baseline-ms", type=float, nargs=2, default=(-100.0, 0.0),
                        metavar=("START", "END"), help=f"baseline window relative to onset, "
                        f"{-MAX_WINDOW_MS} <= START < END <= 0 (default -100 0)")
    timing.add_argument("--latency-ms", type=non_negative, default=50.0,
                        help="wait this long past a batch's last response window for the recorder's spikes "
                        "before counting (default 50); a warning says when spikes came later")
    present.add_argument("--record", type=Path, help="append every presentation to this JSON-lines "
                         "file, and the flip statistics at exit")
    present.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rig_client.client import RigClient
    from rig_client.version import package_version

    start, end = args.baseline_ms
    if not (math.isfinite(start) and math.isfinite(end) and start < end):
        raise RigError(f"--baseline-ms {start:g} {end:g}: END must be after START, e.g. -100 0")
    if start < -MAX_WINDOW_MS or end > 0:  # the server would refuse the batch's results once shown
        raise RigError(f"--baseline-ms {start:g} {end:g}: a baseline window lies before onset, within "
                       f"{-MAX_WINDOW_MS} <= START < END <= 0 ms (the protocol's limit), e.g. -100 0")
    if args.size_deg >= 180:
        raise RigError(f"--size-deg {args.size_deg:g}: a stimulus must be under 180 degrees wide")
    keys = connection_keys(args)
    if args.record:  # an unwritable path fails now, not after the first batch
        try:
            open(args.record, "a", encoding="utf-8").close()
        except OSError as exc:
            raise RigError(f"--record {args.record}: {exc.strerror}; give a file in a folder you "
                           "can write to") from None
    source = open_source(args.spikes)
    window = open_window(args.window)
    presenter = Presenter(window, Display(args.distance_cm, args.width_cm, window.width),
                          size_deg=args.size_deg, duration_ms=args.duration_ms,
                          isi_ms=args.isi_ms, refresh_hz=args.refresh_hz,
                          photodiode_px=args.photodiode_px)
    log.info("display: %d px over %g cm seen from %g cm; stimuli %g deg = %d px, %g ms on, %g ms blank",
             window.width, args.width_cm, args.distance_cm, args.size_deg, presenter.size_px,
             args.duration_ms, args.isi_ms)
    try:
        setup = {"rig_program": f"actmax rig present {package_version()}", "spikes": args.spikes[:256],
                 "display": {"width_px": window.width, "width_cm": args.width_cm, "distance_cm": args.distance_cm,
                             "refresh_hz": args.refresh_hz, "photodiode_px": args.photodiode_px},
                 "stimulus": {"size_deg": args.size_deg, "size_px": presenter.size_px,
                              "duration_ms": args.duration_ms, "isi_ms": args.isi_ms},
                 "baseline_ms": [start, end], "latency_ms": args.latency_ms}
        connect = functools.partial(RigClient, args.endpoint, args.rig, channels=len(source.labels),
                                    labels=source.labels, setup=rig_setup(args, setup), **keys)
        rig = PresenterRig(connect, presenter, source, baseline_ms=(start, end), latency_ms=args.latency_ms,
                           record=args.record)
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: rig.stop.set())
            rig.run()
        finally:
            rig.client.close()
    finally:
        stats = flip_statistics(presenter.intervals, args.refresh_hz)
        log.info("flip intervals: %s", stats)
        if args.record:
            with open(args.record, "a", encoding="utf-8") as f:
                f.write(json.dumps({"flip_statistics": stats}) + "\n")
        source.close()
        window.close()
    return 0
