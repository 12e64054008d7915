"""What a rig written from docs/protocol.md alone meets on the server: replies to RESULTS
in order and named by batch, the HELLO rate limit, unknown presentation fields, reused presentation ids,
the order of a resent batch, integer windows, and scores that overflow."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid

import pytest

from rig_client.client import Presentation, RigClient
from rig_client.protocol import ProtocolError
from server.objectives import Objective, parse
from server.store.models import Thread, ThreadStatus
from server.transport import PeerBudget
from tests.server.test_engine import RIG, answer, live  # noqa: F401  (the fixture)
from tests.server.test_transport import Harness, hello, raw, results, run


def test_replies_to_results_keep_their_order_and_name_the_batch_whenever_its_header_is_read(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint, max_message_bytes=4096) as h:
            d = await h.register()
            await d.send_multipart([*results("b1"), b"\0" * 2500, b"\0" * 2500])  # each frame fits; not all
            await d.send_multipart(raw(b"RESULTS", b'{"batch_id": "b1", "x": nan}'))  # not JSON: not read
            await d.send_multipart(results("b1"))
            replies = [(await h.reply(d)).header for _ in range(3)]
            assert [(r.get("code"), r.get("batch_id")) for r in replies] == \
                [("too_large", "b1"), ("bad_json", None), (None, "b1")]

    run(scenario())


def test_a_message_only_the_server_sends_gets_unexpected_type_before_its_fields_are_checked(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = await h.register()
            for mtype in (b"WELCOME", b"BATCH", b"ACK"):
                await d.send_multipart(raw(mtype, {}))
                reply = (await h.reply(d)).header
                assert (reply["code"], reply["in_reply_to"]) == ("unexpected_type", mtype.decode())

    run(scenario())


def test_a_hello_rate_limit_answers_rate_limited_which_a_rig_retries(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            h.transport._hello_budget = PeerBudget(burst=1, per_s=1e-6)  # one HELLO per address, then none
            await h.register("rig-a")
            d = h.dealer()
            await d.send_multipart(hello("rig-b"))
            reply = (await h.reply(d)).header
            assert (reply["code"], reply["in_reply_to"]) == ("rate_limited", "HELLO")
            assert not h.transport.connected("rig-b")

    run(scenario())


def test_unknown_presentation_fields_are_ignored_logged_once_per_connection_and_named_in_the_ack(
        zmq_context, endpoint, caplog):
    def typo(batch_id: str) -> list[bytes]:
        frames = results(batch_id)
        header = json.loads(frames[2])
        header["presentations"][0]["fixation_borken"] = True
        return [*frames[:2], json.dumps(header).encode()]

    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            for _ in range(2):  # two connections
                d = await h.register()
                for batch_id in ("b1", "b2"):
                    await d.send_multipart(typo(batch_id))
                    ack = (await h.reply(d)).header
                    assert ack["accepted"] == 1 and ack["ignored_fields"] == ["fixation_borken"]
                await d.send_multipart(results("b3"))
                assert "ignored_fields" not in (await h.reply(d)).header

    caplog.set_level(logging.WARNING, logger="server.transport")
    run(scenario())
    warned = [r.getMessage() for r in caplog.records if "fixation_borken" in r.getMessage()]
    assert len(warned) == 2 and "rig-a" in warned[0] and "spelling" in warned[0]


# --- the engine --------------------------------------------------------------------------------


def test_a_resent_batch_keeps_its_original_relative_order_and_windows_are_integers(live):
    live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
        assert first.response_window_ms == (50, 200) and all(type(w) is int for w in first.response_window_ms)
        shown = answer(first)[:3]
        rig.send_results(first.batch_id, shown, done=False).result(30)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:  # a restarted rig program
        again = rig.next_batch(timeout=60)
    answered = {p.stimulus_id for p in shown}
    assert again.batch_id == first.batch_id
    assert [s.stimulus_id for s in again.stimuli] == [s.stimulus_id for s in first.stimuli
                                                      if s.stimulus_id not in answered]


def test_a_presentation_id_reused_for_another_showing_is_refused_and_a_resend_is_a_duplicate(live):
    live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
        ids = [str(uuid.uuid4()) for _ in first.stimuli]
        shown = [Presentation(s.stimulus_id, [float(i)], time.time(), (50, 200), pid)
                 for i, (s, pid) in enumerate(zip(first.stimuli, ids))]
        same_message = [shown[0], Presentation(first.stimuli[1].stimulus_id, [1.0], time.time(), (50, 200), ids[0])]
        with pytest.raises(ProtocolError, match=f"{ids[0]}.*new UUID for each showing") as err:
            rig.send_results(first.batch_id, same_message, done=False).result(30)
        assert err.value.code == "bad_field"
        assert rig.send_results(first.batch_id, shown).result(30)["accepted"] == len(shown)
        second = rig.next_batch(timeout=60)
        assert second.generation == 1
        reused = [Presentation(s.stimulus_id, [1.0], time.time(), (50, 200), pid)  # a UUID source that repeats
                  for s, pid in zip(second.stimuli, ids)]
        with pytest.raises(ProtocolError, match=f"already used for stimulus .* of batch '{first.batch_id}'") as err:
            rig.send_results(second.batch_id, reused).result(30)
        assert err.value.code == "bad_field"
        assert rig.send_results(first.batch_id, shown).result(30) == \
            {"batch_id": first.batch_id, "accepted": 0, "duplicates": len(shown)}  # a true resend


def test_a_score_that_overflows_is_unscored_and_the_thread_goes_on(live):
    thread_id = live.create(objective={"expression": "1e300 * rate(0)"})
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        batch = rig.next_batch(timeout=60)
        # Half the images twice at 1e8 spikes/s: each showing scores 1e308, their mean overflows.
        rates = lambda i, s: [1e8 if i % 2 else 1.0]  # noqa: E731
        shown = answer(batch, rates) + [p for i, p in enumerate(answer(batch, rates)) if i % 2]
        rig.send_results(batch.batch_id, shown).result(30)
        assert rig.next_batch(timeout=60).generation == 1
    with live.sessions() as db:
        thread = db.get(Thread, thread_id)
        assert (thread.status, thread.last_error) == (ThreadStatus.RUNNING, None)


def test_scores_that_overflow_are_nan_not_infinite():
    shown = {"a": [([1.7e308], None), ([1.7e308], None)], "b": [([1.0], None)]}
    scores = Objective.from_config({"channels": [0], "combine": "sum"}).score_generation(shown, frozenset())
    assert math.isnan(scores["a"]) and scores["b"] == 1.0
    assert math.isnan(parse("1e300 * rate(0) + 1e300 * rate(0)").score([1e9]))
