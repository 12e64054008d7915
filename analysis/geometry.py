"""Metric Hessians of a generator's image manifold (Wang & Ponce, ICLR 2021; spec A).

``H(z0) = ∂²/∂dz² D(G(z0), G(z0 + dz))`` at ``dz = 0``, so locally ``D ≈ dzᵀ H dz``. ``G`` is any
callable mapping codes ``(n, d)`` to images ``(n, ...)`` that treats samples independently (e.g. a
network in eval mode, or ``Generator.generate``); ``dist`` is a d² distance from
``analysis.distances`` (or any callable ``(x1, x2) -> (n,)``; the ``jac`` method needs ``features``).

Methods (``metric_hessian``):
  - ``bp``     full double backprop, row by row (batched: one row per copy of z0 in a batch);
  - ``hvp_ad`` autodiff Hessian-vector products + Lanczos (ARPACK ``eigsh``);
  - ``hvp_fd`` finite-difference HVPs ``[g(z0+εv) − g(z0−εv)]/2ε``, ``ε = eps_rel·‖z0‖/‖v‖``,
    both codes in one batch of 2, + Lanczos;
  - ``jac``    Jacobian Gram form ``H = 2 JᵀJ`` of the feature map ``φ∘G`` (forward-mode AD).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn
from torch.autograd import forward_ad

from analysis import AnalysisError

__all__ = [
    "GeometryError",
    "HessianResult",
    "InversionResult",
    "METHODS",
    "metric_hessian",
    "hvp_operator",
    "lanczos_topk",
    "hessian_corr",
    "spectrum_stats",
    "hessian_consistency",
    "average_hessian",
    "shuffle_weights",
    "eigen_walk",
    "save_montage",
    "invert",
    "report",
]

METHODS = ("bp", "hvp_ad", "hvp_fd", "jac")

Generator = Callable[[Tensor], Tensor]
Dist = Callable[[Tensor, Tensor], Tensor]


class GeometryError(AnalysisError):
    """Bad input to a geometry computation; the message says what to change."""


@dataclass(frozen=True)
class HessianResult:
    """Eigenvalues (descending), eigenvectors as columns ``(d, k)``, the (reconstructed) ``H``."""

    eigvals: np.ndarray
    eigvecs: np.ndarray
    H: np.ndarray
    method: str
    seconds: float


@dataclass(frozen=True)
class InversionResult:
    """Final code ``(d,)``, loss per step ``(steps,)`` and the final image ``(1, ...)``."""

    z: np.ndarray
    losses: np.ndarray
    image: Tensor


# --------------------------------------------------------------------------- the distance function


class _Objective:
    """``D(z) = dist(x0, pre(G(z)))`` per row of ``z``, with ``x0 = pre(G(z0))`` fixed."""

    def __init__(self, G, z0, dist, preprocess, device, dtype) -> None:
        if not callable(G) or not callable(dist):
            raise GeometryError("G and dist must be callables: G(codes) -> images, dist(x1, x2) -> (n,)")
        self.device = torch.device(device) if device is not None else _infer_device(z0)
        self.dtype = dtype
        z0 = torch.as_tensor(np.asarray(z0) if not isinstance(z0, Tensor) else z0)
        if z0.numel() == 0 or z0.dim() > 2 or (z0.dim() == 2 and z0.shape[0] != 1):
            raise GeometryError(f"z0 must be one code of shape (d,) or (1, d), got {tuple(z0.shape)}")
        self.z0 = z0.detach().reshape(1, -1).to(self.device, dtype)
        self.G, self.dist, self.preprocess = G, dist, preprocess
        with torch.no_grad():
            self.x0 = self.images(self.z0).detach()
            d = self(self.z0)
        if d.shape != (1,):
            raise GeometryError(f"dist must return one value per image pair, shape (n,); got {tuple(d.shape)}")

    @property
    def dim(self) -> int:
        return self.z0.shape[1]

    def images(self, z: Tensor) -> Tensor:
        x = self.G(z)
        if not isinstance(x, Tensor) or x.shape[0] != z.shape[0]:
            raise GeometryError("G must return a tensor with one image per code (batch first)")
        return self.preprocess(x) if self.preprocess is not None else x

    def __call__(self, z: Tensor) -> Tensor:
        return self.dist(self.x0, self.images(z))

    def grad(self, z: Tensor, create_graph: bool = False) -> Tensor:
        """Gradient of ``D`` at each row of ``z`` (a tensor that requires grad)."""
        (g,) = torch.autograd.grad(self(z).sum(), z, create_graph=create_graph)
        return g

    def hvp_ad(self) -> Callable[[Tensor], Tensor]:
        """HVP through the gradient graph at ``dz = 0`` (built once)."""
        dz = torch.zeros_like(self.z0, requires_grad=True)
        g = self.grad(self.z0 + dz, create_graph=True)

        def hvp(v: Tensor) -> Tensor:
            (hv,) = torch.autograd.grad(g, dz, grad_outputs=v.reshape(1, -1), retain_graph=True)
            return hv.reshape(-1)

        return hvp

    def hvp_fd(self, eps_rel: float) -> Callable[[Tensor], Tensor]:
        """Central-difference HVP with relative step ``ε = eps_rel·‖z0‖/‖v‖`` (‖z0‖ = 0 counts as 1)."""
        if not eps_rel > 0:
            raise GeometryError(f"eps_rel must be positive, got {eps_rel}")
        scale = float(self.z0.norm()) or 1.0

        def hvp(v: Tensor) -> Tensor:
            eps = eps_rel * scale / float(v.norm())
            z = torch.cat([self.z0 + eps * v, self.z0 - eps * v]).requires_grad_(True)
            g = self.grad(z)
            return (g[0] - g[1]) / (2 * eps)

        return hvp


def _infer_device(z0) -> torch.device:
    return z0.device if isinstance(z0, Tensor) else torch.device("cpu")


# --------------------------------------------------------------------------- the four methods


def _hessian_bp(obj: _Objective, batch_size: int) -> np.ndarray:
    d = obj.dim
    H = np.empty((d, d))
    for start in range(0, d, batch_size):
        rows = torch.arange(start, min(d, start + batch_size), device=obj.device)
        dz = torch.zeros(len(rows), d, device=obj.device, dtype=obj.dtype, requires_grad=True)
        g = obj.grad(obj.z0 + dz, create_graph=True)  # row b: gradient at copy b
        (h,) = torch.autograd.grad(g[torch.arange(len(rows)), rows].sum(), dz)  # row b: H[rows[b]]
        H[start : start + len(rows)] = h.double().cpu().numpy()
    return (H + H.T) / 2


def _hessian_jac(obj: _Objective, batch_size: int) -> np.ndarray:
    features = getattr(obj.dist, "features", None)
    if features is None:
        raise GeometryError(
            "method 'jac' needs a distance with a features(x) method (D = ||φ(x1) − φ(x2)||²), "
            "e.g. analysis.distances.MSEDistance; use 'bp' for other distances"
        )
    d = obj.dim
    eye = torch.eye(d, device=obj.device, dtype=obj.dtype)
    columns = []
    for start in range(0, d, batch_size):
        tangent = eye[start : start + batch_size]
        with forward_ad.dual_level(), warnings.catch_warnings():
            # torch's first make_dual loads jvp decompositions through the deprecated torch.jit.script
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
            z = forward_ad.make_dual(obj.z0.repeat(len(tangent), 1), tangent)
            out = features(obj.images(z))
            columns.append(forward_ad.unpack_dual(out).tangent.double().cpu())
    J = torch.cat(columns).T.numpy()  # (m, d)
    return 2.0 * J.T @ J


def _as_operator(hvp: Callable[[Tensor], Tensor], obj: _Objective) -> LinearOperator:
    def matvec(v: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), device=obj.device, dtype=obj.dtype)
        return hvp(t).detach().double().cpu().numpy()

    return LinearOperator((obj.dim, obj.dim), matvec=matvec, dtype=np.float64)


def hvp_operator(
    G: Generator,
    z0,
    dist: Dist,
    *,
    mode: str = "ad",
    eps_rel: float = 1e-3,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> LinearOperator:
    """The metric Hessian at ``z0`` as a scipy ``LinearOperator`` (float64 in and out).

    ``mode="ad"``: autodiff HVP through the gradient graph (built once at ``dz = 0``);
    ``mode="fd"``: central finite difference of gradients with relative step ``eps_rel``.
    """
    obj = _Objective(G, z0, dist, preprocess, device, dtype)
    builders = {"ad": obj.hvp_ad, "fd": lambda: obj.hvp_fd(eps_rel)}
    if mode not in builders:
        raise GeometryError(f"mode must be 'ad' or 'fd', got {mode!r}")
    return _as_operator(builders[mode](), obj)


def lanczos_topk(
    op: LinearOperator | np.ndarray,
    k: int,
    *,
    tol: float = 1e-6,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs by magnitude with ARPACK Lanczos, sorted by descending eigenvalue.

    ``ncv`` defaults to scipy's ``min(n, max(2k + 1, 20))`` (the reference used ``min(2k, n − 1)``);
    the start vector is seeded, so results are reproducible.
    """
    n = op.shape[0]
    if not 1 <= k < n:
        raise GeometryError(f"Lanczos needs 1 <= k < n = {n}, got k={k}; use method 'bp' for all {n}")
    v0 = np.random.default_rng(seed).standard_normal(n)
    vals, vecs = eigsh(op, k=k, which="LM", ncv=ncv, maxiter=maxiter, tol=tol, v0=v0)
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def metric_hessian(
    G: Generator,
    z0,
    dist: Dist,
    method: str = "bp",
    *,
    k: int | None = None,
    eps_rel: float = 1e-3,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 100,
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: int = 0,
) -> HessianResult:
    """Metric Hessian of ``G`` at ``z0`` under ``dist`` by one of ``METHODS``.

    Args:
        G: codes ``(n, d)`` -> images; must live on ``device`` and accept ``dtype`` codes.
        z0: one code, ``(d,)`` or ``(1, d)``.
        dist: d² distance ``(x1, x2) -> (n,)``; ``jac`` also needs ``dist.features``.
        method: ``bp`` | ``hvp_ad`` | ``hvp_fd`` | ``jac``.
        k: eigenpairs for the Lanczos methods (default ``d // 2 − 1``, the reference cutoff);
            ``bp``/``jac`` compute the full ``H`` and return its top ``k`` (default all).
        eps_rel: relative finite-difference step of ``hvp_fd``.
        preprocess: optional map applied to images before ``dist`` (e.g. a resize).
        batch_size: codes per forward pass for ``bp`` (rows) and ``jac`` (columns).
        tol, maxiter, seed: ARPACK tolerance, iteration cap and start vector.

    Returns:
        ``HessianResult`` with float64 ``eigvals`` (descending), ``eigvecs`` ``(d, k)`` and ``H``
        (exact for ``bp``/``jac``, ``U diag(λ) Uᵀ`` for the Lanczos methods).
    """
    if method not in METHODS:
        raise GeometryError(f"unknown method {method!r}; choose one of {METHODS}")
    if batch_size < 1:
        raise GeometryError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    obj = _Objective(G, z0, dist, preprocess, device, dtype)
    d = obj.dim
    if method in ("bp", "jac"):
        H = (_hessian_bp if method == "bp" else _hessian_jac)(obj, batch_size)
        vals, vecs = np.linalg.eigh(H)
        vals, vecs = vals[::-1], vecs[:, ::-1]
        if k is not None:
            vals, vecs = vals[:k], vecs[:, :k]
    else:
        k = k if k is not None else max(1, d // 2 - 1)
        hvp = obj.hvp_ad() if method == "hvp_ad" else obj.hvp_fd(eps_rel)
        vals, vecs = lanczos_topk(_as_operator(hvp, obj), k, tol=tol, maxiter=maxiter, seed=seed)
        H = (vecs * vals) @ vecs.T
    return HessianResult(
        np.ascontiguousarray(vals), np.ascontiguousarray(vecs), H, method, time.perf_counter() - start
    )


# --------------------------------------------------------------------------- spectra and consistency


def hessian_corr(H1: np.ndarray, H2: np.ndarray) -> float:
    """Pearson correlation of the vectorised matrices (the spec's corr(vec H))."""
    return float(np.corrcoef(np.ravel(H1), np.ravel(H2))[0, 1])


def spectrum_stats(eigvals, qs: Sequence[float] = (0.99, 0.999, 0.9999)) -> dict[str, int]:
    """Dimensions needed for each fraction ``q`` of the spectrum (spec A4).

    ``eigvals`` is one spectrum ``(d,)`` or one per position ``(N, d)``. Each row is sorted
    descending, averaged rank-wise, then ``|λ̄|`` is sorted descending, ``c_k = Σ_{j≤k}|λ̄_j| / Σ|λ̄|``
    and ``dims_q = #{k : c_k < q}`` (the fraction q is reached at rank dims_q + 1).
    Keys are ``dims_99``, ``dims_999``, ... (the digits of q after the point).
    """
    lam = np.atleast_2d(np.asarray(eigvals, dtype=float))
    if lam.ndim != 2 or lam.shape[1] == 0 or not np.all(np.isfinite(lam)):
        raise GeometryError("eigvals must be a finite (d,) or (N, d) array")
    mean = np.sort(lam, axis=1)[:, ::-1].mean(0)
    mag = np.sort(np.abs(mean))[::-1]
    total = mag.sum()
    if total <= 0:
        raise GeometryError("the spectrum is all zeros; dims_q is undefined")
    c = np.cumsum(mag) / total
    out = {}
    for q in qs:
        if not 0 < q < 1:
            raise GeometryError(f"fractions q must lie in (0, 1), got {q}")
        out["dims_" + f"{q:.10g}".split(".")[1]] = int(np.sum(c < q))
    return out


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair, over entries finite in both."""
    mask = np.isfinite(a) & np.isfinite(b)
    n = mask.sum(1)
    a, b = np.where(mask, a, 0.0), np.where(mask, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        am = a - np.where(mask, a.sum(1, keepdims=True) / n[:, None], 0.0)
        bm = b - np.where(mask, b.sum(1, keepdims=True) / n[:, None], 0.0)
        return (am * bm).sum(1) / np.sqrt((am**2).sum(1) * (bm**2).sum(1))


def _offdiag_stats(M: np.ndarray, name: str) -> dict[str, float]:
    off = M[~np.eye(len(M), dtype=bool)]
    off = off[np.isfinite(off)]
    return {f"{name}_mean": float(off.mean()), f"{name}_median": float(np.median(off))}


def hessian_consistency(Hs) -> dict:
    """Homogeneity of Hessians across positions (spec A5).

    For positions i, j: ``α_ij = diag((U_iᵀU_j) Λ_j (U_iᵀU_j)ᵀ)`` (curvature of H_j along H_i's
    eigenvectors), ``corr_log[i, j] = Pearson(log10 α_ij, log10 λ_j)`` rank by rank with
    non-finite logs masked, ``corr_lin`` the same on a linear scale, ``corr_vec`` the correlation
    of vec H_i and vec H_j. Returns the three ``(N, N)`` matrices and the mean and median of their
    off-diagonal entries (``corr_log_mean``, ``corr_log_median``, ...).
    """
    Hs = np.asarray(Hs, dtype=float)
    if Hs.ndim != 3 or Hs.shape[1] != Hs.shape[2] or len(Hs) < 2:
        raise GeometryError(f"Hs must be (N >= 2, d, d), got shape {Hs.shape}")
    lam, U = np.linalg.eigh((Hs + Hs.transpose(0, 2, 1)) / 2)  # ascending rank
    N = len(Hs)
    corr_log, corr_lin = np.empty((N, N)), np.empty((N, N))
    with np.errstate(invalid="ignore", divide="ignore"):
        log_lam = np.log10(lam)
        for i in range(N):
            M = np.einsum("ak,jal->jkl", U[i], U)  # U_iᵀ U_j for every j
            alpha = np.einsum("jkl,jl->jk", M**2, lam)
            corr_log[i] = _rowwise_pearson(np.log10(alpha), log_lam)
            corr_lin[i] = _rowwise_pearson(alpha, lam)
    corr_vec = np.corrcoef(Hs.reshape(N, -1))
    out = {"corr_log": corr_log, "corr_lin": corr_lin, "corr_vec": corr_vec}
    for name in ("corr_log", "corr_lin", "corr_vec"):
        out.update(_offdiag_stats(out[name], name))
    return out


def average_hessian(Hs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``H_avg = mean_i H_i`` and its eigenpairs (eigenvalues descending, eigenvectors as columns)."""
    Hs = np.asarray(Hs, dtype=float)
    if Hs.ndim != 3 or Hs.shape[1] != Hs.shape[2]:
        raise GeometryError(f"Hs must be (N, d, d), got shape {Hs.shape}")
    H = Hs.mean(0)
    vals, vecs = np.linalg.eigh((H + H.T) / 2)
    return H, vals[::-1].copy(), vecs[:, ::-1].copy()


def shuffle_weights(module: nn.Module, rng: np.random.Generator | int | None = None) -> nn.Module:
    """Copy of ``module`` with the entries of every parameter tensor randomly permuted (spec A5).

    Each tensor keeps its distribution; what training learned is destroyed. Buffers (e.g.
    BatchNorm running statistics) are kept. The original module is not modified.
    """
    rng = np.random.default_rng(rng)
    shuffled = copy.deepcopy(module)
    with torch.no_grad():
        for p in shuffled.parameters():
            perm = torch.as_tensor(rng.permutation(p.numel()), device=p.device)
            p.copy_(p.reshape(-1)[perm].reshape(p.shape))
    return shuffled


# --------------------------------------------------------------------------- walks and inversion


def eigen_walk(
    G: Generator,
    z0,
    eigvecs: np.ndarray,
    ranks: Sequence[int],
    maxdist: float,
    n_steps: int = 7,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Images along ``z0 + t·u_r`` for ``t`` in ``linspace(−maxdist, maxdist, n_steps)``.

    ``ranks`` are 0-based columns of ``eigvecs`` (0 = top eigenvector). Returns
    ``(len(ranks), n_steps, *image_shape)`` on the CPU.
    """
    device = torch.device(device) if device is not None else _infer_device(z0)
    eigvecs = np.asarray(eigvecs, dtype=float)
    z0 = np.asarray(z0.detach().cpu() if isinstance(z0, Tensor) else z0, dtype=float).reshape(-1)
    if eigvecs.ndim != 2 or eigvecs.shape[0] != z0.size:
        raise GeometryError(f"eigvecs must be (d={z0.size}, k), got shape {eigvecs.shape}")
    bad = [r for r in ranks if not 0 <= r < eigvecs.shape[1]]
    if bad or n_steps < 1:
        raise GeometryError(f"ranks must lie in [0, {eigvecs.shape[1]}) and n_steps >= 1; got {bad}, {n_steps}")
    t = np.linspace(-maxdist, maxdist, n_steps)
    codes = z0[None, None] + t[None, :, None] * eigvecs[:, list(ranks)].T[:, None, :]
    z = torch.as_tensor(codes.reshape(-1, z0.size), device=device, dtype=dtype)
    with torch.no_grad():
        images = G(z).detach().cpu()
    return images.reshape(len(ranks), n_steps, *images.shape[1:])


def save_montage(images: Tensor, path: str | Path) -> Path:
    """Write ``(rows, cols, C, H, W)`` images in [0, 1] as one PNG grid with 2-px gaps."""
    from PIL import Image

    images = torch.as_tensor(images)
    if images.dim() != 5 or images.shape[2] not in (1, 3):
        raise GeometryError(f"montage needs (rows, cols, 1|3, H, W), got {tuple(images.shape)}")
    rows, cols, C, h, w = images.shape
    gap = 2
    canvas = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, 3))
    pixels = images.clamp(0, 1).expand(rows, cols, 3, h, w).permute(0, 1, 3, 4, 2).numpy()
    for r in range(rows):
        for c in range(cols):
            canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = pixels[r, c]
    path = Path(path)
    Image.fromarray((canvas * 255).round().astype(np.uint8)).save(path)
    return path


def invert(
    G: Generator,
    target_image: Tensor,
    dist: Dist,
    basis: np.ndarray | None = None,
    steps: int = 200,
    lr: float = 0.05,
    *,
    z_init=None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> InversionResult:
    """Gradient inversion ``min_z dist(target, G(z))`` with Adam on coefficients ``c``, ``z = U c``.

    ``basis=None`` is the identity (Adam on z); a ``(d, k)`` orthonormal ``U`` (e.g. the
    descending eigenvectors of ``H_avg``) aligns Adam's per-coordinate scaling with the curvature
    axes (spec A7). Both start from ``z_init`` projected onto the basis (``z_init`` is required with
    the identity; with a basis it defaults to zeros), so runs with the same ``lr``, ``steps`` and
    ``z_init`` form a paired comparison. ``losses[t]`` is the loss before step ``t``.
    """
    if steps < 1 or not lr > 0:
        raise GeometryError(f"steps must be >= 1 and lr > 0, got {steps}, {lr}")
    device = torch.device(device) if device is not None else target_image.device
    target = target_image.detach().to(device, dtype)
    if target.dim() == 3:
        target = target[None]
    if basis is None:
        if z_init is None:
            raise GeometryError("invert needs z_init (d,) when basis is None, to know the latent size")
        U = torch.eye(np.asarray(z_init).size, device=device, dtype=dtype)
    else:
        U = torch.as_tensor(np.asarray(basis), device=device, dtype=dtype)
        if U.dim() != 2:
            raise GeometryError(f"basis must be (d, k), got shape {tuple(U.shape)}")
    z_init = torch.zeros(U.shape[0]) if z_init is None else torch.as_tensor(np.asarray(z_init)).reshape(-1)
    if z_init.numel() != U.shape[0]:
        raise GeometryError(f"z_init has {z_init.numel()} entries but the basis has d = {U.shape[0]}")
    c = (U.T @ z_init.to(device, dtype)).clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=lr)
    losses = np.empty(steps)
    for step in range(steps):
        opt.zero_grad()
        loss = dist(target, G((U @ c)[None])).mean()
        loss.backward()
        opt.step()
        losses[step] = loss.item()
    with torch.no_grad():
        z = U @ c
        image = G(z[None]).detach()
    return InversionResult(z.double().cpu().numpy(), losses, image)


# --------------------------------------------------------------------------- report


def _plot_spectra(spectra: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, lam in spectra.items():
        rel = np.log10(np.clip(lam / lam[:, :1], 1e-300, None))
        rank = np.arange(1, lam.shape[1] + 1)
        lo, hi = np.percentile(rel, [5, 95], axis=0)
        ax.fill_between(rank, lo, hi, alpha=0.3)
        ax.plot(rank, rel.mean(0), label=label)
    ax.set(xlabel="eigenvalue rank", ylabel="log10(λ / λmax)", title="metric spectra (mean, 5–95%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_homogeneity(consistency: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key in zip(axes, ("corr_log", "corr_lin")):
        for label, c in consistency.items():
            M = c[key]
            ax.hist(M[~np.eye(len(M), dtype=bool)], bins=30, range=(-1, 1), alpha=0.5, label=label)
        ax.set(xlabel=key, ylabel="position pairs")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _code_distance_r(codes: np.ndarray, consistency: dict) -> dict[str, float]:
    """Pearson r between ‖z_i − z_j‖ and corr_log/corr_lin over position pairs (spec C3)."""
    off = ~np.eye(len(codes), dtype=bool)
    distance = np.linalg.norm(codes[:, None] - codes[None], axis=-1)[off]
    out = {}
    for key in ("corr_log", "corr_lin"):
        values = consistency[key][off]
        ok = np.isfinite(values)
        r = np.corrcoef(distance[ok], values[ok])[0, 1] if len(codes) > 2 and ok.sum() > 2 else np.nan
        out[f"code_distance_r_{key.split('_')[1]}"] = float(r) if np.isfinite(r) else None
    return out


def report(
    generator_name: str,
    out_dir: str | Path,
    *,
    n_positions: int = 30,
    method: str = "bp",
    distance: str = "mse",
    device: str | torch.device = "cpu",
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
      null below 3 positions), plus settings and timing;
    - ``spectra.png``: log10(λ/λmax) against rank, mean and 5–95 percentile band;
    - ``homogeneity.png``: off-diagonal corr_log and corr_lin across position pairs;
    - ``walk_real.png``, ``walk_shuffled.png``: walks along the top eigenvectors (rows = ranks)
      at the first position;
    - ``eigenbasis.npz``: ``basis`` (d, d) descending eigenvectors of the real H_avg and
      ``eigvals`` (d,) — what the ``hess-cma`` optimizer takes;
    - ``hessians.npz``: codes, per-position eigenvalues and Hessians for both models.

    Returns the summary dict. ``method``/``k``/``eps_rel`` are passed to ``metric_hessian``;
    ``distance`` names an ``analysis.distances`` distance.
    """
    import generators
    from tqdm import tqdm

    from analysis import distances

    if n_positions < 2:
        raise GeometryError(f"n_positions must be >= 2 for homogeneity, got {n_positions}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = generators.load(generator_name, device=device)
    dist = distances.get_distance(distance, device=gen.device)
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
        "seconds_per_hessian": seconds / (2 * n_positions),
    }
    spectra, consistency = {}, {}
    for name, res in results.items():
        spectra[name] = np.stack([r.eigvals for r in res])
        consistency[name] = hessian_consistency(np.stack([r.H for r in res]))
        scalars = {key: v for key, v in consistency[name].items() if not isinstance(v, np.ndarray)}
        summary[name] = {**spectrum_stats(spectra[name]), **scalars, **_code_distance_r(codes, consistency[name])}

    _plot_spectra(spectra, out / "spectra.png")
    _plot_homogeneity(consistency, out / "homogeneity.png")
    for name, model in models.items():
        res = results[name][0]
        ranks = [r for r in walk_ranks if r < res.eigvecs.shape[1]]
        walk = eigen_walk(model.generate, codes[0], res.eigvecs, ranks, walk_maxdist, walk_steps, device=gen.device)
        save_montage(walk, out / f"walk_{name}.png")
    _, avg_vals, avg_vecs = average_hessian(np.stack([r.H for r in results["real"]]))
    np.savez(out / "eigenbasis.npz", basis=avg_vecs, eigvals=avg_vals, generator=generator_name, method=method)
    np.savez(out / "hessians.npz", codes=codes, **{f"eigvals_{n}": s for n, s in spectra.items()},
             **{f"H_{n}": np.stack([r.H for r in res]) for n, res in results.items()})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
