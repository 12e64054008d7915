"""PNG encoding of generator output: parallel, compact, and lossless (the pixels come back exactly)."""

import io

import numpy as np
import torch
from PIL import Image

from rig_client.protocol import decode_png
from server.images import encode_images, parallel_map, to_pixels


def test_encoded_images_decode_to_the_same_pixels_in_order():
    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(12, 3, 8, 8, generator=generator), size=96, mode="bicubic")
    images = smooth + 0.05 * torch.randn(smooth.shape, generator=generator)  # some outside [0, 1]
    given = images.clone()
    pixels = to_pixels(images)
    expected = (np.clip(given.numpy(), 0, 1).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)  # by hand
    np.testing.assert_array_equal(pixels, expected)
    assert pixels.flags.c_contiguous and torch.equal(images, given)  # the generator's output is left as it was
    pngs = encode_images(images)
    assert len(pngs) == 12
    for png, image in zip(pngs, pixels, strict=True):
        np.testing.assert_array_equal(decode_png(png), image)
        pillow = io.BytesIO()
        Image.fromarray(image, "RGB").save(pillow, format="PNG", compress_level=1)  # other bytes, same image
        np.testing.assert_array_equal(decode_png(pillow.getvalue()), decode_png(png))
        assert len(png) < 1.1 * len(pillow.getvalue())  # the speed is not bought with much larger files


def test_parallel_map_keeps_the_order_for_any_number_of_items():
    for n in (0, 1, 2, 3, 7, 40):
        assert parallel_map(lambda x: x * x, range(n)) == [x * x for x in range(n)]


def test_half_precision_images_become_the_same_8_bit_pixels_as_their_float32_values():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    np.testing.assert_array_equal(to_pixels(images), to_pixels(images.float()))
