"""deepsim-fc6: architecture and output handling (BGR -> RGB, mean offset, clamp) checked analytically."""

import numpy as np

import optimizers
import pytest
import torch

import generators
from generators import GeneratorError
from generators.deepsim import RGB_MEAN, DeePSiMFc6, _normalize_keys


@pytest.fixture(scope="module")
def deepsim(loaded):
    return loaded("deepsim-fc6")


@pytest.fixture
def last_layer(deepsim):
    """deconv0 of the fixture's network, restored after the test."""
    layer = deepsim.module.deconv0
    saved = layer.weight.clone(), layer.bias.clone()
    yield layer
    with torch.no_grad():
        layer.weight.copy_(saved[0])
        layer.bias.copy_(saved[1])


def test_architecture():
    net = DeePSiMFc6()
    assert [n for n, _ in net.named_parameters()][:6] == [
        "defc7.weight", "defc7.bias", "defc6.weight", "defc6.bias", "defc5.weight", "defc5.bias"]
    with torch.no_grad():
        assert net(torch.zeros(1, 4096)).shape == (1, 3, 256, 256)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(56.0e6, rel=0.01)


def test_zero_last_layer_gives_the_mean_in_rgb_order(deepsim, last_layer):
    with torch.no_grad():
        last_layer.weight.zero_()
        last_layer.bias.zero_()
    images = deepsim.generate(deepsim.sample(2, np.random.default_rng(0)))
    expected = torch.tensor(RGB_MEAN).view(1, 3, 1, 1).expand_as(images) / 255
    torch.testing.assert_close(images, expected)


def test_bgr_flip_and_clamp(deepsim, last_layer):
    with torch.no_grad():
        last_layer.weight.zero_()
        last_layer.bias.copy_(torch.tensor([10.0, -500.0, 500.0]))  # raw B, G, R
    image = deepsim.generate(np.zeros((1, 4096)))[0, :, 0, 0]
    # R = clamp(500 + 123) = 255 -> 1; G = clamp(-500 + 117) = 0; B = (10 + 104) / 255
    torch.testing.assert_close(image, torch.tensor([1.0, 0.0, 114.0 / 255]))


def test_state_dict_variants_are_accepted():
    keys = DeePSiMFc6().state_dict().keys()
    variants = {"G.defc7.weight": 1, "deconv0.1.bias": 2, "conv5_1.weight": 3}
    assert _normalize_keys(variants, keys) == {"defc7.weight": 1, "deconv0.bias": 2, "conv5_1.weight": 3}
    assert set(_normalize_keys({"G." + k: 0 for k in keys}, keys)) == set(keys)


def test_keys_that_fit_no_layer_are_named_as_the_file_has_them(tmp_path):
    state = {k.replace("defc7", "main.1"): v for k, v in DeePSiMFc6().state_dict().items()}  # another network's
    torch.save(state, tmp_path / "fc6.pt")
    with pytest.raises(GeneratorError, match=r"Unexpected key\(s\) in state_dict: \"main\.1\.weight\"") as caught:
        generators.load("deepsim-fc6", device="cpu", weights=tmp_path / "fc6.pt")
    assert '"main.weight"' not in str(caught.value)  # the rewritten name, which the file does not hold


def test_default_init_is_the_benchmark_start(deepsim):
    init = deepsim.default_init()
    assert init["sigma0"] == 3.0 and init["radius"] == 300.0
    assert init["init_code"] is None  # each optimizer's own start: the zero code for CMA, as published


@pytest.mark.parametrize("name", ["cma", "sphere-cma", "ga", "pycma"])
def test_every_optimizer_starts_from_the_fc6_geometry(deepsim, name):
    from server.thread_runtime import optimizer_params

    optimizer = optimizers.create(name, 4096, seed=0, **optimizer_params(name, deepsim, {"population": 8}))
    codes = optimizer.ask()
    assert codes.shape[1] == 4096 and np.isfinite(codes).all()
