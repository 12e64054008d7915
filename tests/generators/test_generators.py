"""Contract every registered generator meets, run on real (DCGAN) or small random weights."""

import hashlib

import numpy as np
import pytest
import torch

import generators
from generators import GeneratorError, WeightsNotFoundError

NAMES = ["dcgan-faces", "biggan-deep-128", "deepsim-fc6"]


@pytest.fixture(params=NAMES)
def gen(request, loaded):
    return loaded(request.param)


def test_registry():
    assert generators.available() == ["biggan-deep-128", "biggan-deep-256", "biggan-deep-512",
                                      "dcgan-faces", "deepsim-fc6"]
    with pytest.raises(GeneratorError, match="unknown generator 'stylegan'.*dcgan-faces"):
        generators.load("stylegan")
    with pytest.raises(GeneratorError, match="already registered"):
        generators.register("dcgan-faces", lambda **kw: None)


def test_shapes_range_and_dtype(gen):
    codes = gen.sample(2, np.random.default_rng(0))
    assert codes.shape == (2, gen.latent_dim) and codes.dtype == np.float64
    images = gen.generate(codes)
    assert images.shape == (2, 3, gen.image_size, gen.image_size)
    assert images.dtype == torch.float32 and images.device == gen.device
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert not images.requires_grad


def test_deterministic(gen):
    codes = gen.sample(2, np.random.default_rng(1))
    np.testing.assert_array_equal(codes, gen.sample(2, np.random.default_rng(1)))
    a = gen.generate(codes)
    assert torch.equal(a, gen.generate(codes))
    assert torch.equal(a, gen.generate(torch.from_numpy(codes).float()))
    torch.testing.assert_close(a[1:], gen.generate(codes[1:]))  # batch composition does not matter


def test_differentiable_with_a_grad_tensor(gen):
    z = torch.tensor(gen.sample(1, np.random.default_rng(2)), dtype=torch.float32, requires_grad=True)
    images = gen.generate(z)
    assert images.requires_grad
    (grad,) = torch.autograd.grad(images.mean(), z)
    assert grad.shape == z.shape and float(grad.abs().sum()) > 0
    hvp = torch.autograd.functional.hvp(lambda c: gen.forward(c).mean(), z.detach(), torch.ones_like(z))[1]
    assert torch.isfinite(hvp).all()  # second order works (Hessian-vector products)


def test_provenance_and_default_init(gen, weights_dirs):
    path = weights_dirs[gen.name][1]
    assert gen.provenance == {"name": gen.name, "version": gen.version,
                              "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    init = gen.default_init()
    assert set(init) == {"init_code", "sigma0", "radius"} and init["sigma0"] > 0 and init["radius"] > 0
    assert init["init_code"] is None or init["init_code"].shape == (gen.latent_dim,)


def test_bad_codes_are_refused(gen):
    with pytest.raises(GeneratorError, match=rf"\(n, {gen.latent_dim}\)"):
        gen.generate(np.zeros(gen.latent_dim))
    with pytest.raises(GeneratorError, match="NaN"):
        gen.generate(np.full((1, gen.latent_dim), np.nan))


@pytest.mark.parametrize("name", NAMES)
def test_weights_from_directory_and_file_agree(name, weights_dirs, loaded):
    from_file = generators.load(name, device="cpu", weights=weights_dirs[name][1])
    from_dir = loaded(name)
    codes = from_file.sample(1, np.random.default_rng(3))
    assert torch.equal(from_file.generate(codes), from_dir.generate(codes))
    assert from_file.provenance == from_dir.provenance


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_error_says_where(name, tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        generators.load(name, device="cpu", weights=tmp_path)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, GeneratorError)
    assert str(tmp_path) in str(err.value) and "weights= in Python" in str(err.value)
    assert "--weights on the command line" in str(err.value)  # the CLI's flag, not only the Python keyword
    assert "torch/hub" not in str(err.value) and "from_pretrained" not in str(err.value)  # not where defaults go
    with pytest.raises(WeightsNotFoundError, match="nothing.pt"):
        generators.load(name, device="cpu", weights=tmp_path / "nothing.pt")


@pytest.mark.parametrize("name", NAMES)
def test_a_relative_weights_path_is_said_to_be_read_from_the_working_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError) as err:
        generators.load(name, device="cpu", weights="weights.tar")
    assert f"  - {tmp_path / 'weights.tar'}\n" in str(err.value)
    assert f"a relative path is read from the working directory {tmp_path}" in str(err.value)


def test_wrong_weights_file_is_a_clear_error(weights_dirs):
    with pytest.raises(GeneratorError, match="weights.tar: it holds a dict whose 'netG_state_dict' is a OrderedDict"):
        generators.load("deepsim-fc6", device="cpu", weights=weights_dirs["dcgan-faces"][1])
    with pytest.raises(GeneratorError, match="do not fit generator 'dcgan-faces'"):
        generators.load("dcgan-faces", device="cpu", weights=weights_dirs["deepsim-fc6"][1])


def test_auto_device():
    gen = generators.load("dcgan-faces")
    assert gen.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_option_the_generator_does_not_take_is_named_with_those_it_takes():
    with pytest.raises(GeneratorError, match=r"dcgan-faces does not take option\(s\) truncation; it takes: no options"):
        generators.load("dcgan-faces", device="cpu", truncation=0.5)
    with pytest.raises(GeneratorError, match=r"biggan-deep-128 does not take option\(s\) trunc; it takes: truncation"):
        generators.load("biggan-deep-128", device="cpu", trunc=0.5)


def test_running_out_of_memory_halves_the_batch_and_renders_every_image(caplog) -> None:
    """A network that runs out of memory above 5 codes per pass (as a GPU does) still renders all 12 codes,
    the same images as one pass per code, and keeps the smaller batch for the next call."""
    from generators.base import Generator

    class Tight(Generator):
        name, version, latent_dim, image_size = "tight", "1", 4, 2
        passes: list[int] = []

        def forward(self, z):
            self.passes.append(len(z))
            if len(z) > 5:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (a stand-in limit)")
            return torch.sigmoid(z[:, :3, None, None] * torch.ones(1, 1, 2, 2))

        def sample(self, n, rng):
            return rng.standard_normal((n, 4))

        def default_init(self):
            return {}

    gen = Tight(torch.nn.Identity(), torch.device("cpu"), None, batch_size=16)
    codes = gen.sample(12, np.random.default_rng(0))
    with caplog.at_level("WARNING", logger="generators.base"):
        images = gen.generate(codes)
    one_by_one = torch.cat([gen.forward(torch.from_numpy(c[None]).float()) for c in codes])
    assert torch.equal(images, one_by_one)
    assert gen.batch_size <= 5 and gen.passes[0] == 12
    assert "tight: out of memory on cpu; rendering 3 images per pass from now on" in caplog.text
    gen.passes.clear()
    gen.generate(codes)
    assert max(gen.passes) == gen.batch_size  # no pass over the limit again
