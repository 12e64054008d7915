"""Where generator weights live, and the one cache of loaded generators (engine and REST share it).

A thread's generator loads its weights from, in order: the thread's own ``weights`` path (a file or
a folder); ``{ACTMAX_WEIGHTS_DIR}/{generator name}/`` when that folder exists; the generator's
standard locations (docs/generators.md).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import generators
from generators import weights_source
from generators.base import check_precision


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


class GeneratorCache:
    """Loaded generators by (name, weights source); thread-safe (REST workers and the engine's worker)."""

    def __init__(self, device: str, weights_dir: Path | None, precision: str = "float32"):
        self.device = device
        self.weights_dir = weights_dir
        self.precision = precision
        self._loaded: dict[tuple[str, str | None, str], generators.Generator] = {}  # by (name, source, options)
        self._lock = threading.Lock()

    def get(self, name: str, weights: str | None = None, options: dict[str, Any] | None = None) -> generators.Generator:
        """The generator with its ``options`` (``generators.load``'s, e.g. BigGAN's ``truncation``), loaded once;
        raises ``GeneratorError`` (``WeightsNotFoundError``) naming the paths tried."""
        source = weights_source(name, self.weights_dir, weights)
        options = options or {}
        key = (name, None if source is None else str(source), json.dumps(options, sort_keys=True))
        with self._lock:
            if key not in self._loaded:
                generator = generators.load(name, device=self.device, weights=source, **options)
                if self.precision != "float32":
                    try:
                        check_precision(generator, self.precision)
                    except generators.GeneratorError as error:
                        raise generators.GeneratorError(
                            f"{error}: start the server with `actmax serve --precision float32` (or "
                            "ACTMAX_PRECISION=float32); the precision is the server's, for every thread") from None
                self._loaded[key] = generator
            return self._loaded[key]

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

    def setting_hint(self) -> str:
        """Which setting or field points elsewhere (for error messages)."""
        here = f" (now {self.weights_dir})" if self.weights_dir else ""
        return ("put the weights in ACTMAX_WEIGHTS_DIR/<generator>/" + here +
                ", or give the thread a \"weights\" path (a file or folder on the server)")
