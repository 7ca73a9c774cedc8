"""TokenGraph: kNN exactness, edge lengths under each metric, connectivity, bad input."""
import math

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist

from infogeo.graph import TokenGraph, knn


def _brute_knn(x: np.ndarray, k: int) -> np.ndarray:
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("method,n,d", [("dense", 300, 5), ("blocked", 3000, 40), ("kdtree", 3000, 3)])
def test_knn_exact_against_brute_force(method, n, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    idx, dist = knn(x, 7, method=method)
    ref = _brute_knn(x.numpy(), 7)
    np.testing.assert_allclose(np.sort(dist, axis=1), ref, rtol=1e-5, atol=1e-6)
    # The returned indices realise the returned distances and never include self.
    assert not (idx == np.arange(n)[:, None]).any()
    np.testing.assert_allclose(np.linalg.norm(x.numpy()[idx] - x.numpy()[:, None], axis=-1), dist, rtol=1e-5, atol=1e-6)


def test_knn_duplicate_points_exclude_self():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    idx, dist = knn(x, 2, method="kdtree")
    assert not (idx == np.arange(5)[:, None]).any()
    np.testing.assert_allclose(dist[:3], 0.0)


def test_euclidean_graph_edges_and_lengths():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    G = TokenGraph.from_points(x, k=5)
    A = G.adjacency
    assert isinstance(A, sp.csr_matrix) and G.n == 200
    assert abs(A - A.T).max() == 0
    xn = x.numpy()
    # Every kNN edge and every sequence edge is present, with the Euclidean length.
    d = cdist(xn, xn)
    np.fill_diagonal(d, np.inf)
    nbr = np.argsort(d, axis=1)[:, :5]
    for i in range(200):
        for j in nbr[i]:
            assert A[i, j] == pytest.approx(d[i, j], rel=1e-12)
        if i + 1 < 200:
            assert A[i, i + 1] == pytest.approx(d[i, i + 1], rel=1e-12)
    # No other edges: count equals the union of kNN pairs and sequence pairs.
    pairs = {tuple(sorted((i, int(j)))) for i in range(200) for j in nbr[i]} | {(i, i + 1) for i in range(199)}
    assert G.n_edges == len(pairs)
    e = G.edges()
    assert set(map(tuple, e.tolist())) == pairs
    np.testing.assert_allclose(G.edge_lengths(), d[e[:, 0], e[:, 1]], rtol=1e-12)


def test_fisher_rao_lengths_closed_form_and_float32_stability():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(100, 6, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    G = TokenGraph.from_points(p, k=4, kind="fisher_rao")
    e, ell = G.edges(), G.edge_lengths()
    pn = p.numpy()
    bc = np.sqrt(pn[e[:, 0]] * pn[e[:, 1]]).sum(-1)
    np.testing.assert_allclose(ell, 2 * np.arccos(np.clip(bc, -1, 1)), rtol=1e-6, atol=1e-7)
    # Neighbours under Fisher-Rao are the Euclidean neighbours of sqrt(p) (monotone map).
    fr = 2 * np.arccos(np.clip(np.sqrt(pn[:, None] * pn[None]).sum(-1), -1, 1))
    np.fill_diagonal(fr, np.inf)
    for i in range(100):
        for j in np.argsort(fr[i])[:4]:
            assert G.adjacency[i, j] > 0
    # float32: nearby distributions keep their small distance (arccos would give ~1e-3 noise).
    q = torch.softmax(logits[:40].float(), -1)
    q2 = torch.softmax(logits[:40].float() + 1e-4 * torch.randn(40, 6, generator=g), -1)
    x32 = torch.cat([q, q2])
    G32 = TokenGraph.from_points(x32, k=1, kind="fisher_rao", sequence_edges=False)
    ref = 4 * np.arcsin(np.linalg.norm(np.sqrt(q.double().numpy()) - np.sqrt(q2.double().numpy()), axis=1) / 2)
    got = np.array([G32.adjacency[i, i + 40] for i in range(40)])
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-6)


def test_metric_tensor_midpoint_rule():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    B = torch.randn(60, 3, 3, generator=g, dtype=torch.float64)
    metric = B @ B.transpose(1, 2) + 0.1 * torch.eye(3, dtype=torch.float64)
    G = TokenGraph.from_points(x, k=4, metric=metric)
    assert G.kind == "metric"
    e, ell = G.edges(), G.edge_lengths()
    for (i, j), l in zip(e, ell):
        dx = (x[j] - x[i]).numpy()
        gbar = 0.5 * (metric[i] + metric[j]).numpy()
        assert l == pytest.approx(math.sqrt(dx @ gbar @ dx), rel=1e-10)


def test_pullback_metric_callable_matches_explicit_metric():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(7, 3, generator=g, dtype=torch.float64)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    fn = lambda h: W @ h  # noqa: E731  (logits of a linear softmax model)
    G = TokenGraph.from_points(x, k=3, metric=fn)
    e, ell = G.edges(), G.edge_lengths()
    for (i, j), l in zip(e[:40], ell[:40]):
        mid = 0.5 * (x[i] + x[j])
        p = torch.softmax(W @ mid, -1)
        Gm = W.T @ (torch.diag(p) - torch.outer(p, p)) @ W
        dx = x[j] - x[i]
        assert l == pytest.approx(float(dx @ Gm @ dx) ** 0.5, rel=1e-9)


def test_components_and_networkx():
    x = torch.cat([torch.zeros(10, 2), torch.ones(10, 2) * 100]).double() + 0.01 * torch.randn(20, 2, dtype=torch.float64)
    G = TokenGraph.from_points(x, k=3, sequence_edges=False)
    n_comp, labels = G.components()
    assert n_comp == 2 and len(set(labels[:10])) == 1 and labels[0] != labels[10]
    with pytest.raises(ValueError, match="2 connected components"):
        G.check_connected()
    sub = G.subgraph(labels == labels[0])
    assert sub.n == 10 and sub.components()[0] == 1
    G2 = TokenGraph.from_points(x, k=3, sequence_edges=True)
    G2.check_connected()
    nxg = G2.to_networkx()
    assert nxg.number_of_nodes() == 20 and nxg.number_of_edges() == G2.n_edges
    assert nx.is_connected(nxg)
    i, j = G2.edges()[0]
    assert nxg[i][j]["weight"] == G2.adjacency[i, j]


def test_from_adjacency_roundtrip_and_validation():
    nxg = nx.petersen_graph()
    G = TokenGraph.from_adjacency(nx.to_scipy_sparse_array(nxg, weight=None))
    assert G.n == 10 and G.n_edges == 15 and (G.degrees() == 3).all()
    with pytest.raises(ValueError, match="symmetric"):
        TokenGraph.from_adjacency(np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        TokenGraph.from_adjacency(np.array([[0.0, -1.0], [-1.0, 0.0]]))


def test_bad_input():
    x = torch.randn(20, 3, dtype=torch.float64)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        TokenGraph.from_points(bad, k=3)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        TokenGraph.from_points(bad, k=3)
    with pytest.raises(ValueError, match="k \\+ 1"):
        TokenGraph.from_points(x[:4], k=4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        TokenGraph.from_points(x, k=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        TokenGraph.from_points(x.numpy(), k=3)
    with pytest.raises(ValueError, match="2 dimensions"):
        TokenGraph.from_points(x[0], k=3)
    with pytest.raises(ValueError, match="kind must be one of"):
        TokenGraph.from_points(x, k=3, kind="cosine")
    with pytest.raises(ValueError, match="non-negative"):
        TokenGraph.from_points(torch.full((20, 3), -1.0, dtype=torch.float64), k=3, kind="fisher_rao")
    with pytest.raises(ValueError, match="sum to 1"):
        TokenGraph.from_points(torch.full((20, 3), 0.5, dtype=torch.float64), k=3, kind="fisher_rao")
    # Zeros are allowed (closed simplex): distance between disjoint supports is pi.
    onehot = torch.eye(3, dtype=torch.float64).repeat(7, 1)[:20]
    G = TokenGraph.from_points(onehot, k=7, kind="fisher_rao", sequence_edges=False)
    assert np.isclose(G.edge_lengths().max(), np.pi)
    with pytest.raises(ValueError, match="needs metric"):
        TokenGraph.from_points(x, k=3, kind="metric")
    with pytest.raises(ValueError, match="metric must have shape"):
        TokenGraph.from_points(x, k=3, metric=torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="only used with"):
        TokenGraph.from_points(x, k=3, kind="euclidean", metric=torch.eye(3, dtype=torch.float64).expand(20, 3, 3))
    neg = -torch.eye(3, dtype=torch.float64).expand(20, 3, 3).clone()
    with pytest.raises(ValueError, match="positive semi-definite"):
        TokenGraph.from_points(x, k=3, metric=neg)
    with pytest.raises(ValueError, match="method must be one of"):
        knn(x, 3, method="annoy")
