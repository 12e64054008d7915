"""Genetic algorithm (spec §1.3): elites, unscored carry-over, temperature, crossover, mutation."""

from __future__ import annotations

import numpy as np
import pytest

import optimizers


def test_elites_pass_unchanged_in_rank_order():
    opt = optimizers.create("ga", 30, seed=0)
    codes = opt.ask()
    scores = np.random.default_rng(1).standard_normal(40)
    opt.tell(codes, scores)
    following = opt.ask()
    assert following.shape == (40, 30)
    assert np.array_equal(following[:10], codes[np.argsort(-scores)[:10]])
    for child in following[10:]:  # children are new codes
        assert not any(np.array_equal(child, code) for code in codes)


def test_unscored_codes_are_carried_forward_unchanged():
    opt = optimizers.create("ga", 30, seed=0)
    codes = opt.ask()
    scores = np.arange(40.0)
    scores[[3, 17, 39]] = np.nan  # 39 would have been the best
    opt.tell(codes, scores)
    following = opt.ask()
    assert np.array_equal(following[-3:], codes[[3, 17, 39]])
    assert np.array_equal(following[:10], codes[np.arange(38, 28, -1)])
    assert len(following) == 40


def test_temperature_is_kT_multiplier_times_std_with_a_floor():
    opt = optimizers.create("ga", 5, seed=0)
    codes = opt.ask()
    scores = np.random.default_rng(2).standard_normal(40)
    opt.tell(codes, scores)
    assert opt.kT == pytest.approx(2 * np.std(scores))
    flat = optimizers.create("ga", 5, seed=0)
    codes = flat.ask()
    flat.tell(codes, np.ones(40))
    assert flat.kT == 1e-8
    xdream = optimizers.create("ga", 5, seed=0, selectivity=2)
    codes = xdream.ask()
    xdream.tell(codes, scores)
    assert xdream.kT == pytest.approx(np.std(scores) / 2)


def test_score_clipping_makes_the_top_percentile_equally_fit():
    # An outlier is fitter than the 39 others together (kT = 2·std ≈ 312: they get e^-3.2 each);
    # clipped at the 95th percentile it is about as fit as the rest, all ≈ 1 at this kT.
    scores = np.concatenate([[1000.0], np.linspace(0, 1, 39)])

    def parent_counts(clip):
        opt = optimizers.create("ga", 400, seed=5, n_conserve=0, mutation_rate=0.0, score_clip_percentile=clip)
        codes = opt.ask()
        opt.tell(codes, scores)
        children = opt.ask()
        return np.mean(children == codes[0])  # share of genes inherited from the outlier

    assert parent_counts(None) > 0.3
    assert parent_counts(95) < 0.1


def test_crossover_takes_each_gene_from_a_parent_and_mutation_rate_and_size():
    dim = 4000
    opt = optimizers.create("ga", dim, seed=0, mutation_rate=0.0)
    codes = opt.ask()
    opt.tell(codes, np.random.default_rng(3).standard_normal(40))
    children = opt.ask()[10:]
    for child in children:  # without mutation every gene is some parent's gene at that position
        assert np.all(np.any(child[None, :] == codes, axis=0))

    mutated = optimizers.create("ga", dim, seed=0, parental_skew=1.0)
    codes = mutated.ask()
    scores = np.zeros(40)
    scores[0] = 1.0  # with parental_skew 1 each child is a copy of parent 1 plus mutations
    mutated.tell(codes, scores)
    children = mutated.ask()[10:]
    nearest = np.array([np.argmin(np.sum((codes - child) ** 2, axis=1)) for child in children])
    changes = children - codes[nearest]
    changed = changes != 0
    assert changed.mean() == pytest.approx(0.25, abs=0.01)
    assert changes[changed].std() == pytest.approx(0.75, rel=0.03)


def test_initial_population_is_standard_normal():
    codes = optimizers.create("ga", 4096, seed=0).ask()
    assert codes.shape == (40, 4096)
    assert np.linalg.norm(codes, axis=1).mean() == pytest.approx(64, rel=0.02)
