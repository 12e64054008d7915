"""Executing a benchmark grid on Dask: one task per run, each writing its own result file.

Workers load the generator and network once per process (`_loaded`, keyed by the backend) and reuse
them for every run they execute; each task pins torch to one thread so a worker is one core.
"""

from __future__ import annotations

import abc
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from insilico import storage
from insilico.runner import Outcome, run_tasks
from insilico.bench.errors import BenchError
from insilico.bench.grid import RunSpec, UnitSpec
from insilico.evolve import evolve
from rig_client.version import package_version

#: Evaluation budgets at which the cumulative clean maximum is recorded (spec/optimizers.md §4).
CHECKPOINTS = (500, 1000, 3000)


class Loaded(abc.ABC):
    """A backend's heavy objects in one worker: the generator and a scorer per unit."""

    generator: Any

    @abc.abstractmethod
    def scorer(self, unit: UnitSpec) -> Any:
        """A single-unit scorer (`.score(images) -> (n,)` or `(n, 1)` clean responses)."""


class Backend(abc.ABC):
    """What a run evolves against. Instances are small, hashable and picklable: they travel to workers."""

    @property
    @abc.abstractmethod
    def key(self) -> str:
        """Names the generator and scorer; part of every run id."""

    @abc.abstractmethod
    def load(self) -> Loaded:
        """Build the heavy objects (called once per worker process)."""


@dataclass(frozen=True)
class CNNBackend(Backend):
    """A generator from `generators` and EfficientNet-Lite0 units from `rig_client.units`."""

    generator: str = "dcgan-faces"
    device: str = "cpu"
    weights: str | None = None  # the generator's weights file or folder (None: its standard locations)

    @property
    def key(self) -> str:
        """Part of every run id: runs with other weights are other runs (the path names them, not the bytes)."""
        return f"{self.generator}/efficientnet-lite0" + (f", weights {self.weights}" if self.weights else "")

    def load(self) -> Loaded:
        return _CNNLoaded(self.generator, self.device, self.weights)


class _CNNLoaded(Loaded):
    """One generator and one EfficientNet-Lite0 per worker; a few recent single-unit scorers.

    Runs are submitted unit by unit (all optimizers and noise levels of a unit together), so a small
    cache of scorers (each holds a BN-folded copy of the network, ~20 MB) serves consecutive tasks.
    """

    def __init__(self, generator: str, device: str, weights: str | None = None, max_scorers: int = 8) -> None:
        import generators
        from rig_client.cnn import load_efficientnet_lite0

        self.generator = generators.load(generator, device=device, weights=weights)
        self.network = load_efficientnet_lite0(device)
        self.device = device
        self.max_scorers = max_scorers
        self._scorers: OrderedDict[UnitSpec, Any] = OrderedDict()
        self._lock = threading.Lock()  # thread workers share this object

    def scorer(self, unit: UnitSpec) -> Any:
        from rig_client.units import Unit, UnitScorer

        with self._lock:
            if unit in self._scorers:
                self._scorers.move_to_end(unit)
            else:
                self._scorers[unit] = UnitScorer([Unit(unit.layer, unit.channel, unit.x, unit.y)],
                                                 device=self.device, model=self.network)
                if len(self._scorers) > self.max_scorers:
                    self._scorers.popitem(last=False)
            return self._scorers[unit]


@dataclass(frozen=True)
class QuadraticBackend(Backend):
    """An analytic stand-in: "images" are the codes, a unit is 100 - |z - target|^2 with a per-unit target.

    Costs microseconds per run; it checks a cluster and the grid/resume machinery without weights.
    """

    dim: int = 10

    @property
    def key(self) -> str:
        return f"quadratic-{self.dim}"

    def load(self) -> Loaded:
        return _QuadraticLoaded(self.dim)


class _IdentityGenerator:
    def __init__(self, dim: int) -> None:
        self.latent_dim = dim

    def generate(self, codes: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(codes), dtype=torch.float64)


class _QuadraticUnit:
    def __init__(self, target: np.ndarray) -> None:
        self.target = torch.as_tensor(target)

    def score(self, images: torch.Tensor) -> np.ndarray:
        return (100.0 - ((images - self.target) ** 2).sum(dim=1)).numpy()


class _QuadraticLoaded(Loaded):
    def __init__(self, dim: int) -> None:
        self.generator = _IdentityGenerator(dim)

    def scorer(self, unit: UnitSpec) -> Any:
        rng = np.random.default_rng(list(unit.label.encode()))
        return _QuadraticUnit(rng.normal(size=self.generator.latent_dim))


_LOADED: dict[Backend, Loaded] = {}
_LOADED_LOCK = threading.Lock()


def _loaded(backend: Backend) -> Loaded:
    """The backend's heavy objects, built once per process."""
    with _LOADED_LOCK:
        if backend not in _LOADED:
            _LOADED[backend] = backend.load()
        return _LOADED[backend]


def execute_run(spec: RunSpec, backend: Backend, out_dir: str) -> dict[str, Any]:
    """Run one evolution, write `runs/<run_id>.parquet` and return its results row."""
    torch.set_num_threads(1)
    loaded = _loaded(backend)
    result = evolve(spec.optimizer, loaded.generator, loaded.scorer(spec.unit), n_generations=spec.n_generations,
                    population=spec.population, noise_eps=spec.noise, seed=spec.seed)
    cond_c, cov_deviation = result.covariance_stats()
    row = spec.as_row()
    row.update({
        "n_evaluations": result.n_evaluations, "clean_max": result.best_clean,
        "noisy_max": result.best_noisy,
        **{f"cum_clean_max_{n}": result.cum_max_at(n) for n in CHECKPOINTS},
        "final_code_norm": result.final_code_norm, "cond_C": cond_c, "cov_deviation": cov_deviation,
        "wall_s": result.wall_s, "actmax_version": package_version(),
    })
    trace = {
        "generation": list(range(result.n_generations)),
        "n_evaluations": np.cumsum(result.generation_size).tolist(),
        "clean_mean": result.clean_mean.tolist(), "clean_max": result.clean_max.tolist(),
        "noisy_max": result.noisy_max.tolist(),
        "cum_clean_max": result.cum_clean_max_per_generation.tolist(),
        "code_norm": result.code_norm.tolist(),
    }
    storage.write_run(out_dir, row, trace)
    return row


def run_grid(specs: Iterable[RunSpec], backend: Backend, out_dir: str | Path, *, scheduler: str | None = None,
             n_workers: int | None = None, processes: bool = True, progress: bool = True) -> Outcome:
    """Run every spec whose result is not yet in `out_dir` (`insilico.runner.run_tasks`)."""
    specs = list(specs)
    if len({s.run_id for s in specs}) != len(specs):
        raise BenchError("the grid holds duplicate runs")
    return run_tasks(specs, execute_run, out_dir, desc="bench", scheduler=scheduler, n_workers=n_workers,
                     processes=processes, progress=progress, noun="runs", backend=backend)
