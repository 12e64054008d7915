"""The animal's wait: from a rig's RESULTS to the next BATCH, against the bare compute, in one run.

Runs `actmax serve` in its own process on loopback and plays the rig in this process (a
`RigClient` that "shows" each batch for ``--show-ms``, then answers with seeded random rates).
Per generation it measures the wait the rig sees: RESULTS sent -> next BATCH received. The
baseline is the bare compute of a generation (tell + ask + generate + PNG encode, as the server
does it), measured here while the rig shows the previous batch (the server is idle then), so each
wait is paired with a compute under the same machine load; wait minus compute is what the server
adds (database transactions, archive writes, ZeroMQ). The bare compute runs twice per show: at once,
right after the server's step, and again after the rest of the show asleep. The server's own
compute always follows such a rest, and this machine runs work right after a rest slower (see
``bench/engine_step.py``), so the second is the like-for-like baseline. That difference also holds the run-to-run
noise of two separate computes (on 2 shared cores a 40-image compute varies by about 14 ms sd), so
the script also reads the server's own clock for each step (``batch.sent`` on ``GET /live``): its
wait minus the compute inside that same wait is the server's overhead without that noise, the
rig's wait minus the server's is the ZeroMQ hops and the rig client, and the rig's wait minus the
compute inside it is all the rig waits for besides the compute (both, step by step).

Four loops run on one server, one session each:
  dcgan-64      the real DCGAN faces (64 px), one thread
  standin-256   a stand-in generator of 256 px that costs almost nothing, to isolate the server
  1 thread / 2 threads on one rig (DCGAN): with two threads, thread B's next generation is
                computed while the rig shows thread A's batch, so the rig should hardly wait.
Then the floor, for the DCGAN and the stand-in: the least a turn can do with the same guarantees,
compute and messages (``floor_server``: blocking ZeroMQ, one transaction on the sqlite3 driver
committed with its fsync before the ACK and the BATCH, each message validated where it arrives, no
event loop, no ORM), played by a rig the same way. What the rig waits for there besides the compute
is what this machine costs any server; the script prints how far actmax's is from it.
It also times PNG encoding of 40 images at 256 px: Pillow's default (zlib level 6, one thread), Pillow at
level 1 on all cores, and ``server.images.encode_images`` (``rig_client.protocol.encode_png`` on all
cores), and checks that they all decode to the same pixels.

    python bench/turnaround.py [--generations 30] [--population 40] [--show-ms 300]

The stand-in generator (``bench-standin-64/256``) is registered only here: the server process is
this script run as ``python bench/turnaround.py serve ...`` (and the floor's, ``... floor ...``).
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

    def __init__(self, data: Path, device: str = "cpu", env: dict[str, str] | None = None,
                 command: list[str] | None = None):
        """``command``: the script and arguments that serve (default: this script's ``serve``)."""
        from server.launch import ApiClient, free_port

        token = self.token = secrets.token_urlsafe(16)
        self.zmq = f"tcp://127.0.0.1:{free_port()}"
        port = free_port()
        self.log = data / "server.log"
        data.mkdir(parents=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *(command or [__file__, "serve"]), "--port", str(port), "--zmq-endpoint", self.zmq,
                 "--data-dir", str(data), "--device", device],
                env={**os.environ, **(env or {}), "ACTMAX_TOKEN": token}, stdout=log, stderr=subprocess.STDOUT)
        self.api = ApiClient(f"http://127.0.0.1:{port}", token)
        self.api.wait_healthy(120, self.process, self.log)

    def close(self) -> None:
        from server.launch import stop

        stop(self.process)
        self.api.close()


class ServerTimings:
    """The server's own account of each step, from ``batch.sent`` on ``GET /live``: per batch, how long its
    rig had waited for it (the round's last RESULTS arrived -> sent) and the compute inside that wait
    (tell, ask, render). Their difference is the server's overhead in that very step, free of the
    run-to-run noise of a compute timed elsewhere. The stream is read by a process of its own (this
    script run as ``python bench/turnaround.py follow URL TOKEN``) so that reading it takes no time
    from the rig played here."""

    def __init__(self, server: Server, out: Path):
        self.out = out
        with open(out, "wb") as sink:
            self.process = subprocess.Popen([sys.executable, __file__, "follow", server.api.url, server.token],
                                            stdout=sink, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 30
        while not out.read_bytes():  # its first line says the stream is open
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"GET /live did not answer; see {server.log}")
            time.sleep(0.05)

    def stop(self) -> dict[str, tuple[float, float]]:
        """Per batch id: (seconds its rig waited, seconds of compute in that wait)."""
        import json

        time.sleep(0.5)  # the last items
        self.process.terminate()
        self.process.wait(10)
        items = [json.loads(line) for line in self.out.read_text().splitlines()[1:]]
        return {d["batch_id"]: (d["waited_ms"] / 1000, d["compute_ms"] / 1000) for d in items}


def follow(url: str, token: str) -> None:
    """Print a line when ``GET /live`` is open, then the data of each timed ``batch.sent``, one JSON per line."""
    import json

    import httpx

    with httpx.stream("GET", f"{url}/live", timeout=None, headers={"Authorization": f"Bearer {token}"}) as response:
        print("open", flush=True)
        for line in response.iter_lines():
            if line.startswith("data: "):
                item = json.loads(line[len("data: "):])
                if item["kind"] == "batch.sent" and "waited_ms" in item["data"]:
                    print(json.dumps(item["data"]), flush=True)


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
        start = time.perf_counter()
        self.render()
        return time.perf_counter() - start

    def render(self) -> list[bytes]:
        """One generation: tell random scores, ask, generate, encode; its PNGs."""
        from server.images import encode_images

        self.optimizer.tell(self.codes, self.rng.normal(size=len(self.codes)))
        self.codes = self.optimizer.ask()
        return encode_images(self.generator.generate(self.codes))


def rig_waits(server: Server, name: str, generator: str, n_threads: int, generations: int, population: int,
              show_ms: float, compute: BareCompute | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Run a session of ``n_threads`` threads on one rig played here: (seconds the rig waited per batch,
    seconds of ``compute`` per batch at the show's start and after the rest of it asleep (n, 2), the id of
    the batch each wait ended with). With one thread the server is idle while the rig shows a batch, so
    ``compute`` runs then, under the same machine load as the wait that follows."""
    from rig_client.client import Presentation, RigClient

    session = server.api.post("/sessions", {
        "name": name, "rig": name, "references": {"source": "skimage", "count": REFERENCES},
        "threads": [{"name": f"t{i}", "generator": generator, "optimizer": "cma",
                     "optimizer_params": {"population": population}, "objective": {"channels": [0]},
                     "seed": i, "n_generations": generations} for i in range(n_threads)],
    })
    rng = np.random.default_rng(0)
    waits, computes, batch_ids, sent = [], [], [], None
    with RigClient(server.zmq, name, channels=1) as rig:
        for _ in range(n_threads * generations):
            batch = rig.next_batch(timeout=120)
            if batch is None:
                raise SystemExit(f"no batch within 120 s; see {server.log}")
            if sent is not None:
                waits.append(time.perf_counter() - sent)
                batch_ids.append(batch.batch_id)
            shown = time.perf_counter() + show_ms / 1000  # the animal looks at the images
            at_once = compute() if compute is not None and sent is not None else None
            time.sleep(max(0.0, shown - time.perf_counter()))
            if at_once is not None:  # and after a rest, as the server's step comes
                computes.append((at_once, compute()))
            presentations = [Presentation(s.stimulus_id, [float(rng.normal())], time.time(), batch.response_window_ms)
                             for s in batch.stimuli]
            sent = time.perf_counter()  # the wait includes storing the results (the ACK)
            rig.send_results(batch.batch_id, presentations).result(60)
    deadline = time.monotonic() + 60
    while any(t["status"] != "finished" for t in server.api.get(f"/sessions/{session['id']}/threads")):
        if time.monotonic() > deadline:
            raise SystemExit(f"session {name} did not finish; see {server.log}")
        time.sleep(0.2)
    return np.array(waits), np.array(computes).reshape(-1, 2), batch_ids


FLOOR_SCHEMA = """
CREATE TABLE presentations (id TEXT PRIMARY KEY, stimulus_id TEXT, onset REAL, rates TEXT);
CREATE TABLE generations (id INTEGER PRIMARY KEY, codes BLOB);
CREATE TABLE stimuli (id TEXT PRIMARY KEY, generation_id INTEGER, code BLOB, content_hash TEXT);
CREATE TABLE batches (id TEXT PRIMARY KEY, generation_id INTEGER, sent_at REAL);
"""


def floor_server(endpoint: str, generator: str, population: int, database: str, device: str = "cpu",
                 weights: str | None = None) -> None:
    """The floor's server: the least a turn can do with actmax's guarantees. Per RESULTS, one transaction
    on the sqlite3 driver (WAL, synchronous FULL: the commit fsyncs, as actmax's does) stores its
    presentations, the generation's codes, its stimuli (with their PNGs' SHA-256) and a batch row; the
    same compute as the bench's baseline (``BareCompute``) runs inside it; then an ACK, and a BATCH of
    the PNGs just rendered. The RESULTS is validated (``protocol.decode``), as any server must;
    nothing else is: blocking ZeroMQ, no event loop, no ORM, no reads. Freed memory is kept and the
    heap frozen, as in actmax's server."""
    import hashlib
    import json
    import sqlite3

    import zmq

    from rig_client.protocol import VERSION, batch_message, decode
    from server.engine import freeze_heap, keep_freed_memory

    register_standins()
    keep_freed_memory()  # as actmax's server does
    compute = BareCompute(generator, population, device, weights)
    freeze_heap()
    db = sqlite3.connect(database, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(FLOOR_SCHEMA)
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.bind(endpoint)
    while True:
        identity, *frames = socket.recv_multipart()
        if frames[1] != b"RESULTS":
            return
        results = decode(frames).header
        presentations = results["presentations"]
        db.execute("BEGIN")
        db.executemany("INSERT INTO presentations VALUES (?, ?, ?, ?)",
                       [(p["presentation_id"], p["stimulus_id"], p["onset"], json.dumps(p["rates"]))
                        for p in presentations])
        start = time.perf_counter()
        pngs = compute.render()
        hashes = [hashlib.sha256(png).hexdigest() for png in pngs]  # actmax's render hashes them too
        compute_ms = 1000 * (time.perf_counter() - start)
        generation_id = db.execute("INSERT INTO generations (codes) VALUES (?)", (compute.codes.tobytes(),)).lastrowid
        ids = [secrets.token_hex(16) for _ in pngs]
        db.executemany("INSERT INTO stimuli VALUES (?, ?, ?, ?)",
                       [(i, generation_id, code.tobytes(), h) for i, code, h in zip(ids, compute.codes, hashes)])
        batch_id = secrets.token_hex(16)
        db.execute("INSERT INTO batches VALUES (?, ?, ?)", (batch_id, generation_id, time.time()))
        db.execute("COMMIT")
        ack = {"batch_id": results["batch_id"], "accepted": len(presentations), "duplicates": 0}
        socket.send_multipart([identity, VERSION, b"ACK", json.dumps(ack).encode()])
        batch = batch_message(batch_id=batch_id, session_id="floor", thread_id="floor", generation=generation_id,
                              response_window_ms=(50.0, 200.0),
                              stimuli=[(i, "synthetic", png) for i, png in zip(ids, pngs)]
                              + [(f"ref-{k}", "reference", None) for k in range(REFERENCES)])  # cached by the rig
        header = json.dumps({**batch.header, "compute_ms": compute_ms}).encode()
        socket.send_multipart([identity, VERSION, b"BATCH", header, *batch.frames], copy=False)


def floor_waits(generator: str, generations: int, population: int, show_ms: float, device: str = "cpu",
                weights: str | None = None, env: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Play a rig against ``floor_server`` (in its own process, ``env`` added to its environment), as
    ``rig_waits`` plays one against actmax, validating the ACK and the BATCH as a rig must: (seconds the
    rig waited per turn, seconds of compute in that turn), the first turn left out."""
    import json

    import zmq

    from rig_client.client import Presentation
    from rig_client.protocol import VERSION, decode
    from server.launch import free_port, stop

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    rng = np.random.default_rng(0)
    stimulus_ids = [f"s{i}" for i in range(population)] + [f"ref-{k}" for k in range(REFERENCES)]
    waits, computes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([sys.executable, __file__, "floor", endpoint, generator, str(population),
                                   str(Path(tmp) / "floor.db"), device, *([weights] if weights else [])],
                                  env={**os.environ, **(env or {})})
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.RCVTIMEO, 120_000)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        try:
            for _ in range(generations):
                presentations = [Presentation(s, [float(rng.normal())], time.time(), (50.0, 200.0))
                                 for s in stimulus_ids]
                sent = time.perf_counter()  # as in rig_waits, the wait includes encoding the RESULTS
                header = {"batch_id": "floor", "presentations": [p.to_json() for p in presentations], "done": True}
                socket.send_multipart([VERSION, b"RESULTS", json.dumps(header).encode()])
                decode(socket.recv_multipart())  # the ACK
                batch = decode(socket.recv_multipart(copy=False))
                waits.append(time.perf_counter() - sent)
                computes.append(batch.header["compute_ms"] / 1000)
                time.sleep(show_ms / 1000)
            socket.send_multipart([VERSION, b"BYE", b"{}"])
            server.wait(30)
        except zmq.Again:
            raise SystemExit(f"the floor's server ({generator}) did not answer within 120 s") from None
        finally:
            socket.close()
            stop(server)
    return np.array(waits[1:]), np.array(computes[1:])  # the first turn waited for the server to start


def png_encoding(repeats: int = 5) -> dict[str, tuple[float, float]]:
    """Best seconds and mean bytes to encode 40 DCGAN faces upsampled to 256 px: Pillow's default in one
    thread, Pillow at zlib level 1 on all cores (this project's encoder until 2026-11-29), ``encode_images``."""
    import torch.nn.functional as F
    from PIL import Image

    import generators
    from rig_client.protocol import decode_png
    from server.images import encode_images, parallel_map, to_pixels

    G = generators.load("dcgan-faces", device="cpu")
    images = F.interpolate(G.generate(G.sample(40, np.random.default_rng(0))), size=256, mode="bicubic").clamp(0, 1)

    def pillow_png(pixels, **options):
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG", **options)
        return buffer.getvalue()

    pixels = to_pixels(images)
    encoders = {
        "Pillow default, one thread": lambda: [pillow_png(p) for p in pixels],
        "Pillow level 1, all cores": lambda: parallel_map(functools.partial(pillow_png, compress_level=1), pixels),
        "encode_images": lambda: encode_images(images),
    }
    results = {}
    for name, encode in encoders.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pngs = encode()
            times.append(time.perf_counter() - start)
        if not all(np.array_equal(decode_png(png), p) for png, p in zip(pngs, pixels, strict=True)):
            raise SystemExit(f"{name}: the PNGs decode to other pixels")
        results[name] = min(times), np.mean([len(png) for png in pngs])
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        sys.exit(serve(argv[1:]))
    if argv[:1] == ["follow"]:
        sys.exit(follow(*argv[1:3]))
    if argv[:1] == ["floor"]:
        sys.exit(floor_server(argv[1], argv[2], int(argv[3]), *argv[4:7]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=30, help="generations per thread (default 30)")
    parser.add_argument("--population", type=int, default=40, help="images per generation (default 40)")
    parser.add_argument("--show-ms", type=float, default=300, help="how long the rig shows a batch (default 300)")
    args = parser.parse_args(argv)
    if args.generations < 2 or args.population < 2 or args.show_ms < 0:
        parser.error("need --generations >= 2, --population >= 2 and --show-ms >= 0")
    register_standins()
    from server.engine import keep_freed_memory

    keep_freed_memory()  # as the server does, so that the bare compute is as fast as the server's can be
    pngs = png_encoding()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data")
        try:
            follower = ServerTimings(server, Path(tmp) / "timings.jsonl")
            run = functools.partial(rig_waits, server, generations=args.generations, population=args.population,
                                    show_ms=args.show_ms)
            loops = {name: run(name, generator, 1, compute=BareCompute(generator, args.population))
                     for name, generator in (("dcgan-64", "dcgan-faces"), ("standin-256", "bench-standin-256"))}
            two_threads, _, _ = run("two-threads", "dcgan-faces", 2)
            timings = follower.stop()
        finally:
            server.close()
    floors = {name: floor_waits(generator, args.generations, args.population, args.show_ms)
              for name, generator in (("dcgan-64", "dcgan-faces"), ("standin-256", "bench-standin-256"))}

    ms = lambda a, q: 1000 * np.percentile(a, q)  # noqa: E731
    print("PNG encoding, 40 images of 256 px (best of 5; every encoder's PNGs decode to the same pixels)")
    ours = pngs["encode_images"][0]
    for name, (seconds, size) in pngs.items():
        print(f"  {name:30} {1000 * seconds:7.1f} ms {size / 1000:7.1f} KB per image; encode_images is "
              f"{seconds / ours:.2f}x faster")
    print(f"\n{args.population} images + {REFERENCES} references per generation, CMA, rig shows each batch "
          f"{args.show_ms:g} ms (the bare compute runs at its start, then after the rest of it asleep);\n"
          "rig wait = RESULTS sent -> next BATCH received; overhead = rig wait - bare compute of the same generation")
    print("server-timed = the server's own clock in that very step (batch.sent on GET /live): its wait is the "
          "round's last RESULTS\narriving -> the BATCH sent, its compute the tell, ask and render inside it")
    print(f"{'':40} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}")

    def row(label, values):
        print(f"{label:40} {len(values):4d} {ms(values, 50):8.1f} {ms(values, 99):8.1f}")

    beyond = {}  # per loop: the rig's wait minus the server-timed compute
    for name, (waits, computes, batch_ids) in loops.items():
        row("rig wait " + name, waits)
        at_once, rested = computes.T
        row("  bare compute at once (timed here)", at_once)
        row("  bare compute after a rest (timed here)", rested)
        row("  server overhead (wait - compute at once)", waits - at_once)
        row("  server overhead (wait - compute, rest)", waits - rested)
        paired = [(w, *timings[b]) for w, b in zip(waits, batch_ids, strict=True) if b in timings]
        if paired:
            rig_wait, server_wait, server_compute = np.array(paired).T
            row("  server-timed wait", server_wait)
            row("  server-timed compute", server_compute)
            row("  server overhead, server-timed", server_wait - server_compute)
            row("  ZeroMQ hops + rig client", rig_wait - server_wait)
            row("  rig wait - server-timed compute", rig_wait - server_compute)
            beyond[name] = rig_wait - server_compute
    one = loops["dcgan-64"][0]
    row("rig wait, 1 thread (DCGAN)", one)
    row("rig wait, 2 threads (DCGAN)", two_threads)
    print(f"2 threads: the rig waits {np.median(two_threads) / np.median(one):.2f}x the 1-thread wait (p50)")
    print("\nthe floor: the least a turn can do with the same guarantees, compute and messages (floor_server: blocking "
          "ZeroMQ,\none transaction on the sqlite3 driver committed with its fsync, each message validated where it "
          "arrives, no event loop, no ORM)")
    for name, (waits, computes) in floors.items():
        row("floor wait " + name, waits)
        row("  floor compute (timed by it)", computes)
        row("  floor: rig wait - compute", waits - computes)
        if name in beyond:
            gap = beyond[name]
            print(f"  actmax's rig wait - compute is {ms(gap, 50) - ms(waits - computes, 50):+.1f} ms (p50) and "
                  f"{ms(gap, 99) - ms(waits - computes, 99):+.1f} ms (p99) from the floor's")


if __name__ == "__main__":
    main()
