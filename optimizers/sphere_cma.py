"""SphereCMA ("ZOHA_Sphere_exp" / "_inv" of Wang & Ponce 2022), spec/optimizers.md §1.4.

Search on the sphere ‖x‖ = R: tangent Gaussian samples around the centre m, mapped onto the
sphere by the exponential map at a scheduled angle, log-rank-weighted Euclidean mean projected
back to the sphere, and a SLERP step that extrapolates ``lr`` times the angle from m to that mean.
No covariance and no step-size adaptation; every code has norm R exactly (to rounding).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Optimizer, OptimizerError, check_choice, check_code, check_float, check_int, register
from .cma import log_rank_weights, select_parents

_TINY_ANGLE = 1e-12


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two nonzero vectors, accurate near 0 and π (no arccos of a rounded cosine)."""
    a_unit = a / np.linalg.norm(a)
    b_unit = b / np.linalg.norm(b)
    return 2.0 * math.atan2(float(np.linalg.norm(a_unit - b_unit)), float(np.linalg.norm(a_unit + b_unit)))


def slerp(start: np.ndarray, end: np.ndarray, t: float) -> np.ndarray:
    """Point at fraction ``t`` (t > 1 extrapolates) along the great circle from ``start`` to ``end``.

    Lengths are interpolated with the same weights; callers project the result to their radius.
    Near-parallel inputs fall back to linear interpolation; antipodal ones (no unique great
    circle) return ``end``.
    """
    angle = angle_between(start, end)
    if angle < _TINY_ANGLE:
        return start + t * (end - start)
    if math.pi - angle < _TINY_ANGLE:
        return end.copy()
    sin_angle = math.sin(angle)
    return (math.sin((1 - t) * angle) / sin_angle) * start + (math.sin(t * angle) / sin_angle) * end


def project_to_sphere(points: np.ndarray, radius: float) -> np.ndarray:
    """Rescale each row (or a vector) to norm ``radius``."""
    return points * (radius / np.linalg.norm(points, axis=-1, keepdims=True))


def exp_map(center_unit: np.ndarray, tangents: np.ndarray, radius: float) -> np.ndarray:
    """Exponential map on the sphere of ``radius``: each tangent row's norm is its angle (radians)."""
    angles = np.linalg.norm(tangents, axis=1, keepdims=True)
    # sin(a)/a via np.sinc, finite at a = 0.
    points = np.cos(angles) * center_unit + np.sinc(angles / np.pi) * tangents
    return project_to_sphere(points * radius, radius)


def angle_schedule(schedule: str, angle_start: float, angle_end: float, n_generations: int) -> np.ndarray:
    """Exploration angle θ_t in degrees for sampling generations t = 0..n_generations−1.

    "exp": geometric from angle_start to angle_end; "inv": 15 + 1/(0.0017·t + 0.0146) for
    t = 1..n (76.3° → 22.0° over 75), ignoring the limits. After the end θ stays at its last value.
    """
    if schedule == "exp":
        return np.geomspace(angle_start, angle_end, n_generations)
    return 15 + 1 / (0.0017 * np.arange(1, n_generations + 1) + 0.0146)


@register
class SphereCMA(Optimizer):
    """``sphere-cma``: fixed-radius spherical search with an annealed exploration angle.

    Hyperparameters:
      radius: R (default 300, published for the 4096-d fc6 GAN; √d, e.g. 10, for the 100-d DCGAN).
      population: samples per generation (default 40). n_parents: μ, ranks given log weights (default population // 2: 20 at 40).
      lr: SLERP extrapolation factor (default 1.5).
      schedule: "exp" (default) or "inv"; angle_start/angle_end in degrees (50 → 7.33) over
        schedule_generations (75) sampling generations ("inv" ignores the two angles).
      init_code: initial centre direction (default None: generation 0 is ``population`` random
        codes on the sphere and the first centre is their weighted mean, as published). Must be
        nonzero; it is rescaled to R.
      include_center: True (default, as published) — every generation after the first is
        [m, z_1..z_population], i.e. population+1 codes; the centre is re-presented, its score
        counts for best-so-far but not for the update. False — only the population samples.
    """

    name = "sphere-cma"

    def __init__(
        self,
        dim: int,
        *,
        seed: int | None = None,
        radius: float = 300.0,
        population: int = 40,
        n_parents: int | None = None,
        lr: float = 1.5,
        schedule: str = "exp",
        angle_start: float = 50.0,
        angle_end: float = 7.33,
        schedule_generations: int = 75,
        init_code: Any = None,
        include_center: bool = True,
    ):
        population = check_int("population", population, 2)
        if init_code is not None:
            init_code = check_code("init_code", init_code, check_int("dim", dim, 1))
            if not np.linalg.norm(init_code) > 0:
                raise OptimizerError(
                    "init_code must be nonzero: SphereCMA needs a direction to start from; pass None for "
                    "the published start (random codes on the sphere)"
                )
        if not isinstance(include_center, (bool, np.bool_)):
            raise OptimizerError(f"include_center must be True or False, got {include_center!r}")
        hyperparameters = {
            "radius": check_float("radius", radius, 0.0, low_open=True),
            "population": population,
            "n_parents": check_int("n_parents", population // 2 if n_parents is None else n_parents, 1, population),
            "lr": check_float("lr", lr, 0.0, low_open=True),
            "schedule": check_choice("schedule", schedule, ("exp", "inv")),
            "angle_start": check_float("angle_start", angle_start, 0.0, 180.0, low_open=True),
            "angle_end": check_float("angle_end", angle_end, 0.0, 180.0, low_open=True),
            "schedule_generations": check_int("schedule_generations", schedule_generations, 1),
            "init_code": init_code,
            "include_center": bool(include_center),
        }
        super().__init__(dim, seed=seed, hyperparameters=hyperparameters)
        self.radius = hyperparameters["radius"]
        self.weights = log_rank_weights(hyperparameters["n_parents"])
        self.angles_deg = angle_schedule(schedule, angle_start, angle_end, schedule_generations)
        self.center = None if init_code is None else project_to_sphere(init_code, self.radius)
        self.n_sampling_generations = 0

    def current_angle_deg(self) -> float:
        """θ (degrees) used by the next sampling generation."""
        return float(self.angles_deg[min(self.n_sampling_generations, len(self.angles_deg) - 1)])

    def _propose(self) -> np.ndarray:
        hp = self.hyperparameters
        if self.center is None:
            return project_to_sphere(self._rng.standard_normal((hp["population"], self.dim)), self.radius)
        center_unit = self.center / np.linalg.norm(self.center)
        normals = self._rng.standard_normal((hp["population"], self.dim))
        tangents = normals - np.outer(normals @ center_unit, center_unit)
        step = math.radians(self.current_angle_deg()) / math.sqrt(self.dim)
        samples = exp_map(center_unit, step * tangents, self.radius)
        if hp["include_center"]:
            return np.vstack([self.center, samples])
        return samples

    def _update(self, codes: np.ndarray, scores: np.ndarray) -> None:
        if self.center is None:
            ranked, weights = select_parents(scores, self.weights)
            if len(ranked):
                self.center = self._weighted_mean_on_sphere(codes[ranked], weights, fallback=None)
            return
        self.n_sampling_generations += 1
        if self.hyperparameters["include_center"]:
            codes, scores = codes[1:], scores[1:]
        ranked, weights = select_parents(scores, self.weights)
        if len(ranked) == 0:
            return
        target = self._weighted_mean_on_sphere(codes[ranked], weights, fallback=self.center)
        self.center = project_to_sphere(slerp(self.center, target, self.hyperparameters["lr"]), self.radius)

    def _weighted_mean_on_sphere(
        self, points: np.ndarray, weights: np.ndarray, fallback: np.ndarray | None
    ) -> np.ndarray | None:
        mean = weights @ points
        if not np.linalg.norm(mean) > 0:
            return fallback
        return project_to_sphere(mean, self.radius)

    def _strategy_state(self) -> dict[str, Any]:
        return {
            "center": None if self.center is None else self.center.copy(),
            "n_sampling_generations": self.n_sampling_generations,
        }

    def _load_strategy_state(self, state: dict[str, Any]) -> None:
        self.center = None if state["center"] is None else np.array(state["center"], dtype=np.float64)
        self.n_sampling_generations = int(state["n_sampling_generations"])
