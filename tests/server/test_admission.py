"""Refusals at creation over real HTTP: each 422 names the field and the fix, and nothing is written.

Also adding a thread, retargeting and stopping a session (the stand-in engine reports connected rigs).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import TOKEN, LiveServer, session_config, thread_config


@pytest.fixture
def client(live_server: LiveServer):
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


def refused(client: httpx.Client, body: dict, path: str = "/sessions") -> list[dict]:
    """POST a body that must be refused; the 422 items, after checking that no session was written."""
    before = client.get("/sessions").json()
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert client.get("/sessions").json() == before
    return response.json()["detail"]


def only(detail: list[dict]) -> tuple[list, str]:
    (item,) = detail
    return item["loc"], item["msg"]


def test_optimizer_hyperparameters_are_checked_by_building_the_optimizer(client):
    loc, msg = only(refused(client, session_config(threads=[thread_config(optimizer_params={"popsize": 20})])))
    assert loc == ["body", "threads", 0, "optimizer_params"]
    assert "popsize" in msg and "population" in msg  # names the wrong key and the accepted ones


def test_references_must_exist_in_the_number_asked(client, tmp_path: Path):
    loc, msg = only(refused(client, session_config(references={"source": "skimage", "count": 20})))
    assert loc == ["body", "references", "count"] and "skimage has 17 images" in msg
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    loc, msg = only(refused(client, session_config(references={"source": str(folder), "count": 5})))
    assert loc == ["body", "references", "source"] and "holds 3 image(s)" in msg and "5 needed" in msg


def test_missing_weights_say_where_they_were_looked_for(client, tmp_path: Path):
    nowhere = tmp_path / "no-weights"
    loc, msg = only(refused(client, session_config(threads=[thread_config(generator="deepsim-fc6",
                                                                          weights=str(nowhere))])))
    assert loc == ["body", "threads", 0, "weights"]
    assert str(nowhere) in msg and "ACTMAX_WEIGHTS_DIR" in msg


def test_a_weights_file_that_is_no_state_dict_is_refused_naming_it(client, tmp_path: Path):
    import torch

    torch.save([1, 2, 3], tmp_path / "weights.tar")
    loc, msg = only(refused(client, session_config(threads=[thread_config(weights=str(tmp_path / "weights.tar"))])))
    assert loc == ["body", "threads", 0, "weights"]
    assert str(tmp_path / "weights.tar") in msg and "a list, not a dict" in msg
    assert "ACTMAX_WEIGHTS_DIR" not in msg  # the file was found: where to put weights is beside the point


def test_a_generator_without_weights_in_its_standard_locations_is_refused(client, live_server: LiveServer):
    missing = [g["name"] for g in client.get("/generators").json() if not g["found"]]
    if not missing:
        pytest.skip("every generator has weights on this machine")
    loc, msg = only(refused(client, session_config(threads=[thread_config(generator=missing[0])])))
    assert loc == ["body", "threads", 0, "generator"]
    assert "not found; tried:" in msg and "ACTMAX_WEIGHTS_DIR/<generator>/" in msg and '"weights" path' in msg


def test_objective_channels_must_be_among_the_connected_rigs(client, live_server: LiveServer):
    live_server.engine.rigs["rig-3ch"] = 3
    try:
        loc, msg = only(refused(client, session_config(rig="rig-3ch", threads=[
            thread_config(objective={"channels": [5, 17]})])))
        assert loc == ["body", "threads", 0, "objective"]
        assert "reads channel 17 but rig 'rig-3ch' announced 3 channel(s) (0..2)" in msg
        assert client.post("/sessions", json=session_config(rig="rig-3ch")).status_code == 422  # channel 3 of 0..2
        ok = client.post("/sessions", json=session_config(rig="rig-3ch", threads=[
            thread_config(objective={"expression": "rate(2) - rate(0)"})]))
        assert ok.status_code == 201 and ok.json()["threads"][0]["status"] == "running"  # its rig is connected
    finally:
        del live_server.engine.rigs["rig-3ch"]


def test_a_manifold_plane_needs_more_codes_than_its_highest_pc(client):
    """A centred PCA of n codes has n - 1 PCs: PC50 needs more than 50 codes from the evolution."""
    def config(n_generations: int, planes: list[str]) -> dict:
        return session_config(threads=[
            thread_config("evolve", optimizer_params={"population": 8}, n_generations=n_generations),
            thread_config("map", kind="manifold", optimizer=None, manifold={"source": "evolve", "planes": planes})])

    loc, msg = only(refused(client, config(4, ["pc2-3", "pc49-50", "random"])))
    assert loc == ["body", "threads", 1, "manifold", "planes"]
    assert "plane 'pc49-50' needs PC50" in msg and "more than 50 codes" in msg and "4 x 8 = 32" in msg
    assert only(refused(client, config(6, ["pc49-50"])))[1].endswith("6 x 8 = 48; raise its n_generations or "
                                                                     "population, or drop the plane")
    assert client.post("/sessions", json=config(4, ["pc2-3", "random"])).status_code == 201
    session = client.post("/sessions", json=config(7, ["pc49-50"]))  # 56 codes
    assert session.status_code == 201
    added = {"name": "map2", "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [3]},
             "manifold": {"source": "evolve", "planes": ["pc49-50"]}}
    assert client.post(f"/sessions/{session.json()['id']}/threads", json=added).status_code == 201
    small = client.post("/sessions", json=config(4, ["pc2-3"])).json()
    loc, msg = only(refused(client, added, f"/sessions/{small['id']}/threads"))
    assert loc == ["body", "manifold", "planes"] and "4 x 8 = 32" in msg


def test_a_generators_list_says_which_load(client):
    listed = {g["name"]: g for g in client.get("/generators").json()}
    assert listed["dcgan-faces"]["found"] and len(listed["dcgan-faces"]["weights_sha256"]) == 64
    for missing in (g for g in listed.values() if not g["found"]):
        assert missing["weights_sha256"] is None and "not found" in missing["problem"]


def test_add_a_thread_retarget_and_stop_a_session(client, live_server: LiveServer):
    session = client.post("/sessions", json=session_config(threads=[thread_config("evolve")])).json()
    sid, tid = session["id"], session["threads"][0]["id"]
    manifold = {"name": "map", "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [3]},
                "manifold": {"source": "evolve"}}
    bad_source = {**manifold, "manifold": {"source": "nope"}}
    (item,) = refused(client, bad_source, f"/sessions/{sid}/threads")
    assert "manifold source 'nope' is not an evolution thread" in item["msg"]
    added = client.post(f"/sessions/{sid}/threads", json=manifold)
    assert added.status_code == 201 and added.json()["kind"] == "manifold"
    assert client.post(f"/sessions/{sid}/threads", json=manifold).status_code == 422  # the name is taken
    assert [t["name"] for t in client.get(f"/sessions/{sid}").json()["config"]["threads"]] == ["evolve", "map"]

    live_server.engine.rigs["rig-A"] = 4
    try:
        too_far = client.post(f"/threads/{tid}/retarget", json={"objective": {"channels": [4]}})
        assert too_far.status_code == 422 and "announced 4 channel(s)" in too_far.text
    finally:
        del live_server.engine.rigs["rig-A"]
    retargeted = client.post(f"/threads/{tid}/retarget", json={"objective": {"expression": "zscore(rate(7))"}})
    assert retargeted.status_code == 200 and retargeted.json()["objective"] == {"expression": "zscore(rate(7))",
                                                                                "combine": "mean"}
    (event,) = [e for e in client.get(f"/sessions/{sid}/events").json()["items"] if e["kind"] == "thread.retargeted"]
    assert event["thread_id"] == tid and event["data"]["from_generation"] == 0

    stopped = client.post(f"/sessions/{sid}/stop").json()
    assert stopped["status"] == "stopped" and {t["status"] for t in stopped["threads"]} == {"stopped"}
    assert client.post(f"/sessions/{sid}/stop").json()["status"] == "stopped"  # idempotent
    assert client.post(f"/sessions/{sid}/threads", json={**manifold, "name": "map2"}).status_code == 409
    assert client.post(f"/threads/{tid}/retarget", json={"objective": {"channels": [1]}}).status_code == 409
