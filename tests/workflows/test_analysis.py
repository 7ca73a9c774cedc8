"""tiling.workflows.analysis on the real bundled all-MiniLM-L6-v2, against independent references.

References: the HF model's own attention maps and hidden states (not the hooks the analysis
uses), numpy float64 recomputations of the Fisher–Rao distance, an autograd (torch.func.jacrev)
Jacobian for the pulled-back metric, eigenvalues from numpy, and ``tiling.ops.scan_cost`` for the
cost saved.
"""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tiling.config import TilingConfig
from tiling.workflows.analysis import (SCHEMA, SCHEMA_VERSION, FIGURES, Report, _token_density, analyse, save_report,
                                       summary_table)
from tiling.workflows.analysis.options import AnalysisOptions
from tiling.workflows.batch import settings_of
from tiling.workflows.models import attention_projections, default_model_path, load_model

TEXT = "Entropy measures surprise. The the the the the cat sat on the mat."
LAYERS, HEADS = [0, 3, 5], [0, 4, 11]


@pytest.fixture(scope="module")
def model_tok():
    return load_model()


@pytest.fixture(scope="module")
def report(model_tok):
    model, tok = model_tok
    return analyse(model, tok, TEXT, layers=LAYERS, heads=HEADS, budget=0.4, tile_size=4, k=5, n_eigs=6,
                   progress=False)


@pytest.fixture(scope="module")
def hf(model_tok):
    """The model's own outputs, float64: attention (L, H, n, n), rows renormalised in float64, and
    hidden states (L+1, n, d)."""
    model, tok = model_tok
    enc = tok(TEXT, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True, output_hidden_states=True)
    attn = torch.stack([a[0] for a in out.attentions]).double()
    # float32 rows sum to 1 only to ~1e-7, which the arccos form below would amplify to ~1e-6 in d²
    attn = attn / attn.sum(-1, keepdim=True)
    return attn, torch.stack([h[0] for h in out.hidden_states]).double()


def _fr(p, q):
    """Fisher–Rao distance 2·arccos Σ√(pq) in numpy float64 (the arccos form, not the library's)."""
    bc = np.clip(np.sum(np.sqrt(p * q), -1), -1.0, 1.0)
    return 2.0 * np.arccos(bc)


def test_default_model_is_the_bundled_minilm(model_tok):
    model, _ = model_tok
    assert (default_model_path() / "model.safetensors").is_file()
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.hidden_size) == (6, 12, 384)
    assert not model.training
    assert len(attention_projections(model)) == 6


def test_schema_and_selection(report, model_tok):
    d = report.data
    _, tok = model_tok
    assert d["schema"] == SCHEMA and d["schema_version"] == SCHEMA_VERSION
    assert [lr["layer"] for lr in d["layers"]] == LAYERS
    assert all([h["head"] for h in lr["attention"]["heads"]] == HEADS for lr in d["layers"])
    ids = tok(TEXT)["input_ids"]
    assert d["text"]["tokens"] == tok.convert_ids_to_tokens(ids)
    assert d["text"]["n_tokens"] == len(ids) and not d["text"]["truncated"]
    json.loads(report.to_json())  # strict JSON: allow_nan=False would raise on NaN/Inf


def test_attention_maps_are_the_models_and_rows_sum_to_one(report, hf):
    attn, _ = hf
    assert report.data["checks"]["attention_row_sum_max_error"] < 1e-6
    for li in LAYERS:
        for h in HEADS:
            P = report.arrays[f"attention_L{li}_H{h}"]
            np.testing.assert_allclose(P, attn[li, h].numpy(), atol=1e-7)
            np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)


def test_attention_density_is_squared_fisher_rao_speed(report, hf):
    attn, _ = hf
    for lr in report.data["layers"]:
        for hr in lr["attention"]["heads"]:
            P = attn[lr["layer"], hr["head"]].numpy()
            ref = _fr(P[1:], P[:-1]) ** 2
            np.testing.assert_allclose(hr["density"], ref, rtol=1e-6, atol=1e-9)
            assert hr["density_mean"] == pytest.approx(ref.mean(), rel=1e-6)
        Pm = attn[lr["layer"]].mean(0).numpy()
        np.testing.assert_allclose(lr["head_mean"]["density"], _fr(Pm[1:], Pm[:-1]) ** 2, rtol=1e-6, atol=1e-9)


def test_geodesics_symmetric_and_consistent_with_fisher_rao(report, hf):
    attn, _ = hf
    n = report.data["text"]["n_tokens"]
    for li in LAYERS:
        for h in HEADS:
            D = report.arrays[f"geodesic_L{li}_H{h}"].astype(np.float64)
            P = attn[li, h].numpy()
            direct = _fr(P[:, None, :], P[None, :, :])
            assert np.allclose(D, D.T, atol=1e-6) and np.allclose(np.diag(D), 0.0)
            # a graph path is never shorter than the Fisher–Rao distance (a metric) ...
            assert (D >= direct - 1e-5).all()
            # ... and consecutive tokens are joined by a sequence edge of exactly that length
            np.testing.assert_allclose(np.diag(D, 1), np.diag(direct, 1), rtol=1e-5, atol=1e-6)
            hr = next(x for x in report.layer(li)["attention"]["heads"] if x["head"] == h)
            assert hr["geodesic_max"] == pytest.approx(D.max(), rel=1e-6)
            assert hr["geodesic_mean"] == pytest.approx(D[np.triu_indices(n, 1)].mean(), rel=1e-5)
        Dm = np.array(report.layer(li)["head_mean"]["geodesic"])
        assert np.allclose(Dm, Dm.T) and np.isfinite(Dm).all()


def test_spectra_and_curvature(report):
    for lr in report.data["layers"]:
        for spec in [lr["head_mean"]["spectrum"]] + [h["spectrum"] for h in lr["attention"]["heads"]]:
            s = np.array(spec)
            assert len(s) == 6 and np.all(np.diff(s) >= -1e-9)
            assert abs(s[0]) < 1e-6 and s[1] > 1e-8  # connected graph (sequence edges): one zero eigenvalue
        hm = lr["head_mean"]
        edges, kap = np.array(hm["edges"]), np.array(hm["edge_curvature"])
        assert edges.shape == (len(kap), 2) and (edges[:, 0] < edges[:, 1]).all()
        # every sequence edge t–t+1 is in the graph
        n = report.data["text"]["n_tokens"]
        assert {(t, t + 1) for t in range(n - 1)} <= set(map(tuple, edges.tolist()))
        # Ollivier–Ricci κ = 1 − W1/d ≤ 1 (W1 ≥ 0); the mean is the reported one
        assert (kap <= 1 + 1e-9).all() and np.isfinite(kap).all()
        assert hm["curvature_mean"] == pytest.approx(kap.mean(), rel=1e-9, abs=1e-12)
        assert len(hm["node_curvature"]) == n


def _reference_pullback(model, x, layer):
    """G(x_t) = Σ_h J_hᵀ(diag p_h − p_h p_hᵀ)J_h with J_h = ∂ logits_h/∂x from autograd, keys fixed."""
    att = model.encoder.layer[layer].attention.self
    Wq, bq = att.query.weight.detach().double(), att.query.bias.detach().double()
    K = torch.nn.functional.linear(x, att.key.weight.detach().double(), att.key.bias.detach().double())
    H, dh = 12, 32
    G = torch.zeros(x.shape[0], x.shape[1], x.shape[1], dtype=torch.float64)
    for h in range(H):
        Kh = K[:, h * dh:(h + 1) * dh]

        def logits(xt, h=h, Kh=Kh):
            q = Wq[h * dh:(h + 1) * dh] @ xt + bq[h * dh:(h + 1) * dh]
            return (Kh @ q) / math.sqrt(dh)

        J = torch.func.vmap(torch.func.jacrev(logits))(x)  # (n, m, d)
        p = torch.softmax(torch.func.vmap(logits)(x), -1)
        C = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        G += J.transpose(1, 2) @ C @ J
    return G


def test_pullback_matches_autograd_reference(report, model_tok, hf):
    model, _ = model_tok
    _, hidden = hf
    for li in (0, 5):
        x = hidden[li]  # BERT's attention acts on the layer input itself
        G = _reference_pullback(model, x, li)
        pb = report.layer(li)["pullback"]
        ev = np.linalg.eigvalsh(G.numpy())
        np.testing.assert_allclose(pb["trace"], ev.sum(-1), rtol=1e-6)
        np.testing.assert_allclose(pb["effective_dimension"], ev.sum(-1) ** 2 / (ev**2).sum(-1), rtol=1e-5)
        dx = x[1:] - x[:-1]
        rho = torch.einsum("ti,tij,tj->t", dx, G[:-1], dx).numpy()
        np.testing.assert_allclose(pb["density"], rho, rtol=1e-5)
        assert pb["attention_reproduction_error"] < 1e-5
        assert all(1.0 <= e <= 384 for e in pb["effective_dimension"])


def test_tiling_plan_is_consistent(report):
    from tiling.ops import scan_cost

    p = report.data["params"]
    n = report.data["text"]["n_tokens"]
    for lr in report.data["layers"]:
        t = lr["tiling"]
        assert t["density_source"] == "pullback"
        # the token density is the mean of the transitions into and out of each token
        rho = np.array(lr["pullback"]["density"])
        tok = np.array(t["token_density"])
        np.testing.assert_allclose(tok[1:-1], 0.5 * (rho[:-1] + rho[1:]), rtol=1e-12)
        assert tok[0] == pytest.approx(rho[0]) and tok[-1] == pytest.approx(rho[-1])
        starts = list(range(0, n, p["tile_size"]))
        np.testing.assert_allclose(t["tile_density"], [tok[s:s + p["tile_size"]].mean() for s in starts], rtol=1e-12)
        R = np.array(t["resolution"])
        assert len(R) == len(starts) == len(t["tiles"])
        assert (R >= p["r_min"] - 1e-12).all() and (R <= 1 + 1e-12).all()
        assert R.mean() == pytest.approx(p["budget"], abs=1e-6)  # non-causal policy: budget met exactly
        for tile, s in zip(t["tiles"], starts):
            assert tile["start"] == s and tile["length"] == min(p["tile_size"], n - s)
            assert tile["segments"] == max(1, math.ceil(tile["resolution"] * tile["length"] - 1e-9))
        cost = scan_cost(n, p["tile_size"], torch.tensor(R), None, p["state_dim"], 384)
        full = scan_cost(n, p["tile_size"], 1.0, None, p["state_dim"], 384)
        assert t["cost"] == cost and t["cost_full"] == full
        ops = lambda c: c["exp_total"] + c["madd_total"]
        assert t["cost_saved"] == pytest.approx(1 - ops(cost) / ops(full), rel=1e-12)
        rec = lambda c: c["exp_recurrence"] + c["madd_recurrence"]
        assert t["cost_saved_recurrence"] == pytest.approx(1 - rec(cost) / rec(full), rel=1e-12)
        assert cost["segments"] == sum(x["segments"] for x in t["tiles"]) < full["segments"]
        assert 0 < t["cost_saved_recurrence"] < 1 and t["cost_saved"] < 1


def test_findings_follow_the_numbers(report):
    rows = report.summary_rows()
    top = max(rows, key=lambda r: r["mean_density"])
    text = " ".join(report.findings())
    assert f"Layer {top['layer']} carries the highest mean density" in text
    heads = [(lr["layer"], h["head"], h["density_mean"]) for lr in report.data["layers"] for h in lr["attention"]["heads"]]
    fast = max(heads, key=lambda x: x[2])
    assert f"Head {fast[1]} of layer {fast[0]} moves fastest" in text
    assert len(summary_table(report).splitlines()) == 1 + len(LAYERS)


def test_save_and_load_roundtrip(report, tmp_path):
    page = save_report(report, tmp_path / "r")
    out = tmp_path / "r"
    assert page == out / "report.html"
    for f in FIGURES:
        png = out / f"{f}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    md = (out / "report.md").read_text()
    assert "## Findings" in md and all(f"({f}.png)" in md for f in FIGURES)
    back = Report.load(out)
    assert back.data == json.loads(report.to_json())
    assert set(back.arrays) == set(report.arrays)
    (out / "report.json").write_text(json.dumps({**report.data, "schema_version": 999}))
    with pytest.raises(ValueError, match="schema"):
        Report.load(out)


def test_params_are_the_options_and_the_batch_fingerprint(report):
    """report["params"] is AnalysisOptions.to_dict() and the --batch fingerprint the same dict (issue 26)."""
    opts = AnalysisOptions(layers=tuple(LAYERS), heads=tuple(HEADS), budget=0.4, tile_size=4, k=5, n_eigs=6)
    assert opts.to_dict() != AnalysisOptions().to_dict()
    assert report.data["params"] == opts.to_dict()
    assert settings_of(None, opts) == {"model": "bundled all-MiniLM-L6-v2", **report.data["params"]}
    assert report.data["plan_config"] == opts.plan_config().to_dict()
    assert report.layers == LAYERS and report.heads == HEADS  # resolved from the layer entries


def test_params_with_tiling_record_the_plans_budget_tile_size_and_r_min(model_tok):
    model, tok = model_tok
    opts = AnalysisOptions(layers=(1,), heads=(2,), k=4, n_eigs=3, curvature_alpha=0.25, state_dim=8, show=(1, 2))
    plan = TilingConfig(budget=0.5, tile_size=4, r_min=0.125, exponent=1.0)
    r = analyse(model, tok, TEXT, opts, tiling=plan, progress=False)
    assert r.data["params"] == opts.replace(budget=0.5, tile_size=4, r_min=0.125).to_dict()
    assert r.data["plan_config"] == plan.replace(causal=False, scope="scan").to_dict()
    assert all(t["length"] <= 4 for t in r.data["layers"][0]["tiling"]["tiles"])


def test_a_version_1_report_still_loads_and_reads(report, tmp_path):
    """v1 recorded the resolved layers and heads and the plan in params; readers need neither."""
    out = tmp_path / "v1"
    save_report(report, out, figures=False)
    d = json.loads((out / "report.json").read_text())
    d["schema_version"] = 1
    d["params"] = {"layers": LAYERS, "heads": HEADS, "budget": 0.4, "tile_size": 4, "r_min": 0.0625, "k": 5,
                   "n_eigs": 6, "curvature_alpha": 0.5, "state_dim": 16, "tiling": d.pop("plan_config")}
    (out / "report.json").write_text(json.dumps(d))
    back = Report.load(out)
    assert back.heads == HEADS and back.findings() == report.findings()


def test_truncation_warns_and_records(model_tok):
    model, tok = model_tok
    with pytest.warns(UserWarning, match="truncated to 12 tokens"):
        r = analyse(model, tok, TEXT, layers=[1], heads=[2], k=4, n_eigs=3, tile_size=4, max_length=12, progress=False)
    t = r.data["text"]
    assert t["n_tokens"] == 12 and t["truncated"] and t["n_tokens_dropped"] == t["n_tokens_full"] - 12
    assert t["tokens"][-1] == "[SEP]"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(text=""), ValueError, "empty"),
        (dict(text="  \n\t "), ValueError, "whitespace"),
        (dict(text=3), TypeError, "str"),
        (dict(layers=[6]), ValueError, "unknown layer index 6"),
        (dict(layers=[-1]), ValueError, "unknown layer index -1"),
        (dict(heads=[12]), ValueError, "unknown head index 12"),
        (dict(heads=[]), ValueError, "empty"),
        (dict(budget=0.0), ValueError, "budget"),
        (dict(budget=1.5), ValueError, "budget"),
        (dict(budget=float("nan")), ValueError, "budget"),
        (dict(tile_size=0), ValueError, "tile_size"),
        (dict(budget=0.05), ValueError, "r_min"),
        (dict(show=(9, 0)), ValueError, "layer"),
    ],
)
def test_bad_input(model_tok, kwargs, exc, match):
    model, tok = model_tok
    text = kwargs.pop("text", TEXT)
    with pytest.raises(exc, match=match):
        analyse(model, tok, text, progress=False, **kwargs)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            load_model(None, device="cuda")


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=40))
def test_token_density_is_mean_of_adjacent_transitions(rho):
    r = torch.tensor(rho, dtype=torch.float64)
    tok = _token_density(r).numpy()
    assert len(tok) == len(rho) + 1
    # every transition is counted once from each end, so the weighted total is preserved
    weights = np.array([1.0] + [2.0] * (len(rho) - 1) + [1.0])
    assert np.sum(tok * weights) == pytest.approx(2 * sum(rho), rel=1e-12, abs=1e-12)
    assert tok.min() >= min(rho) - 1e-9 and tok.max() <= max(rho) + 1e-9


def test_training_mode_model_is_analysed_in_eval_mode_and_restored(model_tok, report):
    model, tok = model_tok
    model.train()
    try:
        r = analyse(model, tok, TEXT, layers=[0], heads=[0], k=5, n_eigs=6, tile_size=4, budget=0.4, progress=False)
        assert model.training  # restored
    finally:
        model.eval()
    # dropout off: the numbers equal the eval-mode run
    np.testing.assert_array_equal(r.arrays["attention_L0_H0"], report.arrays["attention_L0_H0"])
