"""What ``server.engine.keep_freed_memory`` saves a generation's render: glibc's defaults first, then kept.

The render is what the server's step computes: ``--population`` DCGAN images generated and PNG-encoded
(``encode_images``), each after a ``--pause-ms`` sleep like a rig's show. It runs in this one process
with glibc's default malloc settings, then again after ``keep_freed_memory()``, which cannot be undone
(so the order is fixed; a few warm-up renders come first). Linux with glibc only.

    python bench/freed_memory.py [--renders 30] [--population 40] [--pause-ms 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# The repo root before bench/, so `optimizers` is the package and not bench/optimizers.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def renders(generator, population: int, count: int, pause_s: float) -> np.ndarray:
    """Seconds of each of ``count`` renders (generate + PNG), each after ``pause_s`` asleep."""
    from server.images import encode_images

    rng, times = np.random.default_rng(0), []
    for _ in range(count):
        codes = generator.sample(population, rng)
        time.sleep(pause_s)
        start = time.perf_counter()
        encode_images(generator.generate(codes))
        times.append(time.perf_counter() - start)
    return np.array(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renders", type=int, default=30, help="renders timed each way (default 30)")
    parser.add_argument("--population", type=int, default=40, help="images per render (default 40)")
    parser.add_argument("--pause-ms", type=float, default=300, help="the sleep before each render (default 300)")
    args = parser.parse_args(argv)
    if args.renders < 2 or args.population < 1 or args.pause_ms < 0:
        parser.error("need --renders >= 2, --population >= 1 and --pause-ms >= 0")
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        parser.error("this measures glibc's malloc: run it on Linux with glibc")

    import generators
    from server.engine import keep_freed_memory

    generator, pause_s = generators.load("dcgan-faces", device="cpu"), args.pause_ms / 1000
    renders(generator, args.population, 5, pause_s)  # warm-up
    default = renders(generator, args.population, args.renders, pause_s)
    keep_freed_memory()
    kept = renders(generator, args.population, args.renders, pause_s)
    ms = lambda a, q: 1000 * np.percentile(a, q)  # noqa: E731
    print(f"render of {args.population} DCGAN images (generate + PNG), each after {args.pause_ms:g} ms asleep (ms)")
    print(f"{'':34} {'n':>4} {'p50':>8} {'p90':>8} {'p99':>8}")
    for label, values in (("glibc's defaults", default), ("keep_freed_memory()", kept)):
        print(f"{label:34} {len(values):4d} {ms(values, 50):8.1f} {ms(values, 90):8.1f} {ms(values, 99):8.1f}")
    print(f"kept memory renders {np.median(default) / np.median(kept):.2f}x faster (p50)")


if __name__ == "__main__":
    main()
