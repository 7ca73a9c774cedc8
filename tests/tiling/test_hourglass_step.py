"""The hourglass' decoding step in one kernel call (``tiling.modules.hourglass_step``,
``kernels_cuda/hourglass_step.h``) against the reference step it replaces (the stages' kernels among torch
ops), and against the forward."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tiling.modules.hourglass as hourglass_module
from tiling.config import hourglass_config
from tiling.modules import hourglass_step
from tiling.modules.hourglass import HourglassLM

from test_hourglass import calibrated, small, text_tokens


def decode(model, x, budgets, *, fast: bool, monkeypatch=None):
    """Logits, starts and the final state of decoding ``x`` byte by byte, the budget of byte ``t`` being
    ``budgets[t % len(budgets)]``; ``fast=False`` runs the reference step."""
    calls = []

    def counted(*a, **k):
        out = hourglass_step.fast_step(*a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(hourglass_module, "fast_step", counted if fast else (lambda *a, **k: None))
    state, logits, starts = model.allocate_inference_state(x.shape[0]), [], []
    with torch.no_grad():
        for t in range(x.shape[1]):
            out, state = model.step(x[:, t], state, budget=budgets[t % len(budgets)])
            logits.append(out)
            starts.append(state.starts)
    return torch.stack(logits, 1), torch.stack(starts, 1), state, calls


@pytest.mark.parametrize("signal,dechunk,rule", [("router", "ema", "global"), ("router", "hold", "monotonic"),
                                                 ("uniform", "ema", "global"), ("uniform", "hold", "global"),
                                                 ("entropy", "ema", "global"), ("surprisal", "ema", "global"),
                                                 ("surprisal", "hold", "monotonic")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_kernel_call_equals_the_reference_step_and_the_forward(signal, dechunk, rule, dtype, monkeypatch):
    """Every byte in one call; the same starts as the reference step, logits and states to float rounding,
    rows that start and rows that do not in one batch, budgets changing from byte to byte."""
    model = calibrated(small(signal, dechunk=dechunk, rule=rule, budget_range=(0.25, 1.0))).to(dtype)
    x = text_tokens(3, 72)
    for budgets in ([1.0], [0.5], [0.25], [0.25, 0.5, 1.0, 0.35]):
        lf, sf, fs, calls = decode(model, x, budgets, fast=True, monkeypatch=monkeypatch)
        assert calls and all(calls)  # the kernel took every byte
        lr, sr, rs, _ = decode(model, x, budgets, fast=False, monkeypatch=monkeypatch)
        assert torch.equal(sf, sr)
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
        torch.testing.assert_close(lf, lr, **tol)
        for a, b in [(fs.chunk.pool_sum, rs.chunk.pool_sum), (fs.encoder.ssm, rs.encoder.ssm),
                     (fs.main.ssm, rs.main.ssm), (fs.main.conv, rs.main.conv)]:
            torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(fs.held, rs.held, **tol)
        torch.testing.assert_close(fs.decoder.ssm, rs.decoder.ssm, **tol)
        assert torch.equal(fs.chunk.pool_count, rs.chunk.pool_count)
        assert torch.equal(fs.boundary.surplus, rs.boundary.surplus) and fs.boundary.position == rs.boundary.position
        if signal in ("entropy", "surprisal") and budgets != [1.0]:  # the reference's own ops: bit for bit
            assert torch.equal(fs.boundary.prev_score, rs.boundary.prev_score)
            assert torch.equal(fs.boundary.prev_logp, rs.boundary.prev_logp)
        if signal == "router" and budgets != [1.0]:  # the kernel's products: to float rounding
            torch.testing.assert_close(fs.boundary.prev_score, rs.boundary.prev_score, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fs.boundary.router.key, rs.boundary.router.key, **tol)
        if budgets == [0.5] and signal != "uniform":  # the rows' starts differ somewhere: the gathered main step ran
            assert bool((sf.any(0) & ~sf.all(0)).any())
        if len(budgets) == 1:
            with torch.no_grad():
                torch.testing.assert_close(lf, model(x, budget=budgets[0]), rtol=1e-4, atol=2e-4)


def test_weights_updated_in_place_or_moved_are_read_anew(monkeypatch):
    """A weight of the glue (the residual map, the router) updated in place, or the model moved to another
    dtype and back, makes the kernel's decoder again: the steps after it equal the reference's."""
    model = calibrated(small("router", dechunk="ema"))
    x = text_tokens(2, 40)
    decode(model, x, [0.5], fast=True, monkeypatch=monkeypatch)
    with torch.no_grad():
        model.residual.weight.mul_(0.5)
        model.boundary.router.k_proj.weight.add_(0.01)
    model.double().float()
    lf, sf, _, calls = decode(model, x, [0.5], fast=True, monkeypatch=monkeypatch)
    lr, sr, _, _ = decode(model, x, [0.5], fast=False, monkeypatch=monkeypatch)
    assert all(calls) and torch.equal(sf, sr)
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)


def test_declined_steps_run_the_reference_which_names_the_problem(monkeypatch):
    """A token out of range and a NaN weight: the kernel declines, the reference raises naming it; another
    signal, training mode or budget conditioning never reach the kernel."""
    model = calibrated(small("router", dechunk="ema"))
    state = model.allocate_inference_state(1)
    with pytest.raises(ValueError, match="tokens must lie"):
        model.step(torch.tensor([300]), state, budget=0.5)
    with torch.no_grad():
        model.residual.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.step(torch.tensor([65]), state, budget=0.5)
    for other in (calibrated(small("fisher_rao")), calibrated(small("entropy", form="tile")), small("router").train(),
                  calibrated(small("router", budget_range=(0.25, 1.0), budget_conditioning=True))):
        assert not hourglass_step.applies(other, torch.tensor([65]), other.allocate_inference_state(1))


def test_a_copy_or_a_pickle_leaves_the_kernel_object_out():
    model = calibrated(small("uniform"))
    with torch.no_grad():
        model.step(torch.tensor([65]), model.allocate_inference_state(1), budget=0.5)
    assert "_hourglass_decoder" in model.__dict__
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "_hourglass_decoder" not in clone.__dict__
        with torch.no_grad():
            a, _ = clone.step(torch.tensor([65]), clone.allocate_inference_state(1), budget=0.5)
            b, _ = model.step(torch.tensor([65]), model.allocate_inference_state(1), budget=0.5)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(signal=st.sampled_from(["uniform", "router", "entropy", "surprisal"]), rule=st.sampled_from(["global", "monotonic"]),
       dechunk=st.sampled_from(["ema", "hold"]), widths=st.sampled_from([(8, 8), (8, 12), (12, 20)]),
       layers=st.tuples(st.integers(0, 2), st.integers(1, 2), st.integers(0, 2)), batch=st.integers(1, 3),
       budgets=st.lists(st.sampled_from([0.25, 0.3, 0.5, 0.8, 1.0]), min_size=1, max_size=4),
       slack=st.sampled_from([1.0, 4.0, 64.0]), seed=st.integers(0, 2 ** 16))
def test_property_the_kernel_step_places_the_reference_starts(signal, rule, dechunk, widths, layers, batch, budgets,
                                                              slack, seed):
    """Any small hourglass of the kernel's signals (either rule and dechunk, main network wider or not, encoder
    or decoder absent), any batch and budgets changing byte by byte: the kernel's step places the reference's
    starts, and its logits agree to float rounding. (A stage of no layers decodes by the reference's step; it
    could not allocate its state before stop 42.)"""
    torch.manual_seed(seed)
    model = HourglassLM(hourglass_config(d_outer=widths[0], d_main=widths[1], encoder_layers=layers[0],
                                         main_layers=layers[1], decoder_layers=layers[2], d_state=4, budget=0.5,
                                         signal=signal, dechunk=dechunk, rule=rule, slack=slack,
                                         budget_range=(0.25, 1.0)))
    model = calibrated(model, budgets=(0.3, 0.5))
    x = torch.randint(0, 256, (batch, 24), generator=torch.Generator().manual_seed(seed))
    with pytest.MonkeyPatch.context() as mp:
        lf, sf, _, calls = decode(model, x, budgets, fast=True, monkeypatch=mp)
        lr, sr, _, _ = decode(model, x, budgets, fast=False, monkeypatch=mp)
    assert calls and all(c == (min(layers) > 0) for c in calls)  # a stage of no layers: the reference's step
    assert torch.equal(sf, sr)
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)


def test_the_bundled_hourglass_samples_the_same_text_by_either_step(monkeypatch):
    """End to end on the shipped checkpoint: sampling 120 bytes with a fixed generator after a prompt gives the same
    bytes through the kernel's step as through the reference step, at budgets 0.25 and 0.5."""
    from tiling.train.textmodel import BUNDLED, BUNDLED_DIR, load_text_model

    path = BUNDLED_DIR / BUNDLED["hourglass"]
    if not path.is_file():
        pytest.skip(f"{path} is not installed")
    model = load_text_model(path)[0].eval()
    prompt = torch.tensor([list(b"The for statement")])

    def sample(fast: bool, budget: float) -> bytes:
        monkeypatch.setattr(hourglass_module, "fast_step", hourglass_step.fast_step if fast else lambda *a, **k: None)
        g, state, out = torch.Generator().manual_seed(0), model.allocate_inference_state(1), []
        with torch.no_grad():
            for t in range(prompt.shape[1]):
                logits, state = model.step(prompt[:, t], state, budget=budget)
            for _ in range(120):
                token = torch.multinomial(torch.softmax(logits.double() / 0.8, -1), 1, generator=g)[:, 0]
                out.append(int(token))
                logits, state = model.step(token, state, budget=budget)
        return bytes(out)

    for budget in (0.25, 0.5):
        assert sample(True, budget) == sample(False, budget)
