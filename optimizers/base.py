"""Optimizer base class, the registry behind ``create()``, and state (de)serialisation.

The base class owns the public ask/tell bookkeeping: it caches the asked codes (so ``ask`` is
idempotent until ``tell``), checks shapes and scores, counts generations and presentations,
tracks the best scored code, and packs the RNG state. Subclasses implement four hooks:
``_propose`` (the next codes), ``_update`` (consume scores), ``_strategy_state`` and
``_load_strategy_state`` (their own dynamic variables).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

STATE_FORMAT = "actmax-optimizer-state/1"
MAX_POPULATION = 500  # images an optimizer may ask per generation, in a session or a benchmark (the published runs: 40)


class OptimizerError(ValueError):
    """Bad optimizer name, hyperparameter, call order, codes, scores or state."""


class MissingDependencyError(OptimizerError, ImportError):
    """An optional package an optimizer needs is not installed."""


_REGISTRY: dict[str, type[Optimizer]] = {}


def register(cls: type[Optimizer]) -> type[Optimizer]:
    """Class decorator: make ``cls`` available to ``create()`` under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise OptimizerError(f"optimizer name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names accepted by ``create()``."""
    return sorted(_REGISTRY)


def _registered(name: str) -> type[Optimizer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OptimizerError(f"unknown optimizer {name!r}; available: {', '.join(available())}") from None


def hyperparameter_names(name: str) -> list[str]:
    """The keyword hyperparameters the optimizer registered as ``name`` accepts."""
    return _registered(name).hyperparameter_names()


def create(name: str, dim: int, *, seed: int | None = None, **hyperparameters: Any) -> Optimizer:
    """Build the optimizer registered as ``name`` for ``dim``-dimensional codes."""
    cls = _registered(name)
    accepted = cls.hyperparameter_names()
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise OptimizerError(
            f"{name} does not take hyperparameter(s) {', '.join(unknown)}; it takes: {', '.join(accepted)}"
        )
    return cls(dim, seed=seed, **hyperparameters)


def with_generator_defaults(name: str, hyperparameters: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``hyperparameters`` and, for each key of a generator's ``defaults`` (``Generator.default_init``) that the
    optimizer ``name`` takes from its generator and that neither ``hyperparameters`` nor the preset ``name`` sets,
    that default (None: the optimizer's own)."""
    cls = _registered(name)
    taken = set(cls.generator_defaults) & set(cls.hyperparameter_names())
    taken -= set(cls.configured_values) | set(hyperparameters)
    return {**{k: v for k, v in defaults.items() if k in taken and v is not None}, **hyperparameters}


# ---------------------------------------------------------------- validation helpers


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high], else an OptimizerError naming ``name``."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise OptimizerError(f"{name} must be {allowed}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise OptimizerError(f"{name} must be {allowed}, got {value}")
    return int(value)


def check_float(
    name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a finite float in the given interval, else an OptimizerError naming ``name``."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptimizerError(f"{name} must be a number in {interval}, got {value!r}")
    value = float(value)
    if (
        not math.isfinite(value)
        or value < low
        or value > high
        or (low_open and value == low)
        or (high_open and value == high)
    ):
        raise OptimizerError(f"{name} must be a number in {interval}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise OptimizerError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_code(name: str, value: Any, dim: int) -> np.ndarray:
    """A finite float64 vector of length ``dim``."""
    try:
        code = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise OptimizerError(f"{name} must be a vector of {dim} numbers") from None
    if code.shape != (dim,):
        raise OptimizerError(f"{name} must have shape ({dim},), got {code.shape}")
    if not np.all(np.isfinite(code)):
        raise OptimizerError(f"{name} must be finite")
    return code


def array_fingerprint(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- base class


class Optimizer(ABC):
    """Ask/tell optimizer that maximises scores; NaN scores mean "not scored".

    Subclass constructors take ``(dim, *, seed=None, **hyperparameters)``, validate the
    hyperparameters, call ``super().__init__(dim, seed=seed, hyperparameters=...)`` with the
    resolved values, and draw no random numbers (sampling happens in ``_propose``).
    """

    name: ClassVar[str]
    # Array hyperparameters stored in the state by fingerprint only (they can be large); the
    # optimizer that loads such a state must have been created with the same arrays.
    fingerprinted_hyperparameters: ClassVar[tuple[str, ...]] = ()
    # The keys of ``Generator.default_init`` that mean for this optimizer what they mean for the generator's latent
    # (``with_generator_defaults``); a preset's own values (``configured_values``) win over them.
    generator_defaults: ClassVar[tuple[str, ...]] = ("init_code", "sigma0", "radius")
    configured_values: ClassVar[dict[str, Any]] = {}

    def __init__(self, dim: int, *, seed: int | None = None, hyperparameters: dict[str, Any]):
        self.dim = check_int("dim", dim, 1)
        if seed is not None:
            seed = check_int("seed", seed, 0)
        self.seed = seed
        self.hyperparameters = hyperparameters
        self._generation = 0
        self.n_presented = 0
        self.n_scored = 0
        self.best_score = -math.inf
        self.best_code: np.ndarray | None = None
        self._rng = np.random.default_rng(seed)
        self._asked: np.ndarray | None = None

    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        """Keyword-only constructor parameters other than ``seed``."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "seed"]

    @property
    def generation(self) -> int:
        """Generations told so far (the number of the generation ``ask`` returns)."""
        return self._generation

    # ------------------------------------------------------------ public API

    def ask(self) -> np.ndarray:
        """Codes to present, (n, dim) float64; the same codes again until ``tell``."""
        if self._asked is None:
            codes = np.asarray(self._propose(), dtype=np.float64)
            if codes.ndim != 2 or codes.shape[1] != self.dim:
                raise OptimizerError(f"{self.name} proposed codes of shape {codes.shape}, not (n, {self.dim}); "
                                     "this is a bug in the optimizer")
            self._asked = codes
        return self._asked.copy()

    def tell(self, codes: Any, scores: Any) -> None:
        """Consume the scores of the codes of the last ``ask``, in the same order (NaN = not scored)."""
        if self._asked is None:
            raise OptimizerError("tell() called without a pending ask(); call ask() first")
        asked = self._asked
        codes = np.asarray(codes, dtype=np.float64)
        if codes.shape != asked.shape:
            raise OptimizerError(f"codes must have the asked shape {asked.shape}, got {codes.shape}")
        # Tolerance admits a float32 round trip; the update always uses the exact asked codes.
        if not np.allclose(codes, asked, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(asked).max()))):
            raise OptimizerError("codes differ from those of the last ask(); tell the asked codes in their order")
        scores = np.array(scores, dtype=np.float64)
        if scores.shape != (len(asked),):
            raise OptimizerError(f"scores must have shape ({len(asked)},), got {scores.shape}")
        if np.any(np.isinf(scores)):
            raise OptimizerError("scores must be finite or NaN (NaN marks an unscored presentation)")
        scored = ~np.isnan(scores)
        if scored.any():
            best = int(np.flatnonzero(scored)[np.argmax(scores[scored])])
            if scores[best] > self.best_score:
                self.best_score = float(scores[best])
                self.best_code = asked[best].copy()
        self._update(asked, scores)
        self.n_presented += len(asked)
        self.n_scored += int(scored.sum())
        self._generation += 1
        self._asked = None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: numbers, strings, lists, arrays, RNG state. Later ``ask`` and
        ``tell`` leave what it returns alone (arrays are copies, or ones the optimizer replaces rather than changes
        in place): the server serialises a snapshot after the next ``ask``."""
        hyperparameters = {
            key: value.copy() if isinstance(value, np.ndarray) else value for key, value in self.hyperparameters.items()
        }
        for key in self.fingerprinted_hyperparameters:
            hyperparameters[key] = {"sha256": array_fingerprint(hyperparameters[key])}
        return {
            "name": self.name,
            "dim": self.dim,
            "seed": self.seed,
            "hyperparameters": hyperparameters,
            "generation": self.generation,
            "n_presented": self.n_presented,
            "n_scored": self.n_scored,
            "best_score": self.best_score,
            "best_code": None if self.best_code is None else self.best_code.copy(),
            "rng": self._rng.bit_generator.state,
            "asked": None if self._asked is None else self._asked.copy(),
            "strategy": self._strategy_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Become the optimizer that produced ``state`` (hyperparameters included)."""
        if state.get("name") != self.name:
            raise OptimizerError(f"state is for optimizer {state.get('name')!r}, not {self.name!r}")
        hyperparameters = dict(state["hyperparameters"])
        for key in self.fingerprinted_hyperparameters:
            if array_fingerprint(self.hyperparameters[key]) != hyperparameters[key]["sha256"]:
                raise OptimizerError(
                    f"state was made with a different {key!r}; create the optimizer with the same {key} first"
                )
            hyperparameters[key] = self.hyperparameters[key]
        self.__init__(state["dim"], seed=state["seed"], **hyperparameters)
        self._generation = int(state["generation"])
        self.n_presented = int(state["n_presented"])
        self.n_scored = int(state["n_scored"])
        self.best_score = float(state["best_score"])
        self.best_code = None if state["best_code"] is None else np.array(state["best_code"], dtype=np.float64)
        self._asked = None if state["asked"] is None else np.array(state["asked"], dtype=np.float64)
        self._rng.bit_generator.state = state["rng"]
        self._load_strategy_state(state["strategy"])

    # ------------------------------------------------------------ subclass hooks

    @abstractmethod
    def _propose(self) -> np.ndarray:
        """The next codes (n, dim); may draw from ``self._rng`` and keep what ``_update`` needs."""

    @abstractmethod
    def _update(self, codes: np.ndarray, scores: np.ndarray) -> None:
        """Consume scores (NaN = not scored) for the asked ``codes``."""

    @abstractmethod
    def _strategy_state(self) -> dict[str, Any]:
        """The subclass's dynamic variables as a plain dict."""

    @abstractmethod
    def _load_strategy_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_strategy_state`` returned."""


# ---------------------------------------------------------------- state serialisation

_ARRAY_KEY = "__ndarray__"
_JSON_MEMBER = "__state__"


def state_summary(state: dict[str, Any]) -> dict[str, float | None]:
    """``sigma``, ``mean_norm`` (norm of the search mean) and ``best_score`` of a state dict; None where it has none."""
    strategy = state.get("strategy") or {}
    mean = strategy.get("mean", strategy.get("center"))
    if mean is None and strategy.get("population") is not None:
        mean = np.asarray(strategy["population"]).mean(axis=0)
    values = {"sigma": strategy.get("sigma"), "mean_norm": None if mean is None else np.linalg.norm(mean),
              "best_score": state.get("best_score")}  # -inf until something was scored
    return {k: float(v) if v is not None and np.isfinite(v) else None for k, v in values.items()}


def dumps_state(state: dict[str, Any]) -> bytes:
    """Serialise a state dict without pickle: arrays into an npz, everything else as JSON inside it.

    Python ints of any size (the RNG state's 128-bit numbers) and floats (repr) round-trip exactly;
    tuples come back as lists.
    """
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise OptimizerError("state arrays must not hold Python objects")
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {_ARRAY_KEY: key}
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise OptimizerError("state dict keys must be strings")
            if _ARRAY_KEY in value:
                raise OptimizerError(f"state dict key {_ARRAY_KEY!r} is reserved")
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return float(value)
        if value is None or isinstance(value, str):
            return value
        raise OptimizerError(f"cannot serialise a {type(value).__name__} in an optimizer state")

    document = json.dumps({"format": STATE_FORMAT, "state": encode(state)})
    arrays[_JSON_MEMBER] = np.frombuffer(document.encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def loads_state(data: bytes) -> dict[str, Any]:
    """Inverse of ``dumps_state``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        document = json.loads(arrays.pop(_JSON_MEMBER).tobytes().decode())
    except (OSError, ValueError, KeyError) as exc:
        raise OptimizerError(f"not an optimizer state made by dumps_state: {exc}") from None
    if document.get("format") != STATE_FORMAT:
        raise OptimizerError(f"unsupported optimizer state format {document.get('format')!r}")

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_ARRAY_KEY}:
                return arrays[value[_ARRAY_KEY]]
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(document["state"])
