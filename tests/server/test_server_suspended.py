"""A server that did not run for a while (a suspended laptop, SIGSTOP, an event loop held up) says so, does not
take that time for its rigs' silence, and does not take a rig's reconnect meanwhile for a second program: a real
Transport on loopback, its event loop blocked, raw DEALER sockets and a real `RigClient` as rigs."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from rig_client.client import RigClient
from rig_client.protocol import Message, MessageType, encode
from tests.server.test_transport import Harness, Recorder, run

HB = 0.1  # expiry after HB * 5 of silence
PAUSE_S = 1.5
RECONNECT_PAUSE_S = 3.0  # a rig gives up after 5 HB of silence and reconnects 1 s later


def test_a_server_that_did_not_run_says_so_and_keeps_its_rigs(zmq_context, endpoint, caplog):
    """rig-a talks on after the pause and stays connected (before, it was marked silent the moment the server woke:
    "silent for 0.5 s", the constant liveness period); rig-b stays silent and is marked so with its real gap."""
    caplog.set_level(logging.INFO, logger="server.transport")

    async def scenario():
        async with Harness(zmq_context, endpoint, heartbeat_s=HB, liveness=5) as h:
            a, _ = await h.register("rig-a"), await h.register("rig-b")
            time.sleep(PAUSE_S)  # the event loop, and so the whole server, does not run
            await asyncio.sleep(HB / 2)  # the heartbeat loop, long overdue, checks the rigs before anyone talks
            assert h.transport.connected("rig-a") and h.transport.connected("rig-b")
            for _ in range(15):
                await a.send_multipart(encode(Message(MessageType.HEARTBEAT)))
                await asyncio.sleep(HB)
            assert h.transport.connected("rig-a") and not h.transport.connected("rig-b")
            assert ("disconnect", "rig-a") not in h.handler.events and ("disconnect", "rig-b") in h.handler.events

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (paused,) = [line for line in lines if line.startswith("the server did not run")]
    gone = re.fullmatch(r"the server did not run for ([0-9.]+) s \(suspended or overloaded\); that time does not count "
                        r"as its rigs' silence \(a rig that gave up on the server meanwhile reconnects by itself\)",
                        paused)
    assert gone and PAUSE_S - 2 * HB <= float(gone[1]) <= PAUSE_S + 1.0, paused
    (silent,) = [line for line in lines if "silent for" in line]
    gap = re.fullmatch(r"rig rig-b silent for ([0-9.]+) s; marked disconnected", silent)
    assert gap and float(gap[1]) >= PAUSE_S, silent  # the real gap since it was heard, not the liveness period


class Replacements(Recorder):
    """``Recorder`` that also records ``on_replaced``."""

    async def on_replaced(self, rig_name, heard_s_ago):
        self.events.append(("replaced", rig_name))


def test_the_only_rig_reconnecting_across_a_pause_is_no_second_program(zmq_context, endpoint, caplog):
    """A real `RigClient` gives up on the paused server and reconnects; its old connection's heartbeats, queued during
    the pause, are read at the wake-up just before the new HELLO. That is a reconnect, logged as one (before: a
    warning and ``on_replaced``, "is a second rig program running under this name?")."""
    caplog.set_level(logging.INFO, logger="server.transport")

    async def scenario():
        harness = Harness(zmq_context, endpoint, heartbeat_s=HB, liveness=5)
        harness.handler = harness.transport.handler = Replacements()
        async with harness as h:
            # Heartbeats every HB, and up to 50 HB for a WELCOME: one reconnect during the pause.
            with RigClient(endpoint, "rig-a", channels=1, heartbeat_s=HB, liveness=50, reconnect_max_s=1.0) as rig:
                while not h.transport.connected("rig-a"):
                    await asyncio.sleep(HB)
                time.sleep(RECONNECT_PAUSE_S)  # the rig hears nothing for 5 HB (WELCOME's), says HELLO again 1 s later
                while h.handler.events.count(("connected", "rig-a")) < 2 or not rig.connected:
                    await asyncio.sleep(HB)
                await asyncio.sleep(3 * HB)
                assert rig.connected and h.transport.connected("rig-a")
                assert ("replaced", "rig-a") not in h.handler.events and ("disconnect", "rig-a") not in h.handler.events

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "server.transport"]
    assert [line for line in lines if line.startswith("the server did not run")]
    assert [line for line in lines if "replacing identity" in line] == []
    assert len([line for line in lines if line.startswith("rig rig-a connected (identity ")]) == 2
