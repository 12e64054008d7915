"""Fair compute: how long a small session's rig waits while another session renders a large generation.

Runs `actmax serve` twice in its own process, the same sessions each time: a large session (DCGAN,
``--big`` images per generation) and a small one (``--small`` images) on two rigs played by
threads of this process. The small rig answers each batch after ``--show-ms``; its wait is
RESULTS sent -> next BATCH received. Run 1 renders each generation in one compute job
(``ACTMAX_RENDER_CHUNK`` larger than any generation: the behaviour before chunking), run 2 in
chunks of ``--chunk`` images, the default. Printed: the small rig's waits while the large
session runs, and the large rig's own waits, with their ratios.

    python bench/fair_compute.py [--big 400] [--small 8] [--chunk 64] [--generations 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from turnaround import Server  # noqa: E402  (bench/turnaround.py)


def play(server: Server, rig: str, show_ms: float, waits: list[float], stop: threading.Event) -> None:
    """A rig: show each batch ``show_ms``, answer, and note the wait until the next batch."""
    from rig_client.client import Presentation, RigClient

    rng = np.random.default_rng(0)
    sent = None
    with RigClient(server.zmq, rig, channels=1) as client:
        while not stop.is_set():
            batch = client.next_batch(timeout=0.2)
            if batch is None:
                continue
            if sent is not None:
                waits.append(time.perf_counter() - sent)
            time.sleep(show_ms / 1000)
            sent = time.perf_counter()  # the ACK, too, waits for the compute worker
            client.send_results(batch.batch_id, [
                Presentation(s.stimulus_id, [float(rng.normal())], time.time(), batch.response_window_ms)
                for s in batch.stimuli]).result(120)


def run(chunk: int, args, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """(small rig's waits, large rig's waits) on a server rendering ``chunk`` images per compute job."""
    server = Server(tmp / f"chunk-{chunk}", env={"ACTMAX_RENDER_CHUNK": str(chunk)})
    stop, small_waits, big_waits = threading.Event(), [], []
    try:
        for name, population, generations in (("small", args.small, 10_000), ("big", args.big, args.generations)):
            server.api.post("/sessions", {
                "name": name, "rig": name, "references": {"source": "skimage", "count": 2},
                "threads": [{"name": "t", "generator": "dcgan-faces", "optimizer": "cma",
                             "optimizer_params": {"population": population}, "objective": {"channels": [0]},
                             "n_generations": generations}]})
        small = threading.Thread(target=play, args=(server, "small", args.show_ms, small_waits, stop))
        small.start()
        while len(small_waits) < 3:  # the small loop is running before the large one starts
            time.sleep(0.05)
        started = len(small_waits)
        big = threading.Thread(target=play, args=(server, "big", 0.0, big_waits, stop))
        big.start()
        deadline = time.monotonic() + 600
        while not any(s["name"] == "big" and s["status"] == "finished" for s in server.api.get("/sessions")):
            if time.monotonic() > deadline:
                raise SystemExit(f"the large session did not finish; see {server.log}")
            time.sleep(0.1)
        during = small_waits[started:]
    finally:
        stop.set()
        server.close()
    return np.array(during), np.array(big_waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", type=int, default=400, help="images per generation of the large session")
    parser.add_argument("--small", type=int, default=8, help="images per generation of the small session")
    parser.add_argument("--chunk", type=int, default=64,
                        help="ACTMAX_RENDER_CHUNK of run 2 (default 64, as the server)")
    parser.add_argument("--generations", type=int, default=4, help="generations of the large session")
    parser.add_argument("--show-ms", type=float, default=50, help="how long the small rig shows a batch")
    args = parser.parse_args()
    if min(args.big, args.small, args.chunk, args.generations) < 1 or args.big <= args.chunk:
        parser.error("sizes must be positive and --big larger than --chunk")
    with tempfile.TemporaryDirectory() as tmp:
        results = {label: run(chunk, args, Path(tmp))
                   for label, chunk in (("one job", 10**6), (f"chunks of {args.chunk}", args.chunk))}
    ms = lambda a, q: 1000 * np.percentile(a, q)  # noqa: E731
    print(f"large session: {args.big} DCGAN images x {args.generations} generations; small session: "
          f"{args.small} images, rig shows {args.show_ms:g} ms; wait = RESULTS sent -> next BATCH")
    print(f"{'render':18} {'rig':6} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, waits in results.items():
        for rig, w in zip(("small", "large"), waits, strict=True):
            print(f"{label:18} {rig:6} {len(w):4d} {ms(w, 50):8.1f} {ms(w, 99):8.1f} {1000 * w.max():8.1f}")
    (before_small, before_big), (after_small, after_big) = results.values()
    print(f"small rig's longest wait: {before_small.max() / after_small.max():.1f}x shorter with chunks; "
          f"large rig's p50 wait {np.median(after_big) / np.median(before_big):.2f}x the one-job wait")


if __name__ == "__main__":
    main()
