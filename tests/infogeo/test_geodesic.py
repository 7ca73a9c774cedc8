"""Graph geodesics converge to the closed-form distances on the sphere and the normal manifold."""
import networkx as nx
import numpy as np
import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere
from geomstats.information_geometry.normal import UnivariateNormalDistributions

from infogeo.fisher import normal_metric
from infogeo.geodesic import geodesic_distances, geodesic_path, path_length
from infogeo.graph import TokenGraph


def _sphere(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def _relative_error(d: np.ndarray, metric, points: np.ndarray, src, targets, floor: float) -> float:
    """Mean |d − d_ref| / d_ref of the graph distances ``d`` (src × targets) against geomstats' closed-form
    ``metric.dist``, over the pairs farther apart than ``floor`` (near pairs are dominated by the step size)."""
    ref = np.stack([metric.dist(np.broadcast_to(points[s], points[targets].shape), points[targets]) for s in src])
    far = ref > floor
    return float(np.mean(np.abs(d[far] - ref[far]) / ref[far]))


def _sphere_error(n: int, k: int) -> float:
    x = _sphere(n, 0)
    G = TokenGraph.from_points(x, k=k, sequence_edges=False)
    src = np.arange(15)
    return _relative_error(geodesic_distances(G, src), Hypersphere(dim=2).metric, x.numpy(), src, slice(None), 0.5)


def test_sphere_geodesics_converge_to_great_circles():
    # Consistency needs k -> infinity with k/n -> 0 (error model in infogeo.geodesic).
    small, large = _sphere_error(500, 12), _sphere_error(4000, 30)
    assert small < 0.05
    assert large < 0.01
    assert large < 0.3 * small


def _normal_error(n: int, k: int) -> float:
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 1.5
    sigma = 0.6 + 1.2 * torch.rand(n, generator=g, dtype=torch.float64)
    G = TokenGraph.from_points(torch.stack([mu, sigma], 1), k=k, metric=normal_metric(mu, sigma), sequence_edges=False)
    # Pairs in an inner box whose Fisher-Rao geodesics (half-ellipses) stay inside the sample.
    inner = np.flatnonzero((mu.abs() < 0.5).numpy() & (sigma > 0.8).numpy() & (sigma < 1.25).numpy())
    src = inner[:15]
    return _relative_error(geodesic_distances(G, src)[:, inner], UnivariateNormalDistributions().metric,
                           torch.stack([mu, sigma], 1).numpy(), src, inner, 0.3)


def test_normal_manifold_geodesics_converge_to_fisher_rao():
    small, large = _normal_error(500, 12), _normal_error(4000, 30)
    assert small < 0.1
    assert large < 0.02
    assert large < 0.3 * small


def test_against_networkx_and_paths():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    G = TokenGraph.from_points(x, k=4)
    nxg = G.to_networkx()
    D = geodesic_distances(G)
    assert D.shape == (300, 300)
    ref = nx.single_source_dijkstra_path_length(nxg, 7)
    np.testing.assert_allclose([D[7, j] for j in range(300)], [ref[j] for j in range(300)], rtol=1e-12)
    row = geodesic_distances(G, 7)
    np.testing.assert_allclose(row, D[7])
    assert geodesic_distances(G, [7, 9]).shape == (2, 300)
    path = geodesic_path(G, 7, 250)
    assert path[0] == 7 and path[-1] == 250
    assert path_length(G, path) == pytest.approx(D[7, 250], rel=1e-12)
    assert path_length(G, path) == pytest.approx(nx.dijkstra_path_length(nxg, 7, 250), rel=1e-12)
    assert geodesic_path(G, 3, 3) == [3]


def test_disconnected_and_bad_input():
    x = torch.cat([torch.zeros(10, 2), 100 + torch.zeros(10, 2)]).double() + 0.01 * torch.randn(20, 2, dtype=torch.float64)
    G = TokenGraph.from_points(x, k=3, sequence_edges=False)
    D = geodesic_distances(G, 0)
    assert np.isfinite(D[:10]).all() and np.isinf(D[10:]).all()
    with pytest.raises(ValueError, match="different connected components"):
        geodesic_path(G, 0, 15)
    with pytest.raises(ValueError, match="sources must lie in"):
        geodesic_distances(G, [0, 20])
    with pytest.raises(TypeError, match="integer"):
        geodesic_distances(G, [0.5])
    with pytest.raises(TypeError, match="TokenGraph"):
        geodesic_distances(np.eye(3))
    with pytest.raises(ValueError, match="not adjacent"):
        path_length(G, [0, 15])
    with pytest.raises(ValueError, match="i must be <="):
        geodesic_path(G, 20, 0)
