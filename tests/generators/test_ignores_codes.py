"""`ignores_codes`: weights that render one image for every code (untrained, or not converted) are named."""

import torch

import generators
from generators.base import ignores_codes
from generators.dcgan import STATE_KEY, packaged_weights


def test_a_generator_that_renders_one_image_for_every_code_is_named(tmp_path):
    checkpoint = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    checkpoint[STATE_KEY]["main.12.weight"].zero_()  # the last layer: tanh(0) everywhere, a grey image
    torch.save(checkpoint, tmp_path / "weights.tar")
    generator = generators.load("dcgan-faces", device="cpu", weights=tmp_path)
    assert ignores_codes(generator) == (
        f"the weights look untrained or not converted: dcgan-faces (weights sha256 {generator.weights_sha256[:12]}) "
        "renders the same image for 3 different codes, so an evolution would show one image throughout; give it "
        "the trained network's state dict, with its parameters under this generator's names (docs/generators.md)")


def test_trained_and_tiny_random_generators_render_different_images(loaded):
    assert ignores_codes(generators.load("dcgan-faces", device="cpu")) is None
    assert ignores_codes(loaded("biggan-deep-128")) is None  # the tests' random 32 px network
