"""dcgan-faces: the packaged weights are really loaded (face statistics a random network lacks)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import generators
from generators.dcgan import DCGANGenerator


def face_statistics(images: torch.Tensor) -> tuple[float, float, float]:
    """(mean per-image grey std, lag-1 horizontal pixel correlation, left-right symmetry of the mean image)."""
    grey = images.mean(1)
    contrast = float(grey.std(dim=(1, 2)).mean())
    smooth = float(torch.corrcoef(torch.stack([grey[:, :, 1:].flatten(), grey[:, :, :-1].flatten()]))[0, 1])
    mean = grey.mean(0)
    symmetry = float(torch.corrcoef(torch.stack([mean.flatten(), mean.flip(1).flatten()]))[0, 1])
    return contrast, smooth, symmetry


def is_face_like(images: torch.Tensor) -> bool:
    """Photos of centred faces: visible contrast, smooth (spatially correlated) pixels, symmetric mean."""
    contrast, smooth, symmetry = face_statistics(images)
    return contrast > 0.08 and smooth > 0.9 and symmetry > 0.5


@pytest.fixture(scope="module")
def dcgan():
    return generators.load("dcgan-faces", device="cpu")


def test_trained_weights_make_faces(dcgan):
    images = dcgan.generate(dcgan.sample(48, np.random.default_rng(0)))
    assert images.shape == (48, 3, 64, 64)
    assert is_face_like(images), face_statistics(images)


@pytest.mark.parametrize("init", ["pytorch", "dcgan-paper"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_random_networks_fail_the_criterion(init, train_mode):
    torch.manual_seed(0)
    net = DCGANGenerator()
    if init == "dcgan-paper":  # N(0, 0.02) convs, N(1, 0.02) BN scales
        for m in net.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                torch.nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.normal_(m.weight, 1.0, 0.02)
    net.train(train_mode)
    with torch.no_grad():
        images = ((net(torch.randn(48, 100)) + 1) / 2).clamp(0, 1)
    assert not is_face_like(images), face_statistics(images)


def test_output_mapping(dcgan):
    z = torch.randn(3, 100)
    with torch.no_grad():
        raw = dcgan.module(z)
    torch.testing.assert_close(dcgan.generate(z), ((raw + 1) / 2).clamp(0, 1))
    assert float(raw.min()) >= -1 and float(raw.max()) <= 1


def test_default_init_is_the_prior_shell(dcgan):
    assert dcgan.default_init() == {"init_code": None, "sigma0": 1.0, "radius": 10.0}
    norms = np.linalg.norm(dcgan.sample(500, np.random.default_rng(0)), axis=1)
    assert abs(norms.mean() - 10.0) < 0.2


def test_the_hessian_example_in_docs_runs_and_matches_metric_hessian(dcgan):
    from analysis.geometry import metric_hessian

    doc = (Path(__file__).resolve().parents[2] / "docs" / "generators.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "functional.hessian" in b]
    scope = {"G": dcgan, "np": np, "torch": torch}
    exec(re.sub(r"^  ", "", example, flags=re.M), scope)
    expected = metric_hessian(dcgan.generate, scope["z0"], scope["d"], "bp").H
    np.testing.assert_allclose(scope["H"].numpy(), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
