"""Session configuration: what a user asks for when starting a recording.

Validated at the boundary (REST body, ``--config`` file) so that a typo or an unknown optimizer is
a clear error naming the field, never a surprise mid-session. Generator and optimizer names are
checked against ``generators.available()`` / ``optimizers.available()``. The stored config is the
one source of a thread's settings: the engine re-validates it (``SessionConfig.stored``), so every default is
written here once.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

import generators
import optimizers
from generators.base import option_names
from rig_client.protocol import MAX_CHANNELS, MAX_DROPPED_FRAMES, MAX_WINDOW_MS, is_rig_name
from server import ServerError

MAX_SEED = 2**32 - 1  # fits every RNG seed API (numpy RandomState included)
MAX_PARAMS_DEPTH = 4  # optimizer_params nest at most a list (init_code) in the top object
CLOCK_SKEW = timedelta(minutes=1)  # how far a session_start_time may lie ahead of the server's clock

def _duration_pattern() -> str:
    """An ISO 8601 duration with at least one component, and a T only before a time component (DANDI refuses
    "PT" and "P1YT"); written without look-aheads, so that every JSON Schema tool reads it."""
    n = r"\d+(?:[.,]\d+)?"
    time = f"T(?:{n}H(?:{n}M)?(?:{n}S)?|{n}M(?:{n}S)?|{n}S)"
    date = [f"{n}{unit}" for unit in "YMWD"]
    tails = [f"{part}{''.join(f'(?:{later})?' for later in date[i + 1:])}(?:{time})?" for i, part in enumerate(date)]
    return f"P(?:{'|'.join([*tails, time])})"


_DURATION = _duration_pattern()
AGE = re.compile(f"(?:{_DURATION}(?:/(?:{_DURATION})?)?)?")  # a duration, or a range "P5Y/P7Y" or "P5Y/", as NWB takes
#: Days of each unit before and after the T, to compare the ends of a range (a month and a year: their mean lengths).
_DATE_DAYS, _TIME_DAYS = {"Y": 365.25, "M": 30.44, "W": 7.0, "D": 1.0}, {"H": 1 / 24, "M": 1 / 1440, "S": 1 / 86400}


def age_problem(age: str) -> str | None:
    """Why ``age`` is no subject age NWB and DANDI take (None: it is one, or "", unknown)."""
    if not AGE.fullmatch(age):
        return (f'{age!r} is not an ISO 8601 duration: give e.g. "P6Y" (6 years), "P30D" (30 days), "P1Y6M", '
                'a range "P5Y/P7Y", or "" (unknown)')
    ends = [_days(end) for end in age.split("/") if end]
    if len(ends) == 2 and ends[0] >= ends[1]:
        return f"{age!r} is a range that does not grow: give the lower age first, e.g. \"P5Y/P7Y\""
    return None


def _days(duration: str) -> float:
    """The approximate length of a valid ISO 8601 ``duration`` in days."""
    date, _, time = duration[1:].replace(",", ".").partition("T")
    return sum(float(value) * days[unit] for part, days in ((date, _DATE_DAYS), (time, _TIME_DAYS))
               for value, unit in re.findall(r"([\d.]+)([A-Z])", part))
Name = Annotated[str, Field(min_length=1, max_length=200)]
MAX_PATH = 1000  # characters of a file or folder on the server
MAX_MESSAGE = 2000  # characters of one problem's message: a 422 does not echo a long input in full


FIXED_DESIGN = "fixed-design"  # the optimizer of manifold and retest threads: their codes, shown once
_STORED = "stored"  # validation context key: the config is read back from the database (``SessionConfig.stored``)


class ConfigError(ServerError, ValueError):
    """A session configuration that cannot be used; the message names the field."""


def _error_at(loc: tuple[str | int, ...], message: str) -> ValidationError:
    """A validation error of the field at ``loc``, for a model validator (whose errors pydantic places at the model)."""
    problem = {"type": PydanticCustomError("value_error", "{message}", {"message": message}), "loc": loc, "input": None}
    return ValidationError.from_exception_data("SessionConfig", [problem])


def _check_registered(kind: str, name: str, names: list[str], note: str = "") -> str:
    if name not in names:
        raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(names))}{note}")
    return name


def _check_json_value(value: Any, where: str, depth: int) -> None:
    """Finite numbers only, nested at most `MAX_PARAMS_DEPTH` deep."""
    if depth > MAX_PARAMS_DEPTH:
        raise ValueError(f"{where} nests deeper than {MAX_PARAMS_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; only finite numbers are allowed")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _check_json_value(item, f"{where}.{key}", depth + 1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


class ReferenceConfig(_Strict):
    """Natural images interleaved with every generation as a stable baseline."""

    source: str = Field("skimage", min_length=1, max_length=MAX_PATH,
                        description='"skimage" or a folder of images on the server.')
    count: int = Field(10, strict=True, ge=1, le=100, description="How many reference images to show per generation.")

    @field_validator("source")
    @classmethod
    def _source_exists(cls, source: str, info: ValidationInfo) -> str:
        if (info.context or {}).get(_STORED):  # checked at creation; the archive holds the references since
            return source
        try:
            folder = Path(source).expanduser()
        except RuntimeError:  # ~user naming no user on the server
            raise ValueError(f"{source!r}: no such user's home folder on the server") from None
        if source != "skimage" and not folder.is_dir():
            raise ValueError(f'{source!r} is neither "skimage" nor a folder on the server')
        return source


class ObjectiveConfig(_Strict):
    """What a thread maximises: channels combined by ``mean``/``sum``, or an objective expression
    (``server.objectives``: ``rate``, ``sum``, ``mean``, ``baseline``, ``zscore``, numbers, ``+ - *``)."""

    channels: list[Annotated[int, Field(strict=True, ge=0, lt=MAX_CHANNELS)]] | None = Field(
        None, min_length=1, max_length=MAX_CHANNELS)
    combine: Literal["mean", "sum"] = "mean"
    expression: str | None = Field(None, min_length=1, max_length=2000,
                                   description='e.g. "zscore(rate(5)) - 0.5 * baseline(rate(17))"')

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, channels: list[int] | None) -> list[int] | None:
        if channels is not None and len(set(channels)) != len(channels):
            repeated = sorted(channel for channel, n in Counter(channels).items() if n > 1)
            raise ValueError(f"channels repeat: {', '.join(map(str, repeated))}; give each channel once")
        return channels

    @model_validator(mode="after")
    def _one_form(self, info: ValidationInfo) -> ObjectiveConfig:
        if (self.channels is None) == (self.expression is None):
            raise ValueError('give either "channels" (with "combine") or "expression", not both or neither')
        if self.expression is not None:
            from server.objectives import parse

            parse(self.expression)
            if self.combine != "mean" and not (info.context or {}).get(_STORED):  # stored ones with it still load
                raise ValueError(f'"combine": "{self.combine}" applies to "channels" only; an expression combines '
                                 f'its own terms: write "{self.combine}(...)" around them, e.g. "sum(rate(1), '
                                 'rate(2))"')
        return self

    @classmethod
    def stored(cls, objective: Mapping) -> ObjectiveConfig:
        """An objective as the database holds it (a thread's or a generation's), without the checks that only a new
        one gets (one stored before them still loads)."""
        return cls.model_validate(objective, context={_STORED: True})

    @model_serializer(mode="wrap")
    def _without_combine_for_an_expression(self, handler: SerializerFunctionWrapHandler):
        """``combine`` only with ``channels``: it means nothing for an expression (stored ones with it still load)."""
        data = handler(self)
        if self.expression is not None:
            data.pop("combine", None)
        return data

    def build(self):
        """The ``server.objectives.Objective`` these settings name."""
        from server import objectives

        if self.expression is not None:
            return objectives.parse(self.expression)
        terms = tuple(objectives.Rate(c) for c in self.channels)
        return objectives.Mean(terms) if self.combine == "mean" else objectives.Sum(terms)

    @property
    def n_channels(self) -> int:
        """How many channels a rig must announce for this objective."""
        return self.build().n_channels


class DriftConfig(_Strict):
    """The reference-drift alarm (see docs/dashboard.md): when a thread's references fall or a channel goes silent."""

    baseline_generations: int = Field(
        5, strict=True, ge=1, le=1000, description="Early generations that set the reference level.")
    drop_sem: float = Field(
        4.0, strict=True, gt=0, description="Alarm when the reference mean is this many SEM below the early level.")
    consecutive: int = Field(
        2, strict=True, ge=1, le=100, description="Generations in a row the drop must last before the alarm.")
    silent_fraction: float = Field(
        0.1, strict=True, gt=0, lt=1,
        description="A channel is low below this fraction of its early rate, and silent once a run of low "
        "generations has too few spikes for that rate.")


class ManifoldConfig(_Strict):
    """A Manifold tuning map around an evolution (spec B1): hemisphere grids over its trajectory's PCs."""

    source: Name = Field(description="Name of the evolution thread, in the same session, to map around.")
    planes: list[Literal["pc2-3", "pc49-50", "random"]] = Field(
        default_factory=lambda: ["pc2-3"], min_length=1,
        description="Grid planes: PC1 with PC2-PC3, the PC49-PC50 control, random orthogonal vectors.")
    step_deg: Literal[18, 9] = Field(18, description="18 deg: 11x11 grid; 9 deg: 21x21 grid.")

    @field_validator("planes")
    @classmethod
    def _each_plane_once(cls, planes: list[str], info: ValidationInfo) -> list[str]:
        if len(set(planes)) < len(planes) and not (info.context or {}).get(_STORED):  # stored ones with it still load
            raise ValueError(f"planes repeat: {planes}; give each plane once")
        return planes

    @field_validator("step_deg", mode="before")
    @classmethod
    def _an_integer(cls, step: object) -> object:
        if not isinstance(step, int) or isinstance(step, bool):  # a Literal takes 18.0 as 18
            raise ValueError(f"{step!r}: give the integer 18 or 9")
        return step

    @property
    def n(self) -> int:
        return 180 // self.step_deg + 1


class RetestConfig(_Strict):
    """An evolution's best images shown again (``server/retest.py``): fresh showings of images chosen on other
    showings, so their mean is not biased up by the choice, as the best score of a noisy evolution is."""

    source: Name = Field(description="Name of the evolution thread, in the same session, whose best images to show.")
    top: int = Field(10, strict=True, ge=1, le=100,
                     description="How many of its images to show again: the best by their mean over all showings.")


DESIGNS = {"manifold": ("source, planes, step_deg", "a fixed grid"),  # settings and what a thread of the kind shows
           "retest": ("source, top", "its source's best images")}


class FlaggedTrialsConfig(_Strict):
    """What a presentation the rig flagged (protocol 1.1 trial facts) means for scoring."""

    policy: Literal["reshow", "score"] = Field(
        "reshow", description='"reshow": a flagged presentation is stored but not scored, and its stimulus is shown '
        'again within the re-queue limit; "score": flagged presentations are scored like any other.')
    max_dropped_frames: int = Field(
        0, strict=True, ge=0, le=MAX_DROPPED_FRAMES,
        description="Dropped frames a presentation may have and still be scored (reshow).")

    def scores(self, facts: dict[str, Any] | None) -> bool:
        """Whether a presentation with these trial facts is scored (and so answers its stimulus)."""
        if self.policy == "score" or not facts:
            return True
        return not facts.get("fixation_broken", False) and facts.get("dropped_frames", 0) <= self.max_dropped_frames


class ThreadConfig(_Strict):
    """An evolution (generator, optimizer, objective, seed), or a Manifold map around one or a retest of its best
    images."""

    name: Name
    kind: Literal["evolution", "manifold", "retest"] = "evolution"
    generator: str = Field(min_length=1, max_length=200)
    optimizer: str | None = Field(
        None, max_length=200,
        description=f"Required for evolutions; manifold and retest threads take none (theirs is {FIXED_DESIGN!r}).")
    optimizer_params: dict[str, Any] = Field(default_factory=dict)
    generator_options: dict[str, Any] = Field(
        default_factory=dict, description='The generator\'s own options, e.g. {"truncation": 0.5} for BigGAN '
        "(generators.md); default: the generator's defaults.")
    weights: str | None = Field(
        None, min_length=1, max_length=MAX_PATH,
        description="The generator's weights file or folder on the server; default: ACTMAX_WEIGHTS_DIR/<generator>/, "
        "then the generator's standard locations.")
    manifold: ManifoldConfig | None = Field(None, description="Required for manifold threads.")
    retest: RetestConfig | None = Field(None, description="Required for retest threads.")
    objective: ObjectiveConfig
    seed: int | None = Field(
        None, strict=True, ge=0, le=MAX_SEED, description="None: drawn when the session is created, and recorded."
    )
    n_generations: int = Field(
        50, strict=True, ge=1, le=10_000, description="Evolutions only; a manifold or a retest is one generation.")
    repeats: int = Field(1, strict=True, ge=1, le=100, description="Presentations of each image per generation.")

    @field_validator("optimizer_params")
    @classmethod
    def _bounded_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        _check_json_value(params, "optimizer_params", 1)
        population = params.get("population")
        if isinstance(population, int | float) and population > optimizers.MAX_POPULATION:
            raise ValueError(f"population {population} is over {optimizers.MAX_POPULATION} images per generation")
        if isinstance(params.get("eigenbasis"), str):  # hess-cma's file
            params = {**params, "eigenbasis": server_path(params["eigenbasis"])}
        return params

    @field_validator("weights")
    @classmethod
    def _absolute_weights(cls, path: str | None) -> str | None:
        return None if path is None else server_path(path)

    @field_validator("generator")
    @classmethod
    def _known_generator(cls, name: str) -> str:
        return _check_registered("generator", name, generators.available(),
                                 " (GET /generators or `actmax weights list` says which have weights)")

    @field_validator("generator_options")
    @classmethod
    def _known_generator_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        _check_json_value(options, "generator_options", 1)
        name = info.data.get("generator")
        accepted = option_names(name) if name is not None else None
        unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
        if unknown:
            raise ValueError(f"{name} does not take option(s) {', '.join(unknown)}; "
                             f"it takes: {', '.join(accepted) or 'no options'}")
        return options

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str | None) -> str | None:
        return name if name is None else _check_registered("optimizer", name, optimizers.available())

    @model_validator(mode="after")
    def _kind_fields(self) -> ThreadConfig:
        for kind in DESIGNS:
            if kind != self.kind and getattr(self, kind) is not None:
                raise ValueError(f"{kind} settings are for {kind} threads (kind: {kind})")
        if self.kind == "evolution":
            if self.optimizer in (None, FIXED_DESIGN):
                retest = "; to show chosen images again, use a retest thread (kind: retest)" if self.optimizer else ""
                raise ValueError(f"an evolution thread needs an optimizer other than {FIXED_DESIGN!r}{retest}")
        else:
            fields, shown = DESIGNS[self.kind]
            if getattr(self, self.kind) is None:
                raise ValueError(f"a {self.kind} thread needs {self.kind} settings ({fields})")
            if self.optimizer not in (None, FIXED_DESIGN) or self.optimizer_params:
                raise ValueError(f"a {self.kind} thread presents {shown} and takes no optimizer")
            if "n_generations" in self.model_fields_set and self.n_generations != 1:
                raise ValueError(f"a {self.kind} thread is one generation: leave n_generations out")
            self.optimizer, self.n_generations = FIXED_DESIGN, 1
        return self

    @property
    def source(self) -> str | None:
        """The evolution a manifold or retest thread is made from; None for an evolution."""
        settings = self.manifold or self.retest
        return None if settings is None else settings.source


class SessionConfig(_Strict):
    """A recording session: the rig that will say HELLO, metadata, references and threads."""

    name: Name
    rig: Name = Field(description="The rig name that will HELLO; batches go only to it.")
    animal: Annotated[str, Field(max_length=200)] = ""
    array: Annotated[str, Field(max_length=200)] = ""
    notes: Annotated[str, Field(max_length=10_000)] = ""
    # Free-form metadata for exports (NWB); see docs/export.md for the defaults used when absent.
    subject_id: str = Field("", max_length=200, description='Subject identifier; "" uses `animal`.')
    species: str = Field("", max_length=200, description='Latin binomial, e.g. "Macaca mulatta".')
    sex: Literal["M", "F", "U", "O"] = Field("U", description="Subject sex: M, F, U (unknown), O (other).")
    age: str = Field("", max_length=200, json_schema_extra={"pattern": f"^{AGE.pattern}$"},
                     description='ISO 8601 duration such as "P6Y", or a range "P5Y/P7Y"; "": unknown.')
    lab: Annotated[str, Field(max_length=200)] = ""
    experimenter: str = Field("", max_length=200, description='"Last, First", as NWB asks.')
    session_start_time: datetime | None = Field(None, description="With a time zone; None: when created.")
    response_window_ms: tuple[Annotated[int, Field(strict=True, ge=0, le=MAX_WINDOW_MS)],
                              Annotated[int, Field(strict=True, ge=0, le=MAX_WINDOW_MS)]] = (50, 200)
    references: ReferenceConfig = Field(default_factory=ReferenceConfig)
    flagged_trials: FlaggedTrialsConfig = Field(default_factory=FlaggedTrialsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    threads: list[ThreadConfig] = Field(min_length=1, max_length=64)

    @field_validator("rig")
    @classmethod
    def _rig_name(cls, rig: str) -> str:
        if not is_rig_name(rig):
            raise ValueError(f"{rig!r} cannot be a rig's name: rigs say HELLO with 1-64 of A-Z a-z 0-9 . _ - "
                             "(first a letter or digit); use the name your rig connects with")
        return rig

    @field_validator("age")
    @classmethod
    def _iso_duration(cls, age: str, info: ValidationInfo) -> str:
        if not (info.context or {}).get(_STORED) and (problem := age_problem(age)) is not None:  # stored ones load
            raise ValueError(problem)
        return age

    @field_validator("session_start_time")
    @classmethod
    def _not_in_the_future(cls, start: datetime | None) -> datetime | None:
        if start is not None and start.utcoffset() is None:
            raise ValueError(f"{start.isoformat()} has no time zone: give the one the recording ran in, e.g. "
                             f"{start:%Y-%m-%dT%H:%M:%S}+09:00, or {start:%Y-%m-%dT%H:%M:%S}Z for UTC")
        now = datetime.now(UTC)
        if start is not None and start > now + CLOCK_SKEW:
            raise ValueError(f"{start.isoformat()} is in the future (the server's clock says "
                             f"{now:%Y-%m-%dT%H:%M:%SZ}); give when the recording started, or null for now")
        return start

    @field_validator("response_window_ms")
    @classmethod
    def _window_ordered(cls, window: tuple[int, int]) -> tuple[int, int]:
        if window[0] >= window[1]:
            raise ValueError(f"start must be before end, got [{window[0]}, {window[1]}] ms")
        return window

    @field_validator("threads")
    @classmethod
    def _unique_thread_names(cls, threads: list[ThreadConfig]) -> list[ThreadConfig]:
        names = [unicodedata.normalize("NFC", thread.name) for thread in threads]  # "Ä" is one letter or A + ¨
        repeated = sorted({thread.name for thread, name in zip(threads, names) if names.count(name) > 1})
        if repeated:
            raise ValueError(f"thread names must be unique, repeated: {', '.join(repeated)}"
                             + (" (the same letters, written in two Unicode forms)" if len(set(repeated)) > 1 else ""))
        return threads

    @model_validator(mode="after")
    def _design_sources(self) -> SessionConfig:
        """A manifold's or retest's source is an evolution of this session, drawn by the same generator."""
        evolutions = {t.name: t for t in self.threads if t.kind == "evolution"}
        for i, thread in enumerate(self.threads):
            if thread.source is None:
                continue
            source = evolutions.get(thread.source)
            if source is None:
                raise _error_at(("threads", i, thread.kind, "source"), (
                    f"thread {thread.name!r}: {thread.kind} source {thread.source!r} is not an evolution thread of "
                    f"this session; evolutions: {', '.join(evolutions) or 'none'}"))
            if source.generator != thread.generator:
                raise _error_at(("threads", i, "generator"), (
                    f"thread {thread.name!r}: generator {thread.generator!r} differs from its source's "
                    f"{source.generator!r}; a {thread.kind} is drawn in its source's latent space"))
            if source.generator_options != thread.generator_options:
                raise _error_at(("threads", i, "generator_options"), (
                    f"thread {thread.name!r}: generator_options {thread.generator_options} differ from its source's "
                    f"{source.generator_options}; a {thread.kind} shows its source's images"))
            if thread.kind == "retest" and source.weights != thread.weights:
                raise _error_at(("threads", i, "weights"), (
                    f"thread {thread.name!r}: weights {thread.weights} differ from its source's {source.weights}; a "
                    "retest shows its source's images again, rendered by the same weights"))
        return self

    @classmethod
    def stored(cls, config_json: dict) -> SessionConfig:
        """A session's config as the database holds it, validated again without the checks of the server's files that
        only its creation makes: a references folder moved or unmounted since is needed only to rebuild reference
        images the archive lost (``thread_runtime.stored_references`` says so then)."""
        return cls.model_validate(config_json, context={_STORED: True})

    def thread(self, name: str) -> ThreadConfig:
        """The settings of the thread called ``name``."""
        for thread in self.threads:
            if thread.name == name:
                return thread
        raise ConfigError(f"session {self.name!r} has no thread {name!r}")


def problem_message(problem: dict, model: type[BaseModel] | None = None) -> str:
    """pydantic's message about one problem, for people: without its "Value error, " prefix, and an unknown key
    of ``model`` (where ``problem["loc"]`` starts; FastAPI's leading "body" is skipped) with the closest
    allowed keys."""
    message = clip(problem["msg"].removeprefix("Value error, "))
    loc = tuple(problem["loc"])
    keys = _keys_at(model, loc[1:] if loc[:1] == ("body",) else loc) if problem["type"] == "extra_forbidden" else []
    if not keys:
        return message
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return f"unknown key{f', did you mean {close[0]!r}?' if close else ''} (allowed: {', '.join(keys)})"


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text``, or its first ``limit`` characters and how many more it had (a message naming a huge input)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _keys_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys of the model holding the last part of ``loc`` (a path into ``model``); [] if none does."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is not None:
            model = next(_models(field.annotation), None)
        elif not isinstance(part, int):  # an int is an item of a list
            return []
    return list(model.model_fields) if model is not None else []


def _models(annotation):
    """The pydantic models in a type annotation (``list[ThreadConfig]``, ``ManifoldConfig | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in get_args(annotation):
        yield from _models(argument)


def describe_validation_error(error: ValidationError, model: type[BaseModel] = SessionConfig) -> str:
    """One line per problem of validating ``model``, ``field.path: message`` (for the CLI)."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"{where}: {problem_message(problem, model)}")
    return "; ".join(lines)


class _YamlLoader(yaml.SafeLoader):
    """YAML as JSON reads it: a date or time stays the text written (a session named 2026-11-27, or a
    ``session_start_time``, is sent to the server as that text), and a number is one as YAML 1.2 and JSON
    write it (``1e-1`` is 0.1, where YAML 1.1 wants ``1.0e-1``). A key given twice in one mapping is refused."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be given again, over it
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, _twice(key), key_node.start_mark)
            seen.add(key if isinstance(key, Hashable) else id(key))
        return super().construct_mapping(node, deep)


def _twice(key: Any) -> str:
    return f"key {key!r} is given twice in one mapping: only one would count; keep the one you mean"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object, refused when a key repeats (json keeps the last silently)."""
    keys = [key for key, _ in pairs]
    if repeated := next((key for key in keys if keys.count(key) > 1), None):
        raise ValueError(_twice(repeated))
    return dict(pairs)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(  # YAML 1.2's exponent without a dot: 1e-1
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


MAX_YAML_VALUES = 100_000  # values a YAML file may stand for, its aliases written out: a session config has hundreds


def _yaml(text: str) -> Any:
    """The YAML document in ``text``; ValueError if its aliases stand for over `MAX_YAML_VALUES` values (a few
    nested aliases can stand for billions: a "billion laughs" would take minutes to check and validate)."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and (values := _values(node, {})) > MAX_YAML_VALUES:
            raise ValueError(f"its aliases (*name) stand for {values} values, over {MAX_YAML_VALUES}; write it out "
                             "with fewer aliases")
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _values(node: yaml.Node, counted: dict[int, int]) -> int:
    """How many values ``node`` stands for with its aliases written out (``counted``: of the nodes seen)."""
    if id(node) not in counted:
        children = [] if isinstance(node, yaml.ScalarNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        counted[id(node)] = 1 + sum(_values(child, counted) for child in children)
    return counted[id(node)]


def _non_finite(value: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """The infinite or NaN numbers in ``value``, each with its path (``threads.0.optimizer_params.sigma0``)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from _non_finite(item, f"{where}.{key}" if where else str(key))


def server_path(path: str) -> str:
    """A file named in a config, as stored: absolute, a relative path taken from the working directory of the
    process that validates it (the server, at creation), so that a server started elsewhere finds it again."""
    return str(Path(path).expanduser().absolute())


def read_config_file(path: str | Path) -> dict:
    """The mapping in a ``.json``, ``.yaml`` or ``.yml`` session config file, not yet validated."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as Notepad and PowerShell write, is dropped
    except OSError as error:
        raise ConfigError(f"cannot read session config {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text ({error.reason}): save it as UTF-8") from error
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{path}: a session config is a .json, .yaml or .yml file; name it so")
    try:
        data = _yaml(text) if suffix in (".yaml", ".yml") else json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{path} is not valid {suffix.lstrip('.').upper()}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a session config is a mapping (name, rig, threads, ...)")
    for where, value in _non_finite(data):
        raise ConfigError(f"{path}: {where}: {value} is not a finite number (too large for a float, "
                          "or inf/NaN); give a finite number")
    return data


def load_session_config(path: str | Path) -> SessionConfig:
    """Read and validate a session config from a ``.json``, ``.yaml`` or ``.yml`` file."""
    data = read_config_file(path)
    try:
        return SessionConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from error
