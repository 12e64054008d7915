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

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor
from torch.autograd import forward_ad

from analysis import AnalysisError

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


def check_k(method: str, k: int | None, d: int) -> None:
    """Raise `GeometryError` unless ``metric_hessian`` can give ``k`` eigenpairs by ``method`` at latent size ``d``:
    1 to d for ``bp``/``jac``, 1 to d − 1 for the Lanczos methods; None (the method's default) always. Cheap: call it
    before the Hessians."""
    if k is None:
        return
    top = d if method in ("bp", "jac") else d - 1
    if not 1 <= k <= top:
        hint = f"; use method 'bp' for all {d}" if k >= d and top < d else ""
        raise GeometryError(f"k = {k} eigenpairs: method {method} gives 1 to {top} at latent size {d}{hint}")


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
    check_k(method, k, d)
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
