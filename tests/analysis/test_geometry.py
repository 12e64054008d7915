"""analysis.geometry: metric Hessians against analytic forms, spectra, homogeneity, controls."""

import numpy as np
import pytest
import torch
from torch import nn

from analysis import AnalysisError, distances
from analysis import geometry as geo

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small batches of double backward run fastest single-threaded on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_generator(A: torch.Tensor):
    return lambda z: (z @ A.T).reshape(len(z), 1, -1, 1)  # image-shaped output, N = A.shape[0] pixels


def tanh_net(d=6, hidden=12, n_out=20, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, n_out), nn.Tanh()).double()
    return net.requires_grad_(False)


class SumOfSquares(distances.Distance):
    """D = Σ (x1 − x2)², so H = 2 JᵀJ at zero residual."""

    def features(self, x):
        return x.flatten(1)


# --------------------------------------------------------------------------- analytic forms


@pytest.mark.parametrize("method", geo.METHODS)
def test_linear_generator_mse_gives_2_over_n_AtA(method):
    rng = np.random.default_rng(0)
    N, d, rank = 40, 10, 6  # low rank, so Lanczos' top-k reconstruction is exact too
    A = torch.as_tensor(rng.standard_normal((N, rank)) @ rng.standard_normal((rank, d)))
    H_true = 2.0 / N * (A.T @ A).numpy()
    z0 = rng.standard_normal(d)
    res = geo.metric_hessian(linear_generator(A), z0, distances.MSEDistance(), method, k=rank,
                             dtype=DT, eps_rel=1e-2, batch_size=4)
    np.testing.assert_allclose(res.H, H_true, atol=1e-10 * np.abs(H_true).max())
    np.testing.assert_allclose(res.eigvals[:rank], np.linalg.eigvalsh(H_true)[::-1][:rank], rtol=1e-8)
    assert np.all(np.diff(res.eigvals) <= 0)
    np.testing.assert_allclose(res.eigvecs.T @ res.eigvecs, np.eye(res.eigvecs.shape[1]), atol=1e-8)


def test_nonlinear_generator_at_zero_residual_is_2JtJ():
    net = tanh_net()
    z0 = torch.randn(6, dtype=DT, generator=torch.Generator().manual_seed(1))
    J = torch.func.jacrev(net)(z0).numpy()
    expected = 2.0 * J.T @ J
    for method in ("bp", "jac", "hvp_ad"):
        res = geo.metric_hessian(net, z0, SumOfSquares(), method, k=5, dtype=DT)
        if method == "hvp_ad":  # top 5 of 6 eigenpairs
            np.testing.assert_allclose(res.eigvals, np.linalg.eigvalsh(expected)[::-1][:5], rtol=1e-8)
        else:
            np.testing.assert_allclose(res.H, expected, rtol=1e-9, atol=1e-12)


def test_finite_difference_error_is_second_order_until_round_off():
    net = tanh_net(seed=2)
    z0 = torch.randn(6, dtype=DT, generator=torch.Generator().manual_seed(3))
    mse = distances.MSEDistance()
    exact = geo.hvp_operator(net, z0, mse, mode="ad", dtype=DT)
    V = np.random.default_rng(4).standard_normal((6, 3))
    ref = np.stack([exact.matvec(v) for v in V.T])

    def error(eps):
        op = geo.hvp_operator(net, z0, mse, mode="fd", eps_rel=eps, dtype=DT)
        return np.linalg.norm(np.stack([op.matvec(v) for v in V.T]) - ref) / np.linalg.norm(ref)

    eps = np.array([1e-1, 3e-2, 1e-2, 3e-3, 1e-3])
    errs = np.array([error(e) for e in eps])
    slope = np.polyfit(np.log10(eps), np.log10(errs), 1)[0]
    assert 1.8 < slope < 2.2, (errs, slope)
    assert error(1e-5) < errs[-1] / 50  # still truncation-limited ...
    assert error(1e-13) > error(1e-5)  # ... until round-off takes over


def test_lanczos_topk_matches_dense_eigh():
    rng = np.random.default_rng(5)
    d, k = 60, 8
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = np.logspace(2, -4, d)
    M = (Q * spectrum) @ Q.T
    vals, vecs = geo.lanczos_topk(M, k)
    np.testing.assert_allclose(vals, spectrum[:k], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(vecs * Q[:, :k], 0)), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- spectra and homogeneity


def test_spectrum_stats_exact_on_diagonal_spectrum():
    # c_k = .5, .75, .875, .975, .995, .9995, .99995, .99999, 1
    lam = np.array([0.5, 0.25, 0.125, 0.1, 0.02, 0.0045, 0.00045, 0.00004, 0.00001])
    want = {"dims_99": 4, "dims_999": 5, "dims_9999": 6}
    H = np.diag(np.random.default_rng(0).permutation(lam))  # input order does not matter
    assert geo.spectrum_stats(np.linalg.eigvalsh(H)) == want
    assert geo.spectrum_stats(np.stack([lam, 3 * lam[::-1]])) == want  # rank-wise mean over positions
    assert geo.spectrum_stats([90.0, 9.5, 0.45, 0.05]) == {"dims_99": 1, "dims_999": 2, "dims_9999": 3}
    assert geo.spectrum_stats(np.ones(10)) == {"dims_99": 9, "dims_999": 9, "dims_9999": 9}
    assert geo.spectrum_stats([1.0, 0.0, 0.0], qs=(0.5,)) == {"dims_5": 0}
    with pytest.raises(AnalysisError):
        geo.spectrum_stats(np.zeros(4))


def test_spectrum_stats_of_a_top_k_spectrum_are_of_the_top_k_and_none_where_k_cannot_tell():
    lam = [4.0, 2.0, 1.0, 1.0]  # the top 4 of d = 8; c_k = .5, .75, .875, 1 of the top-4 sum
    assert geo.spectrum_stats(lam, qs=(0.5, 0.8, 0.99), dim=8) == {"dims_5": 0, "dims_8": 2, "dims_99": None}
    assert geo.spectrum_stats(lam, qs=(0.99,)) == {"dims_99": 3}  # the whole spectrum: 1 is reached at rank 4
    assert geo.spectrum_stats(lam, qs=(0.99,), dim=4) == {"dims_99": 3}
    with pytest.raises(AnalysisError, match="dim = 3 is below the 4 eigenvalues"):
        geo.spectrum_stats(lam, dim=3)


def test_homogeneity_of_rank_k_hessians_is_over_their_top_k():
    """Lanczos' Ĥ = U diag(λ) Uᵀ has d − k eigenvalues of round-off; with k they are left out."""
    rng = np.random.default_rng(5)
    d, k = 12, 5
    shared = rng.standard_normal((d, k))
    Hs = []
    for scale in (1.0, 2.0, 0.5):  # nearly the same top-k axes at every position
        U, _ = np.linalg.qr(shared + 0.05 * rng.standard_normal((d, k)))
        Hs.append((U * (np.logspace(1, -1, k) * scale)) @ U.T)
    c = geo.hessian_consistency(np.stack(Hs), k=k)
    assert c["corr_log_mean"] == pytest.approx(1.0, abs=1e-4) and c["corr_lin_mean"] == pytest.approx(1.0, abs=1e-3)
    assert geo.hessian_consistency(np.stack(Hs))["corr_log_mean"] < 0.95  # the round-off ranks blur it
    with pytest.raises(AnalysisError, match="k must lie in"):
        geo.hessian_consistency(Hs, k=0)


def test_homogeneity_is_one_for_a_constant_hessian():
    rng = np.random.default_rng(6)
    B = rng.standard_normal((12, 12))
    H = B @ B.T
    c = geo.hessian_consistency(np.stack([H] * 4))
    for key in ("corr_log", "corr_lin", "corr_vec"):
        np.testing.assert_allclose(c[key], 1.0, atol=1e-8)
        assert c[f"{key}_mean"] == pytest.approx(1.0) and c[f"{key}_median"] == pytest.approx(1.0)


def test_homogeneity_near_zero_for_random_rotations():
    rng = np.random.default_rng(7)
    d, n = 60, 12
    spectrum = np.logspace(0, -3, d)
    Hs = []
    for _ in range(n):
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        Hs.append((Q * spectrum) @ Q.T)
    c = geo.hessian_consistency(np.stack(Hs))
    assert abs(c["corr_lin_mean"]) < 0.1
    np.testing.assert_allclose(np.diag(c["corr_lin"]), 1.0)  # α_ii = λ_i
    assert c["corr_log"].shape == (n, n)


def test_homogeneity_masks_non_finite_logs():
    H = np.diag([3.0, 2.0, 1.0, 0.0])  # log10(0) = -inf is masked
    c = geo.hessian_consistency(np.stack([H, H]))
    assert c["corr_log_mean"] == pytest.approx(1.0)


def test_average_hessian_descending_eigenbasis():
    Hs = np.stack([np.diag([1.0, 3.0, 2.0]), np.diag([3.0, 1.0, 2.0])])
    H, vals, vecs = geo.average_hessian(Hs)
    np.testing.assert_allclose(H, np.diag([2.0, 2.0, 2.0]))
    Hs = np.stack([np.diag([1.0, 4.0, 2.0]), np.diag([1.0, 2.0, 0.0])])
    _, vals, vecs = geo.average_hessian(Hs)
    np.testing.assert_allclose(vals, [3.0, 1.0, 1.0])
    np.testing.assert_allclose(np.abs(vecs[:, 0]), [0, 1, 0])


def test_shuffle_weights_permutes_each_tensor_and_copies():
    net = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shuffled = geo.shuffle_weights(net, np.random.default_rng(0))
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])  # original untouched
    for (name, p), (_, q) in zip(net.named_parameters(), shuffled.named_parameters()):
        torch.testing.assert_close(torch.sort(p.flatten()).values, torch.sort(q.flatten()).values)
        assert p.unique().numel() == 1 or not torch.equal(p, q), name
    torch.testing.assert_close(shuffled[1].running_var, net[1].running_var)  # buffers kept
    again = geo.shuffle_weights(net, 0)
    torch.testing.assert_close(again[0].weight, geo.shuffle_weights(net, 0)[0].weight)


# --------------------------------------------------------------------------- walks, inversion, errors


def test_eigen_walk_and_montage(tmp_path):
    from PIL import Image

    G = lambda z: torch.sigmoid(z[:, :3, None, None].expand(-1, 3, 4, 5))  # noqa: E731
    z0, U = np.zeros(6), np.eye(6)
    images = geo.eigen_walk(G, z0, U, ranks=[0, 2], maxdist=2.0, n_steps=5)
    assert images.shape == (2, 5, 3, 4, 5)
    torch.testing.assert_close(images[:, 2], G(torch.zeros(2, 6)))  # t = 0 in the middle
    assert images[0, -1, 0].mean() > images[0, 0, 0].mean()  # walking along u_0 moves channel 0
    path = geo.save_montage(images, tmp_path / "walk.png")
    assert Image.open(path).size == (5 * 5 + 4 * 2, 2 * 4 + 2)
    with pytest.raises(AnalysisError):
        geo.eigen_walk(G, z0, U, ranks=[6], maxdist=1.0)


def test_walk_figure_labels_each_row_with_its_rank_and_each_column_with_t():
    from analysis.plots import walk_figure

    images = torch.rand(2, 3, 3, 4, 4)
    fig = walk_figure(images, [0, 2], np.linspace(-2, 2, 3), eigvals=[3.0, 1.0, 0.5], title="dcgan (real)")
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["rank 0\nλ = 3", "rank 2\nλ = 0.5"]
    assert [ax.get_title() for ax in axes[0]] == ["t = -2", "t = +0", "t = +2"]
    assert fig.get_suptitle() == "dcgan (real)"


def test_homogeneity_figure_counts_each_position_pair_once():
    from analysis.plots import homogeneity_figure

    n = 4
    M = np.random.default_rng(3).uniform(-1, 1, (n, n))  # corr_log is not symmetric
    fig = homogeneity_figure({"real": {"corr_log": M, "corr_lin": M.T}})
    for ax in fig.axes:
        assert sum(bar.get_height() for bar in ax.patches) == n * (n - 1) / 2
    assert "6 pairs" in fig.get_suptitle()


def test_invert_in_eigenbasis_beats_identity_on_ill_conditioned_quadratic():
    rng = np.random.default_rng(8)
    d = 9
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = np.logspace(np.log10(520), -2, d)
    A = torch.as_tensor(np.sqrt(spectrum)[:, None] * Q.T)  # H = 2/N AᵀA has eigenvectors Q
    G = linear_generator(A)
    target = G(torch.as_tensor(rng.standard_normal((1, d))))
    z_init = np.zeros(d)
    mse = distances.MSEDistance()
    kw = dict(steps=150, lr=0.1, z_init=z_init, dtype=DT)
    plain = geo.invert(G, target, mse, None, **kw)
    eig = geo.invert(G, target, mse, Q, **kw)
    assert plain.losses.shape == eig.losses.shape == (150,)
    assert eig.losses[-1] < 0.5 * plain.losses[-1]
    assert eig.losses[-1] < 1e-3 * eig.losses[0]


def test_clear_errors():
    G = linear_generator(torch.eye(4, dtype=DT))
    mse = distances.MSEDistance()
    with pytest.raises(AnalysisError, match="unknown method"):
        geo.metric_hessian(G, np.ones(4), mse, "newton", dtype=DT)
    with pytest.raises(AnalysisError, match="z0 must be one code"):
        geo.metric_hessian(G, np.ones((2, 4)), mse, dtype=DT)
    with pytest.raises(AnalysisError, match="features"):
        geo.metric_hessian(G, np.ones(4), lambda a, b: ((a - b) ** 2).flatten(1).sum(1), "jac", dtype=DT)
    with pytest.raises(AnalysisError, match="k < n"):
        geo.lanczos_topk(np.eye(4), 4)
    with pytest.raises(AnalysisError, match="one value per image pair"):
        geo.metric_hessian(G, np.ones(4), lambda a, b: (a - b) ** 2, dtype=DT)
    with pytest.raises(AnalysisError, match="eps_rel"):
        geo.metric_hessian(G, np.ones(4), mse, "hvp_fd", eps_rel=0.0, k=2, dtype=DT)
    for method, k, top in (("bp", 0, 4), ("bp", 5, 4), ("jac", 5, 4), ("hvp_ad", 4, 3)):  # bp gave 4 for k = 5
        refused = f"^k = {k} eigenpairs: method {method} gives 1 to {top} at latent size 4"
        with pytest.raises(AnalysisError, match=refused):
            geo.metric_hessian(G, np.ones(4), SumOfSquares(), method, k=k, dtype=DT)
    with pytest.raises(AnalysisError, match="use method 'bp' for all 100$"):
        geo.check_k("hvp_fd", 200, 100)
    geo.check_k("bp", 100, 100)
    geo.check_k("hvp_fd", None, 100)


# --------------------------------------------------------------------------- DCGAN faces


@pytest.fixture(scope="module")
def dcgan():
    generators = pytest.importorskip("generators")
    try:
        return generators.load("dcgan-faces", device="cpu")
    except generators.GeneratorError as exc:
        pytest.skip(f"dcgan-faces unavailable: {exc}")


@pytest.fixture(scope="module")
def dcgan_bp(dcgan):
    z0 = dcgan.sample(1, np.random.default_rng(0))[0]
    return z0, geo.metric_hessian(dcgan.generate, z0, distances.MSEDistance(), "bp")


def test_dcgan_lanczos_matches_backprop(dcgan, dcgan_bp):
    z0, bp = dcgan_bp
    bi = geo.metric_hessian(dcgan.generate, z0, distances.MSEDistance(), "hvp_ad", k=49)
    assert geo.hessian_corr(bp.H, bi.H) >= 0.99
    np.testing.assert_allclose(bi.eigvals[:10], bp.eigvals[:10], rtol=1e-3)


def test_dcgan_finite_difference_degrades_with_step(dcgan, dcgan_bp):
    z0, bp = dcgan_bp
    corr = {eps: geo.hessian_corr(bp.H, geo.metric_hessian(dcgan.generate, z0, distances.MSEDistance(),
                                                           "hvp_fd", k=49, eps_rel=eps).H)
            for eps in (1e-4, 1e-1)}
    assert corr[1e-4] > 0.95
    assert corr[1e-4] > corr[1e-1]


def test_dcgan_perceptual_gram_agrees_with_autodiff_hvp(dcgan):
    cnn = pytest.importorskip("rig_client.cnn")
    perceptual = distances.get_distance("perceptual", cnn.load_efficientnet_lite0(), cnn.normalize)
    z0 = dcgan.sample(1, np.random.default_rng(1))[0]
    jac = geo.metric_hessian(dcgan.generate, z0, perceptual, "jac")
    op = geo.hvp_operator(dcgan.generate, z0, perceptual, mode="ad")
    for i in range(3):  # Rayleigh quotients and residuals of the top eigenvectors under the HVP
        u, lam = jac.eigvecs[:, i], jac.eigvals[i]
        hu = op.matvec(u)
        assert u @ hu == pytest.approx(lam, rel=1e-3)
        assert np.linalg.norm(hu - lam * u) < 1e-2 * lam
