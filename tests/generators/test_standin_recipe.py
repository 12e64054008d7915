"""docs/generators.md's stand-in BigGAN weights: the recipe runs and leaves a file the server's lookup loads."""

import re
from pathlib import Path

import numpy as np
import torch

import generators

DOC = Path(__file__).resolve().parents[2] / "docs" / "generators.md"


def test_standin_recipe_saves_weights_that_load_from_the_weights_dir(tmp_path, monkeypatch):
    section = DOC.read_text().split("### Stand-in weights for a dry run", 1)[1]
    recipe = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(recipe, str(DOC), "exec"), {})
    source = generators.weights_source("biggan-deep-256", tmp_path / "weights")  # as ACTMAX_WEIGHTS_DIR=weights
    assert source == tmp_path / "weights" / "biggan-deep-256"
    generator = generators.load("biggan-deep-256", device="cpu", weights=source)
    images = generator.generate(generator.sample(2, np.random.default_rng(0)))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
