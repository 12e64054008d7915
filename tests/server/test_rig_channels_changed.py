"""A rig that says HELLO with other channels than its previous recorded HELLO (a calibration, a re-sort, a restarted
rig program) is a ``rig.channels_changed`` warning in each active session it serves: their threads score channels
by number; one with another setup (protocol 1.2) a ``rig.setup_changed`` event there. The engine runs in-process over
a real ZeroMQ transport and a real SQLite file, `RigClient` as the rig.
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from rig_client.client import RigClient
from server.engine import channels_change, setup_change
from server.store import queries
from server.store.models import Event, Session, Thread, ThreadStatus
from server.store.records import stop_session
from tests.server.test_engine import RIG, LiveEngine, live  # noqa: F401  (the fixture)

ADVICE = ("; the session's threads score the channels by number: check that they still record the units you meant "
          "(retarget the thread otherwise)")


def connect(endpoint: str, labels: list[str] | None = None, channels: int | None = None, setup: dict | None = None
            ) -> None:
    """A rig program that says HELLO (its ``rig.connected`` event is committed before the WELCOME), then stops."""
    with RigClient(endpoint, RIG, channels=len(labels) if channels is None else channels, labels=labels,
                   setup=setup) as rig:
        assert rig.wait_connected(30)


def changes(live, kind: str = "rig.channels_changed") -> list[tuple]:
    with live.sessions() as db:
        return db.execute(select(Event.session_id, Event.thread_id, Event.level, Event.message, Event.data_json)
                          .where(Event.kind == kind).order_by(Event.id)).all()


def test_a_rig_back_with_another_setup_says_what_changed_in_each_session_it_serves(live):
    session = session_of(live, live.create())
    endpoint, first = live.settings.zmq_endpoint, {"viewing_distance_cm": 57, "monitor": "VIEWPixx", "notes": "x" * 80}
    connect(endpoint, ["a"], setup=first)
    connect(endpoint, ["a"], setup=dict(first))
    assert changes(live, "rig.setup_changed") == []  # the first HELLO, then the same setup again
    second = {"viewing_distance_cm": 60, "notes": "y" * 80, "eye_tracker": "EyeLink"}
    connect(endpoint, ["a"], setup=second)
    connect(endpoint, ["a"])  # a program that says nothing of itself
    assert changes(live) == []  # the channels stayed
    message = ("rig 'test-rig' reconnected with another setup: viewing_distance_cm 57 -> 60; monitor \"VIEWPixx\" -> "
               f"(none); notes \"{'x' * 56}... -> \"{'y' * 56}...; eye_tracker (none) -> \"EyeLink\"")
    dropped = "rig 'test-rig' reconnected with another setup: " + "; ".join(
        f"{field} {json.dumps(value)[:57] + '...' if len(json.dumps(value)) > 60 else json.dumps(value)} -> (none)"
        for field, value in second.items())
    assert changes(live, "rig.setup_changed") == [
        (session, None, "info", message, {"rig": RIG, "before": first, "after": second}),
        (session, None, "info", dropped, {"rig": RIG, "before": second, "after": None})]
    with live.sessions() as db:  # the session's setup is the latest HELLO's: none
        assert queries.rig_setup(db, RIG) is None
        assert queries.rig_setup(db, "another-rig") is None


def session_of(live, thread_id: int) -> int:
    with live.sessions() as db:
        return db.get(Thread, thread_id).session_id


def test_a_rig_back_with_other_labels_warns_each_active_session_it_serves_once(live):
    served, also_served = (session_of(live, live.create(objective={"channels": [2]})) for _ in range(2))
    live.create(session={"rig": "another-rig"})
    stopped = session_of(live, live.create())
    with live.sessions.begin() as db:
        stop_session(db, db.get(Session, stopped))
    paused = live.create(session={"name": "paused"})
    with live.sessions.begin() as db:
        db.get(Thread, paused).status = ThreadStatus.PAUSED
    endpoint = live.settings.zmq_endpoint

    connect(endpoint, ["blocks.6:67", "blocks.6:12", "blocks.6:5"])
    assert changes(live) == []  # the rig's first HELLO
    connect(endpoint, ["blocks.6:67", "blocks.6:12", "blocks.6:5"])
    assert changes(live) == []  # the same channels again

    connect(endpoint, ["blocks.6:67", "blocks.6:12", "blocks.6:67x"])
    message = ("rig 'test-rig' reconnected with other channels: channel 2 'blocks.6:5' -> 'blocks.6:67x'" + ADVICE)
    data = {"rig": RIG, "before": {"channels": 3, "channel_labels": ["blocks.6:67", "blocks.6:12", "blocks.6:5"]},
            "after": {"channels": 3, "channel_labels": ["blocks.6:67", "blocks.6:12", "blocks.6:67x"]}}
    assert changes(live) == [(session, None, "warning", message, data)
                             for session in (served, also_served, session_of(live, paused))]


def test_a_rig_back_with_fewer_channels_says_how_many(live):
    session = session_of(live, live.create())
    connect(live.settings.zmq_endpoint, ["a", "b", "c"])
    connect(live.settings.zmq_endpoint, ["a", "b"])
    [(_, _, _, message, data)] = changes(live)
    assert message == "rig 'test-rig' reconnected with other channels: 3 channels -> 2 channels" + ADVICE
    assert data["before"] == {"channels": 3, "channel_labels": ["a", "b", "c"]}
    assert data["after"] == {"channels": 2, "channel_labels": ["a", "b"]}
    assert changes(live)[0][0] == session


def test_a_rig_with_other_channels_warns_no_session_when_it_serves_none(live):
    connect(live.settings.zmq_endpoint, ["a", "b"])
    connect(live.settings.zmq_endpoint, ["b", "a"])
    assert changes(live) == []
    with live.sessions() as db:
        assert len(db.scalars(select(Event.id).where(Event.kind == "rig.connected")).all()) == 2


def test_the_previous_hello_is_the_recorded_one_so_a_server_restart_between_them_still_warns(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as live:
        session = session_of(live, live.create())
        connect(endpoint, ["elec1-u1", "elec2-u1"])
    with LiveEngine(tmp_path, endpoint) as live:
        connect(endpoint, ["elec1-u1", "elec2-u2"])
        assert [(row[0], row[3]) for row in changes(live)] == [
            (session, "rig 'test-rig' reconnected with other channels: channel 1 'elec2-u1' -> 'elec2-u2'" + ADVICE)]


def test_labels_gained_or_lost_are_a_change_and_a_long_list_is_cut_in_the_message():
    unlabelled, labelled = {"channels": 2, "channel_labels": None}, {"channels": 2, "channel_labels": ["a", "b"]}
    assert channels_change(unlabelled, unlabelled) is None
    assert channels_change(unlabelled, labelled) == "channel 0 unlabelled -> 'a', channel 1 unlabelled -> 'b'"
    assert channels_change(labelled, unlabelled) == "channel 0 'a' -> unlabelled, channel 1 'b' -> unlabelled"
    before = {"channels": 96, "channel_labels": [f"u{i}" for i in range(96)]}
    after = {"channels": 96, "channel_labels": [f"u{(i + 1) % 96}" for i in range(96)]}
    assert channels_change(before, after) == (", ".join(f"channel {i} 'u{i}' -> 'u{i + 1}'" for i in range(8))
                                              + " and 88 more channels")


def test_a_change_inside_a_nested_setup_is_named_by_its_path_not_hidden_in_a_cut_object():
    """`actmax rig present` nests its display and stimulus: a new refresh rate sits at the end of an object whose JSON
    is longer than a cut value, so naming the object alone showed the same 57 characters on both sides."""
    display = {"width_px": 1920, "width_cm": 53.0, "distance_cm": 57.0, "photodiode_px": 40, "refresh_hz": 60.0}
    before = {"rig_program": "actmax rig present 1.0", "display": display, "latency_ms": 50.0}
    after = {**before, "display": {**display, "refresh_hz": 120.0}}
    assert setup_change(before, after) == "display.refresh_hz 60.0 -> 120.0"
    gone = [f"display.{field} {json.dumps(value)} -> (none)" for field, value in display.items()]
    assert setup_change(before, {**before, "display": {}}) == "; ".join(gone + ["display (none) -> {}"])
    assert setup_change({"a": 1}, {"a": {"b": True}}) == "a 1 -> (none); a.b (none) -> true"
    assert setup_change({"a.b": 1}, {"a": {"b": 1}}) == "a.b 1 -> (none); a.b (none) -> 1"  # other fields, one name
    assert setup_change({"x\ny": {"z": [1, 2]}}, {"x\ny": {"z": [1, 3]}}) == "x\\ny.z [1, 2] -> [1, 3]"
    assert setup_change(after, json.loads(json.dumps(after))) is None


def test_the_setup_at_a_moment_is_that_of_the_rigs_last_hello_before_it(live):
    """HELLOs of this rig and another, the last of them after the session's last presentation."""
    connect(live.settings.zmq_endpoint, ["a"], setup={"v": 1})
    with live.sessions() as db:
        (said,) = db.scalars(select(Event.time).where(Event.kind == "rig.connected"))
    with RigClient(live.settings.zmq_endpoint, "another-rig", channels=1, setup={"v": 9}) as other:
        assert other.wait_connected(30)
    connect(live.settings.zmq_endpoint, ["a"], setup={"v": 2})
    with live.sessions() as db:
        assert [queries.rig_setup(db, RIG, until) for until in (said, None)] == [{"v": 1}, {"v": 2}]
        assert queries.rig_setup(db, "another-rig") == {"v": 9}
        assert queries.rig_setup(db, RIG, said - timedelta(seconds=1)) is None  # before its first HELLO
