"""Generator base class, the registry behind `generators.load`, and weight-file helpers."""

from __future__ import annotations

import abc
import functools
import hashlib
import inspect
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class GeneratorError(ValueError):
    """Bad generator name, code shape or option."""


class GeneratorOptionError(GeneratorError):
    """An option of a generator (``generator_options``) it does not take, or a value it refuses."""


class WeightsNotFoundError(GeneratorError, FileNotFoundError):
    """A generator's weights file is missing; the message lists the paths tried and where to put it."""

    def __init__(self, name: str, tried: list[Path], hint: str) -> None:
        self.name, self.tried, self.hint = name, [Path(p) for p in tried], hint
        listing = "\n".join(f"  - {p}" for p in self.tried) or "  (none)"
        super().__init__(f"weights for generator {name!r} not found; tried:\n{listing}\n{hint}")

    def advising(self, where: str) -> WeightsNotFoundError:
        """This error with ``where`` (what the user of one program can set) in place of `WEIGHTS_ARGUMENT`."""
        return WeightsNotFoundError(self.name, self.tried, self.hint.replace(WEIGHTS_ARGUMENT, where))


_REGISTRY: dict[str, Callable[..., Generator]] = {}

log = logging.getLogger(__name__)

#: Where a user gives a generator's weights, for the messages that say to.
WEIGHTS_ARGUMENT = "--weights on the command line, weights= in Python, a thread's `weights` in a session"
#: Where a user gives a torch device, for the messages that name one: a program that reads more (``actmax serve``
#: reads ACTMAX_DEVICE too) passes `resolve_device` its own.
DEVICE_ARGUMENT = "--device on the command line, device= in Python"
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISION_TOLERANCE = 4 / 255
"""Largest absolute pixel difference (images in [0, 1]) a reduced precision may make against
float32 on `PRECISION_SAMPLES` prior samples: four 8-bit grey levels."""
PRECISION_SAMPLES = 8
# Codes per forward pass on a GPU to start with, whatever a generator's CPU chunk: a generation in one pass
# (BigGAN-deep-256's 40 images take 67 ms in one pass and 126 ms in chunks of 8 on an H200); halved on
# running out of the GPU's memory.
GPU_BATCH = 64


def register(name: str, factory: Callable[..., Generator]) -> None:
    """Register `factory(device=..., weights=..., **options)` under `name` (unique)."""
    if name in _REGISTRY:
        raise GeneratorError(f"generator {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names accepted by `load`, sorted."""
    return sorted(_REGISTRY)


def load(name: str, device: str | torch.device = "auto", weights: str | Path | None = None,
         precision: str = "float32", **options: Any) -> Generator:
    """Build the generator `name` on `device` ("auto" = CUDA when present, else CPU).

    `weights` is a weights file or a directory holding it; None searches the generator's standard
    locations. `precision` "float16" or "bfloat16" runs the network at half precision once its
    images pass `check_precision`. `options` are generator-specific (e.g. `truncation` for BigGAN).
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise GeneratorError(f"unknown generator {name!r}; available: {', '.join(available())}") from None
    if precision not in PRECISIONS:
        raise GeneratorError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    accepted = option_names(name)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise GeneratorOptionError(f"{name} does not take option(s) {', '.join(unknown)}; "
                             f"it takes: {', '.join(accepted) or 'no options'}")
    generator = factory(device=resolve_device(device), weights=weights, **options)
    if precision != "float32":
        check_precision(generator, precision)
    return generator


def option_names(name: str) -> list[str] | None:
    """The generator-specific keyword options `load(name, ...)` accepts (besides device, weights, precision);
    None for a factory that takes ``**options`` (it checks them itself)."""
    factory = _REGISTRY[name]
    bound = getattr(factory, "keywords", {})  # fixed by a functools.partial registration
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.name not in ("device", "weights", *bound)]


def check_precision(generator: Generator, precision: str, tolerance: float = PRECISION_TOLERANCE) -> float:
    """Convert `generator` (in place) to `precision` if its images stay within `tolerance` of float32; the
    largest difference.

    Renders `PRECISION_SAMPLES` prior samples (seed 0) both ways. Raises `GeneratorError` (and
    leaves the generator at float32) when the difference is larger or the device cannot run it.
    The precision becomes part of the generator's version, so stimuli record it.
    """
    if generator.dtype != torch.float32:
        raise GeneratorError(f"{generator.name} already runs in {str(generator.dtype)[6:]}; check_precision "
                             "compares against float32: load the generator again to test another precision")
    codes = generator.sample(PRECISION_SAMPLES, np.random.default_rng(0))
    reference = generator.generate(codes)
    if not bool(torch.isfinite(reference).all()):  # no precision helps: the float32 network itself is broken
        raise GeneratorError(f"{generator.name} renders NaN or infinite pixels in float32 already, so {precision} "
                             "cannot be compared with it: its weights are broken (a damaged file, or a network that "
                             "overflows); give it intact weights")
    float32_state = {k: v.clone() for k, v in generator.module.state_dict().items()}

    def refuse(reason: str) -> GeneratorError:
        generator.to_precision(torch.float32)
        generator.module.load_state_dict(float32_state)  # the rounded weights back to their float32 values
        return GeneratorError(f"{generator.name} in {precision} {reason}; use float32 for this generator")

    try:
        generator.to_precision(PRECISIONS[precision])
        images = generator.generate(codes)
    except RuntimeError as exc:  # an operation without a half-precision kernel on this device
        raise refuse(f"cannot run on {generator.device}: {exc}") from None
    if not bool(torch.isfinite(images).all()):  # a value past the precision's range
        found = " and ".join(word for word, bad in (("NaN", images.isnan()), ("infinity", images.isinf()))
                             if bool(bad.any()))
        raise refuse(f"renders {found} on {generator.device}")
    difference = float((images - reference).abs().max())
    if not difference <= tolerance:
        raise refuse(f"differs from float32 by up to {difference:.4f} (tolerance {tolerance:.4f}) on "
                     f"{generator.device}")
    return difference


def ignores_codes(generator: Generator, n: int = 3) -> str | None:
    """What is wrong if `generator` renders one and the same 8-bit image for `n` different prior codes (seed 0),
    as a network with untrained or unconverted weights does; None when the images differ. Raises `GeneratorError`
    when a pixel of them is NaN or infinite (broken weights, or a precision the network overflows in): no evolution
    can run on such a generator."""
    codes = generator.sample(n, np.random.default_rng(0))
    images = generator.generate(codes)
    sha = f" (weights sha256 {generator.weights_sha256[:12]})" if generator.weights_sha256 else ""
    if broken := int((~torch.isfinite(images.flatten(1)).all(1)).sum()):  # NaN != NaN: torch.equal below misses it
        cause = (f"{str(generator.dtype)[6:]} overflows in it; use float32" if generator.dtype != torch.float32 else
                 "its weights are broken (a damaged file, or a network that overflows); give it intact weights")
        raise GeneratorError(f"{generator.name} {generator.provenance['version']}{sha} renders NaN or infinite pixels "
                             f"for {broken} of {n} prior codes (seed 0), so no evolution can run on it: {cause}")
    pixels = images.clamp(0, 1).mul(255).round()  # what a rig sees: the PNG's 8-bit values
    if any(not torch.equal(pixels[0], image) for image in pixels[1:]):
        return None
    return (f"the weights look untrained or not converted: {generator.name}{sha} renders the same image for {n} "
            "different codes, so an evolution would show one image throughout; give it the trained network's "
            "state dict, with its parameters under this generator's names (docs/generators.md)")


def resolve_device(device: str | torch.device, source: str = DEVICE_ARGUMENT) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else must name a device this torch can use (a refusal names
    `source`: where the device came from)."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    given = f"device {str(device)!r} ({source})"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise GeneratorError(f"{given}: not a torch device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GeneratorError(f"{given}: this torch has no CUDA (torch.cuda.is_available() is False); "
                             "use cpu or install a CUDA build of torch")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise GeneratorError(f"{given}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    try:
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as exc:  # e.g. mps on a machine without it
        reason = re.split(r"\.\s", str(exc), maxsplit=1)[0] or type(exc).__name__  # its first sentence
        raise GeneratorError(f"{given}: this torch cannot use it ({reason}); use cpu or auto") from None
    return resolved


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_source(name: str, weights_dir: str | Path | None, weights: str | Path | None = None) -> Path | None:
    """What to pass as `weights=` to `load`: `weights` when given, else `weights_dir/name/` when that folder
    exists (a server's ACTMAX_WEIGHTS_DIR; empty: unset, not the working directory), else None (the generator's
    standard locations)."""
    if weights:
        return Path(weights).expanduser()
    if weights_dir is not None and str(weights_dir).strip() and (Path(weights_dir).expanduser() / name).is_dir():
        return Path(weights_dir).expanduser() / name
    return None


def find_weights(name: str, weights: str | Path | None, filename: str, defaults: list[Path],
                 hint: str) -> Path:
    """Resolve a weights file: an explicit file, `weights/filename` for a directory, else `defaults`.

    Raises WeightsNotFoundError listing every path tried.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        candidates = [path / filename] if path.is_dir() else [path]
        hint = given_weights_hint(path, filename)
    else:
        candidates = list(defaults)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if folder := next((candidate for candidate in candidates if candidate.is_dir()), None):
        raise folder_in_place(name, folder)
    raise WeightsNotFoundError(name, [candidate.absolute() for candidate in candidates], hint)


def folder_in_place(name: str, path: Path) -> GeneratorError:
    """The error for a folder where the weights file should be (a folder copied, or an archive unpacked, under the
    file's name)."""
    return GeneratorError(f"cannot read weights for {name!r} from {path.absolute()}: it is a folder, not a weights "
                          f"file; put the file {path.name} itself at that path")


def given_weights_hint(path: Path, what: str) -> str:
    """What to do when the ``weights=`` path given holds no weights (``what``: the file it needs)."""
    relative = "" if path.is_absolute() else f" (a relative path is read from the working directory {Path.cwd()})"
    return f"Give the {what} file or a folder holding it ({WEIGHTS_ARGUMENT}){relative}."


def load_state_dict_file(name: str, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """`torch.load` a state dict (a dict of str -> tensor) safely (weights_only=True) onto the CPU.

    `key`: the state dict may instead sit under this key of a checkpoint dict.
    """
    expected = "expected a state dict saved by torch.save(model.state_dict(), path)"
    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols, for files it refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise GeneratorError(f"cannot read weights for {name!r} from {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # not a torch file, truncated, or a pickle of Python objects
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))  # torch <2.13, 2.13
        problem = (f"it holds pickled Python objects ({found[1]}), which are not loaded for safety"
                   if found else "it is not a PyTorch weights file, or it is truncated or corrupt")
        raise GeneratorError(f"cannot read weights for {name!r} from {path}: {problem}; {expected}") from None
    if key is not None and isinstance(state, dict) and key in state:
        state = state[key]
    if problem := _not_a_state_dict(state):
        raise GeneratorError(f"cannot read weights for {name!r} from {path}: it holds {problem}; {expected}")
    return state


def _not_a_state_dict(state: Any) -> str | None:
    """What `state` holds, if it is not a dict of str -> tensor; None if it is."""
    if not isinstance(state, dict):
        shape = f" of shape {tuple(state.shape)}" if isinstance(state, torch.Tensor) else ""
        return f"a {type(state).__name__}{shape}, not a dict"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"a dict with the key {key!r} ({type(key).__name__}), not a parameter name"
        if not isinstance(value, torch.Tensor):
            return f"a dict whose {key!r} is a {type(value).__name__}, not a tensor"
    return None


def load_into(name: str, module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, *,
              extra_keys_ok: bool = False, shapes_hint: str = "") -> None:
    """`module.load_state_dict(state)` with an error naming the file; `extra_keys_ok` ignores keys the module lacks
    (unless some of its own are missing: then the file's keys are named too); `shapes_hint` ends the error when
    the file's tensors do not fit the network's shapes."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=not extra_keys_ok)
    except (RuntimeError, TypeError) as exc:  # missing or unexpected keys, shape mismatch: a line each
        lines = str(exc).splitlines()
        more = f"\n\t... and {len(lines) - 6} more" if len(lines) > 6 else ""
        hint = f"\n{shapes_hint}" if shapes_hint and "size mismatch for" in str(exc) else ""
        raise GeneratorError(f"weights in {path} do not fit generator {name!r}: "
                             + "\n".join(lines[:6]) + more + hint) from exc
    if missing:
        unused = f"; the file's keys that fit no layer: {_some(unexpected)}" if unexpected else ""
        raise GeneratorError(f"weights in {path} do not fit generator {name!r}: missing {_some(missing)}{unused}")


def _some(keys: list[str]) -> str:
    """The first five of ``keys``, and how many there are when more."""
    return f"{keys[:5]}" + (f" (of {len(keys)})" if len(keys) > 5 else "")


class Generator(abc.ABC):
    """Latent code -> image network.

    Subclasses set `name`, `version`, `latent_dim`, `image_size`, build `module` (eval mode, on
    `device`) and implement `forward` (differentiable), `sample` and `default_init`. `weights_files` are the
    files the weights came from, and any whose appearance would change them (BigGAN's config.json): a cache of
    loaded generators reloads when one of them changes on disk.
    """

    name: str
    version: str
    latent_dim: int
    image_size: int
    named_image_size: int | None = None  # the image size its registered name promises (biggan-deep-128: 128)

    def __init__(self, module: torch.nn.Module, device: torch.device, weights_sha256: str | None,
                 *, batch_size: int = 64, weights_files: tuple[Path, ...] = ()) -> None:
        self.device = device = torch.device(device)
        self.module = module.to(device).eval()
        self.module.requires_grad_(False)
        self.weights_sha256 = weights_sha256
        self.weights_files = weights_files  # what it read (and would read: a config that may appear), for reloads
        self.batch_size = max(batch_size, GPU_BATCH) if device.type == "cuda" else batch_size
        self.dtype = torch.float32  # the network's precision; codes and images cross as float32

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every subclass's `forward` takes and returns float32, whatever `dtype` its network runs in."""
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _float32_at_the_edges(cls.__dict__["forward"])

    def to_precision(self, dtype: torch.dtype) -> None:
        """Run the network in `dtype` (prefer `check_precision`, which tests the images first)."""
        self.module.to(dtype)
        self.dtype = dtype

    @abc.abstractmethod
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable map of float32 codes (n, latent_dim) on `device` to float32 images (n, 3, H, W) in
        [0, 1]; a subclass's own `forward` gets the codes in `dtype` (the base casts them, and the images back)."""

    @abc.abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` codes (n, latent_dim), float64, drawn from the latent prior."""

    @abc.abstractmethod
    def default_init(self) -> dict:
        """Documented starting geometry for optimizers: {"init_code", "sigma0", "radius"}."""

    def generate(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W), float32 in [0, 1], on `device`.

        A tensor that requires grad goes through `forward` in one batch and keeps its graph (for
        Hessians, gradient ascent); anything else runs without grad in chunks of `batch_size`, which halves
        (from then on) when the device runs out of memory.
        """
        z = self._as_codes(codes)
        if z.requires_grad:
            return self.forward(z)
        with torch.no_grad():
            while True:
                try:
                    return torch.cat([self.forward(chunk) for chunk in z.split(self.batch_size)])
                except torch.cuda.OutOfMemoryError:
                    if self.batch_size == 1 or len(z) == 1:
                        raise
                    self.batch_size = (min(self.batch_size, len(z)) + 1) // 2
                    log.warning("%s: out of memory on %s; rendering %d images per pass from now on", self.name,
                                self.device, self.batch_size)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()

    @property
    def provenance(self) -> dict:
        """What identifies an image's source: {"name", "version", "weights_sha256"}; a reduced precision
        is part of the version."""
        version = self.version if self.dtype == torch.float32 else f"{self.version}+{str(self.dtype)[6:]}"
        return {"name": self.name, "version": version, "weights_sha256": self.weights_sha256}

    def _as_codes(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(codes, torch.Tensor):
            z = codes
        else:
            try:
                z = torch.from_numpy(np.asarray(codes, dtype=np.float32))
            except (TypeError, ValueError) as exc:
                raise GeneratorError(f"codes must be a numeric array: {exc}") from None
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise GeneratorError(
                f"{self.name}: codes must have shape (n, {self.latent_dim}); got {tuple(z.shape)}"
                " (use codes[None] for a single code)")
        if z.shape[0] == 0:
            raise GeneratorError(f"{self.name}: no codes given (n = 0)")
        if not bool(torch.isfinite(z).all()):
            raise GeneratorError(f"{self.name}: codes contain NaN or infinity")
        return z.to(device=self.device, dtype=torch.float32)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name} v{self.version} d={self.latent_dim} "
                f"{self.image_size}px on {self.device}>")


def _float32_at_the_edges(forward: Callable[[Generator, torch.Tensor], torch.Tensor]):
    """`forward` with its codes cast to the network's dtype and its images back to float32 (differentiably)."""
    @functools.wraps(forward)
    def wrapped(self: Generator, z: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32:
            return forward(self, z)
        return forward(self, z.to(self.dtype)).float()
    return wrapped
