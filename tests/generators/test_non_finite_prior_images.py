"""`ignores_codes` on images with a NaN or infinite pixel: NaN != NaN made black images of every code "differ"; now a
generator that renders them for prior codes is an error naming its version, how many codes and the fix."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generators
from generators.base import GeneratorError, ignores_codes, sha256_file
from generators.dcgan import STATE_KEY, packaged_weights


def changed_weights(folder: Path, change) -> Path:
    """``folder`` holding dcgan-faces's packaged weights with ``change`` applied to its first layer's weight."""
    checkpoint = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    change(checkpoint[STATE_KEY]["main.0.weight"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / "weights.tar")
    return folder


def one_nan(weight: torch.Tensor) -> None:
    weight.view(-1)[0] = math.nan  # a damaged file: one value


def test_weights_with_one_nan_render_no_image_an_evolution_could_run_on(tmp_path):
    generator = generators.load("dcgan-faces", device="cpu", weights=changed_weights(tmp_path, one_nan))
    with pytest.raises(GeneratorError) as refused:
        ignores_codes(generator)
    assert str(refused.value) == (
        f"dcgan-faces 1.0 (weights sha256 {generator.weights_sha256[:12]}) renders NaN or infinite pixels for 3 of 3 "
        "prior codes (seed 0), so no evolution can run on it: its weights are broken (a damaged file, or a network "
        "that overflows); give it intact weights")


def test_a_half_precision_the_network_overflows_in_is_named_with_float32_as_the_fix(tmp_path):
    """Weights a million times larger stay finite in float32 (batch norm rescales them) but overflow float16."""
    generator = generators.load("dcgan-faces", device="cpu", weights=changed_weights(tmp_path, lambda w: w.mul_(1e6)))
    assert ignores_codes(generator) is None
    generator.to_precision(torch.float16)
    with pytest.raises(GeneratorError, match=re.escape(
            "dcgan-faces 1.0+float16 (weights sha256 ") + r"[0-9a-f]{12}\) renders NaN or infinite pixels for 3 of 3 "
            r"prior codes \(seed 0\), so no evolution can run on it: float16 overflows in it; use float32$"):
        ignores_codes(generator)


def test_weights_verify_fails_weights_that_render_nan_with_the_reason(tmp_path):
    weights = changed_weights(tmp_path / "dcgan-faces", one_nan)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ACTMAX_")}
    failed = subprocess.run([str(Path(sys.executable).with_name("actmax")), "weights", "verify", "dcgan-faces"],
                            capture_output=True, text=True, timeout=120,
                            env={**environment, "ACTMAX_WEIGHTS_DIR": str(tmp_path)})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert re.fullmatch(r"dcgan-faces\s+FAILED\s+dcgan-faces 1\.0 \(weights sha256 "
                        f"{sha256_file(weights / 'weights.tar')[:12]}" r"\) renders NaN or infinite pixels for 3 of 3 "
                        r"prior codes \(seed 0\), so no evolution can run on it: its weights are broken .*",
                        failed.stdout.strip())
