#!/usr/bin/env python
"""Train a byte-level TiledLM on real text (the Python documentation, ``make corpus``) and compare
resolution configurations at equal budgets: bits per byte against compute and wall time.

One run (one configuration, one budget, one seed)::

    python scripts/train_text.py --config adaptive --budget 0.35 --seed 0 --out runs/text_lm/one

The table of ``docs/benchmarks.md`` (``--sweep``; ``--resume`` skips finished rows)::

    python scripts/train_text.py --sweep --resume --out runs/text_lm

Rows of the sweep: at budget 0.35 every configuration (``full`` is trained at budget 1) with seeds
0 and 1; then at 0.5 and 0.25 ``uniform`` and the best adaptive configuration (lowest mean test
bpb at 0.35 among ``adaptive``, ``router``, ``scan-adaptive``) with seed 0, and the seed-0
full-resolution model evaluated at those budgets (no training: tiling after the fact).
``--shard i/n`` runs every n-th row, so n processes (one thread each) share a machine; each
rewrites the table from all finished rows. The table goes to ``--results``
(``docs/results/text_lm.json``), the figures to ``--figures`` (``docs/figures/training/``).

Each run: one thread (``--threads``), AdamW, warm-up then cosine on the progress towards the
first limit reached (``--max-minutes`` of training, ``--max-bytes``, ``--max-steps``;
``tiling.train.schedule``), validation bpb on a fixed subset of the validation split every
``--eval-every-s`` seconds of training (evaluation time is not training time), then the atomic
checkpoint, test bpb on the test split, FLOPs per byte and prefill / decode bytes per second.
See ``docs/training.md``, "Real text".
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infogeo.checks import check_in_range, check_int  # noqa: E402
from tiling.options import Parser, UsageError, first_line, run_main  # noqa: E402
from tiling.train.storage import StorageError, atomic_write_json  # noqa: E402
from tiling.train.corpus import CorpusError  # noqa: E402
from tiling.train.text import (  # noqa: E402
    TextInputError, evaluate_bytes, forward_madds, measure_speed,
)
from tiling.config import SIGNALS, hourglass_config  # noqa: E402
from tiling.modules.hourglass import HourglassLM, match_main_width  # noqa: E402
from tiling.train import sweep as hourglass_sweep  # noqa: E402
from tiling.train.trainer import (  # noqa: E402
    RunError, TrainOptions, machine_info, set_threads, train_run, training_loss,
)
from tiling.train.textmodel import (  # noqa: E402
    CONFIGURATIONS, TextModelError, build_model, export_bundled, load_text_model, model_config, model_dict,
)

ADAPTIVE = ("adaptive", "router", "scan-adaptive")
# Configurations whose every layer keeps token-level outputs: full-resolution outer layers change nothing
# in "full" and are not needed by the scan scope, so --full-layers does not apply to them (one row serves
# both choices instead of two identical trainings).
TOKEN_LEVEL = ("full", "scan-adaptive")


def outer_layers(config: str, full_layers) -> tuple[int, ...]:
    """The layers kept at full resolution for ``config`` under ``--full-layers``."""
    return () if config in TOKEN_LEVEL else tuple(full_layers)


# ----------------------------------------------------------------------------- arguments
def parse_budget_range(s: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget-range takes LO,HI (two numbers), got {s!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"--budget-range must satisfy 0 < LO <= HI <= 1, got {s!r}")
    return lo, hi


def parse_full_layers(s: str) -> tuple[int, ...]:
    s = s.strip().lower()
    if s in ("", "none"):
        return ()
    if s == "ends":
        return (0, -1)
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--full-layers takes 'none', 'ends' or comma-separated layer indices, got {s!r}")


#: integer options and their ranges, checked before anything is read or built (the upper ends keep every
#: size far from int64 and from a machine's memory; a model or a batch beyond them would not fit anyway)
INT_RANGES = {"seed": (0, 2 ** 32 - 1), "threads": (1, 4096), "context": (1, 2 ** 20), "batch_size": (1, 2 ** 16),
              "d_model": (1, 2 ** 14), "n_layers": (1, 1024), "d_state": (1, 1024), "expand": (1, 64),
              "tile_size": (1, 2 ** 20), "d_outer": (1, 2 ** 14), "d_main": (1, 2 ** 14), "encoder_layers": (0, 1024),
              "main_layers": (1, 1024), "decoder_layers": (0, 1024), "warmup": (0, 2 ** 40),
              "max_bytes": (1, 2 ** 62), "max_steps": (1, 2 ** 40), "eval_every_steps": (1, 2 ** 40),
              "val_windows": (1, 2 ** 16), "test_bytes": (1, 2 ** 62), "decode_bytes": (1, 2 ** 20),
              "measure": (1, 2 ** 20)}
#: number options: (low, high, low_open); NaN and Inf are refused
FLOAT_RANGES = {"budget": (0.0, 1.0, True), "r_min": (0.0, 1.0, True), "ratio_weight": (0.0, 1e6, False),
                "lr": (0.0, 10.0, True), "weight_decay": (0.0, 1e3, False), "grad_clip": (0.0, 1e12, False),
                "max_minutes": (0.0, 1e7, True), "eval_every_s": (0.0, 1e9, True), "wait_minutes": (0.0, 1e7, False)}


def check_options(args) -> None:
    """Every number option in its range (:data:`INT_RANGES`, :data:`FLOAT_RANGES`), then the training
    options as :class:`~tiling.train.trainer.TrainOptions` checks them (``--device`` among them), before
    anything is read or built; the message names the option.

    Raises
    ------
    UsageError
        An option outside its range (NaN and Inf included), or one :class:`TrainOptions` refuses.
    """
    for key, (low, high) in INT_RANGES.items():
        if getattr(args, key) is not None:
            check_int(getattr(args, key), "--" + key.replace("_", "-"), minimum=low, maximum=high)
    for key, (low, high, low_open) in FLOAT_RANGES.items():
        check_in_range(getattr(args, key), "--" + key.replace("_", "-"), low, high, low_open=low_open)
    try:
        options(args)
    except (TypeError, ValueError) as e:  # TrainOptions names its fields: the message names their flags
        field = str(e).split(" ", 1)[0]
        flag = "--no-speed" if field == "speed" else "--" + field.replace("_", "-")
        raise UsageError(f"{flag}{str(e)[len(field):]}" if hasattr(args, field) else str(e)) from None


def parse_args(argv=None) -> argparse.Namespace:
    # long: a flat declaration of the flags, one add_argument each
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--config", choices=sorted(CONFIGURATIONS) + ["hourglass"], default="adaptive",
                   help="a TiledLM configuration (tiling.train.textmodel) or 'hourglass' (tiling.modules.hourglass)")
    g.add_argument("--budget", type=float, default=0.35, help="resolution budget in (0, 1] (full: always 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, default=None,
                   help="run directory (default runs/text_lm/<row>, where a sweep finds it); a sweep: the directory "
                        "of the rows (default runs/text_lm)")
    g.add_argument("--overwrite", action="store_true", help="one run: replace a finished run in --out")
    g.add_argument("--measure", type=int, default=None, metavar="STEPS",
                   help="time STEPS training steps of the configuration (after 2 warm-up steps), print the bytes "
                        "per second and the training bytes the --max-minutes limit allows, and exit")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--device", default="cpu", help="where the model trains: cpu (default), cuda, cuda:N")
    g = p.add_argument_group("data")
    g.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"), help="prepared corpus (make corpus)")
    g.add_argument("--train-file", type=Path, default=None, help="instead of the corpus: a UTF-8 training text")
    g.add_argument("--val-file", type=Path, default=None)
    g.add_argument("--test-file", type=Path, default=None)
    g.add_argument("--context", type=int, default=1024, help="window length in bytes (>= 1024 for the table)")
    g.add_argument("--batch-size", type=int, default=4)
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, default=256)
    g.add_argument("--n-layers", type=int, default=4)
    g.add_argument("--d-state", type=int, default=16)
    g.add_argument("--expand", type=int, default=1,
                   help="Mamba's expansion, d_inner = expand·d_model (default 1: see docs/training.md, 'Real text')")
    g.add_argument("--tile-size", type=int, default=16)
    g.add_argument("--r-min", type=float, default=0.0625)
    g.add_argument("--full-layers", type=parse_full_layers, default=(),
                   help="layers kept at full resolution: 'none' (default), 'ends' (first and last) or e.g. '0,-1'")
    g.add_argument("--ratio-weight", type=float, default=0.03, help="router: weight of H-Net's ratio loss")
    g = p.add_argument_group("hourglass (--config hourglass)")
    g.add_argument("--signal", choices=SIGNALS, default="entropy", help="boundary signal (docs/tiling.md)")
    g.add_argument("--dechunk", choices=("ema", "hold"), default="ema")
    g.add_argument("--budget-range", type=parse_budget_range, default=None, metavar="LO,HI",
                   help="elastic training: a budget drawn per step from [LO, HI] (0 < LO <= HI <= 1)")
    g.add_argument("--d-outer", type=int, default=128)
    g.add_argument("--d-main", type=int, default=None,
                   help="main network width (default: FLOP-matched within 5%% to plain Mamba of --d-model, "
                        "--n-layers at --budget)")
    g.add_argument("--encoder-layers", type=int, default=1)
    g.add_argument("--main-layers", type=int, default=4)
    g.add_argument("--decoder-layers", type=int, default=1)
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup", type=int, default=30, help="warm-up steps")
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--max-minutes", type=float, default=15.0, help="training time limit (evaluation excluded)")
    g.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="what --max-minutes and the curve's train_seconds count: the process's CPU time (default; on "
                        "one thread it equals the wall time of an unshared core, and other work on a shared machine "
                        "does not shorten a run) or the wall time")
    g.add_argument("--max-bytes", type=int, default=None, help="training byte limit (inputs seen)")
    g.add_argument("--max-steps", type=int, default=None, help="step limit (tests)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every-s", type=float, default=90.0, help="validation every this many training seconds")
    g.add_argument("--eval-every-steps", type=int, default=None, help="validation every this many steps instead")
    g.add_argument("--val-windows", type=int, default=32, help="validation subset: evenly spaced windows")
    g.add_argument("--test-bytes", type=int, default=None, help="evaluate only the first N bytes of the test split")
    g.add_argument("--decode-bytes", type=int, default=256, help="bytes of step() decoding timed")
    g.add_argument("--no-speed", action="store_true", help="skip the prefill/decode timing")
    g.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("sweep")
    g.add_argument("--sweep", action="store_true", help="run the table (module docstring)")
    g.add_argument("--table", choices=("hourglass", "tiled"), default="hourglass",
                   help="sweep: 'hourglass' (plain Mamba against the hourglass, tiling.train.sweep; default) or "
                        "'tiled' (every-layer tiled configurations, the earlier table)")
    g.add_argument("--resume", action="store_true", help="sweep: skip rows whose row.json exists")
    g.add_argument("--results", type=Path, default=None,
                   help="the table (default docs/results/hourglass_lm.json, or text_lm.json for --table tiled)")
    g.add_argument("--figures", type=Path, default=None,
                   help="the figures (default docs/figures/hourglass, or docs/figures/training)")
    g.add_argument("--shard", default="0/1", help="i/n: run rows i, i+n, i+2n, ... (n processes share a machine)")
    g.add_argument("--only", nargs="+", default=None, help="sweep: run only these rows (e.g. full@1/s0)")
    g.add_argument("--wait-minutes", type=float, default=30.0,
                   help="sweep, sharded: wait this long for the other shards' budget-0.35 rows before the second phase")
    g.add_argument("--ablation", action="store_true",
                   help="sweep: also the best adaptive configuration at 0.35 with the first and last layer at full "
                        "resolution (seed 0)")
    g.add_argument("--bundle", action="store_true",
                   help="sweep: copy the seed-0 full and best adaptive models at 0.35 to the bundled checkpoints")
    args = p.parse_args(argv)
    try:
        check_options(args)
    except ValueError as e:  # check_int / check_in_range name the flag
        p.error(str(e))
    try:
        args.shard_index, args.shard_count = hourglass_sweep.parse_shard(args.shard)
    except ValueError as e:
        p.error(str(e))
    for k in args.full_layers:
        if not -args.n_layers <= k < args.n_layers:
            p.error(f"--full-layers: layer {k} does not exist in a model of --n-layers {args.n_layers}")
    hourglass = args.table == "hourglass"
    args.results = args.results or Path("docs/results/hourglass_lm.json" if hourglass else "docs/results/text_lm.json")
    args.figures = args.figures or Path("docs/figures/hourglass" if hourglass else "docs/figures/training")
    if args.only is not None and hourglass:
        valid = {r["name"] for r in hourglass_sweep.rows() + hourglass_sweep.evaluated_rows()}
        unknown = sorted(set(args.only) - valid)
        if unknown:
            p.error(f"--only: no such row(s) {', '.join(unknown)}; the rows are {', '.join(sorted(valid))}")
    elif args.only is not None:
        valid = {spec_name(s) for s in phase1_rows(args)}
        for best in ADAPTIVE:
            valid |= {spec_name(s) for s in phase2_rows(best, args)}
        unknown = sorted(set(args.only) - valid)
        if unknown:
            p.error(f"--only: no such row(s) {', '.join(unknown)}; the rows are {', '.join(sorted(valid))}")
    return args


# ----------------------------------------------------------------------------- data
def load_data(args) -> dict:
    """The three splits (:func:`tiling.train.sweep.load_data`: the prepared corpus, or the given files); a
    file it refuses is named by its option."""
    try:
        return hourglass_sweep.load_data(args)
    except TextInputError as e:
        flags = [f for f, path in (("--train-file", args.train_file), ("--val-file", args.val_file),
                                   ("--test-file", args.test_file)) if path is not None and str(path) in str(e)]
        raise TextInputError(f"{'/'.join(flags) or '--train-file'}: {e}") from None


# ----------------------------------------------------------------------------- one run
def train(args, data: dict | None = None) -> dict:
    """Train one configuration (:func:`tiling.train.trainer.train_run`, the one training loop); write
    OUT/checkpoint.safetensors, OUT/log.jsonl, OUT/row.json; return the row."""
    data = load_data(args) if data is None else data
    out = args.out
    if args.full_layers and args.config in TOKEN_LEVEL:
        print(f"note: --full-layers does not apply to --config {args.config} (every layer keeps token-level "
              f"outputs); training all layers as given by the configuration", flush=True)
    torch.manual_seed(args.seed)
    if args.config == "hourglass":
        model, info = build_hourglass(args)
        budget = args.budget
    else:
        cfg = model_config(args.config, args.budget, d_model=args.d_model, n_layers=args.n_layers,
                           d_state=args.d_state, tile_size=args.tile_size, r_min=args.r_min,
                           full_resolution_layers=outer_layers(args.config, args.full_layers), expand=args.expand)
        budget = cfg.tiling.budget
        model = build_model(cfg)
        info = {"full_resolution_layers": list(model.full_resolution_layers), "d_model": args.d_model,
                "n_layers": args.n_layers, "tile_size": args.tile_size, "model": model_dict(model)}
    name = row_name(args.config, budget, args.seed, args.full_layers)
    opts = options(args)
    return train_run(model, data, opts, out, name=name, configuration=args.config, budget=budget, info=info,
                     overwrite=getattr(args, "overwrite", False))


def build_hourglass(args):
    """The hourglass of the command line: ``d_main`` given, or FLOP-matched to plain Mamba of ``--d-model``."""
    base = hourglass_config(d_outer=args.d_outer, d_main=args.d_main or args.d_outer,
                            encoder_layers=args.encoder_layers, main_layers=args.main_layers,
                            decoder_layers=args.decoder_layers, d_state=args.d_state, expand=args.expand,
                            budget=args.budget, tile_size=args.tile_size, r_min=args.r_min, signal=args.signal,
                            dechunk=args.dechunk, budget_range=args.budget_range)
    match = None
    if args.d_main is None:
        ref = build_model(model_config("full", 1.0, d_model=args.d_model, n_layers=args.n_layers, d_state=args.d_state,
                                       expand=args.expand))
        with torch.no_grad():
            _, plans = ref(torch.zeros(1, args.context, dtype=torch.int64), return_plans=True)
        target = forward_madds(ref, plans, args.context)["per_byte"]
        base, match = match_main_width(base, target, budget=args.budget, L=args.context)
    return HourglassLM(base), {"family": "hourglass", "signal": args.signal, "hourglass": base.to_dict(),
                               "flop_match": match}


def options(args) -> TrainOptions:
    """The :class:`~tiling.train.trainer.TrainOptions` of the command line."""
    return TrainOptions(lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip,
                        batch_size=args.batch_size, context=args.context, max_minutes=args.max_minutes,
                        clock=args.clock, max_bytes=args.max_bytes, max_steps=args.max_steps,
                        eval_every_s=args.eval_every_s, eval_every_steps=args.eval_every_steps,
                        val_windows=args.val_windows, test_bytes=args.test_bytes, decode_bytes=args.decode_bytes,
                        speed=not args.no_speed, ratio_weight=args.ratio_weight, seed=args.seed, threads=args.threads,
                        quiet=args.quiet, device=args.device)


def evaluate_only(src_row: dict, budget: float, out: Path, data: dict, args) -> dict:
    """A row without training: the model of ``src_row`` evaluated at ``budget`` (tiling after the fact)."""
    set_threads(args.threads)
    model, extra = load_text_model(src_row["checkpoint"])
    test = evaluate_bytes(model, data["test"], context=extra["context"], budget=budget, max_bytes=args.test_bytes)
    speed = None if args.no_speed else measure_speed(model, data["test"], context=extra["context"], budget=budget,
                                                     decode_bytes=args.decode_bytes)
    row = dict(src_row)
    row.update(
        row=row_name(src_row["configuration"], budget, src_row["seed"], tuple(src_row["full_resolution_layers"])),
        kind="evaluated", budget=budget, source_row=src_row["row"], test_bpb=test["bpb"],
        test_mean_resolution=test["mean_resolution"], test_mean_resolution_by_layer=test["mean_resolution_by_layer"],
        flops_per_byte=test["flops_per_byte"], madds_per_byte_by_layer=test["madds_per_byte_by_layer"],
        prefill_bytes_per_s=None if speed is None else speed["prefill_bytes_per_s"],
        decode_bytes_per_s=None if speed is None else speed["decode_bytes_per_s"], machine=machine_info())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "row.json", row)
    return row


# ----------------------------------------------------------------------------- sweep
def row_name(config: str, budget: float, seed: int, full_layers=()) -> str:
    full_layers = outer_layers(config, full_layers)
    suffix = "+ends" if tuple(full_layers) in ((0, -1),) else ("+fl" + ",".join(map(str, full_layers)) if full_layers else "")
    return f"{config}{suffix}@{budget:g}/s{seed}"


def row_dir(out: Path, name: str) -> Path:
    return out / name.replace("@", "_b").replace("/", "_").replace(",", "-")


def phase1_rows(args) -> list[dict]:
    rows = []
    for seed in (0, 1):
        for config in ("full", "uniform", "adaptive", "router", "scan-adaptive"):
            b = 1.0 if config == "full" else 0.35
            rows.append({"config": config, "budget": b, "seed": seed,
                         "full_layers": outer_layers(config, args.full_layers)})
    return rows


def best_adaptive(done: dict[str, dict], args) -> str | None:
    """The adaptive configuration with the lowest mean test bpb at 0.35 (None until all are done)."""
    means = {}
    for c in ADAPTIVE:
        vals = [done[n]["test_bpb"] for n in (row_name(c, 0.35, s, args.full_layers) for s in (0, 1)) if n in done]
        if len(vals) < 2:
            return None
        means[c] = statistics.fmean(vals)
    return min(means, key=means.get)


def phase2_rows(best: str, args) -> list[dict]:
    rows = []
    for b in (0.5, 0.25):
        rows.append({"config": "full", "budget": b, "seed": 0, "full_layers": (), "evaluate_only": True})
        for c in ("uniform", best):
            rows.append({"config": c, "budget": b, "seed": 0, "full_layers": outer_layers(c, args.full_layers)})
    if args.ablation:  # the other choice of full-resolution outer layers
        fl = () if tuple(args.full_layers) else (0, -1)
        rows.append({"config": best, "budget": 0.35, "seed": 0, "full_layers": fl})
    return rows


def spec_name(spec: dict) -> str:
    return row_name(spec["config"], spec["budget"], spec["seed"], spec["full_layers"])


finished_rows = hourglass_sweep.finished  # one reader of a sweep folder's row.json files


def run_spec(spec: dict, args, data: dict, done: dict) -> dict:
    name = spec_name(spec)
    out = row_dir(args.out, name)
    if spec.get("evaluate_only"):
        src = done[row_name("full", 1.0, spec["seed"], spec["full_layers"])]
        return evaluate_only(src, spec["budget"], out, data, args)
    run = argparse.Namespace(**vars(args))
    run.config, run.budget, run.seed, run.full_layers, run.out = (spec["config"], spec["budget"], spec["seed"],
                                                                 tuple(spec["full_layers"]), out)
    return train(run, data)


def sweep(args) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    done = finished_rows(args.out)
    if done and not args.resume:
        raise RunError(f"{args.out} already holds {len(done)} finished rows; pass --resume to skip them "
                         f"or choose another --out")
    if args.results.exists() and not args.resume:
        raise RunError(f"{args.results} exists; pass --resume to rewrite it from the finished rows")
    data = load_data(args)
    mine = lambda i: i % args.shard_count == args.shard_index  # noqa: E731

    def run_list(specs: list[dict]) -> None:
        for i, spec in enumerate(specs):
            name = spec_name(spec)
            if not mine(i) or (args.only is not None and name not in args.only):
                continue
            if name in done:
                print(f"[sweep] {name}: finished, skipped", flush=True)
                continue
            print(f"[sweep] {name}: running", flush=True)
            done[name] = run_spec(spec, args, data, done)
            write_results(done, args)

    specs1 = phase1_rows(args)
    run_list(specs1)
    deadline = time.time() + 60 * args.wait_minutes
    best = best_adaptive(done, args)
    while best is None and args.shard_count > 1 and time.time() < deadline and args.only is None:
        time.sleep(30)
        done.update(finished_rows(args.out))
        best = best_adaptive(done, args)
    done.update(finished_rows(args.out))
    best = best_adaptive(done, args)
    if best is None:
        missing = [spec_name(s) for s in specs1 if spec_name(s) not in done]
        print(f"[sweep] second phase not started: budget-0.35 rows missing: {', '.join(missing)}", flush=True)
    else:
        specs2 = phase2_rows(best, args)
        if row_name("full", 1.0, 0, args.full_layers) not in done:  # the model the evaluated rows tile
            print("[sweep] full@1/s0 not finished: its evaluations at 0.5 and 0.25 wait", flush=True)
            specs2 = [s for s in specs2 if not s.get("evaluate_only")]
        run_list(specs2)
        if args.bundle:
            bundle(done, best, args)
    done.update(finished_rows(args.out))
    return write_results(done, args)


def bundle(done: dict, best: str, args) -> None:
    for name, row in (("full", done.get(row_name("full", 1.0, 0, args.full_layers))),
                      ("adaptive", done.get(row_name(best, 0.35, 0, args.full_layers)))):
        if row is None:
            print(f"[bundle] {name}: its row is not finished", flush=True)
            continue
        path = export_bundled(row["checkpoint"], name, info={"row": row["row"], "test_bpb": row["test_bpb"]})
        print(f"[bundle] {name}: {row['row']} -> {path} ({path.stat().st_size / 2**20:.1f} MiB)", flush=True)


# ----------------------------------------------------------------------------- table, goals, figures
def _interp(curve: list[dict], x: float, key: str = "bytes") -> float | None:
    pts = [(c[key], c["bpb"]) for c in curve]
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def goals(rows: list[dict], best: str | None, full_layers=()) -> dict:
    """The issue's goals, checked on the rows present (None where a row is missing), over the rows of
    the sweep's ``--full-layers`` choice (rows of the other choice stay in the table, not in the goals)."""
    def chosen(r: dict) -> bool:  # rows store resolved indices ([0, 3]); --full-layers may count from the end
        want = {k % r["n_layers"] for k in outer_layers(r["configuration"], full_layers)}
        return set(r.get("full_resolution_layers", ())) == want

    by = {}
    for r in rows:
        if chosen(r):
            by.setdefault((r["configuration"], r["budget"], r.get("kind")), []).append(r)

    def mean(cfg, b, key, kind="trained"):
        vals = [r[key] for r in by.get((cfg, b, kind), []) if r.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    out: dict = {"best_adaptive": best}
    full = by.get(("full", 1.0, "trained"), [])
    if best is None or not full:
        return out
    fb, ab, ub = mean("full", 1.0, "test_bpb"), mean(best, 0.35, "test_bpb"), mean("uniform", 0.35, "test_bpb")
    # equal training bytes: the adaptive validation curve at full resolution's final training bytes
    eq = []
    for f in full:
        for a in by.get((best, 0.35, "trained"), []):
            if a["seed"] == f["seed"]:
                v = _interp(a["validation_curve"], f["train_bytes"])
                if v is not None:
                    eq.append((v, f["validation_curve"][-1]["bpb"]))
    out["equal_bytes_val_bpb"] = None if not eq else {"adaptive": statistics.fmean(v for v, _ in eq),
                                                      "full": statistics.fmean(w for _, w in eq)}
    if eq:
        a_eq, f_eq = out["equal_bytes_val_bpb"]["adaptive"], out["equal_bytes_val_bpb"]["full"]
        out["within_3pct_of_full_at_equal_bytes"] = a_eq <= 1.03 * f_eq
    if ab is not None and ub is not None:
        out["test_bpb_at_0.35"] = {"full": fb, best: ab, "uniform": ub}
        out["2pct_better_than_uniform"] = ab <= 0.98 * ub
    if ab is not None and fb is not None:
        out["beats_full_at_equal_wall_time"] = ab < fb
    pf, pa = mean("full", 1.0, "prefill_bytes_per_s"), mean(best, 0.25, "prefill_bytes_per_s")
    df, da = mean("full", 1.0, "decode_bytes_per_s"), mean(best, 0.25, "decode_bytes_per_s")
    if pf and pa:
        out["prefill_speedup_at_0.25"] = pa / pf
        out["prefill_2.5x"] = pa / pf >= 2.5
    if df and da:
        out["decode_speedup_at_0.25"] = da / df
        out["decode_2x"] = da / df >= 2.0
    return out


def write_results(done: dict, args) -> dict:
    rows = sorted(done.values(), key=lambda r: (r["budget"] != 1.0, -r["budget"], r["configuration"], r["seed"],
                                                r["row"]))
    best = best_adaptive(done, args)
    table = {
        "description": "Byte-level TiledLM on the Python 3.11 documentation (python3.11-doc, split by document); "
                       "scripts/train_text.py --sweep. test_bpb on the test split; flops_per_byte = 2 x multiply-adds "
                       "of the layers as run (tiling.ops.layer_cost, per row) plus the tied head; speeds on one "
                       "thread, one row.",
        "command": "python scripts/train_text.py --sweep --resume " + " ".join(_cmd_args(args)),
        "goals": goals(rows, best, args.full_layers),
        "rows": rows,
    }
    atomic_write_json(args.results, table)
    try:
        figures(rows, args.figures)
    except Exception as e:  # a figure must never lose the table
        print(f"warning: figures not written: {e!r}", file=sys.stderr)
    print(format_table(rows), flush=True)
    return table


def _cmd_args(args) -> list[str]:
    out = [f"--out {args.out}", f"--max-minutes {args.max_minutes:g}", f"--clock {args.clock}", f"--context {args.context}",
           f"--batch-size {args.batch_size}", f"--d-model {args.d_model}", f"--n-layers {args.n_layers}"]
    if args.full_layers:
        out.append("--full-layers " + ",".join(map(str, args.full_layers)))
    return out


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table; ``× full`` columns divide by the seed-0 full-resolution row."""
    full = next((r for r in rows if r["row"] == "full@1/s0"), None)
    lines = ["| row | kind | test bpb | mean R | train bytes | train s | MFLOPs/byte | FLOPs × full | prefill B/s "
             "| decode B/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dec = "—" if r.get("decode_bytes_per_s") is None else f"{r['decode_bytes_per_s']:.0f}"
        pre = "—" if r.get("prefill_bytes_per_s") is None else f"{r['prefill_bytes_per_s']:.0f}"
        rel = "—" if full is None else f"{r['flops_per_byte'] / full['flops_per_byte']:.3f}"
        lines.append(f"| {r['row']} | {r['kind']} | {r['test_bpb']:.4f} | {r['test_mean_resolution']:.3f} | "
                     f"{r['train_bytes']} | {r['train_seconds']:.0f} | {r['flops_per_byte'] / 1e6:.3f} | {rel} "
                     f"| {pre} | {dec} |")
    return "\n".join(lines) + "\n"


def figures(rows: list[dict], directory: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tiling.train.storage import atomic_write_bytes
    import io

    colors = {"full": "k", "uniform": "tab:blue", "adaptive": "tab:red", "router": "tab:green",
              "scan-adaptive": "tab:purple"}
    markers = {1.0: "*", 0.5: "s", 0.35: "o", 0.25: "^"}

    def label(r):  # configuration and outer layers, e.g. "uniform+ends"
        return r["row"].split("@")[0]

    def all_tiled(r):  # a block-scope row without full-resolution outer layers: drawn faint
        return r["configuration"] not in TOKEN_LEVEL and not r.get("full_resolution_layers")

    def save(fig, name):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(directory / name, buf.getvalue())

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    seen = set()
    for r in rows:
        c = r["configuration"]
        ax.scatter(r["flops_per_byte"] / 1e6, r["test_bpb"], color=colors.get(c, "gray"),
                   marker=markers.get(r["budget"], "x"), label=label(r) if label(r) not in seen else None,
                   facecolors="none" if r["kind"] == "evaluated" else None, alpha=0.4 if all_tiled(r) else 1.0)
        seen.add(label(r))
    ax.set_xlabel("MFLOPs per byte (2 × multiply-adds as run, layer_cost + head)")
    ax.set_ylabel("test bits per byte")
    ax.set_title("Byte-level TiledLM on the Python docs: bpb vs compute\n(marker: ★ 1, ■ 0.5, ● 0.35, ▲ 0.25; "
                 "hollow: tiled after training; faint: every layer tiled)", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, "text_lm_bpb_vs_flops.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    seen = set()
    for r in rows:
        if r["kind"] != "trained":
            continue
        c = r["configuration"]
        cur = r["validation_curve"]
        ax.plot([p["train_seconds"] / 60 for p in cur], [p["bpb"] for p in cur], color=colors.get(c, "gray"),
                ls="-" if r["budget"] in (1.0, 0.35) else ":", marker=markers.get(r["budget"], "x"), ms=3,
                label=label(r) if label(r) not in seen else None, alpha=0.4 if all_tiled(r) else 1.0)
        seen.add(label(r))
    ax.set_xlabel("training time (minutes on one thread: CPU time, or wall time for rows without a clock)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("bpb vs training wall time (solid: budget 1 / 0.35; dotted: 0.5, 0.25; faint: every layer "
                 "tiled)", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, "text_lm_bpb_vs_time.png")


def measure(args) -> dict:
    """Seconds per training step of one configuration on random bytes (no data needed)."""
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.config == "hourglass":
        model, budget = build_hourglass(args)[0].train(), args.budget
    else:
        cfg = model_config(args.config, args.budget, d_model=args.d_model, n_layers=args.n_layers,
                           d_state=args.d_state, tile_size=args.tile_size, r_min=args.r_min,
                           full_resolution_layers=outer_layers(args.config, args.full_layers), expand=args.expand)
        model, budget = build_model(cfg).train(), cfg.tiling.budget
    options(args)  # checks --device and the rest
    model = model.to(args.device)
    opt = torch.optim.AdamW(model.param_groups(args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(args.seed)
    times = []
    for i in range(args.measure + 2):
        x = torch.randint(0, 256, (args.batch_size, args.context + 1), generator=g).to(args.device)
        t0 = time.perf_counter()
        loss, _, _ = training_loss(model, x[:, :-1], x[:, 1:], budget=budget, ratio_weight=args.ratio_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    bps = args.batch_size * args.context / step_s
    return {"config": args.config, "budget": budget, "batch_size": args.batch_size,
            "context": args.context, "d_model": args.d_model, "n_layers": args.n_layers, "threads": args.threads,
            "seconds_per_step": step_s, "train_bytes_per_s": bps,
            "train_bytes_in_limit": int(bps * args.max_minutes * 60), "max_minutes": args.max_minutes}


#: what a run refuses with one line ``train_text: error: ...`` and exit code 2: bad input, a refused run
#: or folder, a file that cannot be read or written, memory a model or a batch cannot get
EXPECTED = (UsageError, CorpusError, TextInputError, TextModelError, RunError, StorageError, ValueError, OSError,
            MemoryError)


def main(argv=None) -> int:
    """Run the script; returns the exit code (0; 2 for any expected error, one line; 130 when interrupted)."""
    return run_main("train_text", lambda: _main(argv), expected=EXPECTED,
                    interrupted="train_text: interrupted; what was written so far is kept")


def _main(argv) -> int:
    args = parse_args(argv)
    try:
        if args.measure:
            print(json.dumps(measure(args)))
        elif args.sweep and args.table == "hourglass":
            args.out = args.out or Path("runs/hourglass")
            hourglass_sweep.sweep(args)
        elif args.sweep:
            args.out = args.out or Path("runs/text_lm")
            sweep(args)
        else:
            if args.out is None:
                b = 1.0 if args.config == "full" else args.budget
                args.out = row_dir(Path("runs/text_lm"), row_name(args.config, b, args.seed, args.full_layers))
            print(json.dumps({k: v for k, v in train(args).items() if k != "validation_curve"}))
    except RuntimeError as e:  # torch's allocator: a model or a batch larger than the memory
        if "allocate" not in str(e):
            raise
        raise MemoryError(f"out of memory ({first_line(e)}); a smaller --d-model, --n-layers, --batch-size or "
                          "--context fits") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
