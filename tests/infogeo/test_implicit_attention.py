"""The implicit attention of Mamba layers (infogeo.implicit_attention, tiling.workflows.mamba).

References: the closed form M_c[t, s] = Σ_n C_{t,n} e^{A_{c,n}(S_t − S_s)} Δ_{s,c} B_{s,n} summed
term by term; the layers' own outputs (HF MambaMixer, tiling TiledMamba) in float64; the scan
recurrence.
"""
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infogeo.implicit_attention import (
    MAX_TOKENS, ScanInputs, attention_output, attention_rows, implicit_attention, layer_output, scan_inputs,
    scan_recurrence,
)

transformers = pytest.importorskip("transformers")


def _random_inputs(D, T, N, delta_scale, seed) -> ScanInputs:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return ScanInputs(u=r(D, T), z=r(D, T), delta=torch.rand(D, T, generator=g, dtype=torch.float64) * delta_scale,
                      A=-torch.exp(r(D, N)), B=r(N, T), C=r(N, T), skip=r(D))


def _closed_form(s: ScanInputs) -> torch.Tensor:
    """M term by term: the definition, no blocks, no factorisation."""
    D, T = s.delta.shape
    S = s.delta.cumsum(-1)
    M = torch.zeros(D, T, T, dtype=torch.float64)
    for t in range(T):
        for u in range(t + 1):
            decay = torch.exp(s.A * (S[:, t] - S[:, u])[:, None])  # (D, N)
            M[:, t, u] = (s.C[:, t] * decay * s.delta[:, u, None] * s.B[:, u]).sum(-1)
    return M


@settings(max_examples=25)
@given(D=st.integers(1, 3), T=st.integers(1, 23), N=st.integers(1, 4), block=st.integers(1, 9),
       delta_scale=st.sampled_from([1e-3, 0.3, 5.0, 400.0]), seed=st.integers(0, 2**16))
def test_blockwise_matrix_equals_the_closed_form(D, T, N, block, delta_scale, seed):
    # delta_scale 400 forces the block size down (|A·ΣΔ| over a block must stay ≤ 600)
    s = _random_inputs(D, T, N, delta_scale, seed)
    M = implicit_attention(s, block=block)
    ref = _closed_form(s)
    assert M.shape == (D, T, T)
    assert torch.allclose(M, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max().clamp_min(1e-300)))
    assert float(M.triu(1).abs().max()) == 0.0 if T > 1 else True
    # and M is the scan: M u + D u equals the recurrence
    y = attention_output(M, s)
    assert torch.allclose(y, scan_recurrence(s), rtol=1e-9, atol=1e-9)


def _tiny_mamba(seed=0, d=16, layers=2, vocab=40):
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=d, state_size=4, num_hidden_layers=layers,
                                   intermediate_size=2 * d, time_step_rank=2)
    return transformers.MambaForCausalLM(cfg).eval()


def _capture(mixers, run):
    seen = []
    hooks = [m.register_forward_hook(lambda _m, a, out: seen.append((a[0][0], out[0]))) for m in mixers]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run()
    for h in hooks:
        h.remove()
    return seen


def test_hf_mamba_layers_are_reproduced_by_their_implicit_attention():
    model = _tiny_mamba().double()
    ids = torch.randint(0, 40, (1, 70), generator=torch.Generator().manual_seed(1))
    mixers = [b.mixer for b in model.backbone.layers]
    for mixer, (x, y) in zip(mixers, _capture(mixers, lambda: model(ids))):
        s = scan_inputs(mixer, x)
        M = implicit_attention(s, block=16)
        out = layer_output(mixer, s, attention_output(M, s))  # out_proj((M u + D u) ⊙ SiLU(z))
        assert float((out - y).abs().max()) < 1e-6 * max(1.0, float(y.abs().max()))
        assert float(y.abs().max()) > 1e-3  # the comparison is not between two zeros


def test_tiled_lm_layers_at_budget_one_are_reproduced():
    from tiling.train.textmodel import build_model, model_config

    torch.manual_seed(2)
    model = build_model(model_config("adaptive", 0.5, d_model=16, n_layers=2, d_state=4, tile_size=8)).double().eval()
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(3))
    for mixer, (x, y) in zip(model.layers, _capture(model.layers, lambda: model(ids, budget=1.0))):
        s = scan_inputs(mixer, x)
        out = layer_output(mixer, s, attention_output(implicit_attention(s), s))
        assert float((out - y).abs().max()) < 1e-6 * max(1.0, float(y.abs().max()))


def test_attention_rows_are_group_means_of_normalised_magnitudes():
    s = _random_inputs(6, 19, 3, 0.5, seed=7)
    P, zero = attention_rows(s, groups=2, chunk=2, block=4)
    A = implicit_attention(s).abs()
    ref = (A / A.sum(-1, keepdim=True)).view(2, 3, 19, 19).mean(1)
    assert zero == 0
    assert torch.allclose(P, ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(P.sum(-1), torch.ones(2, 19, dtype=torch.float64), atol=1e-12)


def test_rows_without_magnitude_go_to_the_diagonal():
    s = _random_inputs(2, 6, 2, 0.5, seed=8)
    C = s.C.clone()
    C[:, 3] = 0.0  # row 3 of every channel is zero
    P, zero = attention_rows(ScanInputs(**{**s.__dict__, "C": C}), groups=1)
    assert zero == 2
    assert P[0, 3, 3] == 1.0 and float(P[0, 3, :3].abs().max()) == 0.0


def test_bad_input_is_named():
    s = _random_inputs(4, 5, 2, 0.5, seed=9)
    with pytest.raises(ValueError, match="groups must divide"):
        attention_rows(s, groups=3)
    long = _random_inputs(1, MAX_TOKENS + 1, 1, 0.1, seed=1)
    with pytest.raises(ValueError, match=f"at most {MAX_TOKENS} tokens"):
        attention_rows(long, groups=1)
    with pytest.raises(ValueError, match="lacks"):
        scan_inputs(torch.nn.Linear(2, 2), torch.zeros(3, 2))
    nan = ScanInputs(**{**s.__dict__, "B": s.B.clone().fill_(math.nan)})
    with pytest.raises(ValueError, match="finite|NaN"):
        attention_rows(nan, groups=1)


def test_wrapper_feeds_the_analysis(tmp_path):
    from tiling.workflows.analysis import analyse
    from tiling.workflows.models import default_model_path, load_model

    tok = transformers.AutoTokenizer.from_pretrained(str(default_model_path()))
    _tiny_mamba(vocab=tok.vocab_size).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tokenizer = load_model(tmp_path, groups=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "pulled-back metric skipped" note for a Mamba model
        warnings.filterwarnings("ignore", message=".*falling back.*")
        report = analyse(model, tokenizer, "A small text about a fox and a dog, read by a Mamba.", progress=False)
    ia = report.data["model"]["implicit_attention"]
    assert ia["groups"] == 4 and max(ia["reproduction_error"]) < 1e-5
    # the rows the analysis used are the implicit attention of the layer (row 0 of layer 0, recomputed)
    ids = tokenizer("A small text about a fox and a dog, read by a Mamba.", return_tensors="pt")["input_ids"]
    mixers = model.mixers
    x, _ = _capture(mixers, lambda: model.inner(input_ids=ids))[0]
    P, _ = attention_rows(scan_inputs(mixers[0], x), 4)
    got = torch.tensor(report.arrays["attention_L0_H1"], dtype=torch.float64)
    assert torch.allclose(got, P[1].float().double(), atol=1e-6)
    assert report.data["predictive"] is not None and len(report.data["predictive"]["density"]) == ids.shape[1] - 1
