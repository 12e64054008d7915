"""Simulated units: truncated BN-folded fast path == hooks on the plain full network; RF; screening."""

import numpy as np
import pytest
import torch

import generators
from rig_client import RigError
from rig_client.cnn import load_efficientnet_lite0
from rig_client.units import ReceptiveField, Unit, UnitScorer, screen_units


@pytest.fixture(scope="module")
def model():
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


UNITS = [
    Unit("stem", 3), Unit("blocks.0.depthwise", 1, x=0, y=0), Unit("blocks.2", 5),
    Unit("blocks.3.expand", 7, x=20, y=9), Unit("blocks.5.project", 2), Unit("blocks.7", 11),
    Unit("blocks.11.depthwise", 4, x=6, y=6), Unit("blocks.15", 300), Unit("head", 1000),
    Unit("fc", 285),
]


@pytest.mark.parametrize("unit", UNITS, ids=str)
def test_fast_path_equals_hook_on_plain_full_network(model, images, unit):
    fast = UnitScorer([unit], model=model).score(images)
    plain = UnitScorer([unit], model=model, fast=False).score(images)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-4 * np.abs(plain).max())


def test_many_units_across_layers_in_one_pass(model, images):
    units = [Unit("blocks.4", c) for c in range(5)] + [Unit("blocks.6.depthwise", 9, x=3, y=11)]
    fast = UnitScorer(units, model=model)
    assert fast.score(images).shape == (3, 6)
    np.testing.assert_allclose(fast.score(images), UnitScorer(units, model=model, fast=False).score(images),
                               rtol=0, atol=1e-4 * 50)


def test_fast_path_stops_at_the_target_layer_and_crops(model, images):
    scorer = UnitScorer([Unit("blocks.5", 0)], model=model)
    calls = []
    handle = scorer.model.head.register_forward_hook(lambda *a: calls.append(1))
    try:
        scorer.score(images)
    finally:
        handle.remove()
    assert calls == []
    y0, y1, x0, x1 = scorer.crop
    assert 0 < y0 and y1 < 224 and (y1 - y0) < 224  # centre unit of a stride-16 map: a partial frame


def test_preactivation_is_read_before_relu6(model):
    scorer = UnitScorer([Unit("blocks.1.expand", c) for c in range(96)], model=model)
    r = scorer.score(torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert r.min() < 0 and r.max() > 6  # ReLU6 would clip to [0, 6]


def test_centre_default_and_numpy_input(model, images):
    scorer = UnitScorer([Unit("blocks.5", 0)], model=model)
    assert (scorer.units[0].x, scorer.units[0].y) == (7, 7)
    np.testing.assert_allclose(scorer.score(images.numpy()), scorer.score(images))


@pytest.mark.parametrize("unit, match", [
    (Unit("blocks.99", 0), "unknown layer"), (Unit("stem", 32), "channels 0..31"),
    (Unit("head", 0, x=7, y=0), "outside"), (Unit("fc", 0, x=0, y=0), "no spatial"),
])
def test_bad_units_are_refused(model, unit, match):
    with pytest.raises(RigError, match=match):
        UnitScorer([unit], model=model)


def test_receptive_field_placement():
    img = torch.ones(2, 3, 10, 10)
    frame = ReceptiveField(size=100, x=50, y=60).place(img)
    assert frame.shape == (2, 3, 224, 224)
    assert torch.all(frame[:, :, 10:110, 0:100] == 1) and frame[:, :, 10:110, 0:100].numel() == 2 * 3 * 100 * 100
    assert float(frame.sum()) == pytest.approx(2 * 3 * (100 * 100 + 0.5 * (224 * 224 - 100 * 100)))
    assert torch.all(ReceptiveField(size=50, x=0, y=0).place(img)[:, :, :25, :25] == 1)  # clipped at the corner
    full = ReceptiveField().place(torch.rand(1, 3, 64, 64))
    assert full.shape == (1, 3, 224, 224)


@pytest.mark.parametrize(("size", "x", "y"), [(50, 500, 500), (50, 112, -30), (10, 230, 112)])
def test_receptive_field_off_the_frame_is_refused(size, x, y):
    with pytest.raises(RigError, match=f"is outside the 224 x 224 frame; put its centre x and y between "
                                       f"{1 - size / 2:g} and {223 + size / 2:g}"):
        ReceptiveField(size, x, y)


def test_receptive_field_changes_responses(model):
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    unit = [Unit("blocks.5", 3)]
    inside = UnitScorer(unit, model=model, rf=(80, 112, 112)).score(img)
    elsewhere = UnitScorer(unit, model=model, rf=(40, 20, 20)).score(img)
    grey = UnitScorer(unit, model=model).score(torch.full((1, 3, 8, 8), 0.5))
    assert np.allclose(elsewhere, grey[0], atol=1e-4)  # image outside the unit's receptive field
    assert not np.allclose(inside, grey[0], atol=1e-2)


def test_screen_units_ranks_responsive_channels(model):
    dcgan = generators.load("dcgan-faces", device="cpu")
    ranked = screen_units(dcgan, "blocks.5", n_samples=12, rng=np.random.default_rng(0), model=model)
    assert ranked and all(s.unit.layer == "blocks.5" and (s.unit.x, s.unit.y) == (7, 7) for s in ranked)
    stds = [s.std for s in ranked]
    assert stds == sorted(stds, reverse=True) and min(stds) > 1e-6
    assert all(s.max > 0 for s in ranked)
    with pytest.raises(RigError, match="spatial"):
        screen_units(dcgan, "fc", n_samples=2, model=model)
    assert screen_units(dcgan, "blocks.5", n_samples=12, rng=0, model=model) == ranked  # a seed, as in analysis
