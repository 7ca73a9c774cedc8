#!/usr/bin/env python
"""Speed of the byte-level LM as a whole: does its time follow its FLOPs? (issue 23)

One table per ``--d-model`` (4 layers, float32, fresh seeded weights), every cell measured in one
run in interleaved rounds (each round runs every case once, so that on a shared machine every case
gets the same chance of a quiet moment, column by column, so that the cells a ratio compares run
seconds apart); a cell is the median over ``--rounds`` rounds.

Rows (``TiledLM`` of :func:`tiling.train.textmodel.model_config`: d_state 16, expand 1, tile 16):

``mamba@1``
    plain Mamba: every layer at budget 1 (the block scope is exact there);
``uniform@c``, ``adaptive@c``
    every layer tiled at ``c`` = 0.5, 0.35, 0.25 (the uniform policy ``R_i = c``; the causal
    adaptive policy on the linearised signal, its running calibration set by two training-mode
    forwards over the bench text first, as a trained model's is);
``hourglass@0.25``
    :class:`~tiling.modules.hourglass.HourglassLM` of :func:`tiling.config.hourglass_config` with
    ``d_outer = d_model / 2`` and ``d_main = 2·d_model`` at budget 0.25;
``hf-mamba@1``
    HF transformers' ``MambaForCausalLM`` with ``mamba@1``'s weights (``TiledLM.to_hf``), on its
    PyTorch path (no ``mamba_ssm``/``causal_conv1d`` kernels), its cache for decoding.

The pool gates of the tiled rows are opened (normal, std 0.1): a trained model's gate is not zero,
and a closed one skips the pool.

Columns: bytes per second of ``prefill`` (one forward, ``1 × 1024`` and ``8 × 1024`` bytes, eval,
no grad), ``decode`` (``step`` over ``--decode-steps`` bytes from a fresh state, batch 1 and 8),
``train`` (one optimiser step on ``--train-batch × 1024`` bytes: forward, cross-entropy, backward,
gradient clipping, AdamW, on a copy of the row's model, so the other cells time weights that do not
change between their runs); ``FLOPs/B`` (counted: ``2 ×`` :func:`tiling.train.text.forward_madds`
of the prefill's plans, i.e. ``layer_cost`` plus the head; the hourglass: its ``cost``); for every
speed its ratio to ``mamba@1`` of the same width (``×``) and the efficiency ``(time ratio) /
(FLOPs ratio)``, 1 when time falls exactly with the counted FLOPs. Wall-clock medians; on a CPU the
table also gives the thread CPU time's median (``--json`` holds both). The process keeps the
memory it freed (:func:`tiling.runtime.keep_freed_memory`, as ``evaluate`` and ``generate`` do), so
no forward faults its activations in again; ``--default-allocator`` measures with glibc's own
thresholds.

Goals (issue 23), checked at the end: ``uniform@0.25`` prefill ≥ 3× at 1 × 1024 and 8 × 1024,
decode ≥ 2.5× at batch 1, training ≥ 2.5×, efficiency ≥ 0.8 for prefill and training;
``mamba@1`` prefill ≥ 1.5× and decode ≥ 1.2× HF's.

    python scripts/bench_text.py [--d-model 256 512] [--rounds 5] [--threads 1] [--device cpu|cuda]
                                 [--json PATH] [--no-hf] [--no-hourglass] [--default-allocator]
    python scripts/bench_text.py --runs runs/text_lm [...]   # the trained rows of a sweep (former mode)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import best_ms_interleaved  # noqa: E402

from tiling.runtime import keep_freed_memory  # noqa: E402
from tiling.train.corpus import CorpusError, load_split, slice_root  # noqa: E402
from tiling.train.storage import atomic_write_bytes  # noqa: E402
from tiling.train.text import TextInputError, as_byte_tensor, forward_madds, read_text_file  # noqa: E402
from tiling.train.text_sweep import SPEED_GOALS  # noqa: E402
from tiling.train.textmodel import (build_model, config_from_dict, load_text_model, model_config,  # noqa: E402
                                    parameter_count, read_text_meta)

BUDGETS = (0.5, 0.35, 0.25)
L = 1024
COLUMNS = ("prefill1", "prefill8", "decode1", "decode8", "train")
GOALS = {  # (row, column, what) -> least value
    ("uniform@0.25", "prefill1", "x"): 3.0, ("uniform@0.25", "prefill8", "x"): 3.0,
    ("uniform@0.25", "decode1", "x"): 2.5, ("uniform@0.25", "train", "x"): 2.5,
    ("uniform@0.25", "prefill1", "efficiency"): 0.8, ("uniform@0.25", "prefill8", "efficiency"): 0.8,
    ("uniform@0.25", "train", "efficiency"): 0.8,
    ("mamba@1", "prefill1", "x_hf"): 1.5, ("mamba@1", "decode1", "x_hf"): 1.2,
}


@dataclass
class Case:
    """One row's model: ``kind`` ``tiled``, ``hourglass`` or ``hf``."""

    name: str
    model: torch.nn.Module
    budget: float
    kind: str
    flops_per_byte: float = 0.0


@dataclass
class Cell:
    bytes_per_s: float | None = None
    cpu_bytes_per_s: float | None = None
    x: float | None = None  # ratio to mamba@1 (time ratio)
    efficiency: float | None = None  # x / (FLOPs ratio)
    x_hf: float | None = None  # mamba@1 only: ratio to hf-mamba@1


@dataclass
class Row:
    d_model: int
    row: str
    budget: float
    flops_per_byte: float
    flops_ratio: float  # FLOPs(mamba@1) / FLOPs(row)
    cells: dict = field(default_factory=dict)


def bench_text(args) -> torch.Tensor:
    """The bytes the bench runs on: ``--text-file``, or the committed slice of the Python docs."""
    if args.text_file:
        return as_byte_tensor(read_text_file(args.text_file)).to(torch.int64)
    data = b"".join(p.read_bytes() for p in sorted(slice_root().rglob("*.txt")))
    return as_byte_tensor(data).to(torch.int64)


def open_pool_gates(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pool_gate"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def build_cases(d: int, text: torch.Tensor, device: str, args) -> list[Case]:
    cases = []
    for name, cfg, b in [("mamba@1", "full", 1.0)] + [(f"{p}@{b:g}", p, b) for p in ("uniform", "adaptive")
                                                       for b in BUDGETS]:
        torch.manual_seed(args.seed)
        model = build_model(model_config(cfg, b, d_model=d)).to(device)
        if cfg != "full":
            open_pool_gates(model, args.seed)
        if cfg == "adaptive":  # the running calibration of a trained model: two training-mode batches
            model.train()
            with torch.no_grad():
                for k in range(2):
                    model(text[k * 4 * L:(k + 1) * 4 * L].view(4, L).to(device), budget=b)
        cases.append(Case(name, model.eval(), b, "tiled"))
    if not args.no_hourglass:
        try:
            from tiling.config import hourglass_config
            from tiling.modules.hourglass import HourglassLM
        except ImportError as e:  # the hourglass is being written
            print(f"no hourglass row: {e}", file=sys.stderr)
        else:
            torch.manual_seed(args.seed)
            hg = HourglassLM(hourglass_config(d_outer=d // 2, d_main=2 * d, budget=0.25)).to(device)
            cases.append(Case("hourglass@0.25", hg.eval(), 0.25, "hourglass"))
    if not args.no_hf:
        hf = cases[0].model.to_hf().to(device).eval()
        cases.append(Case("hf-mamba@1", hf, 1.0, "hf"))
    inp = text[:L].view(1, L).to(device)
    with torch.no_grad():
        for c in cases:
            if c.kind == "tiled":
                _, plans = c.model(inp, budget=c.budget, return_plans=True)
                c.flops_per_byte = 2.0 * forward_madds(c.model, plans, L, c.budget)["per_byte"]
            elif c.kind == "hourglass":
                _, out = c.model(inp, budget=c.budget, return_output=True)
                c.flops_per_byte = 2.0 * c.model.cost(L, out.lengths.tolist())["per_byte"]
            else:
                c.flops_per_byte = cases[0].flops_per_byte
    return cases


def runners(c: Case, text: torch.Tensor, device: str, args) -> dict:
    """The timed callables of a row, by column, and the bytes each processes."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    x1 = text[:L].view(1, L).to(device)
    x8 = text[:8 * L].view(8, L).to(device)
    steps = args.decode_steps
    xt = text[:args.train_batch * (L + 1)].view(args.train_batch, L + 1).to(device)
    out = {}

    def forward(x):
        if c.kind == "hf":
            return c.model(input_ids=x).logits
        return c.model(x, budget=c.budget)

    def prefill(x):
        def run():
            with torch.no_grad():
                forward(x)
            sync()
        return run

    def decode(x):
        def run():
            with torch.no_grad():
                if c.kind == "hf":
                    cache = None
                    for t in range(steps):
                        o = c.model(input_ids=x[:, t:t + 1], cache=cache, use_cache=True)
                        cache = o.cache
                else:
                    state = c.model.allocate_inference_state(x.shape[0])
                    for t in range(steps):
                        _, state = c.model.step(x[:, t], state, budget=c.budget)
            sync()
        return run

    # the train cell updates its own copy: updating the weights the other cells time would make each of their
    # runs start by rebuilding what depends on the weights (the decoding plan, the signal maps), a cost of the
    # interleaving, not of prefill or decoding (runs before 24 paid it in every decode cell)
    trained = copy.deepcopy(c.model) if c.kind != "hf" else None
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-4, weight_decay=0.1) if trained is not None else None

    def train():
        trained.train()
        try:
            logits = trained(xt[:, :-1], budget=c.budget)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), xt[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
            opt.step()
        finally:
            trained.eval()
        sync()

    out["prefill1"] = (prefill(x1), L)
    out["prefill8"] = (prefill(x8), 8 * L)
    out["decode1"] = (decode(x1), steps)
    out["decode8"] = (decode(x8), 8 * steps)
    if opt is not None:
        out["train"] = (train, args.train_batch * L)
    return out


def require_positive(ap: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """``ap.error`` (exit 2) naming the first of the integer flags ``names`` below 1."""
    for name in names:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")


def timed_interleaved(fns: dict, rounds: int) -> dict:
    """Median wall and thread CPU seconds of each callable over ``rounds`` interleaved rounds (one
    warm-up call each first)."""
    for fn in tqdm(fns.values(), desc="warm-up", leave=False):
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in tqdm(range(rounds), desc="rounds", leave=False):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.thread_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def run_table(args) -> dict:
    device = args.device
    text = bench_text(args)
    need = max(8 * L, args.train_batch * (L + 1))
    if text.numel() < need:
        raise SystemExit(f"error: the bench text has {text.numel()} bytes, {need} are needed")
    fns, nbytes, tables = {}, {}, {}
    for d in args.d_model:
        cases = build_cases(d, text, device, args)
        tables[d] = cases
        for c in cases:
            for col, (fn, n) in runners(c, text, device, args).items():
                if c.kind == "hf" and col == "prefill8" and args.no_hf_batch:
                    continue
                fns[(d, c.name, col)] = fn
                nbytes[(d, c.name, col)] = n
    # column by column within a round: the cells a ratio compares (a column's rows at one width) run seconds
    # apart, not a minute, so a change of the shared machine's load between them moves both alike
    fns = dict(sorted(fns.items(), key=lambda kv: (COLUMNS.index(kv[0][2]), kv[0][0])))
    load = os.getloadavg()
    t0 = time.perf_counter()
    timed = timed_interleaved(fns, args.rounds)
    rows = []
    for d, cases in tables.items():
        base = cases[0]
        hf_case = next((c for c in cases if c.kind == "hf"), None)
        for c in cases:
            row = Row(d, c.name, c.budget, c.flops_per_byte, base.flops_per_byte / c.flops_per_byte)
            for col in COLUMNS:
                key = (d, c.name, col)
                if key not in timed:
                    continue
                wall, cpu = timed[key]
                cell = Cell(nbytes[key] / wall, nbytes[key] / cpu if device == "cpu" else None)
                bw, _ = timed.get((d, base.name, col), (None, None))
                if bw is not None:
                    cell.x = bw / wall
                    cell.efficiency = cell.x / row.flops_ratio
                if c is base and hf_case is not None and (d, hf_case.name, col) in timed:
                    cell.x_hf = timed[(d, hf_case.name, col)][0] / wall
                row.cells[col] = cell
            rows.append(row)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()}, " \
        f"{os.cpu_count()} CPUs"
    header = (f"Byte-LM speed — {where}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, float32, "
              f"4 layers, L = {L}, decode {args.decode_steps} steps, train batch {args.train_batch}, median of "
              f"{args.rounds} interleaved rounds, allocator: {args.allocator}, load average at start {load[0]:.2f}, "
              f"{time.perf_counter() - t0:.0f} s")
    goals = check_goals(rows)
    return {"header": header, "device": device, "rows": [asdict(r) for r in rows], "goals": goals,
            "command": " ".join(sys.argv)}


def check_goals(rows: list[Row]) -> list[dict]:
    out = []
    for r in rows:
        for (name, col, what), least in GOALS.items():
            cell = r.cells.get(col)
            if r.row != name or cell is None or getattr(cell, what) is None:
                continue
            v = getattr(cell, what)
            out.append({"d_model": r.d_model, "row": name, "column": col, "what": what, "value": v, "goal": least,
                        "met": v >= least})
    return out


def print_table(result: dict) -> None:
    print(result["header"])
    f = lambda v, p=2: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    by_d = {}
    for r in result["rows"]:
        by_d.setdefault(r["d_model"], []).append(r)
    names = {"prefill1": "prefill 1×1024", "prefill8": "prefill 8×1024", "decode1": "decode b1",
             "decode8": "decode b8", "train": "train"}
    for d, rows in by_d.items():
        print(f"\nd_model {d}: bytes/s (× mamba@1, efficiency = × / FLOPs ratio)")
        print("| row | FLOPs/B | FLOPs ratio | " + " | ".join(names[c] for c in COLUMNS) + " |")
        print("|---|---|---|" + "---|" * len(COLUMNS))
        for r in rows:
            cells = []
            for c in COLUMNS:
                cell = r["cells"].get(c)
                if cell is None:
                    cells.append("—")
                    continue
                s = f"{cell['bytes_per_s']:.0f} ({f(cell['x'])}×, {f(cell['efficiency'])})"
                if cell["x_hf"] is not None:
                    s += f" [{f(cell['x_hf'])}× HF]"
                cells.append(s)
            print(f"| {r['row']} | {r['flops_per_byte'] / 1e6:.3f} M | {r['flops_ratio']:.2f} | " + " | ".join(cells)
                  + " |")
    for g in result["goals"]:
        print(f"goal d_model {g['d_model']} {g['row']} {g['column']} {g['what']} ≥ {g['goal']}: {g['value']:.2f} — "
              f"{'met' if g['met'] else 'missed'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--runs" in argv or any(a.startswith("--runs=") for a in argv):
        return trained_rows_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--decode-steps", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=4, help="rows of 1024 bytes per training step (default 4)")
    ap.add_argument("--text-file", type=Path, default=None, help="bench text (default: the committed docs slice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-hf", action="store_true", help="leave out HF's MambaForCausalLM")
    ap.add_argument("--no-hf-batch", action="store_true", help="leave out HF's 8 × 1024 prefill (slow)")
    ap.add_argument("--no-hourglass", action="store_true")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc's malloc thresholds as they are (default: keep freed memory, as the CLIs do)")
    ap.add_argument("--json", type=str, default=None, help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    require_positive(ap, args, ("rounds", "threads", "decode_steps", "train_batch"))
    if any(d < 16 or d % 2 for d in args.d_model):
        ap.error(f"--d-model must be even integers >= 16, got {args.d_model}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    if args.decode_steps > L:
        ap.error(f"--decode-steps must be at most {L}")
    torch.set_num_threads(args.threads)
    args.allocator = "glibc default" if args.default_allocator else (
        "freed memory kept" if keep_freed_memory() else "default (no glibc mallopt)")
    try:
        result = run_table(args)
    except (TextInputError, CorpusError) as e:
        ap.error(str(e))
    print_table(result)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())  # never half-written
    return 0


AFTER_THE_FACT = (0.5, 0.35, 0.25)  # budgets at which full@1/s0 is also timed, tiled after training


@dataclass
class TrainedRow:
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
    shape = config_from_dict(read_text_meta(full["checkpoint"])["model"])  # a TiledLMConfig (full@1 is plain)
    out = []
    for row in rows:
        if Path(row["checkpoint"]).is_file():
            out.append((row["row"], Path(row["checkpoint"]), float(row["budget"]), row))
            continue
        why = "its plan depends on the weights"
        if row["configuration"] in WEIGHT_FREE_PLAN:
            cfg = model_config(row["configuration"], row["budget"], d_model=shape.d_model, n_layers=shape.n_layers,
                               d_state=shape.mamba.d_state, expand=shape.mamba.expand, tile_size=shape.tiling.tile_size,
                               full_resolution_layers=tuple(row["full_resolution_layers"]))
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


def trained_rows_main(argv: list[str]) -> int:
    """The speed of the trained rows of a sweep (``--runs DIR``, the former default of this script)."""
    # long: the flags, then one measured row per trained sweep row
    ap = argparse.ArgumentParser(description="Speed of the trained rows of scripts/train_text.py --sweep")
    ap.add_argument("--runs", type=Path, required=True, help="the sweep's output folder")
    ap.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"), help="prepared corpus (make corpus)")
    ap.add_argument("--test-file", type=Path, default=None, help="time on this UTF-8 file instead of the test split")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--decode-bytes", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the sweep)")
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    require_positive(ap, args, ("context", "batch", "decode_bytes", "rounds", "threads"))
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
        model = load_text_model(ckpt)[0] if isinstance(ckpt, Path) else build_model(ckpt).eval()
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
        rows.append(TrainedRow(case, *meta[case], pw, pc, dw, dc))
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
    for kind, target in SPEED_GOALS.items():  # the text sweep's goals (× full at 0.25), which this bench times
        at = [r for r in rows if abs(r.budget - 0.25) < 1e-9 and getattr(r, f"{kind}_x_full") is not None]
        for r in at:
            v = getattr(r, f"{kind}_x_full")
            goals.append({"goal": f"{kind} at 0.25 ≥ {target}× full", "case": r.case, "ratio": v, "met": v >= target})
            print(f"goal {kind} ≥ {target}× full at 0.25: {r.case}: {v:.2f}× — {'met' if v >= target else 'missed'}")
    if args.json:
        table = {"header": header, "rows": [asdict(r) for r in rows], "goals": goals}
        atomic_write_bytes(args.json, json.dumps(table, indent=2).encode())  # never half-written
    return 0




if __name__ == "__main__":
    sys.exit(main())
