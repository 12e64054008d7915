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


def map_extent(theta, phi) -> tuple[float, float, float, float]:
    """``imshow``'s extent in degrees for a map on the evenly spaced grid (theta, phi): half a step
    beyond each end, so that every pixel is centred on its grid point."""
    def edges(axis):
        half = (axis[-1] - axis[0]) / (len(axis) - 1) / 2
        return float(np.rad2deg(axis[0] - half)), float(np.rad2deg(axis[-1] + half))

    return (*edges(theta), *edges(phi))


def chart_labels(axis_names: tuple[str, str]) -> dict[str, str]:
    """x and y labels of a (θ, φ) chart whose axes turn towards ``axis_names`` (for ``ax.set``)."""
    return {"xlabel": f"θ (deg, towards {axis_names[0]})", "ylabel": f"φ (deg, towards {axis_names[1]})"}


def map_figure(values, theta=None, phi=None, *, signature: LevelSetSignature | None = None, title: str = "",
               axis_names: tuple[str, str] = ("PC2", "PC3"), label: str = "response") -> Figure:
    """Heatmap of ``values[i, j]`` at ``(theta[i], phi[j])`` with its level sets (`draw_map`); θ (towards
    ``axis_names[0]``) across, φ up, in degrees; the colour bar says ``label``."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    draw_map(ax, values, theta, phi, signature=signature, label=label)
    ax.set(title=title, **chart_labels(axis_names))
    fig.tight_layout()
    return fig


MAP_COLORMAP = "inferno"
#: The level sets' line: white on a black edge, so that one of the two stands out from every colour of the map
#: (inferno runs from black to pale yellow) and in greyscale.
LEVEL_SET_LINE = {"color": "white", "lw": 1.0}
LEVEL_SET_EDGE = {"linewidth": 2.4, "foreground": "black"}


def draw_map(ax, values, theta=None, phi=None, *, signature: LevelSetSignature | None = None,
             label: str = "response"):
    """Draw a map on ``ax`` (its figure gets the colour bar, saying ``label``): ``values[i, j]`` at
    ``(theta[i], phi[j])``, each pixel centred on its grid point, with its level sets (loops solid, lines dashed)
    of ``signature`` (computed from ``values`` if not given); returns the image."""
    from matplotlib.patheffects import Normal, Stroke

    values = np.asarray(values, dtype=float)
    theta, phi = chart_axes(values.shape, theta, phi)
    if signature is None:
        signature = levelset_signature(values, theta=theta, phi=phi)
    image = ax.imshow(values.T, origin="lower", cmap=MAP_COLORMAP, aspect="equal", extent=map_extent(theta, phi))
    ax.figure.colorbar(image, ax=ax, label=label)
    edge = [Stroke(**LEVEL_SET_EDGE), Normal()]
    deg = np.rad2deg
    for curves in signature.contours:
        for c in curves:
            closed = np.array_equal(c[0], c[-1])
            ax.plot(deg(c[:, 0]), deg(c[:, 1]), ls="-" if closed else "--", path_effects=edge, **LEVEL_SET_LINE)
    return image


def plot_map(values, theta=None, phi=None, *, path=None, **options) -> bytes:
    """PNG bytes of `map_figure` (``options`` are its keywords), also written to ``path`` if given."""
    return _png(map_figure(values, theta, phi, **options), path)


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


def homogeneity_figure(consistency: dict[str, dict]) -> Figure:
    """Histograms of corr_log and corr_lin (``hessian_consistency``) per model, one count per position pair:
    the two directions (i's eigenvectors on H_j, j's on H_i) averaged, so the mean is the summary's."""
    n = len(next(iter(consistency.values()))["corr_log"])
    pairs = np.triu_indices(n, k=1)
    fig = Figure(figsize=(8, 3.4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("corr_log", "corr_lin")):
        for label, c in consistency.items():
            M = c[key]
            ax.hist(((M + M.T) / 2)[pairs], bins=30, range=(-1, 1), alpha=0.5, label=label)
        ax.set(xlabel=key, ylabel="position pairs")
        ax.yaxis.get_major_locator().set_params(integer=True)
    axes[0].legend()
    fig.suptitle(f"Hessian homogeneity: {n} positions, {len(pairs[0])} pairs")
    fig.tight_layout()
    return fig


def plot_homogeneity(consistency: dict[str, dict], path=None) -> bytes:
    """PNG bytes of `homogeneity_figure`, also written to ``path`` if given."""
    return _png(homogeneity_figure(consistency), path)


def walk_figure(images, ranks, t, *, eigvals=None, title: str = "") -> Figure:
    """Images ``(len(ranks), len(t), C, H, W)`` in [0, 1] of walks ``z0 + t·u_r`` (``eigen_walk``): one row per
    0-based eigenvector rank r (with λ_r when ``eigvals`` is given), one column per step t."""
    pixels = np.clip(np.asarray(images, dtype=float), 0, 1).transpose(0, 1, 3, 4, 2)
    rows, cols = pixels.shape[:2]
    fig = Figure(figsize=(0.9 * cols + 1.2, 0.9 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, rank in enumerate(ranks):
        for c, step in enumerate(t):
            ax = axes[r, c]
            ax.imshow(pixels[r, c].squeeze(-1) if pixels.shape[-1] == 1 else pixels[r, c], cmap="gray")
            ax.set(xticks=[], yticks=[])
            if r == 0:
                ax.set_title(f"t = {step:+.2g}", fontsize=8)
        lam = "" if eigvals is None else f"\nλ = {eigvals[rank]:.2g}"
        axes[r, 0].set_ylabel(f"rank {rank}{lam}", fontsize=8)
    fig.suptitle(title or "walks along Hessian eigenvectors", fontsize=9)
    fig.tight_layout()
    return fig


def plot_walk(images, ranks, t, *, path=None, **options) -> bytes:
    """PNG bytes of `walk_figure` (``options`` are its keywords), also written to ``path`` if given."""
    return _png(walk_figure(images, ranks, t, **options), path)
