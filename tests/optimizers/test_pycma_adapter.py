"""pycma adapter: maximisation, diagonal variant, isolation from numpy's global RNG, missing package."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import optimizers


def test_maximises_by_negating():
    target = np.full(8, 2.0)
    opt = optimizers.create("pycma", 8, seed=0, population=12, sigma0=1.0)
    for _ in range(60):
        codes = opt.ask()
        opt.tell(codes, -np.sum((codes - target) ** 2, axis=1))
    assert opt.best_score > -1e-3
    assert np.allclose(opt.es.mean, target, atol=0.05)


def test_diagonal_option_reaches_pycma():
    opt = optimizers.create("pycma", 8, seed=0, diagonal=True)
    assert opt.es.opts["CMA_diagonal"] is True
    codes = opt.ask()
    opt.tell(codes, -np.sum(codes**2, axis=1))
    # pycma's diagonal mode keeps the sampler standard and adapts a diagonal decoding instead.
    assert type(opt.es.sm).__name__ == "GaussStandardConstant"
    assert type(optimizers.create("pycma", 8).es.sm).__name__ == "GaussFullSampler"


def test_leaves_numpy_global_rng_alone():
    np.random.seed(123)
    expected = np.random.random_sample(3)
    np.random.seed(123)
    opt = optimizers.create("pycma", 5, seed=0)
    codes = opt.ask()
    opt.tell(codes, np.zeros(len(codes)))
    assert np.array_equal(np.random.random_sample(3), expected)


def test_missing_cma_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cma", None)
    with pytest.raises(optimizers.MissingDependencyError, match="pip install"):
        optimizers.create("pycma", 5)
