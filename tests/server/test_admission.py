"""Refusals at creation over real HTTP: each 422 names the field and the fix, and nothing is written.

Also adding a thread, retargeting and stopping a session (the stand-in engine reports connected rigs).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import generators
import optimizers

from server import ServerError
from server.store.archive import ImageArchive
from server.store.models import Generation, GenerationStatus, encode_codes
from server.thread_runtime import build_runtime
from server.weights import GeneratorCache
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
    assert "not found; tried:" in msg and f"ACTMAX_WEIGHTS_DIR/{missing[0]}/ on the server" in msg and \
        "a thread's `weights` in a session" in msg


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


def test_a_manifold_whose_source_is_no_evolution_names_the_source_field(client):
    manifold = {"name": "map", "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [3]},
                "manifold": {"source": "nope"}}
    loc, msg = only(refused(client, session_config(threads=[thread_config(), manifold])))
    assert loc == ["body", "threads", 1, "manifold", "source"] and "'nope' is not an evolution thread" in msg


def test_a_refused_precision_names_the_servers_setting():
    cache = GeneratorCache("cpu", None, "bfloat16")
    try:
        cache.get("dcgan-faces")
    except generators.GeneratorError as error:
        assert "use float32 for this generator: start the server with `actmax serve --precision float32`" in str(error)
    else:
        pytest.skip("dcgan-faces stays within tolerance in bfloat16 on this CPU")


def test_a_generators_list_says_which_load(client):
    listed = {g["name"]: g for g in client.get("/generators").json()}
    assert listed["dcgan-faces"]["found"] and len(listed["dcgan-faces"]["weights_sha256"]) == 64
    for missing in (g for g in listed.values() if not g["found"]):
        assert missing["weights_sha256"] is None and "not found" in missing["problem"]


def test_threads_added_at_once_are_all_kept_and_a_name_given_twice_is_a_422(client, live_server: LiveServer):
    """A double click on "Add Manifold thread" raced: the second POST hit the database's unique name (a 503 that
    marked the server degraded); two names at once could each write the config without the other's thread."""
    from concurrent.futures import ThreadPoolExecutor

    def manifold(name: str) -> dict:
        return {"name": name, "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [3]},
                "manifold": {"source": "evolve"}}

    for attempt in range(4):
        sid = client.post("/sessions", json=session_config(name=f"race-{attempt}", threads=[
            thread_config("evolve")])).json()["id"]
        with ThreadPoolExecutor(4) as pool:
            twice = list(pool.map(lambda n: client.post(f"/sessions/{sid}/threads", json=manifold(n)),
                                  ["map", "map", "map-b", "map-c"]))
        assert sorted(r.status_code for r in twice[:2]) == [201, 422], [r.text for r in twice]
        assert "thread names must be unique" in next(r.text for r in twice[:2] if r.status_code == 422)
        assert [r.status_code for r in twice[2:]] == [201, 201]
        stored = [t["name"] for t in client.get(f"/sessions/{sid}").json()["config"]["threads"]]
        assert sorted(stored) == ["evolve", "map", "map-b", "map-c"]
    assert client.get("/health").json()["status"] == "ok"


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
    assert added.json()["score_label"] == "score (spikes/s)"  # what a chart's axis says
    assert client.post(f"/sessions/{sid}/threads", json=manifold).status_code == 422  # the name is taken
    assert [t["name"] for t in client.get(f"/sessions/{sid}").json()["config"]["threads"]] == ["evolve", "map"]

    live_server.engine.rigs["rig-A"] = 4
    try:
        too_far = client.post(f"/threads/{tid}/retarget", json={"objective": {"channels": [4]}})
        assert too_far.status_code == 422 and "announced 4 channel(s)" in too_far.text
    finally:
        del live_server.engine.rigs["rig-A"]
    (extra,) = refused(client, {"objective": {"channels": [1]}, "from_generation": 3}, f"/threads/{tid}/retarget")
    assert extra["loc"] == ["body", "from_generation"] and "(allowed: objective)" in extra["msg"]  # not ignored
    assert client.get(f"/threads/{tid}").json()["objective"] == session["threads"][0]["objective"]
    retargeted = client.post(f"/threads/{tid}/retarget", json={"objective": {"expression": "zscore(rate(7))"}})
    assert retargeted.status_code == 200 and retargeted.json()["objective"] == {"expression": "zscore(rate(7))"}
    assert client.get(f"/threads/{tid}").json()["score_label"] == "score = zscore(rate(7))"  # no unit
    (event,) = [e for e in client.get(f"/sessions/{sid}/events").json()["items"] if e["kind"] == "thread.retargeted"]
    assert event["thread_id"] == tid and event["data"]["from_generation"] == 0

    stopped = client.post(f"/sessions/{sid}/stop").json()
    assert stopped["status"] == "stopped" and {t["status"] for t in stopped["threads"]} == {"stopped"}
    assert client.post(f"/sessions/{sid}/stop").json()["status"] == "stopped"  # idempotent
    assert client.post(f"/sessions/{sid}/threads", json={**manifold, "name": "map2"}).status_code == 409
    assert client.post(f"/threads/{tid}/retarget", json={"objective": {"channels": [1]}}).status_code == 409


def served(live_server: LiveServer, session: dict) -> list:
    """The runtimes of a created session's threads, as the engine builds them from the stored session."""
    cache = GeneratorCache(live_server.settings.device, live_server.settings.weights_dir)
    archive = ImageArchive(live_server.settings.data_dir)
    with live_server.sessions.begin() as db:
        return [build_runtime(db, thread["id"], cache.get, archive, 8) for thread in session["threads"]]


def test_a_presets_own_step_size_wins_over_the_generators_and_is_recorded(client, live_server: LiveServer):
    """cma-sigma0.5 and cma-sigma2 on DCGAN (whose default_init says sigma0 1) run at 0.5 and 2."""
    presets = ("cma-sigma0.5", "cma-sigma2")
    threads = [thread_config(name, optimizer=name, optimizer_params={"population": 4}, seed=5) for name in presets]
    created = client.post("/sessions", json=session_config(references={"count": 1}, threads=threads))
    assert created.status_code == 201, created.text
    samples = []
    for runtime in served(live_server, created.json()):
        runtime.optimizer.tell(runtime.optimizer.ask(), [1.0])  # generation 0: the single initial code ("init")
        samples.append(runtime.optimizer.ask())
    np.testing.assert_allclose(samples[1], 4 * samples[0])  # one seed, so the same normals at 4x the step
    session_id = created.json()["id"]
    events = [e for e in client.get(f"/sessions/{session_id}/events").json()["items"] if e["kind"] == "thread.optimizer"]
    assert [(e["data"]["optimizer"], e["data"]["hyperparameters"]["sigma0"]) for e in events] == [
        ("cma-sigma0.5", 0.5), ("cma-sigma2", 2.0)]
    assert "sigma0=2.0, init_code=None, first_generation='init'" in events[1]["message"]
    assert unusual(client, session_id) == []  # 0.5 and 2 are within 4x of DCGAN's sigma0 1


def unusual(client: httpx.Client, session_id: int) -> list[str]:
    """The messages of a session's ``thread.unusual_settings`` warnings."""
    events = client.get(f"/sessions/{session_id}/events").json()["items"]
    return [e["message"] for e in events if e["kind"] == "thread.unusual_settings" and e["level"] == "warning"]


def test_a_radius_far_off_the_generators_latent_is_warned_about(client, live_server: LiveServer):
    threads = [thread_config("far", optimizer="sphere-cma", optimizer_params={"radius": 300}),
               thread_config("small", optimizer="cma", optimizer_params={"sigma0": 0.1})]
    created = client.post("/sessions", json=session_config(references={"count": 1}, threads=threads))
    assert created.status_code == 201, created.text  # allowed: a warning, not a refusal
    served(live_server, created.json())
    far, small = (t["id"] for t in created.json()["threads"])
    assert unusual(client, created.json()["id"]) == [
        f"thread {far} 'far': radius 300 is 30× dcgan-faces's default 10, which is matched to its latent (codes of "
        "norm about 10); give radius 10 unless that is meant",
        f"thread {small} 'small': sigma0 0.1 is 0.1× dcgan-faces's default 1 (σ₀√d 1 against 10), which is matched "
        "to its latent (codes of norm about 10); give sigma0 1 unless that is meant"]


def test_weights_that_render_one_image_for_every_code_are_warned_about(client, live_server: LiveServer,
                                                                       tmp_path: Path):
    from generators.dcgan import STATE_KEY, packaged_weights

    checkpoint = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    checkpoint[STATE_KEY]["main.12.weight"].zero_()  # the last layer: a grey image whatever the code
    torch.save(checkpoint, tmp_path / "weights.tar")
    created = client.post("/sessions", json=session_config(
        references={"count": 1}, threads=[thread_config("grey", weights=str(tmp_path))]))
    assert created.status_code == 201, created.text  # it runs (a lab may mean it): a warning, not a refusal
    served(live_server, created.json())
    (warning,) = unusual(client, created.json()["id"])
    assert "the weights look untrained or not converted: dcgan-faces" in warning


def test_hess_cma_takes_the_eigenbasis_file_of_analyze_geometry(client, live_server: LiveServer, tmp_path: Path):
    basis, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((100, 12)))
    np.savez(tmp_path / "eigenbasis.npz", basis=basis, eigvals=np.logspace(0, -3, 12), generator="dcgan-faces")
    np.savez(tmp_path / "fc6.npz", basis=np.eye(4096)[:, :3], eigvals=np.ones(3))
    hess = {"optimizer": "hess-cma", "seed": 1}
    good = thread_config(**hess, optimizer_params={"eigenbasis": str(tmp_path / "eigenbasis.npz"), "k": 10})
    created = client.post("/sessions", json=session_config(references={"count": 1}, threads=[good]))
    assert created.status_code == 201, created.text
    (runtime,) = served(live_server, created.json())
    np.testing.assert_array_equal(runtime.optimizer.hyperparameters["basis"], basis[:, :10])
    assert runtime.optimizer.hyperparameters["sigma0"] == 0.4  # its own, not DCGAN's 1 (a step in eigen-coordinates)
    (event,) = [e for e in client.get(f"/sessions/{created.json()['id']}/events").json()["items"]
                if e["kind"] == "thread.optimizer"]
    assert "sigma0=0.4" in event["message"] and "basis=<sha256 " in event["message"]
    assert f"eigenbasis='{tmp_path / 'eigenbasis.npz'}', k=10" in event["message"]  # what the basis came from
    assert event["data"]["hyperparameters"]["basis"] == {"sha256": optimizers.base.array_fingerprint(basis[:, :10])}

    # The file rewritten under a thread that has a stored state: its restart says which file and what to do.
    thread_id = created.json()["threads"][0]["id"]
    codes = runtime.optimizer.ask()
    with live_server.sessions.begin() as db:
        db.add(Generation(thread_id=thread_id, number=0, codes=encode_codes(codes), n_stimuli=len(codes),
                          status=GenerationStatus.COMPLETE, scores_json=[0.0] * len(codes), n_scored=len(codes),
                          optimizer_state=optimizers.dumps_state(runtime.optimizer.state_dict())))
    np.savez(tmp_path / "eigenbasis.npz", basis=basis[:, ::-1], eigvals=np.logspace(0, -3, 12))
    with pytest.raises(ServerError, match=rf"its eigenbasis file {tmp_path / 'eigenbasis.npz'} changed since the "
                       rf"thread started; put back the file it started with, then `actmax thread resume {thread_id}`"):
        served(live_server, created.json())

    for params, message in [({"eigenbasis": str(tmp_path / "none.npz")}, "none.npz: no such file"),
                            ({"eigenbasis": str(tmp_path / "fc6.npz")}, "code has 100 dimensions), got (4096, 3)"),
                            ({"eigenbasis": str(tmp_path / "eigenbasis.npz"), "k": 13}, "k must be an integer in [1, 12]")]:
        loc, msg = only(refused(client, session_config(threads=[thread_config(**hess, optimizer_params=params)])))
        assert loc == ["body", "threads", 0, "optimizer_params"] and message in msg, msg


def test_generator_options_are_the_generators_and_are_checked(client, live_server: LiveServer, tmp_path: Path):
    from generators.biggan import TINY_CONFIG, random_network

    torch.save(random_network(TINY_CONFIG).state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    biggan = {"generator": "biggan-deep-128", "weights": str(tmp_path), "optimizer_params": {"population": 4}}
    created = client.post("/sessions", json=session_config(
        references={"count": 1}, threads=[thread_config(**biggan, generator_options={"truncation": 0.5})]))
    assert created.status_code == 201, created.text
    (runtime,) = served(live_server, created.json())
    assert runtime.generator.truncation == 0.5
    (warning,) = unusual(client, created.json()["id"])  # the tiny test network under a 128-px name
    assert "the weights render 32-px images, not the 128-px that biggan-deep-128 names" in warning
    assert client.get(f"/threads/{created.json()['threads'][0]['id']}").json()["generator_version"] == "1.0-trunc0.5"
    loc, msg = only(refused(client, session_config(threads=[thread_config(**biggan, generator_options={"truncation": 2})])))
    assert loc == ["body", "threads", 0, "generator_options"] and "truncation must be a number in (0, 1]; got 2" in msg
    loc, msg = only(refused(client, session_config(threads=[thread_config(generator_options={"truncation": 0.5})])))
    assert loc == ["body", "threads", 0, "generator_options"]
    assert "dcgan-faces does not take option(s) truncation; it takes: no options" in msg
