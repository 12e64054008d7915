"""Session export: a real session (server and sim rig processes) exported as NWB, Parquet and CSV.

Every check compares the export with the SQLite file read directly (sqlite3), not with the export's own
tables, so a row the exporter loses, invents or alters fails the test.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import sqlite3
from pathlib import Path

import h5py
import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rig_client.client import RigClient
from rig_client.version import package_version
from server.cli import main as actmax
from server.session_config import SessionConfig
from server.export import session_tables, write_tables
from server.export.nwb import write_nwb
from server.report import write_session_report
from server.export.tables import trial_fact_columns
from server.store.archive import ImageArchive
from server.store.db import make_db_engine, make_sessionmaker
from tests.server.export_session import LABELS, RIG, SETUP, UNITS, run_session

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


def test_what_the_rig_said_of_its_setup_reaches_rest_and_every_export(recorded, tmp_path):
    """`actmax rig sim --setup FILE`: the file's fields and the simulation's own (units, noise, seed), from HELLO."""
    server, session_id, nwb = recorded
    said = {**SETUP, "units": UNITS, "seed": 0}
    headers = {"Authorization": f"Bearer {server.token}"}
    session_setup = httpx.get(f"{server.url}/sessions/{session_id}", headers=headers).json()["rig_setup"]
    assert session_setup == session_setup | said and session_setup["noise"]["eps"] == 0.1
    assert session_setup["rig_program"].startswith("actmax rig sim ")
    assert httpx.get(f"{server.url}/rigs/{RIG}", headers=headers).json()["setup"] == session_setup
    with pynwb.NWBHDF5IO(str(nwb), "r") as io_:
        description = io_.read().experiment_description
    assert f"rig {RIG} (its setup, as it said: {json.dumps(session_setup, ensure_ascii=False)})" in description
    assert actmax(["export", "csv", "--data-dir", str(server.data_dir), "--session", str(session_id),
                   "--out", str(tmp_path / "csv")]) == 0
    assert json.loads(pd.read_csv(tmp_path / "csv" / "session.csv")["rig_setup"][0]) == session_setup


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


def test_trial_facts_are_exported_when_present(recorded, tmp_path):
    server, session_id, _ = recorded
    db_engine = make_db_engine(f"sqlite:///{server.data_dir / 'actmax.sqlite'}")
    with make_sessionmaker(db_engine)() as db:
        tables = session_tables(db, session_id)
    db_engine.dispose()

    n = len(tables.presentations)
    facts = [{"fixation_broken": i % 2 == 0, "photodiode_onset": 0.01 * i, "baseline_rates": [0.5 * i, 1.0],
              "dropped_frames": i} if i % 3 else None for i in range(n)]
    tables.presentations = tables.presentations.assign(**trial_fact_columns(facts))
    write_nwb(tables, ImageArchive(server.data_dir), tmp_path / "facts.nwb")
    with pynwb.NWBHDF5IO(str(tmp_path / "facts.nwb"), "r") as io_:
        exported = io_.read().intervals["presentations"].to_dataframe()
    expected = [np.nan if fact is None else float(fact["fixation_broken"]) for fact in facts]
    np.testing.assert_array_equal(exported["fixation_broken"], expected)
    np.testing.assert_allclose(exported["photodiode_onset"], [np.nan if i % 3 == 0 else 0.01 * i for i in range(n)])
    assert [list(b) for b in exported["baseline_rates"]] == [[] if f is None else f["baseline_rates"] for f in facts]
    for fmt, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        write_tables(tables, tmp_path / fmt, fmt)
        presentations = reader(tmp_path / fmt / f"presentations.{fmt}")
        assert presentations["fixation_broken"].tolist()[1:3] == [False, True]
        assert presentations["dropped_frames"].dtype == ("Int64" if fmt == "parquet" else "float64")  # NaN: float
        assert presentations["dropped_frames"].tolist()[1:3] == [1, 2]
    csv = (tmp_path / "csv" / "presentations.csv").read_text().splitlines()
    assert csv[1].endswith(",,,,") and csv[2].endswith(",False,0.01,\"[0.5, 1.0]\",1")  # absent: empty; 1, not 1.0


def test_trial_fact_columns_union_keys_in_first_seen_order():
    columns = trial_fact_columns([None, {"b": 1}, {"a": True, "b": 2}, {"c": 0.5}])
    assert {key: [None if pd.isna(v) else v for v in column] for key, column in columns.items()} == {
        "b": [None, 1, 2, None], "a": [None, None, True, None], "c": [None, None, None, 0.5]}
    assert [str(column.dtype) for column in columns.values()] == ["Int64", "boolean", "float64"]
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


def copy_data(server, to: Path, *sql: str) -> Path:
    """A copy of the recorded data folder (the database through SQLite's backup, consistent while the server
    runs), its database changed by ``sql`` (what other sessions would hold)."""
    shutil.copytree(server.data_dir, to, ignore=shutil.ignore_patterns("*.log", ".export-*", "serve.lock", "*.sqlite*"))
    with sqlite3.connect(server.data_dir / "actmax.sqlite") as source, sqlite3.connect(to / "actmax.sqlite") as db:
        source.backup(db)
        for statement in sql:
            db.execute(statement)
    return to


def export(fmt: str, data: Path, session_id: int, out: Path, *options: str) -> int:
    return actmax(["export", fmt, "--data-dir", str(data), "--session", str(session_id), "--out", str(out), *options])


def test_channel_labels_are_those_of_the_rigs_hello_while_it_served_the_session(recorded, tmp_path):
    server, session_id, _ = recorded
    auth = {"Authorization": f"Bearer {server.token}"}
    with RigClient(server.zmq_endpoint, RIG, channels=2, labels=["newday-a", "newday-b"]) as rig:  # a later day
        assert rig.wait_connected(timeout=60)
    assert httpx.get(f"{server.url}/rigs/{RIG}", headers=auth).json()["channel_labels"] == ["newday-a", "newday-b"]
    assert httpx.get(f"{server.url}/sessions/{session_id}", headers=auth).json()["channel_labels"] == LABELS
    assert export("csv", server.data_dir, session_id, tmp_path / "csv") == 0
    assert pd.read_csv(tmp_path / "csv" / "channels.csv")["label"].tolist() == LABELS


def test_stored_generation_facts_reach_every_format(recorded, tmp_path):
    """A retarget (generations 1+ scored on channel 1), a pending last generation, a start time in +01:00 and
    the second thread as a manifold, written into a copy of the store as the engine writes them."""
    server, session_id, _ = recorded
    data = copy_data(
        server, tmp_path / "data",
        """UPDATE generations SET objective_json = '{"channels": [1], "combine": "sum"}' WHERE number > 0""",
        "UPDATE generations SET status = 'pending', completed_at = NULL WHERE number = 2",
        """UPDATE sessions SET config_json = json_set(config_json, '$.session_start_time', '2026-11-29T10:00:00+01:00',
           '$.threads[1].kind', 'manifold', '$.threads[1].manifold', json('{"source": "cma", "planes": ["pc2-3"],
           "step_deg": 18}'))""",
        "UPDATE threads SET kind = 'manifold', optimizer = 'fixed-design' WHERE name = 'ga'")
    with sqlite3.connect(data / "actmax.sqlite") as db:
        stored = {(t, g): json.loads(o) for t, g, o in db.execute(
            "SELECT thread_id, number, coalesce(g.objective_json, t.objective_json) FROM generations g "
            "JOIN threads t ON t.id = g.thread_id")}
    assert export("nwb", data, session_id, tmp_path / "s.nwb") == 0
    assert export("parquet", data, session_id, tmp_path / "parquet") == 0
    assert export("csv", data, session_id, tmp_path / "csv") == 0
    with pynwb.NWBHDF5IO(str(tmp_path / "s.nwb"), "r") as io_:
        f = io_.read()
        start = f.session_start_time
        tables = {"nwb": {name: f.processing["evolution"][name].to_dataframe() for name in ("generations", "threads")}
                  | {"stimuli": f.stimulus["stimuli"].to_dataframe()}}
    assert start.isoformat() == "2026-11-29T10:00:00+01:00"
    for fmt, reader in (("parquet", pd.read_parquet), ("csv", lambda p: pd.read_csv(p, keep_default_na=False))):
        tables[fmt] = {name: reader(tmp_path / fmt / f"{name}.{fmt}") for name in ("generations", "threads", "stimuli")}
    for fmt, t in tables.items():
        generations = t["generations"]
        channels = [list(json.loads(c) if fmt == "csv" else c) for c in generations["objective_channels"]]
        assert channels == [stored[key].get("channels", [0, 1]) for key in zip(generations["thread_id"],
                                                                                 generations["generation"])], fmt
        assert (generations["objective_combine"][generations["generation"] > 0] == "sum").all(), fmt
        pending = generations[generations["status"] == "pending"]
        assert len(pending) == 2, fmt
        assert pending["completed_at"].isna().all() if fmt == "parquet" else set(pending["completed_at"]) == {""}
        if fmt == "csv":
            assert "T" in generations["asked_at"][0]  # ISO 8601, as in NWB
        threads = t["threads"].set_index("thread_name")
        assert threads.loc["ga", "optimizer"] == "fixed-design" and "pc2-3" in str(threads.loc["ga", "manifold"]), fmt
        assert set(threads["manifold"].drop("ga").fillna("")) == {""}, fmt  # empty for evolutions, in every format
        stimuli = t["stimuli"]
        grid = stimuli[stimuli["plane"] == "pc2-3"]
        index = grid["index_in_generation"].to_numpy(dtype=int)  # = plane * 11² + i * 11 + j, 18° apart from -90°
        assert len(grid) == 6 * 3, fmt
        np.testing.assert_array_equal(grid["theta_deg"].astype(float), 18.0 * (index // 11) - 90, fmt)
        np.testing.assert_array_equal(grid["phi_deg"].astype(float), 18.0 * (index % 11) - 90, fmt)


def test_a_nul_character_in_stored_text_is_exported_as_a_symbol(recorded, tmp_path):
    """HDF5 text cannot hold a NUL character, which a note's text or a config's species may: the NWB export of such a
    session failed (500 over REST), and would for good. It is written as ␀ there; Parquet keeps it as it is."""
    server, session_id, _ = recorded
    nul = "animal" + chr(0) + "broke fixation"
    data = copy_data(server, tmp_path / "data",
                     "UPDATE sessions SET config_json = json_set(config_json, '$.species', 'Macaca' || char(0) || "
                     f"' mulatta') WHERE id = {session_id}",
                     "UPDATE events SET message = 'animal' || char(0) || 'broke fixation' WHERE id = (SELECT min(id) "
                     f"FROM events WHERE session_id = {session_id})")
    assert export("nwb", data, session_id, tmp_path / "s.nwb") == 0
    assert export("parquet", data, session_id, tmp_path / "parquet") == 0
    with pynwb.NWBHDF5IO(str(tmp_path / "s.nwb"), "r") as io_:
        f = io_.read()
        assert f.subject.species == "Macaca\u2400 mulatta"
        assert nul.replace(chr(0), "\u2400") in list(f.processing["evolution"]["events"]["message"][:])
    assert nul in pd.read_parquet(tmp_path / "parquet" / "events.parquet")["message"].tolist()


def test_dandi_fields_are_warned_about_and_can_be_given_at_export(recorded, tmp_path, capsys):
    nwbinspector = pytest.importorskip("nwbinspector", reason="pip install -e '.[nwb]'")
    server, session_id, _ = recorded
    data = copy_data(server, tmp_path / "data", "UPDATE sessions SET animal = '', config_json = "
                     "json_remove(config_json, '$.species')")
    dandi = nwbinspector.load_config("dandi")

    def critical(path: Path) -> list[str]:
        return [m.check_function_name for m in nwbinspector.inspect_nwbfile(nwbfile_path=str(path), config=dandi)
                if m.importance == nwbinspector.Importance.CRITICAL]

    assert export("nwb", data, session_id, tmp_path / "bare.nwb") == 0
    err = capsys.readouterr().err
    assert "warning: session" in err and "species (give a Latin binomial" in err and "subject_id" in err
    assert "--species, --subject-id" in err
    assert "check_subject_species_exists" in critical(tmp_path / "bare.nwb")

    assert export("nwb", data, session_id, tmp_path / "given.nwb", "--species", "Macaca mulatta",
                  "--subject-id", "M7", "--sex", "F", "--age", "P6Y") == 0
    assert "warning" not in capsys.readouterr().err
    assert critical(tmp_path / "given.nwb") == []
    with pynwb.NWBHDF5IO(str(tmp_path / "given.nwb"), "r") as io_:
        subject = io_.read().subject
        assert (subject.species, subject.subject_id, subject.sex, subject.age) == ("Macaca mulatta", "M7", "F", "P6Y")
    # DANDI makes the subject id a folder name: a '/' in it is critical too, and warned about.
    assert export("nwb", data, session_id, tmp_path / "slash.nwb", "--species", "Macaca mulatta",
                  "--subject-id", "Affe Jürgen / 猿") == 0
    err = capsys.readouterr().err
    assert "subject_id ('Affe Jürgen / 猿' has a '/', which DANDI refuses: e.g. 'Affe Jürgen - 猿')" in err
    assert "give --subject-id" in err and "species (" not in err
    assert critical(tmp_path / "slash.nwb") == ["check_subject_id_no_slashes"]
    assert export("nwb", data, session_id, tmp_path / "bad.nwb", "--age", "6 years") == 2
    assert "age '6 years' is not an ISO 8601 duration" in capsys.readouterr().err
    assert export("nwb", data, session_id, tmp_path / "bad.nwb", "--age=P6Y/P5Y") == 2  # DANDI: critical
    assert "age 'P6Y/P5Y' is a range that does not grow" in capsys.readouterr().err
    assert not (tmp_path / "bad.nwb").exists()


def test_rest_export_takes_subject_metadata_warns_and_answers_head(recorded):
    server, session_id, _ = recorded
    auth = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/sessions/{session_id}/export.nwb"
    response = httpx.get(url, headers=auth, params={"species": "monkey", "subject_id": "M7"}, timeout=60)
    assert response.status_code == 200 and "species ('monkey' is not a Latin binomial" in \
        response.headers["x-actmax-warning"] and "query parameter species=" in response.headers["x-actmax-warning"]
    with h5py.File(io.BytesIO(response.content), "r") as h5, pynwb.NWBHDF5IO(file=h5, mode="r") as io_:
        assert io_.read().subject.subject_id == "M7"
    bad = httpx.get(url, headers=auth, params={"sex": "female"})
    assert bad.status_code == 422
    assert [(p["loc"], p["msg"]) for p in bad.json()["detail"]] == [
        (["query", "sex"], "sex 'female': give M, F, U (unknown) or O (other)")]
    typo = httpx.get(url, headers=auth, params={"specie": "Macaca mulatta"})
    assert typo.status_code == 422 and typo.json()["detail"][0]["msg"] == (
        "unknown query parameter 'specie': GET /sessions/{session_id}/export.nwb takes subject_id, species, sex, age "
        "(did you mean 'species'?)")

    head = httpx.head(url, headers=auth)
    assert head.status_code == 200 and head.content == b"" and "x-actmax-warning" not in head.headers
    assert head.headers["content-type"] == "application/x-nwb"
    assert "actmax-session" in head.headers["content-disposition"]
    assert httpx.head(f"{server.url}/sessions/999/export.nwb", headers=auth).status_code == 404
    assert httpx.head(url).status_code == 401


def test_a_session_without_presentations_is_refused_as_nwb_and_warned_about_as_tables(recorded, tmp_path, capsys):
    server, session_id, _ = recorded
    auth = {"Authorization": f"Bearer {server.token}"}
    empty = httpx.post(f"{server.url}/sessions", headers=auth, json={
        "name": "empty", "rig": "nobody", "threads": [{"name": "t", "generator": "dcgan-faces", "optimizer": "cma",
                                                       "objective": {"channels": [0]}}]}).json()["id"]
    assert httpx.post(f"{server.url}/sessions/{empty}/stop", headers=auth).status_code == 200
    for method in (httpx.get, httpx.head):
        refused = method(f"{server.url}/sessions/{empty}/export.nwb", headers=auth)
        assert refused.status_code == 409
    detail = httpx.get(f"{server.url}/sessions/{empty}/export.nwb", headers=auth).json()["detail"]
    assert f"session {empty} has no presentations" in detail
    assert export("nwb", server.data_dir, empty, tmp_path / "empty.nwb") == 2
    assert "export as tables with `actmax export csv`" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert export("csv", server.data_dir, empty, tmp_path / "csv") == 0
    assert f"warning: session {empty} has no presentations" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "csv" / "presentations.csv").empty


def test_an_existing_output_is_kept_unless_forced_and_a_failed_export_leaves_it_whole(recorded, tmp_path, capsys):
    server, session_id, _ = recorded
    kept = tmp_path / "s.nwb"
    assert export("nwb", server.data_dir, session_id, kept) == 0
    before = kept.read_bytes()
    assert export("nwb", server.data_dir, session_id, kept) == 2
    assert f"--out {kept}: {kept} would be replaced; give --force" in capsys.readouterr().err
    assert export("csv", server.data_dir, session_id, tmp_path / "csv") == 0
    assert export("csv", server.data_dir, session_id, tmp_path / "csv") == 2
    assert "channels.csv" in capsys.readouterr().err
    assert export("csv", server.data_dir, session_id, tmp_path / "csv", "--force") == 0

    with sqlite3.connect(server.data_dir / "actmax.sqlite") as db:
        lost, png = db.execute("SELECT id, png_path FROM stimuli WHERE session_id = ? AND kind = 'synthetic' "
                               "ORDER BY id LIMIT 1", (session_id,)).fetchone()
    data = copy_data(server, tmp_path / "data")
    (data / png).unlink()
    assert export("nwb", data, session_id, kept, "--force") == 2
    err = capsys.readouterr().err
    assert f"stimulus {lost}: its image {data / png} is missing" in err and "images/ folder" in err
    (data / png).write_bytes((server.data_dir / png).read_bytes()[:-200])  # cut short: the header still reads
    assert export("nwb", data, session_id, kept, "--force") == 2
    assert f"stimulus {lost}: its image {data / png} is damaged" in capsys.readouterr().err
    assert kept.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["csv", "data", "s.nwb"]


@pytest.mark.parametrize(("fmt", "out", "message"), [
    ("nwb", "/proc/x.nwb", "cannot write in /proc"),
    ("nwb", "missing/dir/x.nwb", "does not exist; create it first"),
    ("csv", "afile", "is a file; csv export writes one file per table into a folder"),
    ("nwb", "folder.nwb", "is a folder; give the NWB file's name"),
])
def test_an_unusable_out_is_refused_before_the_session_is_read(tmp_path, capsys, fmt, out, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "folder.nwb").mkdir()
    out = out if out.startswith("/") else str(tmp_path / out)
    assert export(fmt, tmp_path / "no-data", 1, Path(out)) == 2  # the data folder is never looked at
    assert message in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_the_nwb_progress_bar_starts_with_the_images_after_the_preparation_is_announced(recorded, tmp_path, capsys):
    """The bar's clock starts at the first image, not before the preparation (minutes of "time left" on image 1
    for a long session): a preparation that fails, on a missing image, never shows the bar at all."""
    server, session_id, _ = recorded
    assert export("nwb", server.data_dir, session_id, tmp_path / "s.nwb") == 0
    err = capsys.readouterr().err
    n = int(err.split("preparing the NWB file: ", 1)[1].split(" images")[0])
    assert err.index("preparing the NWB file") < err.index("images:") and f"{n}/{n}" in err, err

    with sqlite3.connect(server.data_dir / "actmax.sqlite") as db:
        (png,) = db.execute("SELECT png_path FROM stimuli WHERE session_id = ? AND kind = 'synthetic' "
                            "ORDER BY id DESC LIMIT 1", (session_id,)).fetchone()
    data = copy_data(server, tmp_path / "data")
    (data / png).unlink()
    assert export("nwb", data, session_id, tmp_path / "lost.nwb") == 2
    err = capsys.readouterr().err
    assert "preparing the NWB file" in err and "is missing" in err and "images:" not in err, err


def test_every_export_holds_the_hyperparameters_and_software_each_thread_ran_with(recorded, tmp_path):
    """The threads table gains what the optimizer ran with (its ``thread.optimizer`` event: generator defaults such
    as sigma0 that the config left out) and the software of each start (its ``thread.runtime`` events); NWB's
    source_script and Parquet's metadata name the versions."""
    server, session_id, nwb = recorded
    with sqlite3.connect(server.data_dir / "actmax.sqlite") as db:
        names = dict(db.execute("SELECT id, name FROM threads WHERE session_id = ?", (session_id,)))
        events = {(names[t], kind): json.loads(data) for t, kind, data in db.execute(
            "SELECT thread_id, kind, data_json FROM events WHERE session_id = ? AND kind IN "
            "('thread.optimizer', 'thread.runtime') ORDER BY id", (session_id,))}
    ran = {name: events[name, "thread.optimizer"]["hyperparameters"] for name in names.values()}
    software = {name: events[name, "thread.runtime"] for name in names.values()}
    assert ran["cma"]["sigma0"] == 1.0 and ran["ga"]["mutation_rate"] > 0  # not configured: defaults
    assert software["cma"]["torch"] == torch_version() and software["cma"]["weights_sha256"]

    assert export("parquet", server.data_dir, session_id, tmp_path / "parquet") == 0
    assert export("csv", server.data_dir, session_id, tmp_path / "csv") == 0
    for fmt, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        threads = reader(tmp_path / fmt / f"threads.{fmt}").set_index("thread_name")
        for name in names.values():
            assert json.loads(threads.loc[name, "optimizer_hyperparameters"]) == ran[name], fmt
            assert json.loads(threads.loc[name, "optimizer_params"]) == {"population": 6}, fmt  # as configured
            assert json.loads(threads.loc[name, "software"]) == [software[name]], fmt
    import pyarrow.parquet as pq

    version = package_version()
    assert pq.read_schema(tmp_path / "parquet" / "threads.parquet").metadata[b"actmax_version"] == version.encode()
    with pynwb.NWBHDF5IO(str(nwb), "r") as io_:
        f = io_.read()
        threads = f.processing["evolution"]["threads"].to_dataframe().set_index("thread_name")
        assert f.source_script == (f"exported by actmax {version}; recorded with actmax {version} (python "
                                   f"{platform.python_version()}, torch {torch_version()}, numpy {np.__version__})")
    assert "sigma0=1.0" in threads.loc["cma", "optimizer_hyperparameters"]
    assert 'precision="float32"' in threads.loc["cma", "software"]
    assert f'weights_sha256="{software["cma"]["weights_sha256"]}"' in threads.loc["cma", "software"]

    # A restart logs the same record again (kept once) or another (kept too, in order).
    data = copy_data(server, tmp_path / "data", *[
        f"""INSERT INTO events (session_id, thread_id, time, level, kind, message, data_json) SELECT session_id,
            thread_id, time, level, kind, message, {change} FROM events WHERE kind = 'thread.runtime'"""
        for change in ("data_json", "json_set(data_json, '$.precision', 'float16')")])
    assert export("csv", data, session_id, tmp_path / "restarted") == 0
    threads = pd.read_csv(tmp_path / "restarted" / "threads.csv").set_index("thread_name")
    assert json.loads(threads.loc["cma", "software"]) == [software["cma"], software["cma"] | {"precision": "float16"}]


def torch_version() -> str:
    import torch

    return torch.__version__


def test_csv_leaves_absent_lists_empty_as_documented(recorded, tmp_path):
    """docs/export.md: an empty cell means absent for every optional column, lists included; Parquet keeps
    '' for absent text and an empty list for an absent list, as its column descriptions say."""
    server, session_id, _ = recorded
    assert export("csv", server.data_dir, session_id, tmp_path / "csv") == 0
    assert export("parquet", server.data_dir, session_id, tmp_path / "pq") == 0
    stimuli = pd.read_csv(tmp_path / "csv" / "stimuli.csv", keep_default_na=False)
    references = stimuli[stimuli["kind"] == "reference"]
    assert len(references) == 2 and set(references["latent_code"]) == {""}
    assert "[]" not in (tmp_path / "csv" / "stimuli.csv").read_text()
    assert all(json.loads(code) for code in stimuli.loc[stimuli["kind"] == "synthetic", "latent_code"])
    stimuli = pd.read_parquet(tmp_path / "pq" / "stimuli.parquet")
    references = stimuli[stimuli["kind"] == "reference"]
    assert set(references["generator"]) == {""} and {len(code) for code in references["latent_code"]} == {0}


def test_session_show_prints_what_each_thread_runs(recorded, monkeypatch, capsys):
    server, session_id, _ = recorded
    monkeypatch.setenv("ACTMAX_URL", server.url)
    monkeypatch.setenv("ACTMAX_TOKEN", server.token)
    capsys.readouterr()
    assert actmax(["session", "show", str(session_id)]) == 0
    out = capsys.readouterr().out
    assert "seed 1, generator dcgan-faces 1.0, optimizer cma (population=6), objective mean of channel(s) 0, " \
           "generations 3 of 3 done" in out, out
    assert "seed 2, generator dcgan-faces 1.0, optimizer ga (population=6), objective rate(1) + rate(0)," in out, out
    with pytest.raises(SystemExit):
        actmax(["session", "show", "--help"])
    assert "the session's id (`actmax session list`)" in capsys.readouterr().out


def test_the_report_writes_a_methods_paragraph_per_thread(recorded, tmp_path):
    server, session_id, _ = recorded
    write_session_report(f"sqlite:///{server.data_dir / 'actmax.sqlite'}", server.data_dir, session_id, tmp_path)
    with sqlite3.connect(server.data_dir / "actmax.sqlite") as db:
        (sha256,) = db.execute("SELECT DISTINCT weights_sha256 FROM stimuli WHERE session_id = ? AND kind = "
                               "'synthetic'", (session_id,)).fetchone()
        (device,) = db.execute("SELECT DISTINCT json_extract(data_json, '$.device') FROM events WHERE session_id = ? "
                               "AND kind = 'thread.runtime'", (session_id,)).fetchone()
    session, cma, ga = (tmp_path / "methods.txt").read_text().strip().split("\n\n")
    assert f"rig {RIG!r}" in session and "channels labelled 0 'elec67-u1', 1 'elec12-u1'" in session
    assert "2 reference images from skimage (astronaut, chelsea)" in session and "50-200 ms after" in session
    assert f"dcgan-faces version 1.0 (weights sha256 {sha256})" in cma and "cma optimizer (seed 1;" in cma
    assert "sigma0=1.0" in cma and "6 images per generation" in cma and "3 of 3 generations completed" in cma
    assert "the mean rate (spikes/s) of channel 0 (elec67-u1)" in cma
    assert f"Software: actmax {package_version()} (python {platform.python_version()}, " \
           f"torch {torch_version()}, numpy {np.__version__}) on {device}, float32 precision." in cma
    assert "ga optimizer (seed 2;" in ga and "mutation_rate=" in ga and "the expression rate(1) + rate(0)" in ga
