"""``actmax rig sim`` names its channels by their units in HELLO when not given --labels, so the server records
which simulated unit made which channel."""

from __future__ import annotations

import time

from server import ServerError
from server.launch import start_sim_rig, stop


def test_the_sim_rig_labels_its_channels_by_their_units_by_default(actmax_server, tmp_path):
    process, api = actmax_server
    rig = start_sim_rig(process.zmq_endpoint, "sim-units", ["blocks.6:67", "blocks.4:7:14:14", "blocks.6:67"],
                        tmp_path / "rig.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                state = api.get("/rigs/sim-units")
            except ServerError:  # not seen yet
                state = {"connected": False}
            if state["connected"] or rig.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop(rig)
    assert state["connected"], (tmp_path / "rig.log").read_text()[-2000:]
    assert state["channel_labels"] == ["blocks.6:67", "blocks.4:7:14:14", "blocks.6:67#2"]  # unique, as HELLO asks
