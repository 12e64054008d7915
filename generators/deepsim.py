"""`deepsim-fc6`: the DeePSiM "upconv" generator that inverts AlexNet fc6 (Dosovitskiy & Brox 2016).

Architecture and output handling follow the PyTorch port used by Wang & Ponce (spec/optimizers.md §2);
parameter names match its state dict (`defc7.weight` ... `deconv0.bias`), so its file
`upconvGAN_fc6.pt` loads as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import WEIGHTS_ARGUMENT, Generator, find_weights, load_into, load_state_dict_file, register, sha256_file

WEIGHTS_FILE = "upconvGAN_fc6.pt"
RGB_MEAN = (123.0, 117.0, 104.0)
SLOPE = 0.3


class DeePSiMFc6(nn.Module):
    """4096-d code -> 3 FC 4096 (LeakyReLU 0.3) -> 256 x 4 x 4 -> transposed convs -> BGR (n, 3, 256, 256).

    The output is raw: BGR, mean-subtracted, 0..255 scale; `DeePSiM.forward` turns it into an image.
    """

    def __init__(self) -> None:
        super().__init__()
        self.defc7 = nn.Linear(4096, 4096)
        self.defc6 = nn.Linear(4096, 4096)
        self.defc5 = nn.Linear(4096, 4096)
        # (name, in, out, kernel, stride); every layer pads 1, so stride 2 doubles the size.
        convs = [("deconv5", 256, 256, 4, 2), ("conv5_1", 256, 512, 3, 1),
                 ("deconv4", 512, 256, 4, 2), ("conv4_1", 256, 256, 3, 1),
                 ("deconv3", 256, 128, 4, 2), ("conv3_1", 128, 128, 3, 1),
                 ("deconv2", 128, 64, 4, 2), ("deconv1", 64, 32, 4, 2), ("deconv0", 32, 3, 4, 2)]
        self.convs = [name for name, *_ in convs]
        for name, cin, cout, kernel, stride in convs:
            self.add_module(name, nn.ConvTranspose2d(cin, cout, kernel, stride, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for fc in (self.defc7, self.defc6, self.defc5):
            h = F.leaky_relu(fc(h), SLOPE)
        h = h.view(-1, 256, 4, 4)
        for i, name in enumerate(self.convs):
            h = getattr(self, name)(h)
            if i < len(self.convs) - 1:
                h = F.leaky_relu(h, SLOPE)
        return h


def default_weights_path() -> Path:
    """Where the Wang & Ponce code caches the file: `<torch hub dir>/checkpoints/upconvGAN_fc6.pt`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def _normalize_keys(state: dict[str, torch.Tensor], expected: Iterable[str]) -> dict[str, torch.Tensor]:
    """Accept the port's variants: a `G.` prefix (whole upconvGAN saved) and `.1.` in layer names. A key that
    is not one of the network's `expected` keys either way stays as the file has it, so errors name it so."""
    expected = set(expected)
    out = {}
    for key, value in state.items():
        fixed = key.removeprefix("G.").replace(".1.", ".")
        out[fixed if fixed in expected else key] = value
    return out


class DeePSiM(Generator):
    """DeePSiM fc6: 4096-d code -> 256 x 256 RGB.

    Output: BGR flipped to RGB, mean [123, 117, 104] (RGB) added, clamped to [0, 255], divided by 255.
    There is no latent prior and no output nonlinearity: the code norm acts as contrast and G(0) is a
    dark, low-contrast image. `sample` draws N(0, I) (norm ~64, the GA's initial population);
    `default_init` is the benchmark's: CMA-ES from code 0 with sigma0 3, SphereCMA radius 300.
    """

    name = "deepsim-fc6"
    version = "1.0"
    latent_dim = 4096
    image_size = 256

    def __init__(self, *, device: torch.device, weights: str | Path | None = None) -> None:
        default = default_weights_path()
        path = find_weights(
            self.name, weights, WEIGHTS_FILE, [default],
            hint=f"Download the DeePSiM fc6 PyTorch state dict ({WEIGHTS_FILE}, from the Wang & Ponce "
                 f"upconvGAN release) and put it at {default}, or give the file or its directory ({WEIGHTS_ARGUMENT}).")
        module = DeePSiMFc6()
        load_into(self.name, module, _normalize_keys(load_state_dict_file(self.name, path), module.state_dict()), path)
        super().__init__(module, device, sha256_file(path), batch_size=16, weights_files=(path,))
        self._mean = torch.tensor(RGB_MEAN, device=device).view(1, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        rgb = self.module(z).flip(1)
        return (rgb + self._mean).clamp(0.0, 255.0) / 255.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((n, self.latent_dim))

    def default_init(self) -> dict:
        # The published start is the zero code, which is each optimizer's own default for
        # init_code=None (SphereCMA, which cannot start at 0, draws its first centre instead).
        return {"init_code": None, "sigma0": 3.0, "radius": 300.0}


register(DeePSiM.name, DeePSiM)
