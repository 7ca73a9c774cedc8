"""Time `infogeo analyse` by stage on a 128-token text, all 6 layers x 12 heads (issue #7: <= 30 s),
or (``--model tiled-lm``) on a 512-byte text through a 6-layer, d 384 TiledLM with random weights,
all layers, implicit attention and predictive density included (issue #17: <= 30 s).

Prints one table measured in one run:
  * the breakdown of :func:`tiling.workflows.analysis.analyse` by stage (wall seconds, share), plus model
    loading and writing the report (json, npz, six figures, md, html);
  * two fast-path-vs-reference ratios behind the design choices of ``docs/analysis.md``:
    the pulled-back metric via the small similar matrix Y = Lᵀ(AAᵀ)L vs forming
    G = Σ_h A_hᵀ M_h A_h (n x d x d) explicitly, and Ollivier–Ricci curvature on the head-averaged
    graph (one per layer) vs on every head of that layer.
Wall time on a shared machine depends on the load: the 1-minute load average and the process
CPU time are printed alongside.

    .venv/bin/python scripts/bench_analyse.py [--tokens 128] [--threads N] [--json PATH]
    .venv/bin/python scripts/bench_analyse.py --model tiled-lm [--tokens 512] [--groups 8] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from tiling.workflows import analysis
from infogeo.curvature import ollivier_ricci
from infogeo.fisher import attention_row_metric, effective_dimension
from infogeo.graph import TokenGraph
from tiling.train.storage import atomic_write_json
from tiling.workflows.models import attention_projections, load_model

DEMO = Path(__file__).resolve().parents[1] / "infogeo" / "data" / "demo.txt"


def _explicit_pullback(x, proj):
    """Reference: G = Σ_h A_hᵀ M_h A_h formed per token, then trace and effective dimension."""
    W = proj.query.weight.detach().double()
    q = torch.nn.functional.linear(x, W, proj.query.bias.detach().double())
    k = torch.nn.functional.linear(x, proj.key.weight.detach().double(), proj.key.bias.detach().double())
    H, dh = proj.n_heads, proj.head_dim
    G = torch.zeros(x.shape[0], x.shape[1], x.shape[1], dtype=torch.float64)
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        M = attention_row_metric(q[:, sl], k[:, sl], scale=proj.scaling)
        G += W[sl].T @ M @ W[sl]
    return torch.diagonal(G, dim1=-2, dim2=-1).sum(-1), effective_dimension(0.5 * (G + G.transpose(-1, -2)))


def _bench_mamba(args) -> int:
    """The Mamba row of issue #17: a TiledLM checkpoint (6 layers, d 384, expand 1, N 16, random
    weights) written to a temporary file, loaded by tiling.workflows.models.load_model, analysed and reported."""
    from tiling.train.textmodel import build_model, model_config, save_text_checkpoint

    torch.manual_seed(0)
    rows = []
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        lm = build_model(model_config("full", 1.0, d_model=args.d_model, n_layers=args.layers))
        ckpt = save_text_checkpoint(Path(tmp) / "lm.safetensors", lm, configuration="full", budget=1.0, context=1024)
        t0 = time.perf_counter()
        model, tok = load_model(ckpt, groups=args.groups)
        rows.append(("load model", time.perf_counter() - t0))
        text = DEMO.read_text()
        while len(text.encode()) < args.tokens:
            text += "\n" + DEMO.read_text()
        text = text.encode()[:args.tokens].decode("utf-8", "ignore")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0, c0 = time.perf_counter(), time.process_time()
            report = analysis.analyse(model, tok, text, progress=False)
            t_analyse, c_analyse = time.perf_counter() - t0, time.process_time() - c0
        for stage, sec in report.data["timings"].items():
            rows.append((f"  {stage}", sec))
        rows.append(("analyse (all stages)", t_analyse))
        t0, c0 = time.perf_counter(), time.process_time()
        analysis.save_report(report, Path(tmp) / "report")
        rows.append((f"write report + {len(list((Path(tmp) / 'report').glob('*.png')))} figures",
                     time.perf_counter() - t0))
        c_write = time.process_time() - c0
    total = rows[0][1] + t_analyse + rows[-1][1]
    cpu = time.process_time() - cpu0
    load = os.getloadavg()[0]
    ia = report.data["model"]["implicit_attention"]
    n = report.data["text"]["n_tokens"]
    print(f"infogeo analyse, TiledLM {args.layers} layers x d {args.d_model} (d_inner {ia['d_inner']}, N "
          f"{ia['state_size']}), {n} tokens, {ia['groups']} channel groups per layer, torch threads "
          f"{torch.get_num_threads()}, load average (1 min) {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'stage':<34}{'seconds':>10}{'share':>8}")
    for name, sec in rows:
        print(f"{name:<34}{sec:>10.3f}{sec / total:>8.1%}")
    print(f"{'total (load + analyse + write)':<34}{total:>10.3f}   budget 30 s: {'OK' if total <= 30 else 'OVER'}")
    print(f"process CPU seconds: analyse {c_analyse:.2f}, write {c_write:.2f}, whole run {cpu:.2f}")
    print(f"implicit attention reproduces the layers' outputs to {max(ia['reproduction_error']):.1e} (relative)")
    if args.json:
        atomic_write_json(args.json, {
            "model": "tiled-lm", "layers": args.layers, "d_model": args.d_model, "d_inner": ia["d_inner"],
            "tokens": n, "groups": ia["groups"], "load_average_1min": load, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "process_cpu_s": cpu, "analyse_cpu_s": c_analyse,
            "write_cpu_s": c_write, "stages": [{"stage": k.strip(), "seconds": v} for k, v in rows],
            "total_s": total, "reproduction_error_max": max(ia["reproduction_error"])}, indent=2)
    return 0


def main(argv=None) -> int:
    # long: the flags, then one timed stage per row of the printed table, in order
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["minilm", "tiled-lm"], default="minilm",
                    help="the bundled MiniLM encoder (default) or a random-weight TiledLM (issue #17)")
    ap.add_argument("--tokens", type=int, help="tokens of the benchmark text (default 128; tiled-lm: 512 bytes)")
    ap.add_argument("--layers", type=int, default=6, help="tiled-lm: layers (default 6)")
    ap.add_argument("--d-model", type=int, default=384, help="tiled-lm: d_model (default 384)")
    ap.add_argument("--groups", type=int, default=8, help="tiled-lm: channel groups (heads) per layer (default 8)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "tiled-lm":
        args.tokens = args.tokens or 512
        return _bench_mamba(args)
    args.tokens = args.tokens or 128

    rows = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    model, tok = load_model()
    rows.append(("load model", time.perf_counter() - t0))
    # the demo text, repeated if needed and truncated to exactly --tokens tokens
    text = DEMO.read_text()
    while len(tok(text)["input_ids"]) < args.tokens:
        text += "\n" + DEMO.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        report = analysis.analyse(model, tok, text, max_length=args.tokens, progress=False)
        t_analyse, c_analyse = time.perf_counter() - t0, time.process_time() - c0
    n = report.data["text"]["n_tokens"]
    for stage, sec in report.data["timings"].items():
        rows.append((f"  {stage}", sec))
    rows.append(("analyse (all stages)", t_analyse))
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        analysis.save_report(report, tmp)
        rows.append(("write report + 6 figures", time.perf_counter() - t0))
        c_write = time.process_time() - c0
    total = sum(s for name, s in rows if name in ("load model", "analyse (all stages)", "write report + 6 figures"))
    cpu = time.process_time() - cpu0

    # fast path vs reference, measured on layer 0 of the same text
    enc = tok(text, return_tensors="pt", truncation=True, max_length=args.tokens)
    proj = attention_projections(model)
    attn, _hidden, xs, _logits = analysis._forward(model, enc, proj)
    t0 = time.perf_counter()
    fast = analysis._pullback(xs[0], proj[0], attn[0])
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr_ref, eff_ref = _explicit_pullback(xs[0], proj[0])
    t_ref = time.perf_counter() - t0
    err = float(((fast["effective_dimension"] - eff_ref).abs() / eff_ref).max())
    p = report.data["params"]
    t0 = time.perf_counter()
    ollivier_ricci(TokenGraph.from_points(attn[0].mean(0), k=p["k"], kind="fisher_rao"), alpha=p["curvature_alpha"])
    t_mean = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in range(attn.shape[1]):
        ollivier_ricci(TokenGraph.from_points(attn[0, h], k=p["k"], kind="fisher_rao"), alpha=p["curvature_alpha"])
    t_heads = time.perf_counter() - t0

    load = os.getloadavg()[0]
    print(f"infogeo analyse, {n} tokens, {len(report.layers)} layers x {len(report.heads)} heads, "
          f"torch threads {torch.get_num_threads()}, load average (1 min) {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'stage':<34}{'seconds':>10}{'share':>8}")
    for name, sec in rows:
        print(f"{name:<34}{sec:>10.3f}{sec / total:>8.1%}")
    print(f"{'total (load + analyse + write)':<34}{total:>10.3f}   budget 30 s: {'OK' if total <= 30 else 'OVER'}")
    print(f"process CPU seconds: analyse {c_analyse:.2f}, write {c_write:.2f}, whole run so far {cpu:.2f}")
    print()
    print(f"{'fast path vs reference (layer 0)':<46}{'fast s':>9}{'ref s':>9}{'speed-up':>10}")
    print(f"{'pull-back: Y = Lᵀ(AAᵀ)L vs G formed':<46}{t_fast:>9.3f}{t_ref:>9.3f}{t_ref / t_fast:>9.1f}x"
          f"   (max rel. diff of eff. dim {err:.1e})")
    print(f"{'Ollivier–Ricci: head-averaged vs 12 heads':<46}{t_mean:>9.3f}{t_heads:>9.3f}{t_heads / t_mean:>9.1f}x")
    if args.json:
        out = {
            "tokens": n, "layers": len(report.layers), "heads": len(report.heads), "load_average_1min": load,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "process_cpu_s": cpu,
            "analyse_cpu_s": c_analyse, "write_cpu_s": c_write,
            "stages": [{"stage": name.strip(), "seconds": sec} for name, sec in rows], "total_s": total,
            "ratios": [
                {"name": "pullback_similar_vs_explicit", "fast_s": t_fast, "ref_s": t_ref, "speedup": t_ref / t_fast,
                 "max_rel_diff_effective_dimension": err},
                {"name": "ollivier_ricci_head_mean_vs_all_heads", "fast_s": t_mean, "ref_s": t_heads,
                 "speedup": t_heads / t_mean},
            ],
        }
        atomic_write_json(args.json, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
