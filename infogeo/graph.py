"""The token graph: a sparse discretisation of the token manifold (seed 000 §3.1, seed 001 §3.1.1).

Tokens are points of the information manifold :math:`(\\mathcal M, g)` (seed 000 §3.1.1). The
graph joins every token to its ``k`` nearest neighbours (symmetrised: an edge exists when either
end lists the other) and, optionally, to its successor in the sequence, ``(t, t+1)``. Each edge
carries its length under the metric:

* ``kind="euclidean"``: :math:`\\ell_{ij} = \\|x_i - x_j\\|_2` (hidden states with the flat metric);
* ``kind="fisher_rao"``: rows are categorical distributions and
  :math:`\\ell_{ij} = 4\\arcsin(\\|\\sqrt{p_i}-\\sqrt{p_j}\\|/2)`, the closed-form Fisher–Rao
  distance (seed 000 §3.1.1 with :math:`f` categorical), computed by
  :func:`infogeo.fisher.categorical_distance`. This is the numerically stable form of
  :math:`2\\arccos\\sum\\sqrt{p q}`, which loses about 1e-3 near zero in float32;
* ``kind="metric"``: per-point metric tensors :math:`g_i` (``(n, d, d)``) and the midpoint rule
  :math:`\\ell_{ij} = \\sqrt{\\Delta x^\\top \\bar g\\,\\Delta x}`, :math:`\\bar g = (g_i+g_j)/2`
  (the value at the midpoint of the linear interpolant of :math:`g`, second-order accurate, the
  discrete form of the path length :math:`L(\\gamma)` of seed 000 §3.1.2 for a straight segment);
  or a pull-back metric given as a callable ``fn`` returning logits, for which
  :math:`\\Delta x^\\top G(\\bar x)\\Delta x = \\mathrm{Var}_p(J\\Delta x)` is evaluated at the
  midpoint :math:`\\bar x = (x_i + x_j)/2` by one JVP (:func:`infogeo.fisher.pullback_quadratic_form`),
  never forming :math:`G`.

Neighbours are selected with the Euclidean distance of the features (of :math:`\\sqrt p` for
``fisher_rao``, where it is exact because the Fisher–Rao distance is an increasing function of
:math:`\\|\\sqrt p - \\sqrt q\\|`). For ``kind="metric"`` this is a departure from the text: the
neighbour set is Euclidean and only the edge lengths follow :math:`g`; for smooth metrics and
small ``k`` the two neighbour sets differ only where :math:`g` is strongly anisotropic.

Returned objects are numpy/scipy (the graph algorithms are scipy's); inputs are torch tensors,
whose dtype and device are used for the edge-length arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from infogeo.checks import check_choice, check_int, check_precise, check_tensor
from infogeo.fisher import categorical_distance, pullback_quadratic_form

Tensor = torch.Tensor

_DENSE_MAX = 2048  # exact dense cdist below this many points; blocked search above
_BLOCK_ELEMS = 1 << 24  # rows-per-block * n for the blocked search (~64 MB in float32)
_KDTREE_MAX_DIM = 16  # cKDTree is fast in low dimension only
_METRIC_ELEMS = 1 << 25  # metric-tensor entries gathered per edge batch
_JVP_CHUNK = 256  # tokens per vmap chunk of the pull-back JVP (logits of vocabulary size each)


def check_coordinates(x: Tensor, name: str) -> None:
    """Coordinates small enough that squared distances stay finite: ``max|x| ≤ √(max float)/(2√d)``.

    Parameters
    ----------
    x : (..., d) floating coordinates.
    name : the argument's name, quoted in the error message.

    Raises
    ------
    ValueError
        A coordinate exceeds the bound (rescale the points).
    """
    limit = math.sqrt(torch.finfo(x.dtype).max) / (2.0 * math.sqrt(max(x.shape[-1], 1)))
    top = float(x.abs().max()) if x.numel() else 0.0
    if top > limit:
        raise ValueError(f"{name} has coordinates up to {top:.3g}; beyond {limit:.3g} squared distances overflow "
                         f"{x.dtype}: rescale the points")


def knn(x: Tensor, k: int, *, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours (self excluded) of the rows of ``x``.

    Parameters
    ----------
    x : ``(n, d)`` points (float32 or float64, finite), ``n ≥ k + 1``, ``d ≥ 1``.
    k : neighbours per point.
    method : ``"dense"`` (one ``torch.cdist``, small ``n`` only), ``"blocked"`` (``torch.cdist``
        over row blocks and ``topk``: memory ``O(block * n)``, never ``n x n``; runs on ``x``'s
        device), ``"kdtree"`` (scipy ``cKDTree``, best for ``d <= 16``) or ``"auto"`` (dense for
        ``n <= 2048``, else kdtree for ``d <= 16``, else blocked).

    Returns
    -------
    ``(indices (n, k) int64, distances (n, k) float64)``.

    Raises
    ------
    TypeError, ValueError
        ``x`` is not a finite (n, d) float32/float64 tensor, its coordinates overflow
        (:func:`check_coordinates`), ``n < k + 1``, or ``method`` is unknown.

    Notes
    -----
    All methods are exact; ties are broken arbitrarily.
    """
    check_tensor(x, "x", ndim=2)
    check_precise(x, "x")
    check_coordinates(x, "x")
    n, d = x.shape
    if d < 1:
        raise ValueError(f"x must have at least one coordinate per point, got shape {tuple(x.shape)}")
    k = check_int(k, "k", minimum=1)
    if n < k + 1:
        raise ValueError(f"need at least k + 1 = {k + 1} points for {k} neighbours, got n = {n}")
    check_choice(method, "method", ("auto", "dense", "blocked", "kdtree"))
    if method == "auto":
        method = "dense" if n <= _DENSE_MAX else ("kdtree" if d <= _KDTREE_MAX_DIM else "blocked")
    if method == "kdtree":
        pts = x.detach().cpu().double().numpy()
        dist, idx = cKDTree(pts).query(pts, k=k + 1)
        # Drop self; with duplicate points self may not come first, so drop it wherever it is
        # (or the farthest candidate when it is absent).
        is_self = idx == np.arange(n)[:, None]
        no_self = ~is_self.any(axis=1)
        is_self[no_self, -1] = True
        keep = ~is_self
        return idx[keep].reshape(n, k).astype(np.int64), dist[keep].reshape(n, k)
    block = n if method == "dense" else max(1, _BLOCK_ELEMS // n)
    xs = x.detach()
    idx_out = np.empty((n, k), dtype=np.int64)
    dist_out = np.empty((n, k), dtype=np.float64)
    for s in range(0, n, block):
        e = min(n, s + block)
        dmat = torch.cdist(xs[s:e], xs)
        dmat[torch.arange(e - s, device=xs.device), torch.arange(s, e, device=xs.device)] = float("inf")
        val, ind = torch.topk(dmat, k, dim=1, largest=False)
        idx_out[s:e] = ind.cpu().numpy()
        dist_out[s:e] = val.double().cpu().numpy()
    return idx_out, dist_out


def _edge_lengths(
    feats: Tensor,
    i: np.ndarray,
    j: np.ndarray,
    kind: str,
    metric: Tensor | Callable[[Tensor], Tensor] | None,
    chunk: int,
) -> np.ndarray:
    """Lengths of edges ``(i, j)`` under ``kind`` (see the module docstring), in float64."""
    out = np.empty(len(i), dtype=np.float64)
    dev = feats.device
    if kind == "metric" and not callable(metric):
        d = feats.shape[1]
        chunk = max(1, min(chunk, _METRIC_ELEMS // (d * d)))  # gathered (chunk, d, d) metrics stay ~128 MB
    for s in range(0, len(i), chunk):
        ii = torch.as_tensor(i[s : s + chunk], device=dev)
        jj = torch.as_tensor(j[s : s + chunk], device=dev)
        a, b = feats[ii], feats[jj]
        if kind == "euclidean":
            ell = (a - b).norm(dim=-1)
        elif kind == "fisher_rao":
            ell = categorical_distance(a, b)
        elif callable(metric):
            q = pullback_quadratic_form(metric, 0.5 * (a + b), b - a, chunk_size=_JVP_CHUNK)
            ell = q.clamp_min(0).sqrt()
        else:
            g = 0.5 * (metric[ii] + metric[jj])
            dx = b - a
            q = torch.einsum("ei,eij,ej->e", dx, g, dx)
            scale = torch.einsum("ei,ei,eii->e", dx, dx, g.abs()).clamp_min(torch.finfo(q.dtype).tiny)
            if bool((q < -1e-6 * scale).any()):
                raise ValueError("metric must be positive semi-definite: an edge has a negative squared length")
            ell = q.clamp_min(0).sqrt()
        out[s : s + chunk] = ell.detach().double().cpu().numpy()
    return out


@dataclass(frozen=True)
class TokenGraph:
    """Symmetric weighted graph on ``n`` tokens.

    Attributes
    ----------
    adjacency : scipy CSR matrix, symmetric, whose entry ``(i, j)`` is the length of the edge
        ``i–j`` under the metric (no entry = no edge). Zero-length edges (duplicate points) are
        stored as the smallest positive float64 so that scipy keeps them as edges.
    kind : how lengths were measured.
    k : the neighbour count.
    """

    adjacency: sp.csr_matrix
    kind: str
    k: int

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.adjacency.shape[0]

    @property
    def n_edges(self) -> int:
        """Number of undirected edges."""
        return self.adjacency.nnz // 2

    @classmethod
    def from_points(
        cls,
        x: Tensor,
        k: int = 10,
        *,
        metric: Tensor | Callable[[Tensor], Tensor] | None = None,
        kind: str | None = None,
        sequence_edges: bool = True,
        method: str = "auto",
        chunk_size: int = 65536,
    ) -> "TokenGraph":
        """Build the kNN + sequence graph of the rows of ``x`` (seed 000 §3.1).

        Parameters
        ----------
        x : ``(n, d)`` features in sequence order: hidden states, or categorical
            distributions (rows in the closed simplex, zeros allowed) for ``kind="fisher_rao"``.
        k : neighbours per point before symmetrisation; needs ``n >= k + 1``.
        metric : ``(n, d, d)`` per-point metric tensors (symmetric positive semi-definite),
            or a callable ``fn(h) -> logits`` whose softmax pull-back metric is used.
        kind : ``"euclidean"``, ``"fisher_rao"`` or ``"metric"``; ``None`` infers
            ``"metric"`` when ``metric`` is given, else ``"euclidean"``.
        sequence_edges : also join ``t`` and ``t + 1``.
        method : neighbour search, see :func:`knn`.
        chunk_size : edges per batch when measuring lengths (capped so that the gathered
            metric tensors stay near 128 MB; pull-back JVPs run 256 tokens at a time).

        Returns
        -------
        :class:`TokenGraph` with edge lengths under ``kind`` (module docstring).

        Raises
        ------
        TypeError, ValueError
            ``x`` is not a finite (n, d) float32/float64 tensor or ``n < k + 1``; ``kind`` is
            unknown; ``metric`` is missing for ``kind="metric"``, given for another kind, of the wrong
            shape or device; rows of ``x`` leave the simplex for ``kind="fisher_rao"``; or an edge
            length is not finite (a metric not positive semi-definite).
        """
        check_tensor(x, "x", ndim=2)
        check_precise(x, "x")
        check_coordinates(x, "x")
        if kind is None:
            kind = "euclidean" if metric is None else "metric"
        check_choice(kind, "kind", ("euclidean", "fisher_rao", "metric"))
        n, d = x.shape
        k = check_int(k, "k", minimum=1)
        chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
        if n < k + 1:
            raise ValueError(f"x must have at least k + 1 = {k + 1} rows for k = {k}, got n = {n}")
        if kind == "metric":
            if metric is None:
                raise ValueError('kind="metric" needs metric: (n, d, d) tensors or a callable returning logits')
            if not callable(metric):
                check_tensor(metric, "metric", shape=(n, d, d))
                if metric.device != x.device:
                    raise ValueError(f"metric is on {metric.device} but x is on {x.device}; expected one device")
                metric = metric.to(x.dtype)
        elif metric is not None:
            raise ValueError(f'metric is only used with kind="metric", got kind={kind!r}')
        if kind == "fisher_rao":
            # The closed simplex: the distance extends continuously to p_k = 0 (masked attention rows).
            if bool((x < 0).any()):
                raise ValueError(f'x must be non-negative for kind="fisher_rao" (rows are distributions), got min {float(x.min()):.3g}')
            tol = 1e-4 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
            err = float((x.sum(-1) - 1).abs().max())
            if err > tol:
                raise ValueError(f'rows of x must sum to 1 for kind="fisher_rao" (max deviation {err:.3g} > {tol:g})')
            search = x.sqrt()
        else:
            search = x
        idx, _ = knn(search, k, method=method)
        rows = np.repeat(np.arange(n), k)
        cols = idx.ravel()
        if sequence_edges and n > 1:
            rows = np.concatenate([rows, np.arange(n - 1)])
            cols = np.concatenate([cols, np.arange(1, n)])
        # Canonical undirected edge list i < j, deduplicated.
        lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
        keys = np.unique(lo * n + hi)
        i, j = keys // n, keys % n
        ell = _edge_lengths(x, i, j, kind, metric, chunk_size)
        if not np.isfinite(ell).all():
            raise ValueError("non-finite edge length: the metric tensors must be positive semi-definite and finite")
        ell = np.maximum(ell, np.finfo(np.float64).tiny)
        adj = sp.coo_matrix((np.concatenate([ell, ell]), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n))
        return cls(adjacency=adj.tocsr(), kind=kind, k=k)

    @classmethod
    def from_adjacency(cls, adjacency: object, *, kind: str = "given", k: int = 0) -> "TokenGraph":
        """Wrap a symmetric non-negative ``(n, n)`` matrix of edge lengths.

        Parameters
        ----------
        adjacency : scipy sparse or dense ``(n, n)``; no entry (or a zero off the diagonal) means no
            edge, and the diagonal is ignored. Use it for graphs from elsewhere, e.g.
            ``nx.to_scipy_sparse_array(G)`` with unit or length weights.
        kind : recorded as the graph's ``kind``.
        k : recorded as the graph's ``k``.

        Returns
        -------
        :class:`TokenGraph`.

        Raises
        ------
        ValueError
            ``adjacency`` is not square, not symmetric, or holds negative or non-finite lengths.
        """
        adj = sp.csr_matrix(adjacency, dtype=np.float64)
        if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
            raise ValueError(f"adjacency must be a square (n, n) matrix, got shape {adj.shape}")
        adj.setdiag(0)
        adj.eliminate_zeros()
        if not np.isfinite(adj.data).all() or (adj.data < 0).any():
            raise ValueError("adjacency must hold finite non-negative edge lengths")
        if abs(adj - adj.T).max() > 1e-12 * max(1.0, float(adj.data.max(initial=0.0))):
            raise ValueError("adjacency must be symmetric (an undirected graph)")
        adj.sort_indices()
        return cls(adjacency=adj, kind=kind, k=k)

    def edges(self) -> np.ndarray:
        """Undirected edges with ``i < j``, sorted by ``(i, j)``.

        Returns
        -------
        ``(m, 2)`` int array. Per-edge quantities (curvatures, :meth:`edge_lengths`) are aligned
        with this order.
        """
        up = sp.triu(self.adjacency, k=1).tocsr()
        up.sort_indices()
        rows = np.repeat(np.arange(self.n), np.diff(up.indptr))
        return np.stack([rows, up.indices.astype(np.int64)], axis=1)

    def edge_lengths(self) -> np.ndarray:
        """Edge lengths.

        Returns
        -------
        ``(m,)`` float64 array aligned with :meth:`edges`.
        """
        up = sp.triu(self.adjacency, k=1).tocsr()
        up.sort_indices()
        return up.data.copy()

    def degrees(self) -> np.ndarray:
        """Number of neighbours of each node, ``(n,)``."""
        return np.diff(self.adjacency.indptr)

    def components(self) -> tuple[int, np.ndarray]:
        """``(n_components, labels (n,))`` of the connected components."""
        return csgraph.connected_components(self.adjacency, directed=False)

    def check_connected(self) -> None:
        """The graph is connected.

        Raises
        ------
        ValueError
            The graph has several connected components; the message names their sizes.
        """
        n_comp, labels = self.components()
        if n_comp > 1:
            sizes = np.sort(np.bincount(labels))[::-1]
            raise ValueError(
                f"the token graph has {n_comp} connected components (sizes {sizes[:10].tolist()}"
                f"{'...' if n_comp > 10 else ''}); use sequence_edges=True, a larger k, or treat "
                "each component separately (TokenGraph.subgraph on components()[1] == c)"
            )

    def subgraph(self, nodes: np.ndarray) -> "TokenGraph":
        """The induced subgraph on ``nodes``, renumbered 0..len−1.

        Parameters
        ----------
        nodes : node indices or a boolean mask of length ``n``.

        Returns
        -------
        :class:`TokenGraph` of the same ``kind`` and ``k``.
        """
        nodes = np.asarray(nodes)
        if nodes.dtype == bool:
            nodes = np.flatnonzero(nodes)
        return TokenGraph(adjacency=self.adjacency[nodes][:, nodes].tocsr(), kind=self.kind, k=self.k)

    def to_networkx(self):
        """The graph as a ``networkx.Graph`` with edge attribute ``weight`` = length."""
        import networkx as nx

        return nx.from_scipy_sparse_array(self.adjacency, edge_attribute="weight")
