"""Small cases shared by the optimizer tests: toy hyperparameters per optimizer and a target."""

from __future__ import annotations

import numpy as np

import optimizers
from optimizers import presets

DIM = 12


def synthetic_eigenbasis(dim: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    basis, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))
    return basis, np.logspace(0, -3, k)


def small_case(name: str, dim: int = DIM) -> dict:
    """Hyperparameters that make ``name`` fit a ``dim``-dimensional toy problem.

    Optimizers not listed run with their defaults, so registering one is enough to test it; a configured
    optimizer (``optimizers.presets``) gets the case of the optimizer it configures.
    """
    name = presets.base_of(name)
    if name == "hess-cma":
        basis, eigvals = synthetic_eigenbasis(dim, dim // 2)
        return {"basis": basis, "eigvals": eigvals, "sigma0": 0.5, "population": 10}
    if name == "sphere-cma":
        return {"radius": float(np.sqrt(dim)), "population": 10, "n_parents": 5}
    if name in ("cma", "pycma"):
        return {"population": 10, "sigma0": 1.0}
    if name == "ga":
        return {"population": 10, "n_conserve": 3}
    if name == "fixed-design":
        return {"codes": np.random.default_rng(1).standard_normal((10, dim))}
    return {}


def make(name: str, dim: int = DIM, seed: int | None = 0, **overrides) -> optimizers.Optimizer:
    return optimizers.create(name, dim, seed=seed, **{**small_case(name, dim), **overrides})


def target_on_sphere(dim: int = DIM) -> np.ndarray:
    """A maximiser that every optimizer can reach: norm √dim (sphere-cma's radius), in hess-cma's span."""
    basis, _ = synthetic_eigenbasis(dim, dim // 2)
    direction = basis @ np.ones(dim // 2)
    return np.sqrt(dim) * direction / np.linalg.norm(direction)


def sphere_scores(codes: np.ndarray, target: np.ndarray) -> np.ndarray:
    return -np.sum((codes - target) ** 2, axis=1)
