"""Noise models for simulated units: clean responses -> what a rig would observe.

Every model has `apply(clean, rng, *, stimulus_ids=None) -> observed`. `clean` is (n,) or
(n, n_channels); rows are presentations in the order shown. All randomness comes from the `rng`
argument (a `numpy.random.Generator`), so a seeded rng reproduces a run; stateful models (`Drift`,
`Adaptation`) carry state across calls and start over with `reset()`. `Chain` applies several in order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from . import RigError


class NoiseModel:
    """Base class: validates `clean` and defines the `apply` signature."""

    def apply(self, clean: np.ndarray, rng: np.random.Generator, *,
              stimulus_ids: Sequence[Hashable] | None = None) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state carried between calls (no-op for stateless models)."""

    @staticmethod
    def _check(clean: np.ndarray) -> np.ndarray:
        clean = np.asarray(clean, dtype=np.float64)
        if clean.ndim not in (1, 2):
            raise RigError(f"clean responses must be (n,) or (n, channels); got shape {clean.shape}")
        return clean


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise RigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value}")
    return value


class GainNoise(NoiseModel):
    """Multiplicative gain (Wang & Ponce 2022): observed = clean * max(0, 1 + eps * xi), xi ~ N(0, 1).

    One xi per value. Mean = clean * E[max(0, 1 + eps xi)]; eps in {0, 0.2, 0.5} in the benchmark.
    """

    def __init__(self, eps: float) -> None:
        self.eps = _positive("eps", eps, allow_zero=True)

    def apply(self, clean, rng, *, stimulus_ids=None):
        clean = self._check(clean)
        return clean * np.maximum(0.0, 1.0 + self.eps * rng.standard_normal(clean.shape))


class PoissonNoise(NoiseModel):
    """Spike counts in a response window, returned as rates in spikes/s.

    observed = Poisson(max(clean, 0) * scale * window_s) / window_s, so the mean rate is
    scale * max(clean, 0) (`scale` converts activation units to spikes/s) and the variance is
    mean / window_s.
    """

    def __init__(self, window_s: float, scale: float = 1.0) -> None:
        self.window_s = _positive("window_s", window_s)
        self.scale = _positive("scale", scale)

    def apply(self, clean, rng, *, stimulus_ids=None):
        clean = self._check(clean)
        counts = rng.poisson(np.maximum(clean, 0.0) * self.scale * self.window_s)
        return counts / self.window_s


class Drift(NoiseModel):
    """Slow drift of the gain over presentations: observed = clean * max(0, 1 + d_t).

    d_t is an Ornstein-Uhlenbeck process in presentation steps, starting at d_0 = 0:
    d_{t+1} = a d_t + sigma sqrt(1 - a^2) xi_t with a = exp(-1 / tau), so its stationary SD is `sigma`
    and its correlation after k presentations is exp(-k / tau). Every row of `clean` is one
    presentation (all channels share its gain) and advances the process by one step, across calls.
    """

    def __init__(self, tau: float = 200.0, sigma: float = 0.2) -> None:
        self.tau = _positive("tau", tau)
        self.sigma = _positive("sigma", sigma, allow_zero=True)
        self.reset()

    def reset(self) -> None:
        self.level = 0.0
        self.step = 0

    def apply(self, clean, rng, *, stimulus_ids=None):
        clean = self._check(clean)
        a = math.exp(-1.0 / self.tau)
        gains = np.empty(clean.shape[0])
        for i, xi in enumerate(rng.standard_normal(clean.shape[0])):
            gains[i] = max(0.0, 1.0 + self.level)
            self.level = a * self.level + self.sigma * math.sqrt(1.0 - a * a) * xi
            self.step += 1
        return clean * (gains if clean.ndim == 1 else gains[:, None])


class Adaptation(NoiseModel):
    """Repetition suppression: a stimulus already shown k times evokes clean * factor**k.

    Counts are kept per stimulus id (any hashable, e.g. the stimulus' content hash) across calls,
    in presentation order, so a repeat inside one batch already counts the earlier showing.
    """

    def __init__(self, factor: float = 0.9) -> None:
        self.factor = _positive("factor", factor, allow_zero=True)
        self.reset()

    def reset(self) -> None:
        self.shown: dict[Hashable, int] = {}

    def apply(self, clean, rng, *, stimulus_ids=None):
        clean = self._check(clean)
        if stimulus_ids is None or len(stimulus_ids) != clean.shape[0]:
            raise RigError("Adaptation needs stimulus_ids, one per row of clean")
        scale = np.empty(clean.shape[0])
        for i, sid in enumerate(stimulus_ids):
            k = self.shown.get(sid, 0)
            scale[i] = self.factor ** k
            self.shown[sid] = k + 1
        return clean * (scale if clean.ndim == 1 else scale[:, None])


class Chain(NoiseModel):
    """Apply several models in order (e.g. Adaptation -> Drift -> PoissonNoise)."""

    def __init__(self, models: Sequence[NoiseModel]) -> None:
        self.models = list(models)

    def reset(self) -> None:
        for model in self.models:
            model.reset()

    def apply(self, clean, rng, *, stimulus_ids=None):
        out = self._check(clean)
        for model in self.models:
            out = model.apply(out, rng, stimulus_ids=stimulus_ids)
        return out
