"""Retest threads: an evolution's best images shown again (server/retest.py).

Refused settings at session creation (over real HTTP); then a GA evolution and a retest of it on the real
engine, a real SQLite file and `RigClient` over ZeroMQ: the retest waits for its source, shows exactly the
source's top images by their mean over all showings (checked against a ranking made here from the stored
presentations), each `repeats` times beside the references, survives a server restart mid-retest and
finishes; the session report's retest table holds the numbers of the stored presentations.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from rig_client.client import Presentation, RigClient
from server import ServerError
from server.manifold import SourceNotReady
from server.report import retest_lines, write_session_report
from server.retest import design_codes
from server.session_config import SessionConfig, load_session_config
from server.store.db import make_db_engine, make_sessionmaker
from server.store.models import Batch, Stimulus, Thread, ThreadStatus, decode_codes
from server.store.records import PresentationRecord, create_session, record_presentations
from tests.server.conftest import session_config, thread_config
from tests.server.test_engine import RIG, LiveEngine

SOURCE = thread_config()["name"]
DOC = Path(__file__).resolve().parents[2] / "docs" / "session_config.md"


def retest_thread(**overrides) -> dict:
    base = {"name": "again", "kind": "retest", "generator": thread_config()["generator"],
            "objective": {"channels": [0]}, "retest": {"source": SOURCE}}
    return {**base, **overrides}


def test_a_retest_shows_again_the_top_images_of_an_evolution_of_the_same_session():
    config = SessionConfig.model_validate(session_config(threads=[thread_config(), retest_thread(repeats=5)]))
    retest = config.threads[1]
    assert (retest.retest.source, retest.retest.top, retest.optimizer, retest.n_generations, retest.repeats) == (
        SOURCE, 10, "fixed-design", 1, 5)


@pytest.mark.parametrize(
    ("thread", "message", "field"),
    [
        (retest_thread(retest=None), "a retest thread needs retest settings (source, top)", "threads.1"),
        (retest_thread(retest={"source": "nope"}), "retest source 'nope' is not an evolution thread of this "
         "session; evolutions: t0", "threads.1.retest.source"),
        (retest_thread(retest={"source": SOURCE, "top": 0}), "greater than or equal to 1", "threads.1.retest.top"),
        (retest_thread(retest={"source": SOURCE, "top": 101}), "less than or equal to 100", "threads.1.retest.top"),
        (retest_thread(optimizer="cma"), "takes no optimizer", "threads.1"),
        (retest_thread(manifold={"source": SOURCE}), "manifold settings are for manifold threads", "threads.1"),
        (retest_thread(generator="deepsim-fc6"), "differs from its source", "threads.1.generator"),
        (retest_thread(weights="/elsewhere/dcgan.pt"), "rendered by the same weights", "threads.1.weights"),
        (thread_config("again", retest={"source": SOURCE}), "retest settings are for retest threads (kind: retest)",
         "threads.1"),
    ],
)
def test_bad_retest_threads_are_refused_naming_the_field(thread, message, field):
    with pytest.raises(ValidationError, match=re.escape(message)) as caught:
        SessionConfig.model_validate(session_config(threads=[thread_config(), thread]))
    assert [".".join(map(str, error["loc"])) for error in caught.value.errors()] == [field]


def test_a_retest_of_a_manifold_is_refused():
    manifold = {"name": "map", "kind": "manifold", "generator": thread_config()["generator"],
                "objective": {"channels": [0]}, "manifold": {"source": SOURCE}}
    with pytest.raises(ValidationError, match="retest source 'map' is not an evolution thread"):
        SessionConfig.model_validate(session_config(threads=[thread_config(), manifold,
                                                             retest_thread(retest={"source": "map"})]))


def test_a_fixed_design_evolution_is_refused_pointing_to_the_retest_kind():
    with pytest.raises(ValidationError, match="to show chosen images again, use a retest thread \\(kind: retest\\)"):
        SessionConfig.model_validate(session_config(threads=[thread_config(optimizer="fixed-design")]))


def test_the_documented_retest_example_is_valid(tmp_path):
    (example,) = [block for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
                  if "kind: retest" in block]
    (tmp_path / "retest.yaml").write_text(example)
    config = load_session_config(tmp_path / "retest.yaml")
    assert [(t.kind, t.source, t.repeats) for t in config.threads] == [("evolution", None, 1), ("retest", "cma", 5)]


@pytest.mark.parametrize(("status", "last_error", "message"), [
    (ThreadStatus.RUNNING, None, "retest 'again' waits for evolution 't0' to finish"),
    (ThreadStatus.PAUSED, None, "retest 'again' waits for evolution 't0' to finish"),
    (ThreadStatus.FAILED, "boom", "retest 'again': its evolution 't0' failed (boom)"),
    (ThreadStatus.FINISHED, None, "retest 'again': evolution 't0' has no complete generation"),
    (ThreadStatus.STOPPED, None, "retest 'again': evolution 't0' has no complete generation"),
])
def test_a_retest_waits_for_its_source_or_says_why_it_cannot_start(db_sessions, status, last_error, message):
    config = SessionConfig.model_validate(session_config(threads=[thread_config(), retest_thread()]))
    with db_sessions.begin() as db:
        source, retest = create_session(db, config).threads
        source.status, source.last_error = status, last_error
        db.flush()
        error = SourceNotReady if status in (ThreadStatus.RUNNING, ThreadStatus.PAUSED) else ServerError
        with pytest.raises(error) as caught:
            design_codes(db, retest, config.threads[1].retest)
        assert str(caught.value) == message


def test_session_create_refuses_a_bad_retest_with_a_422_naming_the_field(client):
    response = client.post("/sessions", json=session_config(threads=[thread_config(),
                                                                     retest_thread(retest={"source": "t1"})]))
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "threads", 1, "retest", "source"] and "source 't1'" in problem["msg"]
    response = client.post("/sessions", json=session_config(threads=[thread_config(), retest_thread(retest={})]))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "source"


def test_session_create_takes_a_retest_of_its_evolution(client):
    response = client.post("/sessions", json=session_config(threads=[thread_config(), retest_thread(repeats=5)]))
    assert response.status_code == 201, response.text
    assert [(t["kind"], t["optimizer"], t["n_generations"]) for t in response.json()["threads"]] == [
        ("evolution", "cma", 50), ("retest", "fixed-design", 1)]


# ------------------------------------------------------------------ on the engine

TOP, REPEATS = 3, 3


def true_rate(png: bytes) -> float:
    """The simulated unit's mean response to an image: a number fixed by its pixels (as a neuron's is)."""
    return 5 + 20 * int.from_bytes(hashlib.sha256(png).digest()[:4], "big") / 2**32


def answer(rig: RigClient, batch, rng: np.random.Generator) -> None:
    presentations = [Presentation(s.stimulus_id, [true_rate(s.png) + float(rng.normal(0, 4))], time.time(),
                                  batch.response_window_ms) for s in batch.stimuli]
    rig.send_results(batch.batch_id, presentations).result(30)


def thread_row(live: LiveEngine, thread_id: int) -> Thread:
    with live.sessions() as db:
        return db.get(Thread, thread_id)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def ranking(database: str, thread_id: int) -> list[tuple[str, bytes, float, int]]:
    """The thread's distinct images best first by the mean channel-0 rate over all their stored presentations:
    (PNG sha256, code as bytes, mean, showings), read with sqlite3 alone."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT s.content_hash, s.\"index\", g.number, g.codes, g.n_stimuli, p.rates_json FROM presentations p "
            "JOIN stimuli s ON s.id = p.stimulus_id JOIN generations g ON g.id = s.generation_id "
            "WHERE g.thread_id = ? AND g.status = 'complete' AND s.kind = 'synthetic'", (thread_id,)).fetchall()
    rates, first = defaultdict(list), {}
    for digest, index, number, codes, n, rates_json in rows:
        rates[digest].append(json.loads(rates_json)[0])
        shown = (number, index, decode_codes(codes, n)[index].tobytes())
        first[digest] = min(first.get(digest, shown), shown)
    order = sorted(rates, key=lambda d: (-np.mean(rates[d]), first[d][:2]))
    return [(d, first[d][2], float(np.mean(rates[d])), len(rates[d])) for d in order]


@pytest.mark.slow
def test_a_retest_waits_then_shows_the_sources_best_images_by_mean_and_survives_a_restart(tmp_path, endpoint):
    rng = np.random.default_rng(0)
    config = SessionConfig.model_validate({
        "name": "retest", "rig": RIG, "references": {"source": "skimage", "count": 2},
        "threads": [
            {"name": "ga", "generator": "dcgan-faces", "optimizer": "ga", "objective": {"channels": [0]},
             "optimizer_params": {"population": 6, "n_conserve": 2}, "seed": 4, "n_generations": 4},
            {"name": "ga-retest", "kind": "retest", "generator": "dcgan-faces", "objective": {"channels": [0]},
             "retest": {"source": "ga", "top": TOP}, "repeats": REPEATS, "seed": 5}]})
    database = str(tmp_path / "actmax.sqlite")
    with LiveEngine(tmp_path, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        database_url = live.settings.database_url
        with live.sessions.begin() as db:
            session = create_session(db, config)
            session_id, (source_id, retest_id) = session.id, [t.id for t in session.threads]
        live.engine.wake()
        batch = rig.next_batch(timeout=60)
        wait_for(lambda: thread_row(live, retest_id).last_error == "retest 'ga-retest' waits for evolution 'ga' to "
                 "finish", 30, "the retest to say it waits")
        while int(batch.thread_id) == source_id:
            answer(rig, batch, rng)
            batch = rig.next_batch(timeout=60)
        # The retest's first batch is out once its source has finished; it chose by every stored showing.
        assert int(batch.thread_id) == retest_id and thread_row(live, source_id).status == ThreadStatus.FINISHED
        kinds = [s.kind for s in batch.stimuli]
        assert (kinds.count("synthetic"), kinds.count("reference")) == (TOP, 2)
    chosen = ranking(database, source_id)  # the server stopped before the rig answered the retest
    assert any(n > 1 for *_, n in chosen)  # GA elites were shown again: their showings are pooled
    with sqlite3.connect(database) as db:
        asked = db.execute("SELECT codes, n_stimuli FROM generations WHERE thread_id = ?", (retest_id,)).fetchone()
    assert [code.tobytes() for code in decode_codes(*asked)] == [code for _, code, _, _ in chosen[:TOP]]

    # A late RESULTS for the source, stored while the server is down, makes its worst image the best: the retest
    # goes on with the design it asked.
    db_engine = make_db_engine(database_url)
    with make_sessionmaker(db_engine).begin() as db:
        worst = db.scalars(select(Stimulus).where(Stimulus.thread_id == source_id,
                                                  Stimulus.content_hash == chosen[-1][0])).first()
        late = db.scalars(select(Batch).where(Batch.generation_id == worst.generation_id)).first()
        record_presentations(db, late, [PresentationRecord(uuid.uuid4().hex, worst.id, 0.0, [1000.0], 50, 200)])
    db_engine.dispose()
    assert ranking(database, source_id)[0][0] == chosen[-1][0]

    with LiveEngine(tmp_path, endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        def show() -> bool:  # the retest's batch is resent, then its rounds; True once it finished
            if (batch := rig.next_batch(timeout=0.2)) is not None:
                assert int(batch.thread_id) == retest_id and batch.generation == 0
                answer(rig, batch, rng)
            return thread_row(live, retest_id).status == ThreadStatus.FINISHED
        wait_for(show, 120, "the retest to finish")
        assert thread_row(live, retest_id).last_error is None  # its wait is over

    with sqlite3.connect(database) as db:
        status, stored, n_stimuli = db.execute("SELECT status, codes, n_stimuli FROM generations WHERE thread_id = ?",
                                               (retest_id,)).fetchone()
        stimuli = db.execute("SELECT id, \"index\", kind FROM stimuli WHERE thread_id = ? OR (session_id = ? AND "
                             "kind = 'reference')", (retest_id, session_id)).fetchall()
        retest_rates = defaultdict(list)
        for stimulus_id, rates_json in db.execute(
                "SELECT p.stimulus_id, p.rates_json FROM presentations p JOIN batches b ON b.id = p.batch_id "
                "WHERE b.thread_id = ?", (retest_id,)):
            retest_rates[stimulus_id].append(json.loads(rates_json)[0])
    assert (status, n_stimuli) == ("complete", TOP)
    assert [c.tobytes() for c in decode_codes(stored, n_stimuli)] == [code for _, code, _, _ in chosen[:TOP]]
    assert {s: len(rates) for s, rates in retest_rates.items()} == {s: REPEATS for s, _, _ in stimuli}

    # The report's retest table: the retest's numbers and the evolution's, from the stored presentations.
    out = tmp_path / "report"
    write_session_report(database_url, tmp_path, session_id, out)
    table = json.loads((out / "retest_ga-retest.json").read_text())
    assert (out / "retest_ga-retest.png").read_bytes().startswith(b"\x89PNG")
    retest_methods = (out / "methods.txt").read_text(encoding="utf-8").split("\n\n")[-1]
    assert f"the {TOP} best images of thread 'ga', by the mean over all their showings there, shown again" \
        in retest_methods
    now = {code: (mean, n) for _, code, mean, n in ranking(database, source_id)}
    synthetic = {index: stimulus_id for stimulus_id, index, kind in stimuli if kind == "synthetic"}
    assert [image["rank"] for image in table["images"]] == list(range(1, TOP + 1))
    for image, (_, code, _, _) in zip(table["images"], chosen[:TOP], strict=True):
        values = retest_rates[synthetic[image["rank"] - 1]]
        assert image["retest_n"] == REPEATS
        assert image["retest_mean"] == pytest.approx(np.mean(values))
        assert image["retest_sem"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(REPEATS))
        assert (image["evolution_mean"], image["evolution_n"]) == (pytest.approx(now[code][0]), now[code][1])
    references = {stimulus_id for stimulus_id, _, kind in stimuli if kind == "reference"}
    assert {r["stimulus_id"]: (r["mean"], r["n"]) for r in table["references"]} == {
        r: (pytest.approx(np.mean(retest_rates[r])), REPEATS) for r in references}
    shown_again = np.mean([np.mean(retest_rates[stimulus_id]) for stimulus_id, _, kind in stimuli if kind == "synthetic"])
    measured = f"Shown again ({REPEATS} scored presentations each), its {TOP} images scored {shown_again:.3g} on average"
    assert measured in retest_methods
    assert retest_lines(database_url, session_id) == [f"ga-retest: {retest_methods[retest_methods.index(measured):].strip()}"]
