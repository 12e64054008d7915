"""``fixed-design``: the codes given, every generation, with the codes fingerprinted in the state."""

from __future__ import annotations

import numpy as np
import pytest

import optimizers
from optimizers import OptimizerError


def test_asks_exactly_the_given_codes_and_records_the_best():
    codes = np.random.default_rng(0).standard_normal((5, 3))
    design = optimizers.create("fixed-design", 3, codes=codes)
    asked = design.ask()
    assert np.array_equal(asked, codes)
    design.tell(asked, np.array([0.0, 4.0, np.nan, 1.0, 2.0]))
    assert design.generation == 1 and np.array_equal(design.ask(), codes)
    assert design.best_score == 4.0 and np.array_equal(design.best_code, codes[1])
    assert (design.n_presented, design.n_scored) == (5, 4)


def test_state_holds_a_fingerprint_and_needs_the_same_codes():
    codes = np.arange(6.0).reshape(2, 3)
    state = optimizers.create("fixed-design", 3, codes=codes).state_dict()
    assert set(state["hyperparameters"]["codes"]) == {"sha256"}
    with pytest.raises(OptimizerError, match="different 'codes'"):
        optimizers.create("fixed-design", 3, codes=codes + 1).load_state_dict(state)


@pytest.mark.parametrize(
    ("codes", "message"),
    [(None, "needs codes"), (np.zeros((2, 4)), r"shape \(n, 3\)"), (np.zeros((0, 3)), "n >= 1"),
     (np.full((2, 3), np.nan), "finite"), ([["a", "b", "c"]], "numbers")],
)
def test_bad_codes_are_refused(codes, message):
    with pytest.raises(OptimizerError, match=message):
        optimizers.create("fixed-design", 3, codes=codes)


def test_generation_is_read_only_and_bad_proposals_are_optimizer_errors():
    design = optimizers.create("fixed-design", 3, codes=np.zeros((2, 3)))
    with pytest.raises(AttributeError):
        design.generation = 5
    design.hyperparameters["codes"] = np.zeros((2, 4))  # a subclass bug: codes of the wrong width
    with pytest.raises(OptimizerError, match="bug in the optimizer"):
        design.ask()
