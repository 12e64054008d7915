"""The presenter: viewing geometry, flip statistics, and a whole session under Xvfb with a real
pyglet window, the replay source and `actmax serve`, as separate processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rig_client.present import Display, LateSpikes, flip_statistics
from rig_client.spikes import Events
from rig_client.spikes.replay import save
from server.cli import main
from tests.rig_client.conftest import run_session
from tests.rig_client.test_bridge import generation_statuses, stored_presentations


def test_no_display_is_one_line_that_says_what_to_do(tmp_path):
    save(tmp_path / "rec.npz", Events(np.array([0.5]), np.array([0])), ["elec1-u1"])
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "-m", "server.cli", "rig", "present", "--spikes",
                             f"replay:{tmp_path / 'rec.npz'}"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("actmax rig: no display: run it on the rig's "
                                                      "screen, or under xvfb-run for a test")
    assert "Traceback" not in result.stderr


def test_without_pyglet_it_says_what_to_install(tmp_path):
    save(tmp_path / "rec.npz", Events(np.array([0.5]), np.array([0])), ["elec1-u1"])
    program = ("import sys; sys.modules['pyglet'] = None  # as if it were not installed\n"
               "from server.cli import main\n"
               f"sys.exit(main(['rig', 'present', '--spikes', 'replay:{tmp_path / 'rec.npz'}']))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pyglet, which is not installed: pip install 'actmax[presenter]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("window", [["-100", "50"], ["-70000", "-100"]])
def test_a_baseline_window_the_server_would_refuse_is_refused_before_anything_connects(window, capsys):
    """The server accepts a baseline within -60000 <= START < END <= 0 ms: outside it, it refused the results
    of a whole batch once shown. MISSING is never read: the flag is refused first."""
    assert main(["rig", "present", "--spikes", "replay:/nonexistent/rec.npz", "--baseline-ms", *window]) == 2
    assert (f"--baseline-ms {' '.join(window)}: a baseline window lies before onset, within -60000 <= START < END "
            "<= 0 ms (the protocol's limit), e.g. -100 0") in capsys.readouterr().err


def test_a_stimulus_under_a_pixel_is_refused_before_anything_connects(tmp_path, xvfb):
    """0.05 deg is 0 px on a 400 px window 53 cm wide at 57 cm: nothing would be shown, and rates sent as data.
    No server listens at the endpoint: a presenter that went on would wait for one until the timeout."""
    save(tmp_path / "rec.npz", Events(np.array([0.5]), np.array([0])), ["elec1-u1"])
    result = subprocess.run([sys.executable, "-m", "server.cli", "rig", "present", "--endpoint", "tcp://127.0.0.1:9",
                             "--spikes", f"replay:{tmp_path / 'rec.npz'}", "--window", "400x300", "--size-deg", "0.05"],
                            capture_output=True, text=True, env={**os.environ, "DISPLAY": xvfb}, timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("--size-deg 0.05 comes to 0 px on this display (400 px over 53 cm seen from 57 cm): nothing would be "
            "shown. Give at least --size-deg 0.13 (1 px), or check --width-cm and --distance-cm") in result.stderr
    assert "Traceback" not in result.stderr


def test_display_pixels_from_degrees():
    display = Display(distance_cm=57.0, width_cm=53.0, width_px=1920)
    full_width_deg = math.degrees(2 * math.atan(53.0 / 2 / 57.0))
    assert display.pixels(full_width_deg) == 1920  # the whole screen
    assert display.pixels(2.0) == pytest.approx(2 * display.pixels(1.0), abs=1)  # ~linear when small
    assert Display(100.0, 100.0, 1000).pixels(math.degrees(2 * math.atan(0.1))) == 200  # tan = 0.1


def test_flip_statistics():
    stats = flip_statistics([1 / 60] * 9 + [3 / 60], refresh_hz=60)
    assert stats["flips"] == 10 and stats["dropped"] == 1
    assert stats["max_ms"] == pytest.approx(50.0) and stats["median_ms"] == pytest.approx(1000 / 60)
    assert stats["mean_ms"] == pytest.approx((9 * 1000 / 60 + 50) / 10)
    assert flip_statistics([], 60) == {"flips": 0}


def test_spikes_that_arrive_after_their_window_was_counted_are_reported_once_per_batch():
    late = LateSpikes(latency_s=0.05)
    late.check(Events([10.1], [0]), now=10.5)  # nothing counted yet
    assert late.report() is None
    # two onsets at 10 and 11 s: windows [10.05, 10.2), [11.05, 11.2) and baselines [9.9, 10), [10.9, 11)
    late.counted("b1", [10.05, 11.05, 9.9, 10.9], [10.2, 11.2, 10.0, 11.0])
    late.check(Events([11.1, 10.5, 11.25], [0, 0, 0]), now=11.32)  # one in a window, two between
    late.check(Events([11.19, 10.95], [1, 0]), now=11.4)  # a window's and a baseline's
    assert late.report() == (
        "batch b1: 3 spikes arrived after its rates were counted and sent, the last by 200 ms after its "
        "last window closed: the recorder's latency is over --latency-ms 50; raise it to at least 200 "
        "(measured at the poll that brought them, so up to a poll interval more than needed)")
    assert late.report() is None  # once
    late.counted("b2", [12.05], [12.2])
    late.check(Events([11.15, 12.3], [0, 0]), now=12.35)  # b1's window is no longer watched
    assert late.report() is None


@pytest.mark.slow
def test_session_runs_to_completion_on_screen(tmp_path, xvfb, actmax_server):
    from server.launch import stop
    from tests.server.test_end_to_end import wait_until

    rng = np.random.default_rng(0)
    duration = 600.0  # seconds of recording, longer than the session
    spikes = [np.sort(rng.uniform(0, duration, int(rate * duration))) for rate in (40, 5)]
    save(tmp_path / "rec.npz", Events(np.concatenate(spikes), np.repeat([0, 1], [len(s) for s in spikes])),
         ["elec1-u1", "elec2-u1"])
    server, api = actmax_server
    record = tmp_path / "presented.jsonl"
    with open(tmp_path / "present.log", "wb") as log:
        presenter = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "rig", "present", "--endpoint", server.zmq_endpoint,
             "--rig", "screen-rig", "--spikes", f"replay:{tmp_path / 'rec.npz'}", "--window", "400x300",
             "--duration-ms", "50", "--isi-ms", "30", "--record", str(record)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DISPLAY": xvfb})
    processes = [(server.process, server.log_path), (presenter, tmp_path / "present.log")]
    try:
        thread = run_session(api, "screen-rig", population=4, references=1, generations=2)
        wait_until(lambda: api.get(f"/threads/{thread['id']}")["status"] == "finished", 240,
                   "the thread to finish", processes)
    finally:
        stop(presenter)

    # the geometry it shows with is logged, here from the defaults of --width-cm, --distance-cm and --size-deg
    assert (f"display: 400 px over 53 cm seen from 57 cm; stimuli 4 deg = {Display(57, 53, 400).pixels(4)} px, "
            "50 ms on, 30 ms blank") in (tmp_path / "present.log").read_text()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    shown, stats = lines[:-1], lines[-1]["flip_statistics"]
    assert stats["flips"] >= len(shown) > 0
    stored = {pid: (sid, rates) for pid, sid, _, rates, _ in stored_presentations(server, "screen-rig")}
    assert generation_statuses(server, thread["id"]) == ["complete", "complete"]
    sent = [p for p in shown if p["sent"]]
    assert {p["presentation_id"]: (p["stimulus_id"], p["rates"]) for p in sent} == stored  # each once
    for p in shown:  # rates: the recorded spikes in the window after the mapped onset, recounted here
        lo, hi = (p["onset_recorder"] + w / 1000 for w in p["window_ms"])
        want = [np.sum((s >= lo) & (s < hi)) / (hi - lo) for s in spikes]
        np.testing.assert_allclose(p["rates"], want)
