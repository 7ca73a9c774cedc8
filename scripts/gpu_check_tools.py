#!/usr/bin/env python
"""The Python steps of ``scripts/gpu_check.sh`` (one subcommand each; see that script).

    env --json PATH          the machine: GPU, driver, torch/CUDA, nvcc, free memory, packages (no GPU: says so)
    arch                     TORCH_CUDA_ARCH_LIST for the visible GPU ("9.0" on an H100/H200; empty without one)
    build [--dry-run]        compile the CUDA and CPU scan extensions through tiling._build (its names and flags),
                             compiler output shown; exit 1 if the CUDA one does not build
    scan-once                one small forward + backward of the CUDA scan (the compute-sanitizer's driver)
    profile-once             the scan at the goal shape, bf16 (8, 1536, 4096, 16): forward at R = 1 and 0.25,
                             forward + backward at R = 1 (ncu's driver)
    train-summary DIR...     bpb against training bytes of scripts/train_text.py runs, one table
    summary --work W --out OUTDIR   the steps, what is missing and the issue's goals as ratios from this run's
                             JSONs -> OUTDIR/summary.txt, summary.json (printed)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "numpy", "triton", "transformers", "hypothesis", "pytest", "safetensors", "tqdm", "scipy",
            "matplotlib", "einops", "ninja", "packaging")


def run_text(cmd: list[str]) -> str:
    """stdout+stderr of ``cmd`` (first lines), or why it did not run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({cmd[0]}: {type(e).__name__}: {e})"


def cmd_env(args) -> int:
    import torch
    from torch.utils import cpp_extension

    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "CUDA_HOME": cpp_extension.CUDA_HOME,
                  "packages": {}}
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    nvcc = shutil.which("nvcc") or (cpp_extension.CUDA_HOME and str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"))
    info["nvcc"] = run_text([nvcc, "--version"]).splitlines()[-1] if nvcc and Path(nvcc).exists() else None
    for tool in ("ninja", "compute-sanitizer", "ncu", "nvidia-smi"):
        info[f"which_{tool}"] = shutil.which(tool)
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.free,"
                                       "clocks.sm,clocks.max.sm,power.limit", "--format=csv,noheader"])
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                       "l2_mb": round(getattr(p, "L2_cache_size", 0) / 2**20, 1), "total_gib": round(total / 2**30, 2),
                       "free_gib": round(free / 2**30, 2), "count": torch.cuda.device_count()}
    for k, v in info.items():
        if k != "packages":
            print(f"{k}: {v}")
    print("packages: " + ", ".join(f"{k} {v or '-'}" for k, v in info["packages"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    return 0


def cmd_arch(args) -> int:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        print(f"{major}.{minor}")
    return 0


def cmd_build(args) -> int:
    """Both extensions through tiling._build's own loaders (one source of names and flags), cpp_extension
    made verbose so the compiler's output reaches the log."""
    from torch.utils import cpp_extension

    from tiling import _build

    if args.dry_run:
        for label, sources in (("CUDA", ["scan_cuda.cpp", "scan_fwd.cu", "scan_bwd.cu"]), ("CPU", ["scan_cpu.cpp"])):
            missing = [s for s in sources if not (_build.KERNEL_DIR / s).is_file()]
            print(f"would build the {label} scan extension from {', '.join(sources)} in {_build.KERNEL_DIR}"
                  f" (tiling._build.load_{label.lower()}_extension){'; MISSING ' + ', '.join(missing) if missing else ''}")
        print(f"  TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(unset)')} "
              f"TORCH_EXTENSIONS_DIR={os.environ.get('TORCH_EXTENSIONS_DIR', '(unset)')} "
              f"MAX_JOBS={os.environ.get('MAX_JOBS', '(unset)')}")
        return 0
    load = cpp_extension.load

    def verbose_load(*a, **kw):
        kw["verbose"] = True
        return load(*a, **kw)

    cpp_extension.load = verbose_load
    status = 0
    for label, loader in (("CUDA", _build.load_cuda_extension), ("CPU", _build.load_cpu_extension)):
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ext = loader()
        for w in caught:
            print(f"warning: {w.message}", flush=True)
        ok = ext is not None
        print(f"build {label}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s"
              f"{' (' + ext.__file__ + ')' if ok else ''}", flush=True)
        status |= (not ok) if label == "CUDA" else 0
    return status


def cmd_scan_once(args) -> int:
    """Small forward + backward of the CUDA scan in float32 and bf16, at R = 1 and on a random plan
    (ragged last tile, fewer state dims, grouped B/C, every optional input): what the sanitizer watches."""
    import torch

    from tiling import _build
    from tiling.ops import adaptive_selective_scan

    if not torch.cuda.is_available() or _build.load_cuda_extension() is None:
        print("error: no CUDA device or the CUDA extension did not load: the sanitizer would watch the reference",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "tests"))
    from reference.scan_inputs import make, run  # the tests' inputs and their all-outputs loss

    for (batch, dim, L, N, G, T, seed) in ((2, 24, 130, 16, None, 32, 1), (1, 18, 77, 5, 3, 16, 2)):
        t, kw = make(batch, dim, L, N, G, T, seed)
        for dtype in (torch.float32, torch.bfloat16):
            for full in (True, False):
                tt = {k: (None if v is None else v.to("cuda", dtype if k in ("u", "delta", "B", "C", "z")
                                                     else torch.float32)) for k, v in t.items()}
                k2 = dict(kw, resolution=(torch.ones_like(kw["resolution"]) if full else kw["resolution"]).to(
                    "cuda", torch.float32), state_dims=kw["state_dims"].to("cuda"))
                out, grads = run(adaptive_selective_scan, tt, k2)
                torch.cuda.synchronize()
                bad = [k for k, v in {**out, **grads}.items() if not torch.isfinite(v.float()).all()]
                print(f"scan b{batch} d{dim} L{L} N{N} G{G} T{T} {str(dtype).split('.')[-1]} "
                      f"{'R=1' if full else 'random plan'}: {'ok' if not bad else 'NON-FINITE ' + ', '.join(bad)}")
                if bad:
                    return 1
    return 0


def cmd_train_summary(args) -> int:
    for run in args.runs:
        row_file = run / "row.json"
        if not row_file.is_file():
            print(f"{run}: no row.json (the run did not finish)")
            continue
        row = json.loads(row_file.read_text())
        print(f"{row.get('row', run.name)}: test bpb {row.get('test_bpb', float('nan')):.3f} on "
              f"{row.get('test_bytes')} bytes, {row.get('train_bytes', 0) / 1e6:.2f} M training bytes in "
              f"{row.get('train_seconds', float('nan')):.0f} s, mean R {row.get('test_mean_resolution')}")
        print("| step | training bytes | train s | validation bpb | mean R |")
        print("|---|---|---|---|---|")
        for p in row.get("validation_curve", []):
            print(f"| {p['step']} | {p['bytes']} | {p['train_seconds']:.0f} | {p['bpb']:.3f} "
                  f"| {p.get('mean_resolution')} |")
    return 0


def cmd_profile_once(args) -> int:
    """The kernels ncu profiles, in this order: forward R = 1, forward R = 0.25, forward and backward R = 1."""
    import torch

    from tiling import _build
    from tiling.ops import adaptive_selective_scan

    if not torch.cuda.is_available() or _build.load_cuda_extension() is None:
        print("error: no CUDA device or the CUDA extension did not load", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_scan import inputs

    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    t = {k: (v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v)
         for k, v in inputs(*GOAL_SHAPE, "cuda").items()}
    with torch.no_grad():
        for r in (1.0, 0.25):
            adaptive_selective_scan(*(t[k] for k in order), True, resolution=r)
    leaves = {k: v.detach().requires_grad_() for k, v in t.items()}
    adaptive_selective_scan(*(leaves[k] for k in order), True, resolution=1.0).float().sum().backward()
    torch.cuda.synchronize()
    print(f"profiled shape {GOAL_SHAPE} bf16: forward R=1, forward R=0.25, forward+backward R=1")
    return 0


#: the shape of the issue's speed goals in bench_scan's CUDA rows
GOAL_SHAPE = (8, 1536, 4096, 16)
GOAL_SCAN = "b8 d1536 L4096 N16 bfloat16"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def goal(name: str, num: float | None, den: float | None, target: float, source: str) -> dict:
    """``num / den`` against ``target`` (None where a figure is missing)."""
    value = None if num is None or den is None or den <= 0 else num / den
    return {"goal": name, "value": value, "target": target, "met": None if value is None else value >= target,
            "from": source}


def scan_goals(work: Path) -> list[dict]:
    """bf16 (8, 1536, 4096, 16): the kernel against mamba_ssm, this run's figures where it ran, else those
    measured elsewhere (bench_scan.CUDA_SHAPES: H100, mamba_ssm 2.3.2)."""
    import torch

    bs = read_json(work / "bench_scan.json")
    rows = {r["case"]: r["ms"] for r in (bs or {}).get("rows", []) if r["shape"] == GOAL_SCAN}
    kernel = {"f1": rows.get("kernel forward, R = 1"), "f4": rows.get("kernel forward, R = 0.25"),
              "fb1": next((v for c, v in rows.items() if c.startswith("kernel forward + backward, R = 1")), None),
              "fb4": rows.get("kernel forward + backward, R = 0.25")}
    m_f = rows.get("mamba_ssm selective_scan_fn, forward (this run)")
    m_fb = rows.get("mamba_ssm forward + backward (this run)")
    source = "mamba_ssm this run (bench_scan)"
    peer = read_json(work / "peer_bench.json")
    if m_f is None and peer:
        r = next((r for r in peer["rows"] if r["shape"] == GOAL_SCAN), None)
        if r:
            m_f, m_fb, source = r["fwd_ms"], r["fwd_bwd_ms"], "mamba_ssm this run (peer bench)"
    if m_f is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_scan import CUDA_SHAPES

        m_f, m_fb = CUDA_SHAPES[(*GOAL_SHAPE, torch.bfloat16)]
        source = "mamba_ssm 2.3.2 on an H100, MEASURED ELSEWHERE (unscaled)"
    return [goal("scan bf16 forward R=1: mamba_ssm / kernel", m_f, kernel["f1"], 1.5, source),
            goal("scan bf16 fwd+bwd R=1: mamba_ssm / kernel", m_fb, kernel["fb1"], 1.5, source),
            goal("scan bf16 forward R=0.25: mamba_ssm (R=1) / kernel", m_f, kernel["f4"], 3.5, source),
            goal("scan bf16 fwd+bwd R=0.25: mamba_ssm (R=1) / kernel", m_fb, kernel["fb4"], 3.5, source)]


def layer_goals(work: Path) -> list[dict]:
    bl = read_json(work / "bench_layer.json")
    rows = {(r["shape"], r["mode"], r["case"]): r["ms"] for r in (bl or {}).get("rows", [])}
    out = []
    for shape in sorted({k[0] for k in rows}) or ["(not measured)"]:
        for mode in ("fwd", "fwd+bwd"):
            for policy in ("uniform", "adaptive"):
                out.append(goal(f"block {shape} {mode}: budget 1 / {policy} 0.25",
                                rows.get((shape, mode, "block scope, budget 1")),
                                rows.get((shape, mode, f"block scope, {policy}, budget 0.25")), 3.0, "bench_layer"))
    return out


def lm_goals(work: Path) -> list[dict]:
    """The LM's prefill at 0.25 against mamba@1 of the same width (bench_text's ``x`` of the 1 × 1024 cell)."""
    bt = read_json(work / "bench_text.json")
    rows = [r for r in (bt or {}).get("rows", []) if abs(r["budget"] - 0.25) < 1e-9]
    out = []
    for r in rows:
        cell = (r.get("cells") or {}).get("prefill1") or {}
        out.append(goal(f"LM prefill at 0.25 / mamba@1: d{r['d_model']} {r['row']}", cell.get("x"), 1.0, 3.0,
                        "bench_text"))
    return out or [goal("LM prefill at 0.25 / mamba@1", None, None, 3.0, "bench_text (not measured)")]


def cmd_summary(args) -> int:
    work, out = args.work, args.out
    steps = []
    if (work / "steps.tsv").is_file():
        for line in (work / "steps.tsv").read_text().splitlines():
            step, name, status, seconds, note = (line.split("\t") + [""] * 5)[:5]
            steps.append({"step": step, "name": name, "status": status, "seconds": int(seconds or 0), "note": note})
    missing = [m for m in (work / "missing.txt").read_text().splitlines() if m] if (work / "missing.txt").is_file() else []
    env = read_json(work / "env.json") or {}
    goals = scan_goals(work) + layer_goals(work) + lm_goals(work) if args.mode == "gpu" else []
    peer = read_json(work / "peer_bench.json")
    gpu = env.get("gpu", {}).get("name", "no GPU")
    lines = [f"GPU check summary: mode {args.mode}, {args.elapsed} s of {args.deadline} s, {gpu}, "
             f"torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), nvcc {env.get('nvcc')}",
             "| step | what | status | s | note |", "|---|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['name']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in steps]
    lines += [f"MISSING: {m}" for m in missing] or ["nothing missing"]
    if peer:
        lines.append(f"peer: selective_scan_fn computes tiling's op at R = 1: {'yes' if peer['same_function'] else 'NO'} "
                     f"(forward {peer['err_forward']:.1e}, du {peer['err_du']:.1e})")
    if goals and "ELSEWHERE" in goals[0]["from"]:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_scan import CUDA_SHAPES

        lines.append("mamba_ssm not timed in this run; its figures MEASURED ELSEWHERE (mamba_ssm 2.3.2, H100 80GB HBM3, "
                     "unscaled), ms forward / forward + backward: " + "; ".join(
                         f"{str(k[4]).split('.')[-1]} {k[:4]} {f} / {fb}" for k, (f, fb) in CUDA_SHAPES.items()))
    if goals:
        lines += ["Goals (issue 25), ratios of this run's figures (a ratio > target: faster by that factor):",
                  "| goal | value | target | met | from |", "|---|---|---|---|---|"]
        lines += [f"| {g['goal']} | {'—' if g['value'] is None else format(g['value'], '.2f')} | {g['target']} "
                  f"| {'—' if g['met'] is None else ('yes' if g['met'] else 'no')} | {g['from']} |" for g in goals]
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps({"mode": args.mode, "elapsed_s": args.elapsed, "deadline_s": args.deadline,
                                                  "env": env, "steps": steps, "missing": missing, "goals": goals,
                                                  "peer": peer}, indent=2))
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env").add_argument("--json", type=str, default=None)
    sub.add_parser("arch")
    sub.add_parser("build").add_argument("--dry-run", action="store_true")
    sub.add_parser("scan-once")
    sub.add_parser("profile-once")
    sub.add_parser("train-summary").add_argument("runs", type=Path, nargs="+")
    sm = sub.add_parser("summary")
    sm.add_argument("--work", type=Path, required=True)
    sm.add_argument("--out", type=Path, required=True)
    sm.add_argument("--mode", choices=["gpu", "dry", "check"], required=True)
    sm.add_argument("--elapsed", type=int, default=0)
    sm.add_argument("--deadline", type=int, default=0)
    args = ap.parse_args(argv)
    return {"env": cmd_env, "arch": cmd_arch, "build": cmd_build, "scan-once": cmd_scan_once,
            "profile-once": cmd_profile_once,
            "train-summary": cmd_train_summary,
            "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
