"""Spike counting, clock alignment and the replay source, against analytic cases."""

from __future__ import annotations

import numpy as np
import pytest

from rig_client import RigError
from rig_client.spikes import Events, RecorderClock, SpikeBuffer, count_in_window, fit_clock, in_outage
from rig_client.spikes.replay import ReplaySource, load, save

T0 = 1_764_250_000.0  # unix-time magnitudes: the fit must stay exact there


def test_counts_are_spikes_in_half_open_windows_over_duration():
    onset = 10.0
    spikes = [np.array([onset - 0.05, onset + 0.05, onset + 0.1, onset + 0.2]),  # edges
              np.array([])]
    counts = count_in_window(spikes, [onset], (50, 200), baseline_ms=(-100, 0))
    # [onset+0.05, onset+0.2): the spike at +0.05 counts, the one at +0.2 does not
    np.testing.assert_allclose(counts.rates, [[2 / 0.15, 0.0]])
    np.testing.assert_allclose(counts.baseline, [[1 / 0.1, 0.0]])


def test_regular_train_gives_its_rate_in_every_window():
    rate = 80.0
    spikes = [np.arange(0, 100, 1 / rate) + 1 / (2 * rate)]  # no spike on a window edge
    onsets = np.linspace(1, 90, 37)
    counts = count_in_window(spikes, onsets, (0, 250), baseline_ms=(-500, 0))
    np.testing.assert_allclose(counts.rates, rate)
    np.testing.assert_allclose(counts.baseline, rate)


def test_counts_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    spikes = [np.sort(rng.uniform(0, 50, n)) for n in (0, 10, 500, 2000)]
    onsets = rng.uniform(1, 49, 40)
    counts = count_in_window(spikes, onsets, (30, 180), baseline_ms=(-120, -20))
    for (lo, hi), got in (((0.03, 0.18), counts.rates), ((-0.12, -0.02), counts.baseline)):
        want = [[np.sum((s >= t + lo) & (s < t + hi)) / (hi - lo) for s in spikes] for t in onsets]
        np.testing.assert_allclose(got, want)


def test_a_presentation_overlapping_an_outage_is_found_from_its_earliest_window_to_its_latest():
    # Windows [-100, 0) and [50, 200) ms: a presentation spans [onset - 0.1, onset + 0.2).
    windows = [(50, 200), (-100, 0)]
    outages = [[10.0, 11.0]]
    onsets = np.array([9.79, 9.8, 9.81, 10.5, 11.09, 11.1, 11.11])
    # ends at 9.99 | ends at 10.0, just touching | 10.01 | inside | starts 10.99 | starts at 11.0 | 11.01
    np.testing.assert_array_equal(in_outage(onsets, windows, outages),
                                  [False, False, True, True, True, False, False])
    # With 5 ms of recorder latency, spikes from 9.995 on may be missing too.
    np.testing.assert_array_equal(in_outage(onsets, windows, outages, latency_s=0.005),
                                  [False, True, True, True, True, False, False])
    # Still away: everything from its start on.
    np.testing.assert_array_equal(in_outage(onsets, windows, [[10.0, np.inf]]),
                                  [False, False, True, True, True, True, True])
    # A brute-force check over random outages and onsets, on a fine time grid.
    rng = np.random.default_rng(1)
    starts = np.sort(rng.uniform(0, 50, 6))
    gaps = [[a, a + rng.uniform(0.01, 1.0)] for a in starts]
    onsets = rng.uniform(0, 52, 300)
    grid = np.arange(-0.1, 0.2, 1e-4)
    want = [any(np.any((t + grid >= a - 0.02) & (t + grid < b)) for a, b in gaps) for t in onsets]
    got = in_outage(onsets, windows, gaps, latency_s=0.02)
    assert (got != want).sum() <= 2  # only where an edge falls between grid points
    assert not in_outage(onsets, windows, []).any()


def test_clock_fit_recovers_offset_drift_and_residual():
    presenter = T0 + np.array([0.0, 1.0, 2.0, 3.0]) * 30
    jitter = 2e-4 * np.array([1, -1, -1, 1])  # orthogonal to (1, x): the line is unchanged
    recorder = 12.5 + (1 + 20e-6) * (presenter - T0) + jitter
    fit = fit_clock(presenter, recorder)
    assert fit.slope == pytest.approx(1 + 20e-6, rel=1e-12)
    assert fit.to_recorder(T0) == pytest.approx(12.5, abs=1e-6)
    assert fit.residual_rms_s == pytest.approx(2e-4, rel=1e-6)
    assert fit.residual_max_s == pytest.approx(2e-4, rel=1e-6)
    assert fit.n_pulses == 4


def test_counting_through_a_clock_fit():
    fit = fit_clock([T0, T0 + 100], [5.0, 105.0])  # recorder = presenter - T0 + 5
    spikes = [np.array([5.0 + 20.06, 5.0 + 20.3])]
    counts = count_in_window(spikes, [T0 + 20], (50, 200), clock=fit)
    np.testing.assert_allclose(counts.onsets, [25.0])
    np.testing.assert_allclose(counts.rates, [[1 / 0.15]])


@pytest.mark.parametrize("presenter, recorder, words", [
    ([0, 1, 2], [0, 1], "sent 3 sync pulses but the recorder saw 2"),
    ([0], [0], "at least 2"),
    ([1, 1], [1, 2], "at least 2"),
])
def test_clock_fit_refuses_what_cannot_be_fitted(presenter, recorder, words):
    with pytest.raises(RigError, match=words):
        fit_clock(presenter, recorder)


def test_a_recorder_clock_that_goes_back_more_than_a_second_is_refused_stream_by_stream():
    clock = RecorderClock("the recorder", "it restarted")
    clock.advance([0.0, 5.0, 4.5, 6.0])  # out of order by 0.5 s: no restart
    clock.advance([5.2, 7.0])  # 0.8 s behind the 6.0 reached before
    clock.advance([1.0, 0.5], stream="other")  # another stream's own clock
    clock.advance([])
    with pytest.raises(RigError, match=r"^the recorder's clock went back from 7\.500 s to 5\.900 s: it restarted\."):
        clock.advance([7.5, 5.9])  # 7.5 reached in this very call
    with pytest.raises(RigError, match=r"went back from 7\.000 s to 5\.500 s"):
        clock.advance([5.5])  # 7.0 reached before it
    with pytest.raises(RigError, match=r"clock \(stream 'other'\) went back from 3\.000 s to 0\.010 s"):
        clock.advance([3.0, 0.01], stream="other")
    assert clock.reached == {"": 7.0, "other": 1.0}  # a refused call moves nothing


def test_buffer_collects_chunks_in_any_order():
    buffer = SpikeBuffer(2)
    buffer.add(Events([3.0, 1.0], [1, 1], [2.0], ["onset"]))
    buffer.add(Events([2.0, 0.5], [0, 1], [0.1, 4.0], ["sync", "onset"]))
    spikes = buffer.spikes()
    np.testing.assert_array_equal(spikes[0], [2.0])
    np.testing.assert_array_equal(spikes[1], [0.5, 1.0, 3.0])
    np.testing.assert_array_equal(buffer.markers("onset"), [2.0, 4.0])
    np.testing.assert_array_equal(buffer.markers("reward"), [])
    with pytest.raises(RigError, match="out of range"):
        buffer.add(Events([1.0], [2]))


def recording() -> tuple[Events, tuple[str, ...]]:
    return Events([0.3, 0.1, 0.2, 1.5], [0, 1, 0, 1], [0.15, 1.0], ["onset", "sync"]), ("a", "b")


def test_replay_round_trip_and_pacing(tmp_path):
    events, labels = recording()
    save(tmp_path / "rec.npz", events, labels)
    got, got_labels = load(tmp_path / "rec.npz")
    assert got_labels == labels
    np.testing.assert_array_equal(got.spike_times, events.spike_times)

    unpaced = ReplaySource(tmp_path / "rec.npz")
    assert sorted(unpaced.poll().spike_times) == [0.1, 0.2, 0.3, 1.5]
    assert len(unpaced.poll().spike_times) == 0  # then nothing, and no end: for offline analysis

    now = [0.0]
    source = ReplaySource(tmp_path / "rec.npz", paced=True, speed=2.0, clock=lambda: now[0])
    assert source.first_time == 0.1 and len(source.poll().spike_times) == 1  # t <= 0.1
    now[0] = 0.1  # file time 0.1 + 0.2 = 0.3
    chunk = source.poll()
    assert list(chunk.spike_times) == [0.2, 0.3] and chunk.marker_names == ["onset"]
    now[0] = 0.7  # file time 1.5: the last event
    chunk = source.poll()
    assert list(chunk.spike_times) == [1.5] and chunk.marker_names == ["sync"]
    assert len(source.poll().spike_times) == 0


def test_a_paced_replay_past_its_end_fails_instead_of_reporting_zero_spikes(tmp_path):
    """A recording shorter than the session: its end is an error, like a recorder that stopped, where
    the windows after it used to count 0 spikes/s."""
    events, labels = recording()
    save(tmp_path / "rec.npz", events, labels)
    now = [0.0]
    source = ReplaySource(tmp_path / "rec.npz", paced=True, clock=lambda: now[0])
    now[0] = 1.4  # file time 1.5
    assert list(source.poll().spike_times) == [0.1, 0.2, 0.3, 1.5]
    now[0] = 1.5
    with pytest.raises(RigError, match=rf"replay file {tmp_path / 'rec.npz'} ended \(its last event is at "
                       r"1.5 s, 1.4 s after its first\); .*Replay a recording longer than the session"):
        source.poll()


def test_replay_rejects_bad_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RigError, match="not a readable NPZ"):
        load(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", spike_times=np.zeros(1))
    with pytest.raises(RigError, match="missing array"):
        load(tmp_path / "partial.npz")
    np.savez(tmp_path / "index.npz", spike_times=np.zeros(1), spike_channels=[3], labels=["a"])
    with pytest.raises(RigError, match="index labels"):
        load(tmp_path / "index.npz")
