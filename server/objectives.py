"""Objectives: how a generation's recorded rates become the one score per image an optimizer sees.

Small objects that combine with ``+``, ``-`` and ``*`` (lucent's idea), each mapping the
presentations of one generation to one value per presentation:

- ``rate(c)``: channel ``c``'s rate;
- ``sum(a, b, ...)`` / ``mean(a, b, ...)``: of objectives or channel numbers; weights by ``0.5 * rate(3)``;
- ``baseline(x)``: ``x`` on rates minus a baseline per channel: the presentation's own
  ``baseline_rates`` (protocol 1.1) when the rig sent them, else the mean response of the
  generation's reference images;
- ``zscore(x)``: ``x`` on rates z-scored per channel across every presentation of the generation.

A session config names one as an expression, e.g. ``zscore(rate(5)) - 0.5 * baseline(rate(17))``
(parsed here, never evaluated by Python), or as today's ``{"channels": [...], "combine": "mean"}``.
An image's score is the mean over its presentations that scored; a value or mean that overflows a float
(huge rates or weights) is NaN, not scored, so a rig's numbers never fail a thread.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from rig_client.protocol import MAX_CHANNELS, ErrorCode
from server import RigInputError


def rate_matrix(rows: Sequence[Sequence[float | None]], width: int | None = None) -> np.ndarray:
    """Rows of rates as a float matrix of ``width`` columns (default: the widest row), None and missing
    channels NaN: a rig that restarts may announce fewer channels in the middle of a generation."""
    width = max((len(row) for row in rows), default=0) if width is None else width
    if all(len(row) == width for row in rows):  # the usual case, in one conversion (None becomes NaN)
        return np.array(rows, dtype=float).reshape(len(rows), width)
    if all(len(row) == 0 for row in rows):  # no rates at all (a generation's baselines, where none was sent)
        return np.full((len(rows), width), np.nan)
    matrix = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        matrix[i, :len(row)] = [np.nan if r is None else r for r in row[:width]]
    return matrix


class Statistics:
    """Per-channel statistics of a generation's rates, each computed the first time an objective reads it
    (the usual objective, a channel's rate, reads none)."""

    def __init__(self, rates: np.ndarray, is_reference: np.ndarray):
        self._rates, self._is_reference = rates, is_reference

    @functools.cached_property
    def reference_mean(self) -> np.ndarray:
        """Over the generation's reference presentations (NaN without any)."""
        if not self._is_reference.any():
            return np.full(self._rates.shape[1], np.nan)
        return _quietly(np.nanmean, self._rates[self._is_reference], axis=0)

    @functools.cached_property
    def mean(self) -> np.ndarray:
        """Over all the generation's presentations."""
        return _quietly(np.nanmean, self._rates, axis=0)

    @functools.cached_property
    def std(self) -> np.ndarray:
        return _quietly(np.nanstd, self._rates, axis=0)


def _unscored_if_infinite(values: np.ndarray) -> np.ndarray:
    """``values`` with each infinity NaN (not scored)."""
    return np.where(np.isinf(values), np.nan, values)


def _quietly(reduce, values: np.ndarray, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels: NaN statistics
        return reduce(values, **kwargs)


@dataclass(frozen=True)
class Context:
    """The presentations an objective scores: rates (n, channels), baselines (NaN where not sent),
    and the statistics of the generation's own rates (an inner objective's context, with rates
    transformed, keeps them)."""

    rates: np.ndarray
    baselines: np.ndarray
    statistics: Statistics

    @classmethod
    def of(cls, rates: np.ndarray, baselines: np.ndarray, is_reference: np.ndarray) -> Context:
        return cls(rates, baselines, Statistics(rates, is_reference))


class Objective:
    """A map from a ``Context`` to one value per presentation; combine with ``+``, ``-``, ``*``."""

    def __call__(self, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    @property
    def channels(self) -> frozenset[int]:
        """The channels this objective reads (a rig must announce more than the largest)."""
        raise NotImplementedError

    def __add__(self, other: Objective | float) -> Objective:
        return Sum((self, _lift(other)))

    __radd__ = __add__

    def __sub__(self, other: Objective | float) -> Objective:
        return Sum((self, Scaled(-1.0, _lift(other))))

    def __rsub__(self, other: float) -> Objective:
        return Sum((_lift(other), Scaled(-1.0, self)))

    def __mul__(self, factor: float) -> Objective:
        if not isinstance(factor, int | float):
            raise TypeError("objectives multiply by numbers only (weights)")
        return Scaled(float(factor), self)

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Scaled(-1.0, self)

    # ---------------------------------------------------------------- use
    @classmethod
    def from_config(cls, config: Mapping) -> Objective:
        """From a thread's objective settings (an ``ObjectiveConfig``'s JSON, as stored). Objectives are
        immutable, so each distinct setting is validated and built once (the engine asks every step)."""
        return _built(json.dumps(dict(config), sort_keys=True))

    @functools.cached_property
    def n_channels(self) -> int:
        """How many channels a rig must announce for this objective."""
        return max(self.channels) + 1

    def check_rates(self, rates: Sequence) -> None:
        """Raise ``RigInputError`` if a presentation's rates do not cover the channels scored."""
        if len(rates) < self.n_channels:
            raise RigInputError(ErrorCode.BAD_FIELD, f"rates has {len(rates)} channel(s) but this thread scores "
                                f"channel {self.n_channels - 1}")

    def score_generation(self, presentations: Mapping[str, Sequence[tuple[Sequence, Sequence | None]]],
                         references: set[str] | frozenset[str]) -> dict[str, float]:
        """Each stimulus's score from its presentations ``(rates, baseline_rates or None)``.

        ``references`` are the reference stimuli among them (for reference baselines); a stimulus
        with no finite score is NaN.
        """
        owners, rates, baselines = [], [], []
        for stimulus_id, shown in presentations.items():
            for rate_row, baseline_row in shown:
                owners.append(stimulus_id)
                rates.append(rate_row)
                baselines.append([] if baseline_row is None else baseline_row)
        if not owners:
            return {}
        width = max(len(row) for row in rates)
        rates_array, baseline_array = rate_matrix(rates, width), rate_matrix(baselines, width)
        is_reference = np.array([owner in references for owner in owners])
        values = self._values(Context.of(rates_array, baseline_array, is_reference))
        stimuli = list(presentations)
        index = {stimulus_id: i for i, stimulus_id in enumerate(stimuli)}
        rows = np.array([index[owner] for owner in owners])
        finite = np.isfinite(values)  # each stimulus's score: the mean of its finite values, NaN if none
        sums = np.bincount(rows, weights=np.where(finite, values, 0.0), minlength=len(stimuli))
        counts = np.bincount(rows, weights=finite, minlength=len(stimuli))
        with np.errstate(invalid="ignore", over="ignore"):
            return dict(zip(stimuli, _unscored_if_infinite(sums / counts).tolist()))

    def score(self, rates: Sequence[float | None]) -> float:
        """One presentation on its own (``zscore`` and reference baselines need a generation: NaN)."""
        row = np.array([[np.nan if r is None else r for r in rates]], dtype=float)
        return float(self._values(Context.of(row, np.full_like(row, np.nan), np.array([False])))[0])

    def _values(self, ctx: Context) -> np.ndarray:
        """One value per presentation; one that overflows (huge rates or weights) is NaN, not scored: an
        optimizer takes finite scores or NaN only."""
        with np.errstate(over="ignore", invalid="ignore"):
            return _unscored_if_infinite(np.asarray(self(ctx), dtype=float))


@functools.lru_cache(maxsize=256)
def _built(config: str) -> Objective:
    from server.session_config import ObjectiveConfig

    return ObjectiveConfig.stored(json.loads(config)).build()


def objective_channels(config: Mapping) -> list[int]:
    """The channels a thread's stored objective settings score: as listed, or those its expression reads, in order."""
    return list(config["channels"]) if config.get("channels") else sorted(Objective.from_config(config).channels)


LABEL_CHARS = 60  # a longer expression is shortened in its score label
NAMED_CHANNELS = 4  # a score label names this many channels one by one; more as ranges (a probe has 384)
_NUMBERS = re.compile(r"(?<![\w.])\d+(?:\s*,\s*\d+)+(?![\w.])")  # a list of channel numbers: 3, 4, 5


def score_label(config: Mapping, labels: Sequence[str] | None = None) -> str:
    """What a thread's scores are, for a figure's axis: channels' rates are in spikes/s, an expression's
    score is in whatever unit the expression makes (a z-score has none). An expression over
    ``LABEL_CHARS`` is shortened to one readable line: runs of consecutive channel numbers as
    ``100, …, 199``, then, if still too long, its middle elided.

    Given ``labels`` (the rig's channel labels, ``[]`` when it sent none), a channels objective's label
    names its channels too, so labels of different objectives tell them apart: ``score (spikes/s) of ch 2
    (blocks.6:5)``, ``score (spikes/s), mean of ch 0 (a), ch 4``, ``score (spikes/s), sum of ch 0-383
    (384 channels)``."""
    channels = config.get("channels")
    if not channels:
        return f"score = {_short(config['expression'])}"
    if labels is None:
        return "score (spikes/s)"
    if len(channels) > NAMED_CHANNELS:
        named = f"ch {channel_ranges(channels)}"
    else:
        named = ", ".join(f"ch {c} ({labels[c]})" if c < len(labels) else f"ch {c}" for c in channels)
    return f"score (spikes/s){'' if len(channels) == 1 else ', ' + config.get('combine', 'mean')} of {named}"


def _short(expression: str) -> str:
    if len(expression) <= LABEL_CHARS:
        return expression
    text = _NUMBERS.sub(lambda m: _runs([int(n) for n in m.group().split(",")]), expression)
    if len(text) <= LABEL_CHARS:
        return text
    head, tail = text[:LABEL_CHARS * 2 // 3], text[-(LABEL_CHARS // 3):]
    head = head[:head.rfind(" ")] if head.rfind(" ") > 0 else head  # cut between words
    tail = tail[tail.find(" ") + 1:] if " " in tail else tail
    return f"{head} … {tail}"


def _runs(numbers: list[int]) -> str:
    """``numbers`` with each run of three or more consecutive ones as ``a, …, b``."""
    return ", ".join(f"{p[0]}, …, {p[-1]}" if len(p) > 2 else ", ".join(map(str, p)) for p in consecutive_runs(numbers))


def channel_ranges(channels, most: int = 10) -> str:
    """Sorted ``channels`` for a message: runs of three or more as ``a-b``, at most ``most`` parts (then
    ``…``), and the count when a run or the cut hides some: ``3, 5``, ``100-383 (284 channels)``."""
    runs = consecutive_runs(sorted(channels))
    parts = [p for run in runs for p in ([f"{run[0]}-{run[-1]}"] if len(run) > 2 else map(str, run))]
    text = ", ".join(parts[:most]) + (", …" if len(parts) > most else "")
    return text if len(parts) == len(channels) <= most else f"{text} ({len(channels)} channels)"


def consecutive_runs(numbers) -> list[list[int]]:
    """``numbers`` in their order, cut where one is not the last plus one: ``[3, 4, 5, 9]`` -> ``[[3, 4, 5], [9]]``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def objective_segments(generations: Sequence[tuple[int, Mapping]]) -> list[tuple[int, Mapping]]:
    """The (first generation number, objective) of each run of generations scored alike, from (number,
    objective) pairs in generation order: one run unless the thread was retargeted."""
    segments: list[tuple[int, Mapping]] = []
    for number, objective in generations:
        if not segments or segments[-1][1] != objective:
            segments.append((number, objective))
    return segments


def _lift(value: Objective | float) -> Objective:
    if isinstance(value, Objective):
        return value
    if isinstance(value, int | float):
        return Constant(float(value))
    raise TypeError(f"cannot combine an objective with {type(value).__name__}")


@dataclass(frozen=True)
class Rate(Objective):
    channel: int

    def __call__(self, ctx: Context) -> np.ndarray:
        if self.channel >= ctx.rates.shape[1]:
            return np.full(len(ctx.rates), np.nan)
        return ctx.rates[:, self.channel]

    @property
    def channels(self) -> frozenset[int]:
        return frozenset({self.channel})


@dataclass(frozen=True)
class Constant(Objective):
    value: float

    def __call__(self, ctx: Context) -> np.ndarray:
        return np.full(len(ctx.rates), self.value)

    @property
    def channels(self) -> frozenset[int]:
        return frozenset()


@dataclass(frozen=True)
class Scaled(Objective):
    factor: float
    inner: Objective

    def __call__(self, ctx: Context) -> np.ndarray:
        return self.factor * self.inner(ctx)

    @property
    def channels(self) -> frozenset[int]:
        return self.inner.channels


@dataclass(frozen=True)
class Sum(Objective):
    terms: tuple[Objective, ...]

    def __call__(self, ctx: Context) -> np.ndarray:
        return np.sum([term(ctx) for term in self.terms], axis=0)

    @property
    def channels(self) -> frozenset[int]:
        return frozenset().union(*(term.channels for term in self.terms))


@dataclass(frozen=True)
class Mean(Sum):
    def __call__(self, ctx: Context) -> np.ndarray:
        return super().__call__(ctx) / len(self.terms)


@dataclass(frozen=True)
class Baseline(Objective):
    """``inner`` on rates minus the presentation's baseline (else the generation's reference mean)."""

    inner: Objective

    def __call__(self, ctx: Context) -> np.ndarray:
        baseline = np.where(np.isnan(ctx.baselines), ctx.statistics.reference_mean, ctx.baselines)
        return self.inner(replace(ctx, rates=ctx.rates - baseline))

    @property
    def channels(self) -> frozenset[int]:
        return self.inner.channels


@dataclass(frozen=True)
class ZScore(Objective):
    """``inner`` on rates z-scored per channel across the generation (NaN for a constant channel)."""

    inner: Objective

    def __call__(self, ctx: Context) -> np.ndarray:
        with np.errstate(all="ignore"):
            std = np.where(ctx.statistics.std > 0, ctx.statistics.std, np.nan)
            return self.inner(replace(ctx, rates=(ctx.rates - ctx.statistics.mean) / std))

    @property
    def channels(self) -> frozenset[int]:
        return self.inner.channels


def rate(channel: int) -> Rate:
    """The response of one channel (``0`` to ``MAX_CHANNELS - 1``, the most a rig can announce)."""
    if not 0 <= channel < MAX_CHANNELS:
        raise ValueError(f"channel {channel} does not exist: a rig has at most {MAX_CHANNELS} channels "
                         f"(0-{MAX_CHANNELS - 1})")
    return Rate(channel)


def _terms(args: tuple) -> tuple[Objective, ...]:
    if not args:
        raise ValueError("sum() and mean() need at least one term")
    return tuple(rate(a) if isinstance(a, int) else _lift(a) for a in args)


FUNCTIONS = {
    "rate": rate,
    "sum": lambda *args: Sum(_terms(args)),
    "mean": lambda *args: Mean(_terms(args)),
    "baseline": Baseline,
    "zscore": ZScore,
}
MAX_EXPRESSION_NODES = 200


def parse(expression: str) -> Objective:
    """An objective from its expression (``rate``, ``sum``, ``mean``, ``baseline``, ``zscore``, numbers,
    ``+ - *``); ``ValueError`` naming what is not allowed. Nothing is evaluated by Python."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as error:
        raise ValueError(f"objective expression {expression!r} is not valid: {error.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_EXPRESSION_NODES:
        raise ValueError(f"objective expression is longer than {MAX_EXPRESSION_NODES} parts")
    result = _build(tree.body)
    if not isinstance(result, Objective):
        raise ValueError(f"objective expression {expression!r} is a number, not an objective; use rate(CHANNEL)")
    if not result.channels:
        raise ValueError(f"objective expression {expression!r} reads no channel")
    return result


def _finite(number: int | float) -> int | float:
    if not np.isfinite(float(number)):
        raise ValueError(f"numbers in an objective expression are finite; {number!r} is not")
    return number


def _build(node: ast.AST):
    allowed = f"allowed: {', '.join(FUNCTIONS)}(...), numbers, + - *"
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _finite(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_build(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
        left, right = _build(node.left), _build(node.right)
        if isinstance(node.op, ast.Mult) and isinstance(left, Objective) and isinstance(right, Objective):
            raise ValueError("objectives multiply by numbers only (weights), not by each other")
        try:
            result = {ast.Add: lambda: left + right, ast.Sub: lambda: left - right,
                      ast.Mult: lambda: left * right}[type(node.op)]()
        except TypeError as error:
            raise ValueError(str(error)) from None
        return result if isinstance(result, Objective) else _finite(result)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
            and not node.keywords:
        args = [_build(arg) for arg in node.args]
        name = node.func.id
        if name == "rate":
            if len(args) != 1 or not isinstance(args[0], int) or args[0] < 0:
                raise ValueError("rate() takes one channel number >= 0, e.g. rate(5)")
        elif name in ("baseline", "zscore"):
            if len(args) != 1 or not isinstance(args[0], Objective):
                raise ValueError(f"{name}() takes one objective, e.g. {name}(rate(5))")
        elif any(isinstance(a, float) or (isinstance(a, int) and a < 0) for a in args):
            raise ValueError(f"{name}() takes objectives or channel numbers >= 0")
        return FUNCTIONS[name](*args)
    raise ValueError(f"{ast.unparse(node)!r} is not allowed in an objective expression; {allowed}")
