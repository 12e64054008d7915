"""The reference-drift alarm: pure checks on analytic cases, then the engine's hook on a real database with
simulated Poisson units (fixed seeds), each set against the statistic the alarm used before."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import poisson
from sqlalchemy import select

from server import drift, monitor
from server.session_config import SessionConfig
from server.store.models import Event
from server.store.records import create_session
from tests.server.conftest import session_config, thread_config

WINDOW_S = 0.15  # the default response window, [50, 200] ms
TUNING = np.array([5, 8, 12, 18, 25, 35, 50, 70, 100, 140.0])  # ten reference images' rates, spikes/s
LOW_UNIT = np.array([0.6, 0.8, 1.0, 1.1, 1.2, 1.4, 1.5, 1.7, 2.0, 2.0])  # 1.33 spikes/s: 2 spikes a generation


def test_mean_sem_matches_the_textbook_formula():
    mean, sem = drift.mean_sem([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    assert mean == 2.5
    assert sem == pytest.approx(math.sqrt(((1.5**2 + 0.5**2) * 2) / 3) / 2)
    assert drift.mean_sem([7.0]) == (7.0, 0.0)
    assert drift.mean_sem([None, float("nan")]) == (None, None)


def test_the_early_level_pools_each_image_over_its_early_presentations():
    base = drift.baseline([drift.Level({"a": (9.0, 0.15), "b": (3.0, 0.3)}, (10.0, 0.0)),
                           drift.Level({"a": (12.0, 0.3)}, (30.0, 2.0))])
    assert base.images == {"a": pytest.approx((11.0, 0.45)), "b": (3.0, 0.3)}  # (9 x 0.15 + 12 x 0.3) / 0.45
    assert base.channel_rates == (20.0, 1.0)


def test_a_gain_change_is_measured_against_each_images_own_level_not_the_tuning_spread():
    """Three images at 10, 50 and 90 spikes/s early (1.5 s each), all at half now (0.9 s each): one gain
    explains the change exactly, so only counting noise is left (5.5 SEM); the old across-image SEM, 2.2."""
    early = {"a": (10.0, 1.5), "b": (50.0, 1.5), "c": (90.0, 1.5)}
    now = {"a": (5.0, 0.9), "b": (25.0, 0.9), "c": (45.0, 0.9)}
    low = drift.reference_drop(drift.Level(early, ()), drift.Level(now, ()))
    counting = math.sqrt(sum(x / 0.9 for x, _ in now.values()) + sum(e / 1.5 for e, _ in early.values())) / 3
    assert (low.images, low.early_mean, low.mean) == (3, 50.0, 25.0)
    assert low.sem == pytest.approx(counting) and low.drop == pytest.approx(25 / counting) == pytest.approx(5.5, abs=0.05)
    old = 25 / math.hypot(0.0, np.std([5, 25, 45], ddof=1) / math.sqrt(3))  # an early SEM of 0 favours the old
    assert old == pytest.approx(2.2, abs=0.05)
    # A change that is no gain (one image fell, one rose) leaves its own spread in the SEM.
    mixed = drift.reference_drop(drift.Level(early, ()), drift.Level({"a": (10.0, 0.9), "b": (10.0, 0.9),
                                                                     "c": (130.0, 0.9)}, ()))
    x, e = np.array([10.0, 10, 130]), np.array([10.0, 50, 90])
    assert mixed.sem == pytest.approx(np.std(x - x.sum() / e.sum() * e, ddof=1) / math.sqrt(3))
    # Images answered only early (or only now) are left out; none in common: no drop.
    assert drift.reference_drop(drift.Level(early, ()), drift.Level({"a": (5.0, 0.45), "z": (0.0, 0.45)}, ())).images == 1
    assert drift.reference_drop(drift.Level(early, ()), drift.Level({"z": (0.0, 0.45)}, ())) is None


def test_a_generation_of_a_few_spikes_is_never_taken_for_a_precise_one():
    """Ten images at 1 spike/s early (5 generations of 0.15 s), none counted now: counting noise alone puts
    that 2.7 SEM below, not the infinity the fit alone (every residual 0) would give."""
    early = drift.Level({f"r{i}": (1.0, 0.75) for i in range(10)}, ())
    low = drift.reference_drop(early, drift.Level({f"r{i}": (0.0, 0.15) for i in range(10)}, ()))
    assert low.drop == pytest.approx(1 / (math.sqrt(10 / 0.75) / 10)) and low.drop < 4
    zero = drift.Level({"a": (0.0, 0.75)}, ())
    assert drift.reference_drop(zero, drift.Level({"a": (0.0, 0.15)}, ())).drop == 0.0


def test_the_poisson_tail_matches_scipy():
    for k, mean in [(0, 2.0), (3, 2.0), (0, 9.3), (5, 60.0), (40, 1000.0), (0, 1e5), (2, 0.5)]:
        assert drift.poisson_cdf(k, mean) == pytest.approx(poisson.cdf(k, mean), rel=1e-9, abs=1e-300)
    assert drift.poisson_cdf(2.9999999, 4.0) == pytest.approx(poisson.cdf(3, 4.0))  # 20 spikes/s x 0.15 s
    assert drift.poisson_cdf(-1.0, 4.0) == 0.0 and drift.poisson_cdf(0.0, 0.0) == 1.0


def test_a_low_run_pools_its_spikes_until_too_few_for_the_early_rate():
    """Channel 0 fired 2 spikes/s early over 1.5 s a generation (3 expected); channel 1 fired 20 (30 expected)."""
    runs: dict = {}
    history = []
    for rates in ([0.0, 0.0], [0.0, 5.0], [None, 30.0], [0.0, 1.0], [0.0, 1.0]):
        runs, silent = drift.silent_channels([2.0, 20.0], rates, [1.5, 1.5], 0.1, runs)
        history.append(silent)
    # Channel 1: e^-30 at once; it recovers (5 spikes/s), goes on, then falls again (1.5 spikes in 45 expected).
    # Channel 0: 0 spikes in 3, 6 (its uncounted generation changes nothing), 9, 12 expected: silent at e^-12.
    assert history == [[1], [], [], [1], [0, 1]]
    assert runs == {0: (0.0, 6.0), 1: (3.0, 3.0)}
    assert math.exp(-9) > drift.SILENT_P > math.exp(-12)


def test_the_reference_level_is_their_rate_on_the_objectives_channels_whatever_the_scores():
    """Two presentations of image a, one of b; the objective reads channels 1 and 2 (not 0)."""
    per_image, per_channel, seconds = monitor.reference_levels({"a": [[99.0, 2.0, 4.0], [99.0, 6.0, 8.0]],
                                                                "b": [[0.0, 10.0, None]]}, {1, 2}, 0.15)
    assert per_image == {"a": (5.0, pytest.approx(0.6)), "b": (10.0, 0.15)}  # four rates counted, one
    assert per_channel == [66.0, 6.0, 6.0] and seconds == pytest.approx([0.45, 0.45, 0.3])


def test_levels_of_rigs_that_changed_their_channel_count_pad_with_nan():
    """A rig restarted with fewer channels: the channels it no longer counts are missing, not an error."""
    base = drift.baseline([drift.Level({}, (10.0, 4.0)), drift.Level({}, (30.0,))])
    assert base.channel_rates[0] == 20.0 and base.channel_rates[1] == 4.0
    per_image, per_channel, _ = monitor.reference_levels({"a": [[2.0, 6.0]], "b": [[4.0]], "c": [[None, 8.0]]},
                                                         {0, 1}, 0.15)
    assert {s: level for s, (level, _) in per_image.items()} == {"a": 4.0, "b": 4.0, "c": 8.0}
    assert per_channel == [3.0, 7.0]


@pytest.mark.parametrize("seed", range(5))
def test_reference_levels_match_a_plain_loop_over_images_and_channels(seed):
    """Random presentations (ragged rows, uncounted rates, images that counted nothing on the objective's channels)
    against the definition written out one image and one channel at a time."""
    rng = np.random.default_rng(seed)
    channels = sorted(rng.choice(6, size=rng.integers(1, 4), replace=False).tolist())
    rates = {f"ref{i}": [[None if rng.random() < 0.3 else float(rng.gamma(2, 10)) for _ in range(rng.integers(0, 7))]
                         for _ in range(rng.integers(1, 4))] for i in range(8)}
    per_image, per_channel, seconds = monitor.reference_levels(rates, set(channels), 0.2)

    def mean(values):
        return sum(values) / len(values)
    expected = {}
    for stimulus, rows in rates.items():
        counted = {c: [row[c] for row in rows if c < len(row) and row[c] is not None] for c in channels}
        if any(counted.values()):
            expected[stimulus] = (mean([mean(v) for v in counted.values() if v]), 0.2 * sum(map(len, counted.values())))
    assert per_image.keys() == expected.keys()
    for stimulus, (rate, time) in expected.items():
        assert per_image[stimulus] == (pytest.approx(rate, rel=1e-12), pytest.approx(time))
    every = [row for rows in rates.values() for row in rows]
    columns = [[row[c] for row in every if c < len(row) and row[c] is not None]
               for c in range(max(map(len, every), default=0))]
    assert per_channel == [pytest.approx(mean(v), rel=1e-12) if v else None for v in columns]
    assert seconds == pytest.approx([0.2 * len(v) for v in columns])


def _two_threads(db_sessions, **drift_settings):
    """A session whose thread 'kept' keeps its drift history and whose thread 'restarted' reloads it from the
    stored events before every generation, as a server killed after each would."""
    config = SessionConfig.model_validate(session_config(
        threads=[thread_config("kept"), thread_config("restarted")], drift=drift_settings))
    with db_sessions.begin() as db:
        session = create_session(db, config)
        ids = [thread.id for thread in session.threads]

    def load(thread_id):
        with db_sessions() as db:
            return monitor.DriftHistory.load(db, thread_id, config.drift)

    histories = {ids[0]: load(ids[0])}

    def generation(number, rates: dict[str, list[list[float]]]) -> list[dict]:
        """Both threads complete generation ``number`` with the same reference presentations (objective: channel 0)."""
        points = []
        histories[ids[1]] = load(ids[1])
        for thread_id in ids:
            with db_sessions.begin() as db:
                points.append(monitor.generation_completed(db, histories[thread_id], session.id, thread_id, number,
                                                           [1.0, 2.0], [0.0], rates, {0}))
        return points

    def warnings(thread_id=ids[0]):
        with db_sessions() as db:
            return db.execute(select(Event.kind, Event.message, Event.data_json).where(
                Event.level == "warning", Event.thread_id == thread_id).order_by(Event.id)).all()

    return ids, generation, warnings


def _same_alarms(ids, warnings):
    kept, restarted = ([(kind, data) for kind, _, data in warnings(thread_id)] for thread_id in ids)
    assert kept == restarted


def _declining_unit(seed: int) -> list[np.ndarray]:
    """16 generations of TUNING falling 10 % a generation, each reference shown 3 times, Poisson counts: (10, 3)."""
    rng = np.random.default_rng(seed)
    return [rng.poisson(np.repeat(TUNING * 0.9**g, 3) * WINDOW_S).reshape(10, 3) / WINDOW_S for g in range(16)]


def _old_drops(levels: list[np.ndarray], baseline: int = 5) -> list[float]:
    """The statistic the alarm used before: generation means, SEM over the reference images."""
    early = np.array([level.mean() for level in levels[:baseline]])
    m0, s0 = early.mean(), early.std(ddof=1) / math.sqrt(baseline)
    return [(m0 - level.mean()) / math.hypot(s0, level.std(ddof=1) / math.sqrt(level.size))
            for level in levels[baseline:]]


def _first_alarm(drops: list[float], baseline: int = 5, drop_sem: float = 4, consecutive: int = 2) -> int | None:
    streak = 0
    for number, drop in enumerate(drops, start=baseline):
        streak = streak + 1 if drop > drop_sem else 0
        if streak == consecutive:
            return number
    return None


def test_a_steady_decline_is_alarmed_within_a_few_generations_with_numbers_that_recompute(db_sessions):
    """References that lose 10 % a generation (from 46 spikes/s, tuned over 5-140) are alarmed at generation 7,
    at 60 % of their early level; the old statistic first alarmed at 13 (27 %). Resuming changes nothing."""
    presentations = _declining_unit(seed=0)
    ids, generation, warnings = _two_threads(db_sessions)
    for number, counts in enumerate(presentations):
        generation(number, {f"ref-{i}": [[rate] for rate in rates] for i, rates in enumerate(counts)})
    ((kind, message, data),) = warnings()
    assert kind == "drift.reference" and data["generation"] == 7
    assert _first_alarm(_old_drops([counts.mean(axis=1) for counts in presentations])) == 13
    _same_alarms(ids, warnings)

    # The message's numbers, computed from the presentations without server.drift.
    e = np.mean([counts.mean(axis=1) for counts in presentations[:5]], axis=0)
    x = presentations[7].mean(axis=1)
    fit = np.std(x - x.sum() / e.sum() * e, ddof=1) / math.sqrt(10)
    counting = math.sqrt(np.sum(x / (3 * WINDOW_S) + e / (15 * WINDOW_S))) / 10
    sem = max(fit, counting)
    drop = (e.mean() - x.mean()) / sem
    assert data == pytest.approx({"generation": 7, "drop_sem": drop, "early_mean": e.mean(), "mean": x.mean(),
                                  "sem": sem, "images": 10})
    assert re.search(f"generation 7: reference images fire {x.mean():.3g} spikes/s against their early "
                     f"{e.mean():.3g}, {drop:.1f} SEM below \\(SEM {sem:.2g}, each of 10 images paired", message)
    assert x.mean() / e.mean() == pytest.approx(0.6, abs=0.01)


def test_a_healthy_low_rate_unit_warns_of_no_silent_channel(db_sessions):
    """2 expected spikes a generation, no drift: the old one-generation rule warned at generation 7 on these
    very presentations (0 spikes, below 0.1 of the early rate); no warning of any kind now."""
    rng = np.random.default_rng(1)
    presentations = [rng.poisson(LOW_UNIT * WINDOW_S) / WINDOW_S for _ in range(20)]
    means = [rates.mean() for rates in presentations]
    early = np.mean(means[:5])
    assert [number for number in range(5, 20) if means[number] < 0.1 * early] == [7, 9, 10]  # the old rule
    ids, generation, warnings = _two_threads(db_sessions)
    for number, rates in enumerate(presentations):
        generation(number, {f"ref-{i}": [[rate]] for i, rate in enumerate(rates)})
    assert warnings() == [] and warnings(ids[1]) == []


def test_a_channel_that_goes_silent_is_reported_within_a_few_generations(db_sessions):
    """The same low-rate unit (channel 0) and a 20 spikes/s one (channel 1) stop firing at generation 10:
    channel 1 is reported at once, channel 0 once its zero spikes were too few (~9.2 expected), the same on a
    server restarted every generation."""
    rng = np.random.default_rng(1)
    ids, generation, warnings = _two_threads(db_sessions)
    points = []
    for number in range(20):
        gain = 0.0 if number >= 10 else 1.0
        rates = rng.poisson(np.column_stack([LOW_UNIT, np.full(10, 20.0)]) * gain * WINDOW_S) / WINDOW_S
        points.append(generation(number, {f"ref-{i}": [list(row)] for i, row in enumerate(rates)})[0])
    reported = [(data["generation"], data["channels"]) for kind, _, data in warnings() if kind == "channel.silent"]
    early = np.mean([point["channel_rates"][0] for point in points[:5]])
    expected = 10 + math.ceil(math.log(1 / drift.SILENT_P) / (early * 10 * WINDOW_S)) - 1
    assert reported == [(10, [1]), (expected, [0])] and 12 <= expected <= 15
    assert points[expected]["low_channels"][0] == [0, 0.0, pytest.approx((expected - 9) * 10 * WINDOW_S)]
    _same_alarms(ids, warnings)


def test_the_hook_warns_once_per_low_run_and_names_its_thread(db_sessions):
    """The alarm reads the reference images' rates on the objective's channels, not their scores."""
    ids, generation, warnings = _two_threads(db_sessions, baseline_generations=2, consecutive=2)
    levels = [100.0, 100.0, 100.0, 20.0, 20.0, 20.0, 100.0, 20.0, 20.0]
    points = [generation(n, {f"ref-{i}": [[level * (1 + i), 99.0]] * 4 for i in range(3)})[0]
              for n, level in enumerate(levels)]
    assert [p["low_streak"] for p in points] == [0, 0, 0, 1, 2, 3, 0, 1, 2]
    assert points[0]["reference_mean"] == 0.0  # the curve keeps the scores
    assert [(kind, data["generation"]) for kind, _, data in warnings()] == [("drift.reference", 4),
                                                                            ("drift.reference", 8)]
    with db_sessions() as db:
        messages = db.scalars(select(Event.message).where(Event.thread_id == ids[0])).all()
    assert len(messages) == 11 and all(m.startswith(f"thread {ids[0]} 'kept': generation ") for m in messages)
    _same_alarms(ids, warnings)


def test_drift_settings_are_validated():
    with pytest.raises(ValueError, match="drop_sem"):
        SessionConfig.model_validate(session_config(drift={"drop_sem": -1}))
