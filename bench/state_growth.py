"""Database bytes per generation for the optimizer state: the full state every generation (before) vs
snapshots at generations 0, 1, 2, 4, 8, ... plus a per-generation summary (after), and the cost of
resuming (the replay from the last snapshot) that the snapshots trade for it.

The generations are run with the engine's own storage and resume code on a real SQLite file per
policy: ``records.complete_generation`` and ``records.store_snapshot`` write each row, ``thread_runtime.restore_optimizer``
resumes, and the file's size is read after each commit. Scores are a sphere objective (any
scores give the same state sizes). Example (the figures in docs/results.md):

    .venv/bin/python bench/state_growth.py --dim 100 --generations 250
    .venv/bin/python bench/state_growth.py --dim 4096 --generations 150
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optimizers  # noqa: E402
from server.store import db as store_db  # noqa: E402
from server.store import records  # noqa: E402
from server.store.models import Generation, Session, Thread, ThreadStatus, encode_codes  # noqa: E402
from server.thread_runtime import is_snapshot, restore_optimizer  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=100, help="code dimension (default 100)")
    parser.add_argument("--population", type=int, default=40, help="codes per generation (default 40)")
    parser.add_argument("--generations", type=int, default=250, help="generations to run (default 250)")
    parser.add_argument("--optimizer", default="cma", help="registered optimizer name (default cma)")
    args = parser.parse_args()
    if min(args.dim, args.population, args.generations) < 1:
        parser.error("--dim, --population and --generations must be >= 1")
    return args


def run(args, directory: Path, snapshots: bool) -> tuple[list[int], int, float]:
    """File size after each generation under one policy, the state bytes stored, and the seconds a resume
    at the end takes."""
    database = directory / f"{'snapshots' if snapshots else 'full'}.sqlite"
    engine = store_db.make_db_engine(f"sqlite:///{database}")
    store_db.upgrade(engine)
    sessions = store_db.make_sessionmaker(engine)
    with sessions.begin() as db:
        session = Session(name="bench", rig="bench", animal="", array="", notes="", config_json={})
        thread = Thread(name="t", kind="evolution", generator="none", optimizer=args.optimizer,
                        optimizer_params_json={}, objective_json={"channels": [0]}, seed=0,
                        n_generations=args.generations, repeats=1, status=ThreadStatus.RUNNING)
        session.threads.append(thread)
        db.add(session)
        db.flush()
        thread_id = thread.id
    optimizer = optimizers.create(args.optimizer, args.dim, seed=0, population=args.population)
    sizes = []
    for number in tqdm(range(args.generations), desc=f"d={args.dim} {'snapshots' if snapshots else 'full'}",
                       leave=False):
        codes = optimizer.ask()
        scores = -np.sum((codes - 1.0) ** 2, axis=1)
        optimizer.tell(codes, scores)
        state = optimizer.state_dict()
        with sessions.begin() as db:
            generation = Generation(thread_id=thread_id, number=number, codes=encode_codes(codes), n_stimuli=len(codes))
            db.add(generation)
            db.flush()
            records.complete_generation(db, generation.id, scores, [], optimizers.state_summary(state), timed_out=False)
            if not snapshots or is_snapshot(number):
                records.store_snapshot(db, generation.id, optimizers.dumps_state(state))
        with engine.connect() as connection:  # fold the write-ahead log into the file before measuring it
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(database.stat().st_size)
    start = time.perf_counter()
    with sessions() as db:
        restored = optimizers.create(args.optimizer, args.dim, seed=0, population=args.population)
        restore_optimizer(db, restored, thread_id)
    resume_s = time.perf_counter() - start
    with engine.connect() as connection:
        state_bytes = connection.exec_driver_sql(
            "SELECT sum(coalesce(length(optimizer_state), 0) + length(optimizer_summary_json)) FROM generations"
        ).scalar()
    assert optimizers.dumps_state(restored.state_dict()) == optimizers.dumps_state(optimizer.state_dict())
    engine.dispose()
    return sizes, state_bytes, resume_s


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        full, full_state, full_resume = run(args, Path(tmp), snapshots=False)
        snap, snap_state, snap_resume = run(args, Path(tmp), snapshots=True)
    g = args.generations
    window = max(1, g // 10)

    def per_generation(sizes, end):  # bytes the file grew per generation over the window ending at ``end``
        return (sizes[end - 1] - sizes[end - 1 - window]) / window / 1e3 if end > window else float("nan")

    print(f"{args.optimizer} d={args.dim} population={args.population}, {g} generations; the file holds the "
          f"codes ({args.population * args.dim * 8 / 1e3:.1f} kB/gen) too; kB/gen: file growth per generation "
          f"over the {window} generations up to the one named")
    print(f"{'policy':<11}{'file MB':>9}{'state MB':>10}{f'kB/gen @{window * 2}':>14}{f'kB/gen @{g}':>14}"
          f"{'resume s':>10}")
    for name, sizes, state, resume in (("full", full, full_state, full_resume),
                                       ("snapshots", snap, snap_state, snap_resume)):
        print(f"{name:<11}{sizes[-1] / 1e6:>9.2f}{state / 1e6:>10.2f}{per_generation(sizes, 2 * window):>14.1f}"
              f"{per_generation(sizes, g):>14.1f}{resume:>10.2f}")
    print(f"file size ratio full/snapshots: {full[-1] / snap[-1]:.1f}x; resume replays "
          f"{g - 1 - 2 ** int(np.log2(g - 1)) if g > 1 else 0} generations from the last snapshot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
