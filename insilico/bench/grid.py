"""The benchmark grid: optimizers x units x noise levels x repeats, one `RunSpec` per run.

A run's id is a hash of everything that changes its result, so the same grid asked for again maps
onto the same ids and a restarted benchmark skips what is already on disk. The seed of a run depends on
the unit, noise level and repeat but not on the optimizer: all optimizers of one repeat face the same
noise stream and start from the same seed (common random numbers, as in the published benchmark where
all optimizers ran on the same unit within one repeat).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from typing import Any

from insilico.bench.errors import BenchError


@dataclass(frozen=True, order=True)
class UnitSpec:
    """A simulated unit: a channel of a layer, at (x, y) or the layer's centre when None."""

    layer: str
    channel: int
    x: int | None = None
    y: int | None = None

    @property
    def label(self) -> str:
        where = "" if self.x is None else f"@{self.x},{self.y}"
        return f"{self.layer}:{self.channel}{where}"


@dataclass(frozen=True)
class RunSpec:
    """One evolution of the grid; `optimizer` is a registered optimizer name (configured ones included:
    `optimizers.presets`), run with its own defaults and `population`."""

    optimizer: str
    unit: UnitSpec
    noise: float
    rep: int
    seed: int
    n_generations: int
    population: int
    backend: str  # what generates and scores, e.g. "dcgan-faces/efficientnet-lite0"
    base_seed: int = 0  # the grid's --seed, which `seed` derives from (`run_seed`)

    @property
    def run_id(self) -> str:
        """Deterministic id: `<optimizer>-<16 hex digits>` of the hash of every field but `base_seed` (`seed`
        carries it; leaving it out keeps the ids of runs made before it was recorded)."""
        fields = {k: v for k, v in asdict(self).items() if k != "base_seed"}
        payload = json.dumps(fields, sort_keys=True, default=str)
        return f"{self.optimizer}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"

    def as_row(self) -> dict[str, Any]:
        """The run's identifying columns in the results table."""
        return {
            "run_id": self.run_id, "optimizer": self.optimizer, "layer": self.unit.layer,
            "channel": self.unit.channel, "x": self.unit.x, "y": self.unit.y, "unit": self.unit.label,
            "noise": self.noise, "rep": self.rep, "seed": self.seed, "base_seed": self.base_seed,
            "n_generations": self.n_generations, "population": self.population, "backend": self.backend,
        }


def run_seed(base_seed: int, unit: UnitSpec, noise: float, rep: int) -> int:
    """Seed shared by every optimizer for one (unit, noise, repeat) cell."""
    key = f"{base_seed}|{unit.label}|{noise!r}|{rep}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def check_optimizers(names: list[str], population: int) -> None:
    """Raise `BenchError` for a name that is not registered or cannot run with its defaults and `population`."""
    import optimizers as registry

    if not 2 <= population <= registry.MAX_POPULATION:  # a huge one ran out of memory making the grid
        raise BenchError(f"--population must be from 2 to {registry.MAX_POPULATION}, got {population}")
    unknown = [o for o in names if o not in registry.available()]
    if unknown:
        runnable = [name for name in registry.available() if _refusal(name, population) is None]
        raise BenchError(f"unknown optimizer(s) {unknown}; choose from {', '.join(runnable)}")
    for name in names:
        if (reason := _refusal(name, population)) is not None:
            raise BenchError(f"optimizer {name} cannot run in a benchmark, which gives each optimizer only its "
                             f"defaults and --population: {reason}")


def _refusal(name: str, population: int) -> str | None:
    """Why `name` cannot be created with its defaults and `population` (at any dimension), else None: hess-cma
    needs an eigenbasis, fixed-design its codes."""
    import optimizers as registry

    try:
        registry.create(name, 10, population=population)
    except registry.OptimizerError as exc:
        return str(exc)
    return None


def check_settings(optimizers: list[str], noises: list[float], reps: int, n_generations: int, population: int) -> None:
    """Raise `BenchError` naming the first bad grid setting (the units are checked by `build_grid`)."""
    if not optimizers or not noises:
        raise BenchError("the grid needs at least one optimizer (--optimizers) and one noise level (--noise)")
    for flag, value, least in (("--reps", reps, 1), ("--generations", n_generations, 1)):
        if value < least:
            raise BenchError(f"{flag} must be >= {least}, got {value}")
    check_optimizers(optimizers, population)
    if len(set(optimizers)) != len(optimizers):
        raise BenchError(f"--optimizers names one twice: {optimizers}")
    if any(not (e >= 0) for e in noises):
        raise BenchError(f"--noise levels must be >= 0, got {noises}")


def build_grid(optimizers: list[str], units: list[UnitSpec], noises: list[float], reps: int, *,
               n_generations: int, population: int, backend: str, base_seed: int = 0) -> list[RunSpec]:
    """All runs, repeat-major so a partial benchmark covers every optimizer and unit evenly."""
    check_settings(optimizers, noises, reps, n_generations, population)
    if not units:
        raise BenchError("the grid needs at least one unit")
    if len(set(units)) != len(units):
        raise BenchError("units must not repeat")
    specs = []
    for rep, unit, noise, name in itertools.product(range(reps), units, noises, optimizers):
        specs.append(RunSpec(
            optimizer=name, unit=unit, noise=float(noise), rep=rep, seed=run_seed(base_seed, unit, float(noise), rep),
            n_generations=n_generations, population=population, backend=backend, base_seed=base_seed))
    return specs
