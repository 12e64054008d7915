"""The animal's wait: from a rig's RESULTS to the next BATCH, against the bare compute, in one run.

Runs `actmax serve` in its own process on loopback and plays the rig in this process (a
`RigClient` that "shows" each batch for ``--show-ms``, then answers with seeded random rates).
Per generation it measures the wait the rig sees: RESULTS sent -> next BATCH received. The
baseline is the bare compute of a generation (tell + ask + generate + PNG encode, as the server
does it), measured here while the rig shows the previous batch (the server is idle then), so each
wait is paired with a compute under the same machine load; wait minus compute is what the server
adds (database transactions, archive writes, ZeroMQ).

Four loops run on one server, one session each:
  dcgan-64      the real DCGAN faces (64 px), one thread
  standin-256   a stand-in generator of 256 px that costs almost nothing, to isolate the server
  1 thread / 2 threads on one rig (DCGAN): with two threads, thread B's next generation is
                computed while the rig shows thread A's batch, so the rig should hardly wait.
It also times PNG encoding of 40 images at 256 px: Pillow's default (zlib level 6, one thread) vs
``server.images.encode_images`` (level ``PNG_COMPRESS_LEVEL``, all cores), and checks the pixels agree.

    python bench/turnaround.py [--generations 30] [--population 40] [--show-ms 300]

The stand-in generator (``bench-standin-64/256``) is registered only here: the server process is
this script run as ``python bench/turnaround.py serve ...``.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The repo root before bench/, so `optimizers` is the package and not bench/optimizers.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REFERENCES = 10


def register_standins() -> None:
    """``bench-standin-64`` / ``-256``: a linear map of the code to an 8x8 image, upsampled (smooth, photo-like PNGs)."""
    import functools

    import torch
    import torch.nn.functional as F

    import generators
    from generators.base import Generator

    class StandIn(Generator):
        latent_dim = 100
        version = "bench"

        def __init__(self, *, size: int, device, weights=None):
            self.name, self.image_size = f"bench-standin-{size}", size
            module = torch.nn.Linear(100, 3 * 8 * 8)
            torch.nn.init.normal_(module.weight, generator=torch.Generator().manual_seed(0))
            super().__init__(module, device, None)

        def forward(self, z):
            small = torch.sigmoid(self.module(z).view(-1, 3, 8, 8))
            return F.interpolate(small, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)

        def sample(self, n, rng):
            return rng.standard_normal((n, 100))

        def default_init(self):
            return {"init_code": np.zeros(100), "sigma0": 1.0, "radius": 10.0}

    for size in (64, 256):
        generators.register(f"bench-standin-{size}", functools.partial(StandIn, size=size))


def serve(argv: list[str]) -> int:
    """The server process: the stand-ins registered, then ``actmax serve``."""
    from server.cli import main

    register_standins()
    return main(["serve", *argv])


class Server:
    """This script's ``serve`` in its own process, with a REST client."""

    def __init__(self, data: Path, device: str = "cpu", env: dict[str, str] | None = None):
        from server.launch import ApiClient, free_port

        token, self.zmq = secrets.token_urlsafe(16), f"tcp://127.0.0.1:{free_port()}"
        port = free_port()
        self.log = data / "server.log"
        data.mkdir(parents=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "serve", "--port", str(port), "--zmq-endpoint", self.zmq,
                 "--data-dir", str(data), "--device", device],
                env={**os.environ, **(env or {}), "ACTMAX_TOKEN": token}, stdout=log, stderr=subprocess.STDOUT)
        self.api = ApiClient(f"http://127.0.0.1:{port}", token)
        self.api.wait_healthy(120, self.process, self.log)

    def close(self) -> None:
        from server.launch import stop

        stop(self.process)
        self.api.close()


class BareCompute:
    """One generation's bare compute in this process: tell + ask + generate + PNG encode (as the server does)."""

    def __init__(self, generator: str, population: int, device: str = "cpu", weights: str | None = None):
        import generators
        import optimizers
        from server.thread_runtime import optimizer_params

        self.generator = generators.load(generator, device=device, weights=weights)
        self.optimizer = optimizers.create("cma", self.generator.latent_dim, seed=0,
                                           **optimizer_params("cma", self.generator, {"population": population}))
        self.rng = np.random.default_rng(0)
        self.codes = self.optimizer.ask()

    def __call__(self) -> float:
        """Seconds for one generation."""
        from server.images import encode_images

        scores = self.rng.normal(size=len(self.codes))
        start = time.perf_counter()
        self.optimizer.tell(self.codes, scores)
        self.codes = self.optimizer.ask()
        encode_images(self.generator.generate(self.codes))
        return time.perf_counter() - start


def rig_waits(server: Server, name: str, generator: str, n_threads: int, generations: int, population: int,
              show_ms: float, compute: BareCompute | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run a session of ``n_threads`` threads on one rig played here: (seconds the rig waited per batch,
    seconds of ``compute`` per batch). With one thread the server is idle while the rig shows a batch,
    so ``compute`` runs then, under the same machine load as the wait that follows."""
    from rig_client.client import Presentation, RigClient

    session = server.api.post("/sessions", {
        "name": name, "rig": name, "references": {"source": "skimage", "count": REFERENCES},
        "threads": [{"name": f"t{i}", "generator": generator, "optimizer": "cma",
                     "optimizer_params": {"population": population}, "objective": {"channels": [0]},
                     "seed": i, "n_generations": generations} for i in range(n_threads)],
    })
    rng = np.random.default_rng(0)
    waits, computes, sent = [], [], None
    with RigClient(server.zmq, name, channels=1) as rig:
        for _ in range(n_threads * generations):
            batch = rig.next_batch(timeout=120)
            if batch is None:
                raise SystemExit(f"no batch within 120 s; see {server.log}")
            if sent is not None:
                waits.append(time.perf_counter() - sent)
            shown = time.perf_counter() + show_ms / 1000  # the animal looks at the images
            if compute is not None and sent is not None:
                computes.append(compute())
            time.sleep(max(0.0, shown - time.perf_counter()))
            presentations = [Presentation(s.stimulus_id, [float(rng.normal())], time.time(), batch.response_window_ms)
                             for s in batch.stimuli]
            sent = time.perf_counter()  # the wait includes storing the results (the ACK)
            rig.send_results(batch.batch_id, presentations).result(60)
    deadline = time.monotonic() + 60
    while any(t["status"] != "finished" for t in server.api.get(f"/sessions/{session['id']}/threads")):
        if time.monotonic() > deadline:
            raise SystemExit(f"session {name} did not finish; see {server.log}")
        time.sleep(0.2)
    return np.array(waits), np.array(computes)


def png_encoding(repeats: int = 5) -> tuple[float, float]:
    """Best seconds to encode 40 DCGAN faces upsampled to 256 px: Pillow's default in one thread, ``encode_images``."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    import generators
    from rig_client.protocol import decode_png
    from server.images import encode_images

    G = generators.load("dcgan-faces", device="cpu")
    images = F.interpolate(G.generate(G.sample(40, np.random.default_rng(0))), size=256, mode="bicubic").clamp(0, 1)

    def default_png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    def best(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    old, old_pngs = best(lambda: [default_png(p) for p in pixels])
    new, new_pngs = best(lambda: encode_images(images))
    if not all(np.array_equal(decode_png(a), decode_png(b)) for a, b in zip(old_pngs, new_pngs, strict=True)):
        raise SystemExit("the PNGs decode to different pixels")
    return old, new


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        sys.exit(serve(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=30, help="generations per thread (default 30)")
    parser.add_argument("--population", type=int, default=40, help="images per generation (default 40)")
    parser.add_argument("--show-ms", type=float, default=300, help="how long the rig shows a batch (default 300)")
    args = parser.parse_args(argv)
    if args.generations < 2 or args.population < 2 or args.show_ms < 0:
        parser.error("need --generations >= 2, --population >= 2 and --show-ms >= 0")
    register_standins()

    old_png, new_png = png_encoding()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data")
        try:
            run = functools.partial(rig_waits, server, generations=args.generations, population=args.population,
                                    show_ms=args.show_ms)
            loops = {name: run(name, generator, 1, compute=BareCompute(generator, args.population))
                     for name, generator in (("dcgan-64", "dcgan-faces"), ("standin-256", "bench-standin-256"))}
            two_threads, _ = run("two-threads", "dcgan-faces", 2)
        finally:
            server.close()

    ms = lambda a, q: 1000 * np.percentile(a, q)  # noqa: E731
    print(f"PNG encoding, 40 images of 256 px: Pillow default one thread {1000 * old_png:.1f} ms, "
          f"encode_images {1000 * new_png:.1f} ms: {old_png / new_png:.2f}x faster, same pixels")
    print(f"\n{args.population} images + {REFERENCES} references per generation, CMA, rig shows each batch "
          f"{args.show_ms:g} ms (the bare compute runs meanwhile); rig wait = RESULTS sent -> next BATCH received;"
          "\noverhead = rig wait - bare compute of the same generation")
    print(f"{'':30} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (waits, computes) in loops.items():
        print(f"{'rig wait ' + name:30} {len(waits):4d} {ms(waits, 50):8.1f} {ms(waits, 99):8.1f}")
        print(f"{'  bare compute':30} {len(computes):4d} {ms(computes, 50):8.1f} {ms(computes, 99):8.1f}")
        overhead = waits - computes
        print(f"{'  server overhead':30} {len(overhead):4d} {ms(overhead, 50):8.1f} {ms(overhead, 99):8.1f}")
    one = loops["dcgan-64"][0]
    print(f"{'rig wait, 1 thread (DCGAN)':30} {len(one):4d} {ms(one, 50):8.1f} {ms(one, 99):8.1f}")
    print(f"{'rig wait, 2 threads (DCGAN)':30} {len(two_threads):4d} {ms(two_threads, 50):8.1f} "
          f"{ms(two_threads, 99):8.1f}")
    print(f"2 threads: the rig waits {np.median(two_threads) / np.median(one):.2f}x the 1-thread wait (p50)")


if __name__ == "__main__":
    main()
