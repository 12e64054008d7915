"""A thread keeps the generator its images were made with. A server restarted with other weights or another
precision holds such a thread back (``running``, not stepping) with a ``last_error`` and an error event naming both
generators and what to restart with; a thread without images takes the generator loaded; a restart with the
thread's generator resumes it. Each runtime built records the software and generator it runs with
(``thread.runtime``)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from generators.base import sha256_file
from generators.dcgan import STATE_KEY, packaged_weights
from rig_client.client import RigClient
from rig_client.version import package_version
from server.store.models import Batch, Event, Stimulus, StimulusKind, Thread, ThreadStatus
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_reconnect import thread_status

def other_weights(folder: Path) -> Path:
    """An ACTMAX_WEIGHTS_DIR whose dcgan-faces weights are the packaged ones with one value changed."""
    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    first = next(iter(state[STATE_KEY].values()))
    first.view(-1)[0] += 0.01
    (folder / "dcgan-faces").mkdir(parents=True)
    torch.save(state, folder / "dcgan-faces" / "weights.tar")
    return folder


def made_with(live, thread_id: int) -> set[tuple[str, str]]:
    """The (generator version, weights sha256) of every image of the thread."""
    with live.sessions() as db:
        return set(db.execute(select(Stimulus.generator_version, Stimulus.weights_sha256).where(
            Stimulus.thread_id == thread_id, Stimulus.kind == StimulusKind.SYNTHETIC)).all())


def thread_events(live, thread_id: int, kind: str) -> list[tuple[str, str, dict]]:
    with live.sessions() as db:
        return db.execute(select(Event.level, Event.message, Event.data_json).where(
            Event.thread_id == thread_id, Event.kind == kind).order_by(Event.id)).all()


def held_back(live, thread_id: int) -> str | None:
    """The thread's ``last_error`` once the engine refused to build it a runtime."""
    with live.sessions() as db:
        error = db.get(Thread, thread_id).last_error
    return error if error and thread_id not in live.engine._threads else None


def test_a_restart_with_other_weights_and_precision_holds_back_the_threads_whose_images_they_did_not_make(
        tmp_path, endpoint):
    """As when systemd and a shell set another ACTMAX_WEIGHTS_DIR and --precision; then the first server's setup."""
    data, packaged = tmp_path / "data", sha256_file(packaged_weights())
    weights_dir = other_weights(tmp_path / "w")
    other = sha256_file(weights_dir / "dcgan-faces" / "weights.tar")
    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        first_thread = live.create()  # 3 generations of 6
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        pending = rig.next_batch(timeout=60)  # generation 1, left pending by the restart
    assert made_with(live, first_thread) == {("1.0", packaged)}

    with LiveEngine(data, endpoint, weights_dir=weights_dir, precision="float16") as live, \
            RigClient(endpoint, RIG, channels=1) as rig:
        error = wait_until(lambda: held_back(live, first_thread), 30, "the thread held back")
        second_thread = live.create({"name": "t2"})  # no images yet: it takes the generator loaded
        assert rig.next_batch(timeout=60).generation == 0
        with live.sessions() as db:
            thread = db.get(Thread, first_thread)
            assert thread.status == ThreadStatus.RUNNING and thread.generator_version == "1.0"
            assert db.scalars(select(Batch.id).where(Batch.thread_id == first_thread)).all() == \
                [first.batch_id, pending.batch_id]
    assert made_with(live, first_thread) == {("1.0", packaged)}
    assert made_with(live, second_thread) == {("1.0+float16", other)}
    assert error == (f"its images were made by dcgan-faces 1.0 with weights sha256 {packaged}, but this server loaded "
                     f"dcgan-faces 1.0+float16 with weights sha256 {other}: it waits rather than go on with another "
                     "generator. Restart the server with those weights (in ACTMAX_WEIGHTS_DIR/dcgan-faces/ or "
                     "dcgan-faces's standard place: `actmax weights list` shows the sha256 a server finds) and "
                     "`--precision float32`, or stop the thread and start a new one")
    (level, message, changed), = thread_events(live, first_thread, "thread.generator_changed")
    assert level == "error" and message == f"thread {first_thread} 'a': {error}"
    assert changed == {"made_with": {"generator": "dcgan-faces", "generator_version": "1.0",
                                     "weights_sha256": packaged},
                       "loaded": {"generator": "dcgan-faces", "generator_version": "1.0+float16",
                                  "weights_sha256": other}}
    assert not thread_events(live, first_thread, "thread.resumed")

    with LiveEngine(data, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        resent = rig.next_batch(timeout=60)
        assert resent.batch_id == pending.batch_id  # the first thread goes on where it was
        rig.send_results(resent.batch_id, answer(resent)).result(30)
        last = rig.next_batch(timeout=60)
        rig.send_results(last.batch_id, answer(last)).result(30)
        wait_until(lambda: thread_status(live, first_thread) == ThreadStatus.FINISHED, 60, "the first thread to finish")
        second_error = wait_until(lambda: held_back(live, second_thread), 30, "the second thread held back")
    assert f"made by dcgan-faces 1.0+float16 with weights sha256 {other}, but this server loaded dcgan-faces 1.0 " \
           f"with weights sha256 {packaged}" in second_error and "`--precision float16`" in second_error
    assert made_with(live, first_thread) == {("1.0", packaged)}  # one generator for the whole evolution
    with live.sessions() as db:
        thread = db.get(Thread, first_thread)
        assert (thread.generator_version, thread.last_error) == ("1.0", None)

    runtimes = thread_events(live, first_thread, "thread.runtime")  # built by the first server and the third
    assert [level for level, _, _ in runtimes] == ["info", "info"]
    for _, message, runtime in runtimes:
        assert runtime == {"actmax": package_version(), "python": platform.python_version(),
                           "torch": torch.__version__, "numpy": np.__version__, "device": "cpu",
                           "precision": "float32", "generator": "dcgan-faces", "generator_version": "1.0",
                           "weights_sha256": packaged}
        assert "\n" not in message and f"torch {torch.__version__}" in message and "on cpu" in message
    (_, _, second_runtime), = thread_events(live, second_thread, "thread.runtime")
    assert (second_runtime["precision"], second_runtime["generator_version"], second_runtime["weights_sha256"]) == \
        ("float16", "1.0+float16", other)


def test_a_thread_whose_weights_do_not_load_fails_with_one_log_line(tmp_path, endpoint, caplog):
    """The generator's error says all (which file, what is wrong, what to do): no traceback in the server's log."""
    broken = tmp_path / "weights.tar"
    broken.write_bytes(b"not a checkpoint")
    with LiveEngine(tmp_path / "data", endpoint) as live:
        thread_id = live.create(weights=str(broken))  # past admission's check, as when the file broke while down
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FAILED, 30, "the thread to fail")
    (record,) = [r for r in caplog.records if r.getMessage().startswith(f"thread {thread_id} failed")]
    assert f"cannot read weights for 'dcgan-faces' from {broken}" in record.getMessage()
    assert record.exc_info is None


def test_a_held_back_thread_waits_while_its_weights_file_is_being_written_back(tmp_path, endpoint):
    """The file a held-back thread waits for, read while a copy writes it back (here: only its first 100 kB yet),
    failed the thread for good ("truncated or corrupt"); it now waits for the file to settle and goes on."""
    file = tmp_path / "weights.tar"
    original = packaged_weights().read_bytes()
    file.write_bytes(original)
    with LiveEngine(tmp_path / "data", endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create(weights=str(file))
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        pending = rig.next_batch(timeout=60)
    file.write_bytes((other_weights(tmp_path / "w") / "dcgan-faces" / "weights.tar").read_bytes())
    with LiveEngine(tmp_path / "data", endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        wait_until(lambda: held_back(live, thread_id), 30, "the thread held back")
        file.write_bytes(original[:100_000])  # the copy back, under way
        wait_until(lambda: "read again once it has settled" in (held_back(live, thread_id) or ""), 30,
                   "the half-written file waited for")
        assert thread_status(live, thread_id) == ThreadStatus.RUNNING
        file.write_bytes(original)  # the copy done
        assert rig.next_batch(timeout=60).batch_id == pending.batch_id


def test_a_thread_on_its_own_weights_file_goes_on_once_the_file_it_started_with_is_back(tmp_path, endpoint):
    """Its fix is the file, not a restart: the server sees the file change (`GeneratorCache`)."""
    import shutil

    file = tmp_path / "weights.tar"
    shutil.copy(packaged_weights(), file)
    with LiveEngine(tmp_path / "data", endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create(weights=str(file))
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        pending = rig.next_batch(timeout=60)
    shutil.copy(other_weights(tmp_path / "w") / "dcgan-faces" / "weights.tar", file)
    with LiveEngine(tmp_path / "data", endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        error = wait_until(lambda: held_back(live, thread_id), 30, "the thread held back")
        assert f"Put the file it started with back at {file} (it goes on once that is there" in error
        shutil.copy(packaged_weights(), file)
        assert rig.next_batch(timeout=60).batch_id == pending.batch_id  # no restart
