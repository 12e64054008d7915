"""biggan-deep-*: the code is [noise | class embedding], truncation, weights resolution."""

import numpy as np
import pytest
import torch

import generators
from generators import GeneratorError
from generators.biggan import standard_config


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
