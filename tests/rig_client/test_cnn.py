"""EfficientNet-Lite0: pretrained weights verified on a cat; folding, layer names, laziness, RF maths."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from rig_client.cnn import EfficientNetLite0, load_efficientnet_lite0, normalize


@pytest.fixture(scope="module")
def model():
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def chelsea():
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


def test_chelsea_is_a_cat(model, chelsea):
    with torch.no_grad():
        probs = model(normalize(chelsea)).softmax(1)[0]
    assert 281 <= int(probs.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert float(probs[281:286].sum()) > 0.8


def test_folded_network_matches_plain(model, chelsea):
    with torch.no_grad():
        plain, folded = model(normalize(chelsea)), model.folded()(normalize(chelsea))
    assert torch.allclose(folded, plain, rtol=0, atol=1e-4 * float(plain.abs().max()))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.folded().modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched


def test_layer_names(model):
    names = model.layer_names()
    assert names[:3] == ["stem", "blocks.0.depthwise", "blocks.0.project"]
    assert names[-2:] == ["head", "fc"]
    assert "blocks.0.expand" not in names and "blocks.15.expand" in names
    assert len(names) == 1 + 3 + 15 * 4 + 2


def test_stopping_the_iteration_stops_the_network(model):
    calls = []
    handle = model.blocks[1].expand.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            for name, _ in model.preactivations(torch.zeros(1, 3, 224, 224)):
                if name == "blocks.0":
                    break
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("layer", ["blocks.2", "blocks.4.depthwise"])
def test_receptive_field_bounds_the_gradient(model, layer):
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    h = dict(model.preactivations(x))[layer]
    c = h.shape[-1] // 2
    (grad,) = torch.autograd.grad(h[0, 0, c, c], x)
    rows = (grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero().flatten()
    cols = (grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
    y0, y1, x0, x1 = model.receptive_field(layer, c, c)
    assert max(y0, 0) == rows.min() and min(y1, 223) == rows.max()
    assert max(x0, 0) == cols.min() and min(x1, 223) == cols.max()


def test_architecture_is_lite0():
    net = EfficientNetLite0()
    strides = [b.depthwise.conv.stride[0] for b in net.blocks]
    assert [i for i, s in enumerate(strides) if s == 2] == [1, 3, 5, 11]
    assert all(isinstance(m, torch.nn.BatchNorm2d) and m.eps == 1e-3
               for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert np.isclose(sum(p.numel() for p in net.parameters()) / 1e6, 4.65, atol=0.05)
