"""analysis.distances: d² semantics (zero and quadratic at x1 = x2), features form, registry."""

import pytest
import torch
from torch import nn

from analysis import AnalysisError, distances


def images(n=3, seed=0, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def toy_perceptual():
    torch.manual_seed(0)
    convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)]).double()

    def extract(x):
        out, h = [], x
        for conv in convs:
            h = torch.tanh(conv(h))  # smooth, so the quadratic check is clean
            out.append(h)
        return out

    return distances.PerceptualDistance(extract)


def assert_d2_semantics(dist, x, v):
    zero = dist(x, x)
    torch.testing.assert_close(zero, torch.zeros_like(zero), atol=1e-12, rtol=0)
    t = 1e-3
    ratio = dist(x, x + 2 * t * v) / dist(x, x + t * v)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 4.0), rtol=1e-2, atol=0)  # quadratic, not |dx|
    dx = torch.zeros_like(x, requires_grad=True)
    (g,) = torch.autograd.grad(dist(x, x + dx).sum(), dx)
    assert g.abs().max() < 1e-10  # stationary at x1 = x2


def test_mse_is_mean_squared_error_with_d2_semantics():
    x, y = images(), images(seed=1)
    mse = distances.MSEDistance()
    torch.testing.assert_close(mse(x, y), ((x - y) ** 2).mean((1, 2, 3)))
    torch.testing.assert_close(mse(x, y), ((mse.features(x) - mse.features(y)) ** 2).sum(1))
    torch.testing.assert_close(mse(x[:1], y), mse(x[:1].expand_as(y), y))  # batch of 1 broadcasts
    assert_d2_semantics(mse, x, images(seed=2) - 0.5)


def test_perceptual_has_d2_semantics_and_unit_normalised_features():
    dist = toy_perceptual()
    x = images()
    assert_d2_semantics(dist, x, images(seed=2) - 0.5)
    f = dist.features(x)
    # each layer contributes at most 4/L: |â1 − â2|² <= 4 at every position, averaged
    assert dist(x, images(seed=3)).max() <= 4.0
    assert f.shape == (3, 8 * 16 * 16 + 16 * 8 * 8)
    torch.testing.assert_close(dist(x, images(seed=3)), ((f - dist.features(images(seed=3))) ** 2).sum(1))


def test_registry_and_errors():
    assert distances.available() == ["mse", "perceptual"]
    assert isinstance(distances.get_distance("mse"), distances.MSEDistance)
    with pytest.raises(AnalysisError, match="unknown distance"):
        distances.get_distance("lpips")


def test_efficientnet_perceptual_distance():
    cnn = pytest.importorskip("rig_client.cnn")
    network = cnn.load_efficientnet_lite0()
    dist = distances.get_distance("perceptual", network, cnn.normalize)
    x = images(2, size=64).float()
    y = images(2, seed=5, size=64).float()
    d = dist(x, y)
    assert d.shape == (2,) and torch.all(d > 0) and torch.all(d <= 4.0)
    assert dist(x, x).abs().max() < 1e-6
    near = dist(x, (x + 0.01 * (y - x)))
    assert torch.all(near < d / 100)  # quadratic: 1% of the way gives ~1e-4 of the distance
    with pytest.raises(AnalysisError, match="unknown EfficientNet-Lite0 layers"):
        distances.efficientnet_distance(network, cnn.normalize, layers=["blocks.99"])
    with pytest.raises(AnalysisError, match="needs the feature network"):
        distances.get_distance("perceptual")
