#!/usr/bin/env python
"""Benchmark of the whole ``TiledMamba`` block: does the resolution buy compute?

Prints one table of times and ratios measured in one run, for each shape and device: the whole
block, forward and forward + backward, at budgets 1, 0.5, 0.35 and 0.25 with the uniform and the
adaptive policy, in the block scope (the mixer runs on ``⌈R_i·T⌉`` tokens per tile) and in the scan
scope (the resolution shrinks the recurrence only); HF transformers' ``MambaMixer`` with the same
weights on its PyTorch path (forward only: the backward of its Python time loop is quadratic in
``L``, every step's slice gradient materialising the whole ``(b, d_inner, L, N)`` tensor); and the time of the layer's own matrix products, conv and scan
kernel at budget 1 run bare ("own kernels"), so that the overhead around them shows.

Columns: ``ms`` (minimum over ``--repeats`` interleaved rounds; CPU rows also give the process CPU
time per torch thread, a load-independent estimate on a shared machine), ``× budget 1`` (the same
scope, policy and mode at budget 1 divided by this row), ``FLOPs`` (counted multiply-adds,
``tiling.ops.layer_cost``, relative to budget 1), ``R̄`` (realised fraction of mixer tokens).
Forward + backward rows recompute the signal's composite map each call, as a training step does
after every optimiser update. The block scope's pool gate is opened (a trained layer has a
non-zero gate); one row shows the forward with the gate closed (the pool is then skipped).

    python scripts/bench_layer.py [--device cpu|cuda] [--repeats 5] [--threads 2] [--json PATH] [--no-hf]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import best_ms_interleaved, sync  # noqa: E402

from tiling.config import TilingConfig  # noqa: E402
from tiling.modules import TiledMamba  # noqa: E402
from tiling.ops import adaptive_selective_scan  # noqa: E402
from tiling.train.storage import atomic_write_bytes  # noqa: E402

SHAPES = [(1, 2048, 768), (4, 1024, 512)]  # (batch, L, d_model), float32
BUDGETS = [1.0, 0.5, 0.35, 0.25]
TILE = 64


@dataclass
class Row:
    device: str
    shape: str
    mode: str  # "fwd" or "fwd+bwd"
    case: str
    ms: float
    cpu_ms_per_thread: float | None = None
    speedup_vs_budget1: float | None = None
    flops_ratio: float | None = None
    mean_resolution: float | None = None
    target: str = ""
    met: bool | None = None


def make_layer(d_model: int, scope: str, policy: str, device: str, seed: int = 0) -> TiledMamba:
    torch.manual_seed(seed)
    layer = TiledMamba(d_model, device=device, tiling=TilingConfig(tile_size=TILE, scope=scope, policy=policy))
    if scope == "block":
        with torch.no_grad():
            layer.chunk.pool_gate.normal_(0.0, 0.1)
    return layer


def hf_mixer(layer: TiledMamba):
    """HF transformers' MambaMixer (PyTorch path) holding ``layer``'s Mamba weights, or None."""
    try:
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer
    except ImportError:
        return None
    cfg = MambaConfig(hidden_size=layer.d_model, state_size=layer.d_state, expand=layer.expand,
                      conv_kernel=layer.d_conv, time_step_rank=layer.dt_rank, use_bias=False, use_conv_bias=True,
                      use_mambapy=False)
    mixer = MambaMixer(cfg, layer_idx=0).to(layer.in_proj.weight.device)
    mixer.load_state_dict({k: v for k, v in layer.state_dict().items() if k in mixer.state_dict()})
    return mixer


def own_kernels(layer: TiledMamba, x: torch.Tensor):
    """The layer's matrix products, conv and scan kernel at budget 1, as bare calls on prepared inputs."""
    E, r, N, L = layer.d_inner, layer.dt_rank, layer.d_state, x.shape[1]
    b = x.shape[0]
    with torch.no_grad():
        u, z, dt_raw, B, C = layer._project(x)
        y = torch.randn_like(u)
    A = -torch.exp(layer.A_log.detach())
    W, Wx, Wdt = layer.in_proj.weight.detach(), layer.x_proj.weight.detach(), layer.dt_proj.weight.detach()
    Wo = layer.out_proj.weight.detach()
    xt = x.transpose(1, 2)
    B, C = B.contiguous(), C.contiguous()

    def run():
        with torch.no_grad():
            torch.bmm(W[:E].expand(b, -1, -1), xt)
            torch.bmm(W[E:].expand(b, -1, -1), xt)
            F.conv1d(u, layer.conv1d.weight, layer.conv1d.bias, padding=layer.d_conv - 1, groups=E)
            dlow = torch.bmm(Wx[:r].expand(b, -1, -1), u)
            torch.bmm(Wdt.expand(b, -1, -1), dlow)
            torch.bmm(Wx[r:].expand(b, -1, -1), u)
            adaptive_selective_scan(u, dt_raw, A, B, C, layer.D, z, delta_bias=layer.dt_proj.bias, delta_softplus=True,
                                    tile_size=layer.tile_size)
            torch.bmm(y.transpose(1, 2), Wo.t().expand(b, -1, -1))
    return run


def shape_rows(batch: int, L: int, d: int, device: str, args) -> list[Row]:
    # long: one timed row per case of the table (scan and block, forward and backward, each budget), in order
    shape = f"b{batch} L{L} d{d}"
    x = torch.randn(batch, L, d, device=device)
    rows: list[Row] = []
    layers = {(s, p): make_layer(d, s, p, device) for s in ("block", "scan") for p in ("uniform", "adaptive")}
    fns, meta = {}, {}
    for (scope, policy), layer in layers.items():
        for c in BUDGETS:
            if c == 1.0 and policy == "adaptive":
                continue  # budget 1 is full resolution under every policy: one row
            key = (scope, policy if c < 1.0 else "any", c)
            layer.eval()
            with torch.no_grad():
                plan = layer.plan(x, budget=c)
            cost = plan.meta["layer_cost"]["total"]
            frac = (plan.meta["compact_length"] / L) if scope == "block" else float(plan.effective_resolution().mean())

            def fwd(layer=layer, c=c):
                with torch.no_grad():
                    layer(x, budget=c)

            def fwd_bwd(layer=layer, c=c):
                layer._signal_cache = None  # a training step changes the weights: the composite map is recomputed
                xg = x.detach().requires_grad_(True)
                layer(xg, budget=c).sum().backward()

            fns[("fwd",) + key], fns[("fwd+bwd",) + key] = fwd, fwd_bwd
            meta[key] = (cost, frac, layer)
    closed = make_layer(d, "block", "adaptive", device)
    with torch.no_grad():
        closed.chunk.pool_gate.zero_()
    closed.eval()

    def fwd_closed():
        with torch.no_grad():
            closed(x, budget=0.25)
    fns[("fwd", "block", "adaptive, pool gate closed", 0.25)] = fwd_closed
    torch.manual_seed(1)
    router = TiledMamba(d, device=device,
                        tiling=TilingConfig(tile_size=TILE, scope="block", boundaries="token", causal=False)).eval()

    def fwd_router():  # per-token boundaries (H-Net's router), top-⌈cL⌉ per row: the budget exactly
        with torch.no_grad():
            router(x, budget=0.25)
    fns[("fwd", "block", "token router (non-causal top-k)", 0.25)] = fwd_router
    kern = own_kernels(layers[("block", "uniform")], x)
    fns[("fwd", "kernels", "", 1.0)] = kern
    def synced(fn):  # a GPU call returns before it ends: time it to the end
        def run():
            fn()
            sync(device)
        return run
    fns = {k: synced(fn) for k, fn in fns.items()}
    # forward rows in eval mode, forward + backward rows in training mode: two interleaved groups
    fwd_keys = [k for k in fns if k[0] == "fwd"]
    bwd_keys = [k for k in fns if k[0] == "fwd+bwd"]
    for layer in layers.values():
        layer.eval()
    res = best_ms_interleaved({k: fns[k] for k in fwd_keys}, args.repeats)
    for layer in layers.values():
        layer.train()
    res.update(best_ms_interleaved({k: fns[k] for k in bwd_keys}, max(2, args.repeats // 2)))
    hf = hf_mixer(layers[("block", "uniform")]) if args.hf else None
    if hf is not None:
        hf.eval()

        def hf_fwd():
            with torch.no_grad():
                hf(x)

        # forward only: the backward of HF's Python time loop is quadratic in L (every step's slice
        # gradient materialises the whole (b, d_inner, L, N) tensor): over 10 minutes at L = 2048
        res[("fwd", "hf", "", 1.0)] = best_ms_interleaved({"f": synced(hf_fwd)}, 1)["f"]
    for mode in ("fwd", "fwd+bwd"):
        for scope in ("block", "scan"):
            base_ms = res[(mode, scope, "any", 1.0)][0]
            base_cost = meta[(scope, "any", 1.0)][0]
            for policy in ("any", "uniform", "adaptive"):
                for c in BUDGETS:
                    key = (scope, policy, c)
                    if key not in meta:
                        continue
                    ms, cpu = res[(mode,) + key]
                    cost, frac, _ = meta[key]
                    sp, fr = base_ms / ms, cost / base_cost
                    target, met = "", None
                    if scope == "block" and c == 0.25:
                        need = 3.0 if mode == "fwd" else 2.5
                        target, met = f">= {need}x, FLOPs <= 0.30", sp >= need and fr <= 0.30
                    label = f"{scope} scope, {'budget 1' if c == 1.0 else policy + f', budget {c}'}"
                    rows.append(Row(device, shape, mode, label, ms, cpu, sp, fr, frac, target, met))
            if mode == "fwd" and scope == "block":
                ms, cpu = res[("fwd", "block", "adaptive, pool gate closed", 0.25)]
                rows.append(Row(device, shape, mode, "block scope, adaptive, budget 0.25, pool gate closed", ms, cpu,
                                base_ms / ms, None, None))
                ms, cpu = res[("fwd", "block", "token router (non-causal top-k)", 0.25)]
                rows.append(Row(device, shape, mode, "block scope, token router (top-k), budget 0.25", ms, cpu,
                                base_ms / ms, None, None))
        if (mode, "hf", "", 1.0) in res:
            ms, cpu = res[(mode, "hf", "", 1.0)]
            ours = min(res[(mode, "block", "any", 1.0)][0], res[(mode, "scan", "any", 1.0)][0])
            rows.append(Row(device, shape, mode, "HF MambaMixer, PyTorch path, same weights", ms, cpu, None, None, 1.0,
                            f"ours at budget 1 >= 5x faster: {ms / ours:.1f}x", ms / ours >= 5.0))
    k_ms, k_cpu = res[("fwd", "kernels", "", 1.0)]
    b1 = res[("fwd", "block", "any", 1.0)][0]
    rows.append(Row(device, shape, "fwd", "own kernels at budget 1 (matmuls + conv + scan, bare)", k_ms, k_cpu,
                    None, None, 1.0, f"layer <= 1.3x kernels: {b1 / k_ms:.2f}x", b1 / k_ms <= 1.3))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    ap.add_argument("--no-hf", dest="hf", action="store_false", help="skip the HF MambaMixer rows")
    ap.add_argument("--shapes", type=str, default=None, help="e.g. '1x2048x768,4x1024x512' (batch x L x d_model)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    torch.set_num_threads(args.threads)
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    load = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[Row] = []
    for batch, L, d in tqdm(shapes, desc="shapes"):
        rows += shape_rows(batch, L, d, args.device, args)
    where = (torch.cuda.get_device_name() if args.device == "cuda" else
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    header = (f"TiledMamba block benchmark — {where}, float32, torch {torch.__version__}, tiles of {TILE}, "
              f"load average at start {load[0]:.2f}, min of {args.repeats} rounds (fwd+bwd: "
              f"{max(2, args.repeats // 2)}), {time.perf_counter() - t0:.0f} s")
    print(header)
    print(f"| {'shape':<15} | {'mode':<7} | {'case':<54} | {'ms':>9} | {'CPU ms/thr':>10} | {'x budget 1':>10} "
          f"| {'FLOPs':>5} | {'R̄':>5} | {'target':<36} | met |")
    print(f"|{'-' * 17}|{'-' * 9}|{'-' * 56}|{'-' * 11}|{'-' * 12}|{'-' * 12}|{'-' * 7}|{'-' * 7}|{'-' * 38}|-----|")
    for r in rows:
        f = lambda v, p: "" if v is None else f"{v:.{p}f}"  # noqa: E731
        met = "" if r.met is None else ("yes" if r.met else "no")
        print(f"| {r.shape:<15} | {r.mode:<7} | {r.case:<54} | {r.ms:9.2f} | {f(r.cpu_ms_per_thread, 1):>10} "
              f"| {f(r.speedup_vs_budget1, 2):>10} | {f(r.flops_ratio, 2):>5} | {f(r.mean_resolution, 2):>5} "
              f"| {r.target:<36} | {met:<3} |")
    if args.json:
        table = {"header": header, "rows": [asdict(r) for r in rows]}
        atomic_write_bytes(args.json, json.dumps(table, indent=2).encode())  # never half-written


if __name__ == "__main__":
    main()
