"""tiling.modules.TiledMamba, scan scope: HF equivalence at budget 1, causality, budget, gradients, step, plan."""
import pytest
import torch

from conftest import tiling_kwargs
from tiling.modules import TiledMamba
from tiling.ops import scan_cost
from infogeo.density import ssm_density
from tiling.config import TilingConfig
from tiling.policy import resolution_policy, tile_density, tile_tail_density

transformers = pytest.importorskip("transformers")
from transformers import MambaConfig  # noqa: E402
from transformers.models.mamba.modeling_mamba import MambaMixer  # noqa: E402


def make_layer(seed=0, *, perturb=False, **kw):
    torch.manual_seed(seed)
    kw.setdefault("tile_size", 8)
    kw.setdefault("scope", "scan")  # this file tests the scan scope; tests/test_block_scope.py the block scope
    layer = TiledMamba(16, d_state=4, **tiling_kwargs(kw))
    if perturb:  # open the gate and the transition so that routing and φ act
        with torch.no_grad():
            layer.route_gate.normal_(0.0, 0.5)
            layer.transition_gain.normal_(0.0, 0.5)
            layer.route_state_weight.normal_(1.0, 0.5)
            layer.route_resolution_weight.normal_(1.0, 0.5)
    return layer


def hf_mixer(d_model, d_state, dt_rank, seed=1):
    torch.manual_seed(seed)
    cfg = MambaConfig(hidden_size=d_model, state_size=d_state, conv_kernel=4, expand=2, time_step_rank=dt_rank,
                      use_bias=False, use_conv_bias=True, num_hidden_layers=1, hidden_act="silu")
    mixer = MambaMixer(cfg, layer_idx=0).eval()
    with torch.no_grad():  # move away from the default init so every weight matters
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return mixer


def test_parameter_names_and_shapes_match_hf_mixer():
    layer = make_layer()
    mixer = hf_mixer(16, 4, layer.dt_rank)
    hf = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert all(ours[k] == s for k, s in hf.items())
    extra = sorted(set(ours) - set(hf))
    assert extra == ["route_gate", "route_resolution_weight", "route_state_weight", "transition_gain"]
    res = layer.load_state_dict(mixer.state_dict(), strict=False)
    assert sorted(res.missing_keys) == extra and res.unexpected_keys == []


@pytest.mark.parametrize("L", [1, 37, 64])
def test_budget_one_equals_hf_mixer(L):
    layer = make_layer(tile_size=16)
    mixer = hf_mixer(16, 4, layer.dt_rank)
    layer.load_mamba_state_dict(mixer.state_dict())
    x = torch.randn(2, L, 16)
    with torch.no_grad():
        ref = mixer(x)
        got = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_load_mamba_state_dict_rejects_incomplete():
    layer = make_layer()
    sd = hf_mixer(16, 4, layer.dt_rank).state_dict()
    del sd["A_log"]
    with pytest.raises(ValueError, match="missing"):
        layer.load_mamba_state_dict(sd)
    sd2 = hf_mixer(16, 4, layer.dt_rank).state_dict()
    sd2["foo"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        layer.load_mamba_state_dict(sd2)


def assert_causal(layer, x, positions):
    """Perturbing token t moves no output before t, and does move later ones."""
    with torch.no_grad():
        y = layer(x)
        for t in positions:
            x2 = x.clone()
            x2[:, t] += 2.0 * torch.randn(x.shape[0], x.shape[2])
            y2 = layer(x2)
            torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=1e-6)
            assert float((y2[:, t:] - y[:, t:]).abs().max()) > 1e-4  # the perturbation is seen


@pytest.mark.parametrize("policy", ["adaptive", "binary", "uniform"])
@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
def test_layer_is_causal_at_every_budget(policy, budget):
    layer = make_layer(2, perturb=True, budget=budget, policy=policy, state_k=0.05, s_min=2)
    assert_causal(layer, torch.randn(2, 60, 16), [0, 13, 16, 41, 59])


def moves_earlier_outputs(layer, x) -> bool:
    """Whether scaling some token t moves an output before t (a non-causal layer must)."""
    moved = False
    with torch.no_grad():
        y = layer(x)
        for t in range(4, x.shape[1], 8):
            x2 = x.clone()
            x2[:, t] *= 25.0
            moved |= float((layer(x2)[:, :t] - y[:, :t]).abs().max()) > 1e-6
    return moved


def test_non_causal_mode_is_not_causal():
    """The test above can fail: the encoder mode lets a token move earlier outputs of its tile."""
    assert moves_earlier_outputs(make_layer(3, budget=0.25, causal=False), torch.randn(1, 48, 16))


def test_budget_met_exactly_non_causal_and_on_average_causal():
    x = torch.randn(8, 96, 16)
    enc = make_layer(4, budget=0.35, causal=False)
    plan = enc.plan(x)
    torch.testing.assert_close(plan.mean_resolution(), torch.full((8,), 0.35, dtype=torch.float64), atol=1e-6, rtol=0)
    assert bool((plan.effective_resolution() - 0.35 < 1 / 8 + 1e-9).all())
    dec = make_layer(4, budget=0.35)
    plan = dec.plan(x)
    assert bool(((plan.mean_resolution() - 0.35).abs() <= dec.tiling.slack / plan.n_tiles + 1e-6).all())
    assert abs(float(plan.mean_resolution().mean()) - 0.35) < 0.05


def test_plan_matches_policy_and_scan_cost():
    layer = make_layer(5, budget=0.3, state_k=0.05, s_min=2)
    x = torch.randn(3, 50, 16)
    dens = torch.rand(3, 50) ** 3
    plan = layer.plan(x, density=dens)
    want = resolution_policy(tile_density(dens.double(), 8), TilingConfig(budget=0.3, r_min=layer.r_min)).float()
    torch.testing.assert_close(plan.resolution, want)
    for b in range(3):  # per-tile costs add up to the whole sequence's (boundary excluded)
        whole = scan_cost(50, 8, plan.resolution[b], plan.state_dims[b], 4, layer.d_inner)
        assert int(plan.cost[b].sum()) == whole["madd_total"]
        assert int(plan.exp_cost[b].sum()) == whole["exp_total"]
    tiles = plan.tiles(1)
    assert [t.start for t in tiles] == list(range(0, 50, 8)) and tiles[-1].length == 2
    assert tiles[3].resolution == pytest.approx(float(plan.resolution[1, 3]))
    _, plan2 = layer(x, density=dens, return_plan=True)
    assert torch.equal(plan2.resolution, plan.resolution) and torch.equal(plan2.state_dims, plan.state_dims)


def test_coarse_resolution_changes_output_and_full_does_not():
    layer = make_layer(6)
    x = torch.randn(1, 64, 16)
    with torch.no_grad():
        full = layer(x)
        assert torch.equal(layer(x, budget=1.0), full)
        coarse = layer(x, budget=0.25)
    assert float((coarse - full).abs().max()) > 1e-3


def test_gradients_reach_every_parameter():
    layer = make_layer(7, perturb=True, budget=0.5, policy="adaptive")
    x = torch.randn(2, 40, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().max()) > 0, name
    assert float(x.grad.abs().max()) > 0


def test_new_parameters_start_as_identity():
    layer = make_layer(8)
    assert not layer.route_gate.detach().any() and not layer.transition_gain.detach().any()
    x = torch.randn(1, 40, 16)
    with torch.no_grad():
        a = layer(x, budget=0.5)
        layer.routing = False
        b = layer(x, budget=0.5)
    assert torch.equal(a, b)


def stepped(layer, x, **kw):
    """Outputs of ``layer.step`` over the positions of ``x`` (batch, L, d), stacked, and the last state."""
    with torch.no_grad():
        state = layer.allocate_inference_state(x.shape[0])
        outs = []
        for t in range(x.shape[1]):
            y, state = layer.step(x[:, t], state, **kw)
            outs.append(y)
    return torch.stack(outs, 1), state


def test_step_equals_forward_at_full_resolution():
    layer = make_layer(9, perturb=True, budget=0.25).double()
    x = torch.randn(2, 29, 16, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x, budget=1.0)
    got, state = stepped(layer, x)
    torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-10)
    assert state.position == 29


def test_external_density_and_curvature_steer_the_plan():
    layer = make_layer(10, budget=0.3, causal=False)
    x = torch.randn(1, 64, 16)
    dens = torch.full((1, 64), 1e-3)
    dens[0, 24:32] = 10.0
    plan = layer.plan(x, density=dens)
    assert float(plan.resolution[0, 3]) == 1.0 and float(plan.resolution[0, 0]) < 0.3
    curv = torch.zeros(1, 64)
    curv[0, 40:48] = -5.0
    plan_c = layer.plan(x, density=torch.ones(1, 64), curvature=curv)
    assert int(plan_c.resolution[0].argmax()) == 5


def test_repr_shows_configuration():
    r = repr(make_layer(budget=0.35, policy="binary"))
    for s in ["d_model=16", "d_state=4", "tile_size=8", "budget=0.35", "policy='binary'", "causal=True",
              "predictor_tail=None", "calibration='history'"]:
        assert s in r


def test_bad_input():
    with pytest.raises(ValueError, match="budget"):
        TiledMamba(16, tiling=TilingConfig(budget=0.0))
    with pytest.raises(ValueError, match="budget"):
        TiledMamba(16, tiling=TilingConfig(budget=1.2))
    with pytest.raises(ValueError, match="r_min"):
        TiledMamba(16, tiling=TilingConfig(budget=0.2, r_min=0.5))
    with pytest.raises(ValueError, match="tile_size"):
        TiledMamba(16, tiling=TilingConfig(tile_size=0))
    with pytest.raises(ValueError, match="policy must be one of"):
        make_layer(policy="sparse")
    with pytest.raises(ValueError, match="distance_scale"):
        TiledMamba(16, tiling=TilingConfig(distance_scale=3.0))
    with pytest.raises(ValueError, match="calibration must be one of"):
        TiledMamba(16, tiling=TilingConfig(calibration="batch"))
    with pytest.raises(ValueError, match="predictor_tail"):
        TiledMamba(16, tiling=TilingConfig(tile_size=8, predictor_tail=9))
    with pytest.raises(ValueError, match="predictor_reduce"):
        TiledMamba(16, tiling=TilingConfig(predictor_reduce="median"))
    with pytest.raises(ValueError, match="calibration_momentum"):
        TiledMamba(16, tiling=TilingConfig(calibration="running", calibration_momentum=0.0))
    layer = make_layer(validate=True)
    with pytest.raises(ValueError, match="d_model=16"):
        layer(torch.randn(1, 8, 15))
    with pytest.raises(ValueError, match="dimensions"):
        layer(torch.randn(8, 16))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(1, 8, 16, dtype=torch.float64))
    bad = torch.randn(1, 8, 16)
    bad[0, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer(bad)
    with pytest.raises(ValueError, match="budget"):
        layer(torch.randn(1, 8, 16), budget=1.5)
    with pytest.raises(ValueError, match="residual"):  # the residual must have the input's shape and dtype
        layer(torch.randn(1, 8, 16), residual=torch.randn(1, 7, 16))
    with pytest.raises(TypeError, match="residual"):
        layer(torch.randn(1, 8, 16), residual=torch.randn(1, 8, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="density"):
        layer(torch.randn(1, 8, 16), density=torch.ones(1, 7))
    with pytest.raises(ValueError, match="non-negative"):
        layer(torch.randn(1, 8, 16), density=-torch.ones(1, 8))
    with pytest.raises(ValueError, match="batch"):
        layer.step(torch.randn(3, 16), layer.allocate_inference_state(2))
    with pytest.raises(ValueError, match="full resolution only"):
        layer.step(torch.randn(2, 16), layer.allocate_inference_state(2), budget=0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("budget", [1.0, 0.3])
def test_cpu_and_cuda_agree(budget):
    assert_cpu_cuda_agree(make_layer(11, perturb=True, budget=budget, state_k=0.05, s_min=2), every_param=True)


def assert_cpu_cuda_agree(layer, *, every_param: bool) -> None:
    """Outputs and gradients of ``layer`` on the CPU and on CUDA agree (``every_param``: all get one)."""
    x = torch.randn(2, 70, 16, requires_grad=True)
    y = layer(x)
    y.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    if every_param:
        assert set(grads) == {n for n, _ in layer.named_parameters()}
    layer_c = layer.to("cuda")
    layer_c.zero_grad()
    xc = x.detach().cuda().requires_grad_(True)
    yc = layer_c(xc)
    yc.pow(2).sum().backward()
    torch.testing.assert_close(yc.cpu(), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xc.grad.cpu(), x.grad, rtol=1e-3, atol=1e-4)
    params = dict(layer_c.named_parameters())
    for n, g in grads.items():
        torch.testing.assert_close(params[n].grad.cpu(), g, rtol=1e-3, atol=1e-4, msg=n)


def log_quantiles(layer, x):
    """Independent recomputation: the 64 quantiles (k + ½)/64 of log q over the batch's predictors
    (max density of the last 3 tokens of each tile, q = ρ^0.5)."""
    _, _, dt_raw, B, _ = layer._project(x)
    rho = ssm_density(torch.nn.functional.softplus(dt_raw + layer.dt_proj.bias[:, None]), B).double()
    logq = 0.5 * torch.log(tile_tail_density(rho, 8, 3, "max").flatten())
    return torch.quantile(logq, (torch.arange(64, dtype=torch.float64) + 0.5) / 64)


def test_running_calibration_updates_only_in_training_and_stays_causal():
    layer = make_layer(8, perturb=True, budget=0.3, calibration="running", predictor_tail=3, predictor_reduce="max")
    hist = make_layer(8, perturb=True, budget=0.3, predictor_tail=3, predictor_reduce="max")
    assert {"tile_router.calibrator.quantiles", "tile_router.calibrator.updates"} <= set(layer.state_dict())
    assert "tile_router.calibrator.quantiles" not in hist.state_dict()
    x = torch.randn(4, 64, 16)
    with torch.no_grad():
        # before the first update the layer falls back to the history calibration
        torch.testing.assert_close(layer.plan(x).resolution, hist.plan(x).resolution, rtol=0, atol=0)
        layer.eval()
        layer(x)
        assert int(layer.calibrator.updates) == 0  # eval and plan() never update
        layer.train()
        layer(x)
        assert int(layer.calibrator.updates) == 1
        first = layer.calibrator.quantiles.clone()
        # the buffer holds the quantiles of log importance of this batch's predictors (exponent 0.5)
        torch.testing.assert_close(first, log_quantiles(layer, x), rtol=1e-5, atol=1e-5)
        layer(2.0 * x)  # an exponential moving average with weight 0.05
        assert int(layer.calibrator.updates) == 2
        want = first + 0.05 * (log_quantiles(layer, 2.0 * x) - first)
        torch.testing.assert_close(layer.calibrator.quantiles, want, rtol=1e-5, atol=1e-5)
        assert float((layer.calibrator.quantiles - first).abs().max()) > 1e-3
        layer.eval()
        plan = layer.plan(x)
        assert not torch.equal(plan.resolution, hist.plan(x).resolution)  # the reference is in use
        assert bool(((plan.mean_resolution() - 0.3).abs() <= layer.tiling.slack / plan.n_tiles + 1e-6).all())
    assert_causal(layer, x, [0, 13, 16, 41, 63])


def test_running_calibration_in_training_mode_uses_only_earlier_batches():
    """A batch never calibrates itself: its resolutions are those of the buffer before it."""
    layer = make_layer(9, budget=0.3, calibration="running")
    x = torch.randn(2, 48, 16)
    with torch.no_grad():
        layer(torch.randn(2, 48, 16))  # first update
        frozen = layer.plan(x).resolution  # plan() sees the buffer as it is now
        _, plan = layer(x, return_plan=True)  # training-mode forward: uses it, then updates
        torch.testing.assert_close(plan.resolution, frozen, rtol=0, atol=0)
        assert int(layer.calibrator.updates) == 2
        assert not torch.equal(layer.plan(x).resolution, frozen)  # ... and the update moved the map


def test_tiling_config_and_deprecated_keywords():
    """tiling=TilingConfig(...) and the former keywords build the same layer; old buffer names load."""
    config = TilingConfig(tile_size=8, budget=0.3, calibration="running", calibration_levels=4)
    torch.manual_seed(0)
    new = TiledMamba(16, d_state=4, tiling=config)
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="TilingConfig"):
        old = TiledMamba(16, d_state=4, tile_size=8, budget=0.3, calibration="running", calibration_levels=4)
    assert new.tiling == old.tiling == config.replace(s_max=4)
    assert "tiling=TilingConfig(tile_size=8, budget=0.3" in repr(new)
    with pytest.raises(TypeError, match="not both"):
        TiledMamba(16, tiling=config, budget=0.5)
    with pytest.raises(TypeError, match="unexpected"):
        TiledMamba(16, tile_sise=8)
    with pytest.raises(ValueError, match="s_max"):
        TiledMamba(16, d_state=4, tiling=TilingConfig(scope="scan", s_max=8))
    with pytest.raises(ValueError, match="router_rank"):
        TiledMamba(8, tiling=TilingConfig(boundaries="token", router_rank=9))
    sd = new.state_dict()
    for shift, former in enumerate(("calibration_", "calibrator.")):  # before / after the calibration's submodule
        sd["tile_router.calibrator.quantiles"] = torch.arange(4.0, dtype=torch.float64) + shift
        sd["tile_router.calibrator.updates"] = torch.tensor(3 + shift)
        legacy = {k.replace("tile_router.calibrator.", former): v for k, v in sd.items()}
        old.load_state_dict(legacy)  # strict: the former names map onto the tile router's calibrator
        assert torch.equal(old.calibrator.quantiles, sd["tile_router.calibrator.quantiles"])
        assert int(old.calibrator.updates) == 3 + shift
