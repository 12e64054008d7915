"""`free_port`: the ports the tests and ``actmax demo`` start servers on."""

from __future__ import annotations

import socket
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
