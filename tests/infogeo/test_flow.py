"""Resolution flow: energy decrease, box constraint, optimality, closed forms, bad input."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from infogeo.flow import FlowResult, resolution_flow
from infogeo.graph import TokenGraph
from infogeo.laplacian import laplacian


@st.composite
def _problem(draw):
    n = draw(st.integers(8, 60))
    d = draw(st.integers(1, 3))
    k = draw(st.integers(1, min(6, n - 1)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = draw(st.floats(0.0, 20.0))
    rho = scale * torch.rand(n, generator=g, dtype=torch.float64) ** draw(st.floats(0.5, 4.0))
    kind = draw(st.sampled_from(["belkin_niyogi", "diffusion"]))
    alpha = draw(st.sampled_from([0.0, 1.0]))
    return dict(
        graph=TokenGraph.from_points(x, k=k, sequence_edges=draw(st.booleans())),
        rho=rho,
        r_min=draw(st.floats(0.01, 1.0)),
        lam=draw(st.floats(0.0, 5.0)),
        mu=draw(st.floats(0.0, 10.0)),
        kind=kind,
        alpha=alpha,
        step_frac=draw(st.floats(0.1, 1.99)),
    )


@given(_problem())
def test_flow_invariants(p):
    # Bandwidth = longest edge: no kernel row can underflow on these tiny random graphs.
    lap = laplacian(p["graph"], kind=p["kind"], alpha=p["alpha"], bandwidth=p["graph"].edge_lengths().max())
    lip = 2 * float(p["rho"].max()) + p["lam"] * lap.max_eigenvalue_bound()
    step = p["step_frac"] / lip if lip > 0 else None
    res = resolution_flow(lap, p["rho"], r_min=p["r_min"], lam=p["lam"], mu=p["mu"], step=step, tol=1e-9, max_steps=20000)
    assert isinstance(res, FlowResult)
    R = res.R.numpy()
    # Box constraint.
    assert (R >= p["r_min"]).all() and (R <= 1.0).all()
    # Total energy E + lam/2 R^T A R never increases (up to rounding).
    total = res.total
    assert np.all(np.diff(total) <= 1e-10 * np.abs(total[:-1]).clip(min=1.0))
    # Recompute the final total energy from scratch in float64.
    rho, m = p["rho"].numpy(), lap.mass
    e = np.sum(m * (rho * (1 - R) ** 2 + p["mu"] * R))
    assert res.energy[-1] == pytest.approx(e, rel=1e-9, abs=1e-12)
    assert res.dirichlet[-1] == pytest.approx(R @ (lap.stiffness @ R), rel=1e-9, abs=1e-12)
    # Projected first-order optimality at the limit.
    if res.converged:
        G = -2 * rho * (1 - R) + p["mu"] + p["lam"] * (lap.stiffness @ R) / m
        np.testing.assert_allclose(G, res.gradient, rtol=1e-9, atol=1e-9)
        tol = 1e-6 * max(1.0, np.abs(G).max())
        interior = (R > p["r_min"] + 1e-7) & (R < 1 - 1e-7)
        assert np.all(np.abs(G[interior]) <= tol + 1e-8 / res.step)
        low, high = R <= p["r_min"] + 1e-12, R >= 1 - 1e-12  # both when r_min = 1 (a point box)
        assert np.all(G[low & ~high] >= -tol - 1e-8 / res.step)
        assert np.all(G[high & ~low] <= tol + 1e-8 / res.step)


def test_no_diffusion_closed_form():
    # lam = 0 decouples the nodes: R_i = clip(1 - mu / (2 rho_i), r_min, 1).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    rho = torch.rand(40, generator=g, dtype=torch.float64) * 4
    lap = laplacian(TokenGraph.from_points(x, k=5), kind="belkin_niyogi")
    res = resolution_flow(lap, rho, r_min=0.1, lam=0.0, mu=1.5, tol=1e-12)
    ref = np.clip(1 - 1.5 / (2 * rho.numpy()), 0.1, 1.0)
    assert res.converged
    np.testing.assert_allclose(res.R.numpy(), ref, atol=1e-10)
    # Belkin-Niyogi masses are 1: E is literally sum rho (1-R)^2 + mu sum R.
    R = res.R.numpy()
    assert res.energy[-1] == pytest.approx(np.sum(rho.numpy() * (1 - R) ** 2) + 1.5 * R.sum())


def test_diffusion_smooths_and_matches_linear_solve():
    # Unconstrained optimum (box inactive): (2 diag(m rho) + lam A) R = 2 m rho - mu m.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 2, generator=g, dtype=torch.float64)
    rho = 5 + 3 * torch.rand(80, generator=g, dtype=torch.float64)
    lap = laplacian(TokenGraph.from_points(x, k=6), kind="diffusion", alpha=1.0)
    res = resolution_flow(lap, rho, r_min=0.01, lam=0.05, mu=2.0, tol=1e-12, max_steps=200000)
    m, r = lap.mass, rho.numpy()
    M = 2 * np.diag(m * r) + 0.05 * lap.stiffness.toarray()
    ref = np.linalg.solve(M, 2 * m * r - 2.0 * m)
    assert (ref > 0.01).all() and (ref < 1).all()
    np.testing.assert_allclose(res.R.numpy(), ref, atol=1e-9)
    # More diffusion gives a smoother field (lower Dirichlet energy).
    smooth = resolution_flow(lap, rho, r_min=0.01, lam=0.5, mu=2.0, tol=1e-10, max_steps=200000)
    assert smooth.dirichlet[-1] < res.dirichlet[-1]


def test_dtype_device_and_graph_input():
    x = torch.randn(30, 2, dtype=torch.float64)
    rho = torch.rand(30, dtype=torch.float32)
    res = resolution_flow(TokenGraph.from_points(x, k=4), rho, r_min=0.2, lam=0.1, mu=0.3, kind="belkin_niyogi")
    assert res.R.dtype == torch.float32 and res.R.device == rho.device and res.R.shape == (30,)
    assert len(res.energy) == len(res.dirichlet) == len(res.total)


def test_bad_input():
    x = torch.randn(30, 2, dtype=torch.float64)
    lap = laplacian(TokenGraph.from_points(x, k=4))
    rho = torch.rand(30, dtype=torch.float64)
    for r_min in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="r_min"):
            resolution_flow(lap, rho, r_min=r_min, lam=0.1, mu=0.1)
    with pytest.raises(ValueError, match="density must be >= 0"):
        resolution_flow(lap, -rho, r_min=0.1, lam=0.1, mu=0.1)
    bad = rho.clone()
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        resolution_flow(lap, bad, r_min=0.1, lam=0.1, mu=0.1)
    with pytest.raises(ValueError, match="shape \\(30\\)"):
        resolution_flow(lap, rho[:10], r_min=0.1, lam=0.1, mu=0.1)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        resolution_flow(lap, rho, r_min=0.1, lam=-1.0, mu=0.1)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        resolution_flow(lap, rho, r_min=0.1, lam=0.1, mu=-1.0)
    with pytest.raises(ValueError, match="stability bound"):
        resolution_flow(lap, rho, r_min=0.1, lam=0.1, mu=0.1, step=1e6)
    with pytest.raises(ValueError, match="step must be > 0"):
        resolution_flow(lap, rho, r_min=0.1, lam=0.1, mu=0.1, step=0.0)
    with pytest.raises(TypeError, match="TokenGraph"):
        resolution_flow(lap.stiffness, rho, r_min=0.1, lam=0.1, mu=0.1)
    with pytest.raises(ValueError, match="only used"):
        resolution_flow(lap, rho, r_min=0.1, lam=0.1, mu=0.1, kind="diffusion")
