"""Stimulus images: PNG encoding of generator output and the natural reference images."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rig_client.protocol import encode_png
from server.session_config import ConfigError

# scikit-image's bundled sample photographs (colour, or grey made RGB; none needs a download).
SKIMAGE_REFERENCES = (
    "astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
    "retina", "coins", "moon", "cat", "clock", "page", "grass", "gravel", "brick", "colorwheel",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@cache
def _encoder_pool() -> ThreadPoolExecutor:
    """One pool per process: the PNG compressor releases the GIL, so images encode in parallel."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="actmax-png")


def parallel_map(fn, items) -> list:
    """``[fn(x) for x in items]`` on the process's image pool (for work that releases the GIL), one run of
    consecutive items per core: a hand-off per core, not per item."""
    items = list(items)
    size = max(1, -(-len(items) // (os.cpu_count() or 1)))
    runs = [items[i:i + size] for i in range(0, len(items), size)]
    return [y for done in _encoder_pool().map(lambda run: [fn(x) for x in run], runs) for y in done]


def parallel_submit(fn, *args) -> Future:
    """Run ``fn(*args)`` on the image pool in the background."""
    return _encoder_pool().submit(fn, *args)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(n, H, W, 3) uint8 of images (n, 3, H, W) in [0, 1], any device or float dtype.

    One new float tensor, scaled and rounded in place, then converted and transposed in one copy."""
    scaled = images.detach().float().clamp(0, 1).mul_(255).round_()
    n, channels, height, width = scaled.shape
    pixels = torch.empty((n, height, width, channels), dtype=torch.uint8, device=scaled.device)
    return pixels.copy_(scaled.permute(0, 2, 3, 1)).cpu().numpy()


def encode_images(images: torch.Tensor) -> list[bytes]:
    """8-bit RGB PNG bytes (the wire format, ``rig_client.protocol.encode_png``) for images (n, 3, H, W) in
    [0, 1], encoded on all cores.

    PNG is lossless: decoding gives back ``to_pixels(images)`` exactly.
    """
    return parallel_map(encode_png, to_pixels(images))


def _square_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, make RGB uint8, resize to size×size."""
    picture = Image.fromarray(np.asarray(image)).convert("RGB")
    w, h = picture.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    picture = picture.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(picture, dtype=np.uint8)


def reference_files(source: str) -> list[Path]:
    """The image files of a reference folder, sorted."""
    folder = Path(source).expanduser()
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def check_references(source: str, count: int) -> None:
    """``ConfigError`` naming the field and the fix unless ``source`` holds ``count`` images."""
    if source == "skimage":
        if count > len(SKIMAGE_REFERENCES):
            raise ConfigError(f"references.count: skimage has {len(SKIMAGE_REFERENCES)} images, asked {count}; "
                              f"ask at most {len(SKIMAGE_REFERENCES)} or give a folder as references.source")
        return
    found = len(reference_files(source))
    if found < count:
        raise ConfigError(f"references.source: {source!r} holds {found} image(s) ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                          f"{count} needed; add images or lower references.count")


def load_references(source: str, count: int, size: int = 128) -> list[np.ndarray]:
    """``count`` reference images (size×size RGB uint8) from ``"skimage"`` or a folder of images."""
    check_references(source, count)
    if source == "skimage":
        from skimage import data

        return [_square_rgb(getattr(data, name)(), size) for name in SKIMAGE_REFERENCES[:count]]
    return [_square_rgb(Image.open(p), size) for p in reference_files(source)[:count]]
