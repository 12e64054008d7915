"""REST API through real HTTP (uvicorn on a loopback port, httpx client)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import event

from server import ServerError
from server.api.routes import health
from server.launch import ApiClient
from server.main import create_app
from server.settings import Settings
from server.store import db
from server.store.archive import ImageArchive
from server.store.models import (
    Batch,
    Generation,
    GenerationStatus,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
    encode_codes,
)
from server.store.records import PresentationRecord, record_presentations, set_thread_error
from tests.server.conftest import TOKEN, LiveServer, damage, served, session_config, thread_config


@pytest.fixture
def anonymous(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=10) as c:
        yield c


def create_session(client: httpx.Client, **overrides) -> dict:
    response = client.post("/sessions", json=session_config(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_is_open(anonymous: httpx.Client) -> None:
    response = anonymous.get("/health")
    assert response.status_code == 200
    assert response.json() | {"version": ""} == {"status": "ok", "version": "", "db": True, "problem": None}


def test_health_says_when_the_data_folder_s_disk_is_nearly_full(anonymous: httpx.Client, live_server: LiveServer,
                                                                  monkeypatch) -> None:
    data_dir = live_server.settings.data_dir
    monkeypatch.setattr(health, "LOW_DISK_BYTES", shutil.disk_usage(data_dir).free + 2**30)  # this disk is "low"
    response = anonymous.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded" and response.json()["db"] is True
    assert response.json()["problem"].startswith(f"the disk of {data_dir} is (nearly) full: ")
    client = ApiClient(live_server.url, TOKEN)  # what `actmax demo` and the tests' servers wait with
    with pytest.raises(ServerError, match=r"did not become healthy within 0 s: the disk of .+ is \(nearly\) full"):
        client.wait_healthy(0.3)
    client.close()


def test_health_says_when_a_thread_is_stalled_on_storage_or_the_archive_s_own_disk_is_full(
        anonymous: httpx.Client, live_server: LiveServer, monkeypatch, tmp_path) -> None:
    live_server.engine.stalled = "thread 3: storage failed: [Errno 28] No space left on device"
    response = anonymous.get("/health")
    live_server.engine.stalled = None
    assert response.status_code == 503 and response.json()["db"] is True
    assert response.json()["problem"] == "thread 3: storage failed: [Errno 28] No space left on device"

    images = live_server.settings.data_dir / "images"
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a disk of its own to stand for the archive's")
    archive = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        shutil.rmtree(images, ignore_errors=True)
        images.symlink_to(archive)
        monkeypatch.setattr(health, "LOW_DISK_BYTES", 2**62)  # every disk is "low": each is named
        response = anonymous.get("/health")
    finally:
        images.unlink()
        shutil.rmtree(archive)
    assert response.status_code == 503 and f"the disk of {images} is (nearly) full" in response.json()["problem"]


def test_a_full_database_is_a_json_503_naming_the_disk_and_health_is_degraded(settings: Settings) -> None:
    """SQLite's size cap fails writes exactly as a full disk does ("database or disk is full")."""
    db_engine = db.make_db_engine(settings.database_url)
    db.upgrade(db_engine)
    event.listen(db_engine, "connect", lambda connection, _: connection.execute("PRAGMA max_page_count = 1"))
    with served(create_app(settings, db.make_sessionmaker(db_engine))) as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
        response = client.post("/sessions", json=session_config(notes="n" * 9000))  # needs new pages
        assert response.status_code == 503, response.text
        assert response.json()["detail"].startswith(
            f"the database or disk failed: database or disk is full; free space on the disk of {settings.data_dir} (")
        state = client.get("/health").json()
    db_engine.dispose()
    assert state["status"] == "degraded" and state["db"] is False
    assert re.fullmatch(r"a request failed \d+ s ago: database or disk is full", state["problem"])


def test_a_damaged_database_is_a_json_503_and_health_is_degraded(settings: Settings) -> None:
    db_engine = db.make_db_engine(settings.database_url)
    db.upgrade(db_engine)
    damage(settings.data_dir / "actmax.sqlite")  # after the start-up check, which refuses it
    with served(create_app(settings, db.make_sessionmaker(db_engine))) as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
        response = client.get("/sessions")
        state = client.get("/health").json()
    db_engine.dispose()
    assert response.status_code == 503
    assert response.json()["detail"].startswith(
        "the database or disk failed: database disk image is malformed; the database file may be damaged: ")
    assert state["status"] == "degraded" and state["db"] is False
    assert "database disk image is malformed" in state["problem"]


def protected_operations(openapi: dict) -> list[tuple[str, str]]:
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, operations in openapi["paths"].items()
        if path != "/health"
        for method in operations
    ]


def test_every_protected_endpoint_rejects_missing_and_wrong_tokens(anonymous: httpx.Client) -> None:
    operations = protected_operations(anonymous.get("/openapi.json").json())
    assert len(operations) >= 13  # every resource route; new ones are covered by the loop
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer  {TOKEN}"},
                    {"Authorization": TOKEN}):
        for method, path in operations:
            response = anonymous.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"


def test_a_body_not_sent_as_json_says_which_content_type_to_send(client: httpx.Client) -> None:
    body = json.dumps(session_config()).encode()
    for headers in ({}, {"Content-Type": "text/plain"}):
        response = client.post("/sessions", content=body, headers=headers)
        assert response.status_code == 422
        assert "send JSON with Content-Type: application/json" in response.json()["detail"][0]["msg"]
    assert client.post("/sessions", json={"name": "x"}).json()["detail"][0]["loc"] != ["body"]  # JSON: no hint


def test_the_schemes_case_does_not_matter(anonymous: httpx.Client) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert anonymous.get("/sessions", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200


def test_create_session_records_threads_and_seeds(client: httpx.Client, live_server: LiveServer) -> None:
    wakes = live_server.engine.wakes
    created = create_session(client, threads=[thread_config("a", seed=7), thread_config("b", optimizer="ga")])
    assert live_server.engine.wakes == wakes + 1
    assert created["status"] == "active" and created["rig"] == "rig-A"
    a, b = created["threads"]
    assert (a["name"], a["status"], a["seed"], a["objective"]) == ("a", "waiting_for_rig", 7, {"channels": [3], "combine": "mean"})
    assert isinstance(b["seed"], int)
    assert [t["seed"] for t in created["config"]["threads"]] == [7, b["seed"]]  # drawn seed recorded

    session_id = created["id"]
    assert client.get(f"/sessions/{session_id}").json() == created
    assert session_id in [s["id"] for s in client.get("/sessions").json()]
    assert client.get(f"/sessions/{session_id}/threads").json() == created["threads"]
    assert client.get(f"/threads/{a['id']}").json() == a
    events = client.get(f"/sessions/{session_id}/events").json()
    assert events["total"] == 1 and events["items"][0]["kind"] == "session.created"


@pytest.mark.parametrize(
    ("change", "loc", "says"),
    [
        ({"threads": [thread_config(optimizer="adam")]}, ["body", "threads", 0, "optimizer"], "unknown optimizer 'adam'"),
        ({"threads": [thread_config(generator="stylegan")]}, ["body", "threads", 0, "generator"], "unknown generator"),
        ({"threads": []}, ["body", "threads"], "at least 1"),
        ({"response_window_ms": [200, 200]}, ["body", "response_window_ms"], "start must be before end"),
        ({"response_window_ms": [50]}, ["body", "response_window_ms", 1], "required"),
        ({"animl": "M1"}, ["body", "animl"], "unknown key, did you mean 'animal'? (allowed: name, rig, animal,"),
        ({"threads": [thread_config(n_generation=5)]}, ["body", "threads", 0, "n_generation"],
         "unknown key, did you mean 'n_generations'?"),
        ({"threads": [thread_config(objective={"channel": [1]})]}, ["body", "threads", 0, "objective", "channel"],
         "unknown key, did you mean 'channels'? (allowed: channels, combine, expression)"),
        ({"age": "6 years"}, ["body", "age"], "'6 years' is not an ISO 8601 duration: give e.g. \"P6Y\""),
        ({"threads": [thread_config(), thread_config()]}, ["body", "threads"], "names must be unique"),
        ({"threads": [thread_config(objective={"channels": []})]}, ["body", "threads", 0, "objective", "channels"], "at least 1"),
        ({"threads": [thread_config(objective={"channels": [1], "combine": "max"})]},
         ["body", "threads", 0, "objective", "combine"], "'mean' or 'sum'"),
        ({"references": {"count": 0}}, ["body", "references", "count"], "greater than or equal to 1"),
        ({"references": {"source": "/no/such/folder"}}, ["body", "references", "source"], "neither"),
    ],
)
def test_bad_config_is_422_naming_the_field(client: httpx.Client, change: dict, loc: list, says: str) -> None:
    response = client.post("/sessions", json=session_config(**change))
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(p["loc"] == loc and says in p["msg"] for p in problems), problems
    assert not any("Value error" in p["msg"] for p in problems), problems  # pydantic's prefix, not for people


def test_a_misspelt_key_of_a_new_objective_gets_a_suggestion(client: httpx.Client) -> None:
    thread_id = create_session(client)["threads"][0]["id"]
    response = client.post(f"/threads/{thread_id}/retarget", json={"objective": {"expresion": "rate(0)"}})
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "objective", "expresion"] and "did you mean 'expression'?" in problem["msg"]


@pytest.mark.parametrize(
    ("method", "path", "named"),
    [
        ("GET", "/sessions/999", "session 999"),
        ("GET", "/sessions/999/threads", "session 999"),
        ("GET", "/sessions/999/events", "session 999"),
        ("GET", "/threads/999", "thread 999"),
        ("POST", "/threads/999/pause", "thread 999"),
        ("GET", "/threads/999/generations", "thread 999"),
        ("GET", "/threads/999/presentations", "thread 999"),
        ("GET", "/generations/999", "generation 999"),
        ("GET", "/stimuli/no-such-image", "stimulus 'no-such-image'"),
        ("GET", "/stimuli/no-such-image/png", "stimulus 'no-such-image'"),
    ],
)
def test_unknown_id_is_404_naming_it(client: httpx.Client, method: str, path: str, named: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 404
    assert named in response.json()["detail"]


def test_thread_state_machine(client: httpx.Client, live_server: LiveServer) -> None:
    thread_id = create_session(client)["threads"][0]["id"]
    wakes = live_server.engine.wakes

    def act(action: str, expected_status: int) -> dict:
        response = client.post(f"/threads/{thread_id}/{action}")
        assert response.status_code == expected_status, (action, response.text)
        return response.json()

    assert act("pause", 200)["status"] == "paused"
    assert act("pause", 200)["status"] == "paused"  # a repeat (a retry after a timeout) changes nothing
    assert act("resume", 200)["status"] == "running"
    assert act("resume", 200)["status"] == "running"
    with live_server.sessions() as db:  # held back, as a server with other weights leaves it
        set_thread_error(db, thread_id, "thread.generator_changed", "its images were made by another generator")
        db.commit()
    assert act("resume", 200)["last_error"] == "its images were made by another generator"  # running: unchanged
    with live_server.sessions() as db:  # blocked: a resume changes nothing the block is about
        db.get(Thread, thread_id).status = ThreadStatus.BLOCKED
        db.commit()
    assert act("resume", 409)["detail"] == (f"cannot resume thread {thread_id}: it is blocked (allowed from: failed, "
                                            "paused); its last error: its images were made by another generator")
    assert act("stop", 200)["status"] == "stopped"
    assert act("stop", 200)["status"] == "stopped"
    for action in ("resume", "pause"):
        assert f"cannot {action} thread {thread_id}: it is stopped" in act(action, 409)["detail"]
    assert client.get(f"/threads/{thread_id}").json()["status"] == "stopped"
    assert live_server.engine.wakes == wakes + 3  # only successful changes wake the engine
    session_id = client.get(f"/threads/{thread_id}").json()["session_id"]
    events = client.get(f"/sessions/{session_id}/events").json()["items"]
    assert [e["kind"] for e in events] == ["session.created", "thread.paused", "thread.running",
                                         "thread.generator_changed", "thread.stopped", "session.finished"]


def test_a_failed_thread_resumes_once_its_cause_is_fixed_unless_its_session_was_stopped(
        client: httpx.Client, live_server: LiveServer) -> None:
    """A thread failed on a missing file, say: resumed after the file is back, its finished session runs again."""
    first = create_session(client)["threads"][0]["id"]
    second, _ = (t["id"] for t in create_session(client, threads=[thread_config("a"), thread_config("b")])["threads"])
    with live_server.sessions() as db:  # as the engine leaves a thread that failed
        for thread_id in (first, second):
            set_thread_error(db, thread_id, "thread.failed", "failed: no such file", status=ThreadStatus.FAILED)
        db.commit()
    client.post(f"/sessions/{client.get(f'/threads/{second}').json()['session_id']}/stop")  # its other thread kept it active
    assert client.get(f"/sessions/{client.get(f'/threads/{first}').json()['session_id']}").json()["status"] == \
        "finished"
    resumed = client.post(f"/threads/{first}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running" and resumed.json()["last_error"] is None
    assert client.get(f"/sessions/{resumed.json()['session_id']}").json()["status"] == "active"
    refused = client.post(f"/threads/{second}/resume")
    assert refused.status_code == 409 and "is stopped" in refused.json()["detail"]
    assert client.get(f"/threads/{second}").json()["status"] == "failed"


def test_generation_stimulus_and_presentation_reads(client: httpx.Client, live_server: LiveServer) -> None:
    created = create_session(client)
    session_id, thread_id = created["id"], created["threads"][0]["id"]
    archive = ImageArchive(live_server.settings.data_dir)
    codes = np.arange(6, dtype=np.float64).reshape(3, 2) / 7
    with live_server.sessions() as db:
        generation = Generation(
            thread_id=thread_id, number=0, codes=encode_codes(codes), n_stimuli=3,
            status=GenerationStatus.COMPLETE, scores_json=[1.5, float("nan"), 3.0], mean_score=2.25,
            max_score=3.0, reference_mean=1.0, n_scored=2,
        )
        db.add(generation)
        db.flush()
        stimulus_ids = [f"{uuid.uuid4().hex}" for _ in range(3)]
        for index, (stimulus_id, code) in enumerate(zip(stimulus_ids, codes, strict=True)):
            image = archive.save(png_bytes(index))
            db.add(Stimulus(
                id=stimulus_id, session_id=session_id, thread_id=thread_id, generation_id=generation.id,
                kind=StimulusKind.SYNTHETIC, index=index, code=encode_codes(code), content_hash=image.content_hash,
                png_path=image.png_path, generator="dcgan-faces", generator_version="1", weights_sha256="f" * 64,
            ))
        batch = Batch(id=uuid.uuid4().hex, session_id=session_id, thread_id=thread_id, generation_id=generation.id, rig="rig-A")
        db.add(batch)
        db.flush()
        record_presentations(db, batch, [
            PresentationRecord(uuid.uuid4().hex, stimulus_id, 1.7e9 + i, [float(i), float("nan")], 50, 200)
            for i, stimulus_id in enumerate(stimulus_ids)
        ])
        db.commit()
        generation_id = generation.id

    [summary] = client.get(f"/threads/{thread_id}/generations").json()["items"]
    assert (summary["number"], summary["status"], summary["scores"]) == (0, "complete", [1.5, None, 3.0])
    assert (summary["mean_score"], summary["max_score"], summary["reference_mean"]) == (2.25, 3.0, 1.0)
    detail = client.get(f"/generations/{generation_id}").json()
    assert detail["stimulus_ids"] == stimulus_ids and detail["scores"] == summary["scores"]
    assert summary["rig_latency_s"] is not None and detail["rig_latency_s"] == summary["rig_latency_s"]

    stimulus = client.get(f"/stimuli/{stimulus_ids[1]}").json()
    assert stimulus["code"] == codes[1].tolist() and stimulus["kind"] == "synthetic"
    assert (stimulus["generator"], stimulus["generator_version"], stimulus["index"]) == ("dcgan-faces", "1", 1)
    png = client.get(f"/stimuli/{stimulus_ids[1]}/png")
    assert png.headers["content-type"] == "image/png" and png.content == png_bytes(1)
    archive.path(stimulus["content_hash"]).unlink()  # lost from the archive (a deleted images/ folder, say)
    lost = client.get(f"/stimuli/{stimulus_ids[1]}/png")
    assert lost.status_code == 404 and "restore" in lost.json()["detail"] and "from a backup" in lost.json()["detail"]

    first = client.get(f"/threads/{thread_id}/presentations", params={"limit": 2}).json()
    rest = client.get(f"/threads/{thread_id}/presentations", params={"offset": 2, "limit": 2}).json()
    assert (first["total"], len(first["items"]), len(rest["items"])) == (3, 2, 1)
    assert [p["stimulus_id"] for p in first["items"] + rest["items"]] == stimulus_ids
    assert first["items"][0]["rates"] == [0.0, None] and first["items"][0]["rig"] == "rig-A"
    assert client.get(f"/threads/{thread_id}/presentations", params={"limit": 0}).status_code == 422


def test_presentations_are_kept_by_generation_kind_and_image(client: httpx.Client, live_server: LiveServer) -> None:
    """Two generations, each batch showing its images and a reference twice: each filter keeps the showings it
    names, alone and together; a generation the thread cannot reach or an image of another session is a 422."""
    created, other = create_session(client, threads=[thread_config(n_generations=3)]), create_session(client)
    session_id, thread_id = created["id"], created["threads"][0]["id"]
    archive = ImageArchive(live_server.settings.data_dir)
    image = archive.save(png_bytes(0))
    with live_server.sessions() as db:
        def stimulus(stimulus_id, kind, session=session_id, generation_id=None):
            db.add(Stimulus(id=stimulus_id, session_id=session, thread_id=None if generation_id is None else thread_id,
                            generation_id=generation_id, kind=kind, content_hash=image.content_hash,
                            png_path=image.png_path))
        stimulus("ref-a", StimulusKind.REFERENCE)
        stimulus("ref-elsewhere", StimulusKind.REFERENCE, session=other["id"])
        shown = {}  # presentation id -> (generation, stimulus id)
        for number in (0, 1):
            generation = Generation(thread_id=thread_id, number=number, codes=encode_codes(np.zeros((2, 2))),
                                    n_stimuli=2, status=GenerationStatus.COMPLETE)
            db.add(generation)
            db.flush()
            ids = [f"g{number}-{i}" for i in range(2)]
            for stimulus_id in ids:
                stimulus(stimulus_id, StimulusKind.SYNTHETIC, generation_id=generation.id)
            batch = Batch(id=uuid.uuid4().hex, session_id=session_id, thread_id=thread_id,
                          generation_id=generation.id, rig="rig-A")
            db.add(batch)
            db.flush()
            records = [PresentationRecord(uuid.uuid4().hex, s, 1.7e9, [1.0], 50, 200) for s in ids + ["ref-a"] * 2]
            record_presentations(db, batch, records)
            shown.update({r.presentation_id: (number, r.stimulus_id) for r in records})
        db.commit()

    def kept(**params) -> tuple[set[tuple[int, str]], int]:
        response = client.get(f"/threads/{thread_id}/presentations", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == len(page["items"])
        return {shown[p["presentation_id"]] for p in page["items"]}, page["total"]

    assert kept() == (set(shown.values()), 8)
    assert kept(generation=1) == ({(1, "g1-0"), (1, "g1-1"), (1, "ref-a")}, 4)
    assert kept(generation=2) == (set(), 0)  # asked for, not shown yet
    assert kept(kind="reference") == ({(0, "ref-a"), (1, "ref-a")}, 4)
    assert kept(kind="synthetic", generation=0) == ({(0, "g0-0"), (0, "g0-1")}, 2)
    assert kept(stimulus_id="ref-a", generation=0) == ({(0, "ref-a")}, 2)
    assert kept(stimulus_id="g1-1", kind="reference") == (set(), 0)

    def refused(**params) -> str:
        response = client.get(f"/threads/{thread_id}/presentations", params=params)
        assert response.status_code == 422, response.text
        (problem,) = response.json()["detail"]
        assert problem["loc"] == ["query", next(iter(params))]
        return problem["msg"]

    assert "has no generation 3" in refused(generation=3) and "its last is 2" in refused(generation=3)
    assert "is no image of session" in refused(stimulus_id="ref-elsewhere")
    assert "is no image of session" in refused(stimulus_id="no-such-image")
    refused(kind="natural")
    refused(generation=-1)


def test_the_cli_warns_when_a_new_session_shares_its_rig_with_an_active_one(
        live_server: LiveServer, client: httpx.Client, tmp_path, monkeypatch, capsys) -> None:
    """Allowed (the rig takes turns between sessions), but a second `session create` of one config doubles
    what an animal sees: the CLI names the active sessions already on the rig."""
    from server.cli import main

    monkeypatch.setenv("ACTMAX_URL", live_server.url)
    monkeypatch.setenv("ACTMAX_TOKEN", TOKEN)
    first = create_session(client, name="first", rig="rig-shared")
    stopped = create_session(client, name="stopped", rig="rig-shared")
    client.post(f"/sessions/{stopped['id']}/stop").raise_for_status()
    create_session(client, name="elsewhere", rig="rig-other")
    path = tmp_path / "second.json"
    path.write_text(json.dumps(session_config(name="second", rig="rig-shared")))
    capsys.readouterr()
    assert main(["session", "create", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: rig 'rig-shared' already has active session(s) {first['id']} 'first': " in err, err
    assert "stopped" not in err and "elsewhere" not in err
    path.write_text(json.dumps(session_config(name="alone", rig="rig-alone")))
    assert main(["session", "create", str(path)]) == 0
    assert capsys.readouterr().err == ""
