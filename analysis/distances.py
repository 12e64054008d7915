"""Image distances with d² semantics for metric Hessians (spec A1).

Every distance here is a squared feature difference ``D(x1, x2) = ||φ(x1) − φ(x2)||²``: zero and
quadratic at ``x1 == x2``, never squared again. ``features`` exposes φ (weights folded in), so the
Hessian also has the Gram form ``H = 2 JᵀJ`` with ``J`` the Jacobian of ``φ∘G`` (spec A1).

Images are float tensors ``(n, 3, H, W)`` in [0, 1]; a batch of 1 broadcasts against a batch of n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from analysis import AnalysisError

__all__ = [
    "Distance",
    "MSEDistance",
    "PerceptualDistance",
    "efficientnet_distance",
    "get_distance",
    "available",
    "EFFICIENTNET_LAYERS",
]


class Distance:
    """Squared feature distance; subclasses implement ``features``."""

    name = "distance"

    def features(self, x: Tensor) -> Tensor:
        """φ(x) as ``(n, m)``, scaled so that ``D = ||φ(x1) − φ(x2)||²``."""
        raise NotImplementedError

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Per-pair distance ``(n,)``."""
        return (self.features(x1) - self.features(x2)).pow(2).sum(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MSEDistance(Distance):
    """Pixel mean squared error over all N = C·H·W entries; its Hessian for G = Az is (2/N)AᵀA."""

    name = "mse"

    def features(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return x / math.sqrt(x.shape[1])

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        return (x1 - x2).pow(2).flatten(1).mean(1)


class PerceptualDistance(Distance):
    """LPIPS-style distance with unit layer weights on CNN activations.

    At each layer the activation ``(n, C, H, W)`` is unit-normalised over channels at every
    position, and ``D = mean over layers of mean over positions of Σ_c (â1 − â2)²``.

    Args:
        extract: images ``(n, 3, H, W)`` in [0, 1] -> list of activations ``(n, C_l, H_l, W_l)``.
        eps: added to the channel norm (LPIPS uses 1e-10).
    """

    name = "perceptual"

    def __init__(self, extract: Callable[[Tensor], list[Tensor]], *, eps: float = 1e-10) -> None:
        self.extract = extract
        self.eps = eps

    def features(self, x: Tensor) -> Tensor:
        activations = self.extract(x)
        parts = []
        for a in activations:
            if a.dim() != 4:
                raise AnalysisError(f"PerceptualDistance needs (n, C, H, W) activations, got {tuple(a.shape)}")
            a_hat = a / (a.pow(2).sum(1, keepdim=True).sqrt() + self.eps)
            parts.append(a_hat.flatten(1) / math.sqrt(a.shape[2] * a.shape[3] * len(activations)))
        return torch.cat(parts, 1)


# EfficientNet-Lite0 block outputs: the last block at each resolution (strides at 1, 3, 5, 11).
EFFICIENTNET_LAYERS = ("blocks.0", "blocks.2", "blocks.4", "blocks.10", "blocks.15")


def efficientnet_distance(
    network, preprocess: Callable[[Tensor], Tensor], layers: Sequence[str] = EFFICIENTNET_LAYERS
) -> PerceptualDistance:
    """Perceptual distance on ImageNet EfficientNet-Lite0 block outputs: our stand-in for LPIPS.

    LPIPS's SqueezeNet trunk and linear weights cannot be downloaded on these machines, so the
    trunk is EfficientNet-Lite0 and every channel weight is 1. `network` is the model of
    ``rig_client.cnn.load_efficientnet_lite0`` (``layer_names()``, ``preactivations(x)``) and
    `preprocess` its input scaling (``rig_client.cnn.normalize``), passed in so this package does not
    depend on the rig. Images are used at their native resolution; the forward pass stops at the last layer.
    """
    known = set(network.layer_names())
    wanted = list(layers)
    if not wanted or not set(wanted) <= known:
        raise AnalysisError(f"unknown EfficientNet-Lite0 layers {sorted(set(wanted) - known) or wanted}")

    def extract(x: Tensor) -> list[Tensor]:
        found: dict[str, Tensor] = {}
        for name, h in network.preactivations(preprocess(x)):
            if name in wanted:
                found[name] = h
                if len(found) == len(wanted):
                    break
        return [found[name] for name in wanted]

    return PerceptualDistance(extract)


_REGISTRY: dict[str, Callable[..., Distance]] = {
    "mse": lambda network=None, preprocess=None: MSEDistance(),
    "perceptual": efficientnet_distance,
}


def available() -> list[str]:
    """Names accepted by ``get_distance``."""
    return sorted(_REGISTRY)


def get_distance(name: str, network=None, preprocess: Callable[[Tensor], Tensor] | None = None) -> Distance:
    """Distance by name: ``"mse"``, or ``"perceptual"`` on the features of `network` (see
    ``efficientnet_distance``; give the network and its `preprocess`)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise AnalysisError(f"unknown distance {name!r}; choose one of {available()}") from None
    if name == "perceptual" and (network is None or preprocess is None):
        raise AnalysisError("the perceptual distance needs the feature network and its input scaling: "
                            "get_distance('perceptual', network=rig_client.cnn.load_efficientnet_lite0(), "
                            "preprocess=rig_client.cnn.normalize)")
    return factory(network=network, preprocess=preprocess)
