"""Do live dashboards slow the loop? Server turnaround with 0 and 10 open dashboards, and a 500-generation page.

1. Turnaround: one `actmax serve` and one `actmax rig sim` (separate processes, loopback) run short
   CMA evolutions back to back, alternating 0 and 10 open dashboards (``--rounds`` of each, so drift
   in machine load hits both alike). A dashboard here is what the page does, over HTTP: one live
   stream (/live), on each completed generation the new curve points, the newest generation's
   montage (generation + its PNGs, at most every 3 s) and the best image; the rig panel every 2 s.
   Turnaround = last RESULTS of generation g -> first BATCH of g+1, from the server's own timestamps.
2. Page load: a 500-generation session (40 images each) written straight into a fresh database, then
   served; the time to GET its curve, and (with Chromium) from navigation to the drawn curve and strip.

    python bench/dashboard.py [--generations 15] [--rounds 2] [--viewers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RIG = "bench-rig"
MONTAGE_EVERY_S = 3.0
RIG_EVERY_S = 2.0


def thread_turnarounds(database: Path, thread_id: int) -> np.ndarray:
    """Seconds from the last presentation of generation g to the first batch of g+1, for one thread."""
    with sqlite3.connect(database) as db:
        last = dict(db.execute(
            "SELECT g.number, MAX(p.received_at) FROM presentations p JOIN batches b ON p.batch_id = b.id "
            "JOIN generations g ON b.generation_id = g.id WHERE g.thread_id = ? GROUP BY g.number", (thread_id,)))
        first = dict(db.execute(
            "SELECT g.number, MIN(b.sent_at) FROM batches b JOIN generations g ON b.generation_id = g.id "
            "WHERE g.thread_id = ? GROUP BY g.number", (thread_id,)))
    parse = datetime.fromisoformat
    return np.array([(parse(first[n + 1]) - parse(last[n])).total_seconds() for n in sorted(last) if n + 1 in first])


async def dashboard(url: str, token: str, session_id: int, thread_id: int, stop: asyncio.Event, counts: dict) -> None:
    """What one open session page asks of the server (see server/web/app.js)."""
    import httpx

    # A browser opens at most 6 connections per host (HTTP/1.1); the stream holds one of them.
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                 limits=httpx.Limits(max_connections=6)) as http:
        async def get(path, **params):
            response = await http.get(path, params=params or None)
            response.raise_for_status()
            counts["requests"] += 1
            return response

        await get(f"/sessions/{session_id}")
        await get(f"/threads/{thread_id}/curve")
        await get(f"/sessions/{session_id}/events", limit=200)
        state = {"next": 0, "montage_at": 0.0}

        async def rig_panel():
            while not stop.is_set():
                await get(f"/rigs/{RIG}", batches=8)
                await asyncio.sleep(RIG_EVERY_S)

        async def on_generation():
            points = (await get(f"/threads/{thread_id}/curve", from_generation=state["next"])).json()["points"]
            if not points:
                return
            state["next"] = points[-1]["generation"] + 1
            await get(f"/stimuli/{points[-1]['best_stimulus_id']}/png")
            if time.monotonic() - state["montage_at"] >= MONTAGE_EVERY_S:
                state["montage_at"] = time.monotonic()
                generation = (await get(f"/generations/{points[-1]['generation_id']}")).json()
                await asyncio.gather(*(get(f"/stimuli/{s}/png") for s in generation["stimulus_ids"]))

        async def stream():
            async with http.stream("GET", "/live", params={"session_id": session_id}, timeout=None) as response:
                async for line in response.aiter_lines():
                    if line == "event: generation.completed":
                        counts["events"] += 1
                        await on_generation()

        tasks = [asyncio.create_task(rig_panel()), asyncio.create_task(stream())]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Viewers:
    """``n`` dashboards on a session, run on their own event loop thread until `close`."""

    def __init__(self, n: int, url: str, token: str, session_id: int, thread_id: int):
        self.counts = {"requests": 0, "events": 0}
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, args=(n, url, token, session_id, thread_id), daemon=True)
        self._thread.start()

    def _serve(self, *args) -> None:
        self._loop.run_until_complete(self._run(*args))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _run(self, n, url, token, session_id, thread_id):
        self._stop = asyncio.Event()
        await asyncio.gather(*(dashboard(url, token, session_id, thread_id, self._stop, self.counts) for _ in range(n)))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def evolve(api, server, rig, population: int, generations: int, viewers: int, seed: int) -> tuple[np.ndarray, dict]:
    """One evolution with ``viewers`` open dashboards; its turnarounds and the dashboards' request counts."""
    session = api.post("/sessions", {
        "name": f"{viewers} viewers", "rig": RIG, "references": {"source": "skimage", "count": 10},
        "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma", "seed": seed,
                     "optimizer_params": {"population": population}, "objective": {"channels": [0]},
                     "n_generations": generations}],
    })
    thread_id = session["threads"][0]["id"]
    open_viewers = Viewers(viewers, server.url, server.token, session["id"], thread_id) if viewers else None
    try:
        while api.get(f"/threads/{thread_id}")["status"] != "finished":
            if rig.poll() is not None or server.process.poll() is not None:
                raise SystemExit(f"a process exited; see {server.log_path}")
            time.sleep(0.5)
    finally:
        if open_viewers is not None:
            open_viewers.close()
    counts = open_viewers.counts if open_viewers else {"requests": 0, "events": 0}
    return thread_turnarounds(server.data_dir / "actmax.sqlite", thread_id), counts


def build_long_session(data: Path, generations: int, population: int) -> int:
    """A session whose one thread completed ``generations`` generations, written directly (seconds, not hours)."""
    from PIL import Image

    from server import monitor
    from server.session_config import SessionConfig
    from server.store import db as store
    from server.store.archive import ImageArchive
    from server.store.models import Generation, GenerationStatus, Stimulus, StimulusKind, ThreadStatus, encode_codes, utcnow
    from server.store.records import create_session

    url = f"sqlite:///{data / 'actmax.sqlite'}"
    data.mkdir(parents=True, exist_ok=True)
    db_engine = store.make_db_engine(url)
    store.upgrade(db_engine)
    sessions = store.make_sessionmaker(db_engine)
    archive = ImageArchive(data)
    rng = np.random.default_rng(0)
    images = []
    for i in range(population):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(archive.save(buffer.getvalue()))
    config = SessionConfig.model_validate({
        "name": f"{generations} generations", "rig": RIG,
        "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma", "objective": {"channels": [0]},
                     "n_generations": generations}],
    })
    start = utcnow() - timedelta(hours=3)
    with sessions.begin() as db:
        session = create_session(db, config)
        thread = session.threads[0]
        thread.status = ThreadStatus.FINISHED
        db.flush()
        history = monitor.DriftHistory.load(db, thread.id, config.drift)
        for number in range(generations):
            scores = rng.normal(5 + 20 * number / generations, 3, population)
            done = start + timedelta(seconds=20 * number)
            generation = Generation(
                thread_id=thread.id, number=number, codes=encode_codes(rng.normal(size=(population, 8))),
                n_stimuli=population, status=GenerationStatus.COMPLETE, scores_json=scores.tolist(),
                mean_score=float(scores.mean()), max_score=float(scores.max()), reference_mean=5.0,
                n_scored=population, asked_at=done, completed_at=done)
            db.add(generation)
            db.flush()
            db.add_all(Stimulus(id=uuid.uuid4().hex, session_id=session.id, thread_id=thread.id,
                                generation_id=generation.id, kind=StimulusKind.SYNTHETIC, index=i,
                                content_hash=image.content_hash, png_path=image.png_path)
                       for i, image in enumerate(images))
            monitor.generation_completed(db, history, session.id, thread.id, number, scores, rng.normal(5, 1, 10),
                                         {"s": [[float(scores.mean())]]}, {0})
        return session.id


def page_load(generations: int, population: int) -> None:
    from server.launch import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        session_id = build_long_session(data, generations, population)
        print(f"\n{generations}-generation session ({population} images each) built in "
              f"{time.perf_counter() - started:.1f} s")
        server = ServerProcess(data, secrets.token_urlsafe(16))
        api = server.start()
        try:
            thread_id = api.get(f"/sessions/{session_id}")["threads"][0]["id"]
            api.get(f"/threads/{thread_id}/curve")  # warm up
            times = []
            for _ in range(5):
                started = time.perf_counter()
                points = api.get(f"/threads/{thread_id}/curve")["points"]
                times.append(time.perf_counter() - started)
            print(f"GET /threads/{thread_id}/curve ({len(points)} points): median {1000 * np.median(times):.0f} ms")
            chromium = shutil.which("chromium")
            if chromium is None:
                print("page load in a browser: skipped (apt-get install -y chromium)")
                return
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium)
                # Its waits below evaluate with eval, which the dashboard's content security policy forbids.
                page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
                page.goto(server.url + "/ui/")
                page.evaluate("token => sessionStorage.setItem('actmax-token', token)", server.token)
                loads = []
                for _ in range(3):
                    started = time.perf_counter()
                    page.goto(f"{server.url}/ui/#/session/{session_id}")
                    page.reload()
                    page.wait_for_function(f"document.querySelector('.curve svg')?.dataset.points == {generations}")
                    page.wait_for_function("[...document.querySelectorAll('.strip img')].every(i => i.complete && i.src)")
                    loads.append(time.perf_counter() - started)
                browser.close()
            print(f"session page in Chromium, navigation -> curve of {generations} points and best-image strip drawn: "
                  f"median {np.median(loads):.2f} s (of {len(loads)})")
        finally:
            server.stop()
            api.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=15, help="generations per evolution (default 15)")
    parser.add_argument("--population", type=int, default=40, help="images per generation (default 40)")
    parser.add_argument("--rounds", type=int, default=2, help="evolutions with and without viewers each (default 2)")
    parser.add_argument("--viewers", type=int, default=10, help="open dashboards (default 10)")
    parser.add_argument("--page-generations", type=int, default=500, help="generations of the page-load session")
    args = parser.parse_args(argv)

    from server.launch import ServerProcess, server_with_sim_rig

    results: dict[int, list[np.ndarray]] = {0: [], args.viewers: []}
    counts = {"requests": 0, "events": 0}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", secrets.token_urlsafe(16))
        with server_with_sim_rig(server, RIG, ["blocks.6:67"], Path(tmp) / "rig.log") as (api, rig):
            for round_ in range(args.rounds):
                for viewers in (0, args.viewers) if round_ % 2 == 0 else (args.viewers, 0):
                    turnaround, made = evolve(api, server, rig, args.population, args.generations, viewers, round_)
                    results[viewers].append(turnaround)
                    counts = {k: counts[k] + made[k] for k in counts}
                    print(f"round {round_ + 1}: {viewers:2d} viewers, {len(turnaround)} turnarounds, "
                          f"p50 {1000 * np.median(turnaround):.0f} ms", flush=True)

    print(f"\nserver turnaround, {args.population} DCGAN images + 10 references per generation, CMA, "
          f"{args.rounds} evolutions of {args.generations} generations each")
    print(f"{'open dashboards':>16} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}")
    for viewers, runs in results.items():
        t = 1000 * np.concatenate(runs)
        print(f"{viewers:>16} {len(t):>4} {np.percentile(t, 50):8.1f} {np.percentile(t, 99):8.1f}")
    base, loaded = (np.median(np.concatenate(results[v])) for v in (0, args.viewers))
    print(f"ratio p50 {args.viewers} viewers / 0 viewers: {loaded / base:.2f}x; the dashboards made "
          f"{counts['requests']} requests and received {counts['events']} generation events")
    page_load(args.page_generations, args.population)


if __name__ == "__main__":
    main()
