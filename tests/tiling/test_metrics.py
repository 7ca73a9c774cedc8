"""tiling.metrics: IFQ terms (literal and normalised), CER, AE (seed 000 §3.3–3.4)."""
import math

import pytest
import torch
from hypothesis import Phase, find, given, settings, strategies as st

from tiling.metrics import (
    adaptation_efficiency,
    cer,
    cross_tile_flow,
    edge_utilization,
    ifq,
    information_density,
    layer_tile_metrics,
    load_imbalance,
    pattern_stability,
    saved_tensor_bytes,
    state_distribution,
    tile_attention,
)
from tiling.config import TilingConfig
from tiling.modules import TiledMamba

F64 = torch.float64
floats = st.floats(-10.0, 10.0, allow_nan=False, width=64)


def semiseparable_reference(delta, A, B, C):
    """Mamba's matrix from the paper's equations, float64 loops: Σ_n C_t exp(A Σ_{s<r≤t} Δ_r) B_s Δ_s."""
    batch, dim, n = delta.shape
    M = torch.zeros(batch, dim, n, n, dtype=F64)
    for b in range(batch):
        for d in range(dim):
            for t in range(n):
                for s in range(t + 1):
                    decay = torch.exp(A[d] * delta[b, d, s + 1:t + 1].sum())
                    M[b, d, t, s] = (C[b, :, t] * decay * B[b, :, s]).sum() * delta[b, d, s]
    return M


def test_tile_attention_is_mamba_semiseparable_matrix():
    g = torch.Generator().manual_seed(0)
    delta = torch.rand(2, 3, 7, generator=g, dtype=F64) * 0.5
    A = -torch.rand(3, 4, generator=g, dtype=F64) - 0.1
    B = torch.randn(2, 4, 7, generator=g, dtype=F64)
    C = torch.randn(2, 4, 7, generator=g, dtype=F64)
    got = tile_attention(delta, A, B, C)
    torch.testing.assert_close(got, semiseparable_reference(delta, A, B, C), rtol=1e-10, atol=1e-12)


def test_tile_attention_reproduces_the_scan_at_coarse_resolution():
    """Linearity: y = A u for any u, at the tile's resolution and state dims."""
    from tiling.ops import adaptive_selective_scan_ref

    g = torch.Generator().manual_seed(1)
    delta = torch.rand(1, 3, 9, generator=g, dtype=F64)
    A = -torch.rand(3, 4, generator=g, dtype=F64)
    B, C = torch.randn(1, 4, 9, generator=g, dtype=F64), torch.randn(1, 4, 9, generator=g, dtype=F64)
    u = torch.randn(1, 3, 9, generator=g, dtype=F64)
    M = tile_attention(delta, A, B, C, resolution=0.34, state_dims=2)
    y = adaptive_selective_scan_ref(u, delta, A, B, C, tile_size=9, resolution=0.34, state_dims=2)
    torch.testing.assert_close(torch.einsum("bdts,bds->bdt", M, u), y, rtol=1e-10, atol=1e-12)
    assert float(M.triu(1).abs().max()) == 0.0  # causal


def test_terms_closed_forms():
    A = torch.tensor([[1.0, 0.0], [2.0, 3.0]], dtype=F64)
    A_prev = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=F64)
    assert float(pattern_stability(A, A_prev, normalised=False)) == pytest.approx(1 - 3 / math.sqrt(14))
    assert float(pattern_stability(A, A_prev)) == pytest.approx(1 - 3 / (math.sqrt(14) + math.sqrt(5)))
    assert float(pattern_stability(torch.zeros(2, 2), torch.zeros(2, 2))) == 1.0
    zero = torch.zeros(2, 2, dtype=F64, requires_grad=True)  # empty patterns: the value, and no NaN gradient
    assert float(edge_utilization(zero.detach())) == 0.0
    (g,) = torch.autograd.grad(edge_utilization(zero) + pattern_stability(zero, zero.detach()), zero)
    assert bool(torch.isfinite(g).all())
    # edge = first column and last row: entries (0,0), (1,0), (1,1) → |1|+|2|+|3| = 6 of 6
    assert float(edge_utilization(A)) == pytest.approx(1.0)
    assert float(edge_utilization(A, normalised=False)) == pytest.approx((6 / 3) / (6 / 4))
    P = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=F64)
    W = torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=F64)
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    torch.testing.assert_close(cross_tile_flow(P, W, normalised=False), torch.tensor([2 * kl, 0.0], dtype=F64))
    torch.testing.assert_close(cross_tile_flow(P, W), torch.tensor([1 - math.exp(-kl), 0.0], dtype=F64))
    x = torch.tensor([2.0, 8.0], dtype=F64)
    torch.testing.assert_close(information_density(x, 2, normalised=False), torch.tensor([1.0, 4.0], dtype=F64))
    torch.testing.assert_close(information_density(x, 2, ref=1.0), torch.tensor([0.5, 0.8], dtype=F64))


patterns = st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.lists(floats, min_size=n * n, max_size=n * n), st.lists(floats, min_size=n * n, max_size=n * n), st.just(n)))
dists = st.integers(2, 5).flatmap(lambda k: st.lists(
    st.lists(st.floats(1e-3, 1.0), min_size=k, max_size=k), min_size=2, max_size=4))


def _terms(pats, rows, wts, grads, normalised):
    a, b, n = pats
    A = torch.tensor(a, dtype=F64).view(n, n).tril()
    A_prev = torch.tensor(b, dtype=F64).view(n, n).tril()
    P = torch.tensor(rows, dtype=F64)
    P = P / P.sum(-1, keepdim=True)
    m = P.shape[0]
    W = torch.tensor((wts * m * m)[: m * m], dtype=F64).view(m, m)
    ps = pattern_stability(A, A_prev, normalised=normalised)
    ctf = cross_tile_flow(P, W, normalised=normalised)[0]
    eu = edge_utilization(A, normalised=normalised)
    id_ = information_density(torch.tensor(grads, dtype=F64), 3, normalised=normalised)[0]
    return ps, ctf, eu, id_


@settings(max_examples=60)
@given(patterns, dists, st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4),
       st.lists(st.floats(0.0, 1e6), min_size=1, max_size=4),
       st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).filter(lambda w: sum(w) > 1e-3))
def test_normalised_ifq_is_in_unit_interval(pats, rows, wts, grads, raw_w):
    ps, ctf, eu, id_ = _terms(pats, rows, wts, grads, True)
    for t in (ps, ctf, eu, id_):
        assert 0.0 <= float(t) <= 1.0
    w = [v / sum(raw_w) for v in raw_w]
    w[-1] = 1.0 - sum(w[:-1])
    w = [max(v, 0.0) for v in w]
    w = [v / sum(w) for v in w]
    value = float(ifq(ps, ctf, eu, id_, weights=w))
    assert -1e-12 <= value <= 1.0 + 1e-12


def _literal_ifq(pats, rows, wts, grads):
    ps, ctf, eu, id_ = _terms(pats, rows, wts, grads, False)
    return float(ifq(ps, ctf, eu, id_, normalised=False))


def test_literal_ifq_violates_theorem_3_3():
    """Hypothesis finds literal IFQ values outside [0, 1] (seed 000 Theorem 3.3 fails for them)."""
    strat = st.tuples(patterns, dists, st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4),
                      st.lists(st.floats(0.0, 1e6), min_size=1, max_size=4))

    def finite(args):
        v = _literal_ifq(*args)
        return math.isfinite(v)

    above = find(strat, lambda a: finite(a) and _literal_ifq(*a) > 1.0, settings=settings(database=None, max_examples=500, phases=[Phase.generate]))
    below = find(strat, lambda a: finite(a) and _literal_ifq(*a) < 0.0, settings=settings(database=None, max_examples=500, phases=[Phase.generate]))
    assert _literal_ifq(*above) > 1.0 and _literal_ifq(*below) < 0.0


def test_literal_counterexamples_regression():
    """Kept counterexamples: each literal term leaves [0, 1]."""
    A = torch.tensor([[1.0]], dtype=F64)
    assert float(pattern_stability(A, torch.tensor([[-5.0]], dtype=F64), normalised=False)) == pytest.approx(-5.0)
    P = torch.tensor([[0.99, 0.01], [0.01, 0.99]], dtype=F64)
    W = torch.ones(2, 2, dtype=F64)
    assert float(cross_tile_flow(P, W, normalised=False)[0]) > 4.0
    B = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    assert float(edge_utilization(B, normalised=False)) == pytest.approx(9 / 5)
    assert float(information_density(torch.tensor([30.0], dtype=F64), 3, normalised=False)) == 10.0
    # IFQ with the default weights: (−5 + 4.6 + 1.8 + 10)/4 > 1, and (−5 + 0 + 0 + 0)/4 < 0
    big = ifq(torch.tensor(-5.0), torch.tensor(4.6), torch.tensor(1.8), torch.tensor(10.0), normalised=False)
    assert float(big) > 1.0
    assert float(ifq(torch.tensor(-5.0), 0.0, 0.0, 0.0, normalised=False)) < 0.0


def test_ifq_rejects_bad_weights_and_terms():
    with pytest.raises(ValueError, match="sum to 1"):
        ifq(0.5, 0.5, 0.5, 0.5, weights=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="non-negative"):
        ifq(0.5, 0.5, 0.5, 0.5, weights=(1.5, -0.5, 0.0, 0.0))
    with pytest.raises(ValueError, match="ps"):
        ifq(torch.tensor(1.5), 0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="four"):
        ifq(0.5, 0.5, 0.5, 0.5, weights=(1.0,))
    with pytest.raises(ValueError, match="sum to 1"):
        cross_tile_flow(torch.tensor([[0.5, 0.6]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="W"):
        cross_tile_flow(torch.tensor([[0.5, 0.5]]), -torch.ones(1, 1))
    with pytest.raises(ValueError, match="square"):
        edge_utilization(torch.ones(2, 3))


def test_state_distribution_rows():
    s = torch.zeros(1, 2, 3, 4, dtype=F64)
    s[0, :, 1, 2] = 3.0
    P = state_distribution(s)
    assert P.shape == (1, 3, 4)
    torch.testing.assert_close(P.sum(-1), torch.ones(1, 3, dtype=F64))
    assert float(P[0, 1, 2]) == pytest.approx(1.0, abs=1e-9)


def test_cer_and_load_imbalance_and_ae():
    assert float(cer(0.6, 0.5, 1.0, 0.25)) == pytest.approx(4.8)
    with pytest.raises(ValueError, match="resolution"):
        cer(0.5, 1.0, 1.0, 0.0)
    assert float(load_imbalance(torch.tensor([2.0, 2.0]))) == 0.0
    assert float(load_imbalance(torch.tensor([1.0, 3.0]))) == pytest.approx(0.5)
    R = torch.tensor([0.5, 0.3, 0.6], dtype=F64)
    Lt = torch.tensor([0.0, 1.0], dtype=F64)
    lit = (-0.2 * 0.5 + 0.3 * (1 - 1 / (1 + math.exp(-1.0)))) / 2
    assert float(adaptation_efficiency(R, Lt, normalised=False)) == pytest.approx(lit)
    norm = (0.2 / 0.9375 * 1.0 + 0.3 / 0.9375 * 2 * (1 - 1 / (1 + math.exp(-1.0)))) / 2
    assert float(adaptation_efficiency(R, Lt)) == pytest.approx(norm)
    # literal AE is negative for a run that lowers the resolution; normalised stays in [0, 1]
    down = torch.tensor([1.0, 0.0625], dtype=F64)
    assert float(adaptation_efficiency(down, torch.zeros(1, dtype=F64), normalised=False)) < 0
    assert float(adaptation_efficiency(down, torch.zeros(1, dtype=F64))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="imbalance"):
        adaptation_efficiency(R, torch.tensor([-1.0, 0.0], dtype=F64))


def test_saved_tensor_bytes_counts_distinct_storage():
    x = torch.randn(100, dtype=torch.float32, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * x).sum()) == 400
    assert saved_tensor_bytes(lambda: x.sum()) == 0


def test_layer_tile_metrics_in_unit_interval():
    torch.manual_seed(0)
    layer = TiledMamba(8, d_state=4, tiling=TilingConfig(tile_size=8, budget=0.35, scope="scan"))
    x = torch.randn(1, 30, 8)
    m = layer_tile_metrics(layer, x)
    assert m["patterns"].shape == (4, 16, 8, 8)
    for k in ("ps", "ctf", "eu", "id", "ifq"):
        assert bool(((m[k] >= 0) & (m[k] <= 1)).all()), k
    assert torch.equal(m["ps"], torch.ones(4, dtype=m["ps"].dtype))
    with torch.no_grad():
        layer.x_proj.weight.mul_(1.5)
    m2 = layer_tile_metrics(layer, x, previous=m["patterns"])
    assert bool((m2["ps"] < 1).all()) and bool((m2["ps"] >= 0).all())
    assert 0 < m["compute"] < 1 and m["cer"] > 0
