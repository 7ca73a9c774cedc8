"""Ollivier-Ricci and Forman-Ricci curvature: literature closed forms, an LP reference, manifolds."""
import networkx as nx
import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from infogeo.curvature import forman_ricci, node_curvature, ollivier_ricci
from infogeo.graph import TokenGraph


def _graph(g: nx.Graph) -> tuple[TokenGraph, list]:
    nodes = list(g.nodes())
    return TokenGraph.from_adjacency(nx.to_scipy_sparse_array(g, nodelist=nodes, weight=None)), nodes


@pytest.mark.parametrize("n", [3, 4, 5, 8])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_complete_graph(n, alpha):
    # m_x and m_y differ only at x and y, by |alpha - (1 - alpha)/(n - 1)|, at distance 1.
    G, _ = _graph(nx.complete_graph(n))
    np.testing.assert_allclose(ollivier_ricci(G, alpha), 1 - abs(alpha - (1 - alpha) / (n - 1)), atol=1e-12)


@pytest.mark.parametrize("n,k0,k_half", [(3, 0.5, 0.75), (4, 0.0, 0.5), (5, 0.0, 0.25), (6, 0.0, 0.0), (11, 0.0, 0.0)])
def test_cycles(n, k0, k_half):
    # alpha = 0: direct couplings; alpha = 1/2: (1 - alpha) * Lin-Lu-Yau (3/2, 1, 1/2, 0).
    G, _ = _graph(nx.cycle_graph(n))
    np.testing.assert_allclose(ollivier_ricci(G, 0.0), k0, atol=1e-12)
    np.testing.assert_allclose(ollivier_ricci(G, 0.5), k_half, atol=1e-12)


@pytest.mark.parametrize("tree", [nx.balanced_tree(3, 2), nx.balanced_tree(2, 3), nx.star_graph(5), nx.path_graph(7)])
def test_trees(tree):
    G, nodes = _graph(tree)
    deg = G.degrees()
    e = G.edges()
    dx, dy = deg[e[:, 0]], deg[e[:, 1]]
    # Jost-Liu (alpha = 0): -2 (1 - 1/dx - 1/dy)_+ ; Lin-Lu-Yau (alpha = 1/2): 1/dx + 1/dy - 1.
    np.testing.assert_allclose(ollivier_ricci(G, 0.0), -2 * np.maximum(0, 1 - 1 / dx - 1 / dy), atol=1e-12)
    np.testing.assert_allclose(ollivier_ricci(G, 0.5), 1 / dx + 1 / dy - 1, atol=1e-12)
    np.testing.assert_allclose(forman_ricci(G, weighted=False), 4 - dx - dy)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_grid(alpha):
    G, nodes = _graph(nx.grid_2d_graph(7, 7))
    deg = G.degrees()
    e = G.edges()
    kappa = ollivier_ricci(G, alpha)
    # Edges whose endpoints and their neighbours are interior behave as in Z^2: kappa = 0.
    inner = np.array([all(1 <= c <= 5 for c in nodes[i]) and all(1 <= c <= 5 for c in nodes[j]) for i, j in e])
    np.testing.assert_allclose(kappa[inner], 0.0, atol=1e-12)
    assert inner.sum() == 2 * 5 * 4
    np.testing.assert_allclose(forman_ricci(G, weighted=False), 4 - deg[e[:, 0]] - deg[e[:, 1]])
    # Flat discrete torus: every edge has kappa = 0 and F = -4.
    T, _ = _graph(nx.grid_2d_graph(6, 6, periodic=True))
    np.testing.assert_allclose(ollivier_ricci(T, alpha), 0.0, atol=1e-12)
    np.testing.assert_allclose(forman_ricci(T), -4.0)


def _lp_ollivier(g: nx.Graph, x, y, alpha: float) -> float:
    """Independent reference: networkx distances and scipy's LP for W1."""
    dist = dict(nx.all_pairs_dijkstra_path_length(g))

    def measure(v):
        nb = list(g.neighbors(v))
        pts = ([v] if alpha > 0 else []) + nb
        return pts, np.array(([alpha] if alpha > 0 else []) + [(1 - alpha) / len(nb)] * len(nb))

    (sx, a), (sy, b) = measure(x), measure(y)
    C = np.array([[dist[u][v] for v in sy] for u in sx])
    p, q = len(sx), len(sy)
    A_eq = np.zeros((p + q, p * q))
    for i in range(p):
        A_eq[i, i * q : (i + 1) * q] = 1
    for j in range(q):
        A_eq[p + j, j::q] = 1
    res = linprog(C.ravel(), A_eq=A_eq, b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs")
    return 1 - res.fun / dist[x][y]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_against_linear_programming(seed):
    rng = np.random.default_rng(seed)
    g = nx.connected_watts_strogatz_graph(40, 4, 0.3, seed=seed)
    for u, v in g.edges():
        g[u][v]["weight"] = float(rng.uniform(0.2, 2.0))
    nodes = list(g.nodes())
    G = TokenGraph.from_adjacency(nx.to_scipy_sparse_array(g, nodelist=nodes, weight="weight"))
    for alpha in (0.0, 0.5):
        kappa = ollivier_ricci(G, alpha, batch_size=7)
        ref = [_lp_ollivier(g, nodes[i], nodes[j], alpha) for i, j in G.edges()]
        np.testing.assert_allclose(kappa, ref, atol=1e-9)
    # Weighted Forman: 4 - sqrt(w_e) (sum_{e' at u} w_e'^-1/2 + sum_{e' at v} w_e'^-1/2).
    ref_f = []
    for i, j in G.edges():
        u, v = nodes[i], nodes[j]
        w = g[u][v]["weight"]
        s = sum(g[u][t]["weight"] ** -0.5 for t in g[u]) + sum(g[v][t]["weight"] ** -0.5 for t in g[v])
        ref_f.append(4 - w**0.5 * s)
    np.testing.assert_allclose(forman_ricci(G), ref_f, rtol=1e-12)


def test_node_curvature():
    G, _ = _graph(nx.star_graph(4))  # centre 0, leaves 1..4
    kappa = ollivier_ricci(G, 0.5)  # every edge: 1/4 + 1/1 - 1 = 1/4
    nc = node_curvature(kappa, G)
    np.testing.assert_allclose(nc, 0.25)
    f = forman_ricci(G, weighted=False)  # 4 - 4 - 1 = -1
    np.testing.assert_allclose(node_curvature(f, G), -1.0)
    # An isolated node has no incident edge: nan.
    iso = nx.path_graph(3)
    iso.add_node(3)
    Gi, _ = _graph(iso)
    nci = node_curvature(ollivier_ricci(Gi, 0.0), Gi)
    assert np.isnan(nci[3]) and np.isfinite(nci[:3]).all()
    path, _ = _graph(nx.path_graph(4))
    vals = np.array([1.0, 2.0, 4.0])  # edges (0,1), (1,2), (2,3)
    np.testing.assert_allclose(node_curvature(vals, path), [1.0, 1.5, 3.0, 4.0])


def _manifold_curvatures(seed: int, density: float = 20.0, k: int = 20):
    """Mean node curvature (alpha = 0) on the unit sphere, a flat torus and the hyperbolic plane.

    Equal intrinsic density (points per unit area) and k, so the sampling bias is shared.
    """
    g = torch.Generator().manual_seed(seed)
    n = int(density * 4 * np.pi)
    s = torch.randn(n, 3, generator=g, dtype=torch.float64)
    s = s / s.norm(dim=1, keepdim=True)
    r = np.sqrt(4 * np.pi) / (2 * np.pi)  # Clifford torus in R^4: intrinsically flat, area 4 pi
    th = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 * np.pi
    t = r * torch.cat([th[:, :1].cos(), th[:, :1].sin(), th[:, 1:].cos(), th[:, 1:].sin()], 1)
    # Poincare disk (curvature -1), uniform in hyperbolic area on the geodesic disk of radius R.
    R = 2.5
    nh = int(density * 4 * np.pi * np.sinh(R / 2) ** 2)
    u = torch.rand(nh, generator=g, dtype=torch.float64)
    rho = torch.acosh(1 + u * (np.cosh(R) - 1))
    ph = torch.rand(nh, generator=g, dtype=torch.float64) * 2 * np.pi
    rad = torch.tanh(rho / 2)
    z = torch.stack([rad * ph.cos(), rad * ph.sin()], 1)
    metric = (4 / (1 - rad**2) ** 2)[:, None, None] * torch.eye(2, dtype=torch.float64)
    out = {}
    for name, pts, met in (("sphere", s, None), ("torus", t, None), ("hyperbolic", z, metric)):
        G = TokenGraph.from_points(pts, k=k, metric=met, sequence_edges=False)
        out[name] = node_curvature(ollivier_ricci(G, 0.0), G)
    out["hyperbolic"] = out["hyperbolic"][(rho < R - 1).numpy()]  # away from the boundary
    return {key: (v.mean(), v.std() / np.sqrt(len(v))) for key, v in out.items()}


def test_sampled_manifolds_order_sphere_torus_hyperbolic():
    c = _manifold_curvatures(seed=0)
    (ks, es), (kt, et), (kh, eh) = c["sphere"], c["torus"], c["hyperbolic"]
    # Differences from the flat baseline have the sign of the curvature, by > 4 standard errors.
    assert ks - kt > 4 * np.hypot(es, et)
    assert kt - kh > 4 * np.hypot(et, eh)


def test_bad_input():
    G, _ = _graph(nx.cycle_graph(5))
    with pytest.raises(ValueError, match="alpha must lie in"):
        ollivier_ricci(G, 1.0)
    with pytest.raises(ValueError, match="alpha must lie in"):
        ollivier_ricci(G, -0.1)
    with pytest.raises(TypeError, match="TokenGraph"):
        forman_ricci(nx.cycle_graph(5))
    with pytest.raises(ValueError, match="shape \\(5,\\)"):
        node_curvature(np.zeros(4), G)
    with pytest.raises(ValueError, match="NaN/Inf"):
        node_curvature(np.full(5, np.nan), G)
