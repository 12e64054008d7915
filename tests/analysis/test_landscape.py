"""analysis.landscape.summarize: the trend verdicts claim a direction only when p < ALPHA, a p exact for few units."""

import math
from itertools import permutations

import numpy as np
import pytest
from scipy.stats import spearmanr

from analysis.landscape import ALPHA, EXACT_UNITS, MIN_UNITS, spearman, summarize

DEPTHS = [0, 1, 2, 3, 4]


def verdict(values: list[float]) -> dict:
    rows = [{"layer": f"l{d}", "depth": d, "auc_line": v} for d, v in zip(DEPTHS, values)]
    return summarize(rows, [f"l{d}" for d in DEPTHS])["spearman"]["auc_line"]  # expected to decrease


@pytest.mark.parametrize("values, rho, expected", [
    ([5, 4, 3, 2, 1], -1.0, f"holds (p < {ALPHA})"),
    ([1, 2, 3, 4, 5], 1.0, f"opposite direction (p < {ALPHA})"),
    ([2, 1, 4, 5, 3], 0.6, f"no significant trend (p ≥ {ALPHA})"),  # the opposite sign, p = 0.35
    ([4, 5, 2, 1, 3], -0.6, f"no significant trend (p ≥ {ALPHA})"),  # the expected sign, p = 0.35
])
def test_a_direction_is_claimed_only_when_significant(values, rho, expected):
    t = verdict(values)
    assert t["rho"] == pytest.approx(rho) and t["verdict"] == expected


@pytest.mark.parametrize("ratios, expected", [
    ([], f"too few units (n 0 < {MIN_UNITS})"),
    ([1.4], f"too few units (n 1 < {MIN_UNITS})"),  # one unprobed unit said "holds (100% of units > 1)"
    ([1.4, 1.2], f"too few units (n 2 < {MIN_UNITS})"),
    ([1.4, 1.2, 0.9], "holds (67% of units > 1)"),
    ([1.4, 0.8, 0.9], "does not hold (33% of units > 1)"),
])
def test_the_global_local_share_needs_enough_units(ratios, expected):
    rows = [{"layer": "l0", "depth": 0, "global_local_ratio": r} for r in ratios]
    assert summarize(rows, ["l0"])["spearman"]["global_local_ratio"]["verdict"] == expected


@pytest.mark.parametrize("depths, values, expected", [
    ([0, 1], [2.0, 1.0], f"too few units (n 2 < {MIN_UNITS})"),  # said "no data" with two values there
    ([], [], f"too few units (n 0 < {MIN_UNITS})"),
    ([0, 0, 0], [3.0, 2.0, 1.0], "no trend to test (every unit in one layer)"),
    ([0, 1, 2], [1.0, 1.0, 1.0], "no trend to test (every unit has the same value)"),
])
def test_a_trend_that_cannot_be_tested_says_why(depths, values, expected):
    rows = [{"layer": f"l{d}", "depth": d, "auc_line": v} for d, v in zip(depths, values)]
    t = summarize(rows, ["l0", "l1", "l2"])["spearman"]["auc_line"]
    assert t["verdict"] == expected and t["n"] == len(values)


def test_a_statistic_that_was_not_run_says_so():
    rows = [{"layer": f"l{d}", "depth": d, "auc_line": float(d)} for d in DEPTHS]
    trend = summarize(rows, [f"l{d}" for d in DEPTHS], not_run={"max_min_ratio": "--no-rbf",
                                                                   "global_local_ratio": "--no-rbf"})["spearman"]
    assert trend["max_min_ratio"]["verdict"] == trend["global_local_ratio"]["verdict"] == "not run (--no-rbf)"
    assert trend["auc_line"]["verdict"] == f"opposite direction (p < {ALPHA})"


@pytest.mark.parametrize("n", [3, 4])
def test_a_perfect_order_of_few_units_is_not_significant(n):
    """scipy's t approximation gives p = 0 at |ρ| = 1, so 3 layers × 1 unit said "holds (p < 0.05)" for a
    perfect order that chance gives a third of the time. Exactly, only 2 of the n! orderings are as extreme."""
    rows = [{"layer": f"l{d}", "depth": d, "auc_line": float(n - d)} for d in range(n)]
    t = summarize(rows, [f"l{d}" for d in range(n)])["spearman"]["auc_line"]
    assert t["rho"] == -1.0 and t["p"] == pytest.approx(2 / math.factorial(n))
    assert t["verdict"] == f"no significant trend (p ≥ {ALPHA})"


@pytest.mark.parametrize("x, y", [
    ([0, 1, 2, 3, 4], [2, 1, 4, 5, 3]),
    ([0, 0, 1, 1, 2, 2], [3.0, 1.0, 2.0, 2.0, 0.5, 0.0]),  # units of one layer, and tied values
    ([0, 0, 0, 1, 1, 2], [5.0, 4.0, 6.0, 1.0, 3.0, 2.0]),
])
def test_the_exact_p_counts_every_pairing_as_extreme_as_the_observed(x, y):
    """The p against scipy's ρ of each of the n! reorderings of y, one by one."""
    rho, p = spearman(np.array(x, float), np.array(y, float))
    observed = spearmanr(x, y).statistic
    extreme = [abs(spearmanr(x, list(order)).statistic) >= abs(observed) - 1e-9 for order in permutations(y)]
    assert rho == pytest.approx(observed) and p == pytest.approx(np.mean(extreme))


def test_more_units_than_enumerated_take_scipys_p():
    x = np.repeat(np.arange(5), 2).astype(float)  # 10 units, 2 a layer
    y = np.array([9.0, 7.5, 8.0, 6.0, 6.5, 3.0, 4.0, 2.0, 2.5, 1.0])
    assert x.size > EXACT_UNITS
    assert spearman(x, y) == pytest.approx(tuple(spearmanr(x, y)))
