"""Issue 23, "decoding that skips work": the whole model's decoding step in one kernel call
(``tiling/train/fused_step.py`` over ``kernels_cuda/lm_step.h``) against its reference, the step of
:class:`~tiling.train.model.TiledLM` layer by layer (``fused_step`` patched to None).

Where it applies (budget 1 and the uniform policy, block scope, no gradient) it gives the reference's
logits and states to float rounding, the state passed in stays as it was, the mixer runs only at
segment starts, and a non-finite value is still named; elsewhere (a policy that reads the token,
the learned router, a gradient) the reference path runs.
"""
import dataclasses

import pytest
import torch

import tiling.train.fused_step as fused_mod
import tiling.train.model as model_mod
from tiling.config import TilingConfig
from tiling.modules.step_weights import step_weights
from tiling.ops.scan import cpu_kernels
from tiling.train.lm_state import FLAT_FIELDS, TiledLMState, at_position, flatten
from tiling.train.model import TiledLM

pytestmark = pytest.mark.skipif(cpu_kernels(torch.zeros(1)) is None, reason="no compiled CPU kernel")


def lm(budget=0.25, policy="uniform", *, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    model = TiledLM(32, 16, 3, d_state=8, tiling=TilingConfig(tile_size=8, budget=budget, policy=policy, **kw))
    with torch.no_grad():  # trained-looking pool gates: the pooled representative matters
        for n, p in model.named_parameters():
            if n.endswith(("pool_gate", "q_proj.weight")):
                p.normal_(0.0, 0.5)
    return model.to(dtype).eval()


class Spy:
    """Counts the steps of the whole-model kernel and records each step's kinds."""

    def __init__(self, monkeypatch):
        self.kinds = []
        real = fused_mod.cpu_kernels
        spy = self

        class Decoder:
            def __init__(self, decoder):
                self.decoder = decoder

            def step(self, tokens, kinds, *args):
                spy.kinds.append(list(kinds))
                return self.decoder.step(tokens, kinds, *args)

        class Ext:
            def __init__(self, ext):
                self.ext = ext

            def LmDecoder(self, *args):
                return Decoder(self.ext.LmDecoder(*args))

        monkeypatch.setattr(fused_mod, "cpu_kernels", lambda *t: None if real(*t) is None else Ext(real(*t)))


def decode(model, x, *, reference=False, monkeypatch=None):
    if reference:
        monkeypatch.setattr(model_mod, "fused_step", lambda *a: None)
    logits, states = [], []
    with torch.no_grad():
        state = model.allocate_inference_state(x.shape[0])
        for t in range(x.shape[1]):
            out, state = model.step(x[:, t], state)
            logits.append(out)
            states.append(state)
    if reference:
        monkeypatch.undo()
    return torch.stack(logits, 1), states


def state_tensors(state):
    for st in state:
        yield from (st.conv, st.ssm, st.held, st.chunk.pool_sum, st.chunk.pool_count, st.last_start)


def router_states_equal(a, b) -> bool:
    """Two tile router states hold the same values (the signal history included)."""
    for f in dataclasses.fields(a):
        u, v = getattr(a, f.name), getattr(b, f.name)
        same = (torch.equal(u, v) if isinstance(u, torch.Tensor) else
                all(map(torch.equal, u, v)) if f.name == "tiles" else u == v)
        if not same:
            return False
    return True


@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("policy", ["uniform", "adaptive", "binary"])
def test_the_fused_step_equals_the_layer_by_layer_step(budget, dtype, batch, policy, monkeypatch):
    model = lm(budget, policy, dtype=dtype, seed=1)
    x = torch.randint(0, 32, (batch, 29))
    spy = Spy(monkeypatch)
    got, got_states = decode(model, x)
    assert len(spy.kinds) == x.shape[1]  # every step went through the kernel
    if batch > 1 and policy != "uniform" and budget < 1:  # the rows' own signals: some rows start, others not
        assert any(1 in kinds for kinds in spy.kinds)
    want, want_states = decode(model, x, reference=True, monkeypatch=monkeypatch)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, **tol)
    for a, b in zip(state_tensors(got_states[-1]), state_tensors(want_states[-1])):
        torch.testing.assert_close(a, b, **tol)
    assert [s.position for s in got_states[-1]] == [x.shape[1]] * 3
    for a, b in zip(got_states[-1], want_states[-1]):  # the policy's history: the same signal recorded
        if policy == "uniform":
            assert router_states_equal(a.tile_router, b.tile_router)
        else:  # the signal from inputs equal to float rounding, the same plans
            u, v = a.tile_router, b.tile_router
            for p, q in ((u.signal, v.signal), *zip(u.tiles, v.tiles), (u.surplus, v.surplus), (u.carry, v.carry)):
                torch.testing.assert_close(p, q, **tol)
            assert u.starts == v.starts
    with torch.no_grad():  # and the forward, which the reference equals (test_model_speed)
        torch.testing.assert_close(got, model(x), **tol)
    # the decision's branch these went through: one for every layer (full, or one shared uniform policy) or each
    shared = fused_mod._plan(model, model._step_budgets(None)).shared
    assert shared == ("full" if budget == 1.0 else "same" if policy == "uniform" else None)


def test_the_mixer_runs_only_at_segment_starts_and_layers_share_the_starts(monkeypatch):
    model = lm(0.25)
    spy = Spy(monkeypatch)
    decode(model, torch.randint(0, 32, (2, 32)))
    # kind 2 (every row starts a segment) at 2 tokens in each tile of 8 (R = 0.25), else 0 (pool and hold)
    assert [k[0] for k in spy.kinds] == [2, 0, 0, 0] * 8
    assert all(len(set(k)) == 1 for k in spy.kinds)
    spy.kinds.clear()
    decode(lm(1.0), torch.randint(0, 32, (2, 5)))
    assert spy.kinds == [[3, 3, 3]] * 5  # full resolution: the mixer at every token


def test_the_state_passed_in_is_unchanged(monkeypatch):
    model = lm(0.25)
    x = torch.randint(0, 32, (2, 12))
    _, states = decode(model, x)
    before = [t.clone() for t in state_tensors(states[5])]
    with torch.no_grad():
        model.step(x[:, 6], states[5])
        model.step(x[:, 6], states[5])
    for a, b in zip(state_tensors(states[5]), before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["router", "grad", "mixed_positions"])
def test_the_reference_path_runs_where_the_kernel_does_not_apply(case, monkeypatch):
    spy = Spy(monkeypatch)
    if case == "router":
        model = lm(0.25, boundaries="token", router_rank=4)
    else:
        model = lm(0.25)
    x = torch.randint(0, 32, (1, 9))
    if case == "grad":  # a step under autograd keeps its graph
        state = model.allocate_inference_state(1)
        logits, _ = model.step(x[:, 0], state)
        assert logits.requires_grad and not spy.kinds
        return
    if case == "mixed_positions":
        state = model.allocate_inference_state(1)
        with torch.no_grad():
            state[1] = dataclasses.replace(state[1], position=1)
            assert fused_mod.fused_step(model, x[:, 0], state, [0.25] * 3, x.shape[0]) is None
        return
    decode(model, x)
    assert not spy.kinds


def test_a_non_finite_weight_is_named_through_the_reference_path():
    model = lm(0.25)
    with torch.no_grad():
        model.layers[2].out_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 2: \['out_proj.weight'\]"):
        decode(model, torch.randint(0, 32, (1, 3)))
    model = lm(1.0)
    with torch.no_grad():
        model.head.weight[3, 0] = float("inf")  # the tied embedding: named as such
    with pytest.raises(ValueError, match="not finite|NaN/Inf"):
        decode(model, torch.tensor([[3, 4]]))


def decoder(model):
    weights = [w for layer in model.layers for w in step_weights(layer, torch.float32)]
    return cpu_kernels(model.embedding.weight).LmDecoder(
        model.embedding.weight, [n.weight for n in model.norms] + [model.norm_f.weight], [1e-5] * 4,
        model.head.weight, None, weights, [layer.chunk.pool_gate for layer in model.layers], [model.head.weight],
        [layer.A_log for layer in model.layers])


def test_the_kernel_refuses_a_token_outside_the_vocabulary_a_bad_kind_and_stale_weights():
    model = lm(1.0)
    flat = flatten(model.allocate_inference_state(1))
    dec = decoder(model)
    status, out = dec.step(torch.tensor([3]), [3, 3, 3], flat.tensors, 0, [], [], [])
    assert status == fused_mod.OK and out[0].shape == (1, 32) and len(out) == 7
    assert dec.step(torch.tensor([32]), [3, 3, 3], flat.tensors, 0, [], [], []) == (3, [])  # the caller raises
    assert dec.step(torch.tensor([-1]), [3, 3, 3], flat.tensors, 0, [], [], []) == (3, [])
    with pytest.raises(RuntimeError, match="kind is 0"):
        dec.step(torch.tensor([1]), [4, 3, 3], flat.tensors, 0, [], [], [])
    with pytest.raises(RuntimeError, match="needs row_starts"):
        dec.step(torch.tensor([1]), [1, 3, 3], flat.tensors, 0, [], [], [])
    with pytest.raises(RuntimeError, match="does not match"):
        dec.step(torch.tensor([1, 2]), [3, 3, 3], flat.tensors, 0, [], [], [])  # a state of one row
    with torch.no_grad():
        model.head.weight.mul_(2.0)  # a source read where it lies, updated in place: read as it is now
        assert dec.step(torch.tensor([3]), [3, 3, 3], flat.tensors, 0, [], [], [])[0] == fused_mod.OK
        model.layers[1].A_log.add_(0.5)  # a source of a copy: stale
        assert dec.step(torch.tensor([3]), [3, 3, 3], flat.tensors, 0, [], [], []) == (fused_mod.STALE, [])
    model.head.weight.data = model.head.weight.data.clone()  # moved (as by .to()): stale
    dec = decoder(model)
    model.head.weight.data = model.head.weight.data.clone()
    assert dec.step(torch.tensor([3]), [3, 3, 3], flat.tensors, 0, [], [], []) == (fused_mod.STALE, [])


def test_a_field_no_layer_writes_is_passed_through_and_the_others_keep_their_layers_values():
    model = lm(0.25)
    flat = flatten(model.allocate_inference_state(2))
    flat = flat._replace(tensors=[t.clone().random_(0, 5) if t.dtype == torch.int64 else torch.randn_like(t)
                                  for t in flat.tensors])
    dec = decoder(model)
    _, out = dec.step(torch.tensor([1, 2]), [0, 0, 0], flat.tensors, 7, [], [], [])  # no mixer runs: only the pools change
    for k, name in enumerate(FLAT_FIELDS):
        assert (out[1 + k] is flat.tensors[k]) == (name not in ("pool_sum", "pool_count")), name
    torch.testing.assert_close(out[5], flat.tensors[4] + 1)
    _, out = dec.step(torch.tensor([1, 2]), [2, 0, 3], flat.tensors, 7, [], [], [])  # one layer of each kind
    conv, ssm, held, pool_sum, pool_count, last = out[1:]
    for t, old in zip((conv, ssm, held, last), (flat.tensors[0], flat.tensors[1], flat.tensors[2], flat.tensors[5])):
        assert torch.equal(t[1], old[1]) and not torch.equal(t[0], old[0]) and not torch.equal(t[2], old[2])
    assert torch.equal(last[0], torch.full((2,), 7)) and torch.equal(pool_count[0], torch.zeros(2, dtype=torch.int64))
    assert torch.equal(pool_count[1], flat.tensors[4][1] + 1) and torch.equal(pool_count[2], flat.tensors[4][2])
    assert torch.equal(pool_sum[2], flat.tensors[3][2]) and not torch.equal(pool_sum[1], flat.tensors[3][1])
    # kind 1 (some rows start): each row's fields as its own kind gives them (row 0 starts, row 1 does not)
    _, some = dec.step(torch.tensor([1, 2]), [1, 1, 0], flat.tensors, 7, [], [], [], [1, 0, 1, 0, 0, 0])
    _, starts = dec.step(torch.tensor([1, 2]), [2, 2, 0], flat.tensors, 7, [], [], [])
    _, joins = dec.step(torch.tensor([1, 2]), [0, 0, 0], flat.tensors, 7, [], [], [])
    for k, name in enumerate(FLAT_FIELDS):  # layers 0 and 1; row 0 as if every row started, row 1 as if none
        for layer in (0, 1):
            torch.testing.assert_close(some[1 + k][layer, 0], starts[1 + k][layer, 0], rtol=0, atol=0)
            torch.testing.assert_close(some[1 + k][layer, 1], joins[1 + k][layer, 1], rtol=0, atol=0)
    torch.testing.assert_close(some[0][0], starts[0][0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad, error", [(1.5, ValueError), (float("nan"), ValueError), (True, TypeError),
                                        ([0.5], TypeError), (0.0, ValueError)])
def test_a_bad_budget_is_refused_at_every_step(bad, error):
    model = lm(0.25)
    state = model.allocate_inference_state(1)
    with torch.no_grad():
        _, state = model.step(torch.tensor([1]), state, budget=0.5)  # a good budget, now kept
        for _ in range(2):  # refused again: a refusal is never kept
            with pytest.raises(error, match="budget"):
                model.step(torch.tensor([1]), state, budget=bad)


@pytest.mark.parametrize("where", ["mixer", "norm", "head_and_embedding", "gate"])
def test_a_parameter_assigned_anew_is_read_by_the_next_step(where, monkeypatch):
    model = lm(0.25)
    x = torch.randint(0, 32, (1, 12))
    decode(model, x)  # the step's caches are made
    with torch.no_grad():
        if where == "mixer":
            model.layers[1].out_proj.weight = torch.nn.Parameter(torch.randn_like(model.layers[1].out_proj.weight))
        elif where == "norm":
            model.norm_f.weight = torch.nn.Parameter(torch.rand_like(model.norm_f.weight) + 0.5)
        elif where == "head_and_embedding":
            w = torch.nn.Parameter(torch.randn_like(model.embedding.weight))
            model.embedding.weight = w
            model.head.weight = w
        else:
            model.layers[0].chunk.pool_gate = torch.nn.Parameter(torch.randn_like(model.layers[0].chunk.pool_gate))
    got, _ = decode(model, x)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


def test_a_model_moved_to_float64_or_updated_in_place_decodes_with_its_new_weights(monkeypatch):
    model = lm(0.25)
    x = torch.randint(0, 32, (2, 12))
    decode(model, x)  # the caches are made in float32
    model.to(torch.float64)
    spy = Spy(monkeypatch)
    got, _ = decode(model, x)
    assert got.dtype == torch.float64 and len(spy.kinds) == x.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-12, atol=1e-12)
        for p in model.parameters():  # an optimiser-like in-place update: versions change
            p.mul_(1.01)
    got, _ = decode(model, x)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-12, atol=1e-12)


def test_a_kernel_state_reads_as_its_layer_states_and_says_where_segments_started(monkeypatch):
    model = lm(0.25)
    x = torch.randint(0, 32, (2, 11))
    got, states = decode(model, x)
    want, want_states = decode(model, x, reference=True, monkeypatch=monkeypatch)
    state = states[-1]
    assert isinstance(state, TiledLMState) and state.flat is not None and want_states[-1].flat is None
    assert len(state) == 3 and state.batch == 2 and [s.position for s in state] == [11] * 3
    for a, b in zip(state, want_states[-1]):  # the router states too
        assert router_states_equal(a.tile_router, b.tile_router)
    for a, b in zip(state_tensors(state), state_tensors(want_states[-1])):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # started(): the flat form and the layer states agree, and both follow the policy (R = 1/4, tiles of 8)
    flags = torch.stack([s.started() for s in states], 0)  # (steps, layers, batch)
    assert torch.equal(flags, torch.stack([s.started() for s in want_states], 0))
    assert flags[:, 0, 0].tolist() == [True, False, False, False] * 2 + [True, False, False]
    # assigning a layer state drops the flat form; the next step reads the layers (and refuses a mix)
    state[1] = dataclasses.replace(state[1], position=3)
    assert state.flat is None
    with torch.no_grad():
        assert fused_mod.fused_step(model, x[:, 0], state, [0.25] * 3, x.shape[0]) is None


def test_a_plain_list_of_layer_states_decodes_like_the_models_own_state():
    model = lm(0.35)
    x = torch.randint(0, 32, (1, 9))
    got, states = decode(model, x)
    with torch.no_grad():
        logits, state = model.step(x[:, 4], list(states[3]))
        torch.testing.assert_close(logits, got[:, 4], rtol=0, atol=0)
        other = lm(0.35, seed=2)
        with pytest.raises(ValueError, match="another model"):
            other.step(x[:, 4], states[3])


@pytest.mark.parametrize("policy", ["uniform", "adaptive"])
def test_a_budget_changed_inside_a_tile_applies_from_the_next_tile(policy, monkeypatch):
    """A tile begun at budget 1 has no plan: it runs at full resolution to its end; budget 1 inside a
    planned tile runs at full resolution at once. Both paths agree (they crashed on the first case)."""
    model = lm(0.25, policy)
    x = torch.randint(0, 32, (1, 27))
    budgets = [1.0] * 3 + [0.25] * 10 + [1.0] * 2 + [0.35] * 12

    def run():
        out = []
        with torch.no_grad():
            state = model.allocate_inference_state(1)
            for t, c in enumerate(budgets):
                logits, state = model.step(x[:, t], state, budget=c)
                out.append((logits, state.started()[:, 0].tolist()))
        return out

    spy = Spy(monkeypatch)
    got = run()
    assert len(spy.kinds) == len(budgets)
    assert spy.kinds[3:8] == [[2, 2, 2]] * 5 and spy.kinds[8][0] == 2  # the rest of tile 0: every token
    monkeypatch.setattr(model_mod, "fused_step", lambda *a: None)
    want = run()
    for (a, sa), (b, sb) in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert sa == sb


def test_a_signal_that_overflows_is_named_through_the_reference_path():
    model = lm(0.25, "adaptive")
    with torch.no_grad():
        model.layers[1].dt_proj.weight.fill_(3e38)  # the signal's step sizes overflow, the mixer's too
    with pytest.raises(ValueError, match="not finite|overflow|NaN/Inf"):
        decode(model, torch.randint(0, 32, (1, 10)))


def checked(state: TiledLMState) -> TiledLMState:
    """The same kernel state without what its step remembered (:class:`~tiling.train.fused_step.Resume`):
    a step on it makes every check."""
    return TiledLMState.of_flat(state.flat, state.owner, state.batch, None)


@pytest.mark.parametrize("change", ["none", "budget", "assigned", "in_place", "budget_none"])
def test_a_step_resumed_from_the_kernels_state_equals_a_fully_checked_step(change, monkeypatch):
    model = lm(0.25)
    x = torch.randint(0, 32, (2, 12))
    resumed = []
    real = model_mod.resume_step
    monkeypatch.setattr(model_mod, "resume_step", lambda *a: resumed.append(real(*a)) or resumed[-1])
    with torch.no_grad():
        state = model.allocate_inference_state(2)
        for t in range(5):
            _, state = model.step(x[:, t], state, budget=0.25)
        assert state.resume is not None and all(r is not None for r in resumed[1:])
        budget = {"budget": 0.5, "budget_none": None}.get(change, 0.25)
        if change == "assigned":
            model.layers[1].out_proj.weight = torch.nn.Parameter(torch.randn_like(model.layers[1].out_proj.weight))
        elif change == "in_place":
            for p in model.parameters():
                p.mul_(1.01)
        resumed.clear()
        got, after = model.step(x[:, 5], state, budget=budget)
        want, _ = model.step(x[:, 5], checked(state), budget=budget)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # the checks that no longer hold are made again: another budget or an assignment is not resumed
        assert (resumed[0] is not None) == (change in ("none", "in_place"))
        assert after.resume is not None and after.resume.budget == budget
        # and the decoding goes on as the fully checked one would, bit for bit
        other = checked(after)
        for t in range(6, 12):
            got, after = model.step(x[:, t], after, budget=budget)
            want, other = model.step(x[:, t], checked(other), budget=budget)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        if change == "none":  # and as the forward
            torch.testing.assert_close(got, model(x, budget=0.25)[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["batch", "dtype", "shape", "model", "value"])
def test_a_resumed_step_still_refuses_bad_tokens_and_another_models_state(bad):
    model, other = lm(0.25), lm(0.25)
    with torch.no_grad():
        state = model.allocate_inference_state(2)
        _, state = model.step(torch.tensor([1, 2]), state)
        assert state.resume is not None
        tokens = {"batch": torch.tensor([1, 2, 3]), "dtype": torch.tensor([1.0, 2.0]),
                  "shape": torch.tensor([[1, 2]]), "value": torch.tensor([1, 32])}.get(bad, torch.tensor([1, 2]))
        match = {"batch": "batch", "dtype": "int64", "shape": "int64", "model": "another model", "value": r"\[0, "}[bad]
        with pytest.raises(ValueError, match=match):
            (other if bad == "model" else model).step(tokens, state)


def test_a_resumed_state_under_autograd_takes_the_differentiable_path():
    model = lm(0.25)
    with torch.no_grad():
        _, state = model.step(torch.tensor([1]), model.allocate_inference_state(1))
    assert state.resume is not None
    logits, _ = model.step(torch.tensor([2]), state)
    assert logits.requires_grad


def test_replacing_a_layer_state_forgets_the_resume():
    model = lm(0.25)
    with torch.no_grad():
        _, state = model.step(torch.tensor([1]), model.allocate_inference_state(1))
    state[0] = state[0]
    assert state.resume is None and state.flat is None


def test_a_model_that_decoded_can_be_copied_and_saved():
    """The plans hold the kernel's decoder, which cannot be pickled: a copy (``copy.deepcopy``) and a save
    (``torch.save``, which pickles) leave them out, and the copy decodes as the original does (it makes its own)."""
    import copy
    import pickle
    model = lm()
    x = torch.randint(0, 32, (1, 12))
    first, _ = decode(model, x)
    assert model.__dict__.get("_fused_plans")  # decoding made a plan
    twin = copy.deepcopy(model)
    assert "_fused_plans" not in twin.__dict__
    torch.testing.assert_close(decode(twin, x)[0], first, rtol=0, atol=0)
    torch.testing.assert_close(decode(pickle.loads(pickle.dumps(model)), x)[0], first, rtol=0, atol=0)


def test_a_router_state_moved_to_a_position_keeps_every_other_field():
    """``at_position`` builds the state field by field (no ``dataclasses.replace``): it must name every field,
    so a field added to ``TileRouterState`` fails here rather than being dropped."""
    model = lm(0.25)
    _, states = decode(model, torch.randint(0, 32, (2, 11)))
    src = states[-1].flat.tile_routers[0]
    assert src.boundary is not None and src.starts is not None and src.surplus is None
    moved = at_position(src, 20)
    assert moved.position == 20 and at_position(src, src.position) is src
    fields = [f.name for f in dataclasses.fields(type(src))]
    assert fields == ["position", "signal", "tiles", "carry", "boundary", "surplus", "starts"]
    for name in fields[1:]:
        assert getattr(moved, name) is getattr(src, name), name


@pytest.mark.parametrize("policy,budget", [("uniform", 0.25), ("adaptive", 0.5), ("uniform", 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_zero_state_is_made_flat_and_equals_the_layers_zero_states(policy, budget, dtype, batch):
    """``allocate_inference_state`` makes the kernel's flat form directly (:func:`zero_state`): the same
    tensors, router states (one shared object per tiling) and signal maps as flattening the layers' own zero
    states, and it decodes as they do."""
    model = lm(budget, policy, dtype=dtype)
    state = model.allocate_inference_state(batch)
    assert state.flat is not None and state.batch == batch and state.resume is None
    layers = fused_mod.share_router_states(model, [layer.allocate_inference_state(batch) for layer in model.layers])
    want = flatten(layers)
    got = state.flat
    assert got.position == want.position == 0 and len(got.tensors) == len(FLAT_FIELDS)
    for a, b in zip(got.tensors, want.tensors):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert all(a is got.tile_routers[0] for a in got.tile_routers)  # one tiling: one router state
    for a, b in zip(got.tile_routers, want.tile_routers):
        assert router_states_equal(a, b)
    for (ra, rta, pa), (rb, rtb, pb) in zip(got.fixed, want.fixed):
        assert torch.equal(ra, rb) and ra.dtype == rb.dtype and rta is rtb is None
        assert pa is None and pb is not None  # the maps: made at the first step that reads them
    assert got.signal is None
    filled = fused_mod._with_maps(model, got)  # that step's maps: the layers' own
    for (_, _, pa), (_, _, pb) in zip(filled.fixed, want.fixed):
        assert all((u is None and v is None) or torch.equal(u, v) for u, v in zip(pa[:4], pb[:4])) and pa[4] == pb[4]
    assert all(torch.equal(u, v) for u, v in zip(filled.signal[0], want.signal[0]) if u is not None)
    assert filled.signal[1] == want.signal[1] and len(filled.signal[0]) == len(want.signal[0])
    x = torch.randint(0, 32, (batch, 9))
    a, b = state, TiledLMState(layers, owner=id(model))
    with torch.no_grad():
        for t in range(9):
            la, a = model.step(x[:, t], a, budget=budget)
            lb, b = model.step(x[:, t], b, budget=budget)
            torch.testing.assert_close(la, lb, rtol=0, atol=0)


def test_a_tiles_signals_wait_until_its_end_and_read_as_recorded(monkeypatch):
    """Under a policy that reads the signal, the kernel's step keeps the current tile's signals pending and
    records them at the tile's last token (``FlatState.pending``, ``TileRouter.record_many``): the pending
    count grows within a tile and is empty after its end, and at every token the layer states read as the
    reference path's, which records each token."""
    model = lm(0.25, "adaptive", seed=2)
    x = torch.randint(0, 32, (1, 29))
    got, got_states = decode(model, x)
    want, want_states = decode(model, x, reference=True, monkeypatch=monkeypatch)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for t, (a, b) in enumerate(zip(got_states, want_states)):
        pending = a.flat.pending
        assert (0 if pending is None else len(pending.signals)) == (0 if t % 8 == 7 else t % 8 + 1), t
        for u, v in zip(a, b):  # reading the layers records the pending signals
            p, q = u.tile_router, v.tile_router
            assert p.position == q.position == t + 1 and p.starts == q.starts
            for m, n in ((p.signal, q.signal), *zip(p.tiles, q.tiles)):
                torch.testing.assert_close(m, n, rtol=1e-6, atol=1e-9)
        assert a.flat.pending is pending  # reading left the state as it was
