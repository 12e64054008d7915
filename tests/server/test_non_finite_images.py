"""Images with a NaN or infinite pixel are never shown: a generator that renders them for prior codes fails its
thread as it is built, and a generation that renders them fails its thread with nothing of it committed or sent,
while the session's other thread goes on. The engine in-process over a real ZeroMQ transport, a real SQLite file
and real HTTP, `RigClient` as the rig."""

from __future__ import annotations

import contextlib
import math
import re

import httpx
import pytest
import torch
from sqlalchemy import select

import generators
from generators.dcgan import STATE_KEY, DCGANFaces, packaged_weights
from rig_client.client import RigClient
from server.main import create_app
from server.store.models import Batch, Generation, GenerationStatus, Stimulus, Thread, ThreadStatus
from tests.server.conftest import served
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer


class Overflowing(DCGANFaces):
    """dcgan-faces that, once ``overflowing`` is set, renders NaN for the codes of a call whose norm is above their
    median (3 of 6), as a network that overflows once an evolution's codes leave its prior."""

    name = "dcgan-faces-overflowing"
    overflowing = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = super().forward(z)
        if not self.overflowing:
            return images
        norms = z.norm(dim=1)
        return torch.where((norms > norms.median())[:, None, None, None], torch.nan, images)


def evolution(name: str, **settings) -> dict:
    return {"name": name, "generator": "dcgan-faces", "optimizer": "cma", "optimizer_params": {"population": 6},
            "objective": {"channels": [0]}, "seed": 3, "n_generations": 5, **settings}


def create(client: httpx.Client, *threads: dict) -> list[int]:
    """The threads' ids of a session created over REST."""
    created = client.post("/sessions", json={"name": "day", "rig": RIG, "threads": list(threads),
                                             "references": {"source": "skimage", "count": 2}})
    assert created.status_code == 201, created.text
    return [thread["id"] for thread in created.json()["threads"]]


def failure(live: LiveEngine, thread_id: int) -> str | None:
    """The thread's ``last_error`` once it failed."""
    with live.sessions() as db:
        thread = db.get(Thread, thread_id)
        return thread.last_error if thread.status == ThreadStatus.FAILED else None


def record(live: LiveEngine, thread_id: int) -> tuple[list, list, int]:
    """The thread's generations (number, status), its batches' generations, and its stimuli."""
    with live.sessions() as db:
        made = db.execute(select(Generation.number, Generation.status).where(Generation.thread_id == thread_id)
                          .order_by(Generation.number)).all()
        sent = db.scalars(select(Generation.number).join(Batch, Batch.generation_id == Generation.id)
                          .where(Batch.thread_id == thread_id)).all()
        stimuli = len(db.scalars(select(Stimulus.id).where(Stimulus.thread_id == thread_id)).all())
    return [tuple(row) for row in made], sent, stimuli


@pytest.fixture
def engine_and_client(tmp_path, endpoint):
    """``start(**settings)``: an engine with those settings, and a client of its REST app over HTTP."""
    with contextlib.ExitStack() as stack:
        def start(**settings) -> tuple[LiveEngine, httpx.Client]:
            live = stack.enter_context(LiveEngine(tmp_path / "data", endpoint, **settings))
            url = stack.enter_context(served(create_app(live.settings, live.sessions, engine=live.engine)))
            return live, stack.enter_context(httpx.Client(base_url=url, headers={"Authorization": "Bearer t"},
                                                          timeout=60))
        yield start


def test_weights_that_render_nan_are_refused_when_the_session_is_created(tmp_path, engine_and_client):
    """A weights file with one NaN (a damaged copy) renders black images for every code: a 422 naming the thread's
    weights, before anything is recorded."""
    checkpoint = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    checkpoint[STATE_KEY]["main.0.weight"].view(-1)[0] = math.nan
    damaged = tmp_path / "damaged.tar"
    torch.save(checkpoint, damaged)
    live, client = engine_and_client()
    refused = client.post("/sessions", json={"name": "day", "rig": RIG, "references": {"source": "skimage", "count": 2},
                                             "threads": [evolution("good"), evolution("broken", weights=str(damaged))]})
    assert refused.status_code == 422, refused.text
    sha = generators.base.sha256_file(damaged)[:12]
    assert [(problem["loc"], problem["msg"]) for problem in refused.json()["detail"]] == [(
        ["body", "threads", 1, "weights"],
        f"dcgan-faces 1.0 (weights sha256 {sha}) renders NaN or infinite pixels for 3 of 3 prior codes (seed 0), so "
        "no evolution can run on it: its weights are broken (a damaged file, or a network that overflows); give it "
        "intact weights")]
    assert client.get("/sessions").json() == []


def test_a_generation_that_renders_nan_for_some_codes_fails_its_thread_and_nothing_of_it_leaves(
        endpoint, engine_and_client, monkeypatch):
    """Mid-evolution: the RESULTS that answers generation 0 renders generation 1 in its transaction; its
    presentations are kept, generation 1 is neither stored nor sent, and the other thread goes on."""
    monkeypatch.setitem(generators.base._REGISTRY, Overflowing.name, Overflowing)
    live, client = engine_and_client()
    with RigClient(endpoint, RIG, channels=1) as rig:
        overflowing, other = create(client, evolution("a", generator=Overflowing.name), evolution("b"))
        first = {batch.thread_id: batch for batch in (rig.next_batch(timeout=60) for _ in range(2))}
        assert {(t, batch.generation) for t, batch in first.items()} == {(str(overflowing), 0), (str(other), 0)}
        monkeypatch.setattr(Overflowing, "overflowing", True)  # from generation 1 on
        shown = first[str(overflowing)]
        assert rig.send_results(shown.batch_id, answer(shown)).result(30)["accepted"] == len(shown.stimuli)
        error = wait_until(lambda: failure(live, overflowing), 60, "the overflowing thread to fail")
        rig.send_results(first[str(other)].batch_id, answer(first[str(other)])).result(30)
        going_on = rig.next_batch(timeout=60)
        assert (going_on.thread_id, going_on.generation) == (str(other), 1)
        assert rig.next_batch(timeout=2) is None  # nothing of the failed thread
    assert re.fullmatch(
        r"failed: dcgan-faces-overflowing 1\.0 \(weights sha256 [0-9a-f]{12}\) rendered NaN or infinite pixels for "
        r"3 of 6 codes \(norm up to 1\d\.\d+; its prior's is about 10\), which are neither shown nor scored; codes "
        r"far from the prior can overflow a network: keep them nearer it \(`sphere-cma`, a smaller `sigma0`\); then "
        r"start a new thread", error), error
    # Generation 0 stays pending: its tell went with the failed step.
    assert record(live, overflowing) == ([(0, GenerationStatus.PENDING)], [0], 6)
    with live.sessions() as db:
        assert db.get(Thread, other).status == ThreadStatus.RUNNING


def test_a_half_precision_that_overflows_on_the_first_codes_fails_the_thread_with_the_precision_to_use(
        endpoint, engine_and_client):
    """float16 passes its check on prior codes; codes 10 000 times wider overflow it. Rendered in chunks of 2, the
    message counts the codes of the chunk that failed."""
    live, client = engine_and_client(precision="float16", render_chunk=2)
    with RigClient(endpoint, RIG, channels=1) as rig:
        (thread,) = create(client, evolution("wide", optimizer_params={"population": 6, "sigma0": 10_000.0}))
        error = wait_until(lambda: failure(live, thread), 60, "the thread to fail")
        assert rig.next_batch(timeout=2) is None
    assert re.fullmatch(
        r"failed: dcgan-faces 1\.0\+float16 \(weights sha256 [0-9a-f]{12}\) rendered NaN or infinite pixels for "
        r"[12] of 2 codes \(norm up to [\d.e+]+; its prior's is about 10\), which are neither shown nor scored; "
        r"float16 overflows on them: serve with `actmax serve --precision float32` \(or ACTMAX_PRECISION=float32\); "
        r"then start a new thread", error), error
    assert record(live, thread) == ([], [], 0)
