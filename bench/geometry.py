"""Metric-Hessian methods on a generator: seconds per Hessian, agreement with BP, FD step sweep.

Prints, for each method, the mean seconds per Hessian over the positions and corr(vec H_BP,
vec H_method); then corr(BP, FD) for each relative step. Example:

    python bench/geometry.py --positions 3 --threads 1
    python bench/geometry.py --device cuda --distance perceptual
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import generators  # noqa: E402
from analysis import distances  # noqa: E402
from analysis import geometry as geo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="dcgan-faces", help="registered generator (default dcgan-faces)")
    parser.add_argument("--distance", default="mse", choices=distances.available())
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--positions", type=int, default=3, help="codes sampled from the prior (default 3)")
    parser.add_argument("--methods", nargs="+", default=list(geo.METHODS), choices=geo.METHODS)
    parser.add_argument("--k", type=int, default=None, help="Lanczos eigenpairs (default d/2 - 1)")
    parser.add_argument("--fd-eps", type=float, default=1e-3, help="eps_rel of hvp_fd in the timing table")
    parser.add_argument("--sweep", type=float, nargs="*", default=[1e-4, 1e-3, 1e-2, 1e-1],
                        help="eps_rel values for the corr(BP, FD) sweep (empty to skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.positions < 1:
        parser.error("--positions must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    G = generators.load(args.generator, device=args.device)
    if args.distance == "perceptual":
        from rig_client.cnn import load_efficientnet_lite0, normalize

        dist = distances.get_distance("perceptual", load_efficientnet_lite0(G.device), normalize)
    else:
        dist = distances.get_distance(args.distance)
    codes = G.sample(args.positions, np.random.default_rng(args.seed))
    print(f"{args.generator} d={G.latent_dim}, distance={args.distance}, device={G.device}, "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}, {platform.processor() or platform.machine()}")

    def hessian(z, method, eps_rel=args.fd_eps):
        if G.device.type == "cuda":
            torch.cuda.synchronize()
        return geo.metric_hessian(G.generate, z, dist, method, k=args.k, eps_rel=eps_rel, device=G.device)

    methods = ["bp"] + [m for m in args.methods if m != "bp"]
    results = {m: [hessian(z, m) for z in codes] for m in methods}
    print(f"\n{'method':<8} {'s/Hessian':>10} {'sd':>7} {'corr(BP)':>9}   (eps_rel={args.fd_eps:g} for hvp_fd)")
    for m, res in results.items():
        seconds = np.array([r.seconds for r in res])
        corr = np.mean([geo.hessian_corr(b.H, r.H) for b, r in zip(results["bp"], res)])
        print(f"{m:<8} {seconds.mean():10.2f} {seconds.std():7.2f} {corr:9.4f}")

    if args.sweep:
        print(f"\n{'eps_rel':>8} {'corr(BP, FD)':>13} {'s/Hessian':>10}")
        for eps in args.sweep:
            start = time.perf_counter()
            corr = [geo.hessian_corr(b.H, hessian(z, "hvp_fd", eps).H) for b, z in zip(results["bp"], codes)]
            print(f"{eps:8.0e} {np.mean(corr):13.4f} {(time.perf_counter() - start) / len(codes):10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
