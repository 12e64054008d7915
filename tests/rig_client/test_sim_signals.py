"""``actmax rig sim`` stops at once on Ctrl-C or SIGTERM, while it loads its model or waits for a server."""

from __future__ import annotations

import os
import signal
import time

import pytest

from server.cli import main


class _Scorer:
    """A stand-in for the CNN: the wait for a server is what is tested."""

    def __init__(self, units, device, rf):
        self.units = units


@pytest.fixture
def signals():
    """Handlers of SIGINT and SIGTERM put back after the test; meanwhile a SIGTERM only records itself, so
    that a rig that ignored it leaves this process running."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_wait_for_a_server(sig, code, endpoint, signals, monkeypatch, capsys):
    from rig_client import units
    from rig_client.client import RigClient

    monkeypatch.setattr(units, "UnitScorer", _Scorer)
    wait_connected = RigClient.wait_connected

    def signalled(client, timeout=None):
        os.kill(os.getpid(), sig)  # no server listens at the endpoint: the rig is waiting for one
        monkeypatch.setattr(RigClient, "wait_connected", wait_connected)
        return wait_connected(client, timeout)

    monkeypatch.setattr(RigClient, "wait_connected", signalled)
    start = time.monotonic()
    assert main(["rig", "sim", "--endpoint", endpoint]) == code
    assert time.monotonic() - start < 5
    assert "no server answered" not in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_model_load(sig, endpoint, signals, monkeypatch):
    from rig_client import units

    def slow_load(units, device, rf):
        os.kill(os.getpid(), sig)
        time.sleep(10)
        raise AssertionError("the model load went on after the signal")

    monkeypatch.setattr(units, "UnitScorer", slow_load)
    start = time.monotonic()
    assert main(["rig", "sim", "--endpoint", endpoint]) == 130
    assert time.monotonic() - start < 5


def test_a_server_that_keeps_refusing_the_hello_is_named_not_called_silent(endpoint, monkeypatch, capsys):
    """A server that answers every HELLO ``rate_limited`` (which the client retries) is what the rig's
    give-up line names, not "no server answered"."""
    import threading

    import zmq

    from rig_client import sim, units
    from rig_client.protocol import ErrorCode, decode, encode, error

    monkeypatch.setattr(units, "UnitScorer", _Scorer)
    monkeypatch.setattr(sim, "CONNECT_TIMEOUT_S", 2)
    context = zmq.Context()
    server = context.socket(zmq.ROUTER)
    server.bind(endpoint)
    done = threading.Event()

    def refuse_every_hello():
        while not done.is_set():
            if server.poll(100):
                identity, *frames = server.recv_multipart()
                if decode(frames).type == "HELLO":
                    server.send_multipart([identity, *encode(error(
                        ErrorCode.RATE_LIMITED, "too many HELLOs from this address", in_reply_to="HELLO"))])

    answering = threading.Thread(target=refuse_every_hello)
    answering.start()
    try:
        assert main(["rig", "sim", "--endpoint", endpoint]) != 0
    finally:
        done.set()
        answering.join(5)
        server.close(0)
        context.term()
    err = capsys.readouterr().err
    assert "did not take this rig within 2 s; it last answered: rate_limited: too many HELLOs" in err, err
    assert "no server answered" not in err
