"""Reference images the archive lost (``images/`` deleted, or just their files) at a restart: those their source
renders again exactly (scikit-image's, a folder's file unchanged) are archived again and the thread goes on; any
other fails the thread with what to restore, and ``POST /threads/{id}/resume`` answers 409 until it is back."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import select

from rig_client.client import RigClient
from rig_client.protocol import encode_png
from server.images import load_references
from server.main import create_app
from server.store.archive import ImageArchive
from server.store.models import Event, Stimulus, StimulusKind, Thread, ThreadStatus
from tests.server.conftest import served
from tests.server.test_faults import wait_archived
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_reconnect import thread_status


def references(live) -> list[Stimulus]:
    with live.sessions() as db:
        return list(db.scalars(select(Stimulus).where(Stimulus.kind == StimulusKind.REFERENCE).order_by(Stimulus.id)))


def events(live, kind: str) -> list[tuple[str, str, dict]]:
    with live.sessions() as db:
        return db.execute(select(Event.level, Event.message, Event.data_json).where(Event.kind == kind)).all()


def test_skimage_references_lost_with_the_archive_are_rebuilt_byte_for_byte_and_the_thread_goes_on(tmp_path,
                                                                                                     endpoint):
    data = tmp_path / "data"
    archive = ImageArchive(data)
    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create()  # 2 skimage references
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        pending = rig.next_batch(timeout=60)  # generation 1, left pending by the restart
        wait_archived(live)  # its images' archive writes follow the send: none lands after the rmtree below
    stored = {s.id: archive.read(s.content_hash) for s in references(live)}
    assert len(stored) == 2
    shutil.rmtree(data / "images")  # `rm -rf images` while the server is down

    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        resent = rig.next_batch(timeout=60)
        assert resent.batch_id == pending.batch_id  # the thread goes on where it was
        assert {s.stimulus_id: s.png for s in resent.stimuli if s.kind == "reference"} == stored
        rig.send_results(resent.batch_id, answer(resent)).result(30)
        assert rig.next_batch(timeout=60).generation == 2
        assert thread_status(live, thread_id) == ThreadStatus.RUNNING
    assert {s.id: archive.read(s.content_hash) for s in references(live)} == stored  # archived again, identical
    (level, message, rebuilt), = events(live, "session.references_rebuilt")
    assert level == "warning" and "lost 2 reference image(s)" in message and "rebuilt from skimage" in message
    assert rebuilt == {"stimuli": sorted(stored), "source": "skimage"}


def picture(path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)


def test_a_lost_reference_whose_file_is_gone_fails_the_thread_and_its_resume_is_refused_until_it_is_back(
        tmp_path, endpoint, caplog):
    data, folder = tmp_path / "data", tmp_path / "refs"
    folder.mkdir()
    picture(folder / "a.png", 1)
    picture(folder / "b.png", 2)
    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create({"references": {"source": str(folder), "count": 2}})
        rig.next_batch(timeout=60)
    lost = references(live)
    for stimulus in lost:
        (data / stimulus.png_path).unlink()
    (gone,) = [s for s in lost if s.content_hash == ImageArchive(data).address(
        encode_png(load_references(str(folder), 2)[1])).content_hash]
    (folder / "b.png").rename(tmp_path / "b.png")  # a still renders its reference again; b is gone

    with LiveEngine(data, endpoint) as live, served(create_app(live.settings, live.sessions, engine=live.engine)) \
            as url, httpx.Client(base_url=url, headers={"Authorization": "Bearer t"}, timeout=60) as client:
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FAILED, 30, "the thread to fail")
        with live.sessions() as db:
            error = db.get(Thread, thread_id).last_error
        assert error == (f"failed: the image archive lost 1 reference image(s) ({gone.id} at {gone.png_path}), which "
                         f"{folder} no longer holds: restore {data}/images/ from a backup (README 'Backups'), or put "
                         f"the reference files back in {folder}")
        refused = client.post(f"/threads/{thread_id}/resume")
        assert refused.status_code == 409
        assert refused.json()["detail"] == f"cannot resume thread {thread_id}: {error.removeprefix('failed: ')}"
        assert client.get(f"/threads/{thread_id}").json()["status"] == "failed"

        (tmp_path / "b.png").rename(folder / "b.png")  # the reference file is back: both render again
        resumed = client.post(f"/threads/{thread_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "running"
        with RigClient(endpoint, RIG, channels=1) as rig:
            assert rig.next_batch(timeout=60).generation == 0
    assert all(ImageArchive(data).holds(s.content_hash) for s in lost)
    (record,) = [r for r in caplog.records if r.getMessage().startswith(f"thread {thread_id} failed")]
    assert record.exc_info is None  # the message says all: no traceback
