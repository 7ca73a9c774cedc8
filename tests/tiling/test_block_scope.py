"""TiledMamba(scope="block"): HF equivalence at budget 1, causality, prefix consistency, the float64
reference of the block scope (values and gradients), step = forward, layer_cost vs FlopCounterMode,
budgets, the chunk layout and bad input."""
import copy
import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiling_kwargs
from tiling.config import TilingConfig
from tiling.modules import TiledMamba
from tiling.modules.chunk import (
    Chunk, check_layout, dithered_counts, layout_from_boundaries, layout_from_counts, segment_boundaries,
)
from tiling.ops import layer_cost
from tiling.ops.reference import block_scope_ref

from test_tiled_mamba import assert_causal, assert_cpu_cuda_agree, hf_mixer, moves_earlier_outputs, stepped

f64 = torch.float64


def block_layer(seed=0, *, open_gate=True, **kw):
    torch.manual_seed(seed)
    kw.setdefault("tile_size", 8)
    layer = TiledMamba(16, d_state=4, **tiling_kwargs({"scope": "block", **kw}))
    if open_gate:  # a trained pool gate: the pooled summary acts
        with torch.no_grad():
            layer.chunk.pool_gate.normal_(0.0, 0.7)
    return layer


def boundaries_of(layer, x, budget=None):
    """The boundary mask the layer uses (via its plan machinery, independent of the forward)."""
    c = layer.budget if budget is None else budget
    layout = layer._scope.boundaries.segments(layer, x, None, None, c, False, False).layout
    return torch.ones(x.shape[:2], dtype=torch.bool) if layout is None else layout.boundary


@pytest.mark.parametrize("L", [1, 37, 64])
def test_budget_one_equals_hf_mixer(L):
    layer = block_layer(open_gate=True, tile_size=16)
    mixer = hf_mixer(16, 4, layer.dt_rank)
    layer.load_mamba_state_dict(mixer.state_dict())
    x = torch.randn(2, L, 16)
    with torch.no_grad():
        ref = mixer(x)
        got = layer(x, budget=1.0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("boundaries", ["tile", "token"])
@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
def test_block_scope_is_causal(boundaries, budget):
    layer = block_layer(2, budget=budget, boundaries=boundaries)
    if boundaries == "token":
        with torch.no_grad():
            layer.router.q_proj.weight.normal_()
    # a token inside a coarse segment is seen from the next segment on, so the last position tested
    # has later segments (the last token of a sequence may be seen by nothing: by design)
    assert_causal(layer, torch.randn(2, 60, 16), [0, 13, 16, 41, 50])


def test_non_causal_block_scope_is_not_causal():
    """The causality test can fail: the encoder mode reads a tile's own density."""
    assert moves_earlier_outputs(block_layer(3, budget=0.25, causal=False), torch.randn(1, 48, 16))


@pytest.mark.parametrize("boundaries", ["tile", "token"])
def test_prefix_of_a_sequence_is_processed_as_in_the_whole(boundaries):
    """The nominal tile grid: the last partial tile is segmented as in a longer sequence."""
    layer = block_layer(4, budget=0.35, boundaries=boundaries)
    x = torch.randn(2, 45, 16)
    with torch.no_grad():
        whole = layer(x)
        for t in (5, 19, 33):
            torch.testing.assert_close(layer(x[:, :t]), whole[:, :t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("boundaries", ["tile", "token"])
@pytest.mark.parametrize("budget", [0.3, 1.0])
def test_values_and_gradients_match_the_float64_reference(boundaries, budget):
    layer = block_layer(5, budget=budget, boundaries=boundaries).double()
    x = torch.randn(2, 29, 16, dtype=f64, requires_grad=True)
    bnd = boundaries_of(layer, x.detach())
    assert (budget == 1.0) == bool(bnd.all())
    y = layer(x)
    names = [n for n, _ in layer.named_parameters() if not n.startswith("router.")]
    params = dict(layer.named_parameters())
    weights = {n: params[n].detach().clone().requires_grad_(True) for n in names}
    xr = x.detach().clone().requires_grad_(True)
    conf = None
    if boundaries == "token" and budget < 1.0:  # the router's straight-through path, on a copy of it
        p = copy.deepcopy(layer.router)(xr)
        conf = torch.where(bnd, p, 1.0 - p)
    ref = block_scope_ref(xr, weights, bnd, conf)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ref)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-11)
    for n in names:
        if budget == 1.0 and n == "chunk.pool_gate":  # at R = 1 chunking is skipped: no pool, no gradient
            assert params[n].grad is None
            continue
        torch.testing.assert_close(params[n].grad, weights[n].grad, rtol=1e-9, atol=1e-11, msg=n)
        assert float(params[n].grad.abs().max()) > 0, n


def test_router_receives_gradient_through_the_straight_through_factor():
    layer = block_layer(6, budget=0.4, boundaries="token")
    x = torch.randn(2, 40, 16)
    layer(x).pow(2).sum().backward()
    assert float(layer.router.q_proj.weight.grad.abs().max()) > 0
    assert float(layer.router.k_proj.weight.grad.abs().max()) > 0
    # the ratio loss is H-Net's eq. 10 on the realised boundaries and probabilities
    p = layer.router(x)
    b = p >= 0.5
    b[:, 0] = True
    N = 1 / 0.4
    F_, G = b.double().mean(), p.double().mean()
    want = N / (N - 1) * ((N - 1) * F_ * G + (1 - F_) * (1 - G))
    torch.testing.assert_close(layer.ratio_loss.double(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("boundaries,policy", [("tile", "adaptive"), ("tile", "uniform"), ("tile", "binary"),
                                               ("token", "adaptive")])
@pytest.mark.parametrize("budget", [0.3, 1.0])
def test_step_equals_forward(boundaries, policy, budget):
    layer = block_layer(7, budget=budget, boundaries=boundaries, policy=policy).double()
    if boundaries == "token":
        with torch.no_grad():
            layer.router.q_proj.weight.normal_()
    x = torch.randn(3, 43, 16, dtype=f64)
    with torch.no_grad():
        full = layer(x)
    got, state = stepped(layer, x)
    torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-12)
    assert state.position == 43


def test_step_runs_the_mixer_only_at_segment_starts():
    layer = block_layer(8, budget=0.25, policy="uniform")
    calls = []
    mixer = layer._mixer_step
    layer._mixer_step = lambda *a, **k: calls.append(1) or mixer(*a, **k)
    x = torch.randn(1, 32, 16)
    stepped(layer, x)
    assert len(calls) == int(boundaries_of(layer, x).sum()) == 8  # ⌈0.25·8⌉ = 2 segments in each of 4 tiles


def test_budget_met_exactly_non_causal_and_within_the_bound_causal():
    x = torch.randn(6, 96, 16)
    enc = block_layer(9, budget=0.35, causal=False)
    plan = enc.plan(x)
    torch.testing.assert_close(plan.mean_resolution(), torch.full((6,), 0.35, dtype=f64), atol=1e-6, rtol=0)
    dec = block_layer(9, budget=0.35)
    plan = dec.plan(x)
    assert bool(((plan.mean_resolution() - 0.35).abs() <= dec.tiling.slack / plan.n_tiles + 1e-6).all())
    # token boundaries: the non-causal router takes exactly ⌈c·L⌉ boundaries per row
    tok = block_layer(9, budget=0.35, causal=False, boundaries="token")
    assert torch.equal(boundaries_of(tok, x).sum(1), torch.full((6,), math.ceil(0.35 * 96)))


def test_plan_reports_layer_cost_and_segments():
    layer = block_layer(10, budget=0.3, policy="uniform")
    x = torch.randn(2, 50, 16)
    plan = layer.plan(x)
    bnd = boundaries_of(layer, x)
    per_tile = torch.stack([bnd[:, i * 8:(i + 1) * 8].sum(1) for i in range(plan.n_tiles)], dim=1)
    assert torch.equal(plan.segments, per_tile)
    # 0.3·8 = 2.4 segments a tile, rounded with the error carried on: 2, 3, 2, 3, 2, 2, (3 →) 1, the last
    # tile (2 tokens) holding one start of its nominal grid [0, 2, 5)
    assert plan.segments[0].tolist() == [2, 3, 2, 3, 2, 2, 1]
    Lc = plan.meta["compact_length"]
    assert Lc == int(plan.segments.sum(1).max()) == 15
    # the uniform policy (R_i = c) places its segments without the signal: it is computed for the plan's
    # report only, and not counted
    want = layer_cost(50, d_model=16, d_state=4, d_inner=32, dt_rank=1, tile_size=8, batch=2, compact_length=Lc,
                      signal="none", signal_channels=int(layer.signal_index.numel()))
    assert plan.meta["layer_cost"] == want
    # per-tile costs add up to the whole, less the once-per-call composite map and the conv's causal tail
    tail = 2 * (layer.d_conv - 1) * (layer.d_inner * layer.d_conv + layer.d_inner)
    assert int(plan.cost.sum()) == want["total"] - want["signal_maps"] - tail


def _flops(layer, x, **kw):
    layer._signal_cache = None  # the composite map is cached between weight updates: count a fresh one
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            layer(x, **kw)
    return counter.get_total_flops()


@pytest.mark.parametrize("budget", [0.25, 0.6, 1.0])
@pytest.mark.parametrize("boundaries,policy", [("tile", "adaptive"), ("tile", "uniform"), ("token", "adaptive")])
def test_layer_cost_agrees_with_flop_counter(budget, boundaries, policy):
    torch.manual_seed(11)
    layer = TiledMamba(32, d_state=8, tiling=TilingConfig(tile_size=16, scope="block", budget=budget,
                                                          boundaries=boundaries, policy=policy))
    x = torch.randn(2, 100, 32)
    plan = layer.plan(x)
    counted = _flops(layer, x)
    assert counted == 2 * plan.meta["layer_cost"]["matmul"]
    # the signal is counted exactly where the forward computes it: below budget 1, by a policy that reads it
    assert layer.computes_signal() == (budget < 1 and policy != "uniform")
    assert (plan.meta["layer_cost"]["signal"] > 0) == layer.computes_signal()


@pytest.mark.parametrize("policy", ["adaptive", "uniform"])
def test_scan_scope_layer_cost_agrees_with_flop_counter(policy):
    torch.manual_seed(12)
    layer = TiledMamba(32, d_state=8, tiling=TilingConfig(tile_size=16, scope="scan", budget=0.4, policy=policy))
    x = torch.randn(2, 100, 32)
    counted = _flops(layer, x)
    cost = layer.plan(x).meta["layer_cost"]
    assert counted == 2 * cost["matmul"]
    assert layer.computes_signal() == (policy != "uniform") == (cost["density"] > 0)


def test_block_scope_counts_fall_with_the_budget_at_the_benchmark_shape():
    """Goal of the block scope: counted multiply-adds at budget 0.25 ≤ 0.30× of budget 1 (uniform plan)."""
    kw = dict(d_model=768, d_state=16, d_inner=1536, dt_rank=48, tile_size=64)
    full = layer_cost(2048, signal="none", **kw)["total"]
    quarter = layer_cost(2048, compact_length=2048 // 4, **kw)["total"]
    scan = layer_cost(2048, scope="scan", resolution=0.25, **kw)["total"]
    assert quarter / full <= 0.30
    assert scan / full > 0.8  # the scan scope does not pay: its projections run on every token


def test_zero_pool_gate_and_budget_one_are_the_identity_parts():
    layer = block_layer(13, open_gate=False, budget=0.25)
    x = torch.randn(1, 40, 16)
    layout = layer._scope.boundaries.segments(layer, x, None, None, 0.25, False, False).layout
    reps = layer.chunk(x, layout)
    torch.testing.assert_close(reps, x[:, layout.start[0]])  # g = 0: the representatives alone
    ones = layout_from_boundaries(torch.ones(1, 40, dtype=torch.bool))
    assert ones.is_identity and layer.chunk(x, ones) is x
    # pool=False: no gate parameter, the representatives alone (= a closed gate), in training too
    plain = block_layer(13, open_gate=False, budget=0.25, pool=False)
    assert "chunk.pool_gate" not in dict(plain.named_parameters())
    torch.testing.assert_close(plain(x), layer(x), rtol=0, atol=0)


@given(T=st.integers(1, 64), n=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_dithered_counts_meet_the_budget_within_half_a_segment(T, n, seed):
    g = torch.Generator().manual_seed(seed)
    # R·T ≥ 1 (r_min ≥ 1/T, as the layer's default 1/16 with tiles of 16 or more): no tile is clamped
    R = 1.0 / T + torch.rand(3, n, generator=g, dtype=f64) * (1.0 - 1.0 / T)
    m, carry = dithered_counts(R, T)
    assert bool(((m >= 1) & (m <= T)).all())
    target = (R * T).sum(1)
    assert bool(((m.sum(1) - target).abs() <= 0.5 + 1e-9).all())
    torch.testing.assert_close(carry, target - m.sum(1).to(f64))
    # causal and resumable: two halves with the carry handed on equal one call
    k = n // 2
    m1, c1 = dithered_counts(R[:, :k], T)
    m2, _ = dithered_counts(R[:, k:], T, c1)
    assert torch.equal(torch.cat([m1, m2], 1), m)
    assert torch.equal(dithered_counts(torch.ones(2, n), T)[0], torch.full((2, n), T))


def _loop_boundaries(m, L, T):
    out = torch.zeros(m.shape[0], L, dtype=torch.bool)
    for b in range(m.shape[0]):
        for i in range(m.shape[1]):
            for j in range(int(m[b, i])):
                o = i * T + (j * T) // int(m[b, i])
                if o < L:
                    out[b, o] = True
    return out


@given(T=st.integers(1, 12), L=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_segment_layout_invariants(T, L, seed):
    g = torch.Generator().manual_seed(seed)
    n_tiles = -(-L // T)
    m = torch.randint(1, T + 1, (2, n_tiles), generator=g)
    bnd = segment_boundaries(m, L, T)
    assert torch.equal(bnd, _loop_boundaries(m, L, T))
    lay = layout_from_counts(m, L, T)
    check_layout(lay, 2, L)
    assert int(lay.span.sum()) == 2 * L and bool(bnd[:, 0].all())
    for b in range(2):
        n = int(lay.lengths[b])
        starts = lay.start[b, :n]
        assert bool((starts[1:] > starts[:-1]).all())
        assert torch.equal(lay.segment[b, starts], torch.arange(n))
        assert torch.equal(lay.gap[b, 1:n], starts[1:] - starts[:-1]) and int(lay.gap[b, 0]) == 1
    x = torch.randn(2, L, 3, generator=g, dtype=f64)
    chunk = Chunk(3).double()
    with torch.no_grad():
        chunk.pool_gate.fill_(1.0)
    rep = chunk(x, lay)
    for b in range(2):  # the representative is its token plus the mean of the previous segment's others
        n = int(lay.lengths[b])
        for s in range(n):
            a = int(lay.start[b, s])
            prev = int(lay.start[b, s - 1]) if s else None
            want = x[b, a] + (x[b, prev + 1:a].mean(0) if prev is not None and a - prev > 1 else 0)
            torch.testing.assert_close(rep[b, s], want)


def test_bad_input():
    with pytest.raises(ValueError, match="scope must be one of"):
        TiledMamba(16, tiling=TilingConfig(scope="tile"))
    with pytest.raises(ValueError, match="boundaries must be one of"):
        TiledMamba(16, tiling=TilingConfig(scope="block", boundaries="byte"))
    with pytest.raises(ValueError, match="boundaries='token' needs scope='block'"):
        TiledMamba(16, tiling=TilingConfig(scope="scan", boundaries="token"))
    with pytest.raises(ValueError, match="routing"):
        TiledMamba(16, tiling=TilingConfig(scope="block", routing=True))
    with pytest.raises(ValueError, match="state_k"):
        TiledMamba(16, tiling=TilingConfig(scope="block", state_k=0.1))
    with pytest.raises(ValueError, match="budget"):
        TiledMamba(16, tiling=TilingConfig(scope="block", budget=1.5))
    layer = block_layer(validate=True)
    with pytest.raises(ValueError, match="budget"):
        layer(torch.randn(1, 8, 16), budget=0.0)
    with pytest.raises(ValueError, match="density"):
        layer(torch.randn(1, 8, 16), budget=0.5, density=torch.ones(1, 9))
    with pytest.raises(ValueError, match="density"):
        layer(torch.randn(1, 8, 16), density=torch.ones(2, 8))
    bad = torch.randn(1, 8, 16)
    bad[0, 2, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN"):
        layer(bad)
    lay = layout_from_counts(torch.tensor([[2, 2]]), 16, 8)
    with pytest.raises(ValueError, match="layout.boundary"):
        check_layout(lay, 1, 15)
    broken = type(lay)(boundary=lay.boundary, segment=lay.segment, start=lay.start, span=lay.span + 1,
                       lengths=lay.lengths)
    with pytest.raises(ValueError, match="add up"):
        check_layout(broken, 1, 16)
    with pytest.raises(ValueError, match="seg_counts"):
        segment_boundaries(torch.tensor([[0, 2]]), 16, 8)
    with pytest.raises(ValueError, match="tiles"):
        segment_boundaries(torch.tensor([[1, 2, 3]]), 16, 8)
    with pytest.raises(ValueError, match="causal"):
        enc = block_layer(budget=0.5, causal=False)
        enc.step(torch.randn(1, 16), enc.allocate_inference_state(1))
    scan = TiledMamba(16, d_state=4, tiling=TilingConfig(scope="scan"))
    with pytest.raises(ValueError, match="allocated by a scan-scope layer"):
        layer.step(torch.randn(1, 16), scan.allocate_inference_state(1))


def test_repr_names_the_scope():
    r = repr(block_layer(budget=0.35, boundaries="token"))
    assert "scope='block'" in r and "boundaries='token'" in r
    assert "Chunk(d_model=16, pool=True)" in r and "d_model=16, rank=16" in r


@pytest.mark.cuda
@pytest.mark.parametrize("boundaries", ["tile", "token"])
@pytest.mark.parametrize("budget", [1.0, 0.3])
def test_cpu_and_cuda_agree(boundaries, budget):
    assert_cpu_cuda_agree(block_layer(14, budget=budget, boundaries=boundaries), every_param=False)


def test_layout_from_counts_survives_a_tile_size_near_two_to_the_63():
    """A fuzz case: ``tile_size`` 2^62 (any int ≥ 1 passes the checks) made the kernel's ``j·T`` overflow and
    write before the row (a segfault), and a count of 2^62 looped over every start. Both now give the layout
    ``segment_boundaries`` defines: starts at ``⌊j·T/m⌋`` that lie inside the row."""
    big = 2 ** 62
    layout = layout_from_counts(torch.tensor([[1], [3]]), 2, big)
    assert layout.boundary.tolist() == [[True, False], [True, False]] and layout.lengths.tolist() == [1, 1]
    layout = layout_from_counts(torch.tensor([[big], [3]]), 2, big)  # starts 0 and 1: every byte, then one
    assert layout.boundary.tolist() == [[True, True], [True, False]] and layout.lengths.tolist() == [2, 1]
