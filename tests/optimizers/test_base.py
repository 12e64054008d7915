"""Registry, validation messages and the pickle-free state serialisation."""

from __future__ import annotations

import io

import numpy as np
import pytest

import optimizers
from optimizers import OptimizerError, dumps_state, loads_state


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(OptimizerError, match="available: cma, cma-sigma0.5, .*, fixed-design, ga, hess-cma, pycma, .*sphere-cma"):
        optimizers.create("adam", 10)


def test_optimizer_error_is_a_value_error():
    assert issubclass(OptimizerError, ValueError)
    assert issubclass(optimizers.MissingDependencyError, ImportError)


@pytest.mark.parametrize(
    ("name", "hyperparameters", "message"),
    [
        ("cma", {"population": 1}, r"population must be an integer >= 2, got 1"),
        ("cma", {"sigma0": 0.0}, r"sigma0 must be a number in \(0.0, inf\), got 0.0"),
        ("cma", {"sigma0": float("nan")}, r"sigma0 must be a number"),
        ("cma", {"population": 4.0}, r"population must be an integer"),
        ("cma", {"first_generation": "zero"}, r"first_generation must be one of 'sample', 'init'"),
        ("cma", {"init_code": np.zeros(3)}, r"init_code must have shape \(10,\)"),
        ("cma", {"Aupdate_freq": 0}, r"Aupdate_freq must be an integer >= 1"),
        ("sphere-cma", {"n_parents": 41}, r"n_parents must be an integer in \[1, 40\]"),
        ("sphere-cma", {"schedule": "lin"}, r"schedule must be one of 'exp', 'inv'"),
        ("sphere-cma", {"radius": -1}, r"radius must be a number in \(0.0, inf\)"),
        ("ga", {"n_conserve": 40}, r"n_conserve must be an integer in \[0, 39\]"),
        ("ga", {"mutation_rate": 1.5}, r"mutation_rate must be a number in \[0.0, 1.0\]"),
        ("ga", {"kT_multiplier": 2, "selectivity": 2}, r"not both"),
        ("ga", {"score_clip_percentile": 0}, r"score_clip_percentile must be a number in \(0.0, 100.0\]"),
        ("pycma", {"diagonal": "yes"}, r"diagonal must be True or False"),
        ("hess-cma", {}, r"hess-cma needs an eigenbasis: eigenbasis"),
    ],
)
def test_hyperparameter_messages_name_the_parameter_and_range(name, hyperparameters, message):
    with pytest.raises(OptimizerError, match=message):
        optimizers.create(name, 10, **hyperparameters)


def test_state_round_trip_is_exact():
    rng = np.random.default_rng(5)
    vector = rng.standard_normal(5)
    state = {
        "rng": rng.bit_generator.state,
        "big": 2**127 + 12345,
        "floats": [0.1, -np.inf, 1e-300, np.float64(1 / 3)],
        "nan": float("nan"),
        "nested": {"x": np.arange(6, dtype=np.int32).reshape(2, 3), "none": None, "flag": np.True_, "text": "é"},
        "vector": vector,
        "empty": np.zeros((0, 4)),
    }
    restored = loads_state(dumps_state(state))
    assert restored["rng"] == state["rng"] and isinstance(restored["rng"]["state"]["state"], int)
    assert restored["big"] == 2**127 + 12345
    assert restored["floats"] == [0.1, -np.inf, 1e-300, 1 / 3]
    assert np.isnan(restored["nan"])
    assert restored["nested"]["x"].dtype == np.int32 and np.array_equal(restored["nested"]["x"], state["nested"]["x"])
    assert restored["nested"]["none"] is None and restored["nested"]["flag"] is True
    assert restored["nested"]["text"] == "é"
    assert np.array_equal(restored["vector"], state["vector"])
    assert restored["empty"].shape == (0, 4)
    continued = np.random.default_rng()
    continued.bit_generator.state = restored["rng"]
    assert np.array_equal(continued.standard_normal(3), rng.standard_normal(3))


def test_state_bytes_load_without_pickle():
    data = dumps_state({"codes": np.ones((2, 3))})
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert "__state__" in npz.files


@pytest.mark.parametrize(
    "state",
    [{"objects": np.array([object()], dtype=object)}, {1: "int key"}, {"x": {1, 2}}, {"__ndarray__": "a0"}],
)
def test_unserialisable_states_are_refused(state):
    with pytest.raises(OptimizerError):
        dumps_state(state)


def test_garbage_bytes_are_refused():
    with pytest.raises(OptimizerError, match="not an optimizer state"):
        loads_state(b"not a state")


def test_load_state_restores_hyperparameters():
    opt = optimizers.create("cma", 10, seed=1, population=12, sigma0=0.5)
    fresh = optimizers.create("cma", 10)
    fresh.load_state_dict(loads_state(dumps_state(opt.state_dict())))
    assert fresh.hyperparameters["population"] == 12 and fresh.sigma == 0.5
    assert np.array_equal(fresh.ask(), opt.ask())
