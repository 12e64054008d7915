"""One real `actmax serve` process shared by the rig-kit end-to-end tests (each uses its own rig
name and session), so the suite starts the server once."""

from __future__ import annotations

import secrets

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


def run_session(api, rig: str, *, population: int, references: int, generations: int) -> dict:
    """Start a one-thread CMA session on DCGAN faces for ``rig``; its thread's REST record."""
    session = api.post("/sessions", {
        "name": rig, "rig": rig, "references": {"source": "skimage", "count": references},
        "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma",
                     "optimizer_params": {"population": population}, "objective": {"channels": [0]},
                     "seed": 1, "n_generations": generations}]})
    (thread,) = api.get(f"/sessions/{session['id']}/threads")
    return thread
