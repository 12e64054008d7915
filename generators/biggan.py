"""`biggan-deep-128/256/512`: BigGAN-deep from `pytorch-pretrained-biggan`, in a 256-d code space.

Code = [128-d noise | 128-d class embedding]. The class half is fed to the generator directly as the
embedding (the 1000-way one-hot -> embedding matrix is bypassed), so optimizers move through class space
continuously. The noise half uses the truncation trick: the generator's BatchNorm statistics are those
for `truncation` (default 0.7), and prior noise is truncation * truncnorm(-2, 2).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from .base import (WEIGHTS_ARGUMENT, Generator, GeneratorError, GeneratorOptionError, WeightsNotFoundError,
                   folder_in_place, given_weights_hint, load_into, load_state_dict_file, register, sha256_file)

WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
DEFAULT_TRUNCATION = 0.7
DEFAULT_CLASS = 1  # goldfish: the class whose embedding `default_init` starts from

# The published configs differ only in output size and block list: (upsample?, in, out) x channel_width.
_BLOCKS = {
    128: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
          (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
    256: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 8),
          (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
    512: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 8),
          (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1),
          (False, 1, 1), (True, 1, 1)],
}


def _biggan():
    try:
        import pytorch_pretrained_biggan
    except ImportError:
        raise GeneratorError("BigGAN needs `pip install pytorch-pretrained-biggan` "
                             "(or `pip install 'actmax[biggan]'`)") from None
    return pytorch_pretrained_biggan


def standard_config(resolution: int) -> dict:
    """The published config of biggan-deep-<resolution>, used when no config.json sits beside the weights."""
    return {"output_dim": resolution, "z_dim": 128, "class_embed_dim": 128, "channel_width": 128,
            "num_classes": 1000, "layers": [list(b) for b in _BLOCKS[resolution]],
            "attention_layer_position": 8, "eps": 1e-4, "n_stats": 51}


def read_config(name: str, path: Path) -> dict:
    """The config.json beside `name`'s weights: a JSON object with every key of `standard_config`."""
    fix = f"fix it, or remove it to use the published config of {name}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeneratorError(f"BigGAN config {path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(config, dict):
        raise GeneratorError(f"BigGAN config {path} holds a JSON {type(config).__name__}, not an object; {fix}")
    if missing := [key for key in standard_config(128) if key not in config]:
        raise GeneratorError(f"BigGAN config {path} lacks {', '.join(missing)}; {fix}")
    return config


# A 32 px BigGAN-deep of the same architecture, for tests and ``bench/gpu.py --tiny``.
TINY_CONFIG = {"output_dim": 32, "z_dim": 128, "class_embed_dim": 128, "channel_width": 4, "num_classes": 1000,
               "layers": [[True, 16, 8], [True, 8, 4], [True, 4, 2], [False, 2, 1]],
               "attention_layer_position": 2, "eps": 1e-4, "n_stats": 51}


def random_network(config: dict, seed: int = 0, n_codes: int = 8):
    """A ``pytorch_pretrained_biggan.BigGAN`` of ``config`` with random weights (seeded), in eval mode, for measuring
    the real cost without the published weights; saved with its config.json, it loads like them.

    Its buffers are set as a published checkpoint's are: spectral norm's singular vectors converged (with the package's
    random ones a layer divides by as little as 1e-5 of its largest singular value, and activations overflow even
    float32) and BatchNorm statistics measured on `n_codes` prior codes at `DEFAULT_TRUNCATION` (the same for every
    truncation)."""
    pkg = _biggan()
    torch.manual_seed(seed)
    module = pkg.BigGAN(pkg.BigGANConfig.from_dict(config)).eval()
    with torch.no_grad():
        module.generator.bn.weight.fill_(1.0)  # the package leaves these two uninitialised
        module.generator.bn.bias.zero_()
        for layer in module.modules():
            if hasattr(layer, "weight_orig"):  # spectral norm: sigma = u . W v is the largest singular value
                u, _, vh = torch.linalg.svd(layer.weight_orig.flatten(1), full_matrices=False)
                layer.weight_u.copy_(u[:, 0])
                layer.weight_v.copy_(vh[0])
        _standing_statistics(module, n_codes)
    return module


def _standing_statistics(module, n_codes: int) -> None:
    """Set each BatchNorm's statistics to its input's per-channel mean and variance on `n_codes` prior codes, layer
    by layer in one forward pass (each normalises with its own statistics before the next layer measures)."""
    from pytorch_pretrained_biggan.model import BigGANBatchNorm

    def measure(norm, inputs):
        x = inputs[0]
        norm.running_means.copy_(x.mean((0, 2, 3)).expand_as(norm.running_means))
        norm.running_vars.copy_(x.var((0, 2, 3), correction=0).expand_as(norm.running_vars))

    hooks = [layer.register_forward_pre_hook(measure) for layer in module.modules()
             if isinstance(layer, BigGANBatchNorm)]
    embeddings = module.embeddings.weight  # (128, num_classes)
    noise = DEFAULT_TRUNCATION * torch.nn.init.trunc_normal_(torch.empty(n_codes, 128), a=-2.0, b=2.0)
    classes = embeddings[:, torch.randint(embeddings.shape[1], (n_codes,))].T
    module.generator(torch.cat([noise, classes], dim=1), DEFAULT_TRUNCATION)
    for hook in hooks:
        hook.remove()


def _cache_candidates(name: str) -> list[tuple[Path, Path | None]]:
    """(weights, config) pairs where `BigGAN.from_pretrained(name)` would have cached its downloads."""
    pkg = _biggan()
    from pytorch_pretrained_biggan.file_utils import url_to_filename
    from pytorch_pretrained_biggan.model import PRETRAINED_CONFIG_ARCHIVE_MAP, PRETRAINED_MODEL_ARCHIVE_MAP

    cache = Path(pkg.PYTORCH_PRETRAINED_BIGGAN_CACHE)
    pairs = [(cache / name / WEIGHTS_NAME, cache / name / CONFIG_NAME)]
    model_stem = url_to_filename(PRETRAINED_MODEL_ARCHIVE_MAP[name])
    config_stem = url_to_filename(PRETRAINED_CONFIG_ARCHIVE_MAP[name])
    configs = [p for p in sorted(cache.glob(config_stem + "*")) if p.suffix != ".json"]
    hashed = [p for p in sorted(cache.glob(model_stem + "*")) if p.suffix != ".json"]
    pairs += [(p, configs[0] if configs else None) for p in hashed] or [(cache / model_stem, None)]
    return pairs


def _resolve(name: str, weights: str | Path | None) -> tuple[Path, Path | None]:
    """(weights file, the config file beside it, which may not exist, or None) from a directory, a file, or the
    package cache."""
    if weights is None:
        pairs = _cache_candidates(name)
    else:
        path = Path(weights).expanduser()
        if path.is_dir():  # the file under its own name, or as the published download names it
            pairs = [(path / WEIGHTS_NAME, path / CONFIG_NAME), (path / f"{name}-{WEIGHTS_NAME}", path / CONFIG_NAME)]
        else:
            pairs = [(path, path.parent / CONFIG_NAME)]
    for model_file, config_file in pairs:
        if model_file.is_file():
            return model_file, config_file
    if folder := next((model_file for model_file, _ in pairs if model_file.is_dir()), None):
        raise folder_in_place(name, folder)
    if weights is not None:
        hint = given_weights_hint(path, f"{WEIGHTS_NAME} (with its {CONFIG_NAME})")
        if others := sorted(p.name for p in path.glob("*.bin")) if path.is_dir() else []:
            hint += f" The folder holds {', '.join(others)}: rename the file of {name}'s network {WEIGHTS_NAME}."
    else:
        hint = (f"Put {WEIGHTS_NAME} (and {CONFIG_NAME}) of {name} in a directory and give that directory or the "
                f"file ({WEIGHTS_ARGUMENT}), or let `BigGAN.from_pretrained({name!r})` fill the package cache "
                "on a machine with internet access.")
    raise WeightsNotFoundError(name, [p.absolute() for p, _ in pairs], hint=hint)


class BigGAN(Generator):
    """BigGAN-deep generator over [noise (128) | class embedding (128)]; output (x + 1) / 2 clamped.

    `default_init()` starts from truncated noise (seed 0) and the embedding of `DEFAULT_CLASS`,
    with sigma0 0.2 and the radius of that code.
    """

    latent_dim = 256

    def __init__(self, *, name: str, resolution: int, device: torch.device,
                 weights: str | Path | None = None, truncation: float = DEFAULT_TRUNCATION) -> None:
        if isinstance(truncation, bool) or not isinstance(truncation, int | float) or not 0.0 < truncation <= 1.0:
            raise GeneratorOptionError(f"truncation must be a number in (0, 1]; got {truncation!r}")
        pkg = _biggan()
        self.name = name
        self.truncation = float(truncation)
        self.version = f"1.0-trunc{self.truncation:g}"
        model_file, beside = _resolve(name, weights)
        config_file = beside if beside is not None and beside.is_file() else None
        config_dict = read_config(name, config_file) if config_file else standard_config(resolution)
        config = pkg.BigGANConfig.from_dict(config_dict)
        if config.z_dim != 128 or config.class_embed_dim != 128:
            raise GeneratorError(f"{config_file}: expected z_dim = class_embed_dim = 128")
        try:
            self.image_size, self.named_image_size = int(config.output_dim), resolution
            module = pkg.BigGAN(config)
        except (TypeError, ValueError, IndexError, RuntimeError) as exc:  # a value of the wrong type or size
            raise GeneratorError(f"{config_file} does not describe a BigGAN-deep network: {exc}") from None
        built = (f"The network was built from {config_file} ({config.output_dim} px, channel width "
                 f"{config.channel_width}): if that {CONFIG_NAME} is not this file's (a stand-in's left beside real "
                 f"weights, say), put the file's own there, or remove it to use the published config of {name}."
                 ) if config_file else (
            f"No {CONFIG_NAME} was found beside {model_file}, so the published config of {name} ({resolution} px, "
            f"channel width 128) was assumed: put the network's {CONFIG_NAME} beside the file.")
        load_into(name, module, load_state_dict_file(name, model_file), model_file, extra_keys_ok=True,
                  shapes_hint=built)
        super().__init__(module, device, sha256_file(model_file), batch_size=8,
                         weights_files=(model_file,) if beside is None else (model_file, beside))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.module.generator(z, self.truncation)
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0)

    def class_embedding(self, class_index: int) -> np.ndarray:
        """The 128-d embedding of ImageNet class `class_index` (0..999)."""
        weight = self.module.embeddings.weight  # (128, num_classes)
        if not 0 <= class_index < weight.shape[1]:
            raise GeneratorError(f"class_index must be in 0..{weight.shape[1] - 1}; got {class_index}")
        return weight[:, class_index].double().cpu().numpy()

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        from scipy.stats import truncnorm

        return self.truncation * truncnorm.rvs(-2, 2, size=(n, 128), random_state=rng)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        classes = rng.integers(0, self.module.embeddings.weight.shape[1], size=n)
        embed = self.module.embeddings.weight.double().cpu().numpy()[:, classes].T
        return np.concatenate([self._noise(n, rng), embed], axis=1)

    def default_init(self, class_index: int = DEFAULT_CLASS) -> dict:
        code = np.concatenate([self._noise(1, np.random.default_rng(0))[0], self.class_embedding(class_index)])
        return {"init_code": code, "sigma0": 0.2, "radius": float(np.linalg.norm(code))}


for _resolution in _BLOCKS:
    _name = f"biggan-deep-{_resolution}"
    register(_name, functools.partial(BigGAN, name=_name, resolution=_resolution))
