"""Weights as the server sees them: a file replaced, truncated or removed on disk is noticed (the cache, REST),
a resume whose weights do not load is refused, and where ACTMAX_WEIGHTS_DIR points is said at start."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch

from generators import GeneratorError
from generators.base import sha256_file
from generators.dcgan import STATE_KEY, packaged_weights
from rig_client.version import package_version
from server.launch import ServerProcess
from server.main import create_app
from server.settings import Settings, load_settings
from server.store.models import Thread, ThreadStatus
from server.weights import GeneratorCache, WeightsChanging, weights_dir_note
from tests.server.conftest import TOKEN, LiveServer, WakeCounter, served, session_config, thread_config


def other_weights(path: Path) -> None:
    """Replace the DCGAN weights at ``path`` with others (a new file moved over it, as ``cp`` to a folder and ``mv``
    would): the packaged ones with one layer's weights halved."""
    checkpoint = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    checkpoint[STATE_KEY]["main.12.weight"] /= 2
    torch.save(checkpoint, path.with_suffix(".new"))
    os.replace(path.with_suffix(".new"), path)


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    """An ACTMAX_WEIGHTS_DIR with the packaged DCGAN weights in ``dcgan-faces/``."""
    (tmp_path / "weights" / "dcgan-faces").mkdir(parents=True)
    shutil.copy(packaged_weights(), tmp_path / "weights" / "dcgan-faces" / "weights.tar")
    return tmp_path / "weights"


def test_the_cache_loads_weights_again_once_they_change_on_disk(weights_dir: Path):
    file = weights_dir / "dcgan-faces" / "weights.tar"
    cache = GeneratorCache("cpu", weights_dir)
    first = cache.get("dcgan-faces")
    assert cache.get("dcgan-faces") is first  # unchanged: not loaded (nor hashed) again
    other_weights(file)
    replaced = cache.get("dcgan-faces")
    assert replaced is not first and replaced.weights_sha256 == sha256_file(file) != first.weights_sha256
    assert cache.status("dcgan-faces").sha256 == sha256_file(file)

    # Other weights of the same size written in place with the old mtime kept (cp -p, rsync --inplace -t).
    kept = os.stat(file)
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    checkpoint[STATE_KEY]["main.12.weight"] *= 3
    torch.save(checkpoint, tmp := file.with_suffix(".other"))
    assert tmp.stat().st_size == kept.st_size
    file.write_bytes(tmp.read_bytes())
    os.utime(file, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert cache.get("dcgan-faces").weights_sha256 == sha256_file(file) != replaced.weights_sha256

    with open(file, "r+b") as handle:  # truncated in place: the same inode (as a copy under way leaves it)
        handle.truncate(100_000)
    with pytest.raises(WeightsChanging, match="truncated or corrupt.*written 2 s ago or less: read again once it"):
        cache.get("dcgan-faces")  # a thread waits for it (ThreadNotReady), where it used to fail
    past = time.time() - 10
    for written in (file.parent, *file.parent.iterdir()):
        os.utime(written, (past, past))
    with pytest.raises(GeneratorError) as refused:  # settled, and still not weights: refused as before
        cache.get("dcgan-faces")
    assert not isinstance(refused.value, WeightsChanging)
    status = cache.status("dcgan-faces")
    assert not status.found and status.label == "UNUSABLE" and "truncated or corrupt" in status.problem

    file.unlink()
    status = cache.status("dcgan-faces")
    assert not status.found and status.label == "MISSING" and str(file) in status.problem


def test_get_generators_reports_the_weights_on_disk_now(weights_dir: Path, tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", token=TOKEN, weights_dir=weights_dir, device="cpu")
    live = LiveServer(settings, WakeCounter())
    file = weights_dir / "dcgan-faces" / "weights.tar"
    with served(create_app(settings, live.sessions, engine=live.engine)) as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        def dcgan() -> dict:
            (listed,) = [g for g in client.get("/generators").json() if g["name"] == "dcgan-faces"]
            return listed

        assert dcgan()["found"] and dcgan()["weights_sha256"] == sha256_file(file)
        other_weights(file)
        assert dcgan()["weights_sha256"] == sha256_file(file)
        file.rename(tmp_path / "away.tar")
        gone = dcgan()
        assert not gone["found"] and gone["weights_sha256"] is None and "not found" in gone["problem"]
    live.db_engine.dispose()


def test_a_thread_whose_weights_do_not_load_is_not_resumed(live_server: LiveServer, tmp_path: Path):
    file = tmp_path / "weights.tar"
    shutil.copy(packaged_weights(), file)
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        session = client.post("/sessions", json=session_config(threads=[thread_config(weights=str(file))]))
        assert session.status_code == 201, session.text
        tid = session.json()["threads"][0]["id"]
        assert client.post(f"/threads/{tid}/pause").json()["status"] == "paused"
        file.write_bytes(file.read_bytes()[:100_000])  # truncated while the thread is paused

        refused = client.post(f"/threads/{tid}/resume")
        assert refused.status_code == 409
        assert refused.json()["detail"].startswith(f"cannot resume thread {tid}: cannot read weights for "
                                                   f"'dcgan-faces' from {file}: it is not a PyTorch weights file, "
                                                   "or it is truncated or corrupt")
        assert client.get(f"/threads/{tid}").json()["status"] == "paused"

        with live_server.sessions.begin() as db:  # as the engine leaves a thread whose weights failed at restart
            db.get(Thread, tid).status = ThreadStatus.FAILED
        file.unlink()
        missing = client.post(f"/threads/{tid}/resume")
        assert missing.status_code == 409 and "not found; tried" in missing.text
        assert missing.json()["detail"].count("ACTMAX_WEIGHTS_DIR/dcgan-faces/ on the server") == 1  # said once
        assert client.get(f"/threads/{tid}").json()["status"] == "failed"

        shutil.copy(packaged_weights(), file)  # fixed: the resume goes through
        resumed = client.post(f"/threads/{tid}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "running"
        assert client.post(f"/sessions/{session.json()['id']}/stop").status_code == 200


def test_an_empty_weights_dir_variable_is_unset(monkeypatch):
    monkeypatch.setenv("ACTMAX_WEIGHTS_DIR", "")
    assert load_settings().weights_dir is None


def test_the_start_up_note_names_the_weights_folder(weights_dir: Path, tmp_path: Path):
    level, note = weights_dir_note(weights_dir)
    assert level == logging.INFO and f"from {weights_dir}/<generator>/ (ACTMAX_WEIGHTS_DIR) for dcgan-faces" in note
    assert weights_dir_note(None) == (logging.INFO, "ACTMAX_WEIGHTS_DIR is not set: every generator loads from "
                                                    "its standard locations (or a thread's own weights path)")
    level, note = weights_dir_note(tmp_path)  # a folder, but with no generator's folder in it
    assert level == logging.WARNING and "holds no folder named after a generator (biggan-deep-128" in note
    level, note = weights_dir_note(weights_dir / "dcgan-faces" / "weights.tar")
    assert level == logging.WARNING and "weights.tar is not a folder" in note


def test_serve_warns_at_start_when_the_weights_folder_does_not_exist(tmp_path: Path):
    missing = tmp_path / "Weights"  # mistyped, or not mounted
    server = ServerProcess(tmp_path / "data", "t" * 32, env={"ACTMAX_WEIGHTS_DIR": str(missing)})
    server.start().close()
    server.stop()
    (line,) = [line for line in server.log_path.read_text().splitlines() if "ACTMAX_WEIGHTS_DIR" in line]
    assert f"WARNING server.serve: ACTMAX_WEIGHTS_DIR {missing} does not exist" in line
    assert "every generator loads from its standard locations (or a thread's own weights path) instead" in line
    # The log says which build served (what the data folder's sessions were recorded by).
    assert f"INFO server.serve: actmax {package_version()} serving REST on {server.url}" in server.log_path.read_text()
