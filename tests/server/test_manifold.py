"""End to end: an evolution, then a Manifold map around it, on the simulated rig; analysed by CLI and REST."""

from __future__ import annotations

import json
import secrets
import sqlite3

import numpy as np
import pytest

from server.cli import main
from server.launch import ServerProcess, server_with_sim_rig
from server.store.models import decode_codes
from tests.server.test_end_to_end import UNIT, wait_until

pytestmark = pytest.mark.slow


def test_manifold_map_around_an_evolution(tmp_path, capsys):
    data = tmp_path / "data"
    server = ServerProcess(data, secrets.token_urlsafe(16))
    rig_log = tmp_path / "rig.log"
    with server_with_sim_rig(server, "map-rig", [UNIT], rig_log) as (api, rig):
        watched = [(server.process, server.log_path), (rig, rig_log)]
        session = api.post("/sessions", {
            "name": "manifold", "rig": "map-rig", "references": {"source": "skimage", "count": 2},
            "threads": [
                {"name": "evolve", "generator": "dcgan-faces", "optimizer": "cma",
                 "optimizer_params": {"population": 10}, "objective": {"channels": [0]}, "seed": 1,
                 "n_generations": 5},
                {"name": "map", "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [0]},
                 "manifold": {"source": "evolve", "planes": ["pc2-3", "random"]}, "seed": 2, "repeats": 2},
            ],
        })
        evolve, manifold = api.get(f"/sessions/{session['id']}/threads")
        wait_until(lambda: api.get(f"/threads/{manifold['id']}")["last_error"], 60, "the map to say it waits", watched)
        assert api.get(f"/threads/{manifold['id']}")["last_error"] == "manifold 'map' waits for evolution 'evolve' " \
            "to finish"
        wait_until(lambda: api.get(f"/threads/{manifold['id']}")["status"] == "finished", 400,
                   "the manifold thread to finish", watched)
        assert api.get(f"/threads/{manifold['id']}")["last_error"] is None  # its wait is over

        # Every grid image was shown twice; each plane is an 11 x 11 grid.
        (generation,) = api.get(f"/threads/{manifold['id']}/generations")["items"]
        assert generation["status"] == "complete" and generation["n_stimuli"] == 2 * 121

        figures = api.get(f"/threads/{manifold['id']}/manifold")
        assert [f["plane"] for f in figures] == ["pc2-3", "random"]
        for figure in figures:
            assert len(figure["signature"]["n_loop"]) == 21 and figure["bootstrap"] is None
        png = api._http.get(f"/threads/{manifold['id']}/manifold.png", params={"plane": 1})
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        other = api._http.get(f"/threads/{evolve['id']}/manifold")
        assert other.status_code == 409 and "not a manifold thread (its kind: evolution)" in other.json()["detail"]
        alone = api._http.get(f"/threads/{manifold['id']}/manifold", params={"n_boot": 20})  # not reliability=true
        assert alone.status_code == 422 and alone.json()["detail"][0]["loc"] == ["query", "n_boot"], alone.text

    # The grid lies on the sphere of the final generation's mean norm, centred on the trajectory's PC1.
    with sqlite3.connect(data / "actmax.sqlite") as db:
        final = db.execute("SELECT codes, n_stimuli FROM generations WHERE thread_id = ? ORDER BY number DESC",
                           (evolve["id"],)).fetchone()
        grid = db.execute("SELECT codes, n_stimuli FROM generations WHERE thread_id = ?",
                          (manifold["id"],)).fetchone()
    radius = np.linalg.norm(decode_codes(*final), axis=1).mean()
    np.testing.assert_allclose(np.linalg.norm(decode_codes(*grid), axis=1), radius, rtol=1e-9)

    out = tmp_path / "analysis"  # `actmax analyze manifold` in this process (its own process: test_manifold_analysis)
    capsys.readouterr()
    code = main(["analyze", "manifold", str(manifold["id"]), "--data-dir", str(data), "--out", str(out),
                 "--n-boot", "20"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    written = json.loads((out / "manifold.json").read_text())
    assert [p["plane"] for p in written] == ["pc2-3", "random"]
    assert all(p["bootstrap"]["n_boot"] == 20 and p["split_half"] is not None for p in written)
    assert (out / "manifold_pc2-3.png").read_bytes().startswith(b"\x89PNG")
    assert "lowest single-loop level" in printed.out
