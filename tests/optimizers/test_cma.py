"""Cholesky CMA-ES (spec §1.1): constants, the factor algebra, and the update against a dense transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest

import optimizers
from optimizers.cma import CMAStrategyParameters, ScaledIdentityPlusLowRank, log_rank_weights


def test_recombination_weights_at_population_40():
    weights = log_rank_weights(40 / 2)
    assert len(weights) == 20 and weights.sum() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(0.167, abs=5e-4)
    assert weights[1] == pytest.approx(0.129, abs=5e-4)
    assert weights[19] == pytest.approx(0.0014, abs=5e-5)
    assert CMAStrategyParameters(4096, 40).mu_eff == pytest.approx(11.31, abs=5e-3)


def test_strategy_constants_match_the_spec_at_4096():
    p = CMAStrategyParameters(4096, 40)
    assert p.mu == 20
    assert p.c_c == pytest.approx(9.76e-4, rel=1e-3)
    assert p.c_sigma == pytest.approx(0.0499, rel=1e-3)
    assert p.c_1 == pytest.approx(1.19e-7, rel=1e-2)
    assert p.d_sigma == pytest.approx(1.0499, rel=1e-4)
    assert p.chi_n == pytest.approx(64.0, abs=0.01)


def test_strategy_constants_at_100():
    p = CMAStrategyParameters(100, 40)
    assert p.c_sigma == pytest.approx(0.25, abs=0.005)
    assert p.c_c == pytest.approx(0.038, abs=0.0005)


def test_scaled_identity_plus_low_rank_is_exact_and_turns_dense():
    rng = np.random.default_rng(0)
    dim = 8
    matrix = ScaledIdentityPlusLowRank(dim)
    dense = np.eye(dim)
    for update in range(6):  # passes dim // 2 = 4 factors: the last updates run dense
        factor, left, right = 0.9 + 0.01 * update, rng.standard_normal(dim), rng.standard_normal(dim)
        matrix.scale_and_add_outer(factor, left, right)
        dense = factor * dense + np.outer(left, right)
        rows = rng.standard_normal((3, dim))
        np.testing.assert_allclose(matrix.row_times(rows), rows @ dense, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(matrix.times_column(rows[0]), dense @ rows[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(matrix.to_dense(), dense, rtol=1e-12, atol=1e-12)
    assert matrix.dense is not None


class DenseCholeskyCMA:
    """Straight transcription of spec §1.1 with dense A and A⁻¹ (row-vector convention)."""

    def __init__(self, dim, population, sigma, mean, update_threshold):
        self.p = CMAStrategyParameters(dim, population)
        self.mean, self.sigma, self.threshold = mean.copy(), sigma, update_threshold
        self.A, self.Ainv = np.eye(dim), np.eye(dim)
        self.ps, self.pc = np.zeros(dim), np.zeros(dim)
        self.counteval = self.eigeneval = 0

    def sample(self, normals):
        self.counteval += len(normals)
        return self.mean + self.sigma * normals @ self.A

    def step(self, points, normals, scores):
        p = self.p
        order = np.argsort(-scores)[: p.mu]
        self.mean = p.weights @ points[order]
        zw = p.weights @ normals[order]
        self.ps = (1 - p.c_sigma) * self.ps + math.sqrt(p.c_sigma * (2 - p.c_sigma) * p.mu_eff) * zw
        self.pc = (1 - p.c_c) * self.pc + math.sqrt(p.c_c * (2 - p.c_c) * p.mu_eff) * zw @ self.A
        self.sigma *= math.exp((p.c_sigma / p.d_sigma) * (np.linalg.norm(self.ps) / p.chi_n - 1))
        if self.counteval - self.eigeneval > self.threshold:
            self.eigeneval = self.counteval
            c1 = p.c_1
            v = self.pc @ self.Ainv
            nv = v @ v
            a = math.sqrt(1 - c1)
            root = math.sqrt(1 + nv * c1 / (1 - c1))
            self.A = a * self.A + a / nv * (root - 1) * np.outer(v, self.pc)
            self.Ainv = self.Ainv / a - 1 / a / nv * (1 - 1 / root) * np.outer(self.Ainv @ v, v)


def test_trajectory_matches_a_dense_transcription_of_the_spec():
    dim, population = 6, 8
    target = np.linspace(-2, 2, dim)
    # c_1 is ~0.03 here; frequent factor updates make the covariance really move.
    opt = optimizers.create("cma", dim, seed=2, population=population, sigma0=0.7, Aupdate_freq=1)
    reference = DenseCholeskyCMA(dim, population, 0.7, np.zeros(dim), update_threshold=population)
    for _ in range(40):
        codes = opt.ask()
        normals = opt._normals
        np.testing.assert_allclose(codes, reference.sample(normals), rtol=1e-9, atol=1e-9)
        scores = -np.sum((codes - target) ** 2 * np.arange(1, dim + 1), axis=1)
        opt.tell(codes, scores)
        reference.step(codes, normals, scores)
        assert opt.sigma == pytest.approx(reference.sigma, rel=1e-9)
    assert opt.n_factor_updates == 20  # "exceed λ" is met every second generation
    np.testing.assert_allclose(opt.factor.to_dense(), reference.A, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(opt.factor.to_dense() @ opt.factor_inverse.to_dense(), np.eye(dim), atol=1e-9)
    assert np.linalg.cond(opt.covariance()) > 1.5  # the covariance did adapt


def test_factor_updates_when_samples_since_the_last_exceed_ten_populations():
    opt = optimizers.create("cma", 8, seed=0, population=10)
    updates = []
    for _ in range(23):
        codes = opt.ask()
        opt.tell(codes, -np.sum(codes**2, axis=1))
        updates.append(opt.n_factor_updates)
    # 10·λ = 100 samples: exceeded at 110 (tell 11) and again at 220 (tell 22).
    assert updates[9] == 0 and updates[10] == 1 and updates[20] == 1 and updates[21] == 2


def test_matlab_update_threshold():
    opt = optimizers.create("cma", 4096, population=40, Aupdate_freq=None)
    assert opt.update_threshold == pytest.approx(40 / (1.19127e-7 * 4096 * 10), rel=1e-4)  # ≈ 8,200


def test_first_generation_init_is_the_single_init_code():
    init = np.arange(5.0)
    opt = optimizers.create("cma", 5, seed=0, init_code=init, first_generation="init", population=6)
    codes = opt.ask()
    assert np.array_equal(codes, init[None])
    opt.tell(codes, [1.0])
    assert np.array_equal(opt.mean, init) and opt.sigma == 3.0
    assert opt.ask().shape == (6, 5)


def test_default_first_generation_is_a_full_batch_around_init_code():
    init = np.full(5, 4.0)
    opt = optimizers.create("cma", 5, seed=0, init_code=init, sigma0=1e-3)
    codes = opt.ask()
    assert codes.shape == (40, 5) and np.allclose(codes, init, atol=0.01)


def test_one_generation_by_hand_with_unscored_samples():
    opt = optimizers.create("cma", 4, seed=1, population=6, sigma0=2.0)
    codes = opt.ask()
    normals, p = opt._normals.copy(), opt.params
    scores = np.array([5.0, np.nan, 1.0, 3.0, np.nan, 4.0])
    opt.tell(codes, scores)
    ranked = [0, 5, 3]  # best three scored; NaN rows never enter
    assert np.allclose(opt.mean, p.weights @ codes[ranked])
    zw = p.weights @ normals[ranked]
    assert np.allclose(opt.path_sigma, math.sqrt(p.c_sigma * (2 - p.c_sigma) * p.mu_eff) * zw)
    assert np.allclose(opt.path_c, math.sqrt(p.c_c * (2 - p.c_c) * p.mu_eff) * zw)
    expected_sigma = 2.0 * math.exp(p.c_sigma / p.d_sigma * (np.linalg.norm(opt.path_sigma) / p.chi_n - 1))
    assert opt.sigma == pytest.approx(expected_sigma)


def test_fewer_scored_than_parents_renormalises_the_leading_weights():
    opt = optimizers.create("cma", 4, seed=1, population=6)
    codes = opt.ask()
    scores = np.array([np.nan, 2.0, np.nan, np.nan, np.nan, np.nan])
    opt.tell(codes, scores)
    assert np.allclose(opt.mean, codes[1])


def test_nothing_scored_leaves_the_distribution_unchanged():
    opt = optimizers.create("cma", 4, seed=1, population=6)
    codes = opt.ask()
    opt.tell(codes, np.full(6, np.nan))
    assert np.array_equal(opt.mean, np.zeros(4)) and opt.sigma == 3.0 and opt.generation == 1
