"""How long other sessions' steps wait while one session renders a big generation.

The engine's compute worker runs jobs first in, first out; a generation is rendered in chunks of
``RENDER_CHUNK`` codes, one job each. This bench builds a real engine on a temporary SQLite file,
starts one big generation (``--population`` codes of the dcgan-faces generator) and, meanwhile,
queues a small compute job (a stand-in for another session's step) every ``--every`` seconds; it
prints how long those jobs waited, with chunks of ``RENDER_CHUNK`` codes and with the whole
generation as one job (the behaviour before chunking), measured in the same run. Example:

    .venv/bin/python bench/fair_compute.py --population 400
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import server.engine as engine_module  # noqa: E402
from server.session_config import SessionConfig  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.store.archive import ImageArchive  # noqa: E402
from server.store.db import make_db_engine, make_sessionmaker, upgrade  # noqa: E402
from server.store.records import create_session  # noqa: E402
from server.thread_runtime import build_runtime  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=400, help="codes in the big generation (default 400)")
    parser.add_argument("--every", type=float, default=0.05, help="seconds between small jobs (default 0.05)")
    args = parser.parse_args()
    if args.population < 1 or args.every <= 0:
        parser.error("--population must be >= 1 and --every > 0")
    return args


async def waits_during_generation(engine, runtime, every: float) -> tuple[float, list[float]]:
    """(seconds the big generation took, seconds each small job waited meanwhile)."""
    waits = []
    start = time.perf_counter()
    big = asyncio.ensure_future(engine._start_generation(runtime))
    while not big.done():
        queued = time.perf_counter()
        await engine._offload(lambda: None)
        waits.append(time.perf_counter() - queued)
        await asyncio.sleep(every)
    await big
    return time.perf_counter() - start, waits


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), token="bench-token-bench", device="cpu")
        db_engine = make_db_engine(settings.database_url)
        upgrade(db_engine)
        sessions = make_sessionmaker(db_engine)
        config = SessionConfig.model_validate({
            "name": "big", "rig": "bench", "references": {"source": "skimage", "count": 1},
            "threads": [{"name": "a", "generator": "dcgan-faces", "optimizer": "cma",
                         "optimizer_params": {"population": args.population}, "objective": {"channels": [0]},
                         "seed": 0, "n_generations": 10}]})
        engine = engine_module.Engine(settings, sessions, ImageArchive(settings.data_dir))
        print(f"one generation of {args.population} codes; a small job queued every {args.every * 1e3:.0f} ms")
        print(f"{'render jobs of':<16}{'generation s':>13}{'jobs':>6}{'mean wait ms':>14}{'max wait ms':>13}")
        generator = engine._generator("dcgan-faces")
        generator.generate(np.zeros((engine_module.RENDER_CHUNK, generator.latent_dim), dtype=np.float32))  # warm up
        results = {}
        for chunk in (args.population, engine_module.RENDER_CHUNK):
            engine_module.RENDER_CHUNK = chunk
            with sessions.begin() as db:  # a fresh session per measurement
                thread_id = create_session(db, config).threads[0].id
                db.flush()
                runtime = build_runtime(db, thread_id, engine._generator, ImageArchive(settings.data_dir))
            took, waits = asyncio.run(waits_during_generation(engine, runtime, args.every))
            results[chunk] = max(waits)
            print(f"{f'{chunk} codes':<16}{took:>13.2f}{len(waits):>6}{np.mean(waits) * 1e3:>14.1f}"
                  f"{max(waits) * 1e3:>13.1f}")
        whole, chunked = results[args.population], results[engine_module.RENDER_CHUNK]
        print(f"longest wait, whole / chunked: {whole / chunked:.1f}x")
        engine._compute.shutdown()
        db_engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
