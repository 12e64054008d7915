"""Opt-in half precision: a generator runs in float16/bfloat16 only while its images stay within tolerance."""

import numpy as np
import pytest
import torch

import generators
from generators.base import PRECISION_SAMPLES, GeneratorError, check_precision


def float32_images(name="dcgan-faces"):
    generator = generators.load(name, device="cpu")
    return generator, generator.generate(generator.sample(PRECISION_SAMPLES, np.random.default_rng(0)))


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_difference_is_measured_against_an_independent_float32_network(precision):
    reference_generator, reference = float32_images()
    generator = generators.load("dcgan-faces", device="cpu")
    difference = check_precision(generator, precision, tolerance=1.0)
    codes = generator.sample(PRECISION_SAMPLES, np.random.default_rng(0))
    images = generator.generate(codes)
    assert generator.dtype == getattr(torch, precision) and images.dtype == torch.float32
    assert next(generator.module.parameters()).dtype == getattr(torch, precision)
    assert difference == pytest.approx(float((images - reference).abs().max()))
    assert 0 < difference < 0.1  # half precision changes the images, a little
    assert generator.provenance["version"] == f"{reference_generator.version}+{precision}"


def test_a_difference_over_tolerance_is_refused_and_the_generator_stays_float32():
    _, reference = float32_images()
    generator = generators.load("dcgan-faces", device="cpu")
    difference = check_precision(generator, "bfloat16", tolerance=1.0)
    generator = generators.load("dcgan-faces", device="cpu")
    with pytest.raises(GeneratorError, match="use float32"):
        check_precision(generator, "bfloat16", tolerance=difference / 2)
    assert generator.dtype == torch.float32
    codes = generator.sample(PRECISION_SAMPLES, np.random.default_rng(0))
    torch.testing.assert_close(generator.generate(codes), reference, rtol=0, atol=0)


def test_load_checks_the_precision_and_rejects_unknown_names():
    assert generators.load("dcgan-faces", device="cpu", precision="float16").dtype == torch.float16
    with pytest.raises(GeneratorError, match="precision must be one of"):
        generators.load("dcgan-faces", device="cpu", precision="half")


def test_a_half_precision_generator_takes_and_returns_float32_with_gradients():
    generator = generators.load("dcgan-faces", device="cpu", precision="float16")
    codes = generator.sample(2, np.random.default_rng(0))
    z = torch.tensor(codes, dtype=torch.float32, requires_grad=True)
    images = generator.generate(z)  # the gradient path: forward in one batch, graph kept
    assert images.dtype == torch.float32 and images.requires_grad
    images.mean().backward()
    assert z.grad.dtype == torch.float32 and bool(torch.isfinite(z.grad).all()) and z.grad.abs().sum() > 0
    direct = generator.forward(torch.tensor(codes, dtype=torch.float32))
    assert direct.dtype == torch.float32
    torch.testing.assert_close(direct, generator.generate(codes), rtol=0, atol=0)


def test_check_precision_converts_in_place_and_refuses_a_converted_generator():
    generator = generators.load("dcgan-faces", device="cpu")
    check_precision(generator, "float16", tolerance=1.0)
    assert generator.dtype == torch.float16  # it converts the generator it tests (generators.md)
    with pytest.raises(GeneratorError, match="already runs in float16"):
        check_precision(generator, "bfloat16", tolerance=1.0)


def test_a_precision_that_renders_nan_says_so():
    """Values past float16's range (65504) make infinities, then NaN, where float32 renders a face."""
    generator = generators.load("dcgan-faces", device="cpu")
    with torch.no_grad():  # the same images in float32: the first layer 1e5 times larger, its BatchNorm undoing it
        generator.module.main[0].weight.mul_(1e5)
        generator.module.main[1].running_mean.mul_(1e5)
        generator.module.main[1].running_var.mul_(1e10)
    with pytest.raises(GeneratorError) as err:
        check_precision(generator, "float16")
    assert str(err.value) == "dcgan-faces in float16 renders NaN on cpu; use float32 for this generator"
    assert generator.dtype == torch.float32


def test_weights_that_render_nan_in_float32_are_called_broken_not_a_precision_problem():
    generator = generators.load("dcgan-faces", device="cpu")
    with torch.no_grad():
        generator.module.main[0].weight.view(-1)[0] = float("nan")  # a damaged file
    with pytest.raises(GeneratorError) as err:
        check_precision(generator, "float16")
    assert str(err.value) == ("dcgan-faces renders NaN or infinite pixels in float32 already, so float16 cannot be "
                              "compared with it: its weights are broken (a damaged file, or a network that overflows); "
                              "give it intact weights")
    assert generator.dtype == torch.float32
