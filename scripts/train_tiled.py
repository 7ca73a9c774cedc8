#!/usr/bin/env python
"""Train a small TiledMamba language model on a synthetic variable-density task (seed 001 §3.2–3.4):
selective burst copying (``--task copy``) or recall at a lag inside periodic bursts (``--task repeat``).

Single run::

    python scripts/train_tiled.py --policy adaptive --budget 0.35 --steps 400 --out runs/adaptive

Comparison (full resolution; uniform, binary and adaptive at each budget) with a table, JSON
lines logs and the figure accuracy vs scan cost::

    python scripts/train_tiled.py --sweep --budgets 0.25 0.35 0.5 --out runs/sweep \
        --figure docs/figures/training/accuracy_vs_cost.png

Distributed (DistributedDataParallel; gloo on CPU, nccl on GPU; DistributedSampler)::

    torchrun --nproc_per_node=2 scripts/train_tiled.py --steps 100 --out runs/ddp

Model: embedding, ``n_layers`` × [RMSNorm + TiledMamba] with residuals, final RMSNorm, tied
head; ``--scope block`` (default) or ``scan`` (the runs of docs/benchmarks.md up to run 5). AdamW (no decay on A_log, D, norms, biases, tiling parameters), linear warm-up then cosine
decay, periodic evaluation (answer accuracy, loss, mean resolution, scan cost relative to full
resolution, load imbalance, IFQ/CER of the first layer), metrics as JSON lines. Checkpoints
(model, optimizer, scheduler, RNG, step) are atomic safetensors files; ``--resume`` continues
bit-identically (the data order is a function of the step).

Nothing saved is lost (:mod:`tiling.train.storage`): an ``--out`` that holds a run
(``checkpoint.safetensors``, ``log.jsonl`` or ``run.json``) is refused unless ``--resume`` (continue
it: the log is cut back to the checkpoint's step, then appended to) or ``--overwrite`` (replace it:
every option is checked first, and the old run is moved aside until the new one writes its first
checkpoint, put back if it fails before). A second run into the same ``--out`` is refused at once,
naming the first one's pid and start time (a lock beside the folder). ``--resume`` refuses a
checkpoint trained with other settings (e.g. another ``--lr``: its scheduler would silently keep the
old one), naming them, a ``--stop-at`` below the checkpoint's step, and a checkpoint of another
folder when ``--out`` holds a run. Temporary files of a killed checkpoint write are removed at the
next start. Bad input (any option out of its range, ``--device bogus``, a read-only ``--out``, a full
disk at the checkpoint) ends as one line ``train_tiled: error: ...`` naming the option, exit code 2;
Ctrl-C exits with code 130 and keeps what was written.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiling.config import MIN_RESOLUTION, TilingConfig  # noqa: E402
from tiling.metrics import adaptation_efficiency, layer_tile_metrics, load_imbalance  # noqa: E402
from tiling.ops import scan_cost  # noqa: E402
from tiling.train import BurstCopyDataset, BurstRepeatDataset, TiledLM, load_checkpoint, save_checkpoint  # noqa: E402
from tiling.train.checkpoint import CheckpointError, read_meta  # noqa: E402
from tiling.train.data import collate  # noqa: E402
from tiling.train.schedule import lr_factor  # noqa: E402
from tiling.options import Parser as _Parser, RunError  # noqa: E402  (usage errors: one line, exit code 2)
from tiling.train.storage import ASIDE, RunDirectory, StorageError, atomic_write_bytes, cut_log  # noqa: E402

CHECKPOINT = "checkpoint.safetensors"
#: the files a run writes into --out (the others are the user's: never moved or deleted)
OWNED = (CHECKPOINT, "log.jsonl", "params_rank*.safetensors")
#: the sweep's own files in its --out (each configuration is a run folder of its own)
SWEEP_OWNED = ("summary.json", "summary.md")
#: flags that steer the run, not what is trained: a resume may change them
RUN_CONTROL = {"out", "resume", "init_from", "stop_at", "eval_every", "log_every", "ckpt_every", "device", "threads",
               "quiet", "no_ifq", "overwrite", "sweep", "budgets", "base_steps", "base_lr", "figure",
               "with_non_causal"}


#: integer options and their ranges (upper ends keep every size far from int64 and memory limits)
INT_RANGES = {"period": (1, 2 ** 20), "context_len": (2, 2 ** 20), "n_bursts": (1, 2 ** 16), "burst_len": (1, 2 ** 16),
              "n_symbols": (2, 2 ** 16), "burst_window": (1, 2 ** 20), "train_size": (1, 2 ** 31),
              "eval_size": (1, 2 ** 24), "d_model": (1, 2 ** 14), "n_layers": (1, 1024), "d_state": (1, 1024),
              "tile_size": (1, 2 ** 20), "predictor_tail": (1, 2 ** 20), "steps": (1, 2 ** 40), "stop_at": (1, 2 ** 40),
              "batch_size": (1, 2 ** 16), "warmup": (0, 2 ** 40), "seed": (0, 2 ** 32 - 1), "eval_every": (1, 2 ** 40),
              "log_every": (1, 2 ** 40), "ckpt_every": (0, 2 ** 40), "threads": (1, 4096), "base_steps": (0, 2 ** 40)}
#: number options: (low, high, low_open); all must be finite
FLOAT_RANGES = {"ratio_weight": (0.0, 1e6, False), "budget": (MIN_RESOLUTION, 1.0, False),
                "r_min": (MIN_RESOLUTION, 1.0, False),
                "exponent": (0.0, 1e3, True), "slack": (0.5, 1e12, False), "dt_min": (0.0, 1.0, True),
                "dt_max": (0.0, 1.0, True), "lr": (0.0, 1e3, True), "weight_decay": (0.0, 1e3, False),
                "grad_clip": (0.0, 1e12, False), "base_lr": (0.0, 1e3, True)}


def check_options(args) -> None:
    """Every option in its range, before anything is built or written (the message names the option).

    Raises
    ------
    RunError
        An integer or number option outside its range (NaN and Inf included), ``--dt-min`` above
        ``--dt-max``, a ``--budgets`` entry outside (0, 1], or a ``--device`` torch does not know or
        that is not available.
    """
    for key, (low, high) in INT_RANGES.items():
        v = getattr(args, key)
        if v is not None and not low <= v <= high:
            raise RunError(f"{_flag(key)} must lie in [{low}, {high}], got {v}")
    for key, (low, high, low_open) in FLOAT_RANGES.items():
        v = getattr(args, key)
        if v is not None and not ((low < v if low_open else low <= v) and v <= high):  # also refuses NaN
            raise RunError(f"{_flag(key)} must lie in {'(' if low_open else '['}{low:g}, {high:g}], got {v}")
    if args.dt_min > args.dt_max:
        raise RunError(f"--dt-min must be <= --dt-max = {args.dt_max}, got {args.dt_min}")
    for c in args.budgets:
        if not MIN_RESOLUTION <= c <= 1.0:
            raise RunError(f"--budgets must lie in [{MIN_RESOLUTION:g}, 1], got {c}")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise RunError(f"--device {args.device!r} is not a device ({str(e).splitlines()[0]}); expected e.g. cpu, "
                       "cuda or cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {args.device!r}: no CUDA device is available here; pass --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"--device {args.device!r}: expected cpu or cuda")


def tiling_config(args) -> TilingConfig:
    """The layers' :class:`~tiling.config.TilingConfig`; a refused option is named by its flag."""
    fields = dict(tile_size=args.tile_size, budget=args.budget, r_min=args.r_min,
                  policy=args.policy, causal=not args.non_causal, exponent=args.exponent, slack=args.slack,
                  predictor_tail=args.predictor_tail, predictor_reduce=args.predictor_reduce,
                  calibration=args.calibration, scope=args.scope,
                  boundaries=args.boundaries if args.scope == "block" else "tile")
    try:
        return TilingConfig(**fields)
    except (TypeError, ValueError) as e:
        named = next((k for k in fields if str(e).startswith(k)), None)
        raise RunError(f"{_flag(named) + ': ' if named else ''}{str(e).splitlines()[0]}") from None


def parse_args(argv=None) -> argparse.Namespace:
    # long: a flat declaration of the flags, one add_argument each
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=["copy", "repeat"], default="copy",
                   help="copy: BurstCopyDataset (copy the bursts after SEP); repeat: BurstRepeatDataset "
                        "(recall at lag --period inside periodic bursts)")
    g.add_argument("--period", type=int, default=8, help="repeat: period of the burst pattern (recall lag)")
    g.add_argument("--context-len", type=int, default=1024)
    g.add_argument("--n-bursts", type=int, default=2)
    g.add_argument("--burst-len", type=int, default=16)
    g.add_argument("--n-symbols", type=int, default=8)
    g.add_argument("--burst-window", type=int, default=None, help="copy: bursts lie in the last W context tokens")
    g.add_argument("--train-size", type=int, default=100_000)
    g.add_argument("--eval-size", type=int, default=128)
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, default=32)
    g.add_argument("--n-layers", type=int, default=2)
    g.add_argument("--d-state", type=int, default=16)
    g.add_argument("--tile-size", type=int, default=16)
    g.add_argument("--scope", choices=["block", "scan"], default="block",
                   help="block: the whole mixer runs on one token per segment (cost falls with the budget); "
                        "scan: the resolution shrinks the recurrence only (the earlier runs of docs/benchmarks.md)")
    g.add_argument("--boundaries", choices=["tile", "token"], default="tile",
                   help="block scope: per-tile segment counts from the policy, or H-Net's learned router")
    g.add_argument("--ratio-weight", type=float, default=0.03,
                   help="boundaries=token: weight of H-Net's ratio loss (the paper's alpha)")
    g.add_argument("--policy", choices=["adaptive", "uniform", "binary"], default="adaptive")
    g.add_argument("--budget", type=float, default=1.0)
    g.add_argument("--r-min", type=float, default=0.0625)
    g.add_argument("--non-causal", action="store_true", help="encoder mode (leaks the segmentation)")
    g.add_argument("--exponent", type=float, default=0.5, help="policy importance q_i = ρ_i^exponent")
    g.add_argument("--slack", type=float, default=4.0, help="causal budget controller's slack D (tiles)")
    g.add_argument("--predictor-tail", type=int, default=None,
                   help="causal policy: predict tile i from the last N tokens of tile i-1 (default: the whole tile)")
    g.add_argument("--predictor-reduce", choices=["mean", "max"], default="mean",
                   help="causal policy: mean or max of the predictor's tail tokens")
    g.add_argument("--calibration", choices=["history", "running"], default="running",
                   help="causal policy: calibrate on running population quantiles (default) or on the sequence's history")
    g.add_argument("--shared-density", action="store_true",
                   help="every layer's policy reads the first layer's tile densities (TiledLM shared_density)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=400)
    g.add_argument("--dt-min", type=float, default=0.001)
    g.add_argument("--dt-max", type=float, default=0.1)
    g.add_argument("--stop-at", type=int, default=None, help="stop after this step (schedule still over --steps)")
    g.add_argument("--batch-size", type=int, default=16, help="per process")
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup", type=int, default=20)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("runs/train_tiled"))
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--ckpt-every", type=int, default=0, help="0: only at the end")
    g.add_argument("--resume", type=Path, default=None,
                   help="checkpoint to continue from (refused if trained with other settings)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoint and log); without it, or --resume, "
                        "an --out that holds a run is refused")
    g.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's model weights only")
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--no-ifq", action="store_true", help="skip the IFQ/CER evaluation")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("sweep")
    g.add_argument("--sweep", action="store_true", help="full + {uniform, binary, adaptive} × budgets")
    g.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.35, 0.5])
    g.add_argument("--base-steps", type=int, default=0,
                   help="sweep: first train a full-resolution model this long, then fine-tune every "
                        "configuration from it for --steps (0 steps: evaluate it as is); without it, "
                        "--init-from gives the common starting checkpoint")
    g.add_argument("--base-lr", type=float, default=None, help="sweep: learning rate of the base run (default --lr)")
    g.add_argument("--figure", type=Path, default=None, help="accuracy-vs-cost figure (sweep)")
    g.add_argument("--with-non-causal", action="store_true",
                   help="sweep: also adaptive with causal=False (encoder mode; leaks the segmentation)")
    args = p.parse_args(argv)
    if args.resume is not None and (args.overwrite or args.sweep):
        p.error("--resume continues one run: not with --overwrite or --sweep")
    return args


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def settings(args) -> dict[str, str]:
    """What the run trains (every flag but :data:`RUN_CONTROL`), as stored in each checkpoint."""
    return {k: str(v) for k, v in vars(args).items() if k not in RUN_CONTROL}


def _resumes_in_place(args) -> bool:
    """Whether ``--resume`` names the checkpoint of the run in ``--out`` (not one of another folder)."""
    return args.resume is not None and args.resume.resolve().parent == args.out.resolve()


def run_directory(args, *, primary: bool = True) -> RunDirectory:
    """The :class:`~tiling.train.storage.RunDirectory` of ``--out`` (entered by :func:`train`)."""
    return RunDirectory(args.out, settings=settings(args), overwrite=args.overwrite, resume=_resumes_in_place(args),
                        owned=OWNED, name="--out", primary=primary)


def check_run_dir(args) -> None:
    """Refuse an ``--out`` that holds a run unless ``--resume`` or ``--overwrite`` says what to do with it.

    Writes nothing (a sweep calls it for every configuration before the first one trains); the
    same checks run again under the folder's lock when :func:`train` enters it.
    """
    run = run_directory(args)  # checks the path: not a file, not under one, writable
    left = sorted(run.path.parent.glob(f".{run.path.name}{ASIDE}*"))
    if left:
        raise RunError(f"--out {str(args.out)!r}: an earlier --overwrite was interrupted and left the previous run in "
                       f"{str(left[0])!r}; move back what you need from it and delete it")
    held = run.held()
    if held and args.resume is not None and not _resumes_in_place(args):
        raise RunError(f"--out {str(args.out)!r} holds a run ({', '.join(held)}), and --resume {str(args.resume)!r} "
                       f"is another folder's checkpoint; pass --resume {args.out / CHECKPOINT} to continue the run "
                       "in --out, or choose an empty --out to continue that checkpoint there")
    if held and args.resume is None and not args.overwrite:
        raise RunError(f"--out {str(args.out)!r} holds a run ({', '.join(held)}); pass --resume "
                       f"{args.out / CHECKPOINT} to continue it, --overwrite to replace it (the old run is kept "
                       "aside until the new one writes its first checkpoint), or choose another --out")


def check_resume(args) -> None:
    """Refuse a checkpoint whose recorded settings differ from this run's, naming each one, and a
    ``--stop-at`` below its step (the header only is read: nothing is loaded)."""
    meta, _ = read_meta(args.resume)  # a missing or corrupt file: a CheckpointError naming it
    if args.stop_at is not None and args.stop_at < meta["step"]:
        raise RunError(f"--stop-at {args.stop_at} is below the step of --resume {str(args.resume)!r} "
                       f"({meta['step']}); pass a --stop-at of at least {meta['step']}")
    recorded = meta["extra"].get("args")
    if not isinstance(recorded, dict):
        print(f"train_tiled: warning: {args.resume} records no settings (an older checkpoint); they are not checked",
              file=sys.stderr)
        return
    now = settings(args)
    differ = [f"{_flag(k)} {recorded[k]} there, {v} now" for k, v in now.items() if k in recorded and recorded[k] != v]
    if differ:
        raise RunError(f"--resume {str(args.resume)!r} was trained with other settings ({'; '.join(differ)}); "
                       "pass the same settings (a resume continues the run as it was), or start a new run")


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files a killed checkpoint write left (``.checkpoint.safetensors.*.tmp``)."""
    stale = list(out.glob(f".{CHECKPOINT}.*.tmp"))
    for f in stale:
        f.unlink()
    if stale:
        print(f"train_tiled: removed {len(stale)} temporary file(s) of an interrupted checkpoint write in {out}",
              file=sys.stderr)


def _dist_info() -> tuple[bool, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world


def lr_lambda_factory(warmup: int, total: int):
    """The project's one schedule (:func:`tiling.train.schedule.lr_factor`) on the progress ``step / total``:
    linear warm-up over ``warmup`` steps times a cosine from 1 to 0.1 at ``total``."""
    def f(step: int) -> float:
        return lr_factor(step, step / max(1, total), warmup=warmup)
    return f


def build(args, device, tiling: TilingConfig | None = None):
    data_kw = dict(context_len=args.context_len, n_bursts=args.n_bursts, burst_len=args.burst_len,
                   n_symbols=args.n_symbols)
    if args.task == "copy":
        cls, data_kw["burst_window"] = BurstCopyDataset, args.burst_window
    else:
        cls, data_kw["period"] = BurstRepeatDataset, args.period
    train_ds = cls(args.train_size, seed=args.seed, **data_kw)
    eval_ds = cls(args.eval_size, seed=args.seed + 10_007, **data_kw)
    torch.manual_seed(args.seed)
    tiling = tiling_config(args) if tiling is None else tiling
    model = TiledLM(train_ds.vocab_size, d_model=args.d_model, n_layers=args.n_layers, d_state=args.d_state,
                    dt_min=args.dt_min, dt_max=args.dt_max, tiling=tiling,
                    shared_density=args.shared_density).to(device)
    opt = torch.optim.AdamW(model.param_groups(args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_factory(args.warmup, args.steps))
    return train_ds, eval_ds, model, opt, sched


def batch_for_step(ds, sampler, step: int, batch_size: int, cache: dict):
    """The batch of ``step``: a pure function of (seed, step, rank), so resuming replays the stream."""
    per_epoch = len(sampler) // batch_size
    if per_epoch < 1:
        raise ValueError(f"train set too small: {len(sampler)} examples per process for batch size {batch_size}")
    epoch, off = divmod(step, per_epoch)
    if cache.get("epoch") != epoch:
        sampler.set_epoch(epoch)
        cache["epoch"], cache["indices"] = epoch, list(iter(sampler))
    idx = cache["indices"][off * batch_size:(off + 1) * batch_size]
    return collate([ds[i] for i in idx])


@torch.no_grad()
def evaluate(model: TiledLM, eval_ds, args, device, previous_patterns=None) -> tuple[dict, torch.Tensor | None]:
    model.eval()
    correct = total = 0
    loss_sum = dev_num = dev_den = 0.0
    res, rec, tot, row_costs = [], [], [], []
    by_index = isinstance(eval_ds, BurstRepeatDataset)
    hits_k = torch.zeros(getattr(eval_ds, "burst_len", 1), dtype=torch.float64)
    count_k = torch.zeros_like(hits_k)
    L = eval_ds.seq_len
    full = scan_cost(L, args.tile_size, 1.0, args.d_state, args.d_state, model.layers[0].d_inner, boundary_gain=True)
    full_block = model.layers[0].cost(L, signal=False)  # the whole block at budget 1, one row
    blk = []
    for s in range(0, len(eval_ds), args.batch_size):
        x, y, m = (t.to(device) for t in collate([eval_ds[i] for i in range(s, min(s + args.batch_size, len(eval_ds)))]))
        logits, plans = model(x, return_plans=True)
        full_logits = model(x, budget=1.0)  # the same weights at full resolution (seed 000 Thm 3.5)
        dev_num += float((logits - full_logits)[m].pow(2).sum())
        dev_den += float(full_logits[m].pow(2).sum())
        pred = logits.argmax(-1)
        correct += int((pred == y)[m].sum())
        total += int(m.sum())
        if by_index:  # accuracy by position of the answer in its burst
            k = eval_ds.target_index(x)[m].cpu()
            hits_k += torch.bincount(k, weights=(pred == y)[m].cpu().double(), minlength=hits_k.numel())
            count_k += torch.bincount(k, minlength=hits_k.numel()).double()
        loss_sum += float(F.cross_entropy(logits[m], y[m], reduction="sum"))
        for plan in plans:
            res.append(plan.mean_resolution())
            lc = plan.meta["layer_cost"]
            blk.append(torch.full((plan.batch,), lc["total"] / plan.batch / full_block["total"], dtype=torch.float64))
            if "scan_cost" in plan.meta:  # scan scope: the scan's own counts per row
                costs = torch.tensor([c["madd_total"] for c in plan.meta["scan_cost"]], dtype=torch.float64)
                recs = torch.tensor([c["madd_recurrence"] + c["madd_boundary"] for c in plan.meta["scan_cost"]],
                                    dtype=torch.float64)
                tot.append(costs / full["madd_total"])
                rec.append(recs / (full["madd_recurrence"] + full["madd_boundary"]))
            else:  # block scope: the scan runs at R = 1 on the compact sequence, so its cost is ∝ L_c
                share = torch.full((plan.batch,), lc["scan"] / plan.batch / full_block["scan"], dtype=torch.float64)
                tot.append(share)
                rec.append(share)
            row_costs.append(plan.cost.sum(-1).to(torch.float64))
    metrics = {
        "accuracy": correct / total,
        "loss": loss_sum / total,
        "deviation": math.sqrt(dev_num / dev_den) if dev_den > 0 else 0.0,
        "resolution": float(torch.cat(res).mean()),
        "scan_cost": float(torch.cat(tot).mean()),
        "recurrence_cost": float(torch.cat(rec).mean()),
        "block_cost": float(torch.cat(blk).mean()),
        "imbalance": float(torch.stack([load_imbalance(c) for c in row_costs]).mean()),
    }
    if by_index:
        acc_k = hits_k / count_k
        metrics["accuracy_by_index"] = [None if c == 0 else round(float(a), 4) for a, c in zip(acc_k, count_k)]
        # answers whose lag-`period` source lies in the burst's first tile, and all the others
        early = slice(eval_ds.period, eval_ds.period + args.tile_size)
        late = slice(eval_ds.period + args.tile_size, None)
        metrics["accuracy_early"] = float(hits_k[early].sum() / count_k[early].sum().clamp_min(1))
        metrics["accuracy_late"] = float(hits_k[late].sum() / count_k[late].sum().clamp_min(1))
    patterns = None
    if not args.no_ifq and model.layers[0].scope == "scan":  # IFQ measures the scan scope's tiles
        x0 = eval_ds[0][0].unsqueeze(0).to(device)
        h = model.norms[0](model.embedding(x0))
        tm = layer_tile_metrics(model.layers[0], h, previous=previous_patterns)
        metrics.update(ifq=float(tm["ifq"].mean()), cer=tm["cer"], ifq_compute=tm["compute"], ifq_memory=tm["memory"])
        patterns = tm["patterns"]
    model.train()
    return metrics, patterns


def train(args) -> dict:
    """One run into ``--out``: every check first, then the run under the folder's lock."""
    distributed, rank, world = _dist_info()
    check_options(args)  # every option, before anything is built or written (an --overwrite typo costs nothing)
    tiling = tiling_config(args)
    if rank == 0:  # the other ranks would see rank 0's run.json; when rank 0 refuses, torchrun stops them
        check_run_dir(args)
    if args.resume is not None:
        check_resume(args)
    with run_directory(args, primary=rank == 0) as run:
        return _train(args, run, tiling, distributed, rank, world)


def _train(args, run: RunDirectory, tiling: TilingConfig, distributed: bool, rank: int, world: int) -> dict:
    # long: the training loop: the steps share the optimiser, the schedule, the clock and the log
    device = torch.device(args.device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.threads:
        torch.set_num_threads(args.threads)
    if rank == 0:
        remove_stale_temporaries(args.out)  # (--overwrite moved the previous run aside already)
    train_ds, eval_ds, model, opt, sched = build(args, device, tiling)
    start = 0
    if args.init_from is not None:
        load_checkpoint(args.init_from, model=model, restore_rng=False)
    if args.resume is not None:
        start = load_checkpoint(args.resume, model=model, optimizer=opt, scheduler=sched)["step"]
    # block scope: at a budget whose layout is the identity the pool gate (and the router) take no part
    unused = any(layer.scope == "block" for layer in model.layers)
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused) if distributed else model
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    log_path = run.file("log.jsonl")
    history: list[dict] = []
    if rank == 0 and args.resume is not None:  # the log is cut back to what the checkpoint covers
        dropped = cut_log(log_path, lambda r: r.get("kind") in ("train", "eval") and isinstance(r.get("step"), int)
                          and (r["step"] < start or (r["kind"] == "eval" and r["step"] == start)), root=run.path)
        if dropped:
            print(f"train_tiled: cut {dropped} log line(s) after the checkpoint's step {start} from {log_path}",
                  file=sys.stderr)
        if log_path.exists():  # the evaluations before the checkpoint belong to the run's history
            history = [json.loads(x) for x in log_path.read_text().splitlines() if '"eval"' in x]
            history = [h for h in history if h.get("kind") == "eval"]
    log = open(log_path, "a" if args.resume is not None else "w") if rank == 0 else None

    def emit(rec: dict) -> None:
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    stop = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    cache: dict = {}
    patterns = None
    bar = tqdm(range(start, stop), desc=f"{args.policy}@{args.budget:g}", disable=args.quiet or rank != 0,
               dynamic_ncols=True)
    t0 = time.time()
    model.train()
    for step in bar:
        x, y, m = (t.to(device) for t in batch_for_step(train_ds, sampler, step, args.batch_size, cache))
        logits = net(x)
        loss = F.cross_entropy(logits[m], y[m])
        ratio = [layer.ratio_loss for layer in model.layers if layer.ratio_loss is not None]
        if ratio:  # learned boundaries: H-Net's ratio loss steers the router to the budget
            loss = loss + args.ratio_weight * torch.stack(ratio).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == stop - 1:
            emit({"kind": "train", "step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                  "elapsed_s": time.time() - t0})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if rank == 0 and (done % args.eval_every == 0 or done == args.steps):
            metrics, patterns = evaluate(model, eval_ds, args, device, patterns)
            metrics.update(kind="eval", step=done)
            history.append(metrics)
            emit(metrics)
        if rank == 0 and args.ckpt_every and done % args.ckpt_every == 0 and done < stop:
            save_checkpoint(run.file(CHECKPOINT), model=model, optimizer=opt, scheduler=sched, step=done,
                            extra={"args": settings(args)})
            run.result_written()  # an --overwrite's previous run is deleted only now
    if rank == 0 and (not history or history[-1]["step"] != stop) and stop == args.steps:
        metrics, patterns = evaluate(model, eval_ds, args, device, patterns)
        metrics.update(kind="eval", step=stop)
        history.append(metrics)
        emit(metrics)
    if rank == 0:
        save_checkpoint(run.file(CHECKPOINT), model=model, optimizer=opt, scheduler=sched, step=stop,
                        extra={"args": settings(args)})
        run.result_written()
    summary = {"policy": args.policy, "budget": args.budget, "steps": stop, "train_seconds": time.time() - t0}
    if history:
        summary.update({k: v for k, v in history[-1].items() if k not in ("kind",)})
        if len(history) >= 2:
            R = torch.tensor([h["resolution"] for h in history], dtype=torch.float64)
            Lt = torch.tensor([h["imbalance"] for h in history[1:]], dtype=torch.float64)
            summary["ae_literal"] = float(adaptation_efficiency(R, Lt, normalised=False))
            summary["ae"] = float(adaptation_efficiency(R, Lt, r_min=args.r_min))
        emit({"kind": "summary", **summary})
    if distributed:
        from safetensors.torch import save
        params = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        atomic_write_bytes(args.out / f"params_rank{rank}.safetensors", save(params), root=args.out)
        dist.barrier()
        dist.destroy_process_group()
    if log is not None:
        log.close()
    return summary


def sweep(args) -> list[dict]:
    """Full resolution, then uniform, binary and adaptive at each budget; same seed and data.

    Every configuration's options and run folder are checked before the first one trains, and the
    sweep's folder is locked for the whole sweep."""
    policies = ("uniform", "binary", "adaptive") + (("adaptive-nc",) if args.with_non_causal else ())
    configs = [("full", "uniform", 1.0)] + [(f"{p}@{c:g}", p, c) for c in args.budgets for p in policies]
    rows = []
    init = args.init_from  # without --base-steps: every configuration starts from this checkpoint (if any)
    runs = []
    if args.base_steps > 0:
        base = argparse.Namespace(**vars(args))
        base.policy, base.budget, base.out, base.steps, base.resume = "uniform", 1.0, args.out / "base", args.base_steps, None
        base.lr = args.lr if args.base_lr is None else args.base_lr
        runs.append(base)
        init = base.out / CHECKPOINT
    for name, policy, budget in configs:
        run = argparse.Namespace(**vars(args))
        run.policy, run.budget, run.out = policy.removesuffix("-nc"), budget, args.out / name.replace("@", "_")
        run.non_causal = policy.endswith("-nc")
        run.resume, run.init_from, run.name = None, init, name
        runs.append(run)
    for run in runs:  # refuse before the first run trains, not after hours
        check_options(run)
        tiling_config(run)
        check_run_dir(run)
    with RunDirectory(args.out, overwrite=args.overwrite, owned=SWEEP_OWNED, name="--out") as top:
        if args.base_steps > 0:
            print(json.dumps({"base": train(runs.pop(0))}), flush=True)
        for run in runs:
            name, policy = run.name, ("adaptive-nc" if run.non_causal else run.policy)
            del run.name
            summary = train(run)
            summary["name"], summary["policy"] = name, policy
            rows.append(summary)
            print(json.dumps(summary), flush=True)
        top.write_bytes("summary.json", json.dumps(rows, indent=1).encode())
        top.write_bytes("summary.md", table(rows).encode())
        top.result_written()
    if args.figure is not None:
        figure(rows, args.figure, TITLES[args.task].format(L=args.context_len))
    print(table(rows))
    return rows


def table(rows: list[dict]) -> str:
    split = all("accuracy_early" in r for r in rows)  # repeat task: accuracy early / late in the burst
    extra = " early answers | later answers |" if split else ""
    lines = ["| run | budget | mean R | accuracy |" + extra + " answer loss | deviation from R=1 | recurrence cost | "
             "scan cost (all) | block cost | IFQ | CER | AE |",
             "|---|---|---|---|" + ("---|---|" if split else "") + "---|---|---|---|---|---|---|---|"]
    for r in rows:
        cols = f" {100 * r['accuracy_early']:.1f}% | {100 * r['accuracy_late']:.1f}% |" if split else ""
        lines.append(
            f"| {r['name']} | {r['budget']:g} | {r['resolution']:.3f} | {100 * r['accuracy']:.1f}% |{cols} {r['loss']:.3f} | "
            f"{r['deviation']:.3f} | {r['recurrence_cost']:.3f} | {r['scan_cost']:.3f} | {r.get('block_cost', float('nan')):.3f} | "
            f"{r.get('ifq', float('nan')):.3f} | "
            f"{r.get('cer', float('nan')):.2f} | {r.get('ae', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


TITLES = {"copy": "Selective burst copying, context {L}", "repeat": "Periodic bursts (recall at a lag), context {L}"}


def figure(rows: list[dict], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"uniform": "s--", "binary": "^:", "adaptive": "o-", "adaptive-nc": "x-."}
    for pol, st in styles.items():
        pts = sorted((r["recurrence_cost"], 100 * r["accuracy"]) for r in rows if r["policy"] == pol and r["name"] != "full")
        if pts:
            ax.plot(*zip(*pts), st, label=pol)
    full = [r for r in rows if r["name"] == "full"]
    if full:
        ax.axhline(100 * full[0]["accuracy"], color="k", lw=1, label="full resolution")
    ax.set_xlabel("scan recurrence cost (multiply-adds, relative to full resolution)")
    ax.set_ylabel("answer accuracy (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"train_tiled: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the script; returns the exit code (0, 2 for any expected error, 130 when interrupted)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line each (a stale lock taken over, a run put back)
            args = parse_args(argv)
            if args.sweep:
                sweep(args)
            else:
                print(json.dumps(train(args)))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except (RunError, StorageError, CheckpointError, ValueError) as e:
        print(f"train_tiled: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only --out, a full disk at the checkpoint: nothing under the final name is torn
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"train_tiled: error: cannot write in --out{where}: {e.strerror or _first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train_tiled: interrupted; the last checkpoint and the log written so far are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
