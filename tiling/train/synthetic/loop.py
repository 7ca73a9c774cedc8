"""One synthetic-task run: the model and data (:func:`build`), the batch of a step (:func:`batch_for_step`),
the training loop (:func:`train`), its log, checkpoints and summary.

AdamW (no decay on A_log, D, norms, biases, tiling parameters) with the project's one schedule
(:func:`tiling.train.schedule.lr_factor`: linear warm-up, then a cosine to 0.1 on the progress
``step / steps``); periodic evaluation (:func:`~.evaluation.evaluate`); metrics as JSON lines;
atomic safetensors checkpoints (model, optimiser, scheduler, RNG, step). A resume continues
bit-identically: the data order is a function of the step. Under ``torchrun`` the model is wrapped
in DistributedDataParallel (gloo on CPU, nccl on GPU) and the data sharded by a DistributedSampler.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from tiling.config import TilingConfig
from tiling.metrics import adaptation_efficiency
from tiling.train.checkpoint import load_checkpoint, save_checkpoint
from tiling.train.data import BurstCopyDataset, BurstRepeatDataset, collate
from tiling.train.model import TiledLM
from tiling.train.schedule import lr_factor
from tiling.train.storage import RunDirectory, atomic_write_bytes, cut_log

from .evaluation import evaluate
from .options import SyntheticOptions, settings
from .rundir import CHECKPOINT, PROG, check_resume, check_run_dir, remove_stale_temporaries, run_directory

__all__ = ["build", "batch_for_step", "lr_lambda_factory", "train"]


def _dist_info() -> tuple[bool, int, int]:
    """(distributed, rank, world size) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world


def lr_lambda_factory(warmup: int, total: int):
    """The project's one schedule (:func:`tiling.train.schedule.lr_factor`) on the progress ``step / total``:
    linear warm-up over ``warmup`` steps times a cosine from 1 to 0.1 at ``total``."""
    def f(step: int) -> float:
        return lr_factor(step, step / max(1, total), warmup=warmup)
    return f


def build(opts: SyntheticOptions, device: torch.device, tiling: TilingConfig | None = None):
    """The run's training and evaluation sets, model (seeded by ``--seed``), AdamW and scheduler.

    Returns
    -------
    ``(train_ds, eval_ds, model, optimizer, scheduler)``.
    """
    data_kw = dict(context_len=opts.context_len, n_bursts=opts.n_bursts, burst_len=opts.burst_len,
                   n_symbols=opts.n_symbols)
    if opts.task == "copy":
        cls, data_kw["burst_window"] = BurstCopyDataset, opts.burst_window
    else:
        cls, data_kw["period"] = BurstRepeatDataset, opts.period
    train_ds = cls(opts.train_size, seed=opts.seed, **data_kw)
    eval_ds = cls(opts.eval_size, seed=opts.seed + 10_007, **data_kw)
    torch.manual_seed(opts.seed)
    model = TiledLM(train_ds.vocab_size, d_model=opts.d_model, n_layers=opts.n_layers, d_state=opts.d_state,
                    dt_min=opts.dt_min, dt_max=opts.dt_max, tiling=opts.tiling() if tiling is None else tiling,
                    shared_density=opts.shared_density).to(device)
    opt = torch.optim.AdamW(model.param_groups(opts.weight_decay), lr=opts.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_factory(opts.warmup, opts.steps))
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


def train(opts: SyntheticOptions) -> dict:
    """One run into ``--out``: every check first, then the run under the folder's lock.

    Returns
    -------
    The summary: policy, budget, steps, train seconds and the last evaluation's metrics (with the
    adaptation efficiency ``ae`` once two evaluations were made).
    """
    distributed, rank, world = _dist_info()
    tiling = opts.tiling()
    if rank == 0:  # the other ranks would see rank 0's run.json; when rank 0 refuses, torchrun stops them
        check_run_dir(opts)
    if opts.resume is not None:
        check_resume(opts)
    with run_directory(opts, primary=rank == 0) as run:
        return _train(opts, run, tiling, distributed, rank, world)


def _device(opts: SyntheticOptions, distributed: bool) -> torch.device:
    """The run's device (a process's own GPU under torchrun); joins the process group and sets the threads."""
    device = torch.device(opts.device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    return device


def _history(run: RunDirectory, start: int) -> list[dict]:
    """On resume, cut the log back to what the checkpoint at ``start`` covers; its evaluations so far."""
    log_path = run.file("log.jsonl")
    dropped = cut_log(log_path, lambda r: r.get("kind") in ("train", "eval") and isinstance(r.get("step"), int)
                      and (r["step"] < start or (r["kind"] == "eval" and r["step"] == start)), root=run.path)
    if dropped:
        print(f"{PROG}: cut {dropped} log line(s) after the checkpoint's step {start} from {log_path}",
              file=sys.stderr)
    if not log_path.exists():
        return []
    history = [json.loads(x) for x in log_path.read_text().splitlines() if '"eval"' in x]
    return [h for h in history if h.get("kind") == "eval"]


def _train(opts: SyntheticOptions, run: RunDirectory, tiling: TilingConfig, distributed: bool, rank: int,
           world: int) -> dict:
    # long: the training loop: the steps share the optimiser, the schedule, the clock and the log
    device = _device(opts, distributed)
    if rank == 0:
        remove_stale_temporaries(opts.out)  # (--overwrite moved the previous run aside already)
    train_ds, eval_ds, model, opt, sched = build(opts, device, tiling)
    start = 0
    if opts.init_from is not None:
        load_checkpoint(opts.init_from, model=model, restore_rng=False)
    if opts.resume is not None:
        start = load_checkpoint(opts.resume, model=model, optimizer=opt, scheduler=sched)["step"]
    # block scope: at a budget whose layout is the identity the pool gate (and the router) take no part
    unused = any(layer.scope == "block" for layer in model.layers)
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused) if distributed else model
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=opts.seed, drop_last=True)
    history = _history(run, start) if rank == 0 and opts.resume is not None else []
    log = open(run.file("log.jsonl"), "a" if opts.resume is not None else "w") if rank == 0 else None

    def emit(rec: dict) -> None:
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    def evaluated(step: int) -> None:
        nonlocal patterns
        metrics, patterns = evaluate(model, eval_ds, opts, device, patterns)
        metrics.update(kind="eval", step=step)
        history.append(metrics)
        emit(metrics)

    def checkpoint(step: int) -> None:
        save_checkpoint(run.file(CHECKPOINT), model=model, optimizer=opt, scheduler=sched, step=step,
                        extra={"args": settings(opts)})
        run.result_written()  # an --overwrite's previous run is deleted only now

    stop = opts.steps if opts.stop_at is None else min(opts.stop_at, opts.steps)
    cache: dict = {}
    patterns = None
    bar = tqdm(range(start, stop), desc=f"{opts.policy}@{opts.budget:g}", disable=opts.quiet or rank != 0,
               dynamic_ncols=True)
    t0 = time.time()
    model.train()
    for step in bar:
        x, y, m = (t.to(device) for t in batch_for_step(train_ds, sampler, step, opts.batch_size, cache))
        logits = net(x)
        loss = F.cross_entropy(logits[m], y[m])
        ratio = [layer.ratio_loss for layer in model.layers if layer.ratio_loss is not None]
        if ratio:  # learned boundaries: H-Net's ratio loss steers the router to the budget
            loss = loss + opts.ratio_weight * torch.stack(ratio).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        opt.step()
        sched.step()
        if step % opts.log_every == 0 or step == stop - 1:
            emit({"kind": "train", "step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                  "elapsed_s": time.time() - t0})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if rank == 0 and (done % opts.eval_every == 0 or done == opts.steps):
            evaluated(done)
        if rank == 0 and opts.ckpt_every and done % opts.ckpt_every == 0 and done < stop:
            checkpoint(done)
    if rank == 0 and (not history or history[-1]["step"] != stop) and stop == opts.steps:
        evaluated(stop)
    if rank == 0:
        checkpoint(stop)
    summary = _summary(opts, history, stop, time.time() - t0)
    if history:
        emit({"kind": "summary", **summary})
    if distributed:
        _save_rank_params(model, opts.out, rank)
    if log is not None:
        log.close()
    return summary


def _summary(opts: SyntheticOptions, history: list[dict], stop: int, seconds: float) -> dict:
    """The run's summary: the last evaluation, and the adaptation efficiency over the evaluations (seed 000
    §3.4.2; ``ae_literal`` as written there, ``ae`` normalised by ``r_min``:
    :func:`tiling.metrics.adaptation_efficiency`)."""
    summary = {"policy": opts.policy, "budget": opts.budget, "steps": stop, "train_seconds": seconds}
    if history:
        summary.update({k: v for k, v in history[-1].items() if k not in ("kind",)})
        if len(history) >= 2:
            R = torch.tensor([h["resolution"] for h in history], dtype=torch.float64)
            Lt = torch.tensor([h["imbalance"] for h in history[1:]], dtype=torch.float64)
            summary["ae_literal"] = float(adaptation_efficiency(R, Lt, normalised=False))
            summary["ae"] = float(adaptation_efficiency(R, Lt, r_min=opts.r_min))
    return summary


def _save_rank_params(model: TiledLM, out: str, rank: int) -> None:
    """Under torchrun: each rank's parameters in ``params_rankK.safetensors`` (equal on every rank), then
    leave the process group."""
    from safetensors.torch import save

    params = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(out) / f"params_rank{rank}.safetensors", save(params), root=out)
    dist.barrier()
    dist.destroy_process_group()
