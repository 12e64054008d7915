"""`free_port`: the ports the tests and ``actmax demo`` start servers on."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from server.launch import PORTS_FROM, free_port

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not RANGE.exists(), reason="Linux's ip_local_port_range only")
def test_a_free_port_is_below_the_ports_of_outgoing_connections_and_can_be_bound():
    """Outside the range connections take their local ports from, so none can take it before the server binds it
    (the cause of "Address already in use" at a server's start under load); random, so picks rarely collide."""
    start = int(RANGE.read_text(encoding="utf-8").split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(PORTS_FROM <= port < start for port in ports), (ports, start)
    assert len(set(ports)) > 10
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_signal_during_signals_held_takes_effect_after_the_block_and_children_are_not_deaf_to_it():
    """The demo's SIGTERM came while its rig was being started, before `process = ...`: the clean-up found no rig,
    and the rig (in a session of its own) ran on."""
    import os
    import signal

    from server.demo import stopped_as_on_ctrl_c
    from server.launch import signals_held

    assigned = None
    with stopped_as_on_ctrl_c(), pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            child = subprocess.Popen(["sleep", "30"])
            assigned = child
    assert assigned is child  # the interrupt came after the assignment
    child.terminate()  # a child started while signals were held still hears SIGTERM
    assert child.wait(10) == -signal.SIGTERM
