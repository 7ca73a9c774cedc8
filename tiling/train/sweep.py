"""The hourglass sweep: bits per byte against FLOPs per byte and against training time, plain Mamba
against the byte-level hourglass with each boundary signal (issue "tiling VII"; ``docs/training.md``,
"The hourglass").

Rows (each trains ``max_minutes`` of CPU time on one thread; ``--shard i/n`` runs rows ``i, i+n, ...``
so two processes share the 2-core machine; the order puts the headline rows first):

* plain Mamba (``TiledLM`` at budget 1, every layer full resolution) at ``d_model`` 256, 128 and 176
  (about 1×, 0.3× and 0.5× the FLOPs per byte of the first), and eight layers of 180 (``xN`` rows, the first's
  FLOPs per byte);
* the hourglass at budgets 0.25 and 0.35, FLOP-matched (±5 %) to plain Mamba d256 by choosing
  ``d_main`` (:func:`~tiling.modules.hourglass.match_main_width`), for the signals entropy, uniform,
  space, Fisher–Rao, router and linear;
* the same with wider outer stages (:data:`WIDE`, rows ``-wide``) for entropy, uniform and surprisal
  with the EMA (at 0.25, 0.35, 0.5 and 0.7), and variants of the last changing one boundary field each;
* the best of those (surprisal, EMA, the identity skip, lr 3e-3 at 0.35) and its uniform twin with a main
  network of eight layers (:data:`DEEP`, rows ``-deep``, a narrower FLOP-matched ``d_main``), and H-Net's learned
  router on those stages at 0.25, 0.35 and 0.5, and elastic;
* the elastic hourglass (entropy, budgets drawn from [0.25, 1] during training, uniformly and skewed
  towards the cheap end, ``budget_skew`` 3 and 6; and surprisal with the EMA on the wide stages, γ = 6
  and 12, and γ = 6 with budget conditioning), each evaluated at 1, 0.5, 0.35 and 0.25 (one checkpoint);
* second seeds of the headline rows.

The table goes to ``docs/results/hourglass_lm.json`` with the goals checked on the rows present, the
figures to ``docs/figures/hourglass/``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from tiling.config import hourglass_config
from tiling.modules.hourglass import HourglassLM, match_main_width
from tiling.train.storage import atomic_write_json, differing_settings, fingerprint
from tiling.train.corpus import load_split
from tiling.train.text import as_byte_tensor, forward_madds, read_text_file
from tiling.train.textmodel import build_model, bundled_checkpoints, export_bundled, load_text_model, model_config
from tiling.train.sweep_figures import boundary_strip, figures
from tiling.train.trainer import RunError, TrainOptions, evaluation, set_threads, train_run

#: the reference plain Mamba (today's full model): 4 layers, d_model 256, expand 1, d_state 16
REFERENCE = {"d_model": 256, "n_layers": 4}
#: the hourglass' stages: two encoder and two decoder layers of width 128, four main layers (FLOP-matched width)
OUTER = {"d_outer": 128, "encoder_layers": 2, "main_layers": 4, "decoder_layers": 2}
#: the first rows' thinner outer stages (one layer each side): kept in the table as "-thin" rows
THIN = {"d_outer": 128, "encoder_layers": 1, "main_layers": 4, "decoder_layers": 1}
#: wider outer stages ("-wide" rows): 176 is the width of the best plain row at this budget (mamba-d176 beat
#: d256 in 15 CPU-minutes), so the byte-level stages are the best byte network the time affords and the main
#: network spends the rest of d256's FLOPs (d_main 336 at budget 0.25): the first rows showed the main network
#: worth 0.3 bpb (zeroing its output) on outer stages no better per byte than plain d128
WIDE = {"d_outer": 176, "encoder_layers": 2, "main_layers": 4, "decoder_layers": 2}
#: the wide stages with a main network twice as deep ("-deep" rows), its width FLOP-matched again (≈ 1/√2 of
#: the wide rows'): is depth or width the better use of the main network's FLOPs at this scale
DEEP = {**WIDE, "main_layers": 8}
#: more of the FLOPs at full resolution ("-byte3": three byte layers each side at 176; "-byte4": four at 144),
#: the main network of eight layers FLOP-matched in what is left: plain 8 × 180 beat every hourglass at equal
#: bytes, so does a deeper full-resolution byte network with a shortened main network between reach it at
#: budget ≤ 0.35 (the Hourglass transformer found the full-resolution layers critical)
BYTE3 = {**DEEP, "encoder_layers": 3, "decoder_layers": 3}
BYTE4 = {**DEEP, "d_outer": 144, "encoder_layers": 4, "decoder_layers": 4}
#: BYTE3 with six main layers ("-byte3m6"): FLOP-matched at 0.35 (d_main 176), where eight fit 0.25 only
BYTE3M6 = {**BYTE3, "main_layers": 6}
#: plain widths below d128 (goal (e)'s equal-bpb partners of the hourglass rows)
SMALL_WIDTHS = (112, 96)
STAGES = {"": OUTER, "thin": THIN, "wide": WIDE, "deep": DEEP, "byte3": BYTE3, "byte4": BYTE4,
          "byte3m6": BYTE3M6}
ELASTIC_RANGE = (0.25, 1.0)
ELASTIC_EVAL = (1.0, 0.5, 0.35)
#: the skewed elastic rows' draws ``0.25 + 0.75·u^γ``: γ = 3 puts half the steps below 0.34 (mean 0.44), γ = 6
#: below 0.26 (mean 0.36); the uniform draw's steps at budgets near 1 cost up to 3× a step at 0.25, so it took
#: 614 steps where the dedicated row took 1,049
ELASTIC_SKEWS = (3.0, 6.0)
#: where in the test split the boundary strip's 96 bytes start
STRIP_OFFSET = 2000


def lr_tag(lr: float | None) -> str:
    """The part of a row's name that says a learning rate other than the sweep's (``--lr``'s default)."""
    return "" if lr is None else f"-lr{lr:g}"


def plain_row(d_model: int, seed: int, *, lr: float | None = None, n_layers: int = REFERENCE["n_layers"]) -> dict:
    """A plain Mamba row; ``lr``: its own AdamW learning rate (named ``-lrX``), None: the sweep's; ``n_layers``:
    other than the reference's 4, named ``xN`` after the width."""
    depth = "" if n_layers == REFERENCE["n_layers"] else f"x{n_layers}"
    return {"name": f"mamba-d{d_model}{depth}{lr_tag(lr)}/s{seed}", "family": "plain", "d_model": d_model,
            "seed": seed, "budget": 1.0, "lr": lr, "n_layers": n_layers}


def hourglass_row(signal: str, budget: float, seed: int, *, elastic: bool = False, dechunk: str | None = None,
                  stages: str = "", skew: float = 1.0, cond: bool = False, stage_lr: bool = False,
                  skip: bool = False, lr: float | None = None, **boundary) -> dict:
    """A hourglass row; ``dechunk`` None: the signal's default (:func:`default_dechunk`), else named in the row;
    ``stages``: a key of :data:`STAGES` ("" the default :data:`OUTER`; else the name's suffix); ``skew``: an
    elastic row's ``budget_skew`` (named ``-skewγ`` when not 1); ``cond``: ``budget_conditioning`` (named
    ``-cond``); ``stage_lr``: H-Net's per-stage learning rate (:class:`~tiling.train.trainer.TrainOptions`'
    ``stage_lr``, named ``-stagelr``); ``skip``: ``residual_init="identity"`` (named ``-skip``); ``lr``: the row's own learning rate (named
    ``-lrX``, :func:`lr_tag`; None: the sweep's); ``boundary``:
    fields of the
    :class:`~tiling.config.BoundaryConfig` other than their defaults, named in the row (:func:`boundary_tag`)."""
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {sorted(STAGES)}, got {stages!r}")
    default = default_dechunk(signal)
    dechunk = dechunk or default
    tag = ((f"hg-elastic-{signal}" if elastic else f"hg-{signal}") + ("" if dechunk == default else f"-{dechunk}")
           + boundary_tag(boundary) + (f"-{stages}" if stages else "") + ("-stagelr" if stage_lr else "")
           + ("-skip" if skip else "") + lr_tag(lr)
           + ("-cond" if cond else "")
           + (f"-skew{skew:g}" if elastic and skew != 1.0 else ""))
    return {"name": f"{tag}@{budget:g}/s{seed}", "family": "hourglass", "signal": signal, "budget": budget,
            "seed": seed, "elastic": elastic, "dechunk": dechunk, "stages": STAGES[stages],
            "skew": skew if elastic else 1.0, "cond": cond, "stage_lr": stage_lr, "skip": skip,
            "lr": lr, "boundary": boundary}


#: how a row's name says a boundary field other than its default: BLT's monotonic rule, the seeds' per-tile
#: form, the auxiliary head's loss weight, the causal controller's slack
_BOUNDARY_TAGS = {"rule": lambda v: f"-{v}", "form": lambda v: f"-{v}", "aux_weight": lambda v: f"-aux{v:g}",
                  "slack": lambda v: f"-slack{v:g}"}
_BOUNDARY_TAG_RE = re.compile(r"-(monotonic|tile|aux[0-9.e-]+|slack[0-9.e-]+)(?=-|$)")


def boundary_tag(boundary: dict) -> str:
    """The part of a row's name that says its ``boundary`` fields (:data:`_BOUNDARY_TAGS`' order)."""
    unknown = set(boundary) - set(_BOUNDARY_TAGS)
    if unknown:
        raise ValueError(f"boundary fields a row can name are {sorted(_BOUNDARY_TAGS)}, got {sorted(unknown)}")
    return "".join(f(boundary[k]) for k, f in _BOUNDARY_TAGS.items() if k in boundary)


def default_dechunk(signal: str) -> str:
    """H-Net's EMA for the learned router (its probabilities are trained towards confident values); the
    hold for the scored signals, whose detached ``p_t = σ((s_t − θ)/τ)`` is ≈ 0.7 at a boundary (median
    over the test split of the first entropy run), so the EMA would blend ≈ 30 % of the previous
    segment's output into every fresh one: measured as its own row (``hg-entropy-ema``)."""
    return "ema" if signal == "router" else "hold"


def rows() -> list[dict]:
    """The sweep's rows, in priority order (pairs run side by side with two shards)."""
    # long: one list of every row the sweep has trained, each with why it is there; their order is the run order
    out = [plain_row(256, 0), hourglass_row("entropy", 0.25, 0, dechunk="ema", stages="thin"),
           hourglass_row("uniform", 0.25, 0, dechunk="ema", stages="thin"), plain_row(128, 0),
           hourglass_row("entropy", 0.25, 0), hourglass_row("uniform", 0.25, 0),
           hourglass_row("entropy", 0.25, 0, elastic=True), hourglass_row("space", 0.25, 0),
           hourglass_row("fisher_rao", 0.25, 0), plain_row(176, 0),
           hourglass_row("router", 0.25, 0), hourglass_row("linear", 0.25, 0),
           hourglass_row("entropy", 0.25, 0, stages="wide"), hourglass_row("uniform", 0.25, 0, stages="wide"),
           hourglass_row("entropy", 0.25, 0, dechunk="ema"), hourglass_row("surprisal", 0.25, 0),
           hourglass_row("entropy", 0.35, 0), hourglass_row("uniform", 0.35, 0),
           plain_row(256, 1), hourglass_row("entropy", 0.25, 1),
           hourglass_row("uniform", 0.25, 1), hourglass_row("space", 0.35, 0),
           *(hourglass_row("entropy", 0.25, 0, elastic=True, skew=g) for g in ELASTIC_SKEWS),
           hourglass_row("surprisal", 0.25, 0, dechunk="ema"), hourglass_row("surprisal", 0.25, 1, dechunk="ema"),
           hourglass_row("surprisal", 0.25, 0, dechunk="ema", stages="wide"),
           hourglass_row("surprisal", 0.25, 1, dechunk="ema", stages="wide"),
           hourglass_row("uniform", 0.25, 1, stages="wide"),
           # plain Mamba narrower than d128, whose 15-minute bpb lands near the hourglass rows' (1.86-2.0): the
           # pairs of equal bpb (within 1 %) that goal (e) compares for speed
           *(plain_row(d, 0) for d in SMALL_WIDTHS),
           # the best signal and stages at 0.35 (goal (a) allows budgets up to 0.35; at the default stages
           # 0.35 was 2.6 % better than 0.25), and its uniform twin (goal (b))
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide"),
           hourglass_row("uniform", 0.35, 0, stages="wide"),
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide"),  # the headline pair's second seeds
           hourglass_row("uniform", 0.35, 1, stages="wide"),
           # goal (b) at 0.35 on the wide stages: BLT's monotonic rule on the surprisal, and the entropy
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", rule="monotonic"),
           hourglass_row("entropy", 0.35, 0, dechunk="ema", stages="wide"),
           # the best signal's boundaries in the seeds' per-tile form (R_i from the tile's mean surprisal), and
           # with its auxiliary head's loss weighted 3× (a better next-byte estimate)
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", form="tile"),
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", aux_weight=0.3),
           # the elastic checkpoint of the best signal and stages (goal (d) against hg-surprisal-ema-wide@0.25,
           # and the bundled hourglass if it is the best elastic one)
           hourglass_row("surprisal", 0.25, 0, elastic=True, dechunk="ema", stages="wide", skew=6.0),
           # the causal controller's slack 4× (boundaries follow the surprisal more, the budget less)
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", slack=128.0),
           # second seeds of the two best single-seed variants (goal (b) on means)
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide", aux_weight=0.3),
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide", rule="monotonic"),
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide", slack=128.0),
           hourglass_row("surprisal", 0.25, 1, elastic=True, dechunk="ema", stages="wide", skew=6.0),
           # the elastic draws skewed further (γ = 12: 84 % of the steps below 0.35, mean 0.31), both seeds, and
           # a dedicated row at 0.5, where the elastic checkpoint had no row trained at its budget alone
           hourglass_row("surprisal", 0.25, 0, elastic=True, dechunk="ema", stages="wide", skew=12.0),
           hourglass_row("surprisal", 0.25, 1, elastic=True, dechunk="ema", stages="wide", skew=12.0),
           hourglass_row("surprisal", 0.5, 0, dechunk="ema", stages="wide"),
           hourglass_row("surprisal", 0.5, 1, dechunk="ema", stages="wide"),
           # where the FLOP-matched hourglass' trend with the budget goes (0.25 → 0.35 → 0.5 improved it)
           hourglass_row("surprisal", 0.7, 0, dechunk="ema", stages="wide"),
           hourglass_row("surprisal", 0.7, 1, dechunk="ema", stages="wide"),
           # the elastic checkpoint told its budget (budget_conditioning), against the same draw without it
           hourglass_row("surprisal", 0.25, 0, elastic=True, dechunk="ema", stages="wide", skew=6.0, cond=True),
           hourglass_row("surprisal", 0.25, 1, elastic=True, dechunk="ema", stages="wide", skew=6.0, cond=True),
           # H-Net's learning-rate modulation per stage (the main network's rate √(c·d_outer/d_main) of the
           # outer stages') on the headline configuration at 0.35, against the same rows at one rate
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", stage_lr=True),
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide", stage_lr=True),
           # the Hourglass transformer's identity skip from the encoder to the decoder, against H-Net's zero init
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", skip=True),
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide", skip=True),
           # its uniform twin (goal (b) compares signals on the same stages and residual), and the skip at 0.5
           hourglass_row("uniform", 0.35, 0, stages="wide", skip=True),
           hourglass_row("uniform", 0.35, 1, stages="wide", skip=True),
           hourglass_row("surprisal", 0.5, 0, dechunk="ema", stages="wide", skip=True),
           hourglass_row("surprisal", 0.5, 1, dechunk="ema", stages="wide", skip=True),
           # the elastic checkpoint with the skip (goal (d)), and its dedicated rows at 0.25
           hourglass_row("surprisal", 0.25, 0, elastic=True, dechunk="ema", stages="wide", skew=6.0, skip=True),
           hourglass_row("surprisal", 0.25, 1, elastic=True, dechunk="ema", stages="wide", skew=6.0, skip=True),
           hourglass_row("surprisal", 0.25, 0, dechunk="ema", stages="wide", skip=True),
           hourglass_row("surprisal", 0.25, 1, dechunk="ema", stages="wide", skip=True),
           # the learning rate 1.5× the sweep's (3e-3, never tuned) for the best information row and for d256:
           # does either configuration, at equal bytes, gain more from it (goal (a) compares them at one rate)
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", skip=True, lr=3e-3),
           plain_row(256, 0, lr=3e-3),
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide", skip=True, lr=3e-3),
           plain_row(256, 1, lr=3e-3),
           # the uniform twin at that rate (goal (b) compares signals at one rate)
           hourglass_row("uniform", 0.35, 0, stages="wide", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.35, 1, stages="wide", skip=True, lr=3e-3),
           # the best row and its uniform twin with a main network of 8 layers, not 4 (depth against width)
           hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="deep", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.35, 0, stages="deep", skip=True, lr=3e-3),
           hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="deep", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.35, 1, stages="deep", skip=True, lr=3e-3),
           # plain Mamba as deep (8 layers of 180, d256's FLOPs per byte +2 %): is the reference's depth its best
           plain_row(180, 0, lr=3e-3, n_layers=8), plain_row(180, 1, lr=3e-3, n_layers=8),
           # H-Net's learned router (signal (d), EMA) on the best stages, skip and rate: learned chunking against
           # the surprisal's rule and the uniform twin above (it had run only on the first, default stages)
           hourglass_row("router", 0.35, 0, stages="deep", skip=True, lr=3e-3),
           hourglass_row("router", 0.35, 1, stages="deep", skip=True, lr=3e-3),
           # the router and its uniform twin at 0.25 on those stages: does placing boundaries matter more when
           # the main network sees fewer tokens (dynamic pooling's entropy gain was at 4.1× shortening)
           hourglass_row("router", 0.25, 0, stages="deep", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.25, 0, stages="deep", skip=True, lr=3e-3),
           hourglass_row("router", 0.25, 1, stages="deep", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.25, 1, stages="deep", skip=True, lr=3e-3),
           # the elastic checkpoint of the router on those stages (goal (d) against the router rows above), trained
           # for the dedicated rows' CPU time at 0.25, and the router alone at 0.5, a budget the checkpoint serves
           hourglass_row("router", 0.25, 0, elastic=True, stages="deep", skew=6.0, skip=True, lr=3e-3),
           hourglass_row("router", 0.25, 1, elastic=True, stages="deep", skew=6.0, skip=True, lr=3e-3),
           hourglass_row("router", 0.5, 0, stages="deep", skip=True, lr=3e-3),
           hourglass_row("router", 0.5, 1, stages="deep", skip=True, lr=3e-3),
           # the router at 0.5 is its best budget (there d_main is the outer width, 176: no higher budget fits d256's
           # FLOPs on these stages): its uniform twin there
           hourglass_row("uniform", 0.5, 0, stages="deep", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.5, 1, stages="deep", skip=True, lr=3e-3),
           # deeper byte stages (BYTE3, BYTE4) with the router at 0.25, the budget goal (a) asks for (BYTE3 fits
           # d256's FLOPs at 0.25 only: at 0.35 its main network would be narrower than its outer stages)
           hourglass_row("router", 0.25, 0, stages="byte3", skip=True, lr=3e-3),
           hourglass_row("router", 0.25, 0, stages="byte4", skip=True, lr=3e-3),
           # BYTE3 was the better: its second seed and its uniform twin (goal (b) on the same stages)
           hourglass_row("router", 0.25, 1, stages="byte3", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.25, 0, stages="byte3", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.25, 1, stages="byte3", skip=True, lr=3e-3),
           # the control: BYTE3's byte stages alone, as plain Mamba (six layers of 176 at full resolution, no main
           # network; 0.74× d256's FLOPs per byte): what the shortened main network adds on top
           plain_row(176, 0, lr=3e-3, n_layers=6),
           # the deeper byte stages at a higher budget with a shallower main network (six layers at 0.35)
           hourglass_row("router", 0.35, 0, stages="byte3m6", skip=True, lr=3e-3),
           hourglass_row("uniform", 0.35, 0, stages="byte3m6", skip=True, lr=3e-3),
           hourglass_row("router", 0.35, 1, stages="byte3m6", skip=True, lr=3e-3),  # second seeds: goals (a), (b)
           hourglass_row("uniform", 0.35, 1, stages="byte3m6", skip=True, lr=3e-3),
           # the router's elastic checkpoint on BYTE3M6 (FLOP-matched at 0.25, γ = 6), trained for the mean CPU time
           # of its two dedicated rows at 0.35 (equal time, as stop 41's on the deep stages): a bundle candidate
           hourglass_row("router", 0.25, 0, elastic=True, stages="byte3m6", skew=6.0, skip=True, lr=3e-3),
           hourglass_row("router", 0.25, 1, elastic=True, stages="byte3m6", skew=6.0, skip=True, lr=3e-3),
           # its dedicated rows at 0.25 (d_main 192; at 0.5 no d_main ≥ 176 fits d256's FLOPs)
           hourglass_row("router", 0.25, 0, stages="byte3m6", skip=True, lr=3e-3),
           hourglass_row("router", 0.25, 1, stages="byte3m6", skip=True, lr=3e-3)]
    return out


def evaluated_rows() -> list[dict]:
    """Each elastic checkpoint at the other budgets (no training)."""
    return [{"name": f"{src['name'].split('@')[0]}@{b:g}/s{src['seed']}", "family": "evaluated",
             "source": src["name"], "budget": b, "seed": src["seed"]}
            for src in rows() if src.get("elastic") for b in ELASTIC_EVAL]


def row_dir(out: Path, name: str) -> Path:
    return out / name.replace("@", "_b").replace("/", "_")


def reference_madds_per_byte(context: int) -> float:
    """Multiply-adds per byte of the reference plain Mamba (layers + head, ``forward_madds``)."""
    model = build_model(model_config("full", 1.0, d_model=REFERENCE["d_model"], n_layers=REFERENCE["n_layers"]))
    with torch.no_grad():
        _, plans = model(torch.zeros(1, context, dtype=torch.int64), return_plans=True)
    return forward_madds(model, plans, context)["per_byte"]


def build(spec: dict, context: int):
    """``(model, configuration name, info)`` of a trained row's spec."""
    if spec["family"] == "plain":
        n_layers = spec.get("n_layers", REFERENCE["n_layers"])
        cfg = model_config("full", 1.0, d_model=spec["d_model"], n_layers=n_layers)
        return build_model(cfg), "full", {"family": "plain", "d_model": spec["d_model"], "n_layers": n_layers}
    b = spec["budget"]
    base = hourglass_config(**spec["stages"], signal=spec["signal"], budget=b, dechunk=spec["dechunk"],
                            budget_range=ELASTIC_RANGE if spec["elastic"] else None,
                            budget_skew=spec.get("skew", 1.0), budget_conditioning=spec.get("cond", False),
                            residual_init="identity" if spec.get("skip") else "zero",
                            **spec.get("boundary", {}))
    cfg, match = match_main_width(base, reference_madds_per_byte(context), budget=b, L=context)
    return HourglassLM(cfg), "hourglass", {"family": "hourglass", "signal": spec["signal"],
                                           "elastic": spec["elastic"], "dechunk": spec["dechunk"],
                                           "flop_match": match, "hourglass": cfg.to_dict()}


def run_spec(spec: dict, data: dict, opts: TrainOptions, out: Path, done: dict) -> dict:
    if spec["family"] == "evaluated":
        src = done[spec["source"]]
        set_threads(opts.threads)
        model, extra = load_text_model(src["checkpoint"])
        row = {k: v for k, v in src.items() if k != "validation_curve"}
        row.update(row=spec["name"], kind="evaluated", budget=spec["budget"], source_row=src["row"],
                   **evaluation(model, data, opts, spec["budget"]))
        d = row_dir(out, spec["name"])
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "row.json", row)
        return row
    torch.manual_seed(spec["seed"])
    model, configuration, info = build(spec, opts.context)
    run_opts = replace(opts, seed=spec["seed"], stage_lr=spec.get("stage_lr", False),
                       lr=spec.get("lr") or opts.lr)
    return train_run(model, data, run_opts, row_dir(out, spec["name"]), name=spec["name"],
                     configuration=configuration, budget=spec["budget"], info=info)


def finished(out: Path) -> dict[str, dict]:
    """The finished rows of a sweep folder, ``{row name: row.json}`` (an unreadable file is skipped, with a warning)."""
    done = {}
    for p in sorted(out.glob("*/row.json")):
        try:
            r = json.loads(p.read_text())
            done[r["row"]] = r
        except (ValueError, KeyError):
            print(f"warning: ignoring unreadable {p}", file=sys.stderr)
    return done


# ----------------------------------------------------------------------------- goals, table, figures
def _mean(rs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def _uniform_twin(name: str, row: dict) -> str:
    """The uniform row's configuration name with ``name``'s stages, budget and dechunk (``hg-entropy-wide@0.25``
    → ``hg-uniform-wide@0.25``): goal (b) compares boundary signals, nothing else."""
    signal = row["signal"]
    head, budget = name.split("@")
    suffix = _BOUNDARY_TAG_RE.sub("", head[len(f"hg-{signal}"):])  # uniform boundaries read no rule, form, head
    if row.get("dechunk") != default_dechunk("uniform") and not suffix.startswith(f"-{row['dechunk']}"):
        suffix = f"-{row['dechunk']}{suffix}"  # the router's default EMA is a suffix on a uniform row
    return f"hg-uniform{suffix}@{budget}"


def _uniform_bpb(bpb: dict, name: str, row: dict) -> float | None:
    """The bpb of ``name``'s uniform twin (:func:`_uniform_twin`); where no uniform row has its dechunk, the
    uniform row of the other dechunk: uniform boundaries have ``p = 1`` (clamped to ``1 − 1e-6``), so the
    EMA ``z̄ = p z + (1 − p) z̄_prev`` is the hold to 1e-6."""
    twin = _uniform_twin(name, row)
    if twin in bpb:
        return bpb[twin]
    return bpb.get(twin.replace("-ema", "", 1))


def _dedicated(head: str) -> str:
    """The configuration an elastic checkpoint is compared with at each budget (goal (d)): its signal,
    dechunk, boundary fields and stages trained at that budget alone (``hg-elastic-surprisal-ema-wide-skew6``
    → ``hg-surprisal-ema-wide``)."""
    return re.sub(r"(-cond)?(-skew[0-9.]+)?$", "", head.replace("hg-elastic-", "hg-", 1))


def equal_bpb_pairs(hourglass: dict[str, float], plain: dict[str, float],
                    tolerance: float = 0.01) -> list[tuple[str, str]]:
    """Goal (e)'s pairs: ``(hourglass, plain)`` configurations, each given by its test bpb, whose bpb differ
    by at most ``tolerance`` (relative to the plain one's); ``scripts/bench_equal_bpb.py`` times them."""
    return [(h, p) for h, hv in hourglass.items() for p, pv in plain.items() if abs(hv / pv - 1.0) <= tolerance]


def goals(table_rows: list[dict]) -> dict:
    """The issue's goals (a)–(e), checked on the rows present (None where a row is missing)."""
    by: dict[str, list[dict]] = {}
    for r in table_rows:
        by.setdefault(r["row"].rsplit("/s", 1)[0], []).append(r)
    bpb = {k: _mean(v, "test_bpb") for k, v in by.items()}
    out: dict = {"test_bpb_by_configuration": bpb}
    plain = {k: v for k, v in bpb.items() if k.startswith("mamba-")}
    info_rows = {k: v for k, v in bpb.items() if k.startswith("hg-") and not k.startswith(("hg-uniform", "hg-elastic"))
                 and float(k.split("@")[1]) <= 0.35}
    # the reference: the best plain row of d256's FLOPs per byte (±5 %), at its best learning rate (the sweep's,
    # or a row's own ``-lrX``) and depth (``xN``): each side tuned alike
    f256 = next((r.get("flops_per_byte") for r in by.get("mamba-d256", [])), None)

    def matched_flops(name: str) -> bool:
        f = by[name][0].get("flops_per_byte")
        return f256 is not None and f is not None and abs(f / f256 - 1.0) <= 0.05

    matched = [k for k in plain if k == "mamba-d256" or k.startswith("mamba-d256-lr") or matched_flops(k)]
    ref = min((plain[k] for k in matched), default=None)
    if info_rows:
        best = min(info_rows, key=info_rows.get)
        out["best_information_hourglass"] = best
        if ref is not None:
            out["a_quality_per_flop"] = {"hourglass": info_rows[best], "mamba-d256": ref,
                                         "reference": min(matched, key=plain.get), "met": info_rows[best] <= ref}
        uni = _uniform_bpb(bpb, best, by[best][0])  # the same stages, budget and dechunk, uniform
        if uni is not None:
            gain = 1.0 - info_rows[best] / uni
            out["b_information_matters"] = {"hourglass": info_rows[best], "uniform": uni, "gain": gain,
                                            "met": gain >= 0.025}
    hg_all = {k: v for k, v in bpb.items() if k.startswith("hg-")}
    if hg_all and plain:
        best_hg = min(hg_all, key=hg_all.get)
        margins = {k: 1.0 - hg_all[best_hg] / v for k, v in plain.items()}
        out["c_quality_per_time"] = {"hourglass": best_hg, "margins": margins,
                                     "met": all(m >= 0.03 for m in margins.values())}
    families: dict[str, dict[float, float]] = {}  # each elastic checkpoint: {budget: bpb}
    for k, v in bpb.items():
        if k.startswith("hg-elastic-"):
            head, b = k.split("@")
            families.setdefault(head, {})[float(b)] = v
    by_family = {}
    for head, el in families.items():
        d = {}
        dedicated = _dedicated(head)
        for b, v in el.items():
            alone = bpb.get(f"{dedicated}@{b:g}")
            if alone is not None:
                d[f"{b:g}"] = {"elastic": v, "alone": alone, "ratio": v / alone, "met": v <= 1.02 * alone}
        own = None if 1.0 not in el or 0.25 not in el else {"at_0.25": el[0.25], "at_1": el[1.0],
                                                             "met": el[0.25] <= 1.04 * el[1.0]}
        scored = sorted(f"{b:g}" for b in el if b < 1.0)  # the budgets below 1 the checkpoint was scored at
        by_family[head] = {"row": head, "vs_dedicated": d, "vs_own_budget_1": own,
                           "without_dedicated_row": [b for b in scored if b not in d]}
    if by_family:  # the goal holds at each budget: of the checkpoints compared at the most budgets, the one of the
        # smallest worst ratio, and every one (a checkpoint compared at 0.25 alone must not look best for having
        # no dedicated rows at 0.35 and 0.5 to trail)
        def worst(h: str) -> tuple[int, float, float]:
            ratios = [v["ratio"] for v in by_family[h]["vs_dedicated"].values()]
            return (-len(ratios), max(ratios) if ratios else math.inf, families[h][min(families[h])])
        best = min(by_family, key=worst)
        out["d_elastic"] = {**by_family[best], "all": by_family}
    # (e): the pairs and their FLOPs, not their speeds. Each row's rates were measured beside its own training,
    # in its own session and on the code of its day (mamba-d176's decode: 153 B/s, from before the decoding
    # kernel), so a ratio of two rows' rates is no measurement; scripts/bench_equal_bpb.py times each pair
    # in one run (docs/results/hourglass_equal_bpb.json).
    flops = {k: v[0].get("flops_per_byte") for k, v in by.items()}
    pairs = [{"hourglass": h, "mamba": p, "bpb": [hg_all[h], plain[p]],
              "flops_ratio": flops[h] / flops[p] if flops[h] and flops[p] else None}
             for h, p in equal_bpb_pairs(hg_all, plain)]
    out["e_deployment_equal_bpb"] = {"pairs": pairs, "timed_by": "scripts/bench_equal_bpb.py"} if pairs else None
    return out


def format_table(table_rows: list[dict]) -> str:
    ref = next((r for r in table_rows if r["row"] == "mamba-d256/s0"), None)
    lines = ["| row | kind | test bpb | mean R | MFLOPs/byte | × d256 | params | train MB | prefill B/s | decode B/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table_rows:
        rel = "—" if ref is None else f"{r['flops_per_byte'] / ref['flops_per_byte']:.3f}"
        f = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
        lines.append(f"| {r['row']} | {r['kind']} | {r['test_bpb']:.4f} | {r['test_mean_resolution']:.3f} | "
                     f"{r['flops_per_byte'] / 1e6:.3f} | {rel} | {r['params'] / 1e6:.2f}M | "
                     f"{r['train_bytes'] / 1e6:.2f} | {f(r.get('prefill_bytes_per_s'))} | {f(r.get('decode_bytes_per_s'))} |")
    return "\n".join(lines) + "\n"


def write_results(done: dict, results: Path, figures_dir: Path | None, command: str) -> dict:
    order = {s["name"]: i for i, s in enumerate(rows() + evaluated_rows())}
    table_rows = sorted(done.values(), key=lambda r: order.get(r["row"], 1e9))
    table = {"description": "Byte-level LMs on the Python 3.11 documentation: plain Mamba against the hourglass "
                            "(tiling.train.sweep). test_bpb on the test split; flops_per_byte = 2 x multiply-adds as "
                            "run (HourglassLM.cost / layer_cost) plus the tied head; every row trained on one thread "
                            "for the same CPU time, or to the same step count where --max-steps stopped it first "
                            "(each row's steps and train_seconds say which).",
             "command": command, "goals": goals(table_rows), "rows": table_rows}
    atomic_write_json(results, table)
    if figures_dir is not None:
        try:
            figures(table_rows, figures_dir)
        except Exception as e:  # a figure must never lose the table
            print(f"warning: figures not written: {e!r}", file=sys.stderr)
    print(format_table(table_rows), flush=True)
    return table


# ----------------------------------------------------------------------------- command line
def load_data(args) -> dict:
    """The three splits as uint8 tensors: the prepared corpus (``args.corpus_dir``), or the given files."""
    if args.train_file is not None:
        files = {"train": args.train_file, "validation": args.val_file or args.train_file,
                 "test": args.test_file or args.val_file or args.train_file}
        return {k: as_byte_tensor(read_text_file(v)) for k, v in files.items()}
    return {k: as_byte_tensor(load_split(k, args.corpus_dir)) for k in ("train", "validation", "test")}


def sweep_settings(args) -> dict:
    """What makes the rows of one table comparable: the data, the limits and the evaluation."""
    where = lambda p: None if p is None else str(Path(p).resolve())  # noqa: E731 (one folder, however named)
    data = ({"corpus_dir": where(args.corpus_dir)} if args.train_file is None else
            {"train_file": where(args.train_file), "val_file": where(args.val_file), "test_file": where(args.test_file)})
    return {**data, "max_minutes": args.max_minutes, "clock": args.clock, "context": args.context,
            "batch_size": args.batch_size, "max_steps": args.max_steps, "val_windows": args.val_windows,
            "test_bytes": args.test_bytes, "eval_every_steps": args.eval_every_steps}


def check_settings(args) -> None:
    """Record the sweep's settings in ``OUT/sweep.json``; a resume under other settings is refused before
    any work, naming each difference (a table never mixes rows of different settings)."""
    now = sweep_settings(args)
    path = args.out / "sweep.json"
    if path.exists():
        recorded = json.loads(path.read_text()).get("settings", {})
        differ = differing_settings(recorded, now)
        if differ:
            raise RunError(f"--resume: {args.out} holds rows of other settings ({'; '.join(differ)}); pass the "
                           f"same settings or another --out")
    else:
        atomic_write_json(path, {"settings": now, "fingerprint": fingerprint(now)})


def sweep(args) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    done = finished(args.out)
    if done and not args.resume:
        raise RunError(f"{args.out} already holds {len(done)} finished rows; pass --resume to skip them")
    check_settings(args)
    data = load_data(args)
    opts = TrainOptions(max_minutes=args.max_minutes, clock=args.clock, context=args.context,
                        batch_size=args.batch_size, max_steps=args.max_steps, val_windows=args.val_windows,
                        test_bytes=args.test_bytes, speed=not args.no_speed, quiet=args.quiet, threads=args.threads,
                        eval_every_steps=args.eval_every_steps)
    steps = "" if args.max_steps is None else f" --max-steps {args.max_steps}"  # the limit the rows stopped at
    command = (f"python -m tiling.train.sweep --resume --out {args.out} --max-minutes {args.max_minutes:g} "
               f"--clock {args.clock}{steps} --shard i/n")
    specs = rows()
    mine = [s for i, s in enumerate(specs) if i % args.shard_count == args.shard_index
            and (args.only is None or s["name"] in args.only)]
    if getattr(args, "figures_only", False):
        mine = []
    for spec in mine + [e for e in evaluated_rows() if args.only is None or e["name"] in args.only]:
        done.update(finished(args.out))
        if spec["name"] in done:
            print(f"[sweep] {spec['name']}: finished, skipped", flush=True)
            continue
        if spec["family"] == "evaluated" and spec["source"] not in done:
            print(f"[sweep] {spec['name']}: waits for {spec['source']}", flush=True)
            continue
        print(f"[sweep] {spec['name']}: running", flush=True)
        done[spec["name"]] = run_spec(spec, data, opts, args.out, done)
        done.update(finished(args.out))
        write_results(done, args.results, args.figures, command)
    done.update(finished(args.out))
    if getattr(args, "bundle", False):
        bundle(done)
    table = write_results(done, args.results, args.figures, command)
    if args.figures is not None:
        sample = bytes(data["test"][STRIP_OFFSET:STRIP_OFFSET + 96].tolist())
        boundary_strip(table["rows"], sample, args.figures / "hourglass_boundaries.png")
    return table


def bundle(done: dict) -> dict:
    """Install the best elastic hourglass as ``bundled:hourglass`` and the best plain Mamba of the table as
    ``bundled:full`` when it beats the installed one (lower test bpb); returns ``{name: row}`` installed.

    An elastic checkpoint serves every budget of its range, so the best is the one of lowest mean test bpb
    over the budgets it was scored at (its own row at 0.25 and its evaluated rows at 0.35, 0.5 and 1).
    Rows whose checkpoint is no longer on disk (a table rebuilt from ``row.json`` files alone) are not
    candidates."""
    out = {}
    done = {k: r for k, r in done.items() if r.get("kind") == "evaluated" or Path(r["checkpoint"]).is_file()}
    elastic = [r for r in done.values() if r["row"].startswith("hg-elastic-") and r.get("kind") == "trained"]
    if elastic:
        def served(row: dict) -> float:
            return statistics.fmean([row["test_bpb"]] + [r["test_bpb"] for r in done.values()
                                                         if r.get("kind") == "evaluated" and r.get("source_row") == row["row"]])
        elastic = min(elastic, key=served)
        export_bundled(elastic["checkpoint"], "hourglass", info={"row": elastic["row"], "test_bpb": elastic["test_bpb"]})
        out["hourglass"] = elastic
    plain = [r for r in done.values() if r["row"].startswith("mamba-") and r["kind"] == "trained"]
    if plain:
        best = min(plain, key=lambda r: r["test_bpb"])
        installed = {b["name"]: b for b in bundled_checkpoints()}["full"]
        if installed["test_bpb"] is None or best["test_bpb"] < installed["test_bpb"]:
            export_bundled(best["checkpoint"], "full", info={"row": best["row"], "test_bpb": best["test_bpb"]})
            out["full"] = best
    for name, row in out.items():
        print(f"[bundle] {name}: {row['row']} (test bpb {row['test_bpb']:.4f})", flush=True)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/hourglass"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--results", type=Path, default=Path("docs/results/hourglass_lm.json"))
    p.add_argument("--figures", type=Path, default=Path("docs/figures/hourglass"))
    p.add_argument("--shard", default="0/1")
    p.add_argument("--only", nargs="+", default=None)
    p.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"))
    p.add_argument("--train-file", type=Path, default=None)
    p.add_argument("--val-file", type=Path, default=None)
    p.add_argument("--test-file", type=Path, default=None)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-minutes", type=float, default=15.0)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--eval-every-steps", type=int, default=None)
    p.add_argument("--val-windows", type=int, default=32)
    p.add_argument("--test-bytes", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--figures-only", action="store_true",
                   help="train nothing: rewrite the table and the figures from the finished rows")
    p.add_argument("--bundle", action="store_true",
                   help="install the best elastic hourglass as bundled:hourglass (and the best plain Mamba as bundled:full "
                        "when it beats the installed one)")
    args = p.parse_args(argv)
    try:
        args.shard_index, args.shard_count = parse_shard(args.shard)
    except ValueError as e:
        p.error(str(e))
    return args


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n`` (``--shard``); ValueError naming the flag otherwise."""
    try:
        i, n = (int(v) for v in text.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise ValueError(f"--shard must be i/n with 0 <= i < n, got {text!r}") from None
    return i, n


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sweep(args)
    except (RunError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
