"""The reference-drift alarm: pure checks on analytic cases, then the engine's hook on a real database."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import select

from server import drift, monitor
from server.session_config import SessionConfig
from server.store.models import Event
from server.store.records import create_session
from tests.server.conftest import session_config


def test_mean_sem_matches_the_textbook_formula():
    mean, sem = drift.mean_sem([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    assert mean == 2.5
    assert sem == pytest.approx(math.sqrt(((1.5**2 + 0.5**2) * 2) / 3) / 2)
    assert drift.mean_sem([7.0]) == (7.0, 0.0)
    assert drift.mean_sem([None, float("nan")]) == (None, None)


def test_drop_is_the_gap_over_the_combined_sem():
    assert drift.drop_in_sem(drift.Level(10, 3, ()), drift.Level(2, 4, ())) == pytest.approx(8 / 5)
    assert drift.drop_in_sem(drift.Level(10, 3, ()), drift.Level(14, 4, ())) == pytest.approx(-4 / 5)
    assert drift.drop_in_sem(drift.Level(10, 0, ()), drift.Level(9, 0, ())) == math.inf
    assert drift.drop_in_sem(drift.Level(10, 0, ()), drift.Level(10, 0, ())) == 0.0


def test_baseline_pools_the_early_generations():
    base = drift.baseline([drift.Level(9, 1, (10.0, 0.0)), drift.Level(11, 1, (30.0, 2.0))])
    assert base.mean == 10 and base.sem == pytest.approx(np.std([9, 11], ddof=1) / math.sqrt(2))
    assert base.channel_rates == (20.0, 1.0)


def test_levels_and_curve_points_of_rigs_that_changed_their_channel_count_pad_with_nan():
    """A rig restarted with fewer channels: the channels it no longer counts are missing, not an error."""
    base = drift.baseline([drift.Level(9, 1, (10.0, 4.0)), drift.Level(11, 1, (30.0,))])
    assert base.channel_rates[0] == 20.0 and base.channel_rates[1] == 4.0
    per_image, per_channel = monitor.reference_levels({"a": [[2.0, 6.0]], "b": [[4.0]], "c": [[None, 8.0]]}, {0, 1})
    assert per_image == [4.0, 4.0, 8.0] and per_channel == [3.0, 7.0]


def test_the_reference_level_is_their_rate_on_the_objectives_channels_whatever_the_scores():
    """Two presentations of image a, one of b; the objective reads channels 1 and 2 (not 0)."""
    per_image, per_channel = monitor.reference_levels({"a": [[99.0, 2.0, 4.0], [99.0, 6.0, 8.0]],
                                                       "b": [[0.0, 10.0, None]]}, {1, 2})
    assert per_image == [5.0, 10.0]
    assert per_channel == [66.0, 6.0, 6.0]


def test_a_channel_is_silent_below_the_fraction_of_its_early_rate():
    base = drift.Level(0, 0, (10.0, 0.0, 5.0))
    assert drift.silent_channels(base, drift.Level(0, 0, (0.5, 0.0, 4.0)), 0.1) == [0]
    assert drift.silent_channels(base, drift.Level(0, 0, (1.0, 0.0, 0.4)), 0.1) == [2]


def test_the_hook_warns_once_when_references_fall_and_once_when_a_channel_goes_silent(db_sessions):
    """The alarm reads the reference images' rates on the objective's channels, not their scores."""
    config = SessionConfig.model_validate(session_config(drift={"baseline_generations": 3, "consecutive": 2}))
    with db_sessions.begin() as db:
        session = create_session(db, config)
        session_id, thread_id = session.id, session.threads[0].id

    def load_history():
        with db_sessions() as db:
            return monitor.DriftHistory.load(db, thread_id, config.drift)

    history = load_history()

    def generation(number, references, channel_1):
        """Three reference images firing ``references`` on channel 0 (the objective's) and ``channel_1`` on
        channel 1; their scores (a z-score, say) stay the same whatever they fire."""
        rates = {f"ref-{i}": [[rate, channel_1]] for i, rate in enumerate(references)}
        with db_sessions.begin() as db:
            return monitor.generation_completed(db, history, session_id, thread_id, number, [1.0, 2.0, 3.0],
                                                [-1.0, 0.0, 1.0], rates, {0})

    early = [[9.0, 10.0, 11.0], [10.0, 11.0, 12.0], [8.0, 9.0, 10.0]]  # level 10 ± 0.58 over generations
    for number, references in enumerate(early):
        assert generation(number, references, 20.0)["drop_sem"] is None  # still the baseline
    steady = generation(3, [9.5, 10.0, 10.5], 20.0)
    assert steady["reference_mean"] == 0.0  # the curve keeps the scores
    assert steady["drop_sem"] == pytest.approx((10 - 10) / math.hypot(np.std([10, 11, 9], ddof=1) / math.sqrt(3),
                                                                     0.5 / math.sqrt(3)))
    low = [generation(4, [4.0, 5.0, 6.0], 1.0)]
    history = load_history()  # a restarted server's runtime goes on from the stored events
    low += [generation(n, [4.0, 5.0, 6.0], 1.0 if n == 6 else 3.0) for n in (5, 6)]  # channel 1 flickers
    assert [d["low_streak"] for d in low] == [1, 2, 3]
    assert [d["silent_channels"] for d in low] == [[1], [], [1]]
    with db_sessions() as db:
        warnings = db.execute(select(Event.kind, Event.data_json).where(Event.level == "warning")).all()
        messages = db.scalars(select(Event.message).where(Event.thread_id == thread_id)).all()
    assert [(kind, data["generation"]) for kind, data in warnings] == [("channel.silent", 4), ("drift.reference", 5)]
    name = f"thread {thread_id} {config.threads[0].name!r}: generation "
    assert len(messages) == 9 and all(m.startswith(name) for m in messages), messages  # two threads tell apart
    expected = (10 - 5) / math.hypot(np.std([10, 11, 9], ddof=1) / math.sqrt(3), 1 / math.sqrt(3))
    assert warnings[1][1]["drop_sem"] == pytest.approx(expected)


def test_drift_settings_are_validated():
    with pytest.raises(ValueError, match="drop_sem"):
        SessionConfig.model_validate(session_config(drift={"drop_sem": -1}))
