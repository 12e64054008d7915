"""Objectives: rates -> one score per presentation, and a stimulus's mean over its presentations."""

from __future__ import annotations

import math

import pytest

from server import RigInputError
from server.objectives import Objective


def test_score_combines_the_scored_channels_and_treats_null_as_missing():
    mean = Objective.from_config({"channels": [0, 2]})
    assert mean.combine == "mean" and mean.score([1.0, 100.0, 3.0]) == 2.0
    assert Objective.from_config({"channels": [0, 2], "combine": "sum"}).score([1.0, 100.0, 3.0]) == 4.0
    assert math.isnan(mean.score([1.0, 100.0, None]))


def test_mean_score_averages_presentations_that_scored():
    objective = Objective.from_config({"channels": [1]})
    assert objective.mean_score([[0.0, 2.0], [0.0, None], [0.0, 4.0]]) == 3.0
    assert math.isnan(objective.mean_score([[0.0, None]])) and math.isnan(objective.mean_score(None))


def test_rates_missing_a_scored_channel_are_a_rig_input_error():
    with pytest.raises(RigInputError, match="scores channel 2") as caught:
        Objective.from_config({"channels": [2]}).check_rates([1.0, 2.0])
    assert caught.value.code == "bad_field"
