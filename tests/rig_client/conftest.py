"""Fixtures of the rig-kit end-to-end tests: one real `actmax serve` shared by them all (each test
uses its own rig name and session), a storage failure of that server, and a virtual X display for the
presenter."""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def actmax_server(tmp_path_factory):
    """(ServerProcess, ApiClient) of a running server on loopback; its database is
    ``process.data_dir / "actmax.sqlite"``."""
    from server.launch import ServerProcess

    process = ServerProcess(tmp_path_factory.mktemp("actmax-server"), secrets.token_urlsafe(16))
    api = process.start()
    yield process, api
    process.stop()
    api.close()


@pytest.fixture
def xvfb():
    """A virtual X display for the test; skip with the install command when Xvfb is missing."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed: apt-get install -y xvfb (.ci/run installs it)")
    pytest.importorskip("pyglet", reason="pip install 'actmax[presenter]'")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "640x480x24",
                               "-nolisten", "tcp"], pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        display = f.readline().strip()
    yield f":{display}"
    server.terminate()
    server.wait(10)


def run_session(api, rig: str, *, population: int, references: int, generations: int) -> dict:
    """Start a one-thread CMA session on DCGAN faces for ``rig``; its thread's REST record."""
    session = api.post("/sessions", {
        "name": rig, "rig": rig, "references": {"source": "skimage", "count": references},
        "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma",
                     "optimizer_params": {"population": population}, "objective": {"channels": [0]},
                     "seed": 1, "n_generations": generations}]})
    (thread,) = api.get(f"/sessions/{session['id']}/threads")
    return thread


@contextlib.contextmanager
def storage_fails(process):
    """While open, the server (a ``ServerProcess``) can write no byte to any file, as on a full disk: its file
    size limit is 0 (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write fails with EFBIG). Its database then fails
    (SQLITE_IOERR) and it answers RESULTS with ERROR internal. Its log lines meanwhile are lost."""
    if not hasattr(resource, "prlimit"):
        pytest.skip("setting another process's file size limit needs Linux (resource.prlimit)")
    pid = process.process.pid
    limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, limits[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
