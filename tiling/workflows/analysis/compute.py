"""The attention geometry of a pretrained transformer, end to end (``infogeo analyse``).

:func:`analyse` runs one text through a model and measures, per layer and head, the
Fisher–Rao geometry of the attention rows (seed 000 §3.1.1: each query's attention row is a
point of the categorical family, whose Fisher metric diag(1/p) makes √p·2 an isometric
embedding into the sphere of radius 2), the pulled-back Fisher metric of the hidden states
through the next layer's attention, the information density along the tokens (seed 000
§3.1.1, seed 001 §3.4 step 1), and the tiling plan that ``tiling.policy.plan_tiles`` (the
planning of :class:`~tiling.modules.TiledMamba`) makes of that density (seed 001 §3.2.2, seed 000
§3.2). The result is a :class:`Report` (:mod:`.report`) that writes ``report.json`` (schema in
``docs/analysis.md``), ``arrays.npz``, figures, ``report.md`` and ``report.html`` (:mod:`.render`).

Design choices (documented in ``docs/analysis.md``):

* Geometry runs in float64 on the CPU whatever the model's device: graphs, shortest paths and
  optimal transport are scipy/POT code, and float64 keeps the arcsin form of the Fisher–Rao
  distance accurate for nearly equal rows.
* Ollivier–Ricci curvature (an optimal-transport problem per edge) is computed per layer on the
  head-averaged attention rows P̄ = (1/H) Σ_h P_h, themselves categorical distributions (the
  mixture over heads); per head we report density, graph geodesics and the Laplace–Beltrami
  spectrum. This keeps a 128-token text within the 30 s budget on two cores.
* Texts longer than the model's maximum length are truncated with a warning (recorded in the
  report); windows would splice attention maps of different contexts into one geometry.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
import torch

from infogeo import __version__
from infogeo.checks import check_finite, check_int
from infogeo.curvature import node_curvature, ollivier_ricci
from infogeo.density import categorical_sequence_density
from infogeo.geodesic import geodesic_distances
from infogeo.graph import TokenGraph
from infogeo.laplacian import laplacian_spectrum
from infogeo.predictive import predictive_section
from tiling.config import TilingConfig
from tiling.ops import scan_cost
from tiling.policy import plan_tiles, tile_mean

from ..mamba import ImplicitAttentionModel, implicit_attention_info
from ..models import attention_projections
from ..plans import compare_plans
from .options import AnalysisOptions
from .pullback import _pullback
from .report import SCHEMA, SCHEMA_VERSION, Report, _token_density

__all__ = ["analyse"]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty or whitespace only; expected a non-empty string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. undecodable bytes of a command line
        raise ValueError(f"text is not valid Unicode: {text[e.start]!r} at character {e.start} (a lone surrogate, "
                         "e.g. a non-UTF-8 byte decoded with surrogateescape); expected UTF-8 text") from None
    return text


def _check_indices(values: Sequence[int] | None, name: str, size: int, what: str) -> list[int]:
    if values is None:
        return list(range(size))
    if isinstance(values, (int, str)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    out: list[int] = []
    for v in values:
        try:
            i = check_int(v, name, minimum=0, maximum=size - 1)
        except ValueError:
            raise ValueError(f"unknown {what} index {v} in {name}; the model has {what}s 0..{size - 1}") from None
        if i not in out:
            out.append(i)
    if not out:
        raise ValueError(f"{name} is empty; expected at least one {what} index in 0..{size - 1}")
    return out


def _finite_list(x: torch.Tensor | np.ndarray, name: str) -> list:
    t = torch.as_tensor(x)
    check_finite(t, name)
    return t.tolist()


# --------------------------------------------------------------------------------------------
# the pieces of the computation
# --------------------------------------------------------------------------------------------
def _max_length(model, tokenizer) -> int:
    limits = [int(getattr(model.config, "max_position_embeddings", 0) or 0)]
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        limits.append(tml)
    limits = [m for m in limits if m > 0]
    return min(limits) if limits else 512


def _tokenize(model, tokenizer, text: str, max_length: int | None):
    limit = _max_length(model, tokenizer) if max_length is None else max_length
    full = tokenizer(text, return_tensors="pt", truncation=False, verbose=False)  # we warn ourselves
    n_full = int(full["input_ids"].shape[1])
    if n_full <= limit:
        return full, n_full, 0
    warnings.warn(f"text has {n_full} tokens, more than the model's maximum {limit}; truncated to {limit} tokens")
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=limit)
    return enc, n_full, n_full - int(enc["input_ids"].shape[1])


def _warn_unknown(tokenizer, ids: list[int]) -> None:
    """Warn when most of the text became the tokenizer's unknown token: the geometry then describes
    that one token's embedding, not the text."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = set(getattr(tokenizer, "all_special_ids", None) or []) - {unk}
    content = [i for i in ids if i not in special]
    n_unk = sum(i == unk for i in content) if unk is not None else 0
    if content and 2 * n_unk >= len(content):
        warnings.warn(f"{n_unk} of the text's {len(content)} tokens are the unknown token "
                      f"{getattr(tokenizer, 'unk_token', '[UNK]')!s}: the tokenizer knows few of its characters, "
                      "and the analysis describes that one token rather than the text")


def _forward(model, enc, projections):
    """Run the model; return attentions (L, H, n, n), hidden states (L+1, n, d), per-layer
    attention inputs x (the query projection's input), all float64 on the CPU, and the logits
    (n, V) of a causal LM (None for an encoder)."""
    captured: list[torch.Tensor | None] = [None] * (len(projections) if projections else 0)
    handles = []
    if projections:
        for i, proj in enumerate(projections):
            def hook(_mod, args, _out, i=i):
                captured[i] = args[0].detach()

            handles.append((proj.source or proj.query).register_forward_hook(hook))
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()  # attention dropout would make the rows random and not sum to one
    try:
        with torch.no_grad():
            out = model(**{k: v.to(dev) for k, v in enc.items()}, output_attentions=True, output_hidden_states=True)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if getattr(out, "attentions", None) is None or any(a is None for a in out.attentions):
        raise ValueError("the model returned no attention maps; load it with attn_implementation='eager'")
    attn = _open_simplex(torch.stack([a[0] for a in out.attentions]).to("cpu", torch.float64))
    hidden = torch.stack([h[0] for h in out.hidden_states]).to("cpu", torch.float64)
    xs = [c[0].to("cpu", torch.float64) for c in captured] if projections else None
    logits = getattr(out, "logits", None)
    return attn, hidden, xs, None if logits is None else logits[0].to("cpu", torch.float64)


def _ops(cost: dict) -> int:
    """Exponentials plus multiply-adds of a ``scan_cost`` count."""
    return cost["exp_total"] + cost["madd_total"]


def _open_simplex(P: torch.Tensor) -> torch.Tensor:
    """Attention rows moved into the open simplex: entries that underflowed to 0 in the model's
    float32 softmax are raised to the smallest normal float64 and the row renormalised. The
    Fisher metric diag(1/p) needs p > 0 (seed 000 §3.1.1); the change is below 1e-300 per entry,
    far under float32 resolution, so no distance moves."""
    P = P.clamp_min(torch.finfo(torch.float64).tiny)
    return P / P.sum(-1, keepdim=True)


def _graph_geometry(P: torch.Tensor, k: int, n_eigs: int, *, curvature_alpha: float | None, timings: dict,
                    where: str) -> dict:
    """:func:`_token_geometry`, its ``ValueError`` prefixed with ``where`` (the layer and head: a
    degenerate head, e.g. one whose rows all coincide, is named rather than left to a traceback)."""
    try:
        return _token_geometry(P, k, n_eigs, curvature_alpha=curvature_alpha, timings=timings)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _token_geometry(P: torch.Tensor, k: int, n_eigs: int, *, curvature_alpha: float | None, timings: dict) -> dict:
    """Token graph of attention rows P (n, n) under the Fisher–Rao distance, its geodesic
    distance matrix, low Laplace–Beltrami spectrum and (optionally) Ollivier–Ricci curvature."""
    t0 = time.perf_counter()
    graph = TokenGraph.from_points(P, k=min(k, P.shape[0] - 1), kind="fisher_rao")
    t1 = time.perf_counter()
    D = np.asarray(geodesic_distances(graph), dtype=np.float64)
    t2 = time.perf_counter()
    with warnings.catch_warnings():
        # scipy's note that a tiny problem is solved densely is not news to the user
        warnings.filterwarnings("ignore", message="The problem size")
        # one sparse LU per graph: far cheaper than LOBPCG at a few hundred nodes
        spec = laplacian_spectrum(graph, n_eigs=min(n_eigs, P.shape[0] - 1), method="shift_invert")
    spec = spec[0] if isinstance(spec, tuple) else spec
    spec = np.sort(np.asarray(torch.as_tensor(spec).detach().cpu(), dtype=np.float64))
    t3 = time.perf_counter()
    timings["graph"] = timings.get("graph", 0.0) + (t1 - t0)
    timings["geodesic"] = timings.get("geodesic", 0.0) + (t2 - t1)
    timings["spectrum"] = timings.get("spectrum", 0.0) + (t3 - t2)
    out = {"graph": graph, "geodesic": D, "spectrum": spec}
    if curvature_alpha is not None:
        edge_curv = np.asarray(ollivier_ricci(graph, alpha=curvature_alpha), dtype=np.float64)
        out["node_curvature"] = np.asarray(node_curvature(edge_curv, graph), dtype=np.float64)
        out["edges"], out["edge_curvature"] = graph.edges(), edge_curv
        timings["curvature"] = timings.get("curvature", 0.0) + (time.perf_counter() - t3)
    return out


def _tiling_plan(token_density: torch.Tensor, token_curvature: torch.Tensor, config: TilingConfig, *,
                 state_dim: int, dim: int) -> dict:
    """The tile plan of one text and its scan cost against full resolution.

    Parameters
    ----------
    token_density : (n,) float64 per-token density ρ_t.
    token_curvature : (n,) float64 per-token (Ollivier–Ricci node) curvature κ_t.
    config : the tiling options (:func:`_tiling_config`: non-causal, scan scope).
    state_dim, dim : ``N`` and the width of the Mamba scan whose cost is counted.

    Returns
    -------
    dict of the plan of ``tiling.policy.plan_tiles``, the function :class:`~tiling.modules.TiledMamba`
    plans with (tile means ρ_i, seed 001 §3.4 step 1; ``R_i = f(ρ_i, d_i, c)`` weighted by
    ``exp(−η κ_i)``, seed 001 §3.2.2; ``m_i = max(1, ⌈R_i n_i⌉)`` segments, seed 001 §3.5.1) and
    its counts by ``tiling.ops.scan_cost`` (seed 000 §3.5.1).
    """
    n = token_density.shape[-1]
    plan = plan_tiles(token_density[None], config, curvature=token_curvature[None])
    # the κ_i the policy weighed: plan_tiles takes the signed tile mean of the token curvature
    tc = tile_mean(token_curvature[None], config.tile_size)[0]
    R = plan.resolution[0]
    cost = scan_cost(n, config.tile_size, R, None if plan.state_dims is None else plan.state_dims[0], state_dim, dim)
    full = scan_cost(n, config.tile_size, 1.0, None, state_dim, dim)
    tiles = [{
        "start": int(plan.start[i]), "length": int(plan.length[i]), "resolution": float(R[i]),
        "segments": int(plan.segments[0, i]), "density": float(plan.density[0, i]), "curvature": float(tc[i]),
    } for i in range(plan.n_tiles)]
    return {
        "tile_density": plan.density[0], "tile_curvature": tc, "resolution": R, "tiles": tiles,
        "mean_resolution": float(plan.mean_resolution()[0]),
        "cost": {k: int(v) for k, v in cost.items()},
        "cost_full": {k: int(v) for k, v in full.items()},
        # all operations of the scan (exponentials + multiply-adds, one unit each; coarse tiles
        # save recurrence steps but pay for segment means of B), and the recurrence part alone
        # (∝ Σ_i m_i S_i, the sequential part Theorem 3.4 of seed 000 is about)
        "cost_saved": 1.0 - _ops(cost) / _ops(full),
        "cost_saved_recurrence": 1.0 - (cost["exp_recurrence"] + cost["madd_recurrence"])
        / (full["exp_recurrence"] + full["madd_recurrence"]),
    }


# --------------------------------------------------------------------------------------------
# the steps of analyse
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Setup:
    """The checked inputs of one analysis: the options, the resolved layers and heads, the plan's config."""

    options: AnalysisOptions
    layers: list[int]
    heads: list[int]
    plan_config: TilingConfig
    max_length: int | None


@dataclass(frozen=True)
class _Reading:
    """One forward of the text: its tokens, attention maps, hidden states, attention inputs, predictive section."""

    enc: dict
    ids: list[int]
    tokens: list[str]
    n_full: int
    n_dropped: int
    attn: torch.Tensor
    hidden: torch.Tensor
    xs: list | None
    projections: list | None
    predictive: dict | None
    row_err: float


def _options_of(options: AnalysisOptions | None, tiling: TilingConfig | None, keywords: dict) -> AnalysisOptions:
    """The options of a call: ``options``, or the keyword form (``analyse(..., budget=0.5)``), not both."""
    if options is not None and keywords:
        raise TypeError(f"pass the analysis options as options= or as keywords, not both (got options and "
                        f"{sorted(keywords)})")
    if options is None:
        options = AnalysisOptions(**keywords)
    elif not isinstance(options, AnalysisOptions):
        raise TypeError(f"options must be an AnalysisOptions or None, got {type(options).__name__}")
    plan_keys = {"budget", "tile_size", "r_min"}
    given = sorted(plan_keys & set(keywords)) or sorted(
        k for k in plan_keys if getattr(options, k) != getattr(AnalysisOptions, k))
    if tiling is not None and given:
        raise TypeError(f"pass the tiling options in tiling= or as keywords, not both (got tiling and {given})")
    return options


def _tiling_config(tiling: TilingConfig | None, options: AnalysisOptions) -> TilingConfig:
    """The configuration the analysis plans with: ``tiling`` or :meth:`AnalysisOptions.plan_config`, made
    non-causal in the scan scope (the reasons: :meth:`AnalysisOptions.plan_config`); a state-dimension
    policy without ``s_max`` gets ``s_max = options.state_dim``, as the layer sets it to its ``d_state``."""
    if tiling is None:
        return options.plan_config()
    if not isinstance(tiling, TilingConfig):
        raise TypeError(f"tiling must be a tiling.config.TilingConfig or None, got {type(tiling).__name__}")
    if tiling.boundaries != "tile":
        raise ValueError(f"tiling.boundaries={tiling.boundaries!r} has no density plan (the token router reads the "
                         "hidden states); expected 'tile'")
    changes: dict = {"causal": False, "scope": "scan"}
    if tiling.state_k is not None and tiling.s_max is None:
        changes["s_max"] = options.state_dim
    config = tiling.replace(**changes)
    if config.s_max is not None and config.s_max > options.state_dim:
        raise ValueError(f"tiling.s_max must be <= state_dim (the counted scan's N), got {config.s_max} > "
                         f"{options.state_dim}")
    return config


def _setup(model, options: AnalysisOptions, tiling: TilingConfig | None) -> _Setup:
    """Check the options against the model (indices, ``show``, ``max_length``) and fix the plan's config;
    with ``tiling``, the options take its ``budget``, ``tile_size`` and ``r_min`` (the report's ``params``
    are the options the numbers were computed with)."""
    cfg = model.config
    n_layers, n_heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    layers = _check_indices(options.layers, "layers", n_layers, "layer")
    heads = _check_indices(options.heads, "heads", n_heads, "head")
    plan_config = _tiling_config(tiling, options)
    if tiling is not None:
        options = options.replace(budget=plan_config.budget, tile_size=plan_config.tile_size,
                                  r_min=plan_config.r_min)
    if options.show is not None:
        _check_indices([options.show[0]], "show layer", n_layers, "layer")
        _check_indices([options.show[1]], "show head", n_heads, "head")
    max_length = options.max_length
    if max_length is not None:
        positions = int(getattr(cfg, "max_position_embeddings", 0) or 0)  # learned positions: a hard limit
        max_length = check_int(max_length, "max_length", minimum=3, maximum=positions or None)
    return _Setup(options, layers, heads, plan_config, max_length)


def _read(model, tokenizer, text: str, max_length: int | None, timings: dict) -> _Reading:
    """Tokenise the text and run the model once (attention maps, hidden states, the predictive section)."""
    t0 = time.perf_counter()
    enc, n_full, n_dropped = _tokenize(model, tokenizer, text, max_length)
    ids = enc["input_ids"][0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if len(tokens) < 3:
        raise ValueError(f"text has {len(tokens)} tokens after tokenisation; expected at least 3")
    _warn_unknown(tokenizer, ids)
    projections = attention_projections(model)
    timings["tokenize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    attn, hidden, xs, logits = _forward(model, enc, projections)
    timings["forward"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictive = None if logits is None else predictive_section(logits, ids)  # causal LMs (docs/analysis.md)
    timings["predictive"] = time.perf_counter() - t0
    check_finite(attn, "attention maps")
    check_finite(hidden, "hidden states")
    if projections is not None and not projections[0].causal and float(attn.triu(1).max()) < 1e-12:
        # causal maps, whatever the config says: each query has its own key set
        warnings.warn("pulled-back metric skipped: the attention maps are causal (decoder); "
                      "the closed form assumes bidirectional attention")
        projections = None
    row_err = float((attn.sum(-1) - 1).abs().max())
    return _Reading(enc, ids, tokens, n_full, n_dropped, attn, hidden, xs, projections, predictive, row_err)


def _head_reports(P_all: torch.Tensor, li: int, setup: _Setup, timings: dict, arrays: dict, bar) -> list[dict]:
    """Per head of layer ``li``: the attention density, the token graph's geodesics and spectrum."""
    opts, n = setup.options, P_all.shape[-1]
    t0 = time.perf_counter()
    rho_att = categorical_sequence_density(P_all[setup.heads])  # (h, n−1)
    timings["attention_density"] = timings.get("attention_density", 0.0) + time.perf_counter() - t0
    check_finite(rho_att, f"attention density of layer {li}")
    out = []
    for j, hi in enumerate(setup.heads):
        bar.set_postfix_str(f"layer {li} head {hi}")
        geo = _graph_geometry(P_all[hi], opts.k, opts.n_eigs, curvature_alpha=None, timings=timings,
                              where=f"layer {li} head {hi}")
        check_finite(torch.from_numpy(geo["geodesic"]), f"geodesic distances of layer {li} head {hi}")
        arrays[f"geodesic_L{li}_H{hi}"] = geo["geodesic"].astype(np.float32)
        arrays[f"attention_L{li}_H{hi}"] = P_all[hi].numpy().astype(np.float32)
        D = geo["geodesic"]
        out.append({
            "head": hi,
            "density": _finite_list(rho_att[j], "density"),
            "density_mean": float(rho_att[j].mean()),
            "geodesic_mean": float(D[np.triu_indices(n, 1)].mean()),
            "geodesic_max": float(D.max()),
            "spectrum": _finite_list(geo["spectrum"], "spectrum"),
            "n_components": int(np.sum(geo["spectrum"] < 1e-8)),
        })
        bar.update(1)
    return out


def _pullback_section(reading: _Reading, li: int, P_all: torch.Tensor, timings: dict) -> dict | None:
    """The pulled-back Fisher metric of layer ``li``'s attention input (None where it does not apply)."""
    if reading.projections is None:
        return None
    t0 = time.perf_counter()
    pb = _pullback(reading.xs[li], reading.projections[li], P_all)
    timings["pullback"] = timings.get("pullback", 0.0) + time.perf_counter() - t0
    if "density" not in pb:
        warnings.warn(f"pulled-back metric of layer {li} skipped: softmax(s·qKᵀ) of its query/key modules "
                      f"differs from the model's attention map by {pb['attention_reproduction_error']:.2g}")
        return None
    return {
        "state": f"input of layer {li}'s attention (hidden_states[{li}])",
        "trace": _finite_list(pb["trace"], "metric trace"),
        "effective_dimension": _finite_list(pb["effective_dimension"], "effective dimension"),
        "density": _finite_list(pb["density"], "pulled-back density"),
        "density_mean": float(pb["density"].mean()),
        "attention_reproduction_error": pb["attention_reproduction_error"],
    }


def _tiling_section(P_all: torch.Tensor, pull: dict | None, geo: dict, setup: _Setup, dim: int,
                    timings: dict) -> dict:
    """The tiling plan of one layer from the density the policy sees: the pulled-back hidden-state density
    where it exists (seed 000 §3.1.1 ρ = ‖∇s‖²_g), else the mean over heads of the attention density."""
    t0 = time.perf_counter()
    if pull is not None:
        rho, source = torch.tensor(pull["density"], dtype=torch.float64), "pullback"
    else:
        rho, source = categorical_sequence_density(P_all).mean(0), "attention"
    token_rho = _token_density(rho)
    plan = _tiling_plan(token_rho, torch.from_numpy(geo["node_curvature"]), setup.plan_config,
                        state_dim=setup.options.state_dim, dim=dim)
    timings["tiling"] = timings.get("tiling", 0.0) + time.perf_counter() - t0
    return {
        "density_source": source,
        "token_density": _finite_list(token_rho, "token density"),
        "tile_density": _finite_list(plan["tile_density"], "tile density"),
        "tile_curvature": _finite_list(plan["tile_curvature"], "tile curvature"),
        "resolution": _finite_list(plan["resolution"], "resolution"),
        "tiles": plan["tiles"],
        "mean_resolution": plan["mean_resolution"],
        "cost": plan["cost"],
        "cost_full": plan["cost_full"],
        "cost_saved": plan["cost_saved"],
        "cost_saved_recurrence": plan["cost_saved_recurrence"],
    }


def _layer_report(li: int, reading: _Reading, setup: _Setup, dim: int, timings: dict, arrays: dict, bar) -> dict:
    """Everything of layer ``li``: its heads, the head-mean graph with curvature, the pull-back, the plan."""
    P_all = reading.attn[li]  # (H, n, n)
    n = P_all.shape[-1]
    heads = _head_reports(P_all, li, setup, timings, arrays, bar)
    bar.set_postfix_str(f"layer {li} curvature")
    P_mean = P_all.mean(0)
    geo = _graph_geometry(P_mean, setup.options.k, setup.options.n_eigs,
                          curvature_alpha=setup.options.curvature_alpha, timings=timings,
                          where=f"layer {li} (mean over heads)")
    bar.update(1)
    bar.set_postfix_str(f"layer {li} pull-back")
    pull = _pullback_section(reading, li, P_all, timings)
    bar.update(1)
    tiling = _tiling_section(P_all, pull, geo, setup, dim, timings)
    Dm = geo["geodesic"]
    return {
        "layer": li,
        "attention": {"row_sum_max_error": float((P_all.sum(-1) - 1).abs().max()), "heads": heads},
        "head_mean": {
            "density": _finite_list(categorical_sequence_density(P_mean), "density"),
            "geodesic": _finite_list(Dm, "geodesic distances"),
            "geodesic_mean": float(Dm[np.triu_indices(n, 1)].mean()),
            "spectrum": _finite_list(geo["spectrum"], "spectrum"),
            "edges": geo["edges"].tolist(),
            "edge_curvature": _finite_list(geo["edge_curvature"], "edge curvature"),
            "node_curvature": _finite_list(geo["node_curvature"], "node curvature"),
            "curvature_mean": float(np.mean(geo["edge_curvature"])),
        },
        "pullback": pull,
        "tiling": tiling,
    }


def _layer_plans(model, reading: _Reading, plan_config: TilingConfig, timings: dict) -> dict | None:
    """A ``TiledLM``: the plan its layers chose against the plans of the geometry at the report's budget
    (:mod:`tiling.workflows.plans`); None for other models."""
    if not (isinstance(model, ImplicitAttentionModel) and model.kind == "tiled-lm" and model.inner.tiled_layers):
        return None
    t0 = time.perf_counter()
    implicit = {li: categorical_sequence_density(reading.attn[li]).mean(0) for li in model.inner.tiled_layers}
    out = compare_plans(model.inner, reading.enc["input_ids"], budget=plan_config.budget, implicit=implicit,
                        predictive=torch.tensor(reading.predictive["density"], dtype=torch.float64))
    timings["layer_plans"] = time.perf_counter() - t0
    return out


def _shown(setup: _Setup, layer_reports: list[dict]) -> tuple[int, int]:
    """The (layer, head) of the geodesic figure: ``show``, or the analysed head of largest mean density."""
    show = setup.options.show
    if show is None:
        best = max(((lr["layer"], hr["head"], hr["density_mean"]) for lr in layer_reports
                    for hr in lr["attention"]["heads"]), key=lambda t: t[2])
        return best[0], best[1]
    if show[0] not in setup.layers or show[1] not in setup.heads:
        raise ValueError(f"show={tuple(show)} is not among the analysed layers {setup.layers} and heads {setup.heads}")
    return show


def _report_data(model, tokenizer, text: str, setup: _Setup, reading: _Reading, layer_reports: list[dict],
                 layer_plans: dict | None, show: tuple[int, int], timings: dict, *, name: str,
                 model_path: str | None) -> dict:
    """The report's document (schema :data:`~tiling.workflows.analysis.report.SCHEMA`)."""
    cfg, opts, plan = model.config, setup.options, setup.plan_config
    n_heads = int(cfg.num_attention_heads)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "infogeo_version": __version__,
        "model": {
            "path": model_path,
            "type": str(getattr(cfg, "model_type", type(model).__name__)),
            "n_layers": int(cfg.num_hidden_layers), "n_heads": n_heads, "hidden_size": int(cfg.hidden_size),
            "head_dim": int(cfg.hidden_size) // n_heads, "max_length": _max_length(model, tokenizer),
            "device": str(next(model.parameters()).device),
            **implicit_attention_info(model),
        },
        "text": {
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "n_chars": len(text), "n_tokens": len(reading.tokens), "tokens": reading.tokens,
            "truncated": reading.n_dropped > 0, "n_tokens_dropped": reading.n_dropped,
            "n_tokens_full": reading.n_full,
        },
        # the options the numbers depend on, as given (the analysed layers and heads: "layers" below); the
        # same dict as the --batch fingerprint (tiling.workflows.batch.settings_of)
        "params": opts.to_dict(),
        "plan_config": plan.to_dict(),  # every option of the plan (policy, exponent, ...; tiling= may set them)
        "checks": {"attention_row_sum_max_error": reading.row_err},
        "predictive": reading.predictive,
        "layer_plans": layer_plans,
        "layers": layer_reports,
        "show": {"layer": int(show[0]), "head": int(show[1])},
        "timings": timings,
    }


# --------------------------------------------------------------------------------------------
# the public entry point
# --------------------------------------------------------------------------------------------
def analyse(model, tokenizer, text: str, options: AnalysisOptions | None = None, *,
            tiling: TilingConfig | None = None, name: str = "text", model_path: str | None = None,
            progress: bool = True, **keywords) -> Report:
    """Analyse the attention geometry of ``model`` on ``text``; return a :class:`Report`.

    Parameters
    ----------
    model, tokenizer : an HF model loaded with eager attention (or a Mamba/``TiledLM`` wrapper,
        :mod:`tiling.workflows.mamba`) and its tokenizer.
    text : the text (non-empty, valid Unicode); truncated with a warning to the model's length.
    options : the :class:`~tiling.workflows.analysis.options.AnalysisOptions` (layers, heads, budget,
        tile_size, r_min, k, n_eigs, curvature_alpha, state_dim, max_length, show); None: built from
        ``keywords`` (``analyse(model, tok, text, budget=0.5, k=5)``; not both).
    tiling : the tiling options of the plan (``tiling.config.TilingConfig``) instead of the options'
        ``budget``, ``tile_size`` and ``r_min`` (a ``TypeError`` when those are set too); the analysis
        plans non-causally in the scan scope whatever ``tiling.causal`` and ``tiling.scope`` say (it
        reads the whole text and counts ``scan_cost``), and sets ``s_max = state_dim`` for a
        state-dimension policy without one.
    name, model_path : recorded in the report.
    progress : show a progress bar.
    **keywords : the fields of :class:`AnalysisOptions`, when ``options`` is None.

    Returns
    -------
    :class:`Report` (schema :data:`~tiling.workflows.analysis.report.SCHEMA`), built by the steps
    :func:`_setup`, :func:`_read`, :func:`_layer_report` per layer, :func:`_layer_plans`,
    :func:`_shown` and :func:`_report_data`.

    Raises
    ------
    TypeError
        ``text`` is not a str, an option has the wrong type, ``tiling`` is not a ``TilingConfig`` or
        given together with the plan's options, ``options`` together with keywords.
    ValueError
        ``text`` is empty, whitespace only or not valid Unicode, or has fewer than 3 tokens; an
        index in ``layers``, ``heads`` or ``show`` does not exist (or ``layers``/``heads`` is
        empty), ``show`` is not among the analysed ones; an option is out of its range (the
        message names it); ``tiling.boundaries`` is not ``"tile"`` or ``tiling.s_max > state_dim``;
        the model returns no attention maps (not loaded with eager attention) or non-finite values.

    Warns
    -----
    UserWarning
        The text is truncated to the model's length or holds tokens the tokenizer does not know;
        the pulled-back metric is skipped (causal attention maps, or query/key modules that do not
        reproduce the model's attention).

    Notes
    -----
    Per layer ℓ and head h: attention rows P (n × n, rows sum to one); their density
    ρ_t = d_FR(P_t, P_{t+1})² (squared Fisher–Rao speed, seed 000 §3.1.1); the kNN token graph
    with Fisher–Rao edge lengths, its geodesic distances (seed 000 §3.1.2) and low
    Laplace–Beltrami spectrum (seed 000 §3.2.2). Per layer: Ollivier–Ricci curvature of the
    head-averaged graph; the pulled-back Fisher metric G of the layer's attention input
    (trace, effective dimension, density ρ_t = ‖x_{t+1} − x_t‖²_{G(x_t)}); the tiling plan.
    """
    text = _check_text(text)
    setup = _setup(model, _options_of(options, tiling, keywords), tiling)
    timings: dict[str, float] = {}
    reading = _read(model, tokenizer, text, setup.max_length, timings)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(setup.layers) * (len(setup.heads) + 2), desc="infogeo analyse", unit="step",
               disable=not progress, leave=False)
    arrays: dict[str, np.ndarray] = {}
    dim = int(model.config.hidden_size)
    layer_reports = [_layer_report(li, reading, setup, dim, timings, arrays, bar) for li in setup.layers]
    bar.close()
    layer_plans = _layer_plans(model, reading, setup.plan_config, timings)
    show = _shown(setup, layer_reports)
    data = _report_data(model, tokenizer, text, setup, reading, layer_reports, layer_plans, show, timings,
                        name=name, model_path=model_path)
    return Report(data=data, arrays=arrays)
