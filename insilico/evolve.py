"""In-process evolutions against simulated units, for benchmarks and studies.

One generation is ask -> generate -> clean score -> noisy score -> tell: the optimizer sees only the
noisy score, while the clean score of every image is recorded so runs are judged on their clean
maximum (spec/optimizers.md §2, "cleanobj"). The server's networked loop (`server.engine`) is separate.

Evaluation counting: every image the optimizer asks for is generated, scored and counted, so the
published quirks are reproduced rather than equalised: an optimizer that starts from one initial
image (Cholesky CMA with `init_code`) or re-scores its centre every generation (SphereCMA, 41 images)
spends what it asks for. Comparisons at a fixed budget use `EvolutionResult.cum_max_at(n)`, the
clean maximum over the first `n` evaluations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from insilico import InsilicoError

if TYPE_CHECKING:
    import torch


#: The published protocol: 75 generations x 40 images (spec/optimizers.md §2).
N_GENERATIONS = 75
POPULATION = 40
class Scorer(Protocol):
    """A single simulated unit: images (n, 3, H, W) in [0, 1] -> clean responses (n,) or (n, 1)."""

    def score(self, images: torch.Tensor) -> np.ndarray: ...


@dataclass
class EvolutionResult:
    """What one evolution produced; per-generation arrays have one entry per generation."""

    optimizer: str
    noise_eps: float
    seed: int | None
    generation_size: np.ndarray  # images scored per generation
    clean_mean: np.ndarray  # mean clean score per generation
    clean_max: np.ndarray  # max clean score per generation
    noisy_max: np.ndarray  # max noisy (observed) score per generation
    code_norm: np.ndarray  # mean code norm per generation
    cum_clean_max: np.ndarray  # running clean maximum, one entry per evaluation
    final_codes: np.ndarray  # last generation's codes (n, dim)
    best_code: np.ndarray  # the code with the highest clean score
    wall_s: float
    covariance: np.ndarray | None = field(default=None, repr=False)  # final C, if the optimizer has one

    @property
    def n_generations(self) -> int:
        return len(self.generation_size)

    @property
    def n_evaluations(self) -> int:
        return len(self.cum_clean_max)

    @property
    def best_clean(self) -> float:
        """Clean maximum over every image evaluated (the benchmark's primary metric)."""
        return float(self.cum_clean_max[-1])

    @property
    def best_noisy(self) -> float:
        """Maximum observed (noisy) score; inflated by noise (winner's curse)."""
        return float(np.max(self.noisy_max))

    @property
    def final_code_norm(self) -> float:
        """Mean norm of the final generation's codes."""
        return float(self.code_norm[-1])

    def covariance_stats(self) -> tuple[float, float]:
        """(cond(C), ||C - I||_F^2 / ||C||_F^2) of the final covariance (spec §1.1); NaN without one."""
        if self.covariance is None:
            return float("nan"), float("nan")
        c = self.covariance
        deviation = np.linalg.norm(c - np.eye(len(c))) ** 2 / np.linalg.norm(c) ** 2
        return float(np.linalg.cond(c)), float(deviation)

    @property
    def cum_clean_max_per_generation(self) -> np.ndarray:
        """Running clean maximum at the end of each generation."""
        return self.cum_clean_max[np.cumsum(self.generation_size) - 1]

    def cum_max_at(self, n_evaluations: int) -> float:
        """Clean maximum over the first `n_evaluations` images (all of them if the run was shorter)."""
        if n_evaluations < 1:
            raise InsilicoError(f"n_evaluations must be >= 1, got {n_evaluations}")
        return float(self.cum_clean_max[min(n_evaluations, self.n_evaluations) - 1])


def gain_noise(clean: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise of spec §2: clean * max(0, 1 + eps * N(0, 1)), i.i.d. per image."""
    from rig_client.noise import GainNoise

    return np.asarray(GainNoise(eps).apply(clean, rng), dtype=np.float64)


def evolve(optimizer_name: str, generator: Any, scorer: Scorer | Callable[[torch.Tensor], np.ndarray], *,
           n_generations: int = N_GENERATIONS, population: int = POPULATION, noise_eps: float = 0.0,
           seed: int | None = None, optimizer_params: dict[str, Any] | None = None,
           noise: Callable[[np.ndarray, float, np.random.Generator], np.ndarray] = gain_noise,
           ) -> EvolutionResult:
    """Evolve codes of `generator` to drive one unit, for `n_generations` ask/tell cycles.

    `scorer` is a single-unit scorer (`.score(images)` or a callable) returning clean responses;
    `noise(clean, noise_eps, rng)` turns them into what the optimizer sees. `population` is passed to
    the optimizer as `population` unless `optimizer_params` sets it. `seed` seeds both the optimizer
    and the noise stream (a separate stream), so a run is reproducible.
    """
    import optimizers

    if n_generations < 1:
        raise InsilicoError(f"n_generations must be >= 1, got {n_generations}")
    if not (np.isfinite(noise_eps) and noise_eps >= 0):
        raise InsilicoError(f"noise_eps must be a finite number >= 0, got {noise_eps}")
    score_fn = scorer.score if hasattr(scorer, "score") else scorer
    params = {"population": population, **(optimizer_params or {})}
    opt = optimizers.create(optimizer_name, generator.latent_dim, seed=seed, **params)
    noise_rng = np.random.default_rng(None if seed is None else [seed, 0x5EED])

    sizes, clean_mean, clean_max, noisy_max, norms, clean_all = [], [], [], [], [], []
    best_code, best = None, -np.inf
    start = time.perf_counter()
    for _ in range(n_generations):
        codes = opt.ask()
        clean = _single_unit(score_fn(generator.generate(codes)), len(codes))
        observed = noise(clean, noise_eps, noise_rng) if noise_eps > 0 else clean.copy()
        opt.tell(codes, observed)
        top = int(np.argmax(clean))
        if clean[top] > best:
            best, best_code = float(clean[top]), np.array(codes[top], dtype=np.float64)
        sizes.append(len(codes))
        clean_mean.append(clean.mean())
        clean_max.append(clean[top])
        noisy_max.append(observed.max())
        norms.append(np.linalg.norm(codes, axis=1).mean())
        clean_all.append(clean)
    return EvolutionResult(
        optimizer=optimizer_name, noise_eps=float(noise_eps), seed=seed,
        generation_size=np.array(sizes, dtype=np.int64), clean_mean=np.array(clean_mean),
        clean_max=np.array(clean_max), noisy_max=np.array(noisy_max), code_norm=np.array(norms),
        cum_clean_max=np.maximum.accumulate(np.concatenate(clean_all)),
        final_codes=np.array(codes, dtype=np.float64), best_code=best_code,
        wall_s=time.perf_counter() - start,
        covariance=opt.covariance() if hasattr(opt, "covariance") else None)


def _single_unit(scores: Any, n: int) -> np.ndarray:
    """Scores as a finite float64 vector (n,); a (n, 1) array is accepted."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise InsilicoError(f"scorer must return one score per image for a single unit, shape ({n},) "
                            f"or ({n}, 1); got {arr.shape}. Build the scorer with exactly one unit.")
    if not np.all(np.isfinite(arr)):
        raise InsilicoError("scorer returned non-finite scores; check the unit and the images")
    return arr
