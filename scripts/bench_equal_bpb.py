#!/usr/bin/env python
"""Deployment at equal quality (issue 24, goal (e)): the hourglass against plain Mamba of the same test bpb.

Reads the hourglass sweep's results (``docs/results/hourglass_lm.json``, :mod:`tiling.train.sweep`), pairs
every hourglass configuration with every plain Mamba configuration whose test bpb (the mean of its seeds)
lies within ``--tolerance`` (1 %), loads each configuration's first seed's checkpoint, and times both in
interleaved rounds (each round runs every case once, so a shared machine's quiet moments fall evenly):

``prefill``
    one forward of ``1 × --context`` test bytes (eval, no grad), at the row's budget;
``decode``
    ``step`` over ``--decode-steps`` test bytes from a fresh state, batch 1.

A cell is the median over ``--rounds`` rounds, in bytes per second; ``×`` is the hourglass' speed over the
plain model's. Goal (e): prefill ≥ 2× and decode ≥ 2×. FLOPs per byte (the sweep's, counted as run) are
printed beside them: at equal bpb the two models' costs are what decides the speed.

A checkpoint that is gone (the sweep's ``runs/`` folder is not kept) leaves its pairs untimed; the table
lists them. ``--rebuild-plain`` times a plain Mamba whose checkpoint is gone on a model of its row's shape
with fresh weights instead: its forward and step do the same work whatever the weights' values (no
data-dependent plan, at budget 1), and the rebuilt model must have the row's parameter count. An
hourglass is never rebuilt: where its boundaries fall depends on its trained weights.

    python scripts/bench_equal_bpb.py [--results docs/results/hourglass_lm.json] [--tolerance 0.01]
                                      [--rounds 7] [--threads 1] [--test-file PATH] [--rebuild-plain]
                                      [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_text import require_positive, timed_interleaved  # noqa: E402

from tiling.runtime import keep_freed_memory  # noqa: E402
from tiling.train.corpus import CorpusError, load_split  # noqa: E402
from tiling.train.storage import atomic_write_bytes  # noqa: E402
from tiling.train.sweep import build, equal_bpb_pairs, rows as sweep_rows  # noqa: E402
from tiling.train.text import TextInputError, as_byte_tensor, read_text_file  # noqa: E402
from tiling.train.textmodel import load_text_model, parameter_count  # noqa: E402

GOAL = 2.0  # × plain Mamba, prefill and decode


def configurations(rows: list[dict]) -> dict[str, dict]:
    """Each trained configuration (the row name without its seed): the mean test bpb of its seeds, its
    FLOPs per byte, budget and the checkpoint of its lowest seed."""
    out: dict[str, dict] = {}
    for r in sorted((r for r in rows if r.get("kind") == "trained"), key=lambda r: r["seed"]):
        c = out.setdefault(r["row"].rsplit("/s", 1)[0], {"bpb": [], "flops_per_byte": r["flops_per_byte"],
                                                         "budget": r["budget"], "checkpoint": r["checkpoint"],
                                                         "family": r.get("family"), "row": r})
        c["bpb"].append(r["test_bpb"])
    for c in out.values():
        c["bpb"] = sum(c["bpb"]) / len(c["bpb"])
    return out


def model_of(config: dict, rebuild_plain: bool, context: int) -> tuple[torch.nn.Module | None, str]:
    """``(model in eval mode, how it was made)`` of a configuration: its checkpoint (``"checkpoint"``), or where
    that is gone, a plain row's shape with fresh weights (``"rebuilt"``, with ``rebuild_plain``), else
    ``(None, why)``. ValueError where the rebuilt model's parameter count is not the row's."""
    path = Path(config["checkpoint"])
    if path.exists():
        return load_text_model(path)[0].eval(), "checkpoint"
    if config["family"] != "plain":
        return None, f"checkpoint {path} is gone (an hourglass is timed only as trained)"
    if not rebuild_plain:
        return None, f"checkpoint {path} is gone (--rebuild-plain times a plain row on its shape)"
    name = config["row"]["row"]
    spec = next((s for s in sweep_rows() if s["name"] == name), None)
    if spec is None:
        return None, f"checkpoint {path} is gone and {name} is not a row of the sweep"
    torch.manual_seed(0)
    model = build(spec, context)[0].eval()
    if parameter_count(model) != config["row"].get("params"):
        raise ValueError(f"{name} rebuilt has {parameter_count(model)} parameters, its row "
                         f"{config['row'].get('params')}: not the trained shape")
    return model, "rebuilt"


def runners(model, budget: float, text: torch.Tensor, steps: int) -> dict:
    x = text.view(1, -1)

    def prefill():
        with torch.no_grad():
            model(x, budget=budget)

    def decode():
        with torch.no_grad():
            state = model.allocate_inference_state(1)
            for t in range(steps):
                _, state = model.step(x[:, t], state, budget=budget)

    return {"prefill": prefill, "decode": decode}


def print_table(table: list[dict], untimed: list[dict], rebuilt: list[str]) -> None:
    """The pairs' table (markdown), the pairs not timed and why, the plain rows rebuilt, and each pair's verdict."""
    print("| hourglass | plain | bpb (hg / plain) | MFLOPs/B (hg / plain) | prefill B/s (hg / plain) | × | "
          "decode B/s (hg / plain) | × |")
    print("|---|---|---|---|---|---|---|---|")
    for e in table:
        pf, dc = e["prefill"], e["decode"]
        print(f"| {e['hourglass']} | {e['mamba']} | {e['bpb'][0]:.3f} / {e['bpb'][1]:.3f} | "
              f"{e['flops_per_byte'][0] / 1e6:.3f} / {e['flops_per_byte'][1] / 1e6:.3f} | "
              f"{pf['hourglass_bytes_per_s']:.0f} / {pf['mamba_bytes_per_s']:.0f} | {pf['x']:.2f} | "
              f"{dc['hourglass_bytes_per_s']:.0f} / {dc['mamba_bytes_per_s']:.0f} | {dc['x']:.2f} |")
    for e in untimed:
        print(f"not timed: {e['hourglass']} against {e['mamba']}: {e['why']}")
    if rebuilt:
        print("plain rows rebuilt on their shape with fresh weights (--rebuild-plain): " + ", ".join(rebuilt))
    for e in table:
        ok = e["prefill"]["met"] and e["decode"]["met"]
        print(f"goal (e) {e['hourglass']} against {e['mamba']}: prefill {e['prefill']['x']:.2f}×, decode "
              f"{e['decode']['x']:.2f}× (goal ≥ {GOAL:g}× each) — {'met' if ok else 'missed'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("docs/results/hourglass_lm.json"))
    ap.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"), help="prepared corpus (make corpus)")
    ap.add_argument("--test-file", type=Path, default=None, help="time on this UTF-8 file instead of the test split")
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative bpb difference of a pair (default 0.01)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--decode-steps", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the sweep)")
    ap.add_argument("--rebuild-plain", action="store_true",
                    help="time a plain row whose checkpoint is gone on its shape with fresh weights")
    ap.add_argument("--json", type=str, default=None, help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    require_positive(ap, args, ("context", "decode_steps", "rounds", "threads"))
    if not 0.0 <= args.tolerance < 1.0:
        ap.error(f"--tolerance must lie in [0, 1), got {args.tolerance}")
    if args.decode_steps > args.context:
        ap.error(f"--decode-steps must be at most --context ({args.context}), got {args.decode_steps}")
    try:
        rows = json.loads(args.results.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"--results {args.results}: not a sweep's results file ({e})")
    configs = configurations(rows)
    bpb = {family: {k: c["bpb"] for k, c in configs.items() if c["family"] == family}
           for family in ("hourglass", "plain")}
    todo = equal_bpb_pairs(bpb["hourglass"], bpb["plain"], args.tolerance)
    if not todo:
        ap.error(f"--results {args.results}: no hourglass and plain Mamba configurations within "
                 f"{args.tolerance:.1%} of each other's test bpb")
    try:
        text = as_byte_tensor(read_text_file(args.test_file) if args.test_file else load_split("test", args.corpus_dir))
    except (CorpusError, TextInputError) as e:
        ap.error(f"--test-file: {e}" if args.test_file else f"--corpus-dir: {e}")
    if text.numel() < args.context:
        ap.error(f"--context {args.context}: the text to time has {text.numel()} bytes")
    text = text[:args.context].to(torch.int64)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLIs do (tiling.runtime)
    fns, made = {}, {}
    for name in tqdm(sorted({k for pair in todo for k in pair}), desc="loading"):
        try:
            model, made[name] = model_of(configs[name], args.rebuild_plain, args.context)
        except ValueError as e:
            ap.error(f"--rebuild-plain: {e}")
        if model is None:
            continue
        for col, fn in runners(model, configs[name]["budget"], text, args.decode_steps).items():
            fns[(name, col)] = fn
    untimed = [{"hourglass": h, "mamba": p, "why": "; ".join(made[k] for k in (h, p) if (k, "prefill") not in fns)}
               for h, p in todo if (h, "prefill") not in fns or (p, "prefill") not in fns]
    todo = [(h, p) for h, p in todo if (h, "prefill") in fns and (p, "prefill") in fns]
    if not todo:
        ap.error(f"--results {args.results}: no pair can be timed ({untimed[0]['why']})")
    load, t0 = os.getloadavg(), time.perf_counter()
    timed = timed_interleaved(fns, args.rounds)
    nbytes = {"prefill": args.context, "decode": args.decode_steps}
    speed = {k: nbytes[k[1]] / wall for k, (wall, _) in timed.items()}
    table = []
    for h, p in todo:
        entry = {"hourglass": h, "mamba": p, "bpb": [configs[h]["bpb"], configs[p]["bpb"]],
                 "flops_per_byte": [configs[h]["flops_per_byte"], configs[p]["flops_per_byte"]],
                 "plain_weights": "trained" if made[p] == "checkpoint" else "fresh (rebuilt shape)"}
        for col in ("prefill", "decode"):
            x = speed[(h, col)] / speed[(p, col)]
            entry[col] = {"hourglass_bytes_per_s": speed[(h, col)], "mamba_bytes_per_s": speed[(p, col)], "x": x,
                          "met": x >= GOAL}
        table.append(entry)
    header = (f"Equal-bpb deployment (goal (e)) — {platform.processor() or platform.machine()}, {os.cpu_count()} "
              f"CPUs, {args.threads} thread(s), torch {torch.__version__}, prefill 1 × {args.context}, decode "
              f"{args.decode_steps} steps at batch 1, median of {args.rounds} interleaved rounds, load average at "
              f"start {load[0]:.2f}, {time.perf_counter() - t0:.0f} s")
    print(header)
    print_table(table, untimed, sorted({p for _, p in todo if made[p] == "rebuilt"}))
    if args.json:
        out = {"header": header, "command": " ".join(sys.argv), "tolerance": args.tolerance, "pairs": table,
               "not_timed": untimed}
        atomic_write_bytes(args.json, json.dumps(out, indent=2).encode())  # never half-written
    return 0


if __name__ == "__main__":
    sys.exit(main())
