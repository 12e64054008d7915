"""Where generator weights live, and the one cache of loaded generators (engine and REST share it).

A thread's generator loads its weights from, in order: the thread's own ``weights`` path (a file or
a folder); ``{ACTMAX_WEIGHTS_DIR}/{generator name}/`` when that folder exists; the generator's
standard locations (docs/generators.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import generators
from generators import weights_source
from generators.base import WeightsNotFoundError, check_precision, resolve_device
from server import ThreadNotReady

log = logging.getLogger(__name__)

SETTLE_S = 2.0  # weights written this recently that do not load may still be being copied: waited for, not refused


class WeightsChanging(generators.GeneratorError, ThreadNotReady):
    """Weights that do not load were written in the last ``SETTLE_S``: a copy may be under way. A thread waits and
    tries again (``ThreadNotReady``); a request is refused as for any weights problem (``GeneratorError``)."""


@dataclass(frozen=True)
class WeightsStatus:
    """One generator's weights as the server would load them."""

    generator: str
    found: bool
    source: str  # the folder or file searched, or "standard locations"
    sha256: str | None
    problem: str | None  # why it cannot load, with the paths tried
    missing: bool = False  # no weights file where it looks (not found is otherwise a file that does not load)

    @property
    def label(self) -> str:
        """``found``, ``MISSING`` (no file) or ``UNUSABLE`` (a file that does not load), for tables."""
        return "found" if self.found else "MISSING" if self.missing else "UNUSABLE"

    def to_json(self) -> dict:
        return {"name": self.generator, "found": self.found, "source": self.source, "weights_sha256": self.sha256,
                "problem": self.problem}


def file_identity(paths: tuple[Path, ...]) -> tuple:
    """What changes when one of ``paths`` is replaced, truncated, created or removed: each one's size, mtime_ns,
    inode and ctime_ns (which every write moves, even a ``cp -p`` that keeps the mtime); None while absent.
    Cheap: it reads no file."""
    identity = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            identity.append(None)
        else:
            identity.append((stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns))
    return tuple(identity)


def weights_dir_note(weights_dir: Path | None) -> tuple[int, str]:
    """The start-up log line (level, message) on where generator weights come from: ``weights_dir``
    (ACTMAX_WEIGHTS_DIR) and the generators it has a folder for; a warning when it is set but missing, not a folder,
    or holds no generator's folder, for then every generator falls back to its standard locations."""
    fallback = "every generator loads from its standard locations (or a thread's own weights path)"
    if weights_dir is None:
        return logging.INFO, f"ACTMAX_WEIGHTS_DIR is not set: {fallback}"
    folder = Path(weights_dir).expanduser().absolute()
    check = "not what you expected? stop and check ACTMAX_WEIGHTS_DIR"
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist (not mounted? mistyped?)"
        return logging.WARNING, f"ACTMAX_WEIGHTS_DIR {folder} {problem}: {fallback} instead; {check}"
    names = generators.available()
    found = [name for name in names if (folder / name).is_dir()]
    if not found:
        return logging.WARNING, (f"ACTMAX_WEIGHTS_DIR {folder} holds no folder named after a generator "
                                 f"({', '.join(names)}): {fallback}; {check}")
    return logging.INFO, (f"generator weights from {folder}/<generator>/ (ACTMAX_WEIGHTS_DIR) for {', '.join(found)}; "
                          "the others from their standard locations")


def generators_device(device: str, precision: str, source: str) -> str:
    """Where a server's generators run, for its start line and ``actmax weights``: the device ``device`` resolves to
    (a GPU with its name; for ``auto`` without one, why not) and ``precision``. A device this torch cannot use is a
    ``GeneratorError`` naming ``source``, the flag or variable that gave it."""
    resolved = resolve_device(device, source)
    if resolved.type == "cuda":
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
        where = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    elif device == "auto":
        why = "a CPU-only build" if torch.version.cuda is None else "built for CUDA but finds no GPU"
        where = f"the CPU (device auto: torch {torch.__version__} is {why})"
    else:
        where = str(resolved)
    return f"{where} in {precision}"


def written_within(path: Path | None, seconds: float) -> bool:
    """Whether ``path`` (a file, or a folder and the files in it) was written in the last ``seconds``."""
    if path is None:
        return False
    try:
        paths = [path, *path.iterdir()] if path.is_dir() else [path]
        newest = max(os.stat(p).st_mtime for p in paths)
    except (OSError, ValueError):
        return False
    return time.time() - newest < seconds


class GeneratorCache:
    """Loaded generators by (name, weights source); thread-safe (REST workers and the engine's worker).

    A generator is loaded again when its weights files change on disk (``file_identity``), so a new session and
    ``GET /generators`` see what is there now; one that no longer loads is dropped. A thread running keeps the
    network it was built with."""

    def __init__(self, device: str, weights_dir: Path | None, precision: str = "float32"):
        self.device = device
        self.weights_dir = weights_dir
        self.precision = precision
        # by (name, source, options): the generator and its files' identity when it was loaded
        self._loaded: dict[tuple[str, str | None, str], tuple[generators.Generator, tuple]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, weights: str | None = None, options: dict[str, Any] | None = None) -> generators.Generator:
        """The generator with its ``options`` (``generators.load``'s, e.g. BigGAN's ``truncation``), loaded once
        while its files stay as they were; raises ``GeneratorError`` (``WeightsNotFoundError``) naming the paths
        tried."""
        source = weights_source(name, self.weights_dir, weights)
        options = options or {}
        key = (name, None if source is None else str(source), json.dumps(options, sort_keys=True))
        with self._lock:
            if key in self._loaded:
                generator, identity = self._loaded[key]
                if file_identity(generator.weights_files) == identity:
                    return generator
                del self._loaded[key]
                log.info("the weights of %s changed on disk (%s): loading them again", name,
                         ", ".join(map(str, generator.weights_files)))
            try:
                generator = generators.load(name, device=self.device, weights=source, **options)
            except WeightsNotFoundError as error:  # say what a server's user can set (no --weights)
                now = f" (now {self.weights_dir})" if self.weights_dir else ""
                raise error.advising(f"in ACTMAX_WEIGHTS_DIR/{name}/ on the server{now}, or as a thread's `weights` "
                                     "in a session") from None
            except generators.GeneratorError as error:  # a file that does not load, perhaps half copied
                if not isinstance(error, generators.GeneratorOptionError) and written_within(source, SETTLE_S):
                    raise WeightsChanging(f"{error} (written {SETTLE_S:g} s ago or less: read again once it has "
                                          "settled)") from None
                raise
            identity = file_identity(generator.weights_files)
            if self.precision != "float32":
                try:
                    check_precision(generator, self.precision)
                except generators.GeneratorError as error:
                    raise generators.GeneratorError(
                        f"{error}: start the server with `actmax serve --precision float32` (or "
                        "ACTMAX_PRECISION=float32); the precision is the server's, for every thread") from None
            self._loaded[key] = generator, identity
            return generator

    def status(self, name: str, weights: str | None = None) -> WeightsStatus:
        """Whether ``name`` loads from where the server looks, and its weights' sha256."""
        source = weights_source(name, self.weights_dir, weights)
        where = str(source) if source is not None else "standard locations" if self.weights_dir is None else \
            f"{Path(self.weights_dir).expanduser() / name} (no such folder), then standard locations"
        try:
            generator = self.get(name, weights)
        except generators.GeneratorError as error:
            return WeightsStatus(name, False, where, None, str(error),
                                 missing=isinstance(error, generators.WeightsNotFoundError))
        return WeightsStatus(name, True, where, generator.weights_sha256, None)

    def statuses(self) -> list[WeightsStatus]:
        return [self.status(name) for name in generators.available()]

