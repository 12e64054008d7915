"""HessCMA against CMA on EfficientNet-Lite0 units at an equal budget (spec geometry A7).

The eigenbasis is the average metric Hessian of DCGAN faces (``actmax analyze geometry dcgan-faces``
writes ``eigenbasis.npz``; computed here if no file is given). Its eigenvalues are divided by their
geometric mean, so hess-cma's per-axis steps λ^-p average 1 and σ0 means the same for both optimizers.
Each unit runs both optimizers with the same seed; the figure is the best clean activation.

    python bench/hess_cma.py [--basis eigenbasis.npz] [--units-per-layer 2] [--generations 30]
"""

from __future__ import annotations

import argparse
import time
import sys
from pathlib import Path

import numpy as np

# The repo root before bench/, so `optimizers` is the package and not bench/optimizers.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = ("blocks.2", "blocks.5", "blocks.8", "blocks.11", "blocks.14")


def eigenbasis(path: Path | None, positions: int) -> tuple[np.ndarray, np.ndarray]:
    if path is None:
        import tempfile

        from server.geometry import report

        with tempfile.TemporaryDirectory() as tmp:
            report("dcgan-faces", tmp, n_positions=positions, method="bp", progress=False)
            path = Path(tmp) / "eigenbasis.npz"
            data = dict(np.load(path))
    else:
        data = dict(np.load(path))
    eigvals = np.clip(data["eigvals"], 1e-12, None)
    return data["basis"], eigvals / np.exp(np.log(eigvals).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--basis", type=Path, help="eigenbasis.npz from actmax analyze geometry")
    parser.add_argument("--positions", type=int, default=10, help="Hessians for the basis if none given")
    parser.add_argument("--units-per-layer", type=int, default=2)
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--population", type=int, default=40)
    parser.add_argument("--k", type=int, default=100, help="eigenvectors kept (default all 100)")
    parser.add_argument("--p", type=float, default=0.25, help="step exponent λ^-p (default 0.25)")
    parser.add_argument("--sigma0", type=float, default=1.0, help="initial step of both optimizers")
    args = parser.parse_args(argv)

    import torch
    from scipy import stats

    import generators
    from rig_client.cnn import load_efficientnet_lite0
    from rig_client.units import UnitScorer, screen_units
    from insilico.evolve import evolve

    torch.manual_seed(0)
    G = generators.load("dcgan-faces", device="cpu")
    basis, eigvals = eigenbasis(args.basis, args.positions)
    hess = {"basis": basis[:, :args.k], "eigvals": eigvals[:args.k], "p": args.p, "sigma0": args.sigma0}
    model = load_efficientnet_lite0()
    rows = []
    start = time.perf_counter()
    for layer in LAYERS:
        screened = screen_units(G, layer, rng=np.random.default_rng(0), model=model)[:args.units_per_layer]
        for i, candidate in enumerate(screened):
            scorer = UnitScorer([candidate.unit], model=model)
            seed = 1000 + len(rows)
            best = {name: evolve(name, G, scorer, n_generations=args.generations, population=args.population,
                                 seed=seed, optimizer_params=params).best_clean
                    for name, params in (("cma", {"sigma0": args.sigma0}), ("hess-cma", hess))}
            rows.append((str(candidate.unit), best["cma"], best["hess-cma"]))
            print(f"{rows[-1][0]:<22} cma {best['cma']:8.3f}  hess-cma {best['hess-cma']:8.3f}", flush=True)
    cma, hess_cma = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    ratio = hess_cma / cma
    test = stats.ttest_rel(hess_cma, cma)
    print(f"\n{len(rows)} units, {args.generations} x {args.population} evaluations each, "
          f"k={args.k}, p={args.p}, sigma0={args.sigma0}; {time.perf_counter() - start:.0f} s")
    print(f"mean best: cma {cma.mean():.3f}, hess-cma {hess_cma.mean():.3f}; "
          f"hess-cma/cma ratio mean {ratio.mean():.3f} (median {np.median(ratio):.3f}); "
          f"hess-cma wins {int((hess_cma > cma).sum())}/{len(rows)}; paired t = {test.statistic:.2f}, "
          f"p = {test.pvalue:.3g}")


if __name__ == "__main__":
    main()
