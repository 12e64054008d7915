"""Sessions end to end: `actmax serve` and the `actmax rig sim` of docs/session_config.md as real processes.

One server and one rig serve the whole module (the rig starts in the first test, after sessions that
wait for it). Shown here: waiting_for_rig, blocked and last_error; sessions that finish; the CLI
client creating, watching, retargeting and stopping a session; the docs' examples run to completion.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from rig_client.client import Presentation, RigClient
from rig_client.protocol import ProtocolError
from server.launch import ServerProcess, stop
from tests.server.test_end_to_end import wait_until

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "session_config.md"
SMALL = {"references": {"source": "skimage", "count": 2}}


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def doc_rig_args() -> list[str]:
    """The `actmax rig sim ...` line of the docs, as argv after `actmax`."""
    (line,) = [line for block in doc_blocks("sh") for line in block.splitlines() if line.startswith("actmax rig sim")]
    return shlex.split(line)[1:]


class Stack:
    """The server, its REST client, and (once started) the docs' simulated rig."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_urlsafe(16)
        self.server = ServerProcess(root / "data", self.token)
        self.api = self.server.start()
        self.rig: subprocess.Popen | None = None
        self.rig_log = root / "rig.log"

    def start_rig(self) -> None:
        if self.rig is None:
            with open(self.rig_log, "ab") as log:
                self.rig = subprocess.Popen([sys.executable, "-m", "server.cli", *doc_rig_args(),
                                             "--endpoint", self.server.zmq_endpoint],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def processes(self):
        return [(self.server.process, self.server.log_path)] + ([(self.rig, self.rig_log)] if self.rig else [])

    def wait(self, predicate, what: str, timeout: float = 300):
        return wait_until(predicate, timeout, what, self.processes)

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True,
                               timeout=120, env=self.cli_env(), **kwargs)

    def cli_env(self) -> dict:
        return {**os.environ, "ACTMAX_URL": self.server.url, "ACTMAX_TOKEN": self.token}

    def thread(self, thread_id: int) -> dict:
        return self.api.get(f"/threads/{thread_id}")

    def events(self, session_id: int) -> list[dict]:
        return self.api.get(f"/sessions/{session_id}/events", limit=1000)["items"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    stack = Stack(tmp_path_factory.mktemp("sessions"))
    try:
        yield stack
    finally:
        stop(stack.rig)
        stack.server.stop()
        stack.api.close()


def watched(out: str) -> list[str]:
    """``session watch``'s lines without the time each starts with (local time and offset from UTC: two words)."""
    return [line.split(" ", 2)[2] for line in out.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]


def evolution(name: str, channels: list[int], n_generations: int = 2, **extra) -> dict:
    return {"name": name, "generator": "dcgan-faces", "optimizer": "cma", "optimizer_params": {"population": 6},
            "objective": {"channels": channels}, "seed": 5, "n_generations": n_generations, **extra}


def test_threads_wait_for_their_rig_then_run_or_block_and_sessions_finish(stack: Stack):
    ok = stack.api.post("/sessions", {"name": "ok", "rig": "rig-A", **SMALL, "threads": [evolution("a", [0])]})
    wide = stack.api.post("/sessions", {"name": "wide", "rig": "rig-A", **SMALL, "threads": [evolution("b", [5])]})
    (ok_thread,), (wide_thread,) = ok["threads"], wide["threads"]
    assert ok_thread["status"] == wide_thread["status"] == "waiting_for_rig"

    stack.start_rig()  # announces 2 channels
    blocked = stack.wait(lambda: (t := stack.thread(wide_thread["id"]))["status"] == "blocked" and t, "a block")
    assert "reads channel 5 but rig 'rig-A' announced 2 channel(s)" in blocked["last_error"]
    stack.wait(lambda: stack.api.get(f"/sessions/{ok['id']}")["status"] == "finished", "the session to finish")
    assert stack.thread(ok_thread["id"])["status"] == "finished"
    kinds = [(e["kind"], e["thread_id"]) for e in stack.events(ok["id"])]
    assert ("thread.running", ok_thread["id"]) in kinds and kinds[-1] == ("session.finished", None)
    # The simulated rig stamps each onset when it shows the image, on its clock (the same machine's here):
    # after the session was created and before the server received the results.
    created = datetime.fromisoformat(ok["created_at"]).timestamp()
    for shown in stack.api.get(f"/threads/{ok_thread['id']}/presentations", limit=1000)["items"]:
        assert created <= shown["onset"] <= datetime.fromisoformat(shown["received_at"]).timestamp()
    assert ("thread.blocked", wide_thread["id"]) in [(e["kind"], e["thread_id"]) for e in stack.events(wide["id"])]

    # Retargeted to a channel the rig records, the blocked thread runs; its pending generation, of which
    # nothing was shown, is scored the new way.
    stack.api.post(f"/threads/{wide_thread['id']}/retarget", {"objective": {"channels": [1]}})
    stack.wait(lambda: stack.api.get(f"/sessions/{wide['id']}")["status"] == "finished", "the retargeted session")
    generations = stack.api.get(f"/threads/{wide_thread['id']}/generations")["items"]
    assert [g["objective"] for g in generations] == [{"channels": [1], "combine": "mean"}] * 2
    (event,) = [e for e in stack.events(wide["id"]) if e["kind"] == "thread.retargeted"]
    assert event["data"]["from_generation"] == 0


def test_refused_results_are_an_event_and_the_threads_last_error(stack: Stack):
    session = stack.api.post("/sessions", {"name": "refused", "rig": "manual", **SMALL,
                                           "threads": [evolution("m", [0])]})
    thread_id = session["threads"][0]["id"]
    with RigClient(stack.server.zmq_endpoint, "manual", channels=1) as rig:
        batch = rig.next_batch(timeout=120)
        assert batch is not None
        with pytest.raises(ProtocolError, match="not part of batch"):
            rig.send_results(batch.batch_id, [Presentation("no-such-stimulus", [1.0], onset=0.0,
                                                           window_ms=(50, 200))]).result(30)
        thread = stack.thread(thread_id)
        assert "refused (bad_field)" in thread["last_error"] and "no-such-stimulus" in thread["last_error"]
        rig.channels = 2  # a buggy rig: more rates than it announced in HELLO (the transport refuses them)
        with pytest.raises(ProtocolError, match="declared 1 channels"):
            rig.send_results(batch.batch_id, [Presentation(batch.stimuli[0].stimulus_id, [1.0, 2.0], onset=0.0,
                                                           window_ms=(50, 200))]).result(30)
    assert "declared 1 channels in HELLO" in stack.thread(thread_id)["last_error"]
    refused = [e for e in stack.events(session["id"]) if e["kind"] == "results.refused"]
    assert len(refused) == 2 and all(e["thread_id"] == thread_id and e["data"]["batch_id"] == batch.batch_id
                                     for e in refused)
    stack.api.post(f"/sessions/{session['id']}/stop")
    watch = stack.cli("session", "watch", str(session["id"]))  # the session has ended: one pass
    assert watch.returncode == 0, watch.stderr
    warnings = [line for line in watched(watch.stdout) if line.startswith("WARNING")]
    assert len(warnings) == 2 and all(line.startswith("WARNING  m: results.refused: ") for line in warnings)
    assert "no-such-stimulus" in warnings[0] and "declared 1 channels" in warnings[1]


def test_cli_creates_watches_retargets_and_stops_a_session(stack: Stack, tmp_path: Path):
    stack.start_rig()
    config = tmp_path / "session.yaml"
    config.write_text("name: cli\nrig: rig-A\nreferences: {source: skimage, count: 2}\nthreads:\n"
                      "  - {name: long, generator: dcgan-faces, optimizer: cma, optimizer_params: {population: 6},\n"
                      "     objective: {channels: [0]}, seed: 9, n_generations: 500}\n")
    created = stack.cli("session", "create", str(config))
    assert created.returncode == 0, created.stderr
    session_id = int(re.search(r"session (\d+) 'cli' created", created.stdout).group(1))
    thread_id = stack.api.get(f"/sessions/{session_id}")["threads"][0]["id"]
    watch = subprocess.Popen([sys.executable, "-m", "server.cli", "session", "watch", str(session_id),
                              "--interval", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=stack.cli_env())
    try:
        done = lambda n: [g for g in stack.api.get(f"/threads/{thread_id}/generations")["items"] if g["status"] == "complete"][n:]  # noqa: E731
        stack.wait(lambda: done(0), "a first generation")
        assert watch.stdout.readline().startswith("time")  # the watch has reached the server: it now watches
        stack.server.kill()  # a crash while watched: the watch waits for the server rather than exiting
        stack.api.close()
        stack.api = stack.server.start()
        retarget = stack.cli("thread", "retarget", str(thread_id), "--channels", "1")
        assert retarget.returncode == 0, retarget.stderr
        (event,) = [e for e in stack.events(session_id) if e["kind"] == "thread.retargeted"]
        first = event["data"]["from_generation"]
        assert event["thread_id"] == thread_id and f"from generation {first} on" in event["message"]
        # the CLI names the new objective and the generation it applies from
        assert retarget.stdout == (f"thread {thread_id} 'long' scores mean of channels [1] from generation {first} "
                                   "on (before: mean of channels [0])\n")
        stack.wait(lambda: done(first), "the retargeted generation")
        generations = stack.api.get(f"/threads/{thread_id}/generations")["items"]
        assert generations[first - 1]["objective"] == {"channels": [0], "combine": "mean"}
        assert generations[first]["objective"] == {"channels": [1], "combine": "mean"}

        stopped = stack.cli("session", "stop", str(session_id))
        assert stopped.returncode == 0 and f"session {session_id} stopped" in stopped.stdout
        out, err = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    rows = [line.split() for line in watched(out) if line.startswith("long ") and len(line.split()) == 6]
    assert [int(row[1]) for row in rows[:first + 1]] == list(range(first + 1))
    assert all(float(row[5]) >= 0 for row in rows)  # rig latency, seconds
    assert out.rstrip().endswith(f"session {session_id} stopped")
    assert "waiting for it" in err and "the server answers again" in err, err

    # A retarget, a restart and a generation left pending are lines of the watch too (a pass over the
    # ended session, once the engine logged the generation its stop left pending).
    stack.wait(lambda: any(e["kind"] == "generation.left_pending" for e in stack.events(session_id)),
               "the generation left pending")
    info = [line for line in watched(stack.cli("session", "watch", str(session_id)).stdout) if line.startswith("INFO ")]
    assert [line.split()[2] for line in info] == ["thread.resumed:", "thread.retargeted:", "generation.left_pending:"]
    assert "after a server restart" in info[0] and info[1].endswith(event["message"])

    refused = stack.cli("thread", "pause", str(thread_id))
    assert refused.returncode != 0
    assert f"cannot pause thread {thread_id}: it is stopped" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("index, language", [(0, "json"), (0, "yaml"), (1, "yaml")])
def test_the_docs_examples_run_to_completion(stack: Stack, tmp_path: Path, index: int, language: str):
    stack.start_rig()
    path = tmp_path / f"example.{language}"
    path.write_text(doc_blocks(language)[index])
    created = stack.cli("session", "create", str(path))
    assert created.returncode == 0, created.stderr
    session_id = int(re.search(r"session (\d+) ", created.stdout).group(1))
    stack.wait(lambda: stack.api.get(f"/sessions/{session_id}")["status"] != "active", "the example to finish", 600)
    session = stack.api.get(f"/sessions/{session_id}")
    assert session["status"] == "finished"
    config = json.loads(path.read_text()) if language == "json" else None
    for thread in session["threads"]:
        assert thread["status"] == "finished", thread
        generations = stack.api.get(f"/threads/{thread['id']}/generations")["items"]
        assert generations and all(g["status"] == "complete" and g["n_scored"] > 0 for g in generations)
        if config is not None:
            (wanted,) = [t for t in config["threads"] if t["name"] == thread["name"]]
            assert len(generations) == wanted["n_generations"]


def test_the_rest_api_pages_examples_work_beside_the_docs_rig(stack: Stack):
    """docs/rest_api.md's session and retargets, as written, with the docs' two-channel rig-A connected (its
    example once read channel 5: a 422)."""
    stack.start_rig()
    stack.wait(lambda: any(r["rig"] == "rig-A" and r["connected"] for r in stack.api.get("/rigs")), "rig-A")
    page = (DOC.parent / "rest_api.md").read_text()
    session_body, retarget_body = (json.loads(body) for body in re.findall(r"-d '(\{.*?\})'", page, flags=re.S))
    session = stack.api.post("/sessions", session_body)
    (thread,) = session["threads"]
    assert thread["status"] == "running"
    for action in ("pause", "resume"):
        stack.api.post(f"/threads/{thread['id']}/{action}")
    stack.api.post(f"/threads/{thread['id']}/retarget", retarget_body)
    for line in re.findall(r"^actmax thread retarget 3 (.*?)$", page, flags=re.M):
        retargeted = stack.cli("thread", "retarget", str(thread["id"]), *shlex.split(line))
        assert retargeted.returncode == 0, retargeted.stderr
    assert len([e for e in stack.events(session["id"]) if e["kind"] == "thread.retargeted"]) == 3
    stack.api.post(f"/sessions/{session['id']}/stop")
