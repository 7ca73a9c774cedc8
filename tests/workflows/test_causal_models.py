"""Causal transformers (GPT-2, Llama with rotary + grouped-query attention) and bad model input.

References: the models' own ``output_attentions``; the pulled-back metric formed from the
autograd Jacobian of the attention logits (keys fixed), with transformers' own
``apply_rotary_pos_emb``; the CLI's exit code.
"""
import json
import warnings

import pytest
import torch

from tiling.workflows import analysis
from tiling.workflows.cli import main
from tiling.workflows.models import attention_projections, default_model_path, load_model

transformers = pytest.importorskip("transformers")
TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps on."


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(default_model_path()))


def _save(model, tok, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _gpt2(tok, **kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0, **kw)
    return transformers.GPT2LMHeadModel(cfg)


def _llama(tok):
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def causal(request, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    _save(_gpt2(tokenizer) if request.param == "gpt2" else _llama(tokenizer), tokenizer, folder)
    model, tok = load_model(folder)
    return request.param, model, tok


def _reference_metric(kind, model, proj, x, t):
    """G(x_t) = Σ_h J_hᵀ(diag p − ppᵀ)J_h, J_h the autograd Jacobian of head h's logits over keys s ≤ t."""
    Wq, bq = proj.query.weight.double(), proj.query.bias
    Wk, bk = proj.key.weight.double(), proj.key.bias
    H, dh = proj.n_heads, proj.head_dim
    n = x.shape[0]
    k = torch.nn.functional.linear(x, Wk, None if bk is None else bk.double()).view(n, -1, dh).transpose(0, 1)
    if kind == "llama":
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        rot = next(m for name, m in model.named_modules() if name.endswith("rotary_emb"))
        cos, sin = rot(torch.zeros(1, n, dh), torch.arange(n)[None])
        cos, sin = cos.double(), sin.double()
        _, k = apply_rotary_pos_emb(k[None], k[None], cos, sin)
        k = k[0]
    k = k[torch.arange(H) // (H // proj.n_kv_heads)]  # (H, n, dh)

    def logits(xt):
        q = torch.nn.functional.linear(xt, Wq, None if bq is None else bq.double()).view(1, H, 1, dh)
        if kind == "llama":
            q, _ = apply_rotary_pos_emb(q, q, cos[:, t:t + 1], sin[:, t:t + 1])
        return proj.scaling * torch.einsum("hd,hsd->hs", q[0, :, 0], k[:, :t + 1])

    J = torch.autograd.functional.jacobian(logits, x[t])  # (H, t+1, d)
    p = torch.softmax(logits(x[t]), -1)
    F = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
    return torch.einsum("hsi,hsr,hrj->ij", J, F, J).detach()


def test_attention_and_pullback_match_the_model(causal):
    kind, model, tok = causal
    enc = tok(TEXT, return_tensors="pt")
    proj = attention_projections(model)
    assert proj is not None and all(p.causal for p in proj) and (proj[0].rotary is not None) == (kind == "llama")
    attn, _h, xs, logits = analysis._forward(model, enc, proj)
    with torch.no_grad():
        own = model(**enc, output_attentions=True)
    assert torch.equal(logits, own.logits[0].double())
    for li in range(2):
        assert float(attn[li].triu(1).max()) < 1e-200  # causal rows: zero beyond the diagonal
        assert torch.allclose(attn[li].float(), own.attentions[li][0], atol=1e-7)
        pb = analysis._pullback(xs[li], proj[li], attn[li])
        # softmax(s·R_t q·R_s k) under the causal mask, recomputed in float64, is the model's map
        assert pb["attention_reproduction_error"] < 1e-6
        x = xs[li]
        for t in (1, 5, x.shape[0] - 2):
            G = _reference_metric(kind, model, proj[li], x, t)
            assert float(pb["trace"][t]) == pytest.approx(float(torch.trace(G)), rel=1e-8)
            dx = x[t + 1] - x[t]
            assert float(pb["density"][t]) == pytest.approx(float(dx @ G @ dx), rel=1e-8)


def test_causal_report_has_pullback_and_predictive_sections(causal):
    kind, model, tok = causal
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        report = analysis.analyse(model, tok, TEXT, progress=False, layers=[1])
    lr = report.data["layers"][0]
    assert lr["pullback"] is not None and lr["tiling"]["density_source"] == "pullback"
    pr = report.data["predictive"]
    n = report.data["text"]["n_tokens"]
    assert len(pr["density"]) == len(pr["surprisal"]) == n - 1
    assert any("predictive density" in f for f in report.findings())


def test_long_text_is_truncated_with_a_warning(causal):
    kind, model, tok = causal
    with pytest.warns(UserWarning, match="truncated to 64 tokens"):
        report = analysis.analyse(model, tok, TEXT * 8, progress=False, layers=[0], heads=[0])
    assert report.data["text"]["n_tokens"] == 64 and report.data["text"]["truncated"]


def _cli_error(capsys, argv, match):
    capsys.readouterr()  # drop what the test's own set-up printed (save_pretrained's progress bar)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("infogeo: error:") and match in err, err


def test_unsupported_architecture_names_the_supported(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "opt", "architectures": ["OPTForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported causal architecture 'opt'.*gpt2.*llama.*mamba"):
        load_model(tmp_path)
    _cli_error(capsys, ["analyse", "text", "--model", str(tmp_path), "--out", str(tmp_path / "o")],
               "supported: ")


def test_missing_and_misshapen_tensors_are_refused(tokenizer, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = _save(_gpt2(tokenizer), tokenizer, tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if k.endswith("attn.c_attn.weight"))
    save_file({k: v for k, v in weights.items() if k != name}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing tensors"):
        load_model(folder)
    _cli_error(capsys, ["analyse", "text", "--model", str(folder), "--out", str(tmp_path / "o")], "missing tensors")
    weights[name] = weights[name][:, :48].contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not fit its config.json"):
        load_model(folder)


def test_bad_tiled_lm_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "lm.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    _cli_error(capsys, ["analyse", "text", "--model", str(bad), "--out", str(tmp_path / "o")], "corrupt")
