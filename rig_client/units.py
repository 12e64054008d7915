"""Simulated units: pre-activations of EfficientNet-Lite0 channels at one position.

Pipeline (docs/simulated_neurons.md): images (n, 3, h, w) in [0, 1] -> resized bilinearly and placed
in the receptive field (`ReceptiveField`, grey 0.5 elsewhere) of the 224 x 224 input -> (255 x - 127) / 128
-> network. The fast path (default) folds BatchNorm into the convs, crops the input to the units'
receptive fields, runs channels-last and stops the forward pass at the deepest target layer; `fast=False` runs the plain,
unfolded, full-depth network and reads the units with forward hooks (for comparison).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from . import RigError
from .cnn import INPUT_SIZE, EfficientNetLite0, layer_shapes, load_efficientnet_lite0, normalize

if TYPE_CHECKING:
    from generators import Generator


@dataclass(frozen=True)
class Unit:
    """One channel of a layer at feature-map position (x, y); None = the map's centre (size // 2).

    Layer names are those of `rig_client.cnn` ("stem", "blocks.N.expand|depthwise|project",
    "blocks.N", "head", "fc"); "fc" units are ImageNet logits and take no position.
    """

    layer: str
    channel: int
    x: int | None = None
    y: int | None = None

    def __str__(self) -> str:
        where = "" if self.x is None else f"@({self.x},{self.y})"
        return f"{self.layer}[{self.channel}]{where}"


@dataclass(frozen=True)
class ReceptiveField:
    """Where images are shown in the 224 x 224 network input: a `size`-pixel square centred at (x, y).

    The default is the full frame. Pixels outside the square are grey (0.5); parts of the square
    outside the frame are cut off.
    """

    size: int = INPUT_SIZE
    x: float = INPUT_SIZE / 2
    y: float = INPUT_SIZE / 2

    def __post_init__(self) -> None:
        if self.size < 1:
            raise RigError(f"receptive field size must be >= 1 pixel; got {self.size}")
        if not (math.isfinite(self.x) and math.isfinite(self.y)) or not all(
                -self.size < edge < INPUT_SIZE for edge in self._corner()):
            half = self.size / 2
            raise RigError(f"a {self.size}-pixel receptive field centred at ({self.x:g}, {self.y:g}) "
                           f"is outside the {INPUT_SIZE} x {INPUT_SIZE} frame; put its centre x and y "
                           f"between {1 - half:g} and {INPUT_SIZE - 1 + half:g}")

    def _corner(self) -> tuple[int, int]:
        """Top and left edge of the square in the frame (may be outside it)."""
        return round(self.y - self.size / 2), round(self.x - self.size / 2)

    def place(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, h, w) in [0, 1] -> (n, 3, 224, 224) network frame."""
        resized = F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                                align_corners=False, antialias=True)
        if self == ReceptiveField():
            return resized
        frame = torch.full((images.shape[0], 3, INPUT_SIZE, INPUT_SIZE), 0.5,
                           dtype=images.dtype, device=images.device)
        top, left = self._corner()
        fy0, fx0 = max(top, 0), max(left, 0)
        fy1, fx1 = min(top + self.size, INPUT_SIZE), min(left + self.size, INPUT_SIZE)
        if fy1 > fy0 and fx1 > fx0:
            frame[:, :, fy0:fy1, fx0:fx1] = resized[:, :, fy0 - top:fy1 - top, fx0 - left:fx1 - left]
        return frame


@dataclass(frozen=True)
class ScreenedUnit:
    """A unit's response statistics over a generator's random samples."""

    unit: Unit
    mean: float
    std: float
    max: float


class UnitScorer:
    """Clean responses of `units` to images: `score(images) -> (n_images, n_units)`.

    `rf` is a ReceptiveField, a (size, x, y) tuple or None (full frame). `fast=False` selects the
    plain full forward with hooks. `model` (unfolded, as loaded; moved to `device`) lets several
    scorers share one network.
    """

    def __init__(self, units: Sequence[Unit], *, device: str | torch.device = "cpu",
                 rf: ReceptiveField | tuple | None = None, fast: bool = True,
                 model: EfficientNetLite0 | None = None, batch_size: int = 32) -> None:
        from generators.base import resolve_device  # a device this torch cannot use is one clear error

        if not units:
            raise RigError("UnitScorer needs at least one unit")
        self.device = resolve_device(device)
        self.rf = _as_rf(rf)
        self.fast = fast
        self.batch_size = batch_size
        base = (model if model is not None else load_efficientnet_lite0()).to(self.device).eval()
        shapes = layer_shapes()
        self.units = [_resolve(u, shapes) for u in units]
        self.layers = [name for name in shapes if any(u.layer == name for u in self.units)]
        if fast:
            self.model = base.folded().to(memory_format=torch.channels_last)
            self.crop = _crop_box(base, self.units)
        else:
            self.model = base
            self.crop = (0, INPUT_SIZE, 0, INPUT_SIZE)
        self._index = [_index_in_crop(base, u, self.crop) for u in self.units]

    def score(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Responses (n_images, n_units), float64, to images (n, 3, h, w) in [0, 1]."""
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise RigError(f"images must have shape (n, 3, h, w); got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        read = self._read_fast if self.fast else self._read_hooked
        with torch.inference_mode():
            out = [read(normalize(self.rf.place(chunk))) for chunk in images.split(self.batch_size)]
        return torch.cat(out).double().cpu().numpy()

    def _read_fast(self, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = self.crop
        x = x[:, :, y0:y1, x0:x1].contiguous(memory_format=torch.channels_last)
        wanted, acts = set(self.layers), {}
        for name, h in self.model.preactivations(x):
            if name in wanted:
                acts[name] = h
                if len(acts) == len(wanted):
                    break
        return self._gather(acts)

    def _gather(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([acts[layer][index] for layer, index in self._index], dim=1)

    def _read_hooked(self, x: torch.Tensor) -> torch.Tensor:
        acts: dict[str, torch.Tensor] = {}
        handles = [self.model.module_for(name).register_forward_hook(
            lambda _m, _i, out, name=name: acts.__setitem__(name, out.clone()))
            for name in self.layers]
        try:
            self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return self._gather(acts)


def screen_units(generator: Generator, layer: str, n_samples: int = 64,
                 rng: np.random.Generator | int | None = None, *, channels: Sequence[int] | None = None,
                 **scorer_options) -> list[ScreenedUnit]:
    """Centre units of `layer` ranked by how much the generator's random samples move them.

    Scores `n_samples` prior samples (drawn with `rng`: a Generator, a seed or None), keeps channels whose
    response varies (std > 1e-6) and is positive for at least one sample, and sorts them by response std,
    largest first.
    """
    rng = np.random.default_rng(rng)
    model = scorer_options.pop("model", None)
    model = load_efficientnet_lite0() if model is None else model
    shape = layer_shapes().get(layer)
    if shape is None or len(shape) == 1:
        raise RigError("screening needs a spatial layer: stem, blocks.N[.part] (N = 0..15, part: expand, depthwise or "
                       f"project; block 0 has no expand) or head; got {layer!r} "
                       f"({'no such layer' if shape is None else 'no spatial map'})")
    channels = range(shape[0]) if channels is None else channels
    scorer = UnitScorer([Unit(layer, c) for c in channels], model=model, **scorer_options)
    responses = scorer.score(generator.generate(generator.sample(n_samples, rng)))
    ranked = [ScreenedUnit(u, float(r.mean()), float(r.std()), float(r.max()))
              for u, r in zip(scorer.units, responses.T)]
    ranked = [s for s in ranked if s.std > 1e-6 and s.max > 0]
    return sorted(ranked, key=lambda s: s.std, reverse=True)


def _as_rf(rf: ReceptiveField | tuple | None) -> ReceptiveField:
    if rf is None:
        return ReceptiveField()
    if isinstance(rf, ReceptiveField):
        return rf
    try:
        size, x, y = rf
    except (TypeError, ValueError):
        raise RigError(f"rf must be None, a ReceptiveField or (size, x, y); got {rf!r}") from None
    return ReceptiveField(int(size), float(x), float(y))


def _resolve(unit: Unit, shapes: dict[str, tuple[int, ...]]) -> Unit:
    """Validate a unit against the layer shapes and fill a centre position."""
    if unit.layer not in shapes:
        raise RigError(f"unknown layer {unit.layer!r}; see rig_client.cnn for the names "
                       "(stem, blocks.0..15[.expand|.depthwise|.project], head, fc)")
    shape = shapes[unit.layer]
    if not 0 <= unit.channel < shape[0]:
        raise RigError(f"{unit.layer} has channels 0..{shape[0] - 1}; got {unit.channel}")
    if len(shape) == 1:
        if unit.x is not None or unit.y is not None:
            raise RigError(f"{unit.layer} units have no spatial position; leave x and y as None")
        return unit
    height, width = shape[1:]
    x = width // 2 if unit.x is None else unit.x
    y = height // 2 if unit.y is None else unit.y
    if not (0 <= x < width and 0 <= y < height):
        raise RigError(f"{unit.layer} is {width} x {height}; position ({x}, {y}) is outside it")
    return replace(unit, x=x, y=y)


def _stride(model: EfficientNetLite0, layer: str) -> int:
    return math.prod(conv.stride[0] for conv in model.conv_path(layer))


def _index_in_crop(model: EfficientNetLite0, unit: Unit, crop: tuple[int, int, int, int]) -> tuple:
    """(layer, index into its batched activation) for `unit` when the input is cropped to `crop`."""
    if unit.x is None:
        return unit.layer, (slice(None), unit.channel)
    stride = _stride(model, unit.layer)
    return unit.layer, (slice(None), unit.channel, unit.y - crop[0] // stride, unit.x - crop[2] // stride)


def _crop_box(model: EfficientNetLite0, units: Sequence[Unit]) -> tuple[int, int, int, int]:
    """Input window (y0, y1, x0, x1), half-open, holding every unit's receptive field.

    The window's origin is a multiple of the largest stride, so feature-map positions stay aligned;
    any "fc" unit needs the whole frame.
    """
    if any(u.x is None for u in units):
        return 0, INPUT_SIZE, 0, INPUT_SIZE
    step = max(_stride(model, u.layer) for u in units)
    boxes = [model.receptive_field(u.layer, u.y, u.x) for u in units]
    y0, x0 = (max(0, min(b[i] for b in boxes) // step * step) for i in (0, 2))
    y1, x1 = (min(INPUT_SIZE, max(b[i] for b in boxes) + 1) for i in (1, 3))
    return y0, y1, x0, x1
