"""Server turnaround per generation: last RESULTS received -> next BATCH sent.

Runs `actmax serve` and `actmax rig sim` as separate processes on loopback, evolves one CMA thread
with DCGAN faces (40 images + 10 references per generation), and reads the timestamps the server
stored (presentations.received_at, batches.sent_at). The baseline, measured in this process, is the
bare compute a generation needs (tell + ask + generate + PNG encode), so the ratio shows what the
server adds on top (database commits, archive writes, ZeroMQ).

    python bench/turnaround.py [--generations 20] [--population 40]
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import tempfile
import time
from datetime import datetime
import sys
from pathlib import Path

import numpy as np

# The repo root before bench/, so `optimizers` is the package and not bench/optimizers.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def server_turnarounds(database: Path) -> np.ndarray:
    """Seconds from the last presentation of generation g to the first batch of generation g+1."""
    with sqlite3.connect(database) as db:
        last_results = dict(db.execute(
            "SELECT g.number, MAX(p.received_at) FROM presentations p JOIN batches b ON p.batch_id = b.id "
            "JOIN generations g ON b.generation_id = g.id GROUP BY g.number"))
        first_batch = dict(db.execute(
            "SELECT g.number, MIN(b.sent_at) FROM batches b JOIN generations g ON b.generation_id = g.id "
            "GROUP BY g.number"))
    parse = datetime.fromisoformat
    return np.array([(parse(first_batch[n + 1]) - parse(last_results[n])).total_seconds()
                     for n in sorted(last_results) if n + 1 in first_batch])


def compute_baseline(population: int, generations: int) -> np.ndarray:
    """Seconds per generation for tell + ask + generate + PNG encode, in this process."""
    import generators
    import optimizers
    from server.thread_runtime import optimizer_params
    from server.images import encode_images

    G = generators.load("dcgan-faces", device="cpu")
    opt = optimizers.create("cma", G.latent_dim, seed=0, **optimizer_params("cma", G, {"population": population}))
    rng = np.random.default_rng(0)
    codes = opt.ask()
    times = []
    for _ in range(generations):
        scores = rng.normal(size=len(codes))
        start = time.perf_counter()
        opt.tell(codes, scores)
        codes = opt.ask()
        encode_images(G.generate(codes))
        times.append(time.perf_counter() - start)
    return np.array(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=20, help="generations to run (default 20)")
    parser.add_argument("--population", type=int, default=40, help="images per generation (default 40)")
    parser.add_argument("--unit", default="blocks.6:67", help="simulated unit (default blocks.6:67)")
    args = parser.parse_args(argv)

    from server.launch import ServerProcess, start_sim_rig, stop

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        server = ServerProcess(data, secrets.token_urlsafe(16))
        api = server.start()
        rig = start_sim_rig(server.zmq_endpoint, "bench-rig", [args.unit], Path(tmp) / "rig.log")
        try:
            session = api.post("/sessions", {
                "name": "turnaround", "rig": "bench-rig", "references": {"source": "skimage", "count": 10},
                "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma",
                             "optimizer_params": {"population": args.population}, "objective": {"channels": [0]},
                             "seed": 0, "n_generations": args.generations}],
            })
            (thread,) = api.get(f"/sessions/{session['id']}/threads")
            while api.get(f"/threads/{thread['id']}")["status"] != "finished":
                if rig.poll() is not None or server.process.poll() is not None:
                    raise SystemExit(f"a process exited; logs in {tmp}")
                time.sleep(0.5)
        finally:
            stop(rig)
            server.stop()
            api.close()
        turnaround = server_turnarounds(data / "actmax.sqlite")
    baseline = compute_baseline(args.population, args.generations)

    ms = lambda a, q: 1000 * np.percentile(a, q)  # noqa: E731
    print(f"{args.population} DCGAN images + 10 references per generation, CMA, {len(turnaround)} turnarounds")
    print(f"{'':32} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'server turnaround':32} {ms(turnaround, 50):8.1f} {ms(turnaround, 99):8.1f}")
    print(f"{'baseline: tell+ask+generate+PNG':32} {ms(baseline, 50):8.1f} {ms(baseline, 99):8.1f}")
    print(f"ratio server/baseline: p50 {np.median(turnaround) / np.median(baseline):.2f}x")


if __name__ == "__main__":
    main()
