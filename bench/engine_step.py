"""What the engine's step adds to tell, ask and render, without the transport, run back to back and after
a pause like a rig's show (on the engine's own connection, and in an ORM session as before); and what waking
from such a pause costs on this machine.

The step: a one-thread session (DCGAN, CMA, ``--population`` images + 10 references) on a real SQLite
file, each round answered in this process by ``steps.answer``, the transaction the engine runs when a
round's last RESULTS arrives (store it, score, tell, ask, render, add the next generation and its
batch, commit), then what the engine does once that BATCH is out (a snapshot generation's optimizer state is
written, its archive writes and a WAL checkpoint start in the background, as ``actmax serve`` runs them). Its overhead is the transaction's time
less the tell, ask and render inside it (``ThreadRuntime.compute_s``). The waking costs: one read from
each page of 64 MB of the process's memory (what touching memory costs), a 100-byte ``pread``, a sqlite3
primary-key read, and the first statement of a transaction, in an ORM session and on the engine's
``StepConnection``, each timed right after a ``--pause-ms`` sleep and again at once (the baseline). On a machine where these are much slower after a pause, so is every
step, which always begins after the rig's show. ``--spin`` spends the pauses busy instead of asleep,
to tell a CPU waking from idle from other causes. The presentation ids are time-ordered, as the Python
rig client makes them; ``--random-ids`` sends random ones (version 4), as MATLAB's and C#'s UUIDs are.

    python bench/engine_step.py [--generations 30] [--population 40] [--pause-ms 300] [--spin]
                                [--sqlite-checkpoints] [--random-ids]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

# The repo root before bench/, so `optimizers` is the package and not bench/optimizers.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


PAGES_BYTES = 64 << 20  # the memory whose pages the waking costs read once each


def pause(seconds: float, spin: bool) -> None:
    """Sleep, or (``spin``) keep this thread busy on its CPU for as long."""
    if not spin:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def step_overheads(generations: int, population: int, pause_s: float, spin: bool = False,
                   sqlite_checkpoints: bool = False, random_ids: bool = False,
                   orm: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds of each step's transaction besides tell, ask and render, and of its commit, with ``pause_s``
    before each RESULTS. ``sqlite_checkpoints``: SQLite's default, a checkpoint in the commit that crosses
    1000 WAL pages, instead of the server's checkpoints after each send. ``random_ids``: presentation ids
    as random UUIDs (version 4) instead of the Python rig client's time-ordered ones. ``orm``: every other
    step in an ORM session, as the engine ran them before, instead of on the engine's ``StepConnection``; the
    third array says which steps those were."""
    from rig_client.protocol import time_ordered_uuid
    from server import steps
    from server.session_config import SessionConfig
    from server.store import records
    from server.store.archive import ImageArchive
    from server.store.db import BackgroundCheckpoints, StepConnection, make_db_engine, make_sessionmaker, upgrade
    from server.store.models import utcnow
    from server.thread_runtime import build_runtime
    from server.weights import GeneratorCache

    with tempfile.TemporaryDirectory() as tmp:
        db_engine = make_db_engine(f"sqlite:///{tmp}/actmax.sqlite", background_checkpoints=not sqlite_checkpoints)
        upgrade(db_engine)
        sessions, archive = make_sessionmaker(db_engine), ImageArchive(tmp)
        checkpoints, step_db = BackgroundCheckpoints(sessions), StepConnection(sessions)
        config = SessionConfig.model_validate({
            "name": "step", "rig": "bench", "references": {"source": "skimage", "count": 10},
            "threads": [{"name": "t", "generator": "dcgan-faces", "optimizer": "cma",
                         "optimizer_params": {"population": population}, "objective": {"channels": [0]}, "seed": 0,
                         "n_generations": generations + 1}]})
        with sessions.begin() as db:
            thread_id = records.create_session(db, config).threads[0].id
        with sessions.begin() as db:
            runtime = build_runtime(db, thread_id, GeneratorCache("cpu", None).get, archive, render_chunk=64)

        def sent(message) -> None:  # what the engine does once a BATCH is out
            inflight = runtime.inflight
            inflight.batch_id, inflight.awaiting = message.header["batch_id"], {
                s["stimulus_id"] for s in message.header["stimuli"]}
            inflight.archive_in(archive)
            if not sqlite_checkpoints:
                checkpoints.request()
            if runtime.snapshot is not None:
                with step_db.begin() as db:
                    steps.store_snapshot(db, runtime)

        with sessions.begin() as db:
            message = steps.next_step(db, runtime, 1, frozenset(), archive)
        rng, overheads, commits = np.random.default_rng(0), [], []
        in_orm = np.arange(generations) % 2 == 1 if orm else np.zeros(generations, dtype=bool)
        for step in range(generations):
            sent(message)
            runtime.inflight.archived.result()  # the archive writes end during the show
            pause(pause_s, spin)
            header = {"batch_id": message.header["batch_id"], "done": True, "presentations": [
                {"presentation_id": str(uuid.uuid4() if random_ids else time_ordered_uuid()),
                 "stimulus_id": s["stimulus_id"], "rates": [float(rng.normal())], "onset": time.time(),
                 "window_ms": [50.0, 200.0]} for s in message.header["stimuli"]]}
            runtime.compute_s = 0.0
            start = time.perf_counter()
            with (sessions.begin if in_orm[step] else step_db.begin)() as db:
                _, message = steps.answer(db, runtime, "bench", header, utcnow(), 1, frozenset(), archive)
                committing = time.perf_counter()
            done = time.perf_counter()
            overheads.append(done - start - runtime.compute_s)
            commits.append(done - committing)
        sent(message)
        runtime.inflight.archived.result()
        checkpoints.close()
        step_db.close()
        db_engine.dispose()
    return np.array(overheads), np.array(commits), in_orm


def waking_costs(pause_s: float, spin: bool, repeats: int = 15) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per operation: seconds right after ``pause_s`` of sleep, and at once after that."""
    from sqlalchemy import select

    from server.store.db import StepConnection, driver, make_db_engine, make_sessionmaker, upgrade
    from server.store.models import Event

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "actmax.sqlite"
        db_engine = make_db_engine(f"sqlite:///{path}")
        upgrade(db_engine)
        sessions = make_sessionmaker(db_engine)
        with sessions.begin() as db:
            db.add(Event(kind="bench", message="one row"))
        connection, fd = sqlite3.connect(path), os.open(path, os.O_RDONLY)
        step_db = StepConnection(sessions)

        def first_statement():
            with sessions.begin() as db:
                db.execute(select(Event.kind).where(Event.id == 1)).one()

        def first_driver_statement():
            with step_db.begin() as db:
                driver(db).execute("SELECT kind FROM events WHERE id = 1").fetchone()
        pages = np.ones(PAGES_BYTES // 8).reshape(-1, 4096 // 8)  # one row per 4 KiB page
        operations = {
            f"a read from each 4 KiB page of {PAGES_BYTES >> 20} MB": lambda: pages[:, 0].sum(),
            "100-byte pread": lambda: os.pread(fd, 100, 0),
            "sqlite3 primary-key read": lambda: connection.execute("SELECT kind FROM events WHERE id = 1").fetchone(),
            "first SQLAlchemy statement of a transaction": first_statement,
            "the same in the engine's StepConnection": first_driver_statement,
        }
        costs = {}
        for name, operation in operations.items():
            operation()
            woken, warm = [], []
            for _ in range(repeats):
                pause(pause_s, spin)
                for times in (woken, warm):
                    start = time.perf_counter()
                    operation()
                    times.append(time.perf_counter() - start)
            costs[name] = np.array(woken), np.array(warm)
        os.close(fd)
        connection.close()
        step_db.close()
        db_engine.dispose()
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=30, help="steps timed per run (default 30)")
    parser.add_argument("--population", type=int, default=40, help="images per generation (default 40)")
    parser.add_argument("--pause-ms", type=float, default=300, help="the pause before each RESULTS (default 300)")
    parser.add_argument("--spin", action="store_true",
                        help="spend each pause busy on the CPU instead of asleep (is the cost the CPU's idling?)")
    parser.add_argument("--sqlite-checkpoints", action="store_true",
                        help="let SQLite checkpoint the WAL in the commit that crosses 1000 pages (its default) "
                             "instead of in the background after each send, as the server does")
    parser.add_argument("--random-ids", action="store_true",
                        help="presentation ids as random UUIDs (version 4, as MATLAB and C# make them) instead of "
                             "the Python rig client's time-ordered ones")
    args = parser.parse_args(argv)
    if args.generations < 2 or args.population < 2 or args.pause_ms <= 0:
        parser.error("need --generations >= 2, --population >= 2 and --pause-ms > 0")
    from server.engine import keep_freed_memory

    keep_freed_memory()  # as ``actmax serve`` does
    pause_s, how = args.pause_ms / 1000, "spinning" if args.spin else "asleep"
    ms = lambda a, q: 1000 * np.percentile(a, q)  # noqa: E731

    print(f"waking: each operation right after {args.pause_ms:g} ms {how}, and at once after that (ms)")
    print(f"{'':46} {'woken p50':>10} {'max':>8} {'at once p50':>12} {'ratio':>7}")
    for name, (woken, warm) in waking_costs(pause_s, args.spin).items():
        print(f"{name:46} {ms(woken, 50):10.3f} {ms(woken, 100):8.3f} {ms(warm, 50):12.3f} "
              f"{np.median(woken) / np.median(warm):6.1f}x")

    back_to_back, _, _ = step_overheads(args.generations, args.population, 0.0, False, args.sqlite_checkpoints,
                                        args.random_ids)
    both, commits, in_orm = step_overheads(2 * args.generations, args.population, pause_s, args.spin,
                                           args.sqlite_checkpoints, args.random_ids, orm=True)
    paused, orm, commits = both[~in_orm], both[in_orm], commits[~in_orm]
    where = "in the commit that crosses 1000 pages" if args.sqlite_checkpoints else "in the background after each send"
    print(f"\nthe engine's step besides tell, ask and render ({args.population} DCGAN images + 10 references, "
          f"one transaction, no transport; WAL checkpoints {where}; ms)")
    print(f"{'':46} {'n':>4} {'p50':>8} {'p90':>8} {'p99':>8}")
    for label, values in (("back to back", back_to_back), (f"after {args.pause_ms:g} ms {how}", paused),
                          ("  of which the commit", commits), ("  in an ORM session (before), steps between", orm)):
        print(f"{label:46} {len(values):4d} {ms(values, 50):8.1f} {ms(values, 90):8.1f} {ms(values, 99):8.1f}")
    print(f"the pause adds {ms(paused, 50) - ms(back_to_back, 50):.1f} ms at p50 "
          f"({np.median(paused) / np.median(back_to_back):.2f}x); the ORM session "
          f"{ms(orm, 50) - ms(paused, 50):+.1f} ms at p50, {ms(orm, 99) - ms(paused, 99):+.1f} ms at p99")


if __name__ == "__main__":
    main()
