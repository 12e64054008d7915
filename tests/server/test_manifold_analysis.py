"""A recorded Manifold map read back and analysed from a real SQLite file: by `actmax analyze manifold` (a
subprocess, or the command run in this process where its start-up adds nothing to the check) and over real HTTP,
with one trial per image, after its thread failed, and with bad arguments."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from analysis.tuning import grid_axis, sphere_points
from server import ServerError
from server.cli import main
from server.manifold import manifold_data
from server.session_config import SessionConfig
from server.store.archive import ImageArchive
from server.store.models import Batch, Generation, GenerationStatus, Stimulus, StimulusKind, ThreadStatus, encode_codes
from server.store.records import PresentationRecord, create_session, record_presentations
from tests.server.conftest import TOKEN, LiveServer, session_config, thread_config

AXIS = grid_axis(18, 11)
RATES = 10 * np.exp(4 * (sphere_points(AXIS[:, None], AXIS[None, :]) @ sphere_points(0.0, 0.0) - 1)) + 1


def record_map(sessions, data_dir, *, repeats: int, planes=("pc2-3",), status=ThreadStatus.FINISHED,
               last_error=None, recorded=True, objective: dict | None = None) -> int:
    """A session whose manifold thread showed a bump at the hemisphere's centre ``repeats`` times per image
    (all 121 grid points of each plane, as the server shows them); the manifold thread's id."""
    config = SessionConfig.model_validate(session_config(threads=[
        thread_config("evolve", optimizer_params={"population": 10}, n_generations=6),
        thread_config("map", kind="manifold", optimizer=None, manifold={"source": "evolve", "planes": list(planes)},
                      repeats=repeats, **({"objective": objective} if objective else {}))]))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    image = ImageArchive(data_dir).save(buffer.getvalue())
    rng = np.random.default_rng(0)
    with sessions.begin() as db:
        session = create_session(db, config)
        thread = session.threads[1]
        thread.status, thread.last_error = status, last_error
        if not recorded:
            return thread.id
        n = len(planes) * RATES.size
        generation = Generation(thread_id=thread.id, number=0, codes=encode_codes(np.zeros((n, 2))), n_stimuli=n,
                                status=GenerationStatus.COMPLETE)
        db.add(generation)
        db.flush()
        stimuli = [Stimulus(id=uuid.uuid4().hex, session_id=session.id, thread_id=thread.id,
                            generation_id=generation.id, kind=StimulusKind.SYNTHETIC, index=index,
                            content_hash=image.content_hash, png_path=image.png_path) for index in range(n)]
        batch = Batch(id=uuid.uuid4().hex, session_id=session.id, thread_id=thread.id, generation_id=generation.id,
                      rig="rig-A")
        db.add_all([*stimuli, batch])
        db.flush()
        rates = np.tile(RATES.ravel(), len(planes))
        record_presentations(db, batch, [
            PresentationRecord(uuid.uuid4().hex, s.id, 0.0, [float(rate + rng.normal(0, 0.3))] * 4, 50, 200)
            for s, rate in zip(stimuli, rates) for _ in range(repeats)])
        return thread.id


def analyze_manifold(thread_id: int, data_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", "analyze", "manifold", str(thread_id),
                           "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=300)


def in_process(capsys, *args: str) -> tuple[int, str]:
    """``actmax analyze ARGS`` run in this process (no start-up of its own): its exit code and stderr."""
    capsys.readouterr()
    try:
        code = main(["analyze", *args])
    except SystemExit as exit:  # argparse's refusals
        code = exit.code
    return code, capsys.readouterr().err


def test_a_map_shown_once_per_image_is_written_without_reliability(db_sessions, settings, tmp_path):
    thread_id = record_map(db_sessions, settings.data_dir, repeats=1, planes=("pc2-3", "pc49-50"))
    out = tmp_path / "maps"
    result = analyze_manifold(thread_id, settings.data_dir, "--out", str(out), "--n-boot", "10")
    assert result.returncode == 0, result.stderr
    written = json.loads((out / "manifold.json").read_text())
    assert [p["plane"] for p in written] == ["pc2-3", "pc49-50"]
    for plane in written:
        assert plane["split_half"] is None and plane["bootstrap"] is None and plane["smoothing"] == 0.0
        assert "one trial per grid point" in plane["note"] and plane["kent"]["r2"] > 0.9
    assert (out / "manifold_pc49-50.png").read_bytes().startswith(b"\x89PNG")
    assert result.stdout.count("note: one trial per grid point") == 2
    assert "pc2-3: map" in result.stderr  # the progress bar names each stage


def test_reliability_of_a_repeated_map_and_the_switch_to_skip_it(db_sessions, settings, tmp_path, capsys):
    thread_id = record_map(db_sessions, settings.data_dir, repeats=2)
    result = analyze_manifold(thread_id, settings.data_dir, "--out", str(tmp_path / "a"), "--n-boot", "5")
    assert result.returncode == 0, result.stderr
    (plane,) = json.loads((tmp_path / "a" / "manifold.json").read_text())
    assert plane["bootstrap"]["n_boot"] == 5 and plane["note"] is None and plane["smoothing"] > 0
    assert "bootstrap (5)" in result.stderr and "note:" not in result.stdout
    code, err = in_process(capsys, "manifold", str(thread_id), "--data-dir", str(settings.data_dir),
                           "--out", str(tmp_path / "b"), "--no-reliability")
    assert code == 0, err
    (plane,) = json.loads((tmp_path / "b" / "manifold.json").read_text())
    assert plane["split_half"] is None and plane["bootstrap"] is None and "not requested" in plane["note"]


def test_arguments_and_the_output_folder_are_checked_before_the_work(db_sessions, settings, tmp_path, capsys):
    thread_id = record_map(db_sessions, settings.data_dir, repeats=2)
    out, data_dir = tmp_path / "out", str(settings.data_dir)
    code, err = in_process(capsys, "manifold", str(thread_id), "--data-dir", data_dir, "--out", str(out),
                           "--n-boot", "1")
    assert code == 2 and "at least 2 resamples" in err and not out.exists()
    (tmp_path / "file").write_text("")
    code, err = in_process(capsys, "manifold", str(thread_id), "--data-dir", data_dir,
                           "--out", str(tmp_path / "file" / "maps"))
    assert code == 2 and str(tmp_path / "file") in err
    assert "analysing" not in err  # refused before the first stage
    code, err = in_process(capsys, "manifold", "99", "--data-dir", data_dir, "--out", str(out))
    assert code == 2 and "thread 99 not found" in err and not out.exists()
    code, err = in_process(capsys, "session", "99", "--data-dir", data_dir, "--out", str(out))
    assert code == 2 and "session 99 not found" in err and not out.exists()


def test_a_map_scored_with_a_zscore_is_the_z_scored_map_not_empty(db_sessions, settings):
    """A z-score needs the generation: each presentation scored alone was NaN, so a zscore map (what "Add Manifold
    thread" copies from a zscore evolution) had "no responses" for good."""
    plain = record_map(db_sessions, settings.data_dir, repeats=2)
    scored = record_map(db_sessions, settings.data_dir, repeats=2, objective={"expression": "zscore(rate(3))"})
    with db_sessions() as db:
        rates, z = (np.concatenate(manifold_data(db, t).trials[0]) for t in (plain, scored))
    assert z.size == rates.size and np.all(np.isfinite(z))
    np.testing.assert_allclose(z, (rates - rates.mean()) / rates.std(), atol=1e-9)  # over the map's presentations


def test_a_failed_map_thread_says_why(db_sessions, settings, tmp_path, capsys):
    error = "failed: pcs=(0, 48, 49) needs PC50, but only 31 PCs exist for 32 codes of dim 100"
    thread_id = record_map(db_sessions, settings.data_dir, repeats=1, status=ThreadStatus.FAILED, last_error=error,
                           recorded=False)
    with db_sessions() as db, pytest.raises(ServerError, match="ended before its map was complete: failed: pcs="):
        manifold_data(db, thread_id)
    code, err = in_process(capsys, "manifold", str(thread_id), "--data-dir", str(settings.data_dir),
                           "--out", str(tmp_path / "maps"))
    assert code == 2 and "needs PC50" in err and not (tmp_path / "maps").exists()


@pytest.fixture
def client(live_server: LiveServer):
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
        yield c


def test_rest_refuses_reliability_of_a_map_shown_once_per_image(client, live_server: LiveServer):
    data_dir = live_server.settings.data_dir
    thread_id = record_map(live_server.sessions, data_dir, repeats=1, planes=("pc2-3", "random"))
    response = client.get(f"/threads/{thread_id}/manifold", params={"reliability": "true"})
    assert response.status_code == 409
    assert "pc2-3, random" in response.json()["detail"] and "repeats >= 2" in response.json()["detail"]
    planes = client.get(f"/threads/{thread_id}/manifold").json()
    assert [p["plane"] for p in planes] == ["pc2-3", "random"]
    assert all(p["smoothing"] == 0.0 and "one trial per grid point" in p["note"] for p in planes)
    png = client.get(f"/threads/{thread_id}/manifold.png", params={"plane": 1})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    failed = record_map(live_server.sessions, data_dir, repeats=1, status=ThreadStatus.FAILED,
                        last_error="failed: the rig went away", recorded=False)
    response = client.get(f"/threads/{failed}/manifold")
    assert response.status_code == 409 and "failed: the rig went away" in response.json()["detail"]
