"""What a generated client needs of the real app's OpenAPI document (file downloads typed as binary, the session
config typed, the 500 and 503 any request may get declared), and an NWB download that cannot be resumed into a file
spliced from two builds."""

from __future__ import annotations

import io
import time

import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image

from server.store import records
from server.store.archive import ImageArchive
from tests.server.conftest import TOKEN, LiveServer, session_config

BINARY = {"type": "string", "format": "binary"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def document(live_server: LiveServer) -> dict:
    response = httpx.get(f"{live_server.url}/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def refs(node):
    """Every ``$ref`` in a JSON document."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def matches(document: dict, component: str, value) -> None:
    """Raise unless ``value`` is valid by the document's schema ``component``."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(value)


def test_the_document_is_valid_and_every_reference_resolves(document):
    try:
        from openapi_spec_validator import validate
    except ImportError:  # not installed: check what it would most likely catch
        assert document["openapi"].startswith("3.1") and document["paths"]
        components = document["components"]["schemas"]
        for ref in set(refs(document)):
            assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref
    else:
        validate(document)


def test_file_downloads_are_binary(document):
    files = {name: content for name, operation in operations(document) for response in operation["responses"].values()
             for media_type, content in response.get("content", {}).items() if media_type != "application/json"}
    assert {name for name in files} >= {"GET /stimuli/{stimulus_id}/png", "GET /threads/{thread_id}/manifold.png",
                                         "GET /sessions/{session_id}/export.nwb", "GET /live"}
    for name, content in files.items():
        if name != "GET /live":  # text/event-stream: text
            assert content.get("schema") == BINARY, name


def test_every_operation_declares_the_server_errors_as_error_detail(document):
    detail = {"$ref": "#/components/schemas/ErrorDetail"}
    for name, operation in operations(document):
        for code in ("500", "503"):
            assert code in operation["responses"], (name, code)
            if name != "GET /health":  # its 503 is the Health report
                assert operation["responses"][code]["content"]["application/json"]["schema"] == detail, (name, code)
    description = document["components"]["schemas"]["ErrorDetail"]["description"]
    assert all(code in description for code in ("401", "404", "409", "413", "500", "503"))


def test_every_declared_422_has_a_schema(document):
    """A declared status without content is parsed as None by a generated client: its reason is lost."""
    declared = {name: operation["responses"]["422"] for name, operation in operations(document)
                if "422" in operation["responses"]}
    assert {"POST /threads/{thread_id}/extend", "POST /threads/{thread_id}/retarget"} <= set(declared)
    for name, response in declared.items():
        assert "$ref" in response.get("content", {}).get("application/json", {}).get("schema", {}), name


def test_a_sessions_config_is_typed_as_the_session_config_and_the_served_one_matches_it(live_server, document):
    for model in ("SessionRead", "SessionWithThreads"):
        config = document["components"]["schemas"][model]["properties"]["config"]
        assert config["$ref"] == "#/components/schemas/SessionConfig", model
    created = httpx.post(f"{live_server.url}/sessions", headers=AUTH, json=session_config(name="typed"))
    assert created.status_code == 201, created.text
    session = httpx.get(f"{live_server.url}/sessions/{created.json()['id']}", headers=AUTH).json()
    matches(document, "SessionWithThreads", session)
    assert session["config"]["threads"][0]["seed"] == session["threads"][0]["seed"]  # served as stored
    for listed in httpx.get(f"{live_server.url}/sessions", headers=AUTH).json():
        matches(document, "SessionRead", listed)


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def finished_session(live: LiveServer) -> int:
    """A session whose one thread showed one generation of two images and finished, as the engine records it."""
    session = httpx.post(f"{live.url}/sessions", headers=AUTH, json=session_config(name="download")).json()
    session_id, thread_id = session["id"], session["threads"][0]["id"]
    images = [ImageArchive(live.settings.data_dir).save(png(value)) for value in (1, 2)]
    with live.sessions.begin() as db:
        generation_id, _, stimuli = records.add_generation(
            db, thread_id, 0, np.zeros((2, 4)), images, {"name": "dcgan-faces", "version": "1.0"}, session_id)
        batch_id = records.add_batch(db, records.new_id(), session_id, thread_id, generation_id, "rig-A")
        records.record_presentations(db, records.queries.batch(db, batch_id), [
            records.PresentationRecord(records.new_id(), stimulus, time.time(), [0.0, 0.0, 0.0, 5.0], 50, 200)
            for stimulus in stimuli])
        records.complete_generation(db, generation_id, np.array([5.0, 5.0]), [], {}, timed_out=False)
        records.finish_thread(db, thread_id)
        records.end_session_if_done(db, session_id)
    return session_id


def test_an_nwb_download_resumed_with_a_range_gets_the_whole_new_build(live_server):
    pytest.importorskip("pynwb", reason="pip install -e '.[nwb]'")
    url = f"{live_server.url}/sessions/{finished_session(live_server)}/export.nwb"
    assert httpx.head(url, headers=AUTH).headers["accept-ranges"] == "none"
    # `curl -C -` after 1000 bytes: the answer is a whole file (200, its full length), never a range of a new build
    # to append to the part already saved.
    resumed = httpx.get(url, headers={**AUTH, "Range": "bytes=1000-"}, timeout=60)
    assert resumed.status_code == 200 and "content-range" not in resumed.headers
    assert resumed.headers["accept-ranges"] == "none"
    assert int(resumed.headers["content-length"]) == len(resumed.content) > 1000
    assert resumed.content.startswith(b"\x89HDF\r\n\x1a\n")  # the file's start, not byte 1000 of it
