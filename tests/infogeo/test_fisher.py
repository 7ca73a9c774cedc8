"""Tests for infogeo.fisher against geomstats 2.8.0, exact quadrature, finite differences and
float64 recomputations of the formulas (seed 000 §3.1.1–3.1.2)."""
import math
import os

os.environ.setdefault("GEOMSTATS_BACKEND", "numpy")

import numpy as np
import pytest
import torch
from geomstats.information_geometry.categorical import CategoricalDistributions
from geomstats.information_geometry.normal import NormalDistributions
from hypothesis import given
from hypothesis import strategies as st

from infogeo.fisher import (
    attention_row_metric,
    categorical_distance,
    categorical_metric,
    diag_normal_distance,
    diag_normal_metric,
    effective_dimension,
    empirical_fisher,
    linear_softmax_metric,
    metric_inverse,
    metric_logdet,
    monte_carlo_fisher,
    normal_distance,
    normal_metric,
    pullback_metric,
    pullback_quadratic_form,
    regularized,
)

F64 = torch.float64
T = lambda a: torch.as_tensor(np.asarray(a), dtype=F64)  # noqa: E731


def _normal_log_f(x, theta):
    mu, sigma = theta[0], theta[1]
    return -torch.log(sigma) - 0.5 * ((x - mu) / sigma) ** 2 - 0.5 * math.log(2 * math.pi)


def _normal_sampler(theta, n, generator):
    z = torch.randn(n, generator=generator, dtype=theta.dtype)
    return theta[0] + theta[1] * z


def _hermite(n=6):
    """Gauss–Hermite rule for N(0, 1): exact for polynomials of degree ≤ 2n − 1."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return T(x), T(w / w.sum())


# ------------------------------------------------------------------ closed forms vs geomstats


@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_categorical_metric_and_distance_match_geomstats(K):
    rng = np.random.default_rng(K)
    p, q = rng.dirichlet(np.ones(K), size=20), rng.dirichlet(np.full(K, 0.5), size=20)
    space = CategoricalDistributions(dim=K - 1)
    np.testing.assert_allclose(categorical_metric(T(p)).numpy(), space.metric.metric_matrix(p), rtol=1e-6, atol=0)
    np.testing.assert_allclose(categorical_distance(T(p), T(q)).numpy(), space.metric.dist(p, q), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(
        categorical_distance(T(p), T(q)).numpy(), 2 * np.arccos(np.sqrt(p * q).sum(-1)), rtol=1e-6
    )


def test_categorical_chart_metric_matches_geomstats_inner_products():
    rng = np.random.default_rng(0)
    K = 5
    p = rng.dirichlet(np.ones(K))
    space = CategoricalDistributions(dim=K - 1)
    E = np.vstack([np.eye(K - 1), -np.ones(K - 1)])  # chart tangent basis in ambient coordinates
    ref = np.array([[space.metric.inner_product(E[:, i], E[:, j], p) for j in range(K - 1)] for i in range(K - 1)])
    np.testing.assert_allclose(categorical_metric(T(p), chart=True).numpy(), ref, rtol=1e-6)


def test_normal_metric_and_distance_match_geomstats():
    rng = np.random.default_rng(1)
    a = np.stack([rng.normal(size=30), rng.uniform(0.1, 3, size=30)], -1)
    b = np.stack([rng.normal(scale=3, size=30), rng.uniform(0.05, 5, size=30)], -1)
    space = NormalDistributions(sample_dim=1)
    np.testing.assert_allclose(normal_metric(T(a[:, 0]), T(a[:, 1])).numpy(), space.metric.metric_matrix(a), rtol=1e-6)
    got = normal_distance(T(a[:, 0]), T(a[:, 1]), T(b[:, 0]), T(b[:, 1])).numpy()
    np.testing.assert_allclose(got, space.metric.dist(a, b), rtol=1e-6)


def test_diag_normal_metric_and_distance_match_geomstats():
    rng = np.random.default_rng(2)
    d = 3
    mu1, mu2 = rng.normal(size=(4, d)), rng.normal(size=(4, d))
    s1, s2 = rng.uniform(0.2, 2, size=(4, d)), rng.uniform(0.2, 2, size=(4, d))
    space = NormalDistributions(sample_dim=d, distribution_type="diagonal")
    # geomstats stores variances in the point and measures tangents in (μ, σ).
    pt1, pt2 = np.concatenate([mu1, s1**2], -1), np.concatenate([mu2, s2**2], -1)
    eye = np.eye(2 * d)
    ref = np.array(
        [[[space.metric.inner_product(eye[i], eye[j], pt) for j in range(2 * d)] for i in range(2 * d)] for pt in pt1]
    )
    np.testing.assert_allclose(diag_normal_metric(T(mu1), T(s1)).numpy(), ref, rtol=1e-6)
    got = diag_normal_distance(T(mu1), T(s1), T(mu2), T(s2)).numpy()
    np.testing.assert_allclose(got, space.metric.dist(pt1, pt2), rtol=1e-6)


def test_distances_are_stable_for_nearby_points():
    # 2·arccos(Σ√pq) and arccosh(1 + ε) lose all digits here; the chord forms must not.
    p = T([0.2, 0.3, 0.5])
    dp = T([1e-9, -3e-9, 2e-9])
    local = torch.sqrt(dp @ categorical_metric(p) @ dp)
    assert float(categorical_distance(p, p + dp)) == pytest.approx(float(local), rel=1e-6)
    mu, s = T(0.4), T(1.3)
    dv = T([2e-9, -1e-9])
    local = torch.sqrt(dv @ normal_metric(mu, s) @ dv)
    assert float(normal_distance(mu, s, mu + dv[0], s + dv[1])) == pytest.approx(float(local), rel=1e-6)


# ------------------------------------------------------------------ sample and quadrature Fisher


@given(mu=st.floats(-3, 3), sigma=st.floats(0.2, 4))
def test_quadrature_fisher_equals_normal_closed_form(mu, sigma):
    # Scores are polynomials of degree ≤ 2 in z, so 6-point Gauss–Hermite is exact.
    z, w = _hermite()
    theta = T([mu, sigma])
    F = empirical_fisher(_normal_log_f, mu + sigma * z, theta, weights=w)
    torch.testing.assert_close(F, normal_metric(T(mu), T(sigma)), rtol=1e-10, atol=1e-12)


@given(mu=st.floats(-3, 3), sigma=st.floats(0.2, 4))
def test_fisher_transforms_as_jt_g_j_under_reparametrisation(mu, sigma):
    # (μ, s = log σ): g' = Jᵀ g J with J = ∂(μ, σ)/∂(μ, s) = diag(1, σ).
    z, w = _hermite()

    def log_f_logscale(x, th):
        return _normal_log_f(x, torch.stack([th[0], th[1].exp()]))

    F = empirical_fisher(log_f_logscale, mu + sigma * z, T([mu, math.log(sigma)]), weights=w)
    J = torch.diag(T([1.0, sigma]))
    torch.testing.assert_close(F, J.T @ normal_metric(T(mu), T(sigma)) @ J, rtol=1e-10, atol=1e-12)


def test_quadrature_fisher_equals_diag_normal_closed_form():
    z, w = _hermite()
    zz = torch.cartesian_prod(z, z)
    ww = torch.outer(w, w).reshape(-1)
    mu, sigma = T([0.3, -1.0]), T([0.7, 2.0])

    def log_f(x, th):
        return _normal_log_f(x[0], th[[0, 2]]) + _normal_log_f(x[1], th[[1, 3]])

    F = empirical_fisher(log_f, mu + sigma * zz, torch.cat([mu, sigma]), weights=ww)
    torch.testing.assert_close(F, diag_normal_metric(mu, sigma), rtol=1e-10, atol=1e-12)


@given(st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6))
def test_exact_expectation_fisher_equals_categorical_chart_metric(raw):
    p = T(raw) / sum(raw)

    def log_f(onehot, th):
        probs = torch.cat([th, 1 - th.sum(0, keepdim=True)])
        return (onehot * torch.log(probs)).sum()

    F = empirical_fisher(log_f, torch.eye(len(raw), dtype=F64), p[:-1].clone(), weights=p)
    G = categorical_metric(p, chart=True)
    torch.testing.assert_close(F, G, rtol=1e-9, atol=1e-9)
    assert float(torch.linalg.eigvalsh(G).min()) > 0


def test_integer_data_poisson_fisher():
    # Integer observations (counts) are allowed; Fisher of Poisson(λ) is 1/λ.
    lam = 3.0
    k = torch.arange(80)
    pmf = torch.exp(k.to(F64) * math.log(lam) - lam - torch.lgamma(k.to(F64) + 1))

    def log_f(ki, th):
        kf = ki.to(th.dtype)
        return kf * torch.log(th[0]) - th[0] - torch.lgamma(kf + 1)

    F = empirical_fisher(log_f, k, T([lam]), weights=pmf / pmf.sum())
    torch.testing.assert_close(F, T([[1 / lam]]), rtol=1e-10, atol=0)


def test_monte_carlo_fisher_error_falls_like_inverse_sqrt_samples():
    gen = torch.Generator().manual_seed(1234)
    m = 96
    theta = torch.stack([torch.linspace(-2, 2, m, dtype=F64), torch.linspace(0.3, 3, m, dtype=F64)], -1)
    g = normal_metric(theta[:, 0], theta[:, 1])
    rms = {}
    for n in (400, 6400):
        F = monte_carlo_fisher(_normal_log_f, _normal_sampler, theta, n, generator=gen)
        scaled_err = (F - g) * theta[:, 1, None, None] ** 2  # σ²(F̂ − g) is θ-free
        rms[n] = float(scaled_err.square().sum((-2, -1)).mean().sqrt())
        # E‖σ²(F̂ − g)‖²_F = (Var z² + 2 Var z(z²−1) + Var (z²−1)²)/n = (2 + 20 + 56)/n.
        assert rms[n] == pytest.approx(math.sqrt(78 / n), rel=0.3)
    assert 3.0 < rms[400] / rms[6400] < 5.3  # √16 = 4


def test_empirical_fisher_batched_theta_matches_loop_and_chunking():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=gen, dtype=F64)
    theta = T([[0.0, 1.0], [0.5, 2.0], [-1.0, 0.5]])
    batched = empirical_fisher(_normal_log_f, x, theta, chunk_size=7)
    for i in range(3):
        s = torch.stack([torch.autograd.functional.jacobian(lambda th: _normal_log_f(xi, th), theta[i]) for xi in x])
        torch.testing.assert_close(batched[i], s.T @ s / len(x), rtol=1e-12, atol=1e-12)


def test_empirical_fisher_is_not_the_fisher_kunstner():
    # One observation: rank one, not a metric.
    F1 = empirical_fisher(_normal_log_f, T([0.7]), T([0.0, 1.0]))
    assert int(torch.linalg.matrix_rank(F1)) == 1
    assert float(effective_dimension(F1)) == pytest.approx(1.0, rel=1e-12)
    # Data from N(0, 1) scored at θ = (1, 1): E[s sᵀ] = [[2, −3], [−3, 7]] (moments of z − 1),
    # not the Fisher diag(1, 2) at θ.
    z, w = _hermite()
    exact = empirical_fisher(_normal_log_f, z, T([1.0, 1.0]), weights=w)
    torch.testing.assert_close(exact, T([[2.0, -3.0], [-3.0, 7.0]]), rtol=1e-10, atol=1e-10)
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(3), dtype=F64)
    F = empirical_fisher(_normal_log_f, x, T([1.0, 1.0]))
    torch.testing.assert_close(F, exact, rtol=0.1, atol=0.1)
    assert float((F - normal_metric(T(1.0), T(1.0))).abs().max()) > 2.0


# ------------------------------------------------------------------ pulled-back metrics


def _mlp(d, V, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(16, d, generator=g, dtype=dtype) / math.sqrt(d)
    W2 = torch.randn(V, 16, generator=g, dtype=dtype) / 4
    b2 = torch.randn(V, generator=g, dtype=dtype)

    def fn(h):
        z = torch.nn.functional.layer_norm(h @ W1.T, (16,))
        return torch.tanh(z) @ W2.T + b2

    return fn


def _fd_metric(fn, h, step=1e-6):
    """float64 central-difference Jacobian, then Jᵀ(diag p − p pᵀ)J written out."""
    out = []
    for x in h:
        cols = []
        for j in range(x.shape[0]):
            e = torch.zeros_like(x)
            e[j] = step
            cols.append((fn(x + e) - fn(x - e)) / (2 * step))
        J = torch.stack(cols, -1)
        p = torch.softmax(fn(x), -1)
        out.append(J.T @ (torch.diag(p) - torch.outer(p, p)) @ J)
    return torch.stack(out)


@pytest.mark.parametrize("d,V,mode", [(4, 9, "auto"), (9, 4, "auto"), (4, 9, "rev"), (9, 4, "fwd")])
def test_pullback_metric_matches_finite_differences(d, V, mode):
    fn = _mlp(d, V, seed=d * V)
    h = torch.randn(5, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    G = pullback_metric(fn, h, mode=mode, chunk_size=2)
    torch.testing.assert_close(G, _fd_metric(fn, h), rtol=1e-6, atol=1e-9)


def test_linear_and_attention_fast_paths():
    gen = torch.Generator().manual_seed(5)
    W, b = torch.randn(11, 6, generator=gen, dtype=F64), torch.randn(11, generator=gen, dtype=F64)
    h = torch.randn(7, 6, generator=gen, dtype=F64)
    G = linear_softmax_metric(W, h, b, chunk_size=3)
    p = torch.softmax(h @ W.T + b, -1)
    ref = torch.stack([W.T @ (torch.diag(pi) - torch.outer(pi, pi)) @ W for pi in p])
    torch.testing.assert_close(G, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pullback_metric(lambda x: x @ W.T + b, h), ref, rtol=1e-12, atol=1e-12)

    K = torch.randn(8, 6, generator=gen, dtype=F64)
    scale = 1 / math.sqrt(6)
    A = attention_row_metric(h, K)
    torch.testing.assert_close(A, pullback_metric(lambda q: scale * (K @ q), h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attention_row_metric(h, K, 0.3), linear_softmax_metric(0.3 * K, h), rtol=1e-12, atol=1e-12)
    mask = torch.ones(7, 8, dtype=torch.bool).tril()
    Am = attention_row_metric(h, K, mask=mask, chunk_size=2)
    for i in range(7):
        keys = K[: i + 1] if i + 1 >= 2 else None
        if keys is None:  # one allowed key: p is a point mass, the metric vanishes
            torch.testing.assert_close(Am[i], torch.zeros(6, 6, dtype=F64))
        else:
            torch.testing.assert_close(Am[i], attention_row_metric(h[i : i + 1], keys)[0], rtol=1e-12, atol=1e-12)


def test_linear_metric_is_accurate_in_float32_for_confident_predictions():
    # Nearly one-hot p: the centred form keeps float32 close to the float64 value.
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(50, 8, generator=gen, dtype=F64) * 3
    h = torch.randn(4, 8, generator=gen, dtype=F64) * 3
    ref = linear_softmax_metric(W, h)
    got = linear_softmax_metric(W.float(), h.float())
    assert got.dtype == torch.float32
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-4


def test_quadratic_form_matches_metric():
    fn = _mlp(5, 7, seed=3)
    gen = torch.Generator().manual_seed(4)
    h, v = torch.randn(6, 5, generator=gen, dtype=F64), torch.randn(6, 5, generator=gen, dtype=F64)
    G = pullback_metric(fn, h)
    torch.testing.assert_close(pullback_quadratic_form(fn, h, v, chunk_size=4), torch.einsum("ni,nij,nj->n", v, G, v))
    torch.testing.assert_close(pullback_quadratic_form(fn, h, v[0]), torch.einsum("i,nij,j->n", v[0], G, v[0]))


def test_layernorm_makes_the_metric_singular_and_regularisation_handles_it():
    gen = torch.Generator().manual_seed(6)
    W = torch.randn(12, 5, generator=gen, dtype=F64)

    def fn(x):  # LayerNorm without affine is invariant to x ↦ x + c·1
        return torch.nn.functional.layer_norm(x, (5,)) @ W.T

    h = torch.randn(3, 5, generator=gen, dtype=F64)
    G = pullback_metric(fn, h)
    ones = torch.ones(5, dtype=F64)
    assert float((G @ ones).abs().max()) < 1e-10
    with pytest.raises(ValueError, match="eps"):
        metric_logdet(G, 0.0)
    eps = 1e-3
    R = regularized(G, eps)
    torch.testing.assert_close(R, G + eps * torch.eye(5, dtype=F64))
    torch.testing.assert_close(metric_inverse(G, eps) @ R, torch.eye(5, dtype=F64).expand(3, 5, 5), rtol=0, atol=1e-8)
    torch.testing.assert_close(metric_logdet(G, eps), torch.logdet(R), rtol=1e-10, atol=1e-10)
    lam = torch.linalg.eigvalsh(G)
    torch.testing.assert_close(effective_dimension(G), lam.sum(-1) ** 2 / (lam**2).sum(-1))
    assert float(effective_dimension(G).max()) < 4.0 + 1e-9  # rank ≤ d − 1 = 4


def test_effective_dimension_extremes():
    assert float(effective_dimension(torch.eye(7, dtype=F64))) == pytest.approx(7.0)
    assert float(effective_dimension(torch.zeros(3, 3, dtype=F64))) == 0.0


@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 6),
    V=st.integers(2, 9),
)
def test_pullback_metric_properties(seed, d, V):
    gen = torch.Generator().manual_seed(seed)
    fn = _mlp(d, V, seed)
    hp = torch.randn(3, d, generator=gen, dtype=F64)
    A = torch.randn(d, d, generator=gen, dtype=F64) + 2 * torch.eye(d, dtype=F64)
    G = pullback_metric(fn, hp @ A.T)
    torch.testing.assert_close(G, G.transpose(-1, -2), rtol=0, atol=1e-14)
    assert float(torch.linalg.eigvalsh(G).min()) > -1e-12 * max(1.0, float(G.abs().max()))
    # Linear reparametrisation h = A h': G' = Aᵀ G A.
    G_lin = pullback_metric(lambda x: fn(A @ x), hp)
    torch.testing.assert_close(G_lin, A.T @ G @ A, rtol=1e-9, atol=1e-12)
    # Nonlinear reparametrisation h = φ(h'), J_φ from autograd.
    phi = lambda x: x + 0.3 * torch.sin(x @ A.T)  # noqa: E731
    G_phi = pullback_metric(lambda x: fn(phi(x)), hp)
    for i in range(3):
        Jp = torch.autograd.functional.jacobian(phi, hp[i])
        torch.testing.assert_close(G_phi[i], Jp.T @ pullback_metric(fn, phi(hp[i])[None])[0] @ Jp, rtol=1e-9, atol=1e-12)


@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=7))
def test_categorical_metric_properties(raw):
    p = T(raw) / sum(raw)
    G, C = categorical_metric(p), categorical_metric(p, chart=True)
    E = torch.cat([torch.eye(len(raw) - 1, dtype=F64), -torch.ones(1, len(raw) - 1, dtype=F64)])
    torch.testing.assert_close(C, E.T @ G @ E, rtol=1e-12, atol=1e-12)
    assert float(torch.linalg.eigvalsh(C).min()) > 0
    torch.testing.assert_close(C, C.T)


def test_dtype_follows_input():
    p = torch.tensor([0.25, 0.75])
    assert categorical_metric(p).dtype == torch.float32
    assert normal_distance(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0), torch.tensor(2.0)).dtype == torch.float32


# ------------------------------------------------------------------ bad input

_p = T([0.2, 0.8])
_one = T(1.0)
_W = torch.randn(5, 3, dtype=F64)
_h = torch.randn(4, 3, dtype=F64)
_lin = lambda x: x @ _W.T  # noqa: E731
_meta = torch.empty(2, device="meta", dtype=F64)

BAD = [
    (lambda: categorical_metric(T([0.3, 0.3])), ValueError, "p must sum to 1"),
    (lambda: categorical_metric(T([0.0, 1.0])), ValueError, "p must be strictly positive"),
    (lambda: categorical_metric(T([-0.2, 1.2])), ValueError, "p must be strictly positive"),
    (lambda: categorical_metric(T([1.0])), ValueError, "p must have at least 2"),
    (lambda: categorical_metric(T([float("nan"), 0.5])), ValueError, "p contains 1 NaN"),
    (lambda: categorical_metric([0.5, 0.5]), TypeError, "p must be a torch.Tensor"),
    (lambda: categorical_metric(torch.tensor([1, 1])), TypeError, "p must have a floating dtype"),
    (lambda: categorical_distance(_p, T([0.2, 0.3, 0.5])), ValueError, "same number of categories"),
    (lambda: categorical_distance(_p, T([-0.1, 1.1])), ValueError, "q must be non-negative"),
    (lambda: categorical_distance(T([0.5, 0.6]), _p), ValueError, "p must sum to 1"),
    (lambda: categorical_distance(_p, T([0.5, float("nan")])), ValueError, "q contains"),
    (lambda: categorical_distance(_p, _p.float()), TypeError, "q has dtype"),
    (lambda: categorical_distance(_p, _meta), ValueError, "q is on meta"),
    (lambda: normal_metric(_one, T(0.0)), ValueError, "sigma must be > 0"),
    (lambda: normal_metric(_one, T(-1.0)), ValueError, "sigma must be > 0"),
    (lambda: normal_metric(T(float("inf")), _one), ValueError, "mu contains"),
    (lambda: normal_distance(_one, _one, _one, T(-2.0)), ValueError, "sigma2 must be > 0"),
    (lambda: normal_distance(_one, _one, _one, torch.tensor(1.0)), TypeError, "sigma2 has dtype"),
    (lambda: diag_normal_metric(T([0.0, 1.0]), T([1.0])), ValueError, "same shape"),
    (lambda: diag_normal_distance(T([0.0]), T([1.0]), T([0.0, 1.0]), T([1.0, 1.0])), ValueError, "same dimension"),
    (lambda: empirical_fisher(_normal_log_f, T([0.1]), T([[[0.0, 1.0]]])), ValueError, "theta must have 1 or 2"),
    (lambda: empirical_fisher(_normal_log_f, T([0.1]), T([0.0, 1.0]), weights=T([0.5, 0.5])), ValueError, "weights must have shape"),
    (lambda: empirical_fisher(_normal_log_f, T([0.1, 0.2]), T([0.0, 1.0]), weights=T([0.9, 0.9])), ValueError, "weights must sum to 1"),
    (lambda: empirical_fisher(_normal_log_f, T([0.1, 0.2]), T([0.0, 1.0]), weights=T([1.5, -0.5])), ValueError, "weights must be >= 0"),
    (lambda: empirical_fisher(_normal_log_f, T([[0.1, 0.2]]), T([0.0, 1.0]), batched_x=True), ValueError, "batched_x"),
    (lambda: empirical_fisher(lambda x, t: t * x, T([0.1]), T([0.0, 1.0])), ValueError, "log_f must return a scalar"),
    (lambda: empirical_fisher(lambda x, t: t.sqrt().sum() * x, T([0.1]), T([0.0, 1.0])), ValueError, "non-finite scores"),
    (lambda: empirical_fisher(None, T([0.1]), T([0.0, 1.0])), TypeError, "log_f must be callable"),
    (lambda: monte_carlo_fisher(_normal_log_f, _normal_sampler, T([0.0, 1.0]), 0), ValueError, "n_samples must be >= 1"),
    (lambda: monte_carlo_fisher(_normal_log_f, _normal_sampler, T([0.0, 1.0]), 2.5), TypeError, "n_samples must be an int"),
    (lambda: monte_carlo_fisher(_normal_log_f, lambda t, n, g: T([0.0]), T([0.0, 1.0]), 3), ValueError, "sampler must return"),
    (lambda: monte_carlo_fisher(_normal_log_f, _normal_sampler, T([0.0, 1.0]), 3, generator=1), TypeError, "generator"),
    (lambda: pullback_metric(_lin, _h[0]), ValueError, "h must have 2 dimensions"),
    (lambda: pullback_metric(_lin, _h, mode="sideways"), ValueError, "mode must be one of"),
    (lambda: pullback_metric(lambda x: x.sum(), _h), ValueError, "fn must map one token"),
    (lambda: pullback_metric(lambda x: x @ _W.T / 0.0, _h), ValueError, "non-finite"),
    (lambda: pullback_metric(_lin, _h, chunk_size=0), ValueError, "chunk_size must be >= 1"),
    (lambda: pullback_quadratic_form(_lin, _h, T([1.0, 2.0])), ValueError, "v must have shape"),
    (lambda: pullback_quadratic_form(_lin, _h, _h.float()), TypeError, "v has dtype"),
    (lambda: linear_softmax_metric(_W, _h[:, :2]), ValueError, "h must have shape"),
    (lambda: linear_softmax_metric(_W[:1], _h), ValueError, "W must have at least 2 rows"),
    (lambda: linear_softmax_metric(_W, _h, T([1.0])), ValueError, "b must have shape"),
    (lambda: attention_row_metric(_h, _W[:, :2]), ValueError, "K must have shape"),
    (lambda: attention_row_metric(_h, _W, "big"), TypeError, "scale must be a float"),
    (lambda: attention_row_metric(_h, _W, float("nan")), ValueError, "scale must be finite"),
    (lambda: attention_row_metric(_h, _W, mask=torch.zeros(4, 5, dtype=torch.bool)), ValueError, "at least one key"),
    (lambda: attention_row_metric(_h, _W, mask=torch.ones(4, 5)), TypeError, "mask must be a bool"),
    (lambda: attention_row_metric(_h, _W, mask=torch.ones(3, 5, dtype=torch.bool)), ValueError, "mask must have shape"),
    (lambda: regularized(torch.ones(2, 3, dtype=F64), 0.1), ValueError, r"G must have shape \(..., d, d\)"),
    (lambda: regularized(T([[1.0, 2.0], [0.0, 1.0]]), 0.1), ValueError, "G must be symmetric"),
    (lambda: regularized(torch.eye(2, dtype=F64), -1.0), ValueError, "eps must be >= 0"),
    (lambda: regularized(torch.eye(2, dtype=F64), "small"), TypeError, "eps must be a float"),
    (lambda: metric_inverse(T([[1.0, 0.0], [0.0, -1.0]]), 0.5), ValueError, "not positive definite"),
    (lambda: effective_dimension(T([[1.0, float("nan")], [float("nan"), 1.0]])), ValueError, "G contains"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
