"""PNG figures of tuning maps and their signatures (matplotlib's Agg canvas, no pyplot state)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.topology import LevelSetSignature, chart_axes, levelset_signature


def _png(fig: Figure, path) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def plot_map(values, theta=None, phi=None, *, signature: LevelSetSignature | None = None,
             title: str = "", path=None) -> bytes:
    """Heatmap of ``values[i, j]`` at ``(theta[i], phi[j])`` with its level sets (loops solid,
    lines dashed); θ (PC2) across, φ (PC3) up, in degrees. Returns PNG bytes, also written to
    ``path`` if given."""
    values = np.asarray(values, dtype=float)
    theta, phi = chart_axes(values.shape, theta, phi)
    if signature is None:
        signature = levelset_signature(values, theta=theta, phi=phi)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    deg = np.rad2deg
    image = ax.imshow(values.T, origin="lower", cmap="inferno", aspect="equal",
                      extent=(deg(theta[0]), deg(theta[-1]), deg(phi[0]), deg(phi[-1])))
    fig.colorbar(image, ax=ax, label="response")
    for curves in signature.contours:
        for c in curves:
            closed = np.array_equal(c[0], c[-1])
            ax.plot(deg(c[:, 0]), deg(c[:, 1]), color="cyan", lw=0.7, ls="-" if closed else "--")
    ax.set_xlabel("θ (deg, towards PC2)")
    ax.set_ylabel("φ (deg, towards PC3)")
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig, path)


def plot_signature(signature: LevelSetSignature, *, title: str = "", path=None) -> bytes:
    """Branches, loops and lines per level (as a fraction of the maximum). Returns PNG bytes."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for name in ("n_branch", "n_loop", "n_line"):
        ax.plot(signature.level_frac, getattr(signature, name), "o-", ms=3, label=name[2:])
    ax.axvline(signature.level_frac[signature.lowest_loop_index], color="k", ls=":", lw=1,
               label="lowest single loop")
    ax.set_xlabel("level / max")
    ax.set_ylabel("count")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig, path)


def plot_spectra(spectra: dict[str, np.ndarray], path=None) -> bytes:
    """Metric spectra log10(λ/λmax) against rank per model (``(positions, d)`` each): mean and 5–95% band."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for label, lam in spectra.items():
        rel = np.log10(np.clip(lam / lam[:, :1], 1e-300, None))
        rank = np.arange(1, lam.shape[1] + 1)
        lo, hi = np.percentile(rel, [5, 95], axis=0)
        ax.fill_between(rank, lo, hi, alpha=0.3)
        ax.plot(rank, rel.mean(0), label=label)
    ax.set(xlabel="eigenvalue rank", ylabel="log10(λ / λmax)", title="metric spectra (mean, 5–95%)")
    ax.legend()
    fig.tight_layout()
    return _png(fig, path)


def plot_homogeneity(consistency: dict[str, dict], path=None) -> bytes:
    """Histograms of the off-diagonal corr_log and corr_lin (``hessian_consistency``) per model."""
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("corr_log", "corr_lin")):
        for label, c in consistency.items():
            M = c[key]
            ax.hist(M[~np.eye(len(M), dtype=bool)], bins=30, range=(-1, 1), alpha=0.5, label=label)
        ax.set(xlabel=key, ylabel="position pairs")
    axes[0].legend()
    fig.tight_layout()
    return _png(fig, path)
