#!/usr/bin/env python
"""Benchmark of the adaptive selective scan (tiling.ops.adaptive_selective_scan).

Prints one table of times and ratios measured in one run: the fused kernel at resolution 1 and
0.25 (forward, forward + backward) against two sequential PyTorch baselines: a float32 time loop
of Mamba's recurrence (what CPU users of Mamba run today: mamba_ssm has no CPU kernel) and the
op's float64 reference ``tiling.ops.adaptive_selective_scan_ref`` (a loop over segments); and,
optionally, HF transformers' MambaMixer on its PyTorch path (the whole layer). Times are the minimum over
``--repeats`` runs. The machine may be shared: the load average is printed and, for CPU rows,
next to the wall time the table gives the process CPU time divided by the number of torch
threads, a load-independent estimate of the wall time on an idle machine (the kernel's work is
split evenly over the threads).

    python scripts/bench_scan.py [--device cpu] [--repeats 15] [--json PATH] [--no-hf]

Rows are produced per device by the functions registered in ``CASES``; a device adds its rows
by registering a function ``(args) -> list[Row]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tiling.ops import adaptive_selective_scan, adaptive_selective_scan_ref
from tiling.train.storage import atomic_write_json

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
    cpu_ms_per_thread: float | None = None  # CPU rows: process CPU time / torch threads
    speedup_vs_reference: float | None = None  # CPU rows: vs the float64 reference, same input


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_ms(fn: Callable[[], object], repeats: int, device: str) -> tuple[float, float]:
    """(minimum wall ms, minimum process-CPU ms / torch threads) over ``repeats`` runs after a warm-up."""
    fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * min(wall), 1e3 * min(cpu) / torch.get_num_threads()


def best_ms_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """``best_ms`` for several cases run in interleaved rounds (one run of each case per round), so
    that on a shared machine every case gets the same chance of a quiet moment."""
    for fn in fns.values():
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (1e3 * min(wall[k]), 1e3 * min(cpu[k]) / torch.get_num_threads()) for k in fns}


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


def hf_mixer_ms(batch, dim, L, N, repeats) -> tuple[float, float] | None:
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
            seq = best_ms(lambda: sequential_scan_torch(*(t[k] for k in order)), 2, "cpu")
            ref = best_ms(lambda: adaptive_selective_scan_ref(*(t[k] for k in order), True), 1, "cpu")
        rows.append(Row("cpu", shape, "sequential PyTorch loop, forward", seq[0], 1.0, "", None, seq[1],
                        ref[0] / seq[0]))
        rows.append(Row("cpu", shape, "float64 reference (_ref), forward", ref[0], seq[0] / ref[0], "", None, ref[1], 1.0))
        if args.hf and (batch, dim) == (1, 1536):
            hf = hf_mixer_ms(batch, dim, L, N, 1)
            if hf is not None:
                rows.append(Row("cpu", shape, "HF MambaMixer, PyTorch path (whole layer)", hf[0], seq[0] / hf[0], "",
                                None, hf[1]))
        def no_grad(fn):
            def run():
                with torch.no_grad():
                    return fn()
            return run

        res = best_ms_interleaved({"f1": no_grad(lambda: fwd(1.0)), "f4": no_grad(lambda: fwd(0.25)),
                                   "fb1": lambda: fwd_bwd(1.0), "fb4": lambda: fwd_bwd(0.25)}, args.repeats)
        f1, f4, fb1, fb4 = res["f1"], res["f4"], res["fb1"], res["fb4"]
        # targets are judged on the wall time (see the CPU column when the machine is shared)
        rows += [
            Row("cpu", shape, "kernel forward, R = 1", f1[0], seq[0] / f1[0], "<= 30 ms, >= 40x ref",
                f1[0] <= 30 and ref[0] / f1[0] >= 40, f1[1], ref[0] / f1[0]),
            Row("cpu", shape, "kernel forward + backward, R = 1", fb1[0], seq[0] / fb1[0], "<= 120 ms", fb1[0] <= 120,
                fb1[1], ref[0] / fb1[0]),
            Row("cpu", shape, "kernel forward, R = 0.25", f4[0], seq[0] / f4[0], "<= 15 ms", f4[0] <= 15, f4[1],
                ref[0] / f4[0]),
            Row("cpu", shape, "kernel forward + backward, R = 0.25", fb4[0], seq[0] / fb4[0], "", None, fb4[1],
                ref[0] / fb4[0]),
        ]
    return rows


# --- CUDA rows (owner: the CUDA engineer; issue #5) ---
#: (batch, dim, L, N, dtype) -> mamba_ssm 2.3.2 selective_scan_fn (ms) forward, forward + backward, measured on
#: an H100 80GB HBM3 (torch 2.11, CUDA 13, Triton do_bench median); the kernel targets are 1.5x faster.
CUDA_SHAPES = {
    (8, 1536, 4096, 16, torch.bfloat16): (0.885, 4.83),
    (8, 1536, 4096, 16, torch.float32): (1.87, 6.68),
    (4, 2048, 16384, 16, torch.bfloat16): (2.80, 13.5),
    (1, 1536, 65536, 16, torch.float32): (3.96, 13.7),
}
#: absolute targets of issue #5 (ms) where they are tighter than 1/1.5 of mamba_ssm's time
CUDA_TARGETS = {(8, 1536, 4096, 16, torch.bfloat16): {"fwd": 0.50, "fwd_bwd": 3.0, "fwd_r025": 0.25},
                (8, 1536, 4096, 16, torch.float32): {"fwd": 1.0}}


def cuda_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median time (ms) of ``fn`` over ``repeats`` runs timed with CUDA events, after two warm-ups."""
    fn()
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def cuda_rows(args) -> list[Row]:
    """The CUDA kernel on the visible GPU: forward and forward + backward at R = 1 and 0.25 against the
    sequential PyTorch loop on the same GPU (ratio column) and, when installed, mamba_ssm measured in the
    same run; else mamba_ssm's reference H100 figures set the targets. Peak memory of forward + backward
    above the inputs is given in the case text."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        selective_scan_fn = None
    rows: list[Row] = []
    dev = "cuda"
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    for (batch, dim, L, N, dtype), (m_f, m_fb) in tqdm(CUDA_SHAPES.items(), desc="shapes"):
        shape = f"b{batch} d{dim} L{L} N{N} {str(dtype).split('.')[-1]}"
        t = inputs(batch, dim, L, N, dev)
        t = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in t.items()}
        tgt = CUDA_TARGETS.get((batch, dim, L, N, dtype), {})

        def fwd(R, fn=adaptive_selective_scan, t=t):
            return fn(*(t[k] for k in order), True, resolution=R)

        def fwd_bwd(R, t=t):
            leaves = {k: v.detach().requires_grad_() for k, v in t.items()}
            fwd(R, t=leaves).float().sum().backward()

        with torch.no_grad():
            seq = cuda_ms(lambda: sequential_scan_torch(*(t[k].float() for k in order)), 1)
        rows.append(Row(dev, shape, "sequential PyTorch loop on the GPU, forward", seq, 1.0, "", None))
        if selective_scan_fn is not None:
            def mamba(bwd, t=t):
                leaves = {k: v.detach().requires_grad_(bwd) for k, v in t.items()}
                y = selective_scan_fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                      leaves["D"], leaves["z"], leaves["delta_bias"], delta_softplus=True)
                if bwd:
                    y.float().sum().backward()
            m_f = cuda_ms(lambda: mamba(False), args.repeats)
            m_fb = cuda_ms(lambda: mamba(True), args.repeats)
            rows.append(Row(dev, shape, "mamba_ssm selective_scan_fn, forward (this run)", m_f, seq / m_f, "", None))
            rows.append(Row(dev, shape, "mamba_ssm forward + backward (this run)", m_fb, seq / m_fb, "", None))
        with torch.no_grad():
            f1 = cuda_ms(lambda: fwd(1.0), args.repeats)
            f4 = cuda_ms(lambda: fwd(0.25), args.repeats)
        fb1 = cuda_ms(lambda: fwd_bwd(1.0), args.repeats)
        fb4 = cuda_ms(lambda: fwd_bwd(0.25), args.repeats)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd(1.0)
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        lim_f = min(m_f / 1.5, tgt.get("fwd", float("inf")))
        lim_fb = min(m_fb / 1.5, tgt.get("fwd_bwd", float("inf")))
        rows += [
            Row(dev, shape, "kernel forward, R = 1", f1, seq / f1, f"<= {lim_f:.3g} ms", f1 <= lim_f),
            Row(dev, shape, f"kernel forward + backward, R = 1 (peak +{peak_mb:.0f} MB)", fb1, seq / fb1,
                f"<= {lim_fb:.3g} ms", fb1 <= lim_fb),
            Row(dev, shape, "kernel forward, R = 0.25", f4, seq / f4,
                f"<= {tgt['fwd_r025']:.3g} ms" if "fwd_r025" in tgt else "",
                (f4 <= tgt["fwd_r025"]) if "fwd_r025" in tgt else None),
            Row(dev, shape, "kernel forward + backward, R = 0.25", fb4, seq / fb4, "", None),
        ]
    return rows


#: device name -> function producing that device's rows
CASES: dict[str, Callable[[argparse.Namespace], list[Row]]] = {"cpu": cpu_rows, "cuda": cuda_rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=sorted(CASES))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    ap.add_argument("--no-hf", dest="hf", action="store_false", help="skip the HF MambaMixer row")
    args = ap.parse_args()
    load = os.getloadavg()
    rows = CASES[args.device](args)
    where = (f"{torch.cuda.get_device_name()}, bf16/fp32 rows as labelled" if args.device == "cuda" else
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, float32")
    header = (f"adaptive scan benchmark — {where}, torch {torch.__version__}, "
              f"load average at start {load[0]:.2f} (min of {args.repeats} runs)")
    print(header)
    print(f"| {'shape':<20} | {'case':<42} | {'ms':>9} | {'CPU ms/thr':>10} | {'× sequential':>12} "
          f"| {'× ref':>6} | {'target':<20} | met |")
    print(f"|{'-' * 22}|{'-' * 44}|{'-' * 11}|{'-' * 12}|{'-' * 14}|{'-' * 8}|{'-' * 22}|-----|")
    for r in rows:
        sp = "" if r.speedup_vs_sequential is None else f"{r.speedup_vs_sequential:.1f}"
        met = "" if r.met is None else ("yes" if r.met else "no")
        cpu = "" if r.cpu_ms_per_thread is None else f"{r.cpu_ms_per_thread:.1f}"
        sr = "" if r.speedup_vs_reference is None else f"{r.speedup_vs_reference:.1f}"
        print(f"| {r.shape:<20} | {r.case:<42} | {r.ms:9.3f} | {cpu:>10} | {sp:>12} | {sr:>6} | {r.target:<20} "
              f"| {met:<3} |")
    if args.json:
        atomic_write_json(args.json, {"header": header, "rows": [asdict(r) for r in rows]}, indent=2)


if __name__ == "__main__":
    main()
