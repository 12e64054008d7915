"""How a generator's metric Hessians look: spectra, homogeneity across codes, the shuffled-weights control."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from analysis.geometry.hessian import GeometryError

def hessian_corr(H1: np.ndarray, H2: np.ndarray) -> float:
    """Pearson correlation of the vectorised matrices (the spec's corr(vec H))."""
    return float(np.corrcoef(np.ravel(H1), np.ravel(H2))[0, 1])


def spectrum_stats(
    eigvals, qs: Sequence[float] = (0.99, 0.999, 0.9999), *, dim: int | None = None
) -> dict[str, int | None]:
    """Dimensions needed for each fraction ``q`` of the spectrum (spec A4).

    ``eigvals`` is one spectrum ``(k,)`` or one per position ``(N, k)``. Each row is sorted
    descending, averaged rank-wise, then ``|λ̄|`` is sorted descending, ``c_k = Σ_{j≤k}|λ̄_j| / Σ|λ̄|``
    and ``dims_q = #{k : c_k < q}`` (the fraction q is reached at rank dims_q + 1).
    Keys are ``dims_99``, ``dims_999``, ... (the digits of q after the point).

    ``dim`` is the full dimension d when the rows hold only the top k < d eigenvalues (the Lanczos
    methods). The fractions are then of the top-k sum, so dims_q is a lower bound on the full
    spectrum's, and a q that only the k-th eigenvalue reaches (dims_q = k − 1) is beyond what k
    resolves: its value is None.
    """
    lam = np.atleast_2d(np.asarray(eigvals, dtype=float))
    if lam.ndim != 2 or lam.shape[1] == 0 or not np.all(np.isfinite(lam)):
        raise GeometryError("eigvals must be a finite (k,) or (N, k) array")
    k = lam.shape[1]
    if dim is not None and dim < k:
        raise GeometryError(f"dim = {dim} is below the {k} eigenvalues given")
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
        dims = int(np.sum(c < q))
        out["dims_" + f"{q:.10g}".split(".")[1]] = None if dim is not None and k < dim and dims == k - 1 else dims
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


def hessian_consistency(Hs, k: int | None = None) -> dict:
    """Homogeneity of Hessians across positions (spec A5).

    For positions i, j: ``α_ij = diag((U_iᵀU_j) Λ_j (U_iᵀU_j)ᵀ)`` (curvature of H_j along H_i's
    eigenvectors), ``corr_log[i, j] = Pearson(log10 α_ij, log10 λ_j)`` rank by rank with
    non-finite logs masked, ``corr_lin`` the same on a linear scale, ``corr_vec`` the correlation
    of vec H_i and vec H_j. Returns the three ``(N, N)`` matrices and the mean and median of their
    off-diagonal entries (``corr_log_mean``, ``corr_log_median``, ...).

    ``k`` restricts corr_log and corr_lin to the top k ranks: for the rank-k ``Ĥ = U diag(λ) Uᵀ`` of the
    Lanczos methods, the other d − k eigenvalues are round-off around zero.
    """
    Hs = np.asarray(Hs, dtype=float)
    if Hs.ndim != 3 or Hs.shape[1] != Hs.shape[2] or len(Hs) < 2:
        raise GeometryError(f"Hs must be (N >= 2, d, d), got shape {Hs.shape}")
    if k is not None and not 1 <= k <= Hs.shape[1]:
        raise GeometryError(f"k must lie in [1, d = {Hs.shape[1]}], got {k}")
    lam, U = np.linalg.eigh((Hs + Hs.transpose(0, 2, 1)) / 2)  # ascending rank
    N, top = len(Hs), slice(-k if k else None, None)  # ascending: the top k are the last
    corr_log, corr_lin = np.empty((N, N)), np.empty((N, N))
    with np.errstate(invalid="ignore", divide="ignore"):
        log_lam = np.log10(lam)
        for i in range(N):
            M = np.einsum("ak,jal->jkl", U[i], U)  # U_iᵀ U_j for every j
            alpha = np.einsum("jkl,jl->jk", M**2, lam)
            corr_log[i] = _rowwise_pearson(np.log10(alpha[:, top]), log_lam[:, top])
            corr_lin[i] = _rowwise_pearson(alpha[:, top], lam[:, top])
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


def code_distance_r(codes: np.ndarray, consistency: dict) -> dict[str, float]:
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
