"""Per-generation ask+tell time and peak memory of the base optimizers, with pycma as the reference.

Prints, for each optimizer at the given dimension and population, the mean ask+tell milliseconds
per generation (objective excluded), the ratio of pycma's time to it, and the peak memory the
optimizer allocated (tracemalloc, which numpy reports to). Example:

    .venv/bin/python bench/optimizers.py --dim 4096 --population 40 --generations 30 --blas-threads 1

On a loaded machine multithreaded BLAS can make small matrix products tens of times slower;
``--blas-threads`` fixes the BLAS thread count (for every optimizer, pycma included).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=4096, help="code dimension (default 4096, the fc6 GAN)")
    parser.add_argument("--population", type=int, default=40, help="samples per generation (default 40)")
    parser.add_argument("--generations", type=int, default=30, help="timed generations per optimizer (default 30)")
    parser.add_argument(
        "--pycma-generations", type=int, default=8, help="timed generations for pycma, ~0.6 s each at 4096 (default 8)"
    )
    parser.add_argument("--hess-k", type=int, default=500, help="eigenbasis size for hess-cma (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blas-threads", type=int, help="BLAS/OpenMP threads (default: the library's choice)")
    parser.add_argument(
        "--only", nargs="*", help="optimizers to time besides pycma (default: the base optimizers that sample a population)"
    )
    args = parser.parse_args()
    for name in ("dim", "population", "generations", "pycma_generations", "hess_k", "blas_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


ARGS = parse_args()  # before numpy is imported, so that --blas-threads can take effect
if ARGS.blas_threads is not None:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(ARGS.blas_threads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import optimizers  # noqa: E402
from optimizers.presets import base_of  # noqa: E402


def default_names() -> list[str]:
    """The registered optimizers that sample a population, without the presets (configured copies of them)
    or fixed-design (which presents given codes)."""
    return [n for n in optimizers.available() if base_of(n) == n and "population" in optimizers.hyperparameter_names(n)]


def eigenbasis_hyperparameters(args: argparse.Namespace, rng: np.random.Generator) -> dict:
    """A random orthonormal top-k basis with a decaying spectrum, standing in for a GAN Hessian's."""
    k = min(args.hess_k, args.dim)
    basis, _ = np.linalg.qr(rng.standard_normal((args.dim, k)))
    return {"basis": basis, "eigvals": np.logspace(0, -4, k)}


# Settings beyond the population; sphere-cma presents exactly λ codes, like the others.
EXTRA_HYPERPARAMETERS = {
    "hess-cma": eigenbasis_hyperparameters,
    "sphere-cma": lambda args, rng: {"include_center": False},
}


def hyperparameters_for(name: str, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    extra = EXTRA_HYPERPARAMETERS.get(name, lambda args, rng: {})(args, rng)
    return {"population": args.population, **extra}


def time_optimizer(name: str, hyperparameters: dict, args: argparse.Namespace, generations: int) -> tuple[float, float]:
    """Mean ask+tell seconds per generation (after one warm-up generation) and peak bytes."""
    target = np.random.default_rng(args.seed + 1).standard_normal(args.dim)
    tracemalloc.start()
    optimizer = optimizers.create(name, args.dim, seed=args.seed, **hyperparameters)
    elapsed = 0.0
    for generation in range(generations + 1):
        start = time.perf_counter()
        codes = optimizer.ask()
        middle = time.perf_counter()
        scores = -np.sum((codes - target) ** 2, axis=1)
        resume = time.perf_counter()
        optimizer.tell(codes, scores)
        end = time.perf_counter()
        if generation > 0:
            elapsed += (middle - start) + (end - resume)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed / generations, peak


def main(args: argparse.Namespace) -> None:
    unknown = sorted(set(args.only or ()) - set(optimizers.available()))
    if unknown:
        sys.exit(f"unknown optimizer(s) {', '.join(unknown)}; available: {', '.join(optimizers.available())}")
    unsampled = [n for n in args.only or () if "population" not in optimizers.hyperparameter_names(n)]
    if unsampled:
        sys.exit(f"{', '.join(unsampled)} take(s) no population; time one of: {', '.join(default_names())}")
    rng = np.random.default_rng(args.seed)
    names = args.only or default_names()
    results = {}
    for name in ["pycma"] + [n for n in names if n != "pycma"]:
        generations = args.pycma_generations if name == "pycma" else args.generations
        hyperparameters = hyperparameters_for(name, args, rng)
        try:
            results[name] = time_optimizer(name, hyperparameters, args, generations)
        except optimizers.MissingDependencyError as exc:
            print(f"{name}: skipped ({exc})")
    threads = args.blas_threads or "default"
    print(f"dim {args.dim}, population {args.population}, BLAS threads {threads}; ask+tell per generation")
    print(f"{'optimizer':<12}{'ms/gen':>10}{'pycma/this':>12}{'peak MiB':>10}")
    reference = results.get("pycma", (None,))[0]
    for name in names:
        if name not in results:
            continue
        seconds, peak = results[name]
        ratio = f"{reference / seconds:.1f}x" if reference else "n/a"
        print(f"{name:<12}{seconds * 1e3:>10.2f}{ratio:>12}{peak / 2**20:>10.1f}")


if __name__ == "__main__":
    main(ARGS)
