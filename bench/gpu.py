"""GPU checks on one device: generator throughput, unit scoring, Hessians, end-to-end turnaround.

    python bench/gpu.py --device cuda              # the figures in docs/results.md
    python bench/gpu.py --device cpu --tiny        # the same code paths in seconds (the tests run this)

Sections, each printed as it finishes; one that cannot run (a package or weights file missing)
prints why and is skipped, and a section that fails makes the exit status 1:

  generators  images/s of dcgan-faces and BigGAN-deep-256/512 (random weights: the real cost) for
              40 codes, in float32 and in each half precision that passes `check_precision` (BigGAN's
              random weights in any that runs: they magnify rounding past the tolerance, so its
              difference says nothing about the published weights), plus the PNG encoding of those
              40 images on all cores
  units       images/s of the simulated units (EfficientNet-Lite0, truncated and folded) at 256 px
  hessian     seconds per metric Hessian (backprop, MSE) of dcgan-faces on the device
  e2e         `actmax serve --device ...` and a rig played here: the rig's wait per generation
              against the bare compute (bench/turnaround.py's loop), DCGAN and BigGAN-deep-256,
              beside the floor (bench/turnaround.py's floor_server: the least a turn can do)

The first two need torch, numpy, Pillow and pydantic (the generators and rig_client packages and
server.images, which encodes PNGs as the server does); `hessian` needs scipy, `e2e` the server stack
(fastapi, uvicorn, pyzmq, sqlalchemy, ...); `--skip-e2e` leaves it out.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages before bench/ (bench/optimizers.py is not `optimizers`)

import generators  # noqa: E402
from generators.base import PRECISION_TOLERANCE, PRECISIONS, GeneratorError, check_precision  # noqa: E402

POPULATION = 40
PROJECT_PACKAGES = {"analysis", "generators", "optimizers", "rig_client", "server"}


def random_biggan(root: Path, resolution: int, tiny: bool) -> tuple[str, Path]:
    """Random weights for biggan-deep-<resolution> (tiny: a 32 px network under the 128 name) in ``root/<name>``,
    the layout of the package cache; (name, folder)."""
    from generators.biggan import TINY_CONFIG, random_network, standard_config

    name = f"biggan-deep-{128 if tiny else resolution}"
    folder = root / name
    if not folder.exists():
        config = TINY_CONFIG if tiny else standard_config(resolution)
        module = random_network(config)
        folder.mkdir(parents=True)
        torch.save(module.state_dict(), folder / "pytorch_model.bin")
        (folder / "config.json").write_text(json.dumps(config))
    return name, folder


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call, the device synchronised around each."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_generators(args, weights_root: Path) -> None:
    from server.images import encode_images

    device = torch.device(args.device)
    resolutions = [256] if args.tiny else [256, 512]
    names = [("dcgan-faces", None)]
    for resolution in resolutions:
        try:
            names.append(random_biggan(weights_root, resolution, args.tiny))
        except ModuleNotFoundError as exc:
            print(f"  biggan-deep-{resolution}: skipped ({exc}; pip install pytorch-pretrained-biggan)")
    print(f"  {'generator':18} {'precision':9} {'max |Δ| vs fp32':>15} {'images/s':>9} {'ms / 40':>8} {'PNG ms / 40':>11}")
    for name, weights in names:
        for precision in PRECISIONS:
            generator = generators.load(name, device=device, weights=weights)
            difference = 0.0
            if precision != "float32":
                try:  # random BigGAN weights magnify rounding past the tolerance (docs/generators.md): timed anyway
                    difference = check_precision(generator, precision, tolerance=1.0 if weights else PRECISION_TOLERANCE)
                except GeneratorError as exc:
                    print(f"  {name:18} {precision:9} refused: {str(exc).split(' on ')[0]}")
                    continue
            codes = generator.sample(args.population, np.random.default_rng(0))
            seconds = timed(functools.partial(generator.generate, codes), device, args.repeats)
            images = generator.generate(codes)
            png = timed(functools.partial(encode_images, images), device, args.repeats)  # as the server renders
            print(f"  {name:18} {precision:9} {difference:15.4f} {args.population / seconds:9.0f} "
                  f"{1000 * seconds:8.1f} {1000 * png:11.1f}", flush=True)
            del generator, images


def bench_units(args, _weights_root: Path) -> None:
    from rig_client.units import Unit, UnitScorer

    device = torch.device(args.device)
    size = 64 if args.tiny else 256
    images = torch.rand(args.population, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    print(f"  {'units':30} {'forward':8} {'images/s':>9} {'ms / batch':>10}")
    unit_sets = [["blocks.6:67"], ["blocks.2:5", "blocks.6:67", "blocks.10:3", "blocks.15:100"]]
    for units in unit_sets[:1] if args.tiny else unit_sets:
        for fast in (True, False):
            scorer = UnitScorer([Unit(u.split(":")[0], int(u.split(":")[1])) for u in units], device=device, fast=fast)
            seconds = timed(lambda: scorer.score(images), device, args.repeats)
            print(f"  {','.join(units):30} {'folded' if fast else 'full':8} {args.population / seconds:9.0f} "
                  f"{1000 * seconds:10.1f}", flush=True)


def bench_hessian(args, _weights_root: Path) -> None:
    from analysis.distances import get_distance
    from analysis.geometry import metric_hessian

    device = torch.device(args.device)
    generator = generators.load("dcgan-faces", device=device)
    z0 = generator.sample(1, np.random.default_rng(0))[0]
    method, k = ("hvp_ad", 3) if args.tiny else ("bp", None)  # tiny: Lanczos for the top 3 only
    result = None

    def hessian():
        nonlocal result
        result = metric_hessian(generator.generate, z0, get_distance("mse"), method, k=k, device=device)

    seconds = timed(hessian, device, 1 if args.tiny else 3)
    print(f"  dcgan-faces, MSE, {method}: {seconds:.2f} s per Hessian (100-d); top eigenvalue "
          f"{result.eigvals[0]:.4g}, symmetric to {np.abs(result.H - result.H.T).max():.1e}")


def bench_e2e(args, weights_root: Path) -> None:
    spec = importlib.util.spec_from_file_location("turnaround", ROOT / "bench" / "turnaround.py")
    turnaround = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(turnaround)
    Server, BareCompute, rig_waits = turnaround.Server, turnaround.BareCompute, turnaround.rig_waits
    env = {"PYTORCH_PRETRAINED_BIGGAN_CACHE": str(weights_root)}
    from server.engine import keep_freed_memory

    keep_freed_memory()  # as the server does, for the bare compute here
    loops = [("dcgan-faces", None)]
    try:
        loops.append(random_biggan(weights_root, 256, args.tiny))
    except ModuleNotFoundError as exc:
        print(f"  biggan: skipped ({exc}; pip install pytorch-pretrained-biggan)")
    print(f"  {args.population} images + 10 references; show = how long the rig shows each batch (0: it answers at"
          "\n  once, and the server's work after each send overlaps the next step); rig wait = RESULTS sent -> next BATCH;"
          "\n  overhead = rig wait - bare compute (tell + ask + generate + PNG) of the same generation;"
          "\n  server-timed overhead = the server's wait minus the compute inside it, for the same step;"
          "\n  floor = the same turn's overhead in bench/turnaround.py's floor_server (the least a turn can do)")
    print(f"  {'generator':18} {'show':>5} {'rig wait p50':>12} {'p99':>7} {'compute p50':>11} {'p99':>7} {'overhead p50':>13} "
          f"{'p99':>7} {'server-timed p50':>16} {'p99':>7} {'floor p50':>9} {'p99':>7}  ms")
    ms = lambda a, q: 1000 * np.percentile(a, q) if len(a) else float("nan")  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", device=args.device, env=env)
        try:
            runs = []
            follower = turnaround.ServerTimings(server, Path(tmp) / "timings.jsonl")
            for name, weights in loops:
                compute = BareCompute(name, args.population, args.device, None if weights is None else str(weights))
                for show_ms in args.show_ms:
                    waits, computes, batch_ids = rig_waits(server, f"{name}-{show_ms:g}", name, 1, args.generations,
                                                           args.population, show_ms, compute)
                    runs.append((name, weights, show_ms, waits, computes[:, 1], batch_ids))
            timings = follower.stop()
        finally:
            server.close()
    for name, weights, show_ms, waits, computes, batch_ids in runs:
        own = np.array([timings[b][0] - timings[b][1] for b in batch_ids if b in timings])
        floor_waits, floor_computes = turnaround.floor_waits(name, args.generations, args.population, show_ms,
                                                             args.device, None if weights is None else str(weights), env)
        floor = floor_waits - floor_computes
        print(f"  {name:18} {show_ms:5g} {ms(waits, 50):12.1f} {ms(waits, 99):7.1f} {ms(computes, 50):11.1f} "
              f"{ms(computes, 99):7.1f} {ms(waits - computes, 50):13.1f} {ms(waits - computes, 99):7.1f} "
              f"{ms(own, 50):16.1f} {ms(own, 99):7.1f} {ms(floor, 50):9.1f} {ms(floor, 99):7.1f}", flush=True)


SECTIONS = {"generators": bench_generators, "units": bench_units, "hessian": bench_hessian, "e2e": bench_e2e}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: check the code paths in seconds")
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the end-to-end section (no server stack)")
    parser.add_argument("--generations", type=int, help="e2e: generations per run (default 20; tiny 3)")
    parser.add_argument("--show-ms", type=float, nargs="+", default=[0.0, 300.0],
                        help="e2e: how long the rig shows each batch, one run per value (default 0 300)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated (default {','.join(SECTIONS)})")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if not (args.skip_e2e and s == "e2e")]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    try:
        device = generators.base.resolve_device(args.device)
        torch.empty(1, device=device)
    except GeneratorError as exc:  # it names the device
        parser.error(str(exc))
    except RuntimeError as exc:
        parser.error(f"device {args.device!r} is not usable here: {exc}")
    args.population, args.repeats, generations = (4, 2, 3) if args.tiny else (POPULATION, 5, 20)
    args.generations = args.generations or generations
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}{', tiny sizes' if args.tiny else ''}")
    failed = []
    with tempfile.TemporaryDirectory() as weights_root:
        for section in sections:
            print(f"\n[{section}]", flush=True)
            start = time.perf_counter()
            try:
                SECTIONS[section](args, Path(weights_root))
            except Exception as exc:
                if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] not in PROJECT_PACKAGES:
                    print(f"  skipped: {exc} (install it to run this section)")
                else:
                    traceback.print_exc(file=sys.stdout)
                    failed.append(section)
            print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
