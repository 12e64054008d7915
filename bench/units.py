"""Throughput of simulated units: generator + EfficientNet-Lite0 unit, fast path vs plain full forward.

For each layer, times (best of --repeats, fast and plain interleaved so machine load hits both):
  score   UnitScorer.score on pre-generated images (what the fast path changes),
  e2e     generator.generate + UnitScorer.score (what a simulated rig or in-silico run pays).
Fast = BN folded into convs, input cropped to the units' receptive fields, forward stopped at the layer;
plain = unfolded network, full depth, units read by forward hooks. Also checks both give the same values.

    .venv/bin/python bench/units.py                      # dcgan-faces, blocks.2 / blocks.7 / blocks.13
    .venv/bin/python bench/units.py --layers stem,blocks.5,head --n-images 80 --threads 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import generators  # noqa: E402
from rig_client.cnn import load_efficientnet_lite0  # noqa: E402
from rig_client.units import Unit, UnitScorer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="dcgan-faces", help="registered generator (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="generator weights file or directory")
    parser.add_argument("--layers", default="blocks.2,blocks.7,blocks.13",
                        help="comma-separated layers: early, middle, late (default: %(default)s)")
    parser.add_argument("--units", type=int, default=10, help="centre units (channels 0..N-1) per layer")
    parser.add_argument("--n-images", type=int, default=40, help="images per timed batch (one generation)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        gen = generators.load(args.generator, device=args.device, weights=args.weights)
    except generators.GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = load_efficientnet_lite0(args.device)
    codes = gen.sample(args.n_images, np.random.default_rng(args.seed))
    images = gen.generate(codes)
    gen.generate(codes)  # warm-up
    t_gen = min(timed(lambda: gen.generate(codes)) for _ in range(args.repeats))

    print(f"{args.generator} -> EfficientNet-Lite0, {args.n_images} images/batch, {args.units} centre units, "
          f"{torch.get_num_threads()} threads, {args.device}, best of {args.repeats}")
    print(f"generator alone: {args.n_images / t_gen:8.1f} img/s")
    header = (f"{'layer':<12}{'crop':>9}{'max|diff|':>11}"
              f"{'score plain':>13}{'fast':>9}{'ratio':>7}{'e2e plain':>11}{'fast':>9}{'ratio':>7}")
    print(header + "\n" + "-" * len(header))
    for layer in [name.strip() for name in args.layers.split(",") if name.strip()]:
        units = [Unit(layer, c) for c in range(args.units)]
        try:
            fast = UnitScorer(units, device=args.device, model=model)
        except Exception as exc:  # bad layer or channel count: report and go on
            print(f"{layer:<12} skipped: {exc}")
            continue
        plain = UnitScorer(units, device=args.device, model=model, fast=False)
        ref = plain.score(images)
        diff = float(np.abs(fast.score(images) - ref).max() / max(np.abs(ref).max(), 1e-12))  # + warm-up
        timings = {}
        for _ in range(args.repeats):  # interleave so that load changes hit both paths alike
            for label, scorer in (("plain", plain), ("fast", fast)):
                s = timed(lambda: scorer.score(images))
                e = timed(lambda: scorer.score(gen.generate(codes)))
                old = timings.get(label, (np.inf, np.inf))
                timings[label] = (min(old[0], s), min(old[1], e))
        (sp, ep), (sf, ef) = timings["plain"], timings["fast"]
        n = args.n_images
        y0, y1, x0, x1 = fast.crop
        print(f"{layer:<12}{f'{y1 - y0}x{x1 - x0}':>9}{diff:>11.1e}"
              f"{n / sp:>13.1f}{n / sf:>9.1f}{sp / sf:>6.1f}x{n / ep:>11.1f}{n / ef:>9.1f}{ep / ef:>6.1f}x")
    print("img/s; ratio = fast / plain throughput; crop = input window the fast path computes on "
          "(224x224 = no crop); max|diff| relative to the largest plain response")
    return 0


if __name__ == "__main__":
    sys.exit(main())
