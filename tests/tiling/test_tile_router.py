"""TileRouter (tiling.modules.router): the tile policy as a module beside the layer (seed 001 §3.2.2,
§3.4). Its plan is plan_tiles with its running reference, its steps reproduce the plan's segment
starts, its decoding state is frozen, and TiledMamba delegates to it."""
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from tiling.config import TilingConfig
from tiling.modules import TiledMamba, TiledMambaState
from tiling.modules.chunk import segment_boundaries
from tiling.modules.router import RunningCalibration, TileRouter, TileRouterState, TokenRouter
from tiling.policy import dithered_counts, plan_tiles

f64 = torch.float64
T = 8

OPTIONS = [
    {},
    {"policy": "uniform"},
    {"policy": "binary"},
    {"predictor_tail": 3, "predictor_reduce": "max"},
    {"calibration": "running", "calibration_levels": 8},
]


def density(batch, L, seed):
    """Log-normal per-token signal with a dense burst per row (the regime the policy is for)."""
    g = torch.Generator().manual_seed(seed)
    rho = torch.exp(2.0 * torch.randn(batch, L, generator=g, dtype=f64))
    for b in range(batch):
        s = int(torch.randint(0, L - 12, (1,), generator=g))
        rho[b, s:s + 12] *= 30.0
    return rho


def router_of(budget=0.4, **options):
    """A router in eval mode; with calibration="running" after one training batch (reference in use)."""
    router = TileRouter(TilingConfig(tile_size=T, budget=budget, **options))
    if router.calibrator is not None:
        router.train()
        router(density(4, 96, 100))
        assert router.reference() is not None
    return router.eval()


def tile_sum(mask):
    L = mask.shape[1]
    return torch.nn.functional.pad(mask.long(), (0, -L % T)).view(mask.shape[0], -1, T).sum(-1)


@pytest.mark.parametrize("scope", ["block", "scan"])
@pytest.mark.parametrize("options", OPTIONS)
def test_plan_is_plan_tiles_with_the_running_reference(options, scope):
    router = router_of(scope=scope, **options)
    rho = density(3, 61, 0)
    curvature = torch.randn(3, 61, dtype=f64, generator=torch.Generator().manual_seed(1))
    for kw, config in (({}, router.tiling), ({"budget": 0.7}, router.tiling.replace(budget=0.7))):
        got = router(rho, curvature=curvature, **kw)
        want = plan_tiles(rho, config, curvature=curvature, reference=router.reference())
        for name in ("resolution", "segments", "density", "state_dims", "start", "length"):
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        assert got.budget == config.budget and got.mode == config.policy


def test_plan_with_the_state_dimension_policy():
    router = TileRouter(TilingConfig(tile_size=T, budget=0.4, scope="scan", state_k=2.0, s_max=4))
    rho = density(2, 40, 3)
    got, want = router(rho), plan_tiles(rho, router.tiling)
    assert torch.equal(got.state_dims, want.state_dims) and torch.equal(got.resolution, want.resolution)


def test_forward_calibrates_after_the_plan_and_only_in_training():
    router = TileRouter(TilingConfig(tile_size=T, budget=0.3, calibration="running", calibration_levels=8))
    assert isinstance(router.calibrator, RunningCalibration) and router.reference() is None
    first, second = density(2, 64, 4), density(2, 64, 5)
    plan = router(first)  # training mode (a new module): planned on the history, then folded in
    assert torch.equal(plan.resolution, plan_tiles(first, router.tiling).resolution)
    assert int(router.calibrator.updates) == 1
    reference = router.reference()
    plan = router(second)  # a batch never calibrates itself: planned on the reference before it
    assert torch.equal(plan.resolution, plan_tiles(second, router.tiling, reference=reference).resolution)
    assert int(router.calibrator.updates) == 2 and not torch.equal(router.reference(), reference)
    router.plan(first)  # plan() never updates, even in training mode
    router.eval()
    router(first)
    assert int(router.calibrator.updates) == 2
    history = TileRouter(router.tiling.replace(causal=False))  # non-causal: no reference, no update
    history(first)
    assert history.reference() is None and int(history.calibrator.updates) == 0


@pytest.mark.parametrize("budget", [0.3, 0.55, 1.0])
@pytest.mark.parametrize("options", OPTIONS)
def test_steps_reproduce_the_plans_segment_starts(options, budget):
    router = router_of(**options)
    batch, L = 3, 53  # a short last tile
    rho = density(batch, L, 6)
    plan = router(rho, budget=budget)
    want = segment_boundaries(dithered_counts(plan.resolution, T)[0], L, T)
    updates = None if router.calibrator is None else int(router.calibrator.updates)
    state = router.allocate(batch)
    got = []
    for t in range(L):
        signal_t = rho[:, t] if router.reads_signal(budget) else None
        start, state = router.step(signal_t, state, budget=budget)
        assert start.dtype == torch.bool and start.shape == (batch,)
        got.append(start)
    got = torch.stack(got, 1)
    assert torch.equal(got, want)
    assert torch.equal(tile_sum(got), plan.segments)  # the plan's segments, counted another way
    assert state.position == L
    assert router.reads_signal(budget) == (budget < 1.0 and options.get("policy") != "uniform")
    if budget < 1.0 and router.reads_signal(budget):
        assert state.tiles[0].shape == (batch, L // T)  # the finished tiles' history
        assert state.signal.shape == (batch, L % T)  # the short tile's signal so far
    if updates is not None:
        assert int(router.calibrator.updates) == updates  # decoding never calibrates


def test_state_is_frozen_and_a_step_returns_a_new_one():
    router = router_of()
    state = router.allocate(2)
    assert state.position == 0 and state.boundary is None and state.signal.shape == (2, 0)
    assert state.carry.dtype == f64 and state.tiles[0].shape == (2, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.position = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.signal = torch.zeros(2, 1, dtype=f64)
    start, new = router.step(torch.ones(2, dtype=f64), state)
    assert new is not state and new.position == 1 and new.signal.shape == (2, 1) and new.boundary.shape == (2, T)
    assert state.position == 0 and state.signal.shape == (2, 0) and state.boundary is None  # unchanged
    assert bool(start.all())  # a tile's first token starts a segment


def test_errors_and_repr():
    with pytest.raises(TypeError, match="TilingConfig"):
        TileRouter({"tile_size": 8})
    with pytest.raises(ValueError, match="boundaries='tile'"):
        TileRouter(TilingConfig(boundaries="token"))
    router = router_of(calibration="running", calibration_levels=8)
    text = repr(router)
    assert text.startswith("TileRouter(") and "(calibrator): RunningCalibration(levels=8, momentum=0.05)" in text
    assert "tile_size=8, budget=0.4, policy='adaptive', causal=True, calibration='running', scope='block'" in text
    assert repr(router_of(policy="uniform")) == ("TileRouter(tile_size=8, budget=0.4, policy='uniform', causal=True, "
                                                 "calibration='history', scope='block')")
    state = router.allocate(2)
    with pytest.raises(TypeError, match="TileRouterState"):
        router.step(torch.ones(2, dtype=f64), TiledMambaState(conv=None, ssm=None, route=None, position=0))
    with pytest.raises(ValueError, match="signal_t is needed"):
        router.step(None, state)
    with pytest.raises(ValueError, match="signal_t"):
        router.step(torch.ones(3, dtype=f64), state)
    with pytest.raises(ValueError, match="budget"):
        router.step(torch.ones(2, dtype=f64), state, budget=1.5)
    for config in (router.tiling.replace(causal=False), router.tiling.replace(scope="scan")):
        with pytest.raises(ValueError, match="causal block-scope"):
            TileRouter(config).step(torch.ones(2, dtype=f64), state)
    with pytest.raises(ValueError, match="batch"):
        router.allocate(0)


def test_the_layer_delegates_to_its_router():
    config = TilingConfig(tile_size=T, budget=0.4, calibration="running", calibration_levels=8)
    torch.manual_seed(0)
    block = TiledMamba(16, d_state=4, tiling=config)
    for layer in (block, TiledMamba(16, d_state=4, tiling=config.replace(scope="scan"))):
        assert isinstance(layer.tile_router, TileRouter) and layer.tile_router.tiling is layer.tiling
        assert layer.calibrator is layer.tile_router.calibrator
    x = torch.randn(2, 40, 16)
    block.eval()
    with torch.no_grad():
        want = block.tile_router.plan(block._signal(x))
        assert torch.equal(block.plan(x).resolution, want.resolution)
        state = block.allocate_inference_state(2)
        assert isinstance(state.tile_router, TileRouterState) and state.router is None
        for t in range(12):
            _, state = block.step(x[:, t], state)
        assert state.tile_router.position == 12
    token = TiledMamba(16, d_state=4, tiling=config.replace(boundaries="token"))
    assert isinstance(token.router, TokenRouter) and token.calibrator is None and not hasattr(token, "tile_router")
    assert not any("calibrat" in k for k in token.state_dict())
    # a token layer's checkpoint of the former layout had the (never read) calibration: it still loads
    former = {"calibrator.quantiles": torch.zeros(8, dtype=f64), "calibrator.updates": torch.tensor(1)}
    token.load_state_dict({**token.state_dict(), **former})  # strict


@pytest.mark.parametrize("options", [{}, {"policy": "binary"}, {"calibration": "running", "calibration_levels": 8}])
@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
@settings(max_examples=25, deadline=None)
@given(start=st.integers(0, 30), n=st.integers(0, 20))
def test_record_many_is_the_records_one_by_one(options, budget, start, n):
    """``record_many`` (the whole-model step records a tile's signals at its end) gives the state of
    ``record`` token by token: from any position (inside a tile, at its first or last token), over any
    count (across tile ends it records one by one), in a tile begun at budget 1 (no plan: nothing joins); the
    signals as a list of (batch,) tensors or as one (n, batch) tensor."""
    router = router_of(**options)
    rho = density(2, start + n + 13, 7)  # the burst needs 13 tokens
    state = router.allocate(2)
    for t in range(start):  # the history: decided and recorded at the budget
        _, state = router.step(rho[:, t], state, budget=budget)
    _, state, _ = router.decide(state, router._config(budget))  # the next token's plan, as the step decides it
    config = router._config(budget)
    signals = [rho[:, start + j] for j in range(n)]
    want = state
    for s in signals:
        want = router.record(s, want, config)
    block = torch.stack(signals) if signals else rho.new_zeros(0, 2)  # (n, batch): the whole-model step's form
    for got in (router.record_many(signals, state, config), router.record_many(block, state, config)):
        assert got.position == want.position == start + n
        for f in dataclasses.fields(want):
            u, v = getattr(got, f.name), getattr(want, f.name)
            same = (torch.equal(u, v) if isinstance(u, torch.Tensor) else
                    all(map(torch.equal, u, v)) if f.name == "tiles" else u == v)
            assert same, f.name
