"""`HEAD /sessions/{id}/export.nwb` tells a download tool what the `GET` after it sends: its length and ETag, the
file built once and kept while the session's data is unchanged (the real app over HTTP, an NWB file written)."""

from __future__ import annotations

import httpx
import pytest

from server.api.routes import export
from server.api.routes.export import EXPORTS_FOLDER
from tests.server.conftest import TOKEN, LiveServer
from tests.server.test_openapi_clients import finished_session

pytest.importorskip("pynwb", reason="pip install -e '.[nwb]'")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_head_gives_the_length_and_etag_of_the_file_the_get_then_sends(live_server: LiveServer):
    session_id = finished_session(live_server)
    url = f"{live_server.url}/sessions/{session_id}/export.nwb"
    head = httpx.head(url, headers=AUTH, timeout=60)
    assert head.status_code == 200 and head.content == b""
    length, etag = int(head.headers["content-length"]), head.headers["etag"]
    got = httpx.get(url, headers=AUTH, timeout=60)
    assert got.status_code == 200 and got.content.startswith(b"\x89HDF\r\n\x1a\n")
    assert len(got.content) == length == int(got.headers["content-length"]) and got.headers["etag"] == etag
    assert got.headers["last-modified"] == head.headers["last-modified"]
    assert head.headers["accept-ranges"] == got.headers["accept-ranges"] == "none"
    assert httpx.get(url, headers=AUTH, timeout=60).content == got.content  # kept, not built again

    # The session's data changes (a note is an event of its record): a new build, announced by HEAD as it is sent.
    assert httpx.post(f"{live_server.url}/sessions/{session_id}/notes", headers=AUTH,
                      json={"text": "checked"}).status_code == 201
    head = httpx.head(url, headers=AUTH, timeout=60)
    assert head.headers["etag"] != etag
    got = httpx.get(url, headers=AUTH, timeout=60)
    assert got.headers["etag"] == head.headers["etag"] and len(got.content) == int(head.headers["content-length"])
    # Subject metadata given at export is part of the file: another file, another ETag.
    subject = httpx.head(url, headers=AUTH, params={"species": "Macaca mulatta"}, timeout=60)
    assert subject.headers["etag"] != head.headers["etag"] and "x-actmax-warning" in head.headers
    assert httpx.get(url, headers=AUTH, params={"species": "Macaca mulatta"}, timeout=60).headers["etag"] == \
        subject.headers["etag"]


def test_the_files_sent_last_are_kept_and_no_more(live_server: LiveServer, monkeypatch):
    monkeypatch.setattr(export, "MAX_KEPT_EXPORTS", 2)  # the server runs in this process
    folder = live_server.settings.data_dir / EXPORTS_FOLDER
    session_id = finished_session(live_server)
    url = f"{live_server.url}/sessions/{session_id}/export.nwb"
    etags = {name: httpx.head(url, headers=AUTH, params={"subject_id": name}, timeout=60).headers["etag"]
             for name in ("S0", "S1")}
    (folder / ".building-1-crashed.partial.nwb").write_bytes(b"half")  # a build of an earlier server, killed
    assert httpx.head(url, headers=AUTH, params={"subject_id": "S0"}, timeout=60).headers["etag"] == etags["S0"]
    httpx.head(url, headers=AUTH, params={"subject_id": "S2"}, timeout=60)  # S1 was sent least recently
    assert len(list(folder.iterdir())) == 2
    assert httpx.head(url, headers=AUTH, params={"subject_id": "S0"}, timeout=60).headers["etag"] == etags["S0"]
    assert httpx.head(url, headers=AUTH, params={"subject_id": "S1"}, timeout=60).headers["etag"] != etags["S1"]
