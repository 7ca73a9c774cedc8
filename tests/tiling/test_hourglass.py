"""The byte-level hourglass LM (tiling/modules/hourglass.py, boundary.py): causality for every signal at
every budget, step() against forward(), the whole-model cost against FlopCounterMode, the budget
controllers' bounds, exactness at budget 1 against a plain TiledLM stack, checkpoints, FLOP matching and
bad input."""
from __future__ import annotations

import copy
import json
import math

import numpy as np

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import KEPT_FULL_4X256, load_script
from torch.utils.flop_counter import FlopCounterMode

from tiling.config import BoundaryConfig, HourglassConfig, SIGNALS, TilingConfig, hourglass_config
from tiling.modules.boundary import causal_boundaries, exact_boundaries, spacelike, uniform_boundaries
from tiling.modules.hourglass import HourglassLM, ema_compact, match_main_width
from tiling.train import TiledLM
from tiling.train.text import as_byte_tensor
from tiling.train.textmodel import build_model, load_text_model, model_config, save_text_checkpoint

torch.set_num_threads(1)
SMALL = {"d_outer": 16, "d_main": 32, "main_layers": 2, "d_state": 4, "tile_size": 8}


def small(signal: str = "entropy", budget: float = 0.25, **kw) -> HourglassLM:
    torch.manual_seed(0)
    return HourglassLM(hourglass_config(**SMALL, signal=signal, budget=budget, **kw))


def text_tokens(batch: int = 2, L: int = 96, seed: int = 0) -> torch.Tensor:
    """Byte sequences with words and spaces (so the space-like signal has boundaries to find)."""
    g = torch.Generator().manual_seed(seed)
    words = [b"the ", b"for ", b"x = 1; ", b"def f(a):\n", b"import os ", b"return ", b"    "]
    rows = []
    for _ in range(batch):
        s = b""
        while len(s) < L:
            s += words[int(torch.randint(len(words), (1,), generator=g))]
        rows.append(list(s[:L]))
    return torch.tensor(rows, dtype=torch.int64)


def calibrated(model: HourglassLM, budgets=(0.25, 0.5)) -> HourglassLM:
    """A few training-mode forwards fill the running quantiles (the thresholds), then eval mode."""
    model.train()
    with torch.no_grad():
        for k in range(3):
            for b in budgets:
                model(text_tokens(2, 96, seed=10 + k), budget=b)
    return model.eval()


# ----------------------------------------------------------------------------- causality
@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("form", ["byte", "tile"])
@pytest.mark.parametrize("dechunk", ["ema", "hold"])
def test_autoregressive_for_every_signal_at_every_budget(signal, form, dechunk):
    """Changing byte t moves no logit (and no auxiliary logit) before t, at budgets 1, 0.5, 0.35 and 0.25,
    with either dechunk (the sweep's rows use both; the bundled elastic checkpoint the EMA)."""
    assert_autoregressive(calibrated(small(signal, form=form, dechunk=dechunk)), f"{signal} {form} {dechunk}")


@pytest.mark.parametrize("signal", ["surprisal", "entropy"])
@pytest.mark.parametrize("boundary", [{"rule": "monotonic"}, {"slack": 128.0}, {"aux_weight": 0.3}])
def test_autoregressive_with_the_sweeps_boundary_fields(signal, boundary):
    """The sweep's rows that change a boundary field (BLT's monotonic rule reads the previous score, a
    wider slack lets the controller wait longer, a heavier auxiliary head): no leak at any budget."""
    assert_autoregressive(calibrated(small(signal, dechunk="ema", **boundary)), f"{signal} {boundary}")


def assert_autoregressive(model, label: str) -> None:
    x = text_tokens(2, 96)
    for budget in (1.0, 0.5, 0.35, 0.25):
        model.train()  # the aux head runs in training mode: check it too, on copies (no state update between)
        for mode in ("train", "eval"):
            m = copy.deepcopy(model).train(mode == "train")
            m2 = copy.deepcopy(model).train(mode == "train")
            with torch.no_grad():
                a, oa = m(x, budget=budget, return_output=True)
                for t in (17, 50, 95):
                    y = x.clone()
                    y[:, t] = (y[:, t] + 97) % 256
                    b, ob = copy.deepcopy(m2)(y, budget=budget, return_output=True)
                    # equal up to float rounding: a compact sequence of another length runs BLAS with
                    # another blocking; a leak moves logits by ~1e-2 (test_the_leak_test_sees_a_leak)
                    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=2e-6,
                                               msg=f"{label} {budget} {mode} {t}")
                    if oa.aux_logits is not None:  # the encoder runs on L bytes in both: bit-equal
                        assert torch.equal(oa.aux_logits[:, :t], ob.aux_logits[:, :t])
                    assert torch.equal(oa.routing.boundary[:, :t + 1][:, :t], ob.routing.boundary[:, :t])
        model.eval()


def test_the_leak_test_sees_a_leak():
    """The non-causal controller (top-k per row) reads later bytes: the test above would catch it."""
    model = calibrated(small("entropy", causal=False))
    x = text_tokens(1, 96)
    with torch.no_grad():
        a = model(x, budget=0.25)
        moved = False
        for t in range(20, 96, 7):
            y = x.clone()
            y[:, t] = (y[:, t] + 97) % 256
            moved |= float((a[:, :t] - model(y, budget=0.25)[:, :t]).abs().max()) > 1e-3
    assert moved
    with pytest.raises(AssertionError):  # and the check every configuration runs sees it
        assert_autoregressive(model, "non-causal")


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("signal,dechunk,form", [("entropy", "ema", "byte"), ("entropy", "hold", "byte"),
                                                 ("surprisal", "ema", "byte"), ("fisher_rao", "ema", "byte"),
                                                 ("router", "ema", "byte"), ("linear", "hold", "byte"),
                                                 ("uniform", "ema", "byte"), ("space", "ema", "byte"),
                                                 ("entropy", "ema", "tile")])
def test_step_equals_forward(signal, dechunk, form):
    model = calibrated(small(signal, dechunk=dechunk, form=form))
    x = text_tokens(2, 64)
    for budget in (1.0, 0.5, 0.25):
        with torch.no_grad():
            full, out = model(x, budget=budget, return_output=True)
        state = model.allocate_inference_state(2)
        steps = []
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state, budget=budget)
            steps.append(logits)
        steps = torch.stack(steps, 1)
        torch.testing.assert_close(steps, full, rtol=1e-4, atol=2e-4)
        assert state.boundary.position == x.shape[1]


def test_batched_step_equals_single_rows():
    model = calibrated(small("entropy"))
    x = text_tokens(3, 40)
    both = model.allocate_inference_state(3)
    single = [model.allocate_inference_state(1) for _ in range(3)]
    for t in range(40):
        lb, both = model.step(x[:, t], both, budget=0.25)
        for r in range(3):
            lr, single[r] = model.step(x[r:r + 1, t], single[r], budget=0.25)
            torch.testing.assert_close(lb[r:r + 1], lr, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- cost
@pytest.mark.parametrize("signal", ["entropy", "router", "linear", "uniform", "space"])
@pytest.mark.parametrize("budget", [1.0, 0.25])
def test_cost_agrees_with_flop_counter(signal, budget):
    """``cost()['matmul']`` (2 FLOPs each) is what FlopCounterMode counts in an eval forward (one row,
    so the compact batch has no padding)."""
    model = calibrated(small(signal))
    x = text_tokens(1, 96)
    with torch.no_grad():
        model(x, budget=budget)  # the linear signal's maps are cached after the first call
        with FlopCounterMode(display=False) as fc:
            _, out = model(x, budget=budget, return_output=True)
    cost = model.cost(96, out.lengths)
    assert fc.get_total_flops() == 2 * cost["matmul"], (fc.get_flop_counts(), cost)
    if budget < 1.0:
        assert cost["main"] < model.cost(96, [96])["main"] * 0.6


def test_cost_of_the_main_network_scales_with_the_budget():
    """Seed 000 §3.5.1 for a whole model: the main network's cost is linear in L_c; the outer stages' is not."""
    model = small("uniform")
    c1, c4 = model.cost(1024, [1024]), model.cost(1024, [256])
    assert c4["main"] == pytest.approx(c1["main"] / 4, rel=0.01)
    assert c4["encoder"] == c1["encoder"] and c4["decoder"] == c1["decoder"] and c4["head"] == c1["head"]


def test_match_main_width_meets_the_target_within_five_percent():
    ref = build_model(model_config("full", 1.0, d_model=64, n_layers=4, d_state=4))
    from tiling.train.text import forward_madds
    with torch.no_grad():
        _, plans = ref(torch.zeros(1, 256, dtype=torch.int64), return_plans=True)
    target = forward_madds(ref, plans, 256)["per_byte"]
    base = hourglass_config(d_outer=32, d_main=32, main_layers=4, d_state=4, budget=0.25)
    cfg, info = match_main_width(base, target, budget=0.25, L=256)
    assert abs(info["relative_error"]) <= 0.05 and cfg.d_main == info["d_main"] > 64
    assert HourglassLM(cfg).cost(256, [64])["per_byte"] == pytest.approx(target, rel=0.05)
    assert info["params"] == HourglassLM(cfg).parameter_count()
    with pytest.raises(ValueError, match="d_main"):
        match_main_width(hourglass_config(d_outer=128, d_main=128, main_layers=4, d_state=4), target, L=256)


# ----------------------------------------------------------------------------- budgets
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=300), st.floats(0.05, 1.0),
       st.floats(1.0, 40.0), st.floats(-3, 3))
@settings(max_examples=60, deadline=None)
def test_causal_controller_bound(scores, budget, slack, threshold):
    """|Σ_t b_t − c·L| ≤ S for any scores (the module docstring's induction), b_0 = 1."""
    s = torch.tensor([scores])
    b, surplus = causal_boundaries(s, threshold, budget, slack)
    L = len(scores)
    assert bool(b[0, 0])
    assert abs(float(b.sum()) - budget * L) <= slack + 1e-9
    assert float(surplus[0]) == pytest.approx(budget * L - float(b.sum()), abs=1e-6)


def test_causal_controller_follows_the_threshold_inside_the_slack():
    s = torch.tensor([[0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 5.0, 0.0]])
    b, _ = causal_boundaries(s, 1.0, 0.375, 8.0)
    assert b.tolist() == [[True, True, False, True, False, False, True, False]]


@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5])
def test_noncausal_mode_meets_the_budget_exactly(budget):
    model = calibrated(small("entropy", causal=False))
    x = text_tokens(3, 96)
    with torch.no_grad():
        _, out = model(x, budget=budget, return_output=True)
    assert out.lengths.tolist() == [math.ceil(budget * 96 - 1e-9)] * 3
    assert bool(exact_boundaries(torch.randn(2, 50), 0.3)[:, 0].all())


@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5])
def test_causal_mode_stays_within_the_documented_bound(budget):
    model = calibrated(small("entropy"))
    x = text_tokens(3, 200, seed=3)
    with torch.no_grad():
        _, out = model(x, budget=budget, return_output=True)
    S = model.config.boundary.slack
    assert all(abs(n - budget * 200) <= S for n in out.lengths.tolist())


def test_uniform_boundaries_every_one_over_c_bytes():
    for c, L in ((0.25, 64), (0.35, 100), (0.5, 7), (1.0, 9)):
        b = uniform_boundaries(torch.arange(L), c)
        assert bool(b[0]) and int(b.sum()) == math.ceil(c * L - 1e-9)


def test_spacelike_bytes():
    t = torch.tensor(list("a b,1\n".encode()) + [0xC3, 0xA9])
    assert spacelike(t).tolist() == [False, True, False, True, False, True, True, False]


def test_ema_compact_equals_its_recurrence_in_float64():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.rand(2, 9, generator=g, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    out = ema_compact(z, p)
    ref, prev = [], torch.zeros(2, 5, dtype=torch.float64)
    for s in range(9):
        prev = p[:, s:s + 1] * z[:, s] + (1 - p[:, s:s + 1]) * prev
        ref.append(prev)
    torch.testing.assert_close(out, torch.stack(ref, 1), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(ema_compact, (z, p))


# ----------------------------------------------------------------------------- exactness
def test_uniform_boundaries_make_the_ema_the_hold():
    """Uniform boundaries have p = 1 (clamped to 1 − 1e-6): the EMA dechunk is the hold, so a row of
    another signal with the EMA is compared with the uniform row of the hold (``sweep._uniform_bpb``)."""
    from tiling.train.sweep import _uniform_bpb
    def pair(signal):
        ema, hold = small(signal, dechunk="ema"), small(signal, dechunk="hold")
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():  # weights away from the initialisation (W_res = 0 hides the main network)
            for p in ema.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        calibrated(ema)  # the thresholds: p = σ((s − θ)/τ) of a scored signal lies inside (0, 1)
        hold.load_state_dict(ema.state_dict())
        return ema.eval(), hold.eval()
    x = text_tokens(2, 48)
    with torch.no_grad():
        ema, hold = pair("uniform")
        torch.testing.assert_close(ema(x), hold(x), rtol=1e-5, atol=1e-5)
        ema, hold = pair("entropy")  # a scored signal's p < 1: there the two differ
        assert (ema(x) - hold(x)).abs().max() > 1e-2
    row = {"signal": "surprisal", "dechunk": "ema"}
    assert _uniform_bpb({"hg-uniform@0.25": 2.0}, "hg-surprisal-ema@0.25", row) == 2.0
    assert _uniform_bpb({"hg-uniform@0.25": 2.0, "hg-uniform-ema@0.25": 1.9}, "hg-surprisal-ema@0.25", row) == 1.9
    assert _uniform_bpb({"hg-uniform@0.25": 2.0}, "hg-surprisal-ema-wide@0.25", row) is None


def test_budget_one_with_equal_widths_is_a_plain_mamba_stack():
    """d_main = d_outer, W_res = 0 (its initialisation), budget 1: the hourglass equals a TiledLM of E+M+D
    layers with the same weights."""
    torch.manual_seed(1)
    hg = HourglassLM(hourglass_config(d_outer=16, d_main=16, encoder_layers=1, main_layers=2, decoder_layers=1,
                                      d_state=4, signal="entropy", budget=0.25))
    lm = TiledLM(256, 16, 4, d_state=4, expand=1, tiling=TilingConfig(tile_size=8))
    lm.embedding.weight.data.copy_(hg.embedding.weight)
    stacks = [hg.encoder, hg.main, hg.decoder]
    k = 0
    for stack in stacks:
        for norm, layer in zip(stack.norms, stack.layers):
            lm.norms[k].load_state_dict(norm.state_dict())
            lm.layers[k].load_mamba_state_dict({n: v for n, v in layer.state_dict().items()
                                                if n in lm.layers[k].state_dict() and not n.startswith(("tile_", "chunk"))})
            k += 1
    lm.norm_f.load_state_dict(hg.norm_f.state_dict())
    x = text_tokens(2, 48)
    with torch.no_grad():
        torch.testing.assert_close(hg.eval()(x, budget=1.0), lm.eval()(x, budget=1.0), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(hg(x, budget=0.25), lm(x, budget=1.0), atol=1e-3)  # and below 1 it is not


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_old_checkpoints(tmp_path):
    model = calibrated(small("fisher_rao", budget_range=(0.25, 1.0)))
    path = save_text_checkpoint(tmp_path / "hg.safetensors", model, configuration="hourglass", budget=0.25,
                                context=96)
    loaded, extra = load_text_model(path)
    assert isinstance(loaded, HourglassLM) and loaded.config == model.config
    assert extra["model"]["layout"] == "hourglass"
    x = text_tokens(2, 64)
    with torch.no_grad():
        for b in (1.0, 0.35, 0.25):
            assert torch.equal(loaded(x, budget=b), model(x, budget=b))
    assert HourglassConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    old, _ = load_text_model(KEPT_FULL_4X256)  # the flat form
    assert isinstance(old, TiledLM)


def told(model: HourglassLM, seed: int = 5) -> HourglassLM:
    """``model`` with trained-looking budget vectors (they start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (model.budget_main, model.budget_outer):
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_budget_conditioning_starts_as_the_unconditioned_model_and_vanishes_at_budget_one():
    plain = calibrated(small("surprisal", dechunk="ema", budget_range=(0.25, 1.0)))
    cond = calibrated(small("surprisal", dechunk="ema", budget_range=(0.25, 1.0), budget_conditioning=True))
    assert "budget_conditioning=True" in repr(cond) and cond.budget_main.shape == (2, SMALL["d_main"])
    x = text_tokens(2, 64)
    with torch.no_grad():
        for b in (1.0, 0.35, 0.25):  # zero vectors: the same weights, the same logits
            assert torch.equal(cond(x, budget=b), plain(x, budget=b))
        told(cond)
        assert torch.equal(cond(x, budget=1.0), plain(x, budget=1.0))  # e(1) = 0
        # below 1 the main network's input moves by e(c) = (c − 1)·u + (log c)·v, checked on the compact input
        seen = {}
        hook = cond.main.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
        _, out = cond(x, budget=0.35, return_output=True)
        hook.remove()
        xc = cond.chunk(cond.encoder(cond.embedding(x))[0], out.routing.layout)
        e = (0.35 - 1.0) * cond.budget_main[0] + math.log(0.35) * cond.budget_main[1]
        torch.testing.assert_close(seen["x"], cond.main_in(xc) + e, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(cond(x, budget=0.35), plain(x, budget=0.35), atol=1e-3)
    assert_autoregressive(cond, "budget conditioning")


def test_budget_conditioning_step_equals_forward_and_round_trips(tmp_path):
    model = told(calibrated(small("surprisal", dechunk="ema", budget_range=(0.25, 1.0), budget_conditioning=True)))
    x = text_tokens(2, 48)
    for budget in (0.5, 0.25):
        with torch.no_grad():
            full = model(x, budget=budget)
        state = model.allocate_inference_state(2)
        steps = []
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state, budget=budget)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=2e-4)
    path = save_text_checkpoint(tmp_path / "cond.safetensors", model, configuration="hourglass", budget=0.25,
                                context=96)
    loaded, _ = load_text_model(path)
    assert loaded.config.budget_conditioning and torch.equal(loaded.budget_outer, model.budget_outer)
    with torch.no_grad():
        assert torch.equal(loaded(x, budget=0.35), model(x, budget=0.35))
    old = model.config.to_dict()
    del old["budget_conditioning"]  # a checkpoint written before the field
    assert HourglassConfig.from_dict(old).budget_conditioning is False
    with pytest.raises(TypeError, match="budget_conditioning must be a bool"):
        model.config.replace(budget_conditioning=1)
    # the cost counts e(c)'s additions: d_main per segment, d_outer per byte, where the row is shortened
    plain = small("surprisal", dechunk="ema", budget_range=(0.25, 1.0))
    a, b = model.cost(96, [30]), plain.cost(96, [30])
    assert a["main_in"] - b["main_in"] == 30 * SMALL["d_main"] and a["decoder"] - b["decoder"] == 96 * SMALL["d_outer"]
    assert a["matmul"] == b["matmul"] and model.cost(96, [96])["total"] == plain.cost(96, [96])["total"]


def test_elastic_budgets_and_trained_range():
    model = small("entropy", budget_range=(0.25, 1.0))
    import random
    rng = random.Random(0)
    draws = [model.sample_budget(rng) for _ in range(200)]
    assert 0.25 <= min(draws) < 0.3 and 0.95 < max(draws) <= 1.0
    assert model.trained_for(0.5) and not model.trained_for(0.2)
    assert not small("entropy").trained_for(0.5) and small("entropy").trained_for(0.25)
    # budget_skew 1 is the uniform draw, value for value (the checkpoints trained before the field)
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [model.sample_budget(rng_a) for _ in range(20)] == [rng_b.uniform(0.25, 1.0) for _ in range(20)]


def test_a_skewed_elastic_draw_follows_its_closed_form():
    """``c = lo + (hi − lo)·u^γ`` has the CDF ``F(c) = ((c − lo)/(hi − lo))^(1/γ)``: a Kolmogorov–Smirnov
    test against it, and against the uniform CDF it must fail."""
    import random
    from scipy import stats
    model = small("entropy", budget_range=(0.25, 1.0), budget_skew=3.0)
    rng = random.Random(1)
    draws = np.array([model.sample_budget(rng) for _ in range(4000)])
    assert draws.min() >= 0.25 and draws.max() <= 1.0
    closed = lambda c: ((c - 0.25) / 0.75) ** (1 / 3)  # noqa: E731
    assert stats.kstest(draws, closed).pvalue > 1e-3
    assert stats.kstest(draws, stats.uniform(0.25, 0.75).cdf).pvalue < 1e-6
    assert np.median(draws) == pytest.approx(0.25 + 0.75 / 8, abs=0.02)
    assert "budget_skew=3" in repr(model)
    stored = model.config.to_dict()
    assert HourglassConfig.from_dict(stored) == model.config
    del stored["budget_skew"]  # a checkpoint written before the field: the uniform draw
    assert HourglassConfig.from_dict(stored).budget_skew == 1.0


def test_a_tiny_training_run_lowers_the_loss(tmp_path):
    from tiling.train.trainer import TrainOptions, train_run
    text = (b"def f(x):\n    return x + 1\n\nfor i in range(10):\n    print(f(i))\n" * 60)
    data = {k: torch.tensor(list(text), dtype=torch.uint8) for k in ("train", "validation", "test")}
    model = small("entropy", budget_range=(0.25, 1.0))
    opts = TrainOptions(context=64, batch_size=4, max_steps=30, eval_every_steps=15, val_windows=4,
                        test_bytes=400, decode_bytes=8, quiet=True, lr=5e-3, warmup=3)
    row = train_run(model, data, opts, tmp_path / "run", name="t", configuration="hourglass", budget=0.25)
    assert row["validation_curve"][-1]["bpb"] < row["validation_curve"][0]["bpb"] - 1.0
    logs = [json.loads(s) for s in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    budgets = [r["budget"] for r in logs if r["kind"] == "train"]
    assert len(set(budgets)) > 1 and all(0.25 <= b <= 1.0 for b in budgets)  # elastic: drawn per step
    assert 0.05 < row["test_mean_resolution"] < 0.6 and row["prefill_bytes_per_s"] > 0
    from tiling.train.trainer import RunError
    with pytest.raises(RunError, match="finished run"):
        train_run(model, data, opts, tmp_path / "run", name="t", configuration="hourglass", budget=0.25)


# ----------------------------------------------------------------------------- bad input
def test_bad_configurations_name_the_argument():
    with pytest.raises(ValueError, match="signal"):
        BoundaryConfig(signal="bogus")
    with pytest.raises(ValueError, match="aux_weight"):
        BoundaryConfig(signal="entropy", aux_weight=0.0)
    with pytest.raises(ValueError, match="budget_range"):
        hourglass_config(budget_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="budget_range"):
        hourglass_config(budget_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="budget_skew"):
        hourglass_config(budget_range=(0.25, 1.0), budget_skew=0.5)
    with pytest.raises(TypeError, match="budget_skew"):
        hourglass_config(budget_range=(0.25, 1.0), budget_skew="3")
    with pytest.raises(ValueError, match="d_main"):
        hourglass_config(d_outer=64, d_main=32)
    with pytest.raises(ValueError, match="unknown HourglassConfig fields"):
        HourglassConfig.from_dict({**hourglass_config().to_dict(), "bogus": 1})
    good = hourglass_config().to_dict()  # a stored config with an unknown nested key: named, not a TypeError
    bad_stage = {**good, "main": {**good["main"], "mamba": {**good["main"]["mamba"], "d_sate": 16}}}
    with pytest.raises(ValueError, match=r"main\.mamba: unknown MambaConfig fields \['d_sate'\]"):
        HourglassConfig.from_dict(bad_stage)
    with pytest.raises(ValueError, match=r"boundary: unknown BoundaryConfig fields \['sigal'\]"):
        HourglassConfig.from_dict({**good, "boundary": {**good["boundary"], "sigal": "entropy"}})


def test_bad_calls_name_the_argument():
    model = small("entropy").eval()
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="tokens must lie"):
        model(torch.full((1, 5), 300, dtype=torch.int64))
    with pytest.raises(ValueError, match="budget"):
        model(text_tokens(1, 8), budget=1.5)
    state = model.allocate_inference_state(2)
    with pytest.raises(ValueError, match="batch=2"):
        model.step(torch.zeros(3, dtype=torch.int64), state)
    with pytest.raises(TypeError, match="HourglassState"):
        model.step(torch.zeros(2, dtype=torch.int64), [])


@pytest.mark.parametrize("stage", ["encoder", "main", "decoder"])
@pytest.mark.parametrize("call", ["forward", "step"])
def test_a_nan_weight_is_a_clear_error_at_the_output(stage, call):
    """The stages check nothing inside (issue 23: once per call): a NaN made in any stage is named at
    the logits, by the forward and by the step."""
    model = small("uniform").eval()
    with torch.no_grad():
        getattr(model, stage).layers[0].out_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        if call == "forward":
            model(text_tokens(1, 32), budget=0.5)
        else:
            model.step(text_tokens(1, 1)[:, 0], model.allocate_inference_state(1), budget=0.5)


def test_a_state_of_another_hourglass_is_refused_naming_the_layer():
    a, b = small("uniform").eval(), HourglassLM(hourglass_config(d_outer=24, d_main=32, d_state=4, budget=0.5,
                                                                 signal="uniform", dechunk="hold")).eval()
    with pytest.raises(ValueError, match="another layer"):
        a.step(text_tokens(1, 1)[:, 0], b.allocate_inference_state(1), budget=0.5)


# ----------------------------------------------------------------------------- command line
def test_train_text_trains_an_elastic_hourglass_and_refuses_bad_input(tmp_path, capsys):
    from tiling.train import text_cli as mod
    text = tmp_path / "t.txt"
    text.write_bytes(b"def f(x):\n    return x + 1\n\nfor i in range(10):\n    print(f(i))\n" * 30)
    base = ["--config", "hourglass", "--train-file", str(text), "--context", "64", "--batch-size", "2",
            "--d-outer", "16", "--d-main", "32", "--main-layers", "1", "--d-state", "4", "--max-steps", "3",
            "--val-windows", "2", "--test-bytes", "300", "--no-speed", "--quiet"]
    assert mod.main(base + ["--budget", "0.25", "--budget-range", "0.25,1", "--signal", "space",
                            "--out", str(tmp_path / "run")]) == 0
    row = json.loads((tmp_path / "run" / "row.json").read_text())
    assert row["configuration"] == "hourglass" and row["hourglass"]["budget_range"] == [0.25, 1.0]
    model, extra = load_text_model(tmp_path / "run" / "checkpoint.safetensors")
    assert isinstance(model, HourglassLM) and extra["budget_range"] == [0.25, 1.0]
    capsys.readouterr()
    from tiling.train import evaluate, generate
    ckpt = str(tmp_path / "run" / "checkpoint.safetensors")
    assert evaluate.main([ckpt, "--text-file", str(text), "--budget", "0.5", "--json"]) == 0
    out = capsys.readouterr()
    assert "trained for" not in out.err and json.loads(out.out)["mean_resolution"] < 0.9  # 0.5 is in the range
    assert evaluate.main([ckpt, "--text-file", str(text), "--budget", "0.2", "--max-bytes", "200"]) == 0
    assert "outside what this checkpoint was trained for (the budget range [0.25, 1])" in capsys.readouterr().err
    assert generate.main([ckpt, "--prompt", "def f", "--budget", "0.25", "--max-bytes", "12", "--json"]) == 0
    gen = json.loads(capsys.readouterr().out)
    assert gen["layers"][0]["layer"] == "main" and gen["layers"][0]["segments"].startswith("|d")
    assert evaluate.main([ckpt, "--text-file", str(text), "--context", "65"]) == 2  # longer than trained
    assert "--context 65 is longer" in capsys.readouterr().err
    for bad, word in ((["--signal", "bogus"], "--signal"), (["--budget-range", "0,1"], "--budget-range"),
                      (["--budget-range", "0.5"], "--budget-range")):
        assert mod.main(base + bad + ["--out", str(tmp_path / "bad")]) == 2  # one line, no usage dump
        assert word in capsys.readouterr().err
    assert mod.main(base + ["--d-outer", "64", "--out", str(tmp_path / "bad2")]) == 2  # d_main 32 < d_outer 64
    assert "d_main" in capsys.readouterr().err
    no_main = [a for i, a in enumerate(base) if a != "--d-main" and base[i - 1] != "--d-main"]
    assert mod.main(no_main + ["--d-outer", "256", "--d-model", "32", "--out", str(tmp_path / "bad3")]) == 2
    assert "d_main" in capsys.readouterr().err  # no width fits a FLOP target below the outer stages' own cost


def test_verify_hourglass_script(tmp_path, capsys):
    """scripts/verify_hourglass.py: Theorem 3.4's fit is exact on the counted cost (affine in n·R̄), and
    Theorem 3.5's error is 0 at budget 1 and positive below."""
    mod = load_script("verify_hourglass")
    model = calibrated(small("entropy", budget_range=(0.25, 1.0)))
    ckpt = save_text_checkpoint(tmp_path / "hg.safetensors", model, configuration="hourglass", budget=0.25, context=64)
    text = tmp_path / "t.txt"
    text.write_bytes(bytes(text_tokens(1, 2000)[0].tolist()))
    assert mod.main([str(ckpt), "--text-file", str(text), "--windows", "3", "--reps", "1",
                     "--json", str(tmp_path / "v.json"), "--figure", str(tmp_path / "v.png")]) == 0
    out = json.loads((tmp_path / "v.json").read_text())
    fit = out["theorem_3_4"]["fit_cost_alpha_n_plus_beta_nR"]["madds"]
    # not exact: at budget 1 the signal and its head are skipped (a step in α), the pool and EMA scale with L_c
    assert fit["max_relative_residual"] < 0.1 and fit["alpha_per_byte"] > 0 and fit["beta_per_segment"] > 0
    rows = {r["budget"]: r for r in out["theorem_3_5"]["rows"]}
    assert rows[1.0]["max_error"] == 0.0 and rows[0.25]["max_error"] > 0 and rows[0.25]["epsilon"] > 0
    assert (tmp_path / "v.png").stat().st_size > 0
    w = out["where_the_bits_are"]
    assert 0 < w["boundary_share"] < 1 and w["aux_bpb_at_starts"] > 0 and len(w["prob_at_starts_quartiles"]) == 3
    # the main network's share against an independent recomputation: zero W_out's weight instead of the output
    share = out["main_network"]
    inp = as_byte_tensor(text.read_bytes()).to(torch.int64)
    model.eval()
    again = mod.main_network_share(model, inp, 64, 3, 0.25)
    assert again["bpb"] == pytest.approx(share["bpb"], rel=1e-6)
    assert isinstance(model.main_out, torch.nn.Linear)
    with torch.no_grad():
        model.main_out.weight.zero_()
    zeroed = mod.main_network_share(model, inp, 64, 3, 0.25)
    assert zeroed["bpb"] == pytest.approx(share["bpb_main_zeroed"], rel=1e-6)
    assert zeroed["main_network_bits_per_byte"] == pytest.approx(0.0, abs=1e-9)
    assert share["main_network_bits_per_byte"] != 0.0
    plain = tmp_path / "plain.safetensors"
    save_text_checkpoint(plain, build_model(model_config("full", 1.0, d_model=8, n_layers=1, d_state=4)),
                         configuration="full", budget=1.0, context=64)
    assert mod.main([str(plain), "--text-file", str(text)]) == 2
    assert "not an hourglass" in capsys.readouterr().err


def test_identity_residual_init_is_the_hourglass_skip():
    """``residual_init="identity"``: the decoder's input is the zero-init model's plus the encoder's output
    (the same seed draws every other weight alike); autoregressive, ``step`` equals ``forward``."""
    zero = calibrated(small("surprisal", dechunk="ema"))
    skip = calibrated(small("surprisal", dechunk="ema", residual_init="identity"))
    assert torch.equal(skip.residual.weight, torch.eye(SMALL["d_outer"])) and not zero.residual.weight.any()
    assert "residual_init='identity'" in repr(skip) and "residual_init" not in repr(zero)
    x = text_tokens(2, 64)
    seen = {}
    hooks = [m.decoder.register_forward_pre_hook(lambda mod, a, k=k: seen.__setitem__(k, a[0]))
             for k, m in (("zero", zero), ("skip", skip))]
    with torch.no_grad():
        zero(x, budget=0.35)
        skip(x, budget=0.35)
        h = skip.encoder(skip.embedding(x))[0]
    for hk in hooks:
        hk.remove()
    torch.testing.assert_close(seen["skip"], seen["zero"] + h, rtol=1e-6, atol=1e-6)
    assert_autoregressive(skip, "identity residual")
    state, steps = skip.allocate_inference_state(2), []
    with torch.no_grad():
        full = skip(x, budget=0.35)
        for t in range(x.shape[1]):
            logits, state = skip.step(x[:, t], state, budget=0.35)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=2e-4)
    old = skip.config.to_dict()
    del old["residual_init"]  # a checkpoint written before the field
    assert HourglassConfig.from_dict(old).residual_init == "zero"
    assert HourglassConfig.from_dict(skip.config.to_dict()) == skip.config
    with pytest.raises(ValueError, match="residual_init"):
        skip.config.replace(residual_init="eye")
