"""Issue 23 (time follows FLOPs): the fast paths keep the values.

The model checks once (tokens, budgets and densities on entry, logits on exit) and still names a
NaN/Inf; ``TiledLM`` at budget 1 is HF's ``MambaForCausalLM``; batched decoding equals decoding
each row alone and ``forward``; causality and the autoregressive property of every configuration
at every budget; the C++ kernels (conv + SiLU, RMSNorm, softplus·gap, the linear signal, the
policy's sequential steps, the layout, the chunk and dechunk, the decoding step) against the torch/numpy references they
replace; bad input to ``step``.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

import tiling.modules.chunk as chunk_mod
import tiling.policy as policy_mod
from conftest import tiling_kwargs
from tiling.config import TilingConfig
from tiling.modules import TiledMamba
from tiling.modules.chunk import layout_from_counts
from tiling.ops import adaptive_selective_scan
from tiling.ops.scan import causal_conv1d_silu, policy_kernels, rms_norm, selective_scan, softplus_gap
from tiling.train.model import TiledLM
from tiling.train.text import step_prompts

f64 = torch.float64
CONFIGS = {
    "uniform": dict(policy="uniform"),
    "adaptive": dict(policy="adaptive"),
    "running": dict(policy="adaptive", calibration="running"),
    "binary": dict(policy="binary"),
    "router": dict(boundaries="token", router_rank=4),
}
needs_kernel = pytest.mark.skipif(policy_kernels() is None, reason="no compiled CPU kernel")


def lm(name="uniform", budget=0.25, seed=0, *, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    model = TiledLM(32, 16, 3, d_state=8, tiling=TilingConfig(tile_size=8, budget=budget, **CONFIGS[name]), **kw)
    with torch.no_grad():  # trained-looking gates and routers: every path computes something
        for n, p in model.named_parameters():
            if n.endswith(("pool_gate", "q_proj.weight")):
                p.normal_(0.0, 0.5)
    if name == "running":  # a learned reference
        model.train()
        with torch.no_grad():
            model(torch.randint(0, 32, (2, 40)))
    return model.to(dtype).eval()


# ---------------------------------------------------------------- HF at budget 1
def hf_causal_lm(model: TiledLM):
    """HF's MambaForCausalLM with ``model``'s weights, mapped by hand (an independent reference)."""
    from transformers import MambaConfig, MambaForCausalLM

    layer = model.layers[0]
    cfg = MambaConfig(vocab_size=model.vocab_size, hidden_size=layer.d_model, state_size=layer.d_state,
                      num_hidden_layers=len(model.layers), expand=layer.expand, conv_kernel=layer.d_conv,
                      time_step_rank=layer.dt_rank, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
                      tie_word_embeddings=True, residual_in_fp32=True)
    hf = MambaForCausalLM(cfg).eval()
    sd = {"backbone.embeddings.weight": model.embedding.weight, "backbone.norm_f.weight": model.norm_f.weight,
          "lm_head.weight": model.embedding.weight}
    for k, (norm, lay) in enumerate(zip(model.norms, model.layers)):
        sd[f"backbone.layers.{k}.norm.weight"] = norm.weight
        for name in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                     "dt_proj.bias", "A_log", "D", "out_proj.weight"):
            sd[f"backbone.layers.{k}.mixer.{name}"] = lay.state_dict()[name]
    hf.load_state_dict(sd)
    return hf


@pytest.mark.parametrize("name", ["uniform", "adaptive", "router"])
def test_budget_one_equals_hf_mamba_for_causal_lm(name):
    model = lm(name, budget=0.25, seed=3)
    with torch.no_grad():
        for p in model.parameters():  # away from the initialisation: every weight matters
            p.add_(0.05 * torch.randn_like(p))
    hf = hf_causal_lm(model)
    x = torch.randint(0, 32, (3, 53))
    with torch.no_grad():
        want = hf(input_ids=x).logits
        got = model(x, budget=1.0)
    err = float((got - want).abs().max()) / float(want.abs().max())
    assert err < 1e-5, err
    # and step decoding at budget 1 is HF's recurrence too
    with torch.no_grad():
        state = model.allocate_inference_state(3)
        steps = []
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state, budget=1.0)
            steps.append(logits)
    err = float((torch.stack(steps, 1) - want).abs().max()) / float(want.abs().max())
    assert err < 1e-5, err


# ---------------------------------------------------------------- check once, still clear
class CountCalls(TorchFunctionMode):
    def __init__(self, *names):
        super().__init__()
        self.names, self.calls = names, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.names:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["uniform", "adaptive", "router"])
def test_the_model_checks_finiteness_once(name):
    model = lm(name)
    x = torch.randint(0, 32, (2, 40))
    with torch.no_grad():
        model(x)  # the uniform layouts are made (and their counts checked) once per shape
    with torch.no_grad(), CountCalls("isfinite") as mode:
        model(x)
    # the logits' one check (adaptive: and the tiles' signal of each layer, (batch, n_tiles) values)
    assert mode.calls <= 1 + (3 if name == "adaptive" else 0), mode.calls


def test_nan_in_a_weight_is_named_at_the_output():
    x = torch.randint(0, 32, (2, 40))
    model = lm("adaptive")
    with torch.no_grad():
        model.layers[1].x_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 1 produced NaN/Inf"):
        model(x)
    with pytest.raises(ValueError, match=r"layer 1: its weights \['x_proj.weight'\] are not finite"):
        model.step(x[:, 0], model.allocate_inference_state(2))
    model = lm("uniform")
    with torch.no_grad():
        model.embedding.weight[int(x[0, 3])] = float("inf")
    with pytest.raises(ValueError, match=rf"embeddings of tokens \[{int(x[0, 3])}\]"):
        model(x)
    model = lm("uniform")
    with torch.no_grad():
        model.norm_f.weight[0] = float("nan")
    with pytest.raises(ValueError, match="final norm or the head"):
        model(x)


def test_bad_tokens_budget_and_density_are_named():
    model = lm("adaptive")
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, vocab_size=32\)"):
        model(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="tokens must be int64"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="budget must lie in"):
        model(torch.zeros(1, 4, dtype=torch.int64), budget=1.5)
    with pytest.raises(ValueError, match="density"):
        model(torch.zeros(1, 4, dtype=torch.int64), density=[torch.full((1, 4), float("nan")), None, None])


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
def test_batched_decoding_equals_each_row_alone_and_forward(name, budget):
    model = lm(name, budget=budget, dtype=f64, seed=5)
    x = torch.randint(0, 32, (3, 37))
    x[1, 10:25] = 7  # a quiet stretch: the adaptive rows' plans differ
    with torch.no_grad():
        full = model(x)
        state = model.allocate_inference_state(3)
        batched = []
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state)
            batched.append(logits)
        batched = torch.stack(batched, 1)
        for r in range(3):
            s, alone = model.allocate_inference_state(1), []
            for t in range(x.shape[1]):
                logits, s = model.step(x[r:r + 1, t], s)
                alone.append(logits)
            torch.testing.assert_close(batched[r], torch.cat(alone), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(batched, full, rtol=1e-9, atol=1e-9)


def test_step_prompts_decodes_several_prompts_and_refuses_ragged_ones():
    model = lm("uniform", dtype=f64)
    prompts = [b"abcdefghij", b"0123456789"]
    tokens = torch.tensor([list(p) for p in prompts]) % 32
    with torch.no_grad():
        want = model(tokens)[:, -1]
    logits, state = step_prompts(model, [bytes(r) for r in tokens.tolist()])
    torch.testing.assert_close(logits, want, rtol=1e-10, atol=1e-10)
    assert state.batch == 2
    with pytest.raises(ValueError, match=r"prompts must all have the same length.*\[3, 5\]"):
        step_prompts(model, [b"abc", b"abcde"])
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        step_prompts(model, [])


def test_a_state_of_another_batch_or_model_is_refused():
    model, other = lm("uniform"), lm("uniform", seed=1)
    state = model.allocate_inference_state(2)
    with pytest.raises(ValueError, match="allocated for batch 2, got input batch 3"):
        model.step(torch.zeros(3, dtype=torch.int64), state)
    with pytest.raises(ValueError, match="allocated by another model"):
        other.step(torch.zeros(2, dtype=torch.int64), state)
    wide = TiledLM(32, 24, 3, d_state=8, tiling=TilingConfig(tile_size=8, budget=0.25, policy="uniform"))
    with pytest.raises(ValueError, match=r"layer 0.*another layer"):
        model.step(torch.zeros(2, dtype=torch.int64), list(wide.allocate_inference_state(2)))
    with pytest.raises(ValueError, match="tokens must lie in"):
        model.step(torch.tensor([0, 99]), state)
    logits, new = model.step(torch.zeros(2, dtype=torch.int64), state)
    assert new is not state and state[0].position == 0  # the state passed in is unchanged


def test_a_tiled_step_runs_the_mixer_only_at_segment_starts(monkeypatch):
    import tiling.train.model as model_mod

    # the layer by layer path (the whole-model kernel's starts: test_fused_step)
    monkeypatch.setattr(model_mod, "fused_step", lambda *a: None)
    model = lm("uniform", budget=0.25)
    runs = {k: 0 for k in range(3)}
    for k, layer in enumerate(model.layers):
        mixer = layer._mixer_step
        layer._mixer_step = lambda *a, _k=k, _m=mixer, **kw: runs.__setitem__(_k, runs[_k] + 1) or _m(*a, **kw)
    state = model.allocate_inference_state(1)
    with torch.no_grad():
        for t in range(32):
            _, state = model.step(torch.tensor([t % 32]), state)
    assert runs == {0: 8, 1: 8, 2: 8}  # 2 segments in each tile of 8 tokens


# ---------------------------------------------------------------- causality
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("budget", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("ends", [(), (0, -1)])
def test_the_model_is_causal_at_every_budget(name, budget, ends):
    model = lm(name, budget=budget, dtype=f64, seed=6, full_resolution_layers=ends)
    x = torch.randint(0, 32, (2, 41))
    with torch.no_grad():
        base = model(x)
        for t in (0, 13, 29):
            y = x.clone()
            y[:, t + 1:] = torch.randint(0, 32, y[:, t + 1:].shape)
            # equal to rounding: the compact length (the products' shapes) may change with later tokens
            torch.testing.assert_close(model(y)[:, :t + 1], base[:, :t + 1], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the kernels against their references
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_conv_silu_kernel_equals_the_torch_expression(dtype):
    for (b, E, L, K) in ((2, 8, 3, 4), (1, 40, 37, 3), (3, 16, 50, 1), (2, 9, 1, 4)):
        x = torch.randn(b, E, L, dtype=dtype, requires_grad=True)
        w = torch.randn(E, 1, K, dtype=dtype, requires_grad=True)
        bias = torch.randn(E, dtype=dtype, requires_grad=True)
        want = F.silu(F.conv1d(x, w, bias, padding=K - 1, groups=E)[..., :L])
        got = causal_conv1d_silu(x, w, bias)
        dy = torch.randn_like(want)
        gw = torch.autograd.grad(want, (x, w, bias), dy)
        gg = torch.autograd.grad(got, (x, w, bias), dy)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, want, **tol)
        for a, r in zip(gg, gw):
            torch.testing.assert_close(a, r, **tol)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("policy,budget,gate", [("uniform", 1.0, True), ("uniform", 0.25, True),
                                                ("uniform", 0.25, False), ("adaptive", 0.3, True)])
@pytest.mark.parametrize("bias", [False, True])
def test_block_mixer_in_one_call_equals_the_op_by_op_path(dtype, policy, budget, gate, bias, monkeypatch):
    """The block scope's mixer as one kernel call (``block_fwd``) equals its Python path bit for bit: no
    layout (budget 1), the uniform layout with an open and a closed pool gate, the adaptive policy's ragged
    layouts over a batch, with and without the linear layers' biases; it stands aside (None) where a
    gradient is wanted or a dispatch mode counts torch's ops. With a residual it equals ``residual + out``."""
    from tiling.modules.scope_block import BlockScope
    from tiling.ops.block import block_mixer
    torch.manual_seed(0)
    tiling = TilingConfig(tile_size=8, budget=budget, policy=policy)
    layer = TiledMamba(24, d_state=8, d_conv=3, bias=bias, tiling=tiling, dtype=dtype).eval()
    with torch.no_grad():
        layer.chunk.pool_gate.normal_(0.0, 0.5 if gate else 0.0)  # a closed gate is zero: the reps alone
        for lin in (layer.in_proj, layer.out_proj):
            if lin.bias is not None:
                lin.bias.normal_(0.0, 0.5)
    x = torch.randn(3, 70, 24, dtype=dtype)
    calls = []
    monkeypatch.setattr("tiling.modules.scope_block.block_mixer", lambda *a, **k: calls.append(1) or block_mixer(*a, **k))
    h = torch.randn(3, 70, 24, dtype=dtype)  # a residual stream: the hold adds it as it writes
    with torch.no_grad():
        got, got_h = layer(x), layer(x, residual=h, check=False)
        monkeypatch.setattr(BlockScope, "_one_call", staticmethod(lambda *a: None))
        want = layer(x)
    assert len(calls) == 2 and torch.equal(got, want) and torch.equal(got_h, h + want)
    if budget < 1:
        assert layer.plan(x).meta["compact_length"] < 70  # a real layout was chunked and held
    kw = dict(in_proj=layer.in_proj, conv1d=layer.conv1d, x_proj=layer.x_proj, dt_proj=layer.dt_proj,
              A_log=layer.A_log, D=layer.D, out_proj=layer.out_proj)
    assert block_mixer(x, **kw) is None  # parameters that want a gradient
    with torch.no_grad(), FlopCounterMode(display=False):
        assert block_mixer(x, **kw) is None


@needs_kernel
def test_rms_norm_and_softplus_gap_kernels_equal_torch():
    x = torch.randn(3, 7, 37, dtype=f64, requires_grad=True)
    w = torch.randn(37, dtype=f64, requires_grad=True)
    want = F.rms_norm(x, (37,), w, 1e-5)
    got = rms_norm(x, w, 1e-5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(want)
    for a, r in zip(torch.autograd.grad(got, (x, w), dy), torch.autograd.grad(want, (x, w), dy)):
        torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-11)
    raw = torch.randn(2, 11, 13, dtype=f64, requires_grad=True)
    bias = torch.randn(11, dtype=f64, requires_grad=True)
    gap = torch.randint(1, 5, (2, 13))
    want = F.softplus(raw + bias[:, None]) * gap.unsqueeze(1)
    got = softplus_gap(raw, bias, gap)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(want)
    for a, r in zip(torch.autograd.grad(got, (raw, bias), dy), torch.autograd.grad(want, (raw, bias), dy)):
        torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-11)


@needs_kernel
def test_selective_scan_equals_the_checked_op():
    g = torch.Generator().manual_seed(0)
    b, d, L, N = 2, 12, 150, 8
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)  # noqa: E731
    args = (r(b, d, L), r(b, d, L) - 1.0, -torch.rand(d, N, generator=g, dtype=f64) - 0.5, r(b, N, L), r(b, N, L),
            r(d), r(b, d, L), r(d))
    want = adaptive_selective_scan(*args, delta_softplus=True, tile_size=16)
    torch.testing.assert_close(selective_scan(*args, delta_softplus=True), want, rtol=1e-12, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("mode", ["adaptive", "binary"])
@pytest.mark.parametrize("reference", [False, True])
def test_policy_kernel_equals_the_numpy_reference(mode, reference, monkeypatch):
    g = torch.Generator().manual_seed(1)
    q = torch.rand(4, 57, generator=g, dtype=f64) ** 3 + 1e-6
    ref = torch.rand(16, generator=g, dtype=f64) + 0.01 if reference else None
    kw = dict(budget=0.3, r_min=0.0625, mode=mode, lookback=2, slack=4.0, reference=ref)
    got = policy_mod._causal_resolution(q, **kw)
    monkeypatch.setattr(policy_mod, "policy_kernels", lambda: None)
    want = policy_mod._causal_resolution(q, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    R = torch.rand(3, 40, generator=g, dtype=f64) * 0.9 + 0.0625
    m_ref, c_ref = policy_mod.dithered_counts(R, 16)
    monkeypatch.undo()
    m, c = policy_mod.dithered_counts(R, 16)
    assert torch.equal(m, m_ref) and torch.equal(c, c_ref)


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(policy=st.sampled_from(["adaptive", "binary"]), calibration=st.sampled_from(["history", "running", "none"]),
       tiles=st.integers(0, 12), batch=st.integers(1, 3), budget=st.floats(0.07, 1.0),
       exponent=st.sampled_from([0.5]) | st.floats(0.1, 2.0),
       lookback=st.integers(1, 3), slack=st.floats(0.5, 8.0), seed=st.integers(0, 2 ** 31 - 1))
def test_the_causal_tile_kernel_is_the_decision_of_its_torch_ops(policy, calibration, tiles, batch, budget, exponent,
                                                               lookback, slack, seed):
    """TileRouter._causal_tile: the kernel's counts, carry and surplus equal, bit for bit, those of the torch ops it
    replaces (tile_importance, causal_step, the float32 rounding, dithered_counts), for either policy, a running
    reference (updated, or not yet: "none") or the history's calibration, any carried surplus and rounding error, and
    the default power 1/2 (the kernel's square root) or another (torch's pow, passed in)."""
    import tiling.modules.router as router_mod

    g = torch.Generator().manual_seed(seed)
    kw = dict(calibration="running", calibration_levels=8) if calibration != "history" else {}
    cfg = TilingConfig(tile_size=16, budget=budget, r_min=min(0.0625, budget), policy=policy, causal=True,
                       exponent=exponent, lookback=lookback, slack=slack, **kw)
    router = router_mod.TileRouter(cfg)
    if calibration == "running":
        router.calibrator.update(torch.rand(64, generator=g, dtype=f64) + 1e-3)
    pred = torch.rand(batch, tiles, generator=g, dtype=f64) ** 3 - 0.05  # a few negative densities: clamped
    carry = torch.rand(batch, generator=g, dtype=f64) - 0.5
    surplus = None if tiles == 0 else (torch.rand(batch, generator=g, dtype=f64) - 0.5) * slack
    for _ in range(2):  # the second time after the reference moved (the kernel's kept one must follow)
        got = router._causal_tile(pred, carry, surplus, cfg)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(router_mod, "policy_kernels", lambda: None)
            want = router._causal_tile(pred, carry, surplus, cfg)
        assert got[0].shape == (batch, 1) and got[0].dtype == torch.int64
        for a, b in zip(got, want):
            assert torch.equal(a, b.to(a.dtype)), (a, b)
        if router.calibrator is not None:
            router.calibrator.update(torch.rand(64, generator=g, dtype=f64) * 5 + 1e-3)


@needs_kernel
def test_the_causal_tile_kernel_reads_a_reference_made_under_inference_mode():
    """Buffers made under torch.inference_mode have no version counter to keep the reference by: it is read anew,
    and follows an update."""
    import tiling.modules.router as router_mod

    g = torch.Generator().manual_seed(3)
    cfg = TilingConfig(tile_size=16, budget=0.35, policy="adaptive", causal=True, calibration="running",
                       calibration_levels=8)
    with torch.inference_mode():
        router = router_mod.TileRouter(cfg)
        pred, carry, surplus = torch.rand(2, 6, generator=g, dtype=f64), torch.zeros(2, dtype=f64), \
            torch.zeros(2, dtype=f64)
        for scale in (1.0, 50.0):
            router.calibrator.update(torch.rand(64, generator=g, dtype=f64) * scale + 1e-3)
            got = router._causal_tile(pred, carry, surplus, cfg)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(router_mod, "policy_kernels", lambda: None)
                want = router._causal_tile(pred, carry, surplus, cfg)
            assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(got, want))


@needs_kernel
def test_causal_step_continues_the_plan_tile_by_tile():
    q = torch.rand(2, 30, generator=torch.Generator().manual_seed(2), dtype=f64) + 1e-3
    kw = dict(budget=0.35, r_min=0.0625, mode="adaptive", lookback=1, slack=4.0)
    whole, _ = policy_mod.causal_step(q, **kw)
    surplus = None
    for i in range(30):  # tile i from the tiles before it and the carried surplus (q's column i unread)
        qi = torch.cat([q[:, :i], torch.zeros(2, 1, dtype=f64)], 1)
        R, surplus = policy_mod.causal_step(qi, first_tile=i, surplus=surplus, **kw)
        assert torch.equal(R[:, 0], whole[:, i])


@needs_kernel
def test_layout_kernel_equals_the_torch_layout(monkeypatch):
    g = torch.Generator().manual_seed(3)
    for L, T in ((45, 8), (5, 8), (64, 16), (33, 1)):
        m = torch.randint(1, T + 1, (3, -(-L // T)), generator=g)
        got = layout_from_counts(m, L, T)
        monkeypatch.setattr(chunk_mod, "policy_kernels", lambda: None)
        want = layout_from_counts(m, L, T)
        monkeypatch.undo()
        for f in ("boundary", "segment", "start", "span", "lengths"):
            assert torch.equal(getattr(got, f), getattr(want, f)), (L, T, f)


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 19), st.floats(0.0, 1.0), st.booleans(),
       st.sampled_from([torch.float32, f64]), st.integers(0, 2 ** 16))
def test_chunk_and_hold_kernels_equal_the_torch_ops(batch, L, d, p, gate_open, dtype, seed):
    """The inference kernels of the block scope's chunk and dechunk (kernels_cuda/segments.h) against the
    torch ops they replace: ragged rows (padding), one-token and whole-row segments, open and closed gates."""
    g = torch.Generator().manual_seed(seed)
    boundary = torch.rand(batch, L, generator=g) < p
    boundary[:, 0] = True
    layout = chunk_mod.layout_from_boundaries(boundary)
    x = torch.randn(batch, L, d, generator=g, dtype=dtype)
    y = torch.randn(batch, layout.compact_length, d, generator=g, dtype=dtype)
    chunk = chunk_mod.Chunk(d, dtype=dtype)
    if gate_open:
        with torch.no_grad():
            chunk.pool_gate.copy_(torch.randn(d, generator=g, dtype=dtype))
    with torch.no_grad():
        got = chunk(x, layout), chunk_mod.Dechunk()(y, layout)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(chunk_mod, "cpu_kernels", lambda *t: None)
            want = chunk(x, layout), chunk_mod.Dechunk()(y, layout)
    tol = 1e-12 if dtype == f64 else 1e-6
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
    assert torch.equal(got[1], want[1])
    # with a gradient wanted the modules run the torch ops (the kernels have no backward)
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(chunk(xg, layout).detach(), want[0], rtol=tol, atol=tol)


@needs_kernel
def test_the_hold_kernel_refuses_segments_that_do_not_tile_the_row():
    ext = policy_kernels()
    y = torch.randn(1, 2, 3)
    with pytest.raises(RuntimeError, match="do not tile"):
        ext.hold_fwd(y, torch.tensor([[0, 3]]), torch.tensor([[2, 2]]), 4, None)
    with pytest.raises(RuntimeError, match="cover 3 tokens"):
        ext.hold_fwd(y, torch.tensor([[0, 2]]), torch.tensor([[2, 1]]), 4, None)
    with pytest.raises(RuntimeError, match="residual must be contiguous"):  # a residual of another length
        ext.hold_fwd(y, torch.tensor([[0, 2]]), torch.tensor([[2, 2]]), 4, torch.randn(1, 3, 3))
    with pytest.raises(RuntimeError, match="outside the row"):
        ext.chunk_fwd(torch.randn(1, 4, 3), torch.tensor([[0, 4]]), torch.tensor([[4, 1]]), None)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_the_step_kernel_equals_the_torch_step(dtype, monkeypatch):
    import tiling.modules.tiled_mamba as tm

    torch.manual_seed(4)
    layer = TiledMamba(16, d_state=8, **tiling_kwargs(dict(tile_size=8, budget=1.0))).to(dtype)
    state = layer.allocate_inference_state(3)
    x, conv, ssm = torch.randn(3, 16, dtype=dtype), state.conv + 0.3, state.ssm + 0.1
    kw = dict(last_start=torch.tensor([0, 2, 5]), position=7)
    with torch.no_grad():
        got = layer._mixer_step(x, conv, ssm, **kw)[:3]
        monkeypatch.setattr(tm, "cpu_kernels", lambda *t: None)  # the torch ops of the step
        want = layer._mixer_step(x, conv, ssm, **kw)[:3]
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, **tol)


@needs_kernel
def test_the_fused_kernels_have_exact_second_derivatives():
    """A gradient penalty through the conv and the norm (``create_graph=True``) is differentiated
    through the torch expressions the kernels replace (gradgradcheck against finite differences)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 9, dtype=f64, generator=g, requires_grad=True)
    w = torch.randn(5, 1, 3, dtype=f64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=f64, generator=g, requires_grad=True)
    assert torch.autograd.gradgradcheck(causal_conv1d_silu, (x, w, b))
    h = torch.randn(3, 6, dtype=f64, generator=g, requires_grad=True)
    nw = torch.randn(6, dtype=f64, generator=g, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda h, nw: rms_norm(h, nw, 1e-5), (h, nw))
    raw = torch.randn(2, 4, 5, dtype=f64, generator=g, requires_grad=True)
    bias = torch.randn(4, dtype=f64, generator=g, requires_grad=True)
    gap = torch.randint(1, 4, (2, 5), generator=g)
    assert torch.autograd.gradgradcheck(lambda r, c: softplus_gap(r, c, gap), (raw, bias))


@needs_kernel
def test_the_lm_passes_its_residual_to_the_layer_unless_a_hook_watches_the_layer():
    """``TiledLM`` lets each layer add the residual stream (the one-call mixer adds it as it holds): the
    logits are those of ``h + layer(norm(h))``; a forward hook on a layer still sees the layer's own output."""
    model = lm("uniform", 0.25)
    x = torch.randint(0, 32, (2, 40))
    calls = []
    real = TiledMamba.forward
    with torch.no_grad():
        want = model(x)
        seen = []
        handle = model.layers[1].register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
        try:
            def spy(self, *a, **k):
                calls.append(k.get("residual") is not None)
                return real(self, *a, **k)
            TiledMamba.forward = spy
            got = model(x)
        finally:
            TiledMamba.forward = real
            handle.remove()
        layer_in, layer_out = seen[0]
        assert torch.equal(layer_out, model.layers[1](layer_in, check=False))  # the layer's own output
    assert calls == [True, False, True] and torch.equal(got, want)
