#!/usr/bin/env python
"""Write ``values_fixture.safetensors``: the outputs of small seeded models, to keep values fixed.

Made at commit b3fc2f5 (before issue 23's speed work) so that every later change to the forward,
the plan, the step or the kernels can be checked against the values the project had:
``tests/tiling/test_values_fixture.py`` rebuilds each model from the stored weights and compares.

What it stores (names are ``kind/config/...``):

* ``base/<param>``: the Mamba weights shared by every configuration (a seeded ``TiledLM``,
  vocabulary 16, d_model 16, 3 layers, d_state 16, expand 2, tile 8), perturbed so that no
  parameter keeps its identity initialisation; ``extra/<config>/<name>``: each configuration's own
  tensors (pool gates, router maps, φ and routing, calibration buffers after two training batches);
* ``tokens``: (2, 45) int64 inputs, ``tokens_train``: the two training batches;
* ``logits/<config>/<budget>``: eval-mode logits at budgets 1, 0.5, 0.35, 0.25;
* ``train/<config>/logits``: a training-mode forward at the layer's budget (0.25), and the
  calibration buffers after it (``train/<config>/<buffer>``);
* ``grad/<config>/<param>``: the gradients of ``(logits · w).sum()`` (``grad_weight``) at 0.25;
* ``layer/...``: a block-scope TiledMamba with an external density and a curvature, and a
  scan-scope one with a state-dimension policy (outputs and plan segments);
* ``bundled/<name>/logp``: ``log p(x_{t+1} | x_{≤t})`` of the bundled checkpoints over
  ``TEXT`` at the budgets of ``BUNDLED_BUDGETS``.

    python tests/tiling/data/make_values_fixture.py   # rewrites the file; only do so on purpose
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tiling.config import TilingConfig  # noqa: E402
from tiling.modules import TiledMamba  # noqa: E402
from tiling.train.model import TiledLM  # noqa: E402

OUT = Path(__file__).with_name("values_fixture.safetensors")
VOCAB, D, LAYERS, BATCH, L, T = 16, 16, 3, 2, 45, 8
BUDGETS = (1.0, 0.5, 0.35, 0.25)
MAMBA = dict(d_state=16, expand=2)
#: configuration name → (TiledLM keyword arguments, TilingConfig fields)
CONFIGS = {
    "full": ({}, dict(policy="adaptive", calibration="running")),
    "uniform": ({}, dict(policy="uniform")),
    "adaptive_history": ({}, dict(policy="adaptive")),
    "adaptive_running": ({}, dict(policy="adaptive", calibration="running")),
    "binary": ({}, dict(policy="binary")),
    "tail_max": ({}, dict(policy="adaptive", predictor_tail=3, predictor_reduce="max", lookback=2)),
    "router": ({}, dict(boundaries="token", router_rank=8)),
    "nopool": ({}, dict(policy="uniform", pool=False)),
    "ends": ({"full_resolution_layers": (0, -1)}, dict(policy="adaptive")),
    "shared": ({"shared_density": True}, dict(policy="adaptive")),
    "noncausal": ({}, dict(policy="adaptive", causal=False)),
    "scan_adaptive": ({}, dict(scope="scan", policy="adaptive", calibration="running")),
    "scan_uniform": ({}, dict(scope="scan", policy="uniform")),
}
GRAD_CONFIGS = ("uniform", "adaptive_running", "router", "scan_adaptive")
BUNDLED_BUDGETS = {"full": (1.0, 0.25), "adaptive": (0.35, 0.25)}
#: the checkpoints of ``BUNDLED_BUDGETS`` kept beside the fixture: ``bundled:full`` was then the real-text
#: sweep's 4 × 256 (``full@1/s0``); the hourglass sweep bundled its best plain Mamba (8 × 180) in its place
KEPT = {"full": Path(__file__).with_name("text_full_4x256.safetensors")}


def checkpoint_path(name: str) -> Path:
    """The checkpoint the fixture's ``bundled/<name>`` values were made from: kept beside it, or installed."""
    from tiling.train.textmodel import BUNDLED, BUNDLED_DIR

    return KEPT.get(name, BUNDLED_DIR / BUNDLED[name])
TEXT = (b"The for statement in Python differs a bit from what you may be used to in C or Pascal. "
        b"Rather than always iterating over an arithmetic progression of numbers, or giving the user "
        b"the ability to define both the iteration step and halting condition (as C), Python's for "
        b"statement iterates over the items of any sequence.")


def build(name: str) -> TiledLM:
    lm_kw, tiling_kw = CONFIGS[name]
    torch.manual_seed(0)
    return TiledLM(VOCAB, D, LAYERS, tiling=TilingConfig(tile_size=T, budget=0.25, **tiling_kw), **lm_kw, **MAMBA)


def perturb(model: TiledLM, seed: int, base: dict | None) -> None:
    """Load ``base`` (shared Mamba weights) and move every other parameter off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if base is not None and name in base:
                p.copy_(base[name])
            else:
                p.add_(torch.randn(p.shape, generator=g) * (0.5 if p.abs().max() == 0 else 0.2 * float(p.std())))


def main() -> None:
    out: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, L), generator=g)
    # a bursty row: runs of one byte, then noise, so the adaptive plans differ between tiles
    tokens[1, :20] = 3
    tokens_train = torch.randint(0, VOCAB, (2, BATCH, L), generator=g)
    grad_weight = torch.randn(BATCH, L, VOCAB, generator=g)
    out.update(tokens=tokens, tokens_train=tokens_train, grad_weight=grad_weight)
    torch.manual_seed(0)
    ref = build("full")
    perturb(ref, 100, None)
    base = {k: v.detach().clone() for k, v in ref.named_parameters()
            if k.startswith(("embedding", "norm", "norms")) or any(
                k.endswith(s) for s in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                                        "dt_proj.weight", "dt_proj.bias", "A_log", ".D", "out_proj.weight"))}
    out.update({f"base/{k}": v for k, v in base.items()})
    for i, name in enumerate(CONFIGS):
        model = build(name)
        perturb(model, 200 + i, base)
        # two training batches: the running calibration learns a reference (and TokenRouter its loss)
        model.train()
        for batch in tokens_train:
            with torch.no_grad():
                model(batch)
        extra = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in base}
        out.update({f"extra/{name}/{k}": v for k, v in extra.items()})
        model.eval()
        with torch.no_grad():
            for b in BUDGETS:
                out[f"logits/{name}/{b:g}"] = model(tokens, budget=b)
        model.train()
        with torch.no_grad():
            out[f"train/{name}/logits"] = model(tokens)
        for k, v in model.state_dict().items():
            if "calibrator" in k:
                out[f"train/{name}/{k}"] = v.clone()
        if name in GRAD_CONFIGS:
            model.load_state_dict({**{k: v for k, v in base.items()}, **extra}, strict=False)
            model.train()
            model.zero_grad()
            loss = (model(tokens, budget=0.25) * grad_weight).sum()
            rl = model.ratio_loss()
            if rl is not None:
                loss = loss + rl
                out[f"grad/{name}/ratio_loss"] = rl.detach().reshape(1)
            loss.backward()
            for k, p in model.named_parameters():
                if p.grad is not None:
                    out[f"grad/{name}/{k}"] = p.grad.detach().clone()
    layer_fixtures(out, g)
    bundled_fixtures(out)
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, str(OUT), metadata={"made_at": "b3fc2f5", "script": "tests/tiling/data/make_values_fixture.py"})
    print(f"wrote {OUT} ({len(out)} tensors, {OUT.stat().st_size / 1e3:.0f} kB)")


def layer_fixtures(out: dict, g: torch.Generator) -> None:
    x = torch.randn(BATCH, L, D, generator=g)
    density = torch.rand(BATCH, L, generator=g) ** 3
    curvature = torch.randn(BATCH, L, generator=g)
    out.update({"layer/x": x, "layer/density": density, "layer/curvature": curvature})
    for name, tiling in (("block", TilingConfig(tile_size=T, budget=0.35, policy="adaptive", curvature_weight=0.7)),
                         ("scan", TilingConfig(tile_size=T, budget=0.35, scope="scan", policy="adaptive",
                                               state_k=3.0, s_min=2))):
        torch.manual_seed(3)
        layer = TiledMamba(D, **MAMBA, tiling=tiling)
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn(p.shape, generator=g) * (0.5 if p.abs().max() == 0 else 0.2 * float(p.std())))
        out.update({f"layer/{name}/weights/{k}": v.detach().clone() for k, v in layer.state_dict().items()})
        with torch.no_grad():
            for tag, kw in (("own", {}), ("external", {"density": density, "curvature": curvature})):
                y, plan = layer(x, return_plan=True, **kw)
                out[f"layer/{name}/{tag}/y"] = y
                out[f"layer/{name}/{tag}/segments"] = plan.segments
                if plan.state_dims is not None:
                    out[f"layer/{name}/{tag}/state_dims"] = plan.state_dims


def bundled_fixtures(out: dict) -> None:
    from tiling.train.textmodel import load_text_model

    text = torch.tensor(list(TEXT), dtype=torch.int64).view(1, -1)
    out["bundled/text"] = text
    for name, budgets in BUNDLED_BUDGETS.items():
        path = checkpoint_path(name)
        # the sweep may install new bundled checkpoints: the test compares only while the file is this one
        out[f"bundled/{name}/sha256"] = torch.frombuffer(bytearray(hashlib.sha256(path.read_bytes()).digest()),
                                                         dtype=torch.uint8)
        model, _ = load_text_model(path)
        model.eval()
        with torch.no_grad():
            for b in budgets:
                logits = model(text, budget=b)
                out[f"bundled/{name}/{b:g}/logp"] = F.log_softmax(logits.double(), -1)[0, :-1].gather(
                    -1, text[0, 1:, None])[:, 0]
                out[f"bundled/{name}/{b:g}/last"] = logits[0, -1]


if __name__ == "__main__":
    main()
