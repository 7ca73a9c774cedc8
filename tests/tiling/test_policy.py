"""tiling.policy: tile density, the resolution policy (causal and not), state dims (seed 001 §3.2.2, §3.4)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tiling.config import TilingConfig
from tiling.modules import TiledMamba
from tiling.ops import segment_counts, tile_lengths
from tiling.policy import (
    causal_predictor,
    plan_densities,
    plan_tiles,
    resolution_policy,
    state_dims_policy,
    tile_density,
    tile_importance,
    tile_tail_density,
)


def bursty(batch, n, seed):
    """Log-normal tile densities with bursts of 1–4 dense tiles (the regime the policy is for)."""
    g = torch.Generator().manual_seed(seed)
    rho = torch.exp(torch.randn(batch, n, generator=g, dtype=torch.float64))
    for b in range(batch):
        for _ in range(3):
            s = int(torch.randint(0, n - 4, (1,), generator=g))
            w = int(torch.randint(1, 5, (1,), generator=g))
            rho[b, s:s + w] *= 50.0
    return rho


def test_tile_density_means_and_ragged_tail():
    x = torch.arange(10.0, dtype=torch.float64).view(1, 10)
    got = tile_density(x, 4)
    assert torch.equal(got, torch.tensor([[1.5, 5.5, 8.5]], dtype=torch.float64))
    assert tile_density(x, 1).equal(x)
    assert tile_density(x, 100).item() == pytest.approx(4.5)


@pytest.mark.parametrize("mode", ["adaptive", "binary", "uniform"])
@pytest.mark.parametrize("budget", [0.1, 0.25, 0.35, 0.5, 0.9, 1.0])
def test_budget_met_exactly_per_sequence_non_causal(mode, budget):
    rho = bursty(16, 48, 0)
    R = resolution_policy(rho, TilingConfig(budget=budget, r_min=0.0625, policy=mode, causal=False))
    assert R.shape == rho.shape
    assert float(R.min()) >= 0.0625 - 1e-12 and float(R.max()) <= 1.0
    n = rho.shape[1]
    if mode == "binary":
        # within one tile: the largest k with (k + (n−k) r_min)/n <= c tiles at 1
        k = math.floor(n * (budget - 0.0625) / (1 - 0.0625) + 1e-9)
        assert torch.all((R == 1.0).sum(-1) == k)
        assert torch.all(R.mean(-1) <= budget + 1e-12)
        assert torch.all(budget - R.mean(-1) < (1 - 0.0625) / n + 1e-12)
    else:
        torch.testing.assert_close(R.mean(-1), torch.full((16,), budget, dtype=torch.float64), atol=1e-9, rtol=0)
    # realised segments exceed the budget by less than one segment per tile
    lengths = tile_lengths(48 * 16, 16)
    eff = segment_counts(R, lengths).sum(-1).double() / lengths.sum()
    assert torch.all(eff >= R.mean(-1) - 1e-12) and torch.all(eff < R.mean(-1) + 1 / 16 + 1e-12)


@pytest.mark.parametrize("mode", ["adaptive", "binary"])
@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5])
def test_budget_met_on_average_causal(mode, budget):
    rho = bursty(64, 64, 1)
    slack = 4.0
    R = resolution_policy(rho, TilingConfig(budget=budget, policy=mode, causal=True, slack=slack))
    per_seq = R.mean(-1)
    # the controller's guarantee, per sequence, and the average over sequences
    assert torch.all((per_seq - budget).abs() <= slack / 64 + 1e-12)
    assert abs(float(per_seq.mean()) - budget) < 0.03


@pytest.mark.parametrize("mode", ["adaptive", "binary", "uniform"])
@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
def test_causal_resolution_ignores_own_and_later_tiles(mode, budget):
    rho = bursty(4, 40, 2)
    R = resolution_policy(rho, TilingConfig(budget=budget, policy=mode))
    for i in [0, 7, 20, 39]:
        changed = rho.clone()
        changed[:, i:] = torch.rand(4, 40 - i, dtype=torch.float64) * 1e3
        R2 = resolution_policy(changed, TilingConfig(budget=budget, policy=mode))
        assert torch.equal(R[:, : i + 1], R2[:, : i + 1])  # tile i depends only on tiles < i


def test_non_causal_uses_own_density():
    rho = bursty(2, 20, 3)
    R = resolution_policy(rho, TilingConfig(budget=0.3, causal=False))
    rho2 = rho.clone()
    rho2[:, 5] *= 1e4
    R2 = resolution_policy(rho2, TilingConfig(budget=0.3, causal=False))
    assert bool((R2[:, 5] >= R[:, 5]).all()) and float(R2[:, 5].min()) == 1.0
    assert float(R[:, 5].min()) < 1.0  # the change was visible to tile 5 itself


@settings(max_examples=30)
@given(
    st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=2, max_size=40),
    st.floats(0.07, 1.0),
    st.floats(0.2, 2.0),
)
def test_non_causal_adaptive_is_monotone_in_density(values, budget, exponent):
    rho = torch.tensor([values], dtype=torch.float64)
    R = resolution_policy(rho, TilingConfig(budget=budget, causal=False, exponent=exponent))
    order = torch.argsort(rho[0])
    assert bool((R[0, order].diff() >= -1e-9).all())
    assert float(R.min()) >= 0.0625 - 1e-12 and float(R.max()) <= 1.0 + 1e-12


@settings(max_examples=30)
@given(
    st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=3, max_size=30),
    st.integers(1, 28),
    st.floats(1.0, 1e3),
    st.sampled_from([0.25, 0.35, 0.5]),
)
def test_causal_adaptive_is_monotone_in_the_predictor(values, i, factor, budget):
    """Raising the density of tile i−1 (the predictor of tile i) never lowers R_i."""
    i = min(i, len(values) - 1)
    rho = torch.tensor([values], dtype=torch.float64)
    R = resolution_policy(rho, TilingConfig(budget=budget))
    up = rho.clone()
    up[0, i - 1] = up[0, i - 1] * factor + 1e-3
    R2 = resolution_policy(up, TilingConfig(budget=budget))
    assert float(R2[0, i]) >= float(R[0, i]) - 1e-9


def test_distance_and_curvature_terms():
    rho = torch.ones(1, 10, dtype=torch.float64)
    q = tile_importance(rho, distance_scale=2.0)
    assert bool((q.diff() > 0).all())  # closer to the current (last) position → more important
    R = resolution_policy(rho, TilingConfig(budget=0.4, causal=False, distance_scale=2.0))
    assert bool((R.diff() >= 0).all()) and float(R[0, -1]) > float(R[0, 0])
    kappa = torch.zeros(1, 10, dtype=torch.float64)
    kappa[0, 3] = -2.0  # negative curvature: more detail
    R = resolution_policy(rho, TilingConfig(budget=0.4, causal=False), curvature=kappa)
    assert float(R[0, 3]) == float(R.max()) and float(R[0, 3]) > float(R[0, 0])
    torch.testing.assert_close(tile_importance(rho, curvature=kappa)[0, 3], torch.tensor(math.exp(2.0), dtype=torch.float64))


def test_uniform_and_full_budget():
    rho = bursty(3, 9, 4)
    assert torch.equal(resolution_policy(rho, TilingConfig(budget=0.3, policy="uniform")),
                       torch.full((3, 9), 0.3, dtype=torch.float64))
    for mode in ["adaptive", "binary"]:
        for causal in [True, False]:
            assert torch.equal(resolution_policy(rho, TilingConfig(budget=1.0, policy=mode, causal=causal)),
                               torch.ones(3, 9, dtype=torch.float64))


def test_policy_is_per_row_and_deterministic():
    rho = bursty(5, 30, 5)
    for causal in [True, False]:
        R = resolution_policy(rho, TilingConfig(budget=0.3, causal=causal))
        assert torch.equal(R, resolution_policy(rho, TilingConfig(budget=0.3, causal=causal)))
        single = torch.cat([resolution_policy(rho[b:b + 1], TilingConfig(budget=0.3, causal=causal))
                            for b in range(5)])
        assert torch.equal(R, single)


def test_dtype_and_device_follow_input():
    rho = bursty(2, 8, 6).float()
    assert resolution_policy(rho, TilingConfig(budget=0.5)).dtype == torch.float32
    assert resolution_policy(rho, TilingConfig(budget=0.5, causal=False)).dtype == torch.float32


def test_causal_predictor():
    q = torch.tensor([[1.0, 5.0, 2.0, 0.5, 3.0]], dtype=torch.float64)
    p = causal_predictor(q, 1)
    assert math.isnan(float(p[0, 0]))
    assert torch.equal(p[0, 1:], torch.tensor([1.0, 5.0, 2.0, 0.5], dtype=torch.float64))
    assert torch.equal(causal_predictor(q, 2)[0, 1:], torch.tensor([1.0, 5.0, 5.0, 2.0], dtype=torch.float64))


def test_state_dims_policy_formula():
    rho = torch.tensor([[0.0, 0.3, 1.0, 2.49, 100.0]])
    S = state_dims_policy(rho, k=2.0, s_min=2, s_max=4)
    # S_i = max(min(⌈kρ⌉, S_max), S_min)
    assert torch.equal(S, torch.tensor([[2, 2, 2, 4, 4]]))
    assert S.dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"budget": 0.0}, ValueError),
        ({"budget": 1.5}, ValueError),
        ({"budget": 0.05}, ValueError),  # below r_min
        ({"budget": 0.5, "r_min": 0.0}, ValueError),
        ({"budget": 0.5, "policy": "sparse"}, ValueError),
        ({"budget": 0.5, "distance_scale": 2.0}, ValueError),  # needs causal=False
        ({"budget": 0.5, "slack": 0.1}, ValueError),
        ({"budget": 0.5, "lookback": 0}, ValueError),
        ({"budget": 0.5, "exponent": -1.0}, ValueError),
    ],
)
def test_bad_policy_arguments(kwargs, err):
    with pytest.raises(err):
        resolution_policy(torch.ones(1, 4), TilingConfig(**kwargs))


def test_bad_densities():
    with pytest.raises(ValueError, match="non-negative"):
        resolution_policy(-torch.ones(1, 4), TilingConfig(budget=0.5))
    with pytest.raises(ValueError, match="NaN"):
        resolution_policy(torch.tensor([[1.0, float("nan")]]), TilingConfig(budget=0.5))
    with pytest.raises(ValueError, match="dimensions"):
        resolution_policy(torch.ones(4), TilingConfig(budget=0.5))
    with pytest.raises(ValueError, match="tile_size"):
        tile_density(torch.ones(1, 4), 0)
    with pytest.raises(ValueError, match="non-negative"):
        tile_density(-torch.ones(1, 4), 2)
    with pytest.raises(ValueError, match="s_min"):
        state_dims_policy(torch.ones(1, 4), k=1.0, s_min=5, s_max=4)
    with pytest.raises(ValueError, match="curvature"):
        resolution_policy(torch.ones(1, 4), TilingConfig(budget=0.5), curvature=torch.ones(1, 3))


def test_tile_tail_density_against_a_loop():
    g = torch.Generator().manual_seed(7)
    rho = torch.rand(3, 45, generator=g, dtype=torch.float64)
    T = 8
    for tail in [1, 3, 8]:
        for reduce in ["mean", "max"]:
            got = tile_tail_density(rho, T, tail, reduce)
            want = torch.empty(3, 6, dtype=torch.float64)
            for i in range(6):
                end = min((i + 1) * T, 45)
                window = rho[:, max(i * T, end - tail):end]  # the last tile has 5 tokens
                want[:, i] = window.mean(-1) if reduce == "mean" else window.amax(-1)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(tile_tail_density(rho, T, T), tile_density(rho, T), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="tail"):
        tile_tail_density(rho, T, 9)
    with pytest.raises(ValueError, match="reduce"):
        tile_tail_density(rho, T, 2, "median")
    with pytest.raises(ValueError, match="non-negative"):
        tile_tail_density(-rho, T, 2)


def reference_sample(seed, size=64):
    return torch.exp(torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5])
def test_reference_calibration_is_a_fixed_level_of_detail_map(budget):
    """With a reference, R_i = clip(s·p_i, r_min, 1) with s from the reference (closed form check)."""
    rho = bursty(6, 40, 8)
    ref = reference_sample(0)
    R = resolution_policy(rho, TilingConfig(budget=budget, slack=1e6), reference=ref)  # controller out of the way
    # s solves mean_k clip(s r_k, r_min, 1) = c over the reference: check by recomputation
    hi_s, lo_s = 1e6, 1e-6
    for _ in range(200):
        mid = math.sqrt(hi_s * lo_s)
        if float(torch.clamp(mid * ref, 0.0625, 1.0).mean()) > budget:
            hi_s = mid
        else:
            lo_s = mid
    p = causal_predictor(tile_importance(rho), 1)
    want = torch.clamp(lo_s * p, 0.0625, 1.0)
    torch.testing.assert_close(R[:, 1:], want[:, 1:], rtol=1e-6, atol=1e-9)
    assert torch.all(R[:, 0] == budget)


@pytest.mark.parametrize("mode", ["adaptive", "binary"])
@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5])
def test_reference_calibration_meets_the_budget_on_the_population(mode, budget):
    """(binary ignores the reference: the assertions hold for its history quantile too)"""
    """Sequences drawn like the reference meet c on average; each stays within slack/n of c."""
    rho = bursty(64, 64, 9)
    ref = causal_predictor(tile_importance(bursty(64, 64, 10)), 1)[:, 1:].flatten()  # another sample
    slack = 4.0
    R = resolution_policy(rho, TilingConfig(budget=budget, policy=mode, slack=slack), reference=ref)
    per_seq = R.mean(-1)
    assert torch.all((per_seq - budget).abs() <= slack / 64 + 1e-12)
    assert abs(float(per_seq.mean()) - budget) < 0.03
    if mode == "adaptive":  # unlike the history calibration, a quiet start is coarse: savings for the first burst
        assert float(R[:, 1:8].mean()) < budget
        calibrated = resolution_policy(rho, TilingConfig(budget=budget, policy=mode, slack=slack))
        assert float(calibrated[:, 1:8].mean()) > budget
    else:
        assert torch.equal(R, resolution_policy(rho, TilingConfig(budget=budget, policy=mode, slack=slack)))


@pytest.mark.parametrize("mode", ["adaptive", "binary"])
def test_predictor_density_and_reference_keep_the_policy_causal(mode):
    rho = bursty(4, 40, 11)
    pred = bursty(4, 40, 12)
    ref = reference_sample(1)
    R = resolution_policy(rho, TilingConfig(budget=0.3, policy=mode), predictor_density=pred, reference=ref)
    for i in [0, 9, 25, 39]:
        changed_rho, changed_pred = rho.clone(), pred.clone()
        changed_rho[:, i:] *= 1e3
        changed_pred[:, i:] = torch.rand(4, 40 - i, dtype=torch.float64) * 1e3
        R2 = resolution_policy(changed_rho, TilingConfig(budget=0.3, policy=mode), predictor_density=changed_pred,
                               reference=ref)
        assert torch.equal(R[:, : i + 1], R2[:, : i + 1])
    # the predictor, not the tile mean, drives the causal policy
    config = TilingConfig(budget=0.3, policy=mode)
    assert torch.equal(R, resolution_policy(rho * 7.0, config, predictor_density=pred, reference=ref))
    assert not torch.equal(R, resolution_policy(rho, config, predictor_density=pred.flip(-1), reference=ref))


def test_reference_and_predictor_errors():
    rho = bursty(2, 10, 13)
    with pytest.raises(ValueError, match="reference"):
        resolution_policy(rho, TilingConfig(budget=0.3), reference=torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="reference"):
        resolution_policy(rho, TilingConfig(budget=0.3), reference=torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="predictor_density"):
        resolution_policy(rho, TilingConfig(budget=0.3), predictor_density=torch.ones(2, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="predictor_density"):
        resolution_policy(rho, TilingConfig(budget=0.3), predictor_density=-torch.ones(2, 10, dtype=torch.float64))


@pytest.mark.parametrize("options", [
    dict(scope="scan", budget=0.3, state_k=0.05, s_min=2, s_max=4, routing=False),
    dict(scope="scan", budget=0.4, causal=False, policy="binary"),
    dict(scope="block", budget=0.35, predictor_tail=3, predictor_reduce="max"),
    dict(scope="block", budget=0.35, causal=False, distance_scale=2.0),
    dict(scope="block", budget=1.0),
])
def test_plan_tiles_is_the_layers_plan(options):
    """plan_tiles (density → tiles → policy → segments) gives the plan TiledMamba runs."""
    torch.manual_seed(0)
    config = TilingConfig(tile_size=8, **options)
    layer = TiledMamba(16, d_state=4, expand=1, tiling=config)
    x = torch.randn(3, 50, 16)
    dens = torch.rand(3, 50, dtype=torch.float64) ** 3
    curv = torch.randn(3, 50) if not config.causal else None
    got = plan_tiles(dens, config, curvature=curv)
    want = layer.plan(x, density=dens, curvature=curv)
    assert torch.equal(got.resolution, want.resolution)
    assert torch.equal(got.segments, want.segments)
    if config.s_max is not None:
        assert torch.equal(got.state_dims, want.state_dims)
    else:
        assert got.state_dims is None
    torch.testing.assert_close(got.density, want.density.double(), rtol=0, atol=0)
    assert (got.budget, got.mode, got.causal) == (want.budget, want.mode, want.causal)
    assert got.cost is None and got.exp_cost is None


def test_plan_tiles_reference_and_errors():
    rho = torch.rand(2, 40, dtype=torch.float64)
    config = TilingConfig(tile_size=8, budget=0.3, calibration="running")
    ref = torch.exp(torch.linspace(-3, 0, 16, dtype=torch.float64))
    plan = plan_tiles(rho, config, reference=ref)
    want = resolution_policy(tile_density(rho, 8), config, predictor_density=tile_density(rho, 8), reference=ref)
    assert torch.equal(plan.resolution, want.float())
    with pytest.raises(ValueError, match="boundaries"):
        plan_tiles(rho, config.replace(boundaries="token"))
    with pytest.raises(ValueError, match="curvature"):
        plan_tiles(rho, config, curvature=torch.ones(2, 39))
    with pytest.raises(TypeError, match="config"):
        plan_tiles(rho, {"budget": 0.3})
    with pytest.raises(ValueError, match="non-negative"):
        plan_tiles(-rho, config)


@pytest.mark.parametrize("options, match", [
    (dict(tile_size=0), "tile_size"), (dict(budget=0.0), "budget"), (dict(budget=0.05), "r_min"),
    (dict(policy="sparse"), "policy"), (dict(distance_scale=2.0), "distance_scale"), (dict(slack=0.1), "slack"),
    (dict(lookback=0), "lookback"), (dict(exponent=-1.0), "exponent"), (dict(predictor_tail=65), "predictor_tail"),
    (dict(predictor_reduce="median"), "predictor_reduce"), (dict(calibration="ema"), "calibration"),
    (dict(calibration_momentum=0.0), "calibration_momentum"), (dict(calibration_levels=1), "calibration_levels"),
    (dict(s_min=5, s_max=4), "s_min"), (dict(routing=True), "routing"), (dict(state_k=1.0), "state_k"),
    (dict(scope="scan", boundaries="token"), "boundaries"), (dict(signal_channels=0), "signal_channels"),
    (dict(router_rank=0), "router_rank"), (dict(scope="tile"), "scope"),
])
def test_tiling_config_names_the_bad_field(options, match):
    with pytest.raises(ValueError, match=match):
        TilingConfig(**options)


def test_tiling_config_replace_and_dict_round_trip():
    config = TilingConfig(tile_size=16, budget=0.35, calibration="running", predictor_tail=4)
    assert TilingConfig.from_dict(config.to_dict()) == config
    assert config.replace(budget=0.5).budget == 0.5 and config.budget == 0.35
    with pytest.raises(ValueError, match="r_min"):
        config.replace(budget=0.01)
    with pytest.raises(ValueError, match="unknown"):
        TilingConfig.from_dict({"budgett": 0.3})
    assert TilingConfig(scope="scan").routes and not TilingConfig().routes


def test_resolution_policy_keyword_form_is_deprecated_but_equal():
    rho = bursty(2, 12, 0)
    with pytest.warns(DeprecationWarning, match="TilingConfig"):
        old = resolution_policy(rho, budget=0.3, mode="binary", slack=2.0)
    assert torch.equal(old, resolution_policy(rho, TilingConfig(budget=0.3, policy="binary", slack=2.0)))
    with pytest.raises(TypeError, match="not both"):
        resolution_policy(rho, TilingConfig(budget=0.3), budget=0.3)
    with pytest.raises(TypeError, match="TilingConfig"):
        resolution_policy(rho)


@pytest.mark.parametrize("tail", [None, 3])
def test_the_unchecked_tile_statistics_of_a_decoding_step_equal_the_checked_ones(tail):
    """``validate=False`` (a decoding step's history, checked where it was made) skips the checks only."""
    g = torch.Generator().manual_seed(0)
    rho = torch.rand(2, 21, generator=g, dtype=torch.float64)
    config = TilingConfig(tile_size=8, predictor_tail=tail)
    for a, b in zip(plan_densities(rho, config), plan_densities(rho, config, validate=False)):
        assert torch.equal(a, b)
    q = torch.rand(2, 5, generator=g, dtype=torch.float64)
    assert torch.equal(tile_importance(q, exponent=0.7), tile_importance(q, exponent=0.7, validate=False))
    with pytest.raises(ValueError, match="tile_density"):
        tile_importance(q.unsqueeze(0), exponent=0.7)
