"""The LSL adapter: conversion on recorded chunks, and real pylsl streams kept on loopback.

Packets stay on this machine twice over: liblsl is configured for machine scope with 127.0.0.1 as
its only peer and IPv6 off, and the process runs in a network namespace that has only loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rig_client import RigError
from rig_client.spikes.lsl import to_events

LSL_API_CFG = """\
[ports]
IPv6 = disable

[multicast]
ResolveScope = machine
ListenAddress = 127.0.0.1

[lab]
KnownPeers = {127.0.0.1}
"""


def test_recorded_chunks_become_events():
    events = to_events([[1], [0], [1]], [10.0, 10.5, 11.0], [["onset"], ["sync"]], [10.2, 10.9])
    np.testing.assert_array_equal(events.channels, [1, 0, 1])
    np.testing.assert_array_equal(events.spike_times, [10.0, 10.5, 11.0])
    assert events.marker_names == ["onset", "sync"]
    assert len(to_events([], []).spike_times) == 0
    assert to_events([], [], [[7]], [10.3]).marker_names == ["7"]  # an event code, by its digits


@pytest.mark.parametrize("unit", ["u1", 1.7])
def test_a_spike_sample_that_is_no_unit_index_is_refused(unit):
    """A string would fail with a bare "invalid literal for int()", and 1.7 was counted for unit 1."""
    with pytest.raises(RigError, match=f"LSL spike sample {unit!r} is no unit index: each sample must be the "
                                       "integer index of the unit that fired, in one int32 channel"):
        to_events([[0], [unit]], [10.0, 10.5])


def loopback_only() -> list[str]:
    """A command prefix that runs a program with loopback as its only network, or skip."""
    pytest.importorskip("pylsl", reason="pip install 'actmax[lsl]' to test the LSL adapter")
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    probe = [unshare, "-rn", ip, "link", "set", "lo", "up"] if unshare and ip else None
    if probe is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -rn` (user + network namespaces) and `ip` to keep LSL "
                    "multicast on loopback for certain; the recorded-data test still runs")
    return [unshare, "-rn", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"]


def run_isolated(tmp_path, script: str, *args: str, env: dict | None = None, timeout: float = 60) -> dict:
    """JSON printed by ``script`` run on loopback only, with the machine-scope lsl_api.cfg."""
    prefix = loopback_only()
    (tmp_path / "lsl_api.cfg").write_text(LSL_API_CFG)
    done = subprocess.run([*prefix, sys.executable, str(Path(__file__).with_name(script)), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {}), "LSLAPICFG": str(tmp_path / "lsl_api.cfg")})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_lsl_streams_on_loopback(tmp_path):
    out = run_isolated(tmp_path, "lsl_loopback.py")
    assert out["labels"] == ["elec1-unit1", "elec2-unit1"] and out["received"] == 6
    assert abs(out["onset_error"]) < 1e-3  # clock-synchronised stamps on one machine
    # window [50, 200) ms: unit 0 fired at +60 and +100 ms, unit 1 at +150; baseline [-100, 0)
    np.testing.assert_allclose(out["rates"], [[2 / 0.15, 1 / 0.15]])
    np.testing.assert_allclose(out["baseline"], [[0.0, 1 / 0.1]])


def test_a_lost_stream_fails_the_source_instead_of_reporting_zero_spikes(tmp_path):
    """The outlet's program ends: `poll` raises, naming the stream, where liblsl used to reconnect
    forever while every window counted 0 spikes/s."""
    out = run_isolated(tmp_path, "lsl_lost.py")
    assert out["received"] == 1
    assert out["error"].startswith("LSL stream 'spikes-") and "' was lost (its outlet stopped" in out["error"]
    assert "Restart its outlet, then this rig" in out["error"]


def test_a_spike_stream_of_another_format_or_clock_is_refused_naming_it(tmp_path):
    """Two channels, strings or floats are refused when the stream is opened, not at its first spikes; spikes
    stamped with time.time() at the first poll that brings them, where every window would count 0 spikes/s."""
    out = run_isolated(tmp_path, "lsl_checks.py")
    need = ("; a spike stream needs one integer channel (int32), each sample the index of the unit that fired: "
            "publish it with rig_client.spikes.lsl.spike_outlet")
    assert re.fullmatch(r"LSL stream 'two_channels-\w+' has 2 int32 channel\(s\)", out["two_channels"].split(";")[0])
    assert re.fullmatch(r"LSL stream 'string-\w+' has 1 string channel\(s\)", out["string"].split(";")[0])
    assert re.fullmatch(r"LSL stream 'float-\w+' has 1 float32 channel\(s\)", out["float"].split(";")[0])
    assert all(need in out[case] for case in ("two_channels", "string", "float"))
    markers = ("; a marker stream needs one string channel, each sample the name of an event (or one integer "
               "channel of event codes): publish it with rig_client.spikes.lsl.marker_outlet")
    assert re.fullmatch(r"LSL stream 'markers_two_channels-\w+' has 2 string channel\(s\)",
                        out["markers_two_channels"].split(";")[0])
    assert re.fullmatch(r"LSL stream 'markers_float-\w+' has 1 float32 channel\(s\)", out["markers_float"].split(";")[0])
    assert all(markers in out[case] for case in ("markers_two_channels", "markers_float"))
    assert out["markers_int"] is None  # event codes are read, by their digits
    offset = re.fullmatch(r"LSL stream 'unix_time-\w+' stamps its samples \+(\d+) s from this machine's LSL clock "
                          r"\(more than 300 s\): its outlet stamps them on another clock \(such as time.time\(\)\), "
                          r"so every window would count 0 spikes/s. Stamp each sample with pylsl.local_clock\(\), "
                          "or push it without a time stamp so that LSL stamps it", out["unix_time"])
    assert offset and abs(int(offset.group(1)) - out["offset"]) < 5, out["unix_time"]


def test_a_source_that_reconnects_records_the_outage_and_refuses_other_units(tmp_path):
    """``reconnect=True``: the lost stream is an outage from the last complete poll until it is found again; spikes
    pushed after that come through; a stream back with other units fails the source."""
    out = run_isolated(tmp_path, "lsl_lost.py", "reconnect")
    assert out["received"] == 1 and out["error"] is None and "' was lost (its outlet stopped" in out["lost"]
    ((start, end),) = out["outage_while_away"]
    assert end is None or end == float("inf")  # JSON writes inf as Infinity
    assert out["first_spike"] < start <= out["deleted_at"]  # the last poll before the outlet went: it was complete
    assert out["back_error"] is None
    ((start_again, end),) = out["outages"]
    assert start_again == start and start < end < out["stamp"]
    assert out["after"] == [pytest.approx(out["stamp"], abs=1e-3)]  # the restarted outlet's spike (clock-synced)
    assert "came back listing units ['elec1-unit1', 'elec2-unit1'], not ['elec1-unit1']" in out["relabelled"]


def assert_rates_recount(out) -> None:
    """Each presentation's rates are the published spikes in its windows around its mapped onset."""
    spikes = [np.asarray(s) for s in out["spikes"]]
    for p in out["presented"]:
        lo, hi = (p["onset_recorder"] + w / 1000 for w in p["window_ms"])
        counted = [np.sum((s >= lo) & (s < hi)) for s in spikes]
        # liblsl's clock correction (microseconds on one machine) may move a spike across an edge
        assert np.abs(np.asarray(p["rates"]) * (hi - lo) - counted).max() <= 1 + 1e-9


@pytest.mark.slow
def test_presenter_with_lsl_runs_a_session(tmp_path, xvfb):
    """`actmax serve`, an LSL spike outlet and `actmax rig present --spikes lsl:...`, all in the
    loopback-only namespace, run a session to completion."""
    out = run_isolated(tmp_path, "lsl_session.py", str(tmp_path), env={"DISPLAY": xvfb}, timeout=300)
    assert out["statuses"] == ["complete", "complete"]
    sent = [p for p in out["presented"] if p["sent"]]
    assert sorted((p["presentation_id"], p["stimulus_id"], tuple(p["rates"])) for p in sent) == \
        sorted((pid, sid, tuple(rates)) for pid, sid, rates in out["stored"])  # each stored once
    assert_rates_recount(out)


@pytest.mark.slow
def test_presenter_waits_for_a_lost_stream_and_leaves_what_it_missed_to_be_shown_again(tmp_path, xvfb):
    """The outlet closes while the second generation is shown and is back 1.5 s later: the presenter stops showing,
    answers the batch's clean showings, leaves the server until the stream is back and connects again; the server
    resends what is owed, the showings whose windows overlap the outage included, in the same batch (no re-queue
    round is spent, nothing scores NaN). Every rate sent is the published spikes' (a window over the gap would
    miss some)."""
    out = run_isolated(tmp_path, "lsl_session.py", str(tmp_path), "lost", env={"DISPLAY": xvfb}, timeout=300)
    assert out["statuses"] == ["complete", "complete"]
    # Back after more than two heartbeats: a reconnect, not a second program using the rig's name.
    assert out["events"].count("rig.connected") == 2 and "rig.replaced" not in out["events"]
    assert "LSL stream 'actmax-session-spikes' was lost" in out["log"]
    assert "the spike source is back after" in out["log"]
    sent = [p for p in out["presented"] if p["sent"]]
    missed = [p for p in out["presented"] if p["in_outage"]]
    assert missed and not any(p["sent"] for p in missed)
    assert sorted(pid for pid, _, _ in out["stored"]) == sorted(p["presentation_id"] for p in sent)  # each once
    lost_at, back_at = out["gap"]
    for p in sent:  # from the baseline window's start to the response window's end, clear of the gap
        assert p["onset_recorder"] + 0.2 <= lost_at or p["onset_recorder"] - 0.1 >= back_at
    assert {p["stimulus_id"] for p in missed} <= {sid for _, sid, _ in out["stored"]}  # shown again, answered
    shown = out["presented"]
    for m in missed:  # shown again in the batch the outage spoiled (resent), and in a later round only after a
        # showing with dropped frames (under load), which the server shows again as it does any flagged trial
        again = [p for p in shown[shown.index(m) + 1:] if p["stimulus_id"] == m["stimulus_id"]]
        assert again[0]["batch_id"] == m["batch_id"] and again[0]["sent"], again
        assert all(before["dropped_frames"] for before in again[:-1]), again
    assert_rates_recount({**out, "presented": sent})


@pytest.mark.slow
def test_presenter_warns_of_spikes_later_than_its_latency(tmp_path, xvfb):
    """Spikes pushed 0.3 s after their time stamps, the presenter waiting the default 50 ms: each batch's
    last windows were counted before their spikes came, and the log says so and what to set."""
    out = run_isolated(tmp_path, "lsl_session.py", str(tmp_path), "late", env={"DISPLAY": xvfb}, timeout=300)
    warnings = [line for line in out["log"].splitlines() if "arrived after its rates were counted" in line]
    assert len(warnings) == len({p["batch_id"] for p in out["presented"]}), out["log"][-3000:]  # once each
    need = [int(re.search(r"raise it to at least (\d+)", w).group(1)) for w in warnings]
    assert all(n > 50 for n in need) and "--latency-ms 50;" in warnings[0]
