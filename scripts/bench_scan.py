#!/usr/bin/env python
"""Benchmark of the adaptive selective scan (tiling.ops.adaptive_selective_scan).

Prints one table of times and ratios measured in one run: the fused kernel at resolution 1 and
0.25 (forward, forward + backward) against a sequential PyTorch loop of the same recurrence
(what CPU users of Mamba run today: mamba_ssm has no CPU kernel) and, optionally, HF
transformers' MambaMixer on its PyTorch path (the whole layer). Times are the minimum over
``--repeats`` runs (the machine may be shared; the load average is printed).

    python scripts/bench_scan.py [--device cpu] [--repeats 7] [--json PATH] [--no-hf]

Rows are produced per device by the functions registered in ``CASES``; a device adds its rows
by registering a function ``(args) -> list[Row]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tiling.ops import adaptive_selective_scan

SHAPES = [(1, 1536, 2048, 16), (4, 512, 1024, 16)]  # (batch, dim, L, N), float32


@dataclass
class Row:
    device: str
    shape: str
    case: str
    ms: float
    speedup_vs_sequential: float | None
    target: str
    met: bool | None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_ms(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Minimum wall time (ms) over ``repeats`` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def sequential_scan_torch(u, delta, A, B, C, D, z, delta_bias):
    """The selective scan as a time loop of PyTorch ops (float32), Mamba's equations:
    h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t, y ← y·silu(z)."""
    dt = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y * F.silu(z)


def inputs(batch, dim, L, N, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A = -torch.exp(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(dim, 1))  # Mamba's S4D-real init
    t = dict(u=r(batch, dim, L), delta=r(batch, dim, L) - 2.0, A=A, B=r(batch, N, L), C=r(batch, N, L), D=r(dim),
             z=r(batch, dim, L), delta_bias=0.1 * r(dim))
    return {k: v.to(device) for k, v in t.items()}


def hf_mixer_ms(batch, dim, L, N, repeats) -> float | None:
    """HF transformers MambaMixer in eval mode on the CPU (its PyTorch path), whole layer, d_inner = dim."""
    try:
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer
    except ImportError:
        return None
    cfg = MambaConfig(hidden_size=dim // 2, state_size=N, expand=2, conv_kernel=4, use_mambapy=False)
    mixer = MambaMixer(cfg, layer_idx=0).eval()
    x = torch.randn(batch, L, dim // 2)
    with torch.no_grad():
        return best_ms(lambda: mixer(x), repeats, "cpu")


def cpu_rows(args) -> list[Row]:
    rows: list[Row] = []
    for batch, dim, L, N in tqdm(SHAPES, desc="shapes"):
        shape = f"b{batch} d{dim} L{L} N{N}"
        t = inputs(batch, dim, L, N, "cpu")
        order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

        def fwd(R, t=t):
            return adaptive_selective_scan(*(t[k] for k in order), True, resolution=R)

        def fwd_bwd(R, t=t):
            leaves = {k: v.detach().requires_grad_() for k, v in t.items()}
            adaptive_selective_scan(*(leaves[k] for k in order), True, resolution=R).sum().backward()

        with torch.no_grad():
            seq = best_ms(lambda: sequential_scan_torch(*(t[k] for k in order)), max(1, args.repeats // 3), "cpu")
        rows.append(Row("cpu", shape, "sequential PyTorch loop, forward", seq, 1.0, "", None))
        if args.hf and (batch, dim) == (1, 1536):
            hf = hf_mixer_ms(batch, dim, L, N, 1)
            if hf is not None:
                rows.append(Row("cpu", shape, "HF MambaMixer, PyTorch path (whole layer)", hf, seq / hf, "", None))
        with torch.no_grad():
            f1 = best_ms(lambda: fwd(1.0), args.repeats, "cpu")
            f4 = best_ms(lambda: fwd(0.25), args.repeats, "cpu")
        fb1 = best_ms(lambda: fwd_bwd(1.0), args.repeats, "cpu")
        fb4 = best_ms(lambda: fwd_bwd(0.25), args.repeats, "cpu")
        rows += [
            Row("cpu", shape, "kernel forward, R = 1", f1, seq / f1, "<= 30 ms and >= 40x", f1 <= 30 and seq / f1 >= 40),
            Row("cpu", shape, "kernel forward + backward, R = 1", fb1, seq / fb1, "<= 120 ms", fb1 <= 120),
            Row("cpu", shape, "kernel forward, R = 0.25", f4, seq / f4, "<= 15 ms", f4 <= 15),
            Row("cpu", shape, "kernel forward + backward, R = 0.25", fb4, seq / fb4, "", None),
        ]
    return rows


#: device name -> function producing that device's rows
CASES: dict[str, Callable[[argparse.Namespace], list[Row]]] = {"cpu": cpu_rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=sorted(CASES))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    ap.add_argument("--no-hf", dest="hf", action="store_false", help="skip the HF MambaMixer row")
    args = ap.parse_args()
    load = os.getloadavg()
    rows = CASES[args.device](args)
    header = (f"adaptive scan benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
              f"load average at start {load[0]:.2f} (min of {args.repeats} runs)")
    print(header)
    print(f"| {'shape':<20} | {'case':<42} | {'ms':>9} | {'× sequential':>12} | {'target':<20} | met |")
    print(f"|{'-' * 22}|{'-' * 44}|{'-' * 11}|{'-' * 14}|{'-' * 22}|-----|")
    for r in rows:
        sp = "" if r.speedup_vs_sequential is None else f"{r.speedup_vs_sequential:.1f}"
        met = "" if r.met is None else ("yes" if r.met else "no")
        print(f"| {r.shape:<20} | {r.case:<42} | {r.ms:9.1f} | {sp:>12} | {r.target:<20} | {met:<3} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header, "rows": [asdict(r) for r in rows]}, fh, indent=2)


if __name__ == "__main__":
    main()
