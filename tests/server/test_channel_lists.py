"""Texts about many channels (a 384-channel probe) stay one readable line: score labels and channel.silent."""

from __future__ import annotations

from sqlalchemy import select

from server import monitor
from server.client_cli import objective_text
from server.objectives import LABEL_CHARS, channel_ranges, score_label
from server.session_config import SessionConfig
from server.store.models import Event
from server.store.records import create_session
from tests.server.conftest import session_config


def test_a_long_expression_has_a_short_score_label_and_a_short_one_is_kept_whole():
    assert score_label({"channels": list(range(384))}) == "score (spikes/s)"
    assert score_label({"expression": "zscore(rate(0))"}) == "score = zscore(rate(0))"
    assert score_label({"expression": "mean(1, 2, 3)"}) == "score = mean(1, 2, 3)"  # short: as written
    channels = ", ".join(map(str, range(100, 200)))
    assert score_label({"expression": f"zscore(mean({channels}))"}) == "score = zscore(mean(100, …, 199))"
    assert score_label({"expression": f"mean(0, 5, {channels}, 0.5 * rate(7))"}) == (
        "score = mean(0, 5, 100, …, 199, 0.5 * rate(7))")  # a weight is no channel number
    rates = ", ".join(f"rate({c})" for c in range(384))
    label = score_label({"expression": f"sum({rates})"})
    assert label.startswith("score = sum(rate(0), rate(1),") and label.endswith(" … rate(383))")
    assert len(label) <= len("score = ") + LABEL_CHARS + 3


def test_channel_silent_names_ranges_of_channels_and_its_data_every_channel(db_sessions):
    config = SessionConfig.model_validate(session_config(drift={"baseline_generations": 2}))
    with db_sessions.begin() as db:
        session = create_session(db, config)
        session_id, thread_id = session.id, session.threads[0].id
    with db_sessions() as db:
        history = monitor.DriftHistory.load(db, thread_id, config.drift)
    for number, silent in enumerate([(), (), range(100, 384), range(100, 384)]):  # one generation: too few spikes
        rates = {f"ref-{i}": [[0.0 if c in silent else 10.0 + i for c in range(384)]] for i in range(3)}
        with db_sessions.begin() as db:
            monitor.generation_completed(db, history, session_id, thread_id, number, [1.0], [1.0], rates, {0})
    with db_sessions() as db:
        ((message, data),) = db.execute(select(Event.message, Event.data_json).where(Event.kind == "channel.silent"))
    assert "generation 3: channel(s) 100-383 (284 channels) fire below 0.1 of their early rate" in message
    assert data["channels"] == list(range(100, 384))
    assert channel_ranges([3, 5]) == "3, 5" and channel_ranges([0, 1, 2, 7]) == "0-2, 7 (4 channels)"
    assert channel_ranges(range(0, 40, 2)) == "0, 2, 4, 6, 8, 10, 12, 14, 16, 18, … (20 channels)"
    # `actmax session show` writes a probe's objective the same way, not as 384 numbers.
    assert objective_text({"channels": list(range(384)), "combine": "sum"}) == "sum of channel(s) 0-383 (384 channels)"
