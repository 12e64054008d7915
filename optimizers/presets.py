"""Configured optimizers: a registered optimizer with some hyperparameters fixed, registered under its own
name (nevergrad's configured-optimizer idea), so ``create("cma-sigma0.5", dim)`` works like any other.

Hyperparameters given to ``create`` still win over the configured values; the configured values win over a
generator's defaults (``with_generator_defaults``). The presets below are the
benchmark's (docs/benchmark.md) for the 100-d DCGAN: CMA's σ₀ = 1 keeps the published angular step
(σ₀·√d / R ≈ 0.64-1) and σ₀ = 0.5 and 2 are the sensitivity check; SphereCMA runs on the prior's shell
R = √100 = 10 with the exponential (or ``inv``) angle schedule. GA keeps the published constants and
is the registered ``ga``.
"""

from __future__ import annotations

from typing import Any

from .base import Optimizer, OptimizerError, _registered, register


def configure(name: str, base: str, description: str, **values: Any) -> type[Optimizer]:
    """Register the optimizer `base` with `values` as its defaults under `name`; returns the new class."""
    parent = _registered(base)
    unknown = sorted(set(values) - set(parent.hyperparameter_names()))
    if unknown:
        raise OptimizerError(f"{base} does not take hyperparameter(s) {', '.join(unknown)}")

    class Configured(parent):
        __doc__ = f"``{base}`` with {', '.join(f'{k}={v!r}' for k, v in values.items())}: {description}."
        configured_from = base
        configured_values = values

        def __init__(self, dim: int, *, seed: int | None = None, **hyperparameters: Any):
            super().__init__(dim, seed=seed, **{**values, **hyperparameters})

        @classmethod
        def hyperparameter_names(cls) -> list[str]:
            return parent.hyperparameter_names()

    Configured.name = name
    Configured.__name__ = Configured.__qualname__ = f"Configured_{name.replace('-', '_').replace('.', '_')}"
    return register(Configured)


configure("cma-sigma1", "cma", "the benchmark's Cholesky CMA-ES, first image G(0)", sigma0=1.0, first_generation="init")
configure("cma-sigma0.5", "cma", "σ₀ sensitivity check", sigma0=0.5, first_generation="init")
configure("cma-sigma2", "cma", "σ₀ sensitivity check", sigma0=2.0, first_generation="init")
configure("pycma-sigma1", "pycma", "the benchmark's pycma", sigma0=1.0)
configure("pycma-diag", "pycma", "separable (diagonal) pycma", sigma0=1.0, diagonal=True)
configure("sphere-cma-r10", "sphere-cma", "the benchmark's SphereCMA on the DCGAN prior's shell", radius=10.0)
configure("sphere-cma-inv", "sphere-cma", "as sphere-cma-r10 with the inv schedule", radius=10.0, schedule="inv")


def base_of(name: str) -> str:
    """The registered optimizer that `name` configures (`name` itself if it is not a configured one)."""
    return getattr(_registered(name), "configured_from", name)
