"""The simulated rig answers each image as the documented UnitScorer scores it alone, whatever else its batch holds."""

from __future__ import annotations

import numpy as np
import torch

from rig_client.client import Batch, Stimulus
from rig_client.protocol import decode_png, encode_png
from rig_client.sim import SimulatedRig
from server.cli import build_parser


def test_an_image_is_scored_alone_whatever_the_sizes_of_the_others_in_its_batch():
    """64-px faces were resized to a 512-px reference's size before scoring: their rates depended on the batch."""
    rng = np.random.default_rng(0)
    face, reference = (encode_png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for side in (64, 512))
    rig = SimulatedRig(build_parser().parse_args(["rig", "sim"]))

    def answer(*pngs: bytes) -> list[float]:
        batch = Batch("b", "s", "t", 0, (50.0, 200.0), [Stimulus(f"st-{k}", "synthetic", png)
                                                         for k, png in enumerate(pngs)])
        return [p.rates[0] for p in rig.respond(batch)]

    def alone(png: bytes) -> float:
        return float(rig.scorer.score(torch.tensor(decode_png(png)).permute(2, 0, 1).float().div(255)[None])[0, 0])

    with_reference = answer(face, reference)
    assert with_reference == [alone(face), alone(reference)]
    assert answer(face)[0] == with_reference[0]
