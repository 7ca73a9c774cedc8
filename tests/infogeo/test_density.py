"""Tests for infogeo.density: sequence densities, sensitivity and the SSM closed form against
autograd, and path lengths against closed-form Fisher–Rao distances of geodesics (seed 000
§3.1.1–3.1.2, seed 001 §3.4)."""
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
from torch.func import jacrev

from infogeo.density import (
    categorical_sequence_density,
    path_length,
    sensitivity_density,
    sequence_density,
    ssm_density,
)
from infogeo.fisher import categorical_distance, categorical_metric, normal_distance, normal_metric

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ sequence densities


def test_sequence_density_euclidean_and_metric_forms():
    g = _gen(0)
    s = torch.randn(2, 6, 3, generator=g, dtype=F64)
    M = torch.randn(2, 6, 3, 3, generator=g, dtype=F64)
    M = M @ M.transpose(-1, -2)
    ref_e = torch.tensor([[float((s[b, t + 1] - s[b, t]).norm() ** 2) for t in range(5)] for b in range(2)], dtype=F64)
    ref_m = torch.tensor(
        [[float((s[b, t + 1] - s[b, t]) @ M[b, t] @ (s[b, t + 1] - s[b, t])) for t in range(5)] for b in range(2)],
        dtype=F64,
    )
    torch.testing.assert_close(sequence_density(s), ref_e)
    torch.testing.assert_close(sequence_density(s, M), ref_m)
    torch.testing.assert_close(sequence_density(s, M[:, :-1]), ref_m)
    field = lambda x: torch.diag_embed(1.0 + x**2)  # noqa: E731
    ref_f = ((s[:, 1:] - s[:, :-1]) ** 2 * (1 + s[:, :-1] ** 2)).sum(-1)
    torch.testing.assert_close(sequence_density(s, field), ref_f)


def test_categorical_sequence_density_matches_geomstats_and_local_form():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(4), size=9)
    space = CategoricalDistributions(dim=3)
    ref = space.metric.dist(P[1:], P[:-1]) ** 2
    np.testing.assert_allclose(categorical_sequence_density(torch.tensor(P)).numpy(), ref, rtol=1e-6)
    # Small steps: the squared Fisher–Rao speed equals the metric form ‖Δp‖²_{diag(1/p)} to O(step).
    t = torch.linspace(0, 1, 200, dtype=F64)[:, None]
    logits = torch.stack([torch.sin(3 * t[:, 0]), t[:, 0], -t[:, 0] ** 2], -1)
    Q = torch.softmax(logits, -1)
    exact = categorical_sequence_density(Q)
    local = sequence_density(Q, categorical_metric(Q))
    assert float(((exact - local) / exact).abs().max()) < 2e-2
    assert float(((exact - local) / exact).abs().max()) > 1e-6  # genuinely different formulas


def test_categorical_sequence_density_accepts_causal_attention_rows():
    # Row t of a causal attention map is zero beyond t; the distance extends to the closed simplex.
    g = _gen(5)
    scores = torch.randn(6, 6, generator=g, dtype=F64).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
    P = torch.softmax(scores, -1)
    ref = (2 * torch.arccos((P[1:] * P[:-1]).sqrt().sum(-1).clamp(max=1))) ** 2
    torch.testing.assert_close(categorical_sequence_density(P), ref, rtol=1e-7, atol=1e-12)
    e = torch.eye(2, dtype=F64)
    assert float(categorical_sequence_density(e)) == pytest.approx(math.pi**2)


# ------------------------------------------------------------------ sensitivity and SSM


def test_sensitivity_density_matches_autograd_jacobian():
    g = _gen(1)
    W1, W2 = torch.randn(7, 4, generator=g, dtype=F64), torch.randn(3, 2, 7, generator=g, dtype=F64)

    def fn(x):  # (4,) → (3, 2): any output shape
        return torch.einsum("abk,k->ab", W2, torch.tanh(W1 @ x))

    x = torch.randn(5, 4, generator=g, dtype=F64)
    ref = torch.stack([torch.autograd.functional.jacobian(fn, xi).square().sum() for xi in x])
    torch.testing.assert_close(sensitivity_density(fn, x), ref)
    torch.testing.assert_close(sensitivity_density(fn, x, chunk_size=2), ref)


def _selective_scan_states(u, delta, A, B):
    """All states h_t (batch, dim, N, L) of h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t (Mamba reference)."""
    batch, dim, L = u.shape
    grouped = B.dim() == 4
    N = A.shape[1]
    h = torch.zeros(batch, dim, N, dtype=u.dtype)
    out = []
    for t in range(L):
        Bt = B[..., t]
        if grouped:
            Bt = Bt.repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N)
        else:
            Bt = Bt[:, None, :]
        h = torch.exp(delta[..., t, None] * A) * h + delta[..., t, None] * Bt * u[..., t, None]
        out.append(h)
    return torch.stack(out, -1)


@pytest.mark.parametrize("groups", [None, 1, 2, 4])
def test_ssm_density_equals_autograd_of_the_scan(groups):
    g = _gen(2)
    batch, dim, N, L = 2, 4, 3, 5
    u = torch.randn(batch, dim, L, generator=g, dtype=F64)
    delta = torch.nn.functional.softplus(torch.randn(batch, dim, L, generator=g, dtype=F64))
    A = -torch.rand(dim, N, generator=g, dtype=F64)
    shape = (batch, N, L) if groups is None else (batch, groups, N, L)
    B = torch.randn(*shape, generator=g, dtype=F64)
    J = jacrev(lambda uu: _selective_scan_states(uu, delta, A, B))(u)  # (b, dim, N, L, b, dim, L)
    ref = torch.stack(
        [torch.stack([J[b, :, :, t, b, :, t].square().sum() for t in range(L)]) for b in range(batch)]
    )
    torch.testing.assert_close(ssm_density(delta, B), ref, rtol=1e-12, atol=1e-12)


def test_ssm_density_equals_sensitivity_density_of_one_step():
    g = _gen(3)
    dim, N = 6, 4
    delta, Bt = torch.rand(dim, generator=g, dtype=F64), torch.randn(N, generator=g, dtype=F64)
    h_prev, A = torch.randn(dim, N, generator=g, dtype=F64), -torch.rand(dim, N, generator=g, dtype=F64)
    step = lambda u: torch.exp(delta[:, None] * A) * h_prev + delta[:, None] * Bt * u[:, None]  # noqa: E731
    rho = sensitivity_density(step, torch.randn(1, dim, generator=g, dtype=F64))
    torch.testing.assert_close(ssm_density(delta[None, :, None], Bt[None, :, None])[0], rho)


# ------------------------------------------------------------------ path length


def _categorical_geodesic(p, q, n):
    a, b = p.sqrt(), q.sqrt()
    theta = torch.arccos((a * b).sum())
    t = torch.linspace(0, 1, n, dtype=F64)[:, None]
    return ((torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)) ** 2


def test_path_length_of_categorical_geodesic():
    p, q = torch.tensor([0.05, 0.15, 0.3, 0.5], dtype=F64), torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=F64)
    D = categorical_distance(p, q)
    errs = {}
    for n in (100, 1000):
        P = _categorical_geodesic(p, q, n)
        field = path_length(P, lambda x: torch.diag_embed(1 / x))
        points = path_length(P, categorical_metric(P))
        errs[n] = float(abs(field - D) / D)
        if n == 1000:
            assert errs[n] < 1e-4
            assert float(abs(points - D) / D) < 1e-4
    assert errs[100] / errs[1000] > 50  # second order: 10× the points, ≈100× smaller error
    # Same curve through the isometry p ↦ 2√p onto the sphere of radius 2 (Euclidean ambient metric).
    P = _categorical_geodesic(p, q, 1000)
    assert float(path_length(2 * P.sqrt())) == pytest.approx(float(D), rel=1e-4)


def test_path_length_of_normal_geodesics():
    # Half-circle geodesic of the half-plane (x, y) = (μ/√2, σ), centre c on the axis, radius r.
    c, r = 0.3, 1.2
    phi = torch.linspace(0.4, 2.5, 1000, dtype=F64)
    curve = torch.stack([math.sqrt(2) * (c + r * torch.cos(phi)), r * torch.sin(phi)], -1)
    D = normal_distance(curve[0, 0], curve[0, 1], curve[-1, 0], curve[-1, 1])
    field = lambda z: normal_metric(z[..., 0], z[..., 1])  # noqa: E731
    assert float(abs(path_length(curve, field) - D) / D) < 1e-4
    assert float(abs(path_length(curve, normal_metric(curve[:, 0], curve[:, 1])) - D) / D) < 1e-4
    # geomstats' own geodesic between two other normals.
    space = NormalDistributions(sample_dim=1)
    a, b = np.array([-1.0, 0.4]), np.array([2.0, 1.7])
    pts = torch.tensor(space.metric.geodesic(a, b)(np.linspace(0, 1, 1000)), dtype=F64).reshape(1000, 2)
    assert float(path_length(pts, field)) == pytest.approx(space.metric.dist(a, b), rel=1e-4)


def test_path_length_euclidean_and_batched():
    g = _gen(4)
    ends = torch.randn(3, 2, 5, generator=g, dtype=F64)
    t = torch.linspace(0, 1, 11, dtype=F64)[:, None]
    lines = ends[:, :1] + t * (ends[:, 1:] - ends[:, :1])  # (3, 11, 5)
    torch.testing.assert_close(path_length(lines), (ends[:, 1] - ends[:, 0]).norm(dim=-1))
    assert path_length(lines[0]).shape == ()


@given(seed=st.integers(0, 10_000), bump=st.floats(0.0, 2.0))
def test_path_length_is_at_least_the_distance(seed, bump):
    # Every curve joining p and q is at least as long as the geodesic.
    g = _gen(seed)
    z0, z1, w = (torch.randn(5, generator=g, dtype=F64) for _ in range(3))
    t = torch.linspace(0, 1, 400, dtype=F64)[:, None]
    P = torch.softmax((1 - t) * z0 + t * z1 + bump * torch.sin(math.pi * t) * w, -1)
    L = path_length(P, lambda x: torch.diag_embed(1 / x))
    assert float(L) >= float(categorical_distance(P[0], P[-1])) * (1 - 1e-9)


# ------------------------------------------------------------------ bad input

_s = torch.randn(5, 3, dtype=F64)
_d = torch.rand(2, 4, 6, dtype=F64)
_B = torch.randn(2, 3, 6, dtype=F64)

BAD = [
    (lambda: sequence_density(_s[:1]), ValueError, "states must have shape"),
    (lambda: sequence_density(_s[0]), ValueError, "states must have at least 2"),
    (lambda: sequence_density(_s.tolist()), TypeError, "states must be a torch.Tensor"),
    (lambda: sequence_density(_s, torch.eye(3, dtype=F64).expand(3, 3, 3)), ValueError, "metrics must have shape"),
    (lambda: sequence_density(_s, torch.eye(3).expand(5, 3, 3)), TypeError, "metrics has dtype"),
    (lambda: sequence_density(_s, lambda x: x), ValueError, "metrics must map points"),
    (lambda: sequence_density(_s, lambda x: torch.full((*x.shape, 3), float("nan"), dtype=F64)), ValueError, "metrics output contains"),
    (lambda: sequence_density(torch.full((3, 2), float("inf"))), ValueError, "states contains"),
    (lambda: categorical_sequence_density(torch.tensor([[0.5, 0.6], [0.5, 0.5]], dtype=F64)), ValueError, "must sum to 1"),
    (lambda: categorical_sequence_density(torch.tensor([[-0.5, 1.5], [0.5, 0.5]], dtype=F64)), ValueError, "P must be non-negative"),
    (lambda: sensitivity_density(None, _s), TypeError, "fn must be callable"),
    (lambda: sensitivity_density(torch.sqrt, -_s.abs()), ValueError, "non-finite"),
    (lambda: sensitivity_density(torch.sin, _s, chunk_size=0), ValueError, "chunk_size must be >= 1"),
    (lambda: ssm_density(-_d, _B), ValueError, r"delta \(already softplus-ed\) must be >= 0"),
    (lambda: ssm_density(_d[0], _B), ValueError, "delta must have 3 dimensions"),
    (lambda: ssm_density(_d, _B[:, :, :5]), ValueError, "B must have shape"),
    (lambda: ssm_density(_d, torch.randn(2, 3, 3, 6, dtype=F64)), ValueError, "must divide dim"),
    (lambda: ssm_density(_d, _B.float()), TypeError, "B has dtype"),
    (lambda: ssm_density(_d, torch.empty(2, 3, 6, device="meta", dtype=F64)), ValueError, "B is on meta"),
    (lambda: path_length(_s, torch.eye(3, dtype=F64).expand(4, 3, 3)), ValueError, "one metric per point"),
    (lambda: path_length(_s, -torch.eye(3, dtype=F64).expand(5, 3, 3)), ValueError, "not positive semi-definite"),
    (lambda: path_length(_s, lambda x: torch.eye(2, dtype=F64)), ValueError, "metric must map points"),
    (lambda: path_length(_s[:1]), ValueError, "n ≥ 2"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
