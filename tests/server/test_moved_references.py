"""A session's references folder moved, renamed or unmounted after its creation: the archive holds the reference
images, so a restart goes on without the folder; only a reference the archive lost needs it, and then the thread fails
with what to put back, ``POST /threads/{id}/resume`` answers 409 (never a 500) until it is back."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from rig_client.client import RigClient
from server.main import create_app
from server.session_config import SessionConfig
from server.store.models import Thread, ThreadStatus
from tests.server.conftest import served
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_lost_references import references
from tests.server.test_reconnect import thread_status


def reference_folder(path):
    path.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path / name)
    return path


def config(folder) -> dict:
    return {"name": "t", "rig": RIG, "references": {"source": str(folder), "count": 2},
            "threads": [{"name": "a", "generator": "dcgan-faces", "optimizer": "cma", "objective": {"channels": [0]}}]}


def test_a_stored_config_is_read_back_without_its_references_folder_which_a_new_one_needs(tmp_path):
    folder = reference_folder(tmp_path / "refs")
    stored = SessionConfig.model_validate(config(folder)).model_dump(mode="json")
    folder.rename(tmp_path / "moved")
    assert SessionConfig.stored(stored).references.source == str(folder)
    with pytest.raises(ValidationError, match="neither"):
        SessionConfig.model_validate(config(folder))


def test_a_moved_references_folder_with_the_archive_intact_does_not_stop_a_restart(tmp_path, endpoint, caplog):
    data, folder = tmp_path / "data", reference_folder(tmp_path / "refs")
    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create({"references": {"source": str(folder), "count": 2}})
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        pending = rig.next_batch(timeout=60)
    folder.rename(tmp_path / "moved")  # `mv refs refs-moved` while the server is down

    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        resent = rig.next_batch(timeout=60)
        assert resent.batch_id == pending.batch_id  # the thread goes on where it was, its references from the archive
        rig.send_results(resent.batch_id, answer(resent)).result(30)
        assert rig.next_batch(timeout=60).generation == 2
        assert thread_status(live, thread_id) == ThreadStatus.RUNNING
    assert not [r for r in caplog.records if r.getMessage().startswith(f"thread {thread_id} failed")]


def test_a_thread_is_added_to_a_session_whose_references_folder_moved(tmp_path, endpoint):
    """The new thread shows the session's references from the archive, as its other threads do: adding it used to
    validate the session's whole config anew and refuse it (422) because the folder was gone."""
    data, folder = tmp_path / "data", reference_folder(tmp_path / "refs")
    with LiveEngine(data, endpoint) as live, served(create_app(live.settings, live.sessions, engine=live.engine)) \
            as url, httpx.Client(base_url=url, headers={"Authorization": "Bearer t"}, timeout=60) as client, \
            RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create({"references": {"source": str(folder), "count": 2}})
        first = rig.next_batch(timeout=60)  # the session's references are in the archive now
        folder.rename(tmp_path / "moved")
        session_id = client.get(f"/threads/{thread_id}").json()["session_id"]
        added = client.post(f"/sessions/{session_id}/threads", json={
            "name": "b", "generator": "dcgan-faces", "optimizer": "cma", "objective": {"channels": [0]}})
        assert added.status_code == 201, added.text
        rig.send_results(first.batch_id, answer(first)).result(30)
        batches = {b.thread_id: b for b in (rig.next_batch(timeout=60), rig.next_batch(timeout=60))}
        assert set(batches) == {str(thread_id), str(added.json()["id"])}  # each thread's next batch
        assert {r.id for r in references(live)} <= {s.stimulus_id for s in batches[str(added.json()["id"])].stimuli}
        assert client.get(f"/threads/{added.json()['id']}").json()["status"] == "running"


def test_a_moved_references_folder_is_needed_for_a_lost_reference_the_resume_answers_409_until_it_is_back(
        tmp_path, endpoint):
    data, folder = tmp_path / "data", reference_folder(tmp_path / "refs")
    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create({"references": {"source": str(folder), "count": 2}})
        rig.next_batch(timeout=60)
    lost = references(live)[0]
    (data / lost.png_path).unlink()
    folder.rename(tmp_path / "moved")

    with LiveEngine(data, endpoint) as live, served(create_app(live.settings, live.sessions, engine=live.engine)) \
            as url, httpx.Client(base_url=url, headers={"Authorization": "Bearer t"}, timeout=60) as client:
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FAILED, 30, "the thread to fail")
        with live.sessions() as db:
            error = db.get(Thread, thread_id).last_error
        assert error == (f"failed: the image archive lost 1 reference image(s) ({lost.id} at {lost.png_path}), which "
                         f"{folder} no longer holds: restore {data}/images/ from a backup (README 'Backups'), or put "
                         f"the reference files back in {folder}")
        for _ in range(2):
            refused = client.post(f"/threads/{thread_id}/resume")
            assert refused.status_code == 409
            assert refused.json()["detail"] == f"cannot resume thread {thread_id}: {error.removeprefix('failed: ')}"
        assert client.get(f"/threads/{thread_id}").json()["last_error"] == error

        (tmp_path / "moved").rename(folder)  # put back: the lost reference renders again
        resumed = client.post(f"/threads/{thread_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "running"
        with RigClient(endpoint, RIG, channels=1) as rig:
            assert rig.next_batch(timeout=60).generation == 0
