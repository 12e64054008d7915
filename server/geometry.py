"""``actmax analyze geometry``: the metric geometry of a registered generator against its shuffled-weights
control, written as JSON, PNG and NPZ (the pure computations are in `analysis.geometry`)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from analysis.geometry import (
    GeometryError,
    HessianResult,
    average_hessian,
    check_k,
    code_distance_r,
    eigen_walk,
    hessian_consistency,
    metric_hessian,
    shuffle_weights,
    spectrum_stats,
)
from analysis.plots import plot_homogeneity, plot_spectra, plot_walk
from rig_client.version import package_version


def report(
    generator_name: str,
    out_dir: str | Path,
    *,
    n_positions: int = 30,
    method: str = "bp",
    distance: str = "mse",
    device: str | torch.device = "cpu",
    weights: str | Path | None = None,
    seed: int = 0,
    k: int | None = None,
    eps_rel: float = 1e-3,
    walk_ranks: Sequence[int] = (0, 1, 3, 7, 15, 31),
    walk_maxdist: float = 2.0,
    walk_steps: int = 7,
    progress: bool = True,
) -> dict:
    """Metric geometry of a registered generator against its shuffled-weights control.

    Backs ``actmax analyze geometry GENERATOR``. Computes ``n_positions`` Hessians at codes drawn
    from the generator's prior, for the generator and for a copy whose every parameter tensor is
    permuted (``shuffle_weights``), then writes to ``out_dir``:

    - ``summary.json``: per model (``real``, ``shuffled``) dims_99/999/9999, corr_log/lin/vec
      mean and median, the correlation of code distance with corr_log/lin (``code_distance_r_*``,
      null below 3 positions), plus settings, timing, ``d`` and the ``k`` eigenvalues per Hessian
      (k < d for the Lanczos methods: dims and corr_log/lin are then of the top k, see ``spectrum_stats``);
    - ``spectra.png``: log10(λ/λmax) against rank, mean and 5–95 percentile band;
    - ``homogeneity.png``: off-diagonal corr_log and corr_lin across position pairs;
    - ``walk_real.png``, ``walk_shuffled.png``: walks along the top eigenvectors at the first position,
      rows labelled with the rank and λ, columns with t;
    - ``eigenbasis.npz``: ``basis`` (d, r) descending eigenvectors of the real H_avg and ``eigvals`` (r,),
      the r eigenvalues above round-off (``eigenbasis_dropped`` = d − r) — what the ``hess-cma`` optimizer takes;
    - ``hessians.npz``: codes, per-position eigenvalues (N, k) and Hessians (N, d, d) for both models.

    Returns the summary dict. ``method``/``k``/``eps_rel`` are passed to ``metric_hessian``;
    ``distance`` names an ``analysis.distances`` distance (``perceptual`` on EfficientNet-Lite0 features).
    The weights load as ``actmax serve`` loads them: ``weights`` (a file or folder), else
    ``ACTMAX_WEIGHTS_DIR/<generator>/``, else the generator's standard locations.
    """
    import generators
    from tqdm import tqdm

    from analysis.distances import get_distance
    from rig_client.cnn import load_efficientnet_lite0, normalize
    from server.settings import load_settings

    if n_positions < 2:
        raise GeometryError(f"n_positions must be >= 2 for homogeneity, got {n_positions}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = generators.weights_source(generator_name, load_settings().weights_dir, weights)
    gen = generators.load(generator_name, device=device, weights=source)
    check_k(method, k, gen.latent_dim)  # before the bar: the latent size is known once the generator is
    dist = (get_distance(distance, load_efficientnet_lite0(gen.device), normalize) if distance == "perceptual"
            else get_distance(distance))
    rng = np.random.default_rng(seed)
    control = copy.copy(gen)
    control.module = shuffle_weights(gen.module, rng)
    codes = gen.sample(n_positions, rng)
    models = {"real": gen, "shuffled": control}

    results: dict[str, list[HessianResult]] = {name: [] for name in models}
    start = time.perf_counter()
    with tqdm(total=2 * n_positions, desc=f"{generator_name} Hessians ({method})", disable=not progress) as bar:
        for name, model in models.items():
            for z in codes:
                results[name].append(
                    metric_hessian(model.generate, z, dist, method, k=k, eps_rel=eps_rel, device=gen.device)
                )
                bar.update()
    seconds = time.perf_counter() - start

    summary: dict = {
        "generator": generator_name,
        "method": method,
        "distance": distance,
        "n_positions": n_positions,
        "seed": seed,
        "device": str(gen.device),
        "actmax_version": package_version(),
        "seconds_per_hessian": seconds / (2 * n_positions),
    }
    d, k = codes.shape[1], len(results["real"][0].eigvals)
    summary.update(d=d, k=k)
    spectra, consistency = {}, {}
    for name, res in results.items():
        spectra[name] = np.stack([r.eigvals for r in res])
        consistency[name] = hessian_consistency(np.stack([r.H for r in res]), k=k)
        scalars = {key: v for key, v in consistency[name].items() if not isinstance(v, np.ndarray)}
        summary[name] = {**spectrum_stats(spectra[name], dim=d), **scalars, **code_distance_r(codes, consistency[name])}

    plot_spectra(spectra, out / "spectra.png")
    plot_homogeneity(consistency, out / "homogeneity.png")
    steps = np.linspace(-walk_maxdist, walk_maxdist, walk_steps)  # eigen_walk's t
    for name, model in models.items():
        res = results[name][0]
        ranks = [r for r in walk_ranks if r < res.eigvecs.shape[1]]
        walk = eigen_walk(model.generate, codes[0], res.eigvecs, ranks, walk_maxdist, walk_steps, device=gen.device)
        plot_walk(walk, ranks, steps, eigvals=res.eigvals, path=out / f"walk_{name}.png",
                  title=f"{generator_name} ({name}), position 0: z0 + t·u_rank")
    _, avg_vals, avg_vecs = average_hessian(np.stack([r.H for r in results["real"]]))
    # H_avg is PSD: eigenvalues at or below round-off (numpy's matrix_rank tolerance) are dropped, not clipped.
    keep = avg_vals > avg_vals[0] * d * np.finfo(float).eps
    summary["eigenbasis_dropped"] = int(d - keep.sum())
    np.savez(out / "eigenbasis.npz", basis=avg_vecs[:, keep], eigvals=avg_vals[keep], generator=generator_name,
             method=method)
    np.savez(out / "hessians.npz", codes=codes, **{f"eigvals_{n}": s for n, s in spectra.items()},
             **{f"H_{n}": np.stack([r.H for r in res]) for n, res in results.items()})
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
