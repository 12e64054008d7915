"""Fixtures shared by every test package: loopback endpoints, a leak-checking ZeroMQ context; one BLAS/OpenMP
thread per process."""

from __future__ import annotations

import os
import socket
import threading
import time

# One BLAS/OpenMP thread per process (this one and the servers, rigs and CLIs it starts, which inherit it),
# set before numpy or torch load: the suite runs several processes at once on few cores, where idle threads
# spinning for work cost more than they gain (twice as slow on 2 cores). Set a variable to override it.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pytest  # noqa: E402  (after the thread settings)
import zmq  # noqa: E402

from server.launch import free_port  # noqa: E402


def wait_port_free(endpoint: str, timeout_s: float = 10.0) -> None:
    """Until ``tcp://HOST:PORT`` can be bound again (as ZeroMQ binds: with SO_REUSEADDR). A ZeroMQ socket closed in
    this process releases its port in ZeroMQ's own thread a little later: a server started again on that port at
    once, in the same process, may find it still held (under load)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(port)))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.01)


@pytest.fixture
def endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` on a free port."""
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def zmq_context():
    """A fresh `zmq.Context`; the test fails if any socket made from it is still open at the end.

    Code under test may wrap it (``zmq.asyncio.Context.shadow``): the check terminates the
    context, which only returns once every socket on it, wrapped or not, has been closed.
    """
    ctx = zmq.Context()
    yield ctx
    terminator = threading.Thread(target=ctx.term, name="zmq-context-term", daemon=True)
    terminator.start()
    terminator.join(timeout=5.0)
    if terminator.is_alive():
        open_sockets = [s for s in list(ctx._sockets) if not s.closed]
        for s in open_sockets:
            s.close(linger=0)
        pytest.fail(f"a ZeroMQ socket was left open at teardown ({len(open_sockets)} made directly "
                    "from the context, others through a shadow context); close every socket "
                    "with linger=0")

