"""The contract every registered optimizer meets (parametrised over ``optimizers.available()``)."""

from __future__ import annotations

import numpy as np
import pytest

import optimizers
from optimizers import OptimizerError

from .cases import DIM, make, small_case, sphere_scores, target_on_sphere


def scores_with_gaps(codes: np.ndarray, target: np.ndarray, generation: int) -> np.ndarray:
    """Sphere scores with a few presentations left unscored (NaN)."""
    scores = sphere_scores(codes, target)
    scores[(np.arange(len(scores)) + generation) % 4 == 0] = np.nan
    return scores


def test_registry_lists_the_five_optimizers():
    assert set(optimizers.available()) >= {"cma", "sphere-cma", "ga", "pycma", "hess-cma"}


def test_ask_is_idempotent_until_tell(name):
    opt = make(name)
    first = opt.ask()
    assert first.dtype == np.float64 and first.ndim == 2 and first.shape[1] == DIM
    assert np.array_equal(first, opt.ask())
    first += 1.0  # the returned array is a copy
    assert not np.array_equal(first, opt.ask())
    opt.tell(opt.ask(), sphere_scores(opt.ask(), target_on_sphere()))
    assert opt.generation == 1


def test_converges_on_a_sphere(name):
    if name == "fixed-design":
        pytest.skip("a fixed design presents its codes and does not search")
    target = target_on_sphere()
    opt = make(name)
    initial = np.max(sphere_scores(opt.ask(), target))
    for _ in range(60):
        codes = opt.ask()
        opt.tell(codes, sphere_scores(codes, target))
    # Criterion: the squared distance to the maximiser shrinks at least 10-fold in 60 generations.
    assert opt.best_score > initial / 10
    assert opt.best_score == pytest.approx(sphere_scores(opt.best_code[None], target)[0])


@pytest.mark.parametrize("ask_before_saving", [False, True])
def test_resumes_bit_for_bit_through_bytes(name, ask_before_saving):
    target = target_on_sphere()
    opt = make(name, seed=3)
    for generation in range(14):
        codes = opt.ask()
        opt.tell(codes, scores_with_gaps(codes, target, generation))
    if ask_before_saving:
        opt.ask()
    restored = optimizers.create(name, DIM, **small_case(name))  # different seed: the state must win
    restored.load_state_dict(optimizers.loads_state(optimizers.dumps_state(opt.state_dict())))
    for generation in range(14, 26):
        codes, codes_restored = opt.ask(), restored.ask()
        assert np.array_equal(codes, codes_restored), f"diverged at generation {generation}"
        scores = scores_with_gaps(codes, target, generation)
        opt.tell(codes, scores)
        restored.tell(codes_restored, scores)
    assert opt.generation == restored.generation == 26
    assert opt.best_score == restored.best_score and np.array_equal(opt.best_code, restored.best_code)
    assert optimizers.dumps_state(opt.state_dict()) == optimizers.dumps_state(restored.state_dict())


def test_later_asks_and_tells_leave_a_state_dict_alone(name):
    """The engine serialises a snapshot generation's state after the step's ``ask`` (``steps.store_snapshot``):
    each generation's state, over enough generations for CMA's factor to turn dense, is unchanged by the next ask and
    tell."""
    target = target_on_sphere()
    opt = make(name, seed=4)
    state = saved = None
    for generation in range(80):
        codes = opt.ask()
        assert state is None or optimizers.dumps_state(state) == saved, f"changed by the ask after {generation - 1}"
        opt.tell(codes, scores_with_gaps(codes, target, generation))
        assert state is None or optimizers.dumps_state(state) == saved, f"changed by the tell after {generation - 1}"
        state = opt.state_dict()
        saved = optimizers.dumps_state(state)


@pytest.mark.parametrize("stage", ["fresh", "asked", "told"])
def test_state_round_trips_in_every_stage(name, stage):
    """A thread records its optimizer's state before the first ask, so every stage must save and load."""
    target = target_on_sphere()
    opt = make(name, seed=5)
    if stage != "fresh":
        opt.ask()
    if stage == "told":
        opt.tell(opt.ask(), sphere_scores(opt.ask(), target))
    saved = optimizers.dumps_state(opt.state_dict())
    restored = make(name, seed=6)  # different seed: the state must win
    restored.load_state_dict(optimizers.loads_state(saved))
    assert optimizers.dumps_state(restored.state_dict()) == saved
    for _ in range(3):
        codes, codes_restored = opt.ask(), restored.ask()
        assert np.array_equal(codes, codes_restored)
        opt.tell(codes, sphere_scores(codes, target))
        restored.tell(codes_restored, sphere_scores(codes_restored, target))
    assert optimizers.dumps_state(opt.state_dict()) == optimizers.dumps_state(restored.state_dict())


def test_same_seed_same_run(name):
    target = target_on_sphere()
    runs = []
    for _ in range(2):
        opt = make(name, seed=11)
        for _ in range(5):
            codes = opt.ask()
            opt.tell(codes, sphere_scores(codes, target))
        runs.append(opt.ask())
    assert np.array_equal(*runs)


def test_bad_calls_are_rejected(name):
    opt = make(name)
    with pytest.raises(OptimizerError, match="ask"):
        opt.tell(np.zeros((3, DIM)), np.zeros(3))
    codes = opt.ask()
    n = len(codes)
    with pytest.raises(OptimizerError, match="shape"):
        opt.tell(codes[:, :-1], np.zeros(n))
    with pytest.raises(OptimizerError, match="shape"):
        opt.tell(codes[:-1], np.zeros(n - 1))
    with pytest.raises(OptimizerError, match="shape"):
        opt.tell(codes, np.zeros(n + 1))
    with pytest.raises(OptimizerError, match="shape"):
        opt.tell(codes, np.zeros((n, 1)))
    with pytest.raises(OptimizerError, match="finite"):
        opt.tell(codes, np.full(n, np.inf))
    with pytest.raises(OptimizerError, match="differ"):
        opt.tell(codes + 1.0, np.zeros(n))
    assert opt.generation == 0 and np.array_equal(codes, opt.ask())  # rejected calls change nothing
    opt.tell(codes.astype(np.float32), np.zeros(n))  # a float32 round trip of the codes is accepted
    assert opt.generation == 1


def test_unscored_presentations(name):
    target = target_on_sphere()
    opt = make(name)
    codes = opt.ask()
    opt.tell(codes, np.full(len(codes), np.nan))  # nothing scored: no best, no crash
    assert opt.best_code is None and opt.best_score == -np.inf and opt.n_scored == 0
    for generation in range(6):
        codes = opt.ask()
        scores = scores_with_gaps(codes, target, generation)
        opt.tell(codes, scores)
        assert np.all(np.isfinite(opt.ask()))
    assert opt.n_scored < opt.n_presented
    assert np.isfinite(opt.best_score)


def test_hyperparameters_are_keyword_only_and_validated(name):
    cls = type(make(name))
    assert "seed" not in cls.hyperparameter_names()
    with pytest.raises(OptimizerError, match="does not take hyperparameter"):
        optimizers.create(name, DIM, learning_speed=3, **small_case(name))
    with pytest.raises(OptimizerError, match="dim"):
        optimizers.create(name, 0, **small_case(name))
    with pytest.raises(OptimizerError, match="seed"):
        optimizers.create(name, DIM, seed=-1, **small_case(name))
    with pytest.raises(TypeError):
        cls(DIM, 0)  # seed is keyword-only


def test_state_rejects_another_optimizer(name):
    other = "ga" if name != "ga" else "cma"
    with pytest.raises(OptimizerError, match="state is for optimizer"):
        make(name).load_state_dict(make(other).state_dict())


def test_configured_optimizers_keep_their_values_unless_overridden():
    from optimizers import presets

    opt = optimizers.create("cma-sigma0.5", DIM, seed=0)
    assert presets.base_of("cma-sigma0.5") == "cma" and presets.base_of("cma") == "cma"
    assert (opt.name, opt.hyperparameters["sigma0"], opt.hyperparameters["first_generation"]) == (
        "cma-sigma0.5", 0.5, "init")
    assert optimizers.create("cma-sigma0.5", DIM, sigma0=0.7).hyperparameters["sigma0"] == 0.7
    assert optimizers.create("sphere-cma-inv", 100).hyperparameters["schedule"] == "inv"
    with pytest.raises(OptimizerError, match="does not take"):
        optimizers.create("pycma-diag", DIM, radius=1.0)
    with pytest.raises(OptimizerError, match="does not take"):
        presets.configure("cma-bad", "cma", "a typo", sigmo=1.0)
    with pytest.raises(OptimizerError, match="registered twice"):
        presets.configure("cma-sigma2", "cma", "again", sigma0=2.0)
    state = opt.state_dict()
    with pytest.raises(OptimizerError, match="not 'cma'"):
        optimizers.create("cma", DIM).load_state_dict(state)


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("cma", {}, {"sigma0": 3.0, "init_code": [1.0] * DIM}),  # a plain optimizer takes the generator's
        ("cma-sigma2", {}, {"init_code": [1.0] * DIM}),  # the preset's sigma0 wins over the generator's
        ("cma-sigma2", {"sigma0": 0.7}, {"sigma0": 0.7, "init_code": [1.0] * DIM}),  # and the thread's over both
        ("sphere-cma-r10", {}, {"init_code": [1.0] * DIM}),  # radius 10, not the generator's 300
        ("sphere-cma", {}, {"radius": 300.0, "init_code": [1.0] * DIM}),
        ("hess-cma", {}, {"init_code": [1.0] * DIM}),  # its sigma0 is in eigen-coordinates: its own 0.4
        ("ga", {"population": 8}, {"population": 8}),  # takes none of them
    ],
)
def test_generator_defaults_fill_only_what_neither_the_preset_nor_the_thread_sets(name, given, expected):
    defaults = {"init_code": [1.0] * DIM, "sigma0": 3.0, "radius": 300.0}
    assert optimizers.with_generator_defaults(name, given, defaults) == expected
