"""Starting the server and a simulated rig as separate processes, and talking to the REST API.

Shared by ``actmax demo``, the end-to-end tests and the benches.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from server import ServerError


PORTS_FROM = 20000  # free_port's lowest, above the ports services commonly listen on


def free_port() -> int:
    """A TCP port on loopback that nothing holds right now, below the range the system hands out as the local
    ports of outgoing connections: a port from that range (``bind`` to port 0) can be taken by any connection
    before the process it was picked for binds it ("Address already in use"). Random, so that processes picking
    at once rarely pick the same port."""
    ports = range(PORTS_FROM, max(_outgoing_ports_start(), PORTS_FROM + 1000))
    for port in random.SystemRandom().sample(ports, 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # all 50 held: any free one
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outgoing_ports_start() -> int:
    """The first local port of outgoing connections: Linux's ``ip_local_port_range`` (32768 by default), else
    49152 (IANA's, macOS's and Windows')."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP that come during the block take effect when it ends: a child started in it, and
    assigned where its clean-up finds it, is never left running by a signal that came while it was being made (its
    own session keeps it alive). Not by masking them: a child would inherit the mask, and ignore its SIGTERM."""
    if threading.current_thread() is not threading.main_thread():  # Python runs signal handlers in the main thread
        yield
        return
    came: list[int] = []
    stops = [stop for stop in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if stop is not None]
    previous = {stop: signal.signal(stop, lambda signum, frame: came.append(signum)) for stop in stops}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        for signum in came:
            signal.raise_signal(signum)


def _actmax(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "server.cli", *args], env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class ServerProcess:
    """``actmax serve`` in its own process on free loopback ports, with its REST client."""

    data_dir: Path
    token: str
    http_port: int = field(default_factory=free_port)
    zmq_port: int = field(default_factory=free_port)
    batch_timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # more ACTMAX_* settings
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def zmq_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout: float = 60.0) -> ApiClient:
        args = ["serve", "--port", str(self.http_port), "--zmq-endpoint", self.zmq_endpoint,
                "--data-dir", str(self.data_dir), "--device", "cpu"]
        if self.batch_timeout_s is not None:
            args += ["--batch-timeout", str(self.batch_timeout_s)]
        with signals_held():
            self.process = _actmax(args, {**self.env, "ACTMAX_TOKEN": self.token}, self.log_path)
        client = ApiClient(self.url, self.token)
        try:
            client.wait_healthy(timeout, self.process, self.log_path)
        except BaseException:  # never leave a server behind that nobody will stop
            client.close()
            self.stop()
            raise
        return client

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        stop(self.process, graceful=False)

    def stop(self) -> None:
        stop(self.process)


def start_sim_rig(endpoint: str, rig: str, units: list[str], log_path: Path, *, noise_eps: float = 0.0,
                  seed: int = 0, extra: list[str] | None = None) -> subprocess.Popen:
    """``actmax rig sim`` in its own process."""
    args = ["rig", "sim", "--endpoint", endpoint, "--rig", rig, "--noise-eps", str(noise_eps), "--seed", str(seed)]
    for unit in units:
        args += ["--unit", unit]
    return _actmax(args + (extra or []), {}, log_path)


@contextmanager
def server_with_sim_rig(server: ServerProcess, rig: str, units: list[str], rig_log: Path,
                        **rig_options) -> Iterator[tuple[ApiClient, subprocess.Popen]]:
    """Start ``server``, then ``actmax rig sim`` as ``rig`` on it (``start_sim_rig``'s options); yields the REST
    client and the rig's process. On leaving: the rig stops, then the server, and the client closes (the
    server stops also when the rig could not start)."""
    api = server.start()
    process = None
    try:
        with signals_held():
            process = start_sim_rig(server.zmq_endpoint, rig, units, rig_log, **rig_options)
        yield api, process
    finally:
        stop(process)
        server.stop()
        api.close()


def stop(process: subprocess.Popen | None, graceful: bool = True, timeout: float = 15.0) -> None:
    """SIGTERM (then SIGKILL after ``timeout``) or SIGKILL at once; waits for the process to end."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def error_text(response: httpx.Response) -> str:
    """The server's reason: ``detail`` as one line (``field.path: message; ...`` for a 422), else the body."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in item.get('loc', [])[1:]) or '(body)'}: {item.get('msg')}"
                         for item in detail)
    return str(detail)


class ApiClient:
    """A small authenticated client of the REST API that raises ``ServerError`` with the server's reason."""

    def __init__(self, url: str, token: str, timeout: float = 30.0, client: str | None = None):
        """``client``: who sends the requests (``X-Actmax-Client``, named in the events of the actions they take)."""
        self.url = url
        headers = {"Authorization": f"Bearer {token}", **({"X-Actmax-Client": client} if client else {})}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def get(self, path: str, **params):
        return self._checked(self._http.get(path, params=params or None))

    def post(self, path: str, body: dict | None = None):
        return self._checked(self._http.post(path, json=body))

    def _checked(self, response: httpx.Response):
        if response.is_error:
            raise ServerError(f"{response.request.method} {response.request.url.path}: "
                              f"HTTP {response.status_code}: {error_text(response)}")
        return response.json()

    def wait_healthy(self, timeout: float, process: subprocess.Popen | None = None, log_path: Path | None = None):
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:] if log_path and log_path.exists() else ""
                raise ServerError(f"the server exited with code {process.returncode}:\n{tail}")
            try:
                response = self._http.get("/health")
                if response.status_code == 200:
                    return
                problem = f": {response.json().get('problem')}"  # degraded: a full disk, ...
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.05)
        raise ServerError(f"the server at {self.url} did not become healthy within {timeout:.0f} s{problem}")

    def close(self) -> None:
        self._http.close()
