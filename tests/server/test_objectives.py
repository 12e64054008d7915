"""Objectives: composable objects over a generation's presentations, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server import RigInputError
from server.objectives import Baseline, Mean, Objective, Rate, ZScore, parse, rate, rate_matrix
from server.session_config import ObjectiveConfig


def test_channels_with_mean_or_sum_score_as_before_and_null_is_missing():
    mean = Objective.from_config({"channels": [0, 2]})
    assert isinstance(mean, Mean) and mean.score([1.0, 100.0, 3.0]) == 2.0
    assert Objective.from_config({"channels": [0, 2], "combine": "sum"}).score([1.0, 100.0, 3.0]) == 4.0
    assert math.isnan(mean.score([1.0, 100.0, None]))


def test_a_stimulus_scores_the_mean_of_its_presentations_that_scored():
    objective = Objective.from_config({"channels": [1]})
    scores = objective.score_generation({"a": [([0.0, 2.0], None), ([0.0, None], None), ([0.0, 4.0], None)],
                                         "b": [([0.0, None], None)]}, frozenset())
    assert scores["a"] == 3.0 and math.isnan(scores["b"])


def test_generation_scores_match_a_per_stimulus_mean_computed_on_its_own():
    rng = np.random.default_rng(7)
    shown = {f"s{i}": [([None if rng.random() < 0.2 else float(rng.normal(10, 3))], None)
                       for _ in range(rng.integers(1, 6))] for i in range(60)}
    shown["never"] = []
    scores = Objective.from_config({"channels": [0]}).score_generation(shown, frozenset())
    for stimulus_id, presentations in shown.items():
        finite = [rates[0] for rates, _ in presentations if rates[0] is not None]
        if finite:
            assert scores[stimulus_id] == pytest.approx(sum(finite) / len(finite), rel=1e-12)
        else:
            assert math.isnan(scores.get(stimulus_id, math.nan))


def test_objects_combine_with_plus_minus_and_weights():
    objective = 2 * rate(0) - 0.5 * Rate(1) + 1
    assert objective.channels == {0, 1}
    assert objective.score([3.0, 4.0]) == pytest.approx(2 * 3 - 0.5 * 4 + 1)
    assert parse("2 * rate(0) - 0.5 * rate(1) + 1").score([3.0, 4.0]) == pytest.approx(5.0)
    assert parse("mean(0, 2, rate(1))").score([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert parse("sum(0, 1) * 3").score([1.0, 2.0]) == pytest.approx(9.0)


def test_baseline_uses_the_presentations_own_baseline_else_the_references_mean():
    objective = parse("baseline(rate(0))")
    shown = {
        "s1": [([10.0], [4.0])],  # the rig's baseline: 10 - 4
        "s2": [([10.0], None)],  # no baseline sent: 10 - mean of the references (2 and 4) = 7
        "r1": [([2.0], None)],
        "r2": [([4.0], None)],
    }
    scores = objective.score_generation(shown, frozenset({"r1", "r2"}))
    assert scores == {"s1": 6.0, "s2": 7.0, "r1": -1.0, "r2": 1.0}


def test_zscore_standardises_each_channel_across_the_generation():
    rates = {"a": [1.0, 10.0], "b": [2.0, 30.0], "c": [6.0, 20.0]}
    shown = {k: [(v, None)] for k, v in rates.items()}
    scores = ZScore(rate(0) + rate(1)).score_generation(shown, frozenset())
    columns = np.array(list(rates.values()))
    z = (columns - columns.mean(axis=0)) / columns.std(axis=0)  # an independent computation
    for i, name in enumerate(rates):
        assert scores[name] == pytest.approx(z[i].sum())
    assert isinstance(parse("zscore(baseline(rate(3)))"), ZScore)
    assert isinstance(parse("baseline(zscore(rate(3)))").inner, ZScore)
    assert isinstance(Baseline(rate(1)), Objective)


@pytest.mark.parametrize("expression, named", [
    ("__import__('os')", "not allowed"),
    ("rate(1) * rate(2)", "multiply by numbers only"),
    ("rate(-1)", "channel number >= 0"),
    ("rate(1.5)", "channel number >= 0"),
    ("zscore(3)", "takes one objective"),
    ("3 + 4", "is a number"),
    ("rate(1) +", "not valid"),
    ("mean()", "at least one term"),
    ("1e999 * rate(2)", "finite"),
    ("1e308 * 10 * rate(1)", "finite"),  # a product of numbers too
    ("rate(4096)", "at most 4096 channels"),  # what HELLO allows
    ("sum(5000, 1)", "at most 4096 channels"),
])
def test_bad_expressions_are_named(expression, named):
    with pytest.raises(ValueError, match=named):
        parse(expression)
    with pytest.raises(ValueError, match=named):
        ObjectiveConfig.model_validate({"expression": expression})


def test_config_takes_channels_or_an_expression_and_counts_channels():
    assert ObjectiveConfig.model_validate({"expression": "rate(2) - baseline(rate(17))"}).n_channels == 18
    assert ObjectiveConfig.model_validate({"channels": [5, 1]}).n_channels == 6
    for bad in ({}, {"channels": [1], "expression": "rate(1)"}):
        with pytest.raises(ValueError, match="either"):
            ObjectiveConfig.model_validate(bad)
    assert ObjectiveConfig.model_validate({"channels": [4095]}).n_channels == 4096
    with pytest.raises(ValueError, match="less than 4096"):
        ObjectiveConfig.model_validate({"channels": [4096]})


def test_rates_missing_a_scored_channel_are_a_rig_input_error():
    with pytest.raises(RigInputError, match="scores channel 2") as caught:
        Objective.from_config({"channels": [2]}).check_rates([1.0, 2.0])
    assert caught.value.code == "bad_field"


def test_stored_settings_build_one_objective_each_and_bad_ones_are_refused_every_time():
    built = Objective.from_config({"expression": "rate(2) - 0.5 * rate(0)", "combine": "mean"})
    assert Objective.from_config({"combine": "mean", "expression": "rate(2) - 0.5 * rate(0)"}) is built
    assert built.n_channels == 3 and built.score([2.0, 0.0, 5.0]) == pytest.approx(4.0)
    assert Objective.from_config({"channels": [2]}) is not built
    for _ in range(2):
        with pytest.raises(ValueError, match="either"):
            Objective.from_config({"channels": [1], "expression": "rate(1)"})


@pytest.mark.parametrize("rows, width, expected", [
    ([[1, None], [2.5, 3.0]], None, [[1.0, math.nan], [2.5, 3.0]]),  # as wide: one conversion, None is NaN
    ([[1.0], [2.0, 3.0]], None, [[1.0, math.nan], [2.0, 3.0]]),  # a rig that restarted with fewer channels
    ([[1.0, 2.0, 3.0]], 2, [[1.0, 2.0]]),  # channels beyond the width are left out
    ([[], []], 2, [[math.nan, math.nan], [math.nan, math.nan]]),  # no baseline rates sent
    ([], None, np.empty((0, 0))),
])
def test_rate_matrix_pads_missing_channels_and_none_with_nan(rows, width, expected):
    matrix = rate_matrix(rows, width)
    assert matrix.dtype == float and matrix.shape == np.shape(expected)
    np.testing.assert_array_equal(matrix, expected)
