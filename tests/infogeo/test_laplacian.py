"""Laplace-Beltrami estimates: structure, a float64 dense reference, sphere spectra l(l+1)."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from infogeo.graph import TokenGraph
from infogeo.laplacian import GraphLaplacian, default_bandwidth, laplacian, laplacian_spectrum

SPHERE = np.array([0, 2, 2, 2, 6, 6, 6, 6, 6], dtype=float)  # l(l+1), multiplicities 1, 3, 5


def _sphere(n: int, seed: int = 0, tilt: float = 0.0) -> torch.Tensor:
    """n points on the unit sphere with density proportional to 1 + tilt * z (rejection sampling)."""
    g = torch.Generator().manual_seed(seed)
    out, have = [], 0
    while have < n:
        x = torch.randn(4 * n, 3, generator=g, dtype=torch.float64)
        x = x / x.norm(dim=1, keepdim=True)
        u = torch.rand(4 * n, generator=g, dtype=torch.float64) * (1 + tilt)
        keep = x[u < 1 + tilt * x[:, 2]]
        out.append(keep)
        have += len(keep)
    return torch.cat(out)[:n]


def _fibonacci(n: int) -> torch.Tensor:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return torch.tensor(np.stack([r * np.cos(phi), r * np.sin(phi), z], 1))


def _split(vals: np.ndarray) -> float:
    """Relative spread of the l = 1 triplet."""
    t = vals[1:4]
    return float((t.max() - t.min()) / t.mean())


def _maxrel(vals: np.ndarray) -> float:
    return float(np.max(np.abs(vals[1:] - SPHERE[1:]) / SPHERE[1:]))


@pytest.mark.parametrize("kind,alpha", [("belkin_niyogi", 0.0), ("diffusion", 0.0), ("diffusion", 0.5), ("diffusion", 1.0)])
def test_matches_dense_float64_formula(kind, alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, generator=g, dtype=torch.float64)
    graph = TokenGraph.from_points(x, k=8, sequence_edges=False)
    lap = laplacian(graph, kind=kind, alpha=alpha, bandwidth=0.7)
    # Independent dense recomputation: kernel on the kNN pattern from pairwise distances.
    d = cdist(x.numpy(), x.numpy())
    mask = graph.adjacency.toarray() > 0
    W = np.where(mask, np.exp(-(d / 0.7) ** 2), 0.0)
    t = 0.7**2 / 4
    if kind == "diffusion":
        q = W.sum(1) ** alpha
        W = W / np.outer(q, q)
    D = W.sum(1)
    P = W / D[:, None]
    if kind == "diffusion":
        ref = (np.eye(80) - P) / t  # random-walk form (I - D^-1 W) / t
    else:
        ref = (np.diag(D) - W) / (t * D.mean())
    got = lap.stiffness.toarray() / lap.mass[:, None]
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    A = lap.stiffness
    assert abs(A - A.T).max() == 0
    np.testing.assert_allclose(np.asarray(A.sum(1)).ravel(), 0, atol=1e-9)
    assert (lap.mass > 0).all() and lap.mass.mean() == pytest.approx(1.0)
    f = np.random.default_rng(0).standard_normal(80)
    np.testing.assert_allclose(lap.apply(f), ref @ f, rtol=1e-9, atol=1e-9)
    assert lap.dirichlet_energy(f) == pytest.approx(f @ (A @ f))
    assert lap.dirichlet_energy(f) > 0
    lam_max = np.linalg.eigvals(ref).real.max()
    assert lap.max_eigenvalue_bound() >= lam_max * (1 - 1e-12)


def test_bandwidth_rule():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    graph = TokenGraph.from_points(x, k=12, sequence_edges=False)
    d = np.sort(cdist(x.numpy(), x.numpy()), axis=1)[:, 12]  # column 0 is self
    assert default_bandwidth(graph) == pytest.approx(np.median(d) / 3, rel=1e-12)
    assert laplacian(graph).bandwidth == pytest.approx(np.median(d) / 3, rel=1e-12)
    # An outlier far from a tight cluster raises the bandwidth so that its row cannot underflow.
    y = torch.cat([0.01 * x, torch.tensor([[5.0, 0.0, 0.0]], dtype=torch.float64)])
    gy = TokenGraph.from_points(y, k=12, sequence_edges=False)
    dy = cdist(y.numpy(), y.numpy())
    np.fill_diagonal(dy, np.inf)
    assert default_bandwidth(gy) == pytest.approx(dy.min(1).max() / 15, rel=1e-12)
    lap = laplacian(gy)
    assert np.isfinite(lap.stiffness.data).all() and (lap.mass > 0).all()


def test_sphere_spectrum_fast():
    """3,000 uniform points: the first nine eigenvalues within 5% of 0, 2 (x3), 6 (x5)."""
    vals, vecs = laplacian_spectrum(_sphere(3000), 9, k=100, method="lobpcg")
    assert abs(vals[0]) < 1e-8
    assert _maxrel(vals) < 0.05
    # Multiplicity: the gap between l = 1 and l = 2 blocks dwarfs the spread inside them.
    assert vals[4] - vals[3] > 5 * (vals[3] - vals[1])


@pytest.mark.slow
def test_sphere_spectrum_8000():
    """The issue's test: 8,000 uniform points, first nine eigenvalues within 5% of l(l+1).

    10-15 s on an idle 2-core machine, over 30 s when shared: slow-marked; the 3,000-point test
    above asserts the same 5% in the fast suite.
    """
    vals, _ = laplacian_spectrum(_sphere(8000), 9, k=200, method="lobpcg")
    assert _maxrel(vals) < 0.05


def _tilted_spectra(n: int, k: int):
    """The diffusion spectra (alpha = 1, alpha = 0) of n points on the sphere with density 1 + 0.8 z."""
    graph = TokenGraph.from_points(_sphere(n, tilt=0.8), k=k, sequence_edges=False)
    return tuple(laplacian_spectrum(graph, 9, kind="diffusion", alpha=a, method="lobpcg")[0] for a in (1.0, 0.0))


def test_nonuniform_density_fast():
    """Density 1 + 0.8 z: alpha = 1 keeps the l = 1 triplet together, alpha = 0 splits it."""
    v1, v0 = _tilted_spectra(3000, 100)
    assert _maxrel(v1) < 0.12 and _split(v1) < 0.1
    assert _split(v0) > 0.3 and _maxrel(v0) > 0.25


@pytest.mark.slow
def test_nonuniform_density_8000():
    v1, v0 = _tilted_spectra(8000, 200)
    assert _maxrel(v1) < 0.05 and _split(v1) < 0.05
    assert _split(v0) > 0.3


def test_belkin_niyogi_quasi_uniform():
    """On a quasi-uniform (Fibonacci) sample BN agrees with diffusion maps and converges as k grows."""
    x = _fibonacci(3000)
    errs = []
    for k in (100, 150):
        graph = TokenGraph.from_points(x, k=k, sequence_edges=False)
        bn, _ = laplacian_spectrum(graph, 9, kind="belkin_niyogi", method="lobpcg")
        dm, _ = laplacian_spectrum(graph, 9, kind="diffusion", alpha=1.0, method="lobpcg")
        np.testing.assert_allclose(bn[1:], dm[1:], rtol=5e-3)
        assert _split(bn) < 1e-3  # exact multiplicity 3 on this symmetric sample
        errs.append(_maxrel(bn))
    assert errs[1] < errs[0] < 0.11 and errs[1] < 0.07


def test_solvers_agree_and_m_orthonormal():
    x = _sphere(1500, seed=3)
    lap = laplacian(x, k=60)
    a, fa = laplacian_spectrum(lap, 6, method="lobpcg")
    b, fb = laplacian_spectrum(lap, 6, method="shift_invert")
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fa.T @ (lap.mass[:, None] * fa), np.eye(6), atol=1e-6)
    # Residual of the generalised problem A f = lambda M f.
    res = lap.stiffness @ fb - lap.mass[:, None] * fb * b[None]
    assert np.abs(res).max() < 1e-5 * b.max()


def test_bad_input():
    x = torch.randn(50, 2, dtype=torch.float64)
    graph = TokenGraph.from_points(x, k=5)
    for bw in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="bandwidth"):
            laplacian(graph, bandwidth=bw)
    with pytest.raises(ValueError, match="too small"):
        laplacian(graph, bandwidth=1e-6)
    with pytest.raises(ValueError, match="alpha must lie in"):
        laplacian(graph, alpha=1.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        laplacian(graph, kind="cotangent")
    with pytest.raises(TypeError, match="TokenGraph"):
        laplacian(x.numpy())
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        laplacian(bad, k=5)
    with pytest.raises(ValueError, match="k \\+ 1"):
        laplacian(x[:5], k=5)
    with pytest.raises(ValueError, match="n_eigs must be <="):
        laplacian_spectrum(graph, 50)
    with pytest.raises(ValueError, match="method must be one of"):
        laplacian_spectrum(graph, 3, method="arpack")
    lap = laplacian(graph)
    with pytest.raises(ValueError, match="only used"):
        laplacian_spectrum(lap, 3, kind="diffusion")
    split = torch.cat([torch.zeros(10, 2), 100 + torch.zeros(10, 2)]).double() + 0.01 * torch.randn(20, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="connected components"):
        laplacian_spectrum(TokenGraph.from_points(split, k=3, sequence_edges=False), 3)
    assert isinstance(lap, GraphLaplacian)
