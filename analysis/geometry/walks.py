"""Walks along Hessian eigenvectors and code inversion in an eigenbasis (spec A)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from analysis.geometry.hessian import Dist, Generator, GeometryError, _infer_device

@dataclass(frozen=True)
class InversionResult:
    """Final code ``(d,)``, loss per step ``(steps,)`` and the final image ``(1, ...)``."""

    z: np.ndarray
    losses: np.ndarray
    image: Tensor


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
    pixels = images.detach().cpu().float().clamp(0, 1).expand(rows, cols, 3, h, w).permute(0, 1, 3, 4, 2).numpy()
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
