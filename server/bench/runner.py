"""Executing a benchmark grid on Dask: one task per run, each writing its own result file.

Workers load the generator and network once per process (`_loaded`, keyed by the backend) and reuse
them for every run they execute; each task pins torch to one thread so a worker is one core.
"""

from __future__ import annotations

import abc
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.bench import storage
from server.bench.errors import BenchError
from server.bench.grid import RunSpec, UnitSpec
from server.insilico import evolve

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

    @property
    def key(self) -> str:
        return f"{self.generator}/efficientnet-lite0"

    def load(self) -> Loaded:
        return _CNNLoaded(self.generator, self.device)


class _CNNLoaded(Loaded):
    """One generator and one EfficientNet-Lite0 per worker; a few recent single-unit scorers.

    Runs are submitted unit by unit (all optimizers and noise levels of a unit together), so a small
    cache of scorers (each holds a BN-folded copy of the network, ~20 MB) serves consecutive tasks.
    """

    def __init__(self, generator: str, device: str, max_scorers: int = 8) -> None:
        import generators
        from rig_client.cnn import load_efficientnet_lite0

        self.generator = generators.load(generator, device=device)
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
    result = evolve(spec.optimizer_name, loaded.generator, loaded.scorer(spec.unit),
                    n_generations=spec.n_generations, population=spec.population,
                    noise_eps=spec.noise, seed=spec.seed, optimizer_params=spec.params())
    cond_c, cov_deviation = result.covariance_stats()
    row = spec.as_row()
    row.update({
        "n_evaluations": result.n_evaluations, "clean_max": result.best_clean,
        "noisy_max": result.best_noisy,
        **{f"cum_clean_max_{n}": result.cum_max_at(n) for n in CHECKPOINTS},
        "final_code_norm": result.final_code_norm, "cond_C": cond_c, "cov_deviation": cov_deviation,
        "wall_s": result.wall_s,
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


@dataclass
class GridOutcome:
    """What `run_grid` did: runs found on disk, runs completed now, runs that failed (id -> error)."""

    total: int
    skipped: int
    completed: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def run_grid(specs: Iterable[RunSpec], backend: Backend, out_dir: str | Path, *,
             scheduler: str | None = None, n_workers: int | None = None, processes: bool = True,
             progress: bool = True) -> GridOutcome:
    """Run every spec whose result is not yet in `out_dir`, on Dask.

    `scheduler` is the address of an existing cluster (e.g. one started by dask-jobqueue); otherwise a
    LocalCluster of `n_workers` single-threaded workers (processes, or threads if `processes=False`)
    lives for the call. A failed run is reported in the outcome, not retried; rerunning retries it.
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    specs = list(specs)
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        raise BenchError("the grid holds duplicate runs")
    out_dir = Path(out_dir).resolve()  # workers may run elsewhere: give them an absolute path
    storage.remove_partial(out_dir)
    done = storage.completed_ids(out_dir)
    todo = [s for s in specs if s.run_id not in done]
    outcome = GridOutcome(total=len(specs), skipped=len(specs) - len(todo))
    if not todo:
        return outcome

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_workers or 1, threads_per_worker=1, processes=processes,
                               dashboard_address=":0")
    client = Client(scheduler or cluster)
    bar = tqdm(total=len(specs), initial=outcome.skipped, unit="run", desc="bench", disable=not progress,
               smoothing=0.05)
    try:
        futures = client.map(execute_run, todo, backend=backend, out_dir=str(out_dir),
                             key=[f"run-{s.run_id}" for s in todo], pure=False)
        for future in as_completed(futures):
            if future.status == "error":
                outcome.failed[future.key.removeprefix("run-")] = repr(future.exception())
            else:
                outcome.completed += 1
            bar.update(1)
            if outcome.failed:
                bar.set_postfix(failed=len(outcome.failed), refresh=False)
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    return outcome
