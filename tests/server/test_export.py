"""Session export: a real session (server and sim rig processes) exported as NWB, Parquet and CSV.

Every check compares the export with the SQLite file read directly (sqlite3), not with the export's own
tables, so a row the exporter loses, invents or alters fails the test.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import h5py
import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from server.cli import main as actmax
from server.session_config import SessionConfig
from server.export import session_tables, write_tables
from server.export.nwb import write_nwb
from server.report import write_session_report
from server.export.tables import trial_fact_columns
from server.store.archive import ImageArchive
from server.store.db import make_db_engine, make_sessionmaker
from server.store.models import Event
from tests.server.export_session import LABELS, RIG, run_session

pynwb = pytest.importorskip("pynwb", reason="pip install -e '.[nwb]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A finished two-thread session, its still-running server, and its NWB export made by the CLI."""
    root = tmp_path_factory.mktemp("export")
    server, api, session_id = run_session(root / "data")
    nwb = root / "session.nwb"
    try:  # the server stops also when the export fails
        assert actmax(["export", "nwb", "--data-dir", str(server.data_dir), "--session", str(session_id),
                       "--out", str(nwb)]) == 0
        yield server, session_id, nwb
    finally:
        server.stop()
        api.close()


@pytest.fixture(scope="module")
def running(recorded) -> int:
    """A session whose rig never connects: its thread waits for it (not ended)."""
    server, _, _ = recorded
    return httpx.post(f"{server.url}/sessions", headers={"Authorization": f"Bearer {server.token}"}, json={
        "name": "live", "rig": "nobody", "threads": [{"name": "t", "generator": "dcgan-faces", "optimizer": "cma",
                                                      "objective": {"channels": [0]}}]}).json()["id"]


@pytest.fixture(scope="module")
def database(recorded):
    """What the store holds, read with plain SQL."""
    server, session_id, _ = recorded
    with sqlite3.connect(server.data_dir / "actmax.sqlite") as db:
        presentations = {pid: (sid, onset, tuple(json.loads(rates))) for pid, sid, onset, rates in db.execute(
            "SELECT presentation_id, stimulus_id, onset, rates_json FROM presentations")}
        stimuli = dict(db.execute("SELECT id, content_hash FROM stimuli WHERE session_id = ?", (session_id,)))
        scores = {}
        for thread, number, scores_json, mean, best in db.execute(
                "SELECT t.name, g.number, g.scores_json, g.mean_score, g.max_score FROM generations g "
                "JOIN threads t ON t.id = g.thread_id WHERE t.session_id = ?", (session_id,)):
            scores[(thread, number)] = (json.loads(scores_json), mean, best)
        codes = dict(db.execute("SELECT id, code FROM stimuli WHERE code IS NOT NULL"))
    assert presentations and stimuli and len(scores) == 6
    return {"presentations": presentations, "stimuli": stimuli, "scores": scores, "codes": codes}


def pixels(archive_root: Path, content_hash: str) -> np.ndarray:
    png = ImageArchive(archive_root).read(content_hash)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def scores_by_generation(stimuli: pd.DataFrame, threads: pd.DataFrame) -> dict[tuple[str, int], list[float]]:
    names = dict(zip(threads["thread_id"], threads["thread_name"]))
    synthetic = stimuli[stimuli["kind"] == "synthetic"].sort_values("index_in_generation")
    return {(names[t], int(g)): group["score"].tolist()
            for (t, g), group in synthetic.groupby(["thread_id", "generation"])}


def test_nwb_holds_every_presentation_rate_image_and_score_and_nothing_else(recorded, database):
    server, _, nwb = recorded
    with pynwb.NWBHDF5IO(str(nwb), "r") as io_:
        f = io_.read()
        assert f.subject.species == "Macaca mulatta" and f.subject.subject_id == "sim-1"
        assert f.experimenter == ("Doe, Jane",) and f.lab == "Test lab"

        presentations = f.intervals["presentations"].to_dataframe()
        reference = f.timestamps_reference_time.timestamp()
        exported = {row.presentation_id: (row.stimulus_id, row.start_time + reference, tuple(row.rates))
                    for row in presentations.itertuples()}
        assert exported.keys() == database["presentations"].keys()
        for pid, (sid, onset, rates) in exported.items():
            stored_sid, stored_onset, stored_rates = database["presentations"][pid]
            assert sid == stored_sid and onset == pytest.approx(stored_onset, abs=1e-6)
            np.testing.assert_array_equal(rates, stored_rates)
        assert presentations["scored"].all()  # every generation completed

        stimuli = f.stimulus["stimuli"].to_dataframe()
        images = f.stimulus_template["stimulus_images"]
        assert dict(zip(stimuli["stimulus_id"], stimuli["content_hash"])) == database["stimuli"]
        assert [image.name for image in images.order_of_images.data] == stimuli["stimulus_id"].tolist()
        assert set(images.images) == database["stimuli"].keys()
        for sid, digest in database["stimuli"].items():
            np.testing.assert_array_equal(images.images[sid].data[:], pixels(server.data_dir, digest))
        for sid, code in zip(stimuli["stimulus_id"], stimuli["latent_code"]):
            stored = database["codes"].get(sid)
            np.testing.assert_array_equal(code, [] if stored is None else np.frombuffer(stored, "<f8"))

        order = f.stimulus["presentation_order"]
        shown = stimuli["stimulus_id"].to_numpy()[order.data[:]]
        assert shown.tolist() == presentations["stimulus_id"].tolist()
        np.testing.assert_allclose(order.timestamps[:], presentations["start_time"])

        evolution = f.processing["evolution"]
        threads = evolution["threads"].to_dataframe()
        generations = evolution["generations"].to_dataframe()
        assert scores_by_generation(stimuli, threads).keys() == database["scores"].keys()
        for key, exported_scores in scores_by_generation(stimuli, threads).items():
            np.testing.assert_allclose(exported_scores, database["scores"][key][0])
        names = dict(zip(threads["thread_id"], threads["thread_name"]))
        assert len(generations) == len(database["scores"])
        for row in generations.itertuples():
            _, mean, best = database["scores"][(names[row.thread_id], row.generation)]
            assert (row.mean_score, row.max_score) == pytest.approx((mean, best))
        cma = generations[generations["thread_id"] == threads.loc[threads["optimizer"] == "cma", "thread_id"].item()]
        assert (cma["sigma"] > 0).all() and (cma["mean_norm"] > 0).all()
        assert evolution["channels"].to_dataframe()["channel"].tolist() == [0, 1]


def test_nwbinspector_finds_nothing_critical(recorded):
    nwbinspector = pytest.importorskip("nwbinspector", reason="pip install -e '.[nwb]'")
    _, _, nwb = recorded
    messages = list(nwbinspector.inspect_nwbfile(nwbfile_path=str(nwb)))
    serious = [m for m in messages if m.importance in (nwbinspector.Importance.CRITICAL,
                                                        nwbinspector.Importance.BEST_PRACTICE_VIOLATION)]
    assert not serious, [f"{m.check_function_name}: {m.message}" for m in serious]


def test_parquet_and_csv_hold_the_same_tables(recorded, database, tmp_path):
    server, session_id, _ = recorded
    for fmt in ("parquet", "csv"):
        assert actmax(["export", fmt, "--data-dir", str(server.data_dir), "--session", str(session_id),
                       "--out", str(tmp_path / fmt)]) == 0
    read = {"parquet": pd.read_parquet, "csv": pd.read_csv}
    for fmt, reader in read.items():
        presentations = reader(tmp_path / fmt / f"presentations.{fmt}")
        stimuli = reader(tmp_path / fmt / f"stimuli.{fmt}")
        threads = reader(tmp_path / fmt / f"threads.{fmt}")
        rates = presentations["rates"].map(json.loads) if fmt == "csv" else presentations["rates"]
        exported = {pid: (sid, onset, tuple(r))
                    for pid, sid, onset, r in zip(presentations["presentation_id"], presentations["stimulus_id"],
                                                  presentations["onset"], rates)}
        assert exported == database["presentations"], fmt
        assert dict(zip(stimuli["stimulus_id"], stimuli["content_hash"])) == database["stimuli"]
        exported_scores = scores_by_generation(stimuli, threads)
        assert exported_scores.keys() == database["scores"].keys()
        for key, values in exported_scores.items():
            np.testing.assert_allclose(values, database["scores"][key][0])
        assert json.loads(threads["optimizer_params"][0]) == {"population": 6}


def test_rest_export_needs_the_token_and_a_finished_session(recorded, running, database):
    server, session_id, _ = recorded
    url = f"{server.url}/sessions/{session_id}/export.nwb"
    assert httpx.get(url).status_code == 401
    auth = {"Authorization": f"Bearer {server.token}"}
    missing = httpx.get(f"{server.url}/sessions/999/export.nwb", headers=auth)
    assert missing.status_code == 404 and "list sessions with GET /sessions" in missing.json()["detail"]

    refused = httpx.get(f"{server.url}/sessions/{running}/export.nwb", headers=auth)
    assert refused.status_code == 409 and "still running" in refused.json()["detail"]
    assert f"(POST /sessions/{running}/stop or /threads/{{id}}/stop)" in refused.json()["detail"]

    response = httpx.get(url, headers=auth, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-nwb"
    assert "actmax-session" in response.headers["content-disposition"]
    with h5py.File(io.BytesIO(response.content), "r") as h5, pynwb.NWBHDF5IO(file=h5, mode="r") as io_:
        ids = set(io_.read().intervals["presentations"]["presentation_id"][:])
    assert ids == database["presentations"].keys()
    assert not list(server.data_dir.glob(".export-*"))  # the temporary file is gone
    assert "/sessions/{session_id}/export.nwb" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_running_session_is_refused_by_the_cli(recorded, running, capsys, tmp_path):
    server, _, _ = recorded
    assert actmax(["export", "parquet", "--data-dir", str(server.data_dir), "--session", str(running),
                   "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"session {running} is still running: t (waiting_for_rig)" in err
    assert f"(`actmax session stop {running}` or `actmax thread stop ID`)" in err and "POST" not in err
    assert not (tmp_path / "out").exists()
    assert actmax(["export", "csv", "--data-dir", str(server.data_dir), "--session", "999",
                   "--out", str(tmp_path / "out")]) == 2
    assert "session 999 not found; list sessions with `actmax session list`" in capsys.readouterr().err


def test_channel_labels_from_the_rigs_hello_reach_rest_and_every_export(recorded, tmp_path):
    server, session_id, nwb = recorded
    session = httpx.get(f"{server.url}/sessions/{session_id}", headers={"Authorization": f"Bearer {server.token}"})
    assert session.json()["channel_labels"] == LABELS
    with pynwb.NWBHDF5IO(str(nwb), "r") as io_:
        assert io_.read().processing["evolution"]["channels"].to_dataframe()["label"].tolist() == LABELS
    assert actmax(["export", "parquet", "--data-dir", str(server.data_dir), "--session", str(session_id),
                   "--out", str(tmp_path / "pq")]) == 0
    assert pd.read_parquet(tmp_path / "pq" / "channels.parquet")["label"].tolist() == LABELS


def test_the_report_names_the_scored_channels_by_their_labels(recorded, tmp_path):
    server, session_id, _ = recorded
    summaries = write_session_report(f"sqlite:///{server.data_dir / 'actmax.sqlite'}", server.data_dir, session_id,
                                     tmp_path)
    assert {s.name: s.channels for s in summaries} == {"cma": LABELS[:1], "ga": LABELS}
    assert json.loads((tmp_path / "summary.json").read_text())[1]["channels"] == LABELS


def test_each_threads_objective_is_exported_as_configured(recorded, tmp_path):
    server, session_id, _ = recorded
    assert actmax(["export", "csv", "--data-dir", str(server.data_dir), "--session", str(session_id),
                   "--out", str(tmp_path / "csv")]) == 0
    threads = pd.read_csv(tmp_path / "csv" / "threads.csv", keep_default_na=False).set_index("thread_name")
    columns = ["objective_channels", "objective_combine", "objective_expression"]
    assert threads.loc["cma", columns].tolist() == ["[0]", "mean", ""]
    assert threads.loc["ga", columns].tolist() == ["[0, 1]", "", "rate(1) + rate(0)"]  # the channels it reads


def test_channel_labels_and_trial_facts_are_exported_when_present(recorded, tmp_path):
    server, session_id, _ = recorded
    data = tmp_path / "data"
    shutil.copytree(server.data_dir, data, ignore=shutil.ignore_patterns("*.log", ".export-*"))
    db_engine = make_db_engine(f"sqlite:///{data / 'actmax.sqlite'}")
    with make_sessionmaker(db_engine)() as db:
        db.add(Event(kind="rig.connected", message="rig connected",
                     data_json={"rig": RIG, "channels": 2, "channel_labels": ["elec-12", "elec-40"]}))
        db.commit()
        tables = session_tables(db, session_id)
    db_engine.dispose()
    assert tables.channels["label"].tolist() == ["elec-12", "elec-40"]

    n = len(tables.presentations)
    facts = [{"fixation_broken": i % 2 == 0, "photodiode_onset": 0.01 * i, "baseline_rates": [0.5 * i, 1.0]}
             if i % 3 else None for i in range(n)]
    tables.presentations = tables.presentations.assign(**trial_fact_columns(facts))
    write_nwb(tables, ImageArchive(data), tmp_path / "facts.nwb")
    with pynwb.NWBHDF5IO(str(tmp_path / "facts.nwb"), "r") as io_:
        f = io_.read()
        exported = f.intervals["presentations"].to_dataframe()
        labels = f.processing["evolution"]["channels"].to_dataframe()["label"].tolist()
    assert labels == ["elec-12", "elec-40"]
    expected = [np.nan if fact is None else float(fact["fixation_broken"]) for fact in facts]
    np.testing.assert_array_equal(exported["fixation_broken"], expected)
    np.testing.assert_allclose(exported["photodiode_onset"], [np.nan if i % 3 == 0 else 0.01 * i for i in range(n)])
    assert [list(b) for b in exported["baseline_rates"]] == [[] if f is None else f["baseline_rates"] for f in facts]
    write_tables(tables, tmp_path / "pq", "parquet")
    assert pd.read_parquet(tmp_path / "pq" / "presentations.parquet")["fixation_broken"].tolist()[1] is False


def test_trial_fact_columns_union_keys_in_first_seen_order():
    columns = trial_fact_columns([None, {"b": 1}, {"a": True, "b": 2}, {}])
    assert columns == {"b": [None, 1, 2, None], "a": [None, None, True, None]}
    assert trial_fact_columns([None, None]) == {}


def test_subject_metadata_is_validated():
    base = {"name": "s", "rig": "r", "threads": [{"name": "t", "generator": "dcgan-faces", "optimizer": "cma",
                                                   "objective": {"channels": [0]}}]}
    config = SessionConfig.model_validate(base | {"age": "P6Y", "sex": "F",
                                                  "session_start_time": "2026-11-27T09:30:00+01:00"})
    assert config.session_start_time.utcoffset().total_seconds() == 3600
    for bad in ({"age": "6 years"}, {"sex": "female"}, {"session_start_time": "2026-11-27T09:30:00"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SessionConfig.model_validate(base | bad)


def test_cli_rejects_an_nwb_name_without_the_suffix(tmp_path, capsys):
    common = ["--data-dir", str(tmp_path), "--session", "1", "--out"]
    assert actmax(["export", "nwb", *common, str(tmp_path / "x.h5")]) == 2
    assert "ends in .nwb" in capsys.readouterr().err
    assert actmax(["export", "csv", *common, str(tmp_path)]) == 2
    assert "no actmax database" in capsys.readouterr().err
