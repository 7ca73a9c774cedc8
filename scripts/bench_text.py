#!/usr/bin/env python
"""Speed of the trained byte-level LMs of the real-text sweep, every case measured in one run.

For each finished row of ``scripts/train_text.py --sweep`` (``runs/text_lm/*/row.json``) this loads
its checkpoint and times, in interleaved rounds (one run of each case per round, so that on a shared
machine every case gets the same chance of a quiet moment):

``prefill``
    one forward over ``--context`` bytes of the test split (batch ``--batch``), at the row's budget;
``decode``
    ``TiledLM.step`` over ``--decode-bytes`` bytes from a fresh state (the segments are those of
    real text); scan-scope models below budget 1 cannot step and get no decode time.

The full-resolution model is also timed tiled after the fact (``full@0.5`` ... : its own weights, every
layer at the budget), which gives the speed of an all-tiled model at budgets that no all-tiled row
was trained for. Columns: bytes/s from the minimum wall time over ``--rounds`` rounds, the process
CPU time per thread (load-independent on a shared machine), and both as ratios to ``full@1``.
Goals (issue "real text"): prefill at 0.25 ≥ 2.5× full resolution, step decoding at 0.25 ≥ 2×.

    python scripts/bench_text.py [--runs runs/text_lm] [--rounds 5] [--threads 1] [--json PATH]
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
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import best_ms_interleaved  # noqa: E402

from tiling.train.corpus import CorpusError, load_split  # noqa: E402
from tiling.train.text import TextInputError, as_byte_tensor, read_text_file  # noqa: E402
from tiling.train.textmodel import (build_model, load_text_model, model_config, parameter_count,  # noqa: E402
                                    read_text_meta)

AFTER_THE_FACT = (0.5, 0.35, 0.25)  # budgets at which full@1/s0 is also timed, tiled after training
GOALS = {"prefill": 2.5, "decode": 2.0}  # × full resolution at budget 0.25


@dataclass
class Row:
    case: str
    configuration: str
    budget: float
    full_resolution_layers: list
    prefill_bytes_per_s: float
    prefill_cpu_bytes_per_s: float
    decode_bytes_per_s: float | None
    decode_cpu_bytes_per_s: float | None
    prefill_x_full: float | None = None
    prefill_cpu_x_full: float | None = None
    decode_x_full: float | None = None
    decode_cpu_x_full: float | None = None


def can_step(model, budget: float) -> bool:
    return all(layer.scope == "block" or (model.layer_budget(k, budget) or layer.budget) >= 1.0
               for k, layer in enumerate(model.layers))


#: configurations whose plan does not depend on the weights: a row whose checkpoint is gone is timed
#: on fresh weights of its shape (the same work, to the operation)
WEIGHT_FREE_PLAN = ("full", "uniform")


def cases(runs: Path) -> list[tuple[str, Path | dict, float, dict]]:
    """``(case, checkpoint or model config, budget, row)``: each finished trained row at its budget,
    and the full model after the fact at :data:`AFTER_THE_FACT`. A row without its checkpoint is
    timed on fresh weights (the shapes of ``full@1/s0``'s model, checked by the parameter count) if its
    plan does not depend on them (:data:`WEIGHT_FREE_PLAN`), else skipped, with a line on stderr."""
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/row.json"))]
    rows = [r for r in rows if r.get("kind") == "trained"]
    full = next((r for r in rows if r["row"] == "full@1/s0" and Path(r["checkpoint"]).is_file()), None)
    if full is None:
        raise ValueError(f"--runs {runs}: no finished full@1/s0 row with its checkpoint (the reference of every ratio)")
    shape = read_text_meta(full["checkpoint"])["model"]
    out = []
    for row in rows:
        if Path(row["checkpoint"]).is_file():
            out.append((row["row"], Path(row["checkpoint"]), float(row["budget"]), row))
            continue
        why = "its plan depends on the weights"
        if row["configuration"] in WEIGHT_FREE_PLAN:
            lk = shape["layer_kwargs"]
            cfg = model_config(row["configuration"], row["budget"], d_model=shape["d_model"],
                               n_layers=shape["n_layers"], d_state=lk["d_state"], expand=lk["expand"],
                               tile_size=lk["tile_size"], full_resolution_layers=tuple(row["full_resolution_layers"]))
            if parameter_count(build_model(cfg)) == row["params"]:
                out.append((row["row"] + " (fresh weights)", cfg, float(row["budget"]), row))
                print(f"{row['row']}: checkpoint {row['checkpoint']} missing; timed on fresh weights of its shape",
                      file=sys.stderr)
                continue
            why = "its shape is not full@1/s0's"
        print(f"{row['row']}: checkpoint {row['checkpoint']} missing; not timed ({why})", file=sys.stderr)
    out.sort(key=lambda c: (c[0] != "full@1/s0", c[0]))
    out += [(f"full@{b:g}/s0 (tiled after training)", Path(full["checkpoint"]), b, full) for b in AFTER_THE_FACT]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/text_lm"), help="the sweep's output folder")
    ap.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"), help="prepared corpus (make corpus)")
    ap.add_argument("--test-file", type=Path, default=None, help="time on this UTF-8 file instead of the test split")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--decode-bytes", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the sweep)")
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    for name in ("context", "batch", "decode_bytes", "rounds", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    try:
        test = as_byte_tensor(read_text_file(args.test_file) if args.test_file else load_split("test", args.corpus_dir))
    except (CorpusError, TextInputError) as e:
        ap.error(f"--test-file: {e}" if args.test_file else f"--corpus-dir: {e}")
    need = args.context * args.batch
    if test.numel() < need:
        ap.error(f"--context × --batch = {need} bytes, the text to time has {test.numel()}")
    inp = test[:need].to(torch.int64).view(args.batch, args.context)
    try:
        todo = cases(args.runs)
    except ValueError as e:
        ap.error(str(e))

    prefill, decode, meta = {}, {}, {}
    for case, ckpt, budget, row in tqdm(todo, desc="loading"):
        model = build_model(ckpt).eval() if isinstance(ckpt, dict) else load_text_model(ckpt)[0]
        meta[case] = (row["configuration"], budget, list(row.get("full_resolution_layers", [])))

        def pre(model=model, budget=budget):
            with torch.no_grad():
                model(inp, budget=budget)
        prefill[case] = pre
        if can_step(model, budget):
            def dec(model=model, budget=budget):
                with torch.no_grad():
                    state = model.allocate_inference_state(args.batch)
                    for t in range(args.decode_bytes):
                        _, state = model.step(inp[:, t], state, budget=budget)
            decode[case] = dec
    load = os.getloadavg()
    t0 = time.perf_counter()
    both = {("prefill", k): f for k, f in prefill.items()} | {("decode", k): f for k, f in decode.items()}
    timed = best_ms_interleaved(both, args.rounds)

    def rate(kind, case, n):
        if (kind, case) not in timed:
            return None, None
        wall_ms, cpu_ms = timed[(kind, case)]
        return 1e3 * n / wall_ms, 1e3 * n / cpu_ms

    rows = []
    for case, *_ in todo:
        pw, pc = rate("prefill", case, need)
        dw, dc = rate("decode", case, args.decode_bytes * args.batch)
        rows.append(Row(case, *meta[case], pw, pc, dw, dc))
    ref = rows[0]
    ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
    for r in rows:
        r.prefill_x_full = ratio(r.prefill_bytes_per_s, ref.prefill_bytes_per_s)
        r.prefill_cpu_x_full = ratio(r.prefill_cpu_bytes_per_s, ref.prefill_cpu_bytes_per_s)
        r.decode_x_full = ratio(r.decode_bytes_per_s, ref.decode_bytes_per_s)
        r.decode_cpu_x_full = ratio(r.decode_cpu_bytes_per_s, ref.decode_cpu_bytes_per_s)
    header = (f"Byte-level LM speed — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, prefill {args.batch}×{args.context} "
              f"bytes, decode {args.decode_bytes} steps, min of {args.rounds} interleaved rounds, load average "
              f"at start {load[0]:.2f}, {time.perf_counter() - t0:.0f} s")
    print(header)
    f = lambda v, p=2: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    print("| case | outer full layers | prefill B/s | × full | CPU × full | decode B/s | × full | CPU × full |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.case} | {r.full_resolution_layers or '—'} | {f(r.prefill_bytes_per_s, 0)} | {f(r.prefill_x_full)} "
              f"| {f(r.prefill_cpu_x_full)} | {f(r.decode_bytes_per_s, 0)} | {f(r.decode_x_full)} "
              f"| {f(r.decode_cpu_x_full)} |")
    goals = []
    for kind, target in GOALS.items():
        at = [r for r in rows if abs(r.budget - 0.25) < 1e-9 and getattr(r, f"{kind}_x_full") is not None]
        for r in at:
            v = getattr(r, f"{kind}_x_full")
            goals.append({"goal": f"{kind} at 0.25 ≥ {target}× full", "case": r.case, "ratio": v, "met": v >= target})
            print(f"goal {kind} ≥ {target}× full at 0.25: {r.case}: {v:.2f}× — {'met' if v >= target else 'missed'}")
    if args.json:
        tmp = Path(args.json).with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows], "goals": goals}, indent=2))
        os.replace(tmp, args.json)  # atomic: an interrupted run never leaves a half-written file
    return 0


if __name__ == "__main__":
    sys.exit(main())
