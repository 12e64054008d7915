"""A server that did not run for a while (a suspended laptop, SIGSTOP, an event loop held up) says so, and does not
take that time for its rigs' silence: a real Transport on loopback, its event loop blocked, raw DEALER sockets as rigs."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from rig_client.protocol import Message, MessageType, encode
from tests.server.test_transport import Harness, run

HB = 0.1  # expiry after HB * 5 of silence
PAUSE_S = 1.5


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
