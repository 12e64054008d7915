"""biggan-deep-*: the code is [noise | class embedding], truncation, weights resolution."""

import json

import numpy as np
import pytest
import torch

import generators
from generators import GeneratorError
from generators.base import PRECISION_TOLERANCE, check_precision
from generators.biggan import TINY_CONFIG, random_network, standard_config


@pytest.fixture(scope="module")
def biggan(loaded):
    return loaded("biggan-deep-128")


def test_class_half_is_the_embedding(biggan):
    noise = torch.tensor(biggan.sample(2, np.random.default_rng(0))[:, :128], dtype=torch.float32)
    one_hot = torch.zeros(2, 1000)
    one_hot[0, 207], one_hot[1, 1] = 1, 1
    with torch.no_grad():
        reference = (biggan.module(noise, one_hot, 0.7) + 1) / 2
    embed = np.stack([biggan.class_embedding(207), biggan.class_embedding(1)])
    ours = biggan.generate(np.concatenate([noise.numpy(), embed], axis=1))
    torch.testing.assert_close(ours, reference.clamp(0, 1))


def test_prior_samples(biggan):
    codes = biggan.sample(300, np.random.default_rng(0))
    assert np.abs(codes[:, :128]).max() <= 2 * 0.7
    embeddings = biggan.module.embeddings.weight.double().numpy().T
    assert all(np.isclose(embeddings, c).all(axis=1).any() for c in codes[:5, 128:])


def test_default_init_starts_at_a_class(biggan):
    init = biggan.default_init(class_index=207)
    np.testing.assert_allclose(init["init_code"][128:], biggan.class_embedding(207))
    assert np.abs(init["init_code"][:128]).max() <= 1.4
    assert init["radius"] == pytest.approx(np.linalg.norm(init["init_code"]))
    np.testing.assert_array_equal(biggan.default_init(207)["init_code"], init["init_code"])
    with pytest.raises(GeneratorError, match="class_index"):
        biggan.class_embedding(1000)


def test_truncation_is_an_option_and_part_of_the_version(weights_dirs, biggan):
    other = generators.load("biggan-deep-128", device="cpu", weights=weights_dirs["biggan-deep-128"][0],
                            truncation=0.4)
    assert other.version != biggan.version and "0.4" in other.version
    codes = biggan.sample(1, np.random.default_rng(1))
    assert not torch.equal(other.generate(codes), biggan.generate(codes))
    for bad in (1.5, "0.5", True):  # out of range, or not a number (a session's generator_options)
        with pytest.raises(GeneratorError, match=r"truncation must be a number in \(0, 1\]"):
            generators.load("biggan-deep-128", weights=weights_dirs["biggan-deep-128"][0], truncation=bad)


def test_missing_weights_names_the_cache(monkeypatch, tmp_path):
    import pytorch_pretrained_biggan

    monkeypatch.setattr(pytorch_pretrained_biggan, "PYTORCH_PRETRAINED_BIGGAN_CACHE", tmp_path)
    with pytest.raises(generators.WeightsNotFoundError) as err:
        generators.load("biggan-deep-256", device="cpu")
    assert str(tmp_path / "biggan-deep-256" / "pytorch_model.bin") in str(err.value)


@pytest.mark.parametrize("resolution, blocks", [(128, 10), (256, 12), (512, 14)])
def test_standard_configs_reach_their_resolution(resolution, blocks):
    config = standard_config(resolution)
    assert len(config["layers"]) == blocks and config["layers"][-1][2] == 1
    assert 4 * 2 ** sum(up for up, _, _ in config["layers"]) == resolution


@pytest.fixture(scope="module")
def random_module():
    return random_network(TINY_CONFIG)


@pytest.fixture(scope="module")
def random_biggan(random_module, tmp_path_factory):
    """The weights folder of `random_network(TINY_CONFIG)` exactly as it comes (`weights_dirs` adjusts them)."""
    folder = tmp_path_factory.mktemp("random-biggan")
    torch.save(random_module.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return folder


def test_random_network_divides_by_each_layers_largest_singular_value(random_module):
    """In eval mode spectral norm divides by u . W v: with the package's random u and v that was down to 1e-5 of the
    largest singular value, so activations grew past float32's range (NaN in every precision at 256 px)."""
    layers = [layer for layer in random_module.modules() if hasattr(layer, "weight_orig")]
    assert len(layers) > 20
    for layer in layers:
        matrix = layer.weight_orig.detach().flatten(1)
        sigma = torch.dot(layer.weight_u, matrix @ layer.weight_v)
        assert float(sigma) == pytest.approx(float(torch.linalg.matrix_norm(matrix, 2)), rel=1e-4)


def test_random_network_normalises_each_layer_like_a_checkpoints_statistics(random_biggan):
    from pytorch_pretrained_biggan.model import BigGANBatchNorm

    generator = generators.load("biggan-deep-128", device="cpu", weights=random_biggan)
    normalised = []

    def record(norm, inputs, output):  # what each BatchNorm passes on, before its class-conditional gain
        mean, var = norm.running_means[0], norm.running_vars[0]  # the same for every truncation
        normalised.append((inputs[0] - mean[:, None, None]) / torch.sqrt(var[:, None, None] + norm.eps))
    for layer in generator.module.modules():
        if isinstance(layer, BigGANBatchNorm):
            layer.register_forward_hook(record)
    images = generator.generate(generator.sample(8, np.random.default_rng(1)))  # other codes than it measured on
    assert len(normalised) == 4 * len(TINY_CONFIG["layers"]) + 1
    for x in normalised:
        assert abs(float(x.mean())) < 0.5 and 0.3 < float(x.var()) < 3
    assert bool(torch.isfinite(images).all())
    assert 0.1 < float(images.std()) and float(((images == 0) | (images == 1)).float().mean()) < 0.05  # not saturated


@pytest.mark.parametrize("precision, bound", [("float16", 2 * PRECISION_TOLERANCE), ("bfloat16", 0.25)])
def test_random_network_renders_half_precision_within_rounding_of_float32(random_biggan, precision, bound):
    """Before, float16 rendered NaN and bfloat16 differed by 1.0 (saturated images flipping sign). The difference
    left is rounding that the random network amplifies (docs/generators.md): float16 near the tolerance, bfloat16
    some eight times that."""
    generator = generators.load("biggan-deep-128", device="cpu", weights=random_biggan)
    assert check_precision(generator, precision, tolerance=1.0) < bound
