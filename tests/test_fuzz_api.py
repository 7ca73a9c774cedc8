"""Fuzzing the public API (issue 16): every public function of ``tiling.ops``, ``tiling.modules``,
``infogeo.fisher``, ``graph``, ``geodesic``, ``laplacian``, ``curvature`` and ``flow``.

Each case builds a valid call (random sizes, optional arguments present or not), then spoils up to
two of its tensors (NaN, ±Inf, huge, denormal or zero values; another dtype; the ``meta`` device; a
non-contiguous stride; a wrong, empty or extra dimension; a list, an array or ``None`` instead) and
up to one of its scalar options (0, −1, NaN, Inf, a huge int, a string, ``None``, a bool). The call
must either return output of the documented shape without a NaN (and without ±Inf where the output
is documented finite), or raise ``ValueError``/``TypeError`` whose message names one of the
function's arguments. Any other exception — ``RuntimeError`` from torch's internals,
``IndexError``, ``ZeroDivisionError``, a scipy error — fails the case; an abort kills the run.
"""
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from conftest import FUZZ_CASES, fuzz_settings, tiling_kwargs
from infogeo import curvature, fisher, flow, geodesic, graph, laplacian
from tiling import modules, ops
from tiling.config import TilingConfig
from tensor_leaves import leaves

F64 = torch.float64


@dataclass
class Call:
    """A call to fuzz: ``fn(**kwargs)``; ``tensors``/``scalars`` name the arguments that may be spoiled;
    ``shape`` the documented shape of the (first) output; ``finite``: ±Inf is a failure too."""

    fn: Callable
    kwargs: dict
    tensors: list[str]
    scalars: dict = field(default_factory=dict)  # name -> pool of bad values beyond the generic ones
    shape: tuple | None = None
    finite: bool = True
    names: tuple = ()  # further words that name an argument (e.g. "graph" for a graph built from x)


def gen(draw, *shape, dtype=F64, low=-1.0, high=1.0):
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=F64) * (high - low) + low).to(dtype)


def simplex(draw, *shape):
    p = gen(draw, *shape, low=0.05, high=1.0)
    return p / p.sum(-1, keepdim=True)


# ---- specs: one valid call per public function -------------------------------------------------
SPECS: dict[str, Callable] = {}


def spec(fn):
    SPECS[fn.__name__] = fn
    return fn


def _scan_call(draw, fn):
    b, d, L, N = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 3))
    T = draw(st.integers(1, 8))
    nt = -(-L // T)
    kw = dict(u=gen(draw, b, d, L), delta=gen(draw, b, d, L, low=0.0), A=gen(draw, d, N, low=-1.0, high=-0.1),
              B=gen(draw, b, N, L), C=gen(draw, b, N, L), tile_size=T)
    opt = dict(D=gen(draw, d), z=gen(draw, b, d, L), delta_bias=gen(draw, d), resolution=gen(draw, b, nt, low=0.1),
               state_dims=torch.randint(1, N + 1, (b, nt)), boundary_gain=gen(draw, d, N),
               initial_state=gen(draw, b, d, N))
    for k in draw(st.lists(st.sampled_from(sorted(opt)), unique=True)):
        kw[k] = opt[k]
    kw["delta_softplus"] = draw(st.booleans())
    return Call(fn, kw, [k for k, v in kw.items() if isinstance(v, torch.Tensor)], {"tile_size": [2 ** 40]},
                shape=(b, d, L))


@spec
def adaptive_selective_scan(draw):
    return _scan_call(draw, ops.adaptive_selective_scan)


@spec
def adaptive_selective_scan_ref(draw):
    return _scan_call(draw, ops.adaptive_selective_scan_ref)


@spec
def scan_cost(draw):
    L, T = draw(st.integers(1, 40)), draw(st.integers(1, 16))
    nt = -(-L // T)
    N = draw(st.integers(1, 8))
    res = draw(st.sampled_from([None, 0.5, 1.0])) if draw(st.booleans()) else gen(draw, 2, nt, low=0.1)
    sd = draw(st.sampled_from([None, N])) if draw(st.booleans()) else torch.randint(1, N + 1, (2, nt))
    kw = dict(L=L, tile_size=T, resolution=res, state_dims=sd, N=N, dim=draw(st.integers(1, 8)),
              boundary_gain=draw(st.booleans()))
    return Call(ops.scan_cost, kw, [k for k in ("resolution", "state_dims") if isinstance(kw[k], torch.Tensor)],
                {"L": [2 ** 62], "N": [0], "dim": [0]})


@spec
def layer_cost(draw):
    L = draw(st.integers(1, 40))
    scope = draw(st.sampled_from(["block", "scan"]))
    kw = dict(L=L, d_model=8, d_state=4, d_inner=16, dt_rank=1, tile_size=draw(st.integers(1, 16)), scope=scope)
    if scope == "block":
        kw["compact_length"] = draw(st.integers(1, L))
    return Call(ops.layer_cost, kw, [], {"compact_length": [L + 1], "d_model": [0]})


@spec
def block_unit_costs(draw):
    return Call(ops.block_unit_costs, dict(d_model=draw(st.integers(1, 16)), d_state=4, d_inner=16, dt_rank=1), [],
                {"d_conv": [0]})


@spec
def segment_counts(draw):
    n = draw(st.integers(1, 6))
    return Call(ops.segment_counts, dict(resolution=gen(draw, 2, n, low=0.05), lengths=torch.randint(1, 9, (n,))),
                ["resolution", "lengths"], shape=(2, n))


@spec
def tile_lengths(draw):
    L, T = draw(st.integers(1, 50)), draw(st.integers(1, 20))
    return Call(ops.tile_lengths, dict(L=L, tile_size=T), [], {"tile_size": [2 ** 40]}, shape=(-(-L // T),))


@spec
def kernel_available(draw):
    device = draw(st.sampled_from(["cpu", "meta", torch.device("cpu"), "cuda"]))
    return Call(ops.kernel_available, dict(device=device), [], {"device": ["gpu", "cuda:-1", "", torch.float64]})


def _layer(draw, d):
    scope = draw(st.sampled_from(["block", "scan"]))
    kw = dict(d_state=draw(st.integers(1, 4)), tile_size=draw(st.integers(1, 6)), scope=scope,
              budget=draw(st.sampled_from([1.0, 0.5, 0.25])), r_min=0.125,
              policy=draw(st.sampled_from(["adaptive", "uniform", "binary"])), causal=draw(st.booleans()))
    if scope == "block" and draw(st.booleans()):
        kw["boundaries"] = "token"
    torch.manual_seed(draw(st.integers(0, 1000)))
    return modules.TiledMamba(d, **tiling_kwargs(kw)).double()


@spec
def TiledMamba_forward(draw):
    b, L, d = draw(st.integers(1, 2)), draw(st.integers(1, 14)), draw(st.integers(2, 8))
    layer = _layer(draw, d)
    kw = dict(hidden_states=gen(draw, b, L, d))
    if draw(st.booleans()):
        kw["density"] = gen(draw, b, L, low=0.0)
    if draw(st.booleans()):
        kw["budget"] = draw(st.sampled_from([1.0, 0.5]))
    return Call(lambda **k: layer(**k), kw, [k for k in ("hidden_states", "density") if k in kw],
                {"budget": [0.0, 2.0]}, shape=(b, L, d))


@spec
def TiledMamba_construct(draw):
    kw = dict(d_model=draw(st.integers(1, 8)), d_state=draw(st.integers(1, 4)), tile_size=draw(st.integers(1, 8)),
              budget=draw(st.sampled_from([1.0, 0.5])), r_min=0.25, expand=draw(st.integers(1, 2)))
    # the tiling options are spoiled as before; they reach the layer as tiling=TilingConfig(...)
    return Call(lambda **k: modules.TiledMamba(**tiling_kwargs(k)), kw, [],
                {"d_state": [0], "tile_size": [0], "r_min": [0.75], "expand": [0]})


@spec
def TiledMamba_step(draw):
    b, d = draw(st.integers(1, 2)), draw(st.integers(2, 6))
    layer = _layer(draw, d).eval()
    state = layer.allocate_inference_state(b)

    def step(hidden_states, budget=None):
        return layer.step(hidden_states, state, budget=budget)[0]

    return Call(step, dict(hidden_states=gen(draw, b, d)), ["hidden_states"], {"budget": [0.0, 2.0]}, shape=(b, d),
                names=("state", "causal"))


@spec
def Chunk_Dechunk(draw):
    b, L, d, T = draw(st.integers(1, 2)), draw(st.integers(1, 12)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    nt = -(-L // T)
    counts = torch.stack([torch.randint(1, T + 1, (nt,)) for _ in range(b)])
    layout = modules.layout_from_counts(counts, L, T)
    chunk = modules.Chunk(d).double()
    with torch.no_grad():
        chunk.pool_gate.normal_()

    def run(x, confidence=None):
        return modules.Dechunk()(chunk(x, layout), layout, confidence)

    kw = dict(x=gen(draw, b, L, d))
    if draw(st.booleans()):
        kw["confidence"] = gen(draw, b, L, low=0.0)
    return Call(run, kw, list(kw), shape=(b, L, d), names=("layout", "y"))


@spec
def layout_from_boundaries(draw):
    b, L = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    bd = torch.rand(b, L) < 0.4
    bd[:, 0] = True
    return Call(modules.layout_from_boundaries, dict(boundary=bd), ["boundary"])


@spec
def layout_from_counts(draw):
    L, T = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    nt = -(-L // T)
    return Call(modules.layout_from_counts, dict(seg_counts=torch.randint(1, T + 1, (2, nt)), L=L, tile_size=T),
                ["seg_counts"], {"tile_size": [2 ** 40]})


@spec
def TokenRouter_forward(draw):
    b, L, d = draw(st.integers(1, 2)), draw(st.integers(1, 10)), draw(st.integers(1, 6))
    router = modules.TokenRouter(d, rank=draw(st.integers(1, d))).double()
    return Call(lambda x: router(x), dict(x=gen(draw, b, L, d)), ["x"], shape=(b, L))


def _tile_router(draw, *, causal: bool) -> tuple:
    T = draw(st.integers(1, 6))
    config = TilingConfig(tile_size=T, budget=draw(st.sampled_from([0.25, 0.5, 1.0])), r_min=0.0625,
                          policy=draw(st.sampled_from(["adaptive", "uniform", "binary"])), causal=causal)
    return modules.TileRouter(config), config


@spec
def TileRouter_forward(draw):
    b, L = draw(st.integers(1, 2)), draw(st.integers(1, 12))
    router, config = _tile_router(draw, causal=draw(st.booleans()))

    def run(density, curvature=None, budget=None):
        plan = router(density, curvature=curvature, budget=budget)
        return plan.resolution, plan

    kw = dict(density=gen(draw, b, L, low=0.0), budget=config.budget)
    if draw(st.booleans()):
        kw["curvature"] = gen(draw, b, L)
    return Call(run, kw, [k for k in kw if k != "budget"], {"budget": [0.0, 2.0]},
                shape=(b, -(-L // config.tile_size)))


@spec
def TileRouter_step(draw):
    """One decoding step after a valid prefix of 0..2T tokens (only the step's own arguments are spoiled)."""
    b = draw(st.integers(1, 2))
    router, config = _tile_router(draw, causal=True)
    state = router.allocate(b)
    for _ in range(draw(st.integers(0, 2 * config.tile_size))):
        _, state = router.step(gen(draw, b, low=0.0), state)
    return Call(lambda signal_t, budget=None: router.step(signal_t, state, budget=budget),
                dict(signal_t=gen(draw, b, low=0.0), budget=config.budget), ["signal_t"], {"budget": [0.0, 2.0]},
                shape=(b,), names=("state",))


@spec
def linear_density(draw):
    b, L, d, r, N, k = (draw(st.integers(1, 3)) for _ in range(6))
    kw = dict(x=gen(draw, b, L, d), proj=gen(draw, r + N, d), dt_weight=gen(draw, k, r), dt_bias=gen(draw, k),
              scale=2.0)
    if draw(st.booleans()):
        kw["offset"] = gen(draw, r + N)
    return Call(modules.linear_density, kw, [n for n in kw if n != "scale"], shape=(b, L))


@spec
def ratio_loss(draw):
    b, L = draw(st.integers(1, 3)), draw(st.integers(1, 10))
    return Call(modules.ratio_loss, dict(boundary=torch.rand(b, L) < 0.5, prob=gen(draw, b, L, low=0.0),
                                         budget=draw(st.sampled_from([0.25, 0.5, 1.0]))),
                ["boundary", "prob"], {"budget": [0.0, 1.5]}, shape=())


# ---- infogeo.fisher -----------------------------------------------------------------------------
@spec
def categorical_metric(draw):
    n, K = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    chart = draw(st.booleans())
    return Call(fisher.categorical_metric, dict(p=simplex(draw, n, K), chart=chart), ["p"],
                shape=(n, K - 1, K - 1) if chart else (n, K, K))


@spec
def categorical_distance(draw):
    n, K = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    return Call(fisher.categorical_distance, dict(p=simplex(draw, n, K), q=simplex(draw, n, K)), ["p", "q"],
                shape=(n,))


@spec
def normal_metric(draw):
    n = draw(st.integers(1, 4))
    return Call(fisher.normal_metric, dict(mu=gen(draw, n), sigma=gen(draw, n, low=0.1)), ["mu", "sigma"],
                shape=(n, 2, 2))


@spec
def normal_distance(draw):
    n = draw(st.integers(1, 4))
    return Call(fisher.normal_distance, dict(mu1=gen(draw, n), sigma1=gen(draw, n, low=0.1), mu2=gen(draw, n),
                                             sigma2=gen(draw, n, low=0.1)),
                ["mu1", "sigma1", "mu2", "sigma2"], shape=(n,))


@spec
def diag_normal_metric(draw):
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return Call(fisher.diag_normal_metric, dict(mu=gen(draw, n, d), sigma=gen(draw, n, d, low=0.1)),
                ["mu", "sigma"], shape=(n, 2 * d, 2 * d))


@spec
def diag_normal_distance(draw):
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return Call(fisher.diag_normal_distance, dict(mu1=gen(draw, n, d), sigma1=gen(draw, n, d, low=0.1),
                                                  mu2=gen(draw, n, d), sigma2=gen(draw, n, d, low=0.1)),
                ["mu1", "sigma1", "mu2", "sigma2"], shape=(n,))


def _normal_log_f(x, theta):
    mu, log_s = theta[0], theta[1]
    return -0.5 * ((x - mu) / torch.exp(log_s)) ** 2 - log_s


@spec
def empirical_fisher(draw):
    n = draw(st.integers(1, 6))
    kw = dict(log_f=_normal_log_f, x=gen(draw, n), theta=gen(draw, *((2,) if draw(st.booleans()) else (3, 2))))
    if draw(st.booleans()):
        kw["weights"] = torch.full((n,), 1.0 / n, dtype=F64)
    m = kw["theta"].shape[:-1]
    return Call(fisher.empirical_fisher, kw, [k for k in ("x", "theta", "weights") if k in kw],
                {"chunk_size": [0]}, shape=(*m, 2, 2))


@spec
def monte_carlo_fisher(draw):
    def sampler(theta, n, generator):
        return theta[0] + torch.exp(theta[1]) * torch.randn(n, generator=generator, dtype=theta.dtype)

    theta = gen(draw, 2)
    return Call(fisher.monte_carlo_fisher, dict(log_f=_normal_log_f, sampler=sampler, theta=theta,
                                                n_samples=draw(st.integers(1, 8)),
                                                generator=torch.Generator().manual_seed(0)),
                ["theta"], {"n_samples": [0, 2 ** 40]}, shape=(2, 2))


def _head(W):
    return lambda h: h @ W.T.to(h.dtype)  # a head that follows its input's dtype


@spec
def pullback_metric(draw):
    n, d, V = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 5))
    return Call(fisher.pullback_metric, dict(fn=_head(gen(draw, V, d)), h=gen(draw, n, d),
                                             mode=draw(st.sampled_from(["auto", "jacrev", "jacfwd"]))),
                ["h"], {"chunk_size": [0]}, shape=(n, d, d))


@spec
def pullback_quadratic_form(draw):
    n, d, V = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 5))
    return Call(fisher.pullback_quadratic_form, dict(fn=_head(gen(draw, V, d)), h=gen(draw, n, d),
                                                     v=gen(draw, n, d)), ["h", "v"], shape=(n,))


@spec
def linear_softmax_metric(draw):
    n, d, V = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    kw = dict(W=gen(draw, V, d), h=gen(draw, n, d))
    if draw(st.booleans()):
        kw["b"] = gen(draw, V)
    return Call(fisher.linear_softmax_metric, kw, list(kw), shape=(n, d, d))


@spec
def attention_row_metric(draw):
    n, m, d = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    kw = dict(q=gen(draw, n, d), K=gen(draw, m, d))
    if draw(st.booleans()):
        kw["scale"] = 0.5
    if draw(st.booleans()):
        mask = torch.rand(n, m) < 0.6
        mask[:, 0] = True
        kw["mask"] = mask
    return Call(fisher.attention_row_metric, kw, [k for k in ("q", "K", "mask") if k in kw],
                {"scale": [0.0, -1.0]}, shape=(n, d, d))


def _psd(draw, n, d):
    A = gen(draw, n, d, d)
    return A @ A.transpose(-1, -2)


@spec
def regularized(draw):
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return Call(fisher.regularized, dict(G=_psd(draw, n, d), eps=1e-3), ["G"], {"eps": [-1.0]}, shape=(n, d, d))


@spec
def metric_inverse(draw):
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return Call(fisher.metric_inverse, dict(G=_psd(draw, n, d), eps=1e-2), ["G"], {"eps": [-1.0]}, shape=(n, d, d))


@spec
def metric_logdet(draw):
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return Call(fisher.metric_logdet, dict(G=_psd(draw, n, d), eps=1e-2), ["G"], {"eps": [-1.0]}, shape=(n,))


@spec
def effective_dimension(draw):
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return Call(fisher.effective_dimension, dict(G=_psd(draw, n, d)), ["G"], shape=(n,))


# ---- graphs ----------------------------------------------------------------------------------
def _points(draw):
    n, d = draw(st.integers(5, 14)), draw(st.integers(1, 3))
    return gen(draw, n, d)


def _graph(draw):
    x = _points(draw)
    return graph.TokenGraph.from_points(x, k=draw(st.integers(2, 4)))


@spec
def knn(draw):
    x = _points(draw)
    k = draw(st.integers(1, x.shape[0] - 1))
    return Call(graph.knn, dict(x=x, k=k, method=draw(st.sampled_from(["auto", "exact", "kdtree"]))), ["x"],
                {"k": [2 ** 40]}, shape=(x.shape[0], k))


@spec
def TokenGraph_from_points(draw):
    kind = draw(st.sampled_from(["euclidean", "fisher_rao", "metric"]))
    n, d = draw(st.integers(3, 10)), draw(st.integers(2, 4))
    x = simplex(draw, n, d) if kind == "fisher_rao" else gen(draw, n, d)
    kw = dict(x=x, k=draw(st.integers(1, n - 1)), kind=kind, sequence_edges=draw(st.booleans()))
    if kind == "metric":
        kw["metric"] = _psd(draw, n, d) + 0.1 * torch.eye(d, dtype=F64)
    return Call(lambda **k: graph.TokenGraph.from_points(**k).edge_lengths(), kw,
                [t for t in ("x", "metric") if t in kw], {"k": [2 ** 40], "chunk_size": [0]})


@spec
def TokenGraph_from_adjacency(draw):
    n = draw(st.integers(2, 8))
    A = gen(draw, n, n, low=0.0).numpy()
    A = np.triu(A, 1)
    A = A + A.T
    return Call(lambda adjacency: graph.TokenGraph.from_adjacency(adjacency).edge_lengths(), dict(adjacency=A), [])


@spec
def geodesic_distances(draw):
    g = _graph(draw)
    kw = dict(graph=g)
    if draw(st.booleans()):
        kw["sources"] = [0, g.n - 1]
    rows = len(kw.get("sources", range(g.n)))
    return Call(geodesic.geodesic_distances, kw, [], {"sources": [[g.n], [-1], ["a"]]}, shape=(rows, g.n),
                finite=False, names=("x", "points"))


@spec
def geodesic_path(draw):
    g = _graph(draw)
    return Call(geodesic.geodesic_path, dict(graph=g, i=0, j=g.n - 1), [], {"i": [g.n], "j": [-1]})


@spec
def path_length(draw):
    g = _graph(draw)
    return Call(geodesic.path_length, dict(graph=g, path=geodesic.geodesic_path(g, 0, g.n - 1)), [],
                {"path": [[0, 0], [g.n], []]})


@spec
def default_bandwidth(draw):
    return Call(laplacian.default_bandwidth, dict(graph=_graph(draw)), [], {"k": [0]})


@spec
def laplacian_op(draw):
    x = _points(draw)
    kw = dict(points_or_graph=x, kind=draw(st.sampled_from(["diffusion", "belkin_niyogi"])),
              alpha=draw(st.sampled_from([0.0, 0.5, 1.0])))
    if draw(st.booleans()):
        kw["bandwidth"] = 0.5
    return Call(lambda **k: laplacian.laplacian(**k).stiffness.toarray(), kw, ["points_or_graph"],
                {"alpha": [1.5], "bandwidth": [1e-200, 1e200]}, shape=(x.shape[0], x.shape[0]), names=("points",))


@spec
def laplacian_spectrum(draw):
    x = _points(draw)
    n_eigs = draw(st.integers(1, 3))
    return Call(laplacian.laplacian_spectrum, dict(lap_or_points=x, n_eigs=n_eigs,
                                                   method=draw(st.sampled_from(["shift_invert", "lobpcg"]))),
                ["lap_or_points"], {"n_eigs": [x.shape[0], 2 ** 40]}, shape=(n_eigs,),
                names=("points", "points_or_graph", "bandwidth"))


@spec
def ollivier_ricci(draw):
    g = _graph(draw)
    return Call(curvature.ollivier_ricci, dict(graph=g, alpha=draw(st.sampled_from([0.0, 0.5, 0.9]))), [],
                {"alpha": [1.0], "batch_size": [0]}, shape=(g.n_edges,))


@spec
def forman_ricci(draw):
    g = _graph(draw)
    return Call(curvature.forman_ricci, dict(graph=g, weighted=draw(st.booleans())), [], shape=(g.n_edges,))


@spec
def node_curvature(draw):
    g = _graph(draw)
    return Call(curvature.node_curvature, dict(edge_curv=curvature.forman_ricci(g), graph=g), [],
                {"edge_curv": [np.zeros(g.n_edges + 1), np.full(g.n_edges, np.nan)]}, shape=(g.n,))


@spec
def resolution_flow(draw):
    g = _graph(draw)
    kw = dict(graph_or_laplacian=g, density=gen(draw, g.n, low=0.0), r_min=0.1, lam=draw(st.sampled_from([0.0, 0.5])),
              mu=0.5, max_steps=200)
    if draw(st.booleans()):
        kw["r0"] = gen(draw, g.n, low=0.2)
    return Call(lambda **k: flow.resolution_flow(**k).R, kw, [t for t in ("density", "r0") if t in kw],
                {"r_min": [0.0, 2.0], "lam": [-1.0], "step": [0.0, 1e9], "max_steps": [0]}, shape=(g.n,))


# ---- spoiling ------------------------------------------------------------------------------------
TENSOR_SPOILS = ["nan", "inf", "-inf", "huge", "denormal", "zero", "negative", "float32", "float16", "bfloat16",
                 "int64", "bool", "complex", "meta", "strided", "drop-dim", "add-dim", "grow-dim", "empty-dim",
                 "list", "numpy", "none"]
SCALAR_SPOILS = [0, -1, 2 ** 62, float("nan"), float("inf"), -0.5, "x", None, True, 1.5]


def spoil_tensor(t: torch.Tensor, how: str, pick: int):
    if how in ("nan", "inf", "-inf", "huge", "denormal", "zero", "negative"):
        if t.numel() == 0 or not t.is_floating_point():
            return t
        v = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e300 if t.dtype == F64 else 3e38,
             "denormal": 1e-310 if t.dtype == F64 else 1e-40, "zero": 0.0, "negative": -1.0}[how]
        t = t.clone()
        t.view(-1)[pick % t.numel()] = v
        return t
    if how in ("float32", "float16", "bfloat16", "int64", "bool", "complex"):
        dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
              "bool": torch.bool, "complex": torch.complex128}[how]
        return t.to(dt)
    if how == "meta":
        return t.to("meta")
    if how == "strided":  # the same values, every stride doubled
        wide = t.new_zeros(*t.shape, 2)
        wide[..., 0] = t
        return wide[..., 0]
    if how == "drop-dim":
        return t[0] if t.dim() > 0 and t.shape[0] > 0 else t.reshape(-1)
    if how == "add-dim":
        return t.unsqueeze(0)
    if how in ("grow-dim", "empty-dim"):
        if t.dim() == 0:
            return t.reshape(1)
        d = pick % t.dim()
        if how == "empty-dim":
            return t.narrow(d, 0, 0)
        return torch.cat([t, t.narrow(d, 0, 1)], dim=d)
    if how == "list":
        return t.tolist()
    if how == "numpy":
        return t.numpy()
    return None


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    call = SPECS[name](draw)
    spoiled = []
    if call.tensors and draw(st.integers(0, 3)) > 0:
        for arg in draw(st.lists(st.sampled_from(call.tensors), min_size=1, max_size=2, unique=True)):
            how = draw(st.sampled_from(TENSOR_SPOILS))
            call.kwargs[arg] = spoil_tensor(call.kwargs[arg], how, draw(st.integers(0, 1000)))
            spoiled.append((arg, how))
    scalars = [k for k, v in call.kwargs.items() if not isinstance(v, (torch.Tensor, np.ndarray)) and not callable(v)
               and not isinstance(v, (graph.TokenGraph, torch.Generator))] + list(call.scalars)
    if scalars and draw(st.integers(0, 3)) == 0:
        arg = draw(st.sampled_from(sorted(set(scalars))))
        call.kwargs[arg] = draw(st.sampled_from(SCALAR_SPOILS + call.scalars.get(arg, [])))
        spoiled.append((arg, repr(call.kwargs[arg])))
    return name, call, spoiled


TORCH_INTERNAL = re.compile(r"aten::|at::|c10|\bTHP|Tensor\.item\(\)|expected scalar type|not implemented for|"
                            r"mat1 and mat2|size of tensor a|must match the size|Expected all tensors|"
                            r"doesn't have storage|meta tensor|Cannot access data pointer")


def check_result(name, call: Call, spoiled, out) -> None:
    for leaf in leaves(out):
        a = leaf.detach().cpu().double().numpy() if isinstance(leaf, torch.Tensor) else np.asarray(leaf, dtype=float)
        assert not np.isnan(a).any(), f"{name}: silent NaN in the output; spoiled {spoiled}"
        if call.finite:
            assert np.isfinite(a).all(), f"{name}: non-finite output; spoiled {spoiled}"
    if call.shape is not None and not any(how.endswith("-dim") or arg in call.scalars or arg not in call.tensors
                                          for arg, how in spoiled):
        first = out[0] if isinstance(out, tuple) else out
        assert tuple(first.shape) == tuple(call.shape), f"{name}: shape {tuple(first.shape)} != {call.shape}; {spoiled}"


def check_error(name, call: Call, spoiled, e: BaseException) -> None:
    msg = str(e)
    if not isinstance(e, (ValueError, TypeError)):
        raise AssertionError(f"{name}: {type(e).__name__} ({msg[:300]}); spoiled {spoiled}") from e
    ours = msg.split(fisher.FN_RAISED)[0]  # after the marker: the caller's own fn, quoted
    assert not TORCH_INTERNAL.search(ours), f"{name}: torch-internal message {msg[:300]!r}; spoiled {spoiled}"
    words = set(call.kwargs) | set(call.names)
    assert any(re.search(rf"(?<![A-Za-z_]){re.escape(w)}(?![A-Za-z_])", msg) for w in words), (
        f"{name}: {type(e).__name__} names no argument of {sorted(words)}: {msg[:300]!r}; spoiled {spoiled}")


def _property(case):
    name, call, spoiled = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are allowed (e.g. A with positive entries)
        try:
            out = call.fn(**call.kwargs)
        except Exception as e:  # noqa: BLE001 - the point: classify every exception
            check_error(name, call, spoiled, e)
        else:
            check_result(name, call, spoiled, out)
    FUZZ_CASES["api"] += 1


@fuzz_settings(1_500, 20_000, slow=False)
@given(case=cases())
def test_fuzz_api(case):
    _property(case)


@pytest.mark.slow
@fuzz_settings(1_500, 20_000, slow=True)
@given(case=cases())
def test_fuzz_api_large(case):
    _property(case)


def test_every_public_function_has_a_spec():
    """The harness covers the public API: a new public function without a spec fails here."""
    covered = {"adaptive_selective_scan", "adaptive_selective_scan_ref", "scan_cost", "layer_cost",
               "block_unit_costs", "segment_counts", "tile_lengths", "kernel_available"}
    assert set(ops.__all__) == covered and covered <= set(SPECS)
    mod_names = {"Chunk": "Chunk_Dechunk", "Dechunk": "Chunk_Dechunk", "SegmentLayout": "layout_from_counts",
                 "TiledMamba": "TiledMamba_forward", "TiledMambaState": "TiledMamba_step",
                 "TokenRouter": "TokenRouter_forward", "TileRouter": "TileRouter_forward",
                 "TileRouterState": "TileRouter_step", "layout_from_boundaries": "layout_from_boundaries",
                 "layout_from_counts": "layout_from_counts", "linear_density": "linear_density",
                 "ratio_loss": "ratio_loss"}
    assert set(modules.__all__) == set(mod_names) and set(mod_names.values()) <= set(SPECS)
    public_fisher = {n for n in dir(fisher) if not n.startswith("_") and callable(getattr(fisher, n))
                     and getattr(getattr(fisher, n), "__module__", "").startswith("infogeo.fisher.")}
    assert public_fisher <= set(SPECS), public_fisher - set(SPECS)
    others = {"knn", "geodesic_distances", "geodesic_path", "path_length", "default_bandwidth", "laplacian_spectrum",
              "ollivier_ricci", "forman_ricci", "node_curvature", "resolution_flow"}
    assert others <= set(SPECS)


# ---- checkpoints trust nothing (issue 27): mutated bytes of a tiny text checkpoint -------------------
_CKPT: dict = {}


def _tiny_checkpoint() -> bytes:
    """The bytes of a tiny text checkpoint (made once)."""
    if "raw" not in _CKPT:
        import tempfile
        from pathlib import Path

        from tiling.train.textmodel import build_model, model_config, save_text_checkpoint

        torch.manual_seed(0)
        model = build_model(model_config("adaptive", 0.5, d_model=8, n_layers=1, d_state=2, tile_size=4))
        with tempfile.TemporaryDirectory() as d:
            _CKPT["raw"] = save_text_checkpoint(Path(d) / "c.safetensors", model, configuration="adaptive", budget=0.5,
                                                context=16).read_bytes()
    return _CKPT["raw"]


JSON_SPOILS = [None, -1, 0, 2 ** 63, 1.5, float("nan"), "x", [], {}, [1, 2], True]


class Mutated(bytes):
    """Checkpoint bytes that print as what was done to them (hypothesis prints its failing cases)."""

    how = ""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {self.how}>"


def _mutated(how: str, data: bytes) -> Mutated:
    m = Mutated(data)
    m.how = how
    return m


def _spoil_json(draw, obj):
    """One value somewhere in a JSON object replaced by a wrong one (or a key dropped)."""
    if not isinstance(obj, (dict, list)) or not obj or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(JSON_SPOILS))
    keys = sorted(obj) if isinstance(obj, dict) else list(range(len(obj)))
    k = draw(st.sampled_from(keys))
    out = dict(obj) if isinstance(obj, dict) else list(obj)
    if isinstance(out, dict) and draw(st.integers(0, 4)) == 0:
        del out[k]
    else:
        out[k] = _spoil_json(draw, out[k])
    return out


@st.composite
def checkpoint_files(draw):
    import json
    import struct

    raw = bytearray(_tiny_checkpoint())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    kind = draw(st.sampled_from(["flip", "truncate", "length", "header", "meta", "meta", "meta"]))
    if kind == "flip":
        where = [draw(st.integers(0, len(raw) - 1)) for _ in range(draw(st.integers(1, 4)))]
        for i in where:
            raw[i] ^= draw(st.integers(1, 255))
        return kind, _mutated(f"bytes {where} flipped", bytes(raw))
    if kind == "truncate":
        cut = draw(st.integers(0, len(raw) - 1))
        return kind, _mutated(f"cut at {cut}", bytes(raw[:cut]))
    if kind == "length":
        length = draw(st.sampled_from([0, 1, n - 1, n + 1, len(raw), 2 ** 40, 2 ** 64 - 1]))
        return kind, _mutated(f"header length {length}", struct.pack("<Q", length) + bytes(raw[8:]))
    if kind == "header":
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        header[name] = _spoil_json(draw, header[name])
        how = f"header of {name}: {json.dumps(header[name])[:200]}"
    else:
        meta = _spoil_json(draw, json.loads(header["__metadata__"]["meta"]))
        header["__metadata__"]["meta"] = json.dumps(meta)
        how = f"meta: {json.dumps(meta)[:300]}"
    text = json.dumps(header).encode()
    return kind, _mutated(how, struct.pack("<Q", len(text)) + text + bytes(raw[8 + n:]))


def _checkpoint_property(case):
    import tempfile
    from pathlib import Path

    from tiling.train.checkpoint import CheckpointError
    from tiling.train.textmodel import TextModelError, load_text_model

    kind, data = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.safetensors"
        path.write_bytes(data)
        try:
            model, _ = load_text_model(path)
        except (TextModelError, CheckpointError) as e:
            assert "checkpoint" in str(e) and str(path) in str(e), (kind, str(e)[:300])
        else:  # a mutation that kept the file valid (e.g. a flipped bit in an unused byte): it must run
            with torch.no_grad():
                assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))).all() or kind == "flip"
    FUZZ_CASES["api checkpoint"] += 1


@fuzz_settings(150, 5_000, slow=False)
@given(case=checkpoint_files())
def test_fuzz_checkpoint_loading(case):
    _checkpoint_property(case)


@pytest.mark.slow
@fuzz_settings(150, 5_000, slow=True)
@given(case=checkpoint_files())
def test_fuzz_checkpoint_loading_large(case):
    _checkpoint_property(case)
