"""The one training loop of the byte-level LMs (:class:`~tiling.train.TiledLM` and
:class:`~tiling.modules.hourglass.HourglassLM`): AdamW, warm-up then cosine on the progress towards
the first limit reached (:mod:`tiling.train.schedule`, the one schedule), validation on a fixed subset,
then the atomic checkpoint, test bits per byte, FLOPs per byte and prefill/decode speed.

``infogeo train`` (:mod:`tiling.train.text_cli`) is the command line over :func:`train_run`, its flags
generated from :class:`TrainOptions`.

Clock: ``clock="cpu"`` counts the process's CPU time (on one thread it equals the wall time of an
unshared core, and other work on a shared machine does not shorten a run); ``"wall"`` the wall time.
Evaluation time is not training time.

Elastic training (``HourglassLM`` with ``config.budget_range``): each step draws its budget uniformly
from the range (:meth:`HourglassLM.sample_budget <tiling.modules.hourglass.HourglassLM.sample_budget>`),
so one checkpoint serves every budget in it (Hourglass, Nawrot et al. 2022, and the seeds' level of
detail chosen at run time).
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tiling.modules.hourglass import HourglassLM
from tiling.options import Options, RunError, UsageError, option, seed_option, threads_option
from tiling.train.schedule import lr_factor, progress
from tiling.train.text import TextWindows, evaluate_bytes, measure_speed, score_windows, spaced_windows
from tiling.train.storage import RunDirectory
from tiling.train.textmodel import model_dict, parameter_count, save_text_checkpoint

Tensor = torch.Tensor


def _torch_device(name: str) -> str:
    """``name`` if it names a torch device this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    try:
        kind = torch.device(name).type
    except (RuntimeError, TypeError):
        raise ValueError(f"must name a torch device ('cpu', 'cuda', 'cuda:1'), got {name!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name!r}: CUDA is not available on this machine")
    return name


@dataclass(frozen=True)
class TrainOptions(Options):
    """Options of one training run (the optimisation, the limits, the evaluation): each field is a flag of
    ``infogeo train`` (:mod:`tiling.train.text_cli`) with its help and its range (:mod:`tiling.options`).

    Parameters
    ----------
    lr, weight_decay, warmup, grad_clip : AdamW (β = 0.9, 0.95), warm-up steps, gradient clipping (0: off).
    batch_size, context : windows per step and bytes per window.
    max_minutes, clock : training time limit and what it counts (``"cpu"`` or ``"wall"``).
    max_bytes, max_steps : further limits (None: off).
    eval_every_s, eval_every_steps : validation every this many training seconds (or steps).
    val_windows : the validation subset (evenly spaced windows).
    test_bytes : evaluate only the first N bytes of the test split (None: all).
    decode_bytes, speed : bytes of ``step()`` decoding timed; whether to time prefill/decode (``--no-speed``).
    ratio_weight : ``TiledLM`` with a learned router: weight of H-Net's ratio loss.
    stage_lr : ``HourglassLM`` only: H-Net's learning-rate modulation per stage
        (:meth:`~tiling.modules.hourglass.HourglassLM.main_lr_scale`).
    seed, threads, quiet : as named.
    device : where the model trains (``"cpu"``, ``"cuda"``, ``"cuda:1"``); the data stays on the CPU and
        each batch is moved.

    The upper ends of the sizes keep every size far from int64 and from a machine's memory (a model or a
    batch beyond them would not fit anyway).
    """

    lr: float = option(2e-3, kind="float", low=0.0, low_open=True, high=10.0, help="AdamW learning rate, in (0, 10]")
    weight_decay: float = option(0.1, kind="float", low=0.0, high=1e3, help="AdamW weight decay, in [0, 1000]")
    warmup: int = option(30, kind="int", low=0, high=2 ** 40, help="warm-up steps (linear, then cosine)")
    grad_clip: float = option(1.0, kind="float", low=0.0, high=1e12, help="gradient norm clipping (0: off)")
    # 4 windows of 1024 bytes: the sweep's rows on one thread (evaluation's default batch is 8: forwards only)
    batch_size: int = option(4, kind="int", low=1, high=2 ** 16, help="windows per training step")
    context: int = option(1024, kind="int", low=1, high=2 ** 20,
                          help="window length in bytes (>= 1024 for the table)")
    max_minutes: float = option(15.0, kind="float", low=0.0, low_open=True, high=1e7,
                                help="training time limit (evaluation excluded)")
    clock: str = option("cpu", kind="str", choices=("cpu", "wall"),
                        help="what --max-minutes and the curve's train_seconds count: the process's CPU time "
                             "(default; on one thread it equals the wall time of an unshared core, and other work "
                             "on a shared machine does not shorten a run) or the wall time")
    max_bytes: int | None = option(None, kind="int", low=1, high=2 ** 62, help="training byte limit (inputs seen)")
    max_steps: int | None = option(None, kind="int", low=1, high=2 ** 40, help="step limit (tests)")
    eval_every_s: float = option(90.0, kind="float", low=0.0, low_open=True, high=1e9,
                                 help="validation every this many training seconds")
    eval_every_steps: int | None = option(None, kind="int", low=1, high=2 ** 40,
                                          help="validation every this many steps instead")
    val_windows: int = option(32, kind="int", low=1, high=2 ** 16, help="validation subset: evenly spaced windows")
    test_bytes: int | None = option(None, kind="int", low=1, high=2 ** 62,
                                    help="evaluate only the first N bytes of the test split")
    decode_bytes: int = option(256, kind="int", low=1, high=2 ** 20, help="bytes of step() decoding timed")
    speed: bool = option(True, kind="bool", flag="--no-speed", help="skip the prefill/decode timing")
    ratio_weight: float = option(0.03, kind="float", low=0.0, high=1e6, help="router: weight of H-Net's ratio loss")
    stage_lr: bool = option(False, kind="bool",
                            help="hourglass: H-Net's per-stage learning rate, the main network's scaled by "
                                 "sqrt(budget * d_outer / d_main) (HourglassLM.main_lr_scale)")
    seed: int = seed_option(0, high=2 ** 32 - 1)
    # one thread (analysis, evaluation: the machine's cores): the sweep's rows share the machine (--shard)
    threads: int = threads_option(1, "one run per core, the sweep's rows share the machine (--shard)")
    quiet: bool = option(False, kind="bool", help="print nothing during training")
    device: str = option("cpu", kind="str", check=_torch_device,
                         help="where the model trains: cpu (default), cuda, cuda:N")


def set_threads(n: int) -> None:
    """torch's intra- and (where still settable) inter-op threads."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first parallel work of the process
        pass


def machine_info() -> dict:
    """The machine a row was measured on."""
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}


def training_loss(model, x: Tensor, y: Tensor, *, budget: float, ratio_weight: float) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(loss, cross-entropy, extra)`` of one batch: the next-byte cross-entropy plus the model's own
    terms (the hourglass' auxiliary head and ratio loss; a ``TiledLM`` router's ratio loss)."""
    logits = model(x, budget=budget)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    if isinstance(model, HourglassLM):
        extra = model.extra_loss(x, y)
    else:
        ratio = model.ratio_loss()
        extra = None if ratio is None else ratio_weight * ratio
    return (ce if extra is None else ce + extra), ce, extra


#: the files a training run owns in its folder (tiling.train.storage.RunDirectory)
OWNED = ("checkpoint.safetensors", "log.jsonl", "row.json")


def train_run(model, data: dict[str, Tensor], opts: TrainOptions, out: Path, *, name: str, configuration: str,
              budget: float, info: dict | None = None, overwrite: bool = False) -> dict:
    """Train ``model`` and write ``out/checkpoint.safetensors``, ``out/log.jsonl``, ``out/row.json``.

    Parameters
    ----------
    model : a :class:`~tiling.train.TiledLM` or :class:`~tiling.modules.hourglass.HourglassLM` (new weights).
    data : ``{"train", "validation", "test"}`` uint8 byte tensors.
    opts : the :class:`TrainOptions`.
    out : the run's folder (refused if it holds a finished run).
    name : the row's name.
    configuration : the configuration's name (stored in the checkpoint).
    budget : the budget the model is evaluated at (an elastic model trains on its range).
    info : further fields of the row.
    overwrite : replace a finished run in ``out`` (moved aside, deleted once the new checkpoint is written;
        :class:`~tiling.train.storage.RunDirectory`).

    Returns
    -------
    The row (also in ``out/row.json``).

    Raises
    ------
    UsageError
        ``opts.stage_lr`` for a model without stages (not an ``HourglassLM``).
    RunError
        ``out`` holds a finished run (``row.json``) or a checkpoint without a row (another run's, or one
        whose evaluation did not finish), and ``overwrite`` is not given.
    ~tiling.train.storage.StorageError
        Another process holds ``out`` (its lock names the pid), or ``out`` cannot be written.

    Notes
    -----
    An attempt that left no checkpoint (interrupted during training) is replaced; its log is kept as
    ``log.K.jsonl``. ``run.json`` records the settings (the row, the configuration, the options, the model).
    """
    if opts.stage_lr and not isinstance(model, HourglassLM):
        raise UsageError(f"--stage-lr (H-Net's per-stage learning rate) needs a model with stages, an HourglassLM; "
                         f"got a {type(model).__name__}")
    set_threads(opts.threads)
    model = model.to(opts.device)
    out = Path(out)
    if not overwrite and (out / "row.json").exists():
        raise RunError(f"{out} holds a finished run (row.json); choose another --out or pass --overwrite")
    if not overwrite and (out / "checkpoint.safetensors").exists():
        raise RunError(f"{out} holds a checkpoint without a row.json (an unfinished evaluation or another tool's "
                       f"run); move it away, pass --overwrite, or choose another --out")
    settings = {"row": name, "configuration": configuration, "budget": budget, "model": model_dict(model),
                **{k: v for k, v in opts.to_dict().items() if k not in ("quiet", "threads")}}
    log_path = out / "log.jsonl"
    if not overwrite and log_path.exists():  # an interrupted earlier attempt: keep its log beside the new one
        k = 1
        while (out / f"log.{k}.jsonl").exists():
            k += 1
        log_path.rename(out / f"log.{k}.jsonl")
    with RunDirectory(out, settings=settings, overwrite=True, owned=OWNED, name="--out") as run:
        return _train(model, data, opts, run, name=name, configuration=configuration, budget=budget, info=info)


def _train(model, data: dict[str, Tensor], opts: TrainOptions, run: RunDirectory, *, name: str, configuration: str,
           budget: float, info: dict | None) -> dict:
    # long: the training loop: the steps share the optimiser, the schedule, the clock and the log
    log_path = run.file("log.jsonl")
    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
    kw = {"stage_lr": True} if opts.stage_lr else {}  # an HourglassLM's option (train_run refuses it elsewhere)
    opt = torch.optim.AdamW(model.param_groups(opts.weight_decay, **kw), lr=opts.lr, betas=(0.9, 0.95))
    ds = TextWindows(data["train"], opts.context, seed=opts.seed)
    val_windows = spaced_windows(data["validation"].numel(), opts.context, opts.val_windows)
    max_s = opts.max_minutes * 60.0
    curve: list[dict] = []
    with open(log_path, "w") as log:
        def emit(rec: dict) -> None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

        def validate(step: int, n_bytes: int, seconds: float, wall: float) -> None:
            r = score_windows(model, data["validation"], val_windows, budget=budget)
            rec = {"step": step, "bytes": n_bytes, "train_seconds": round(seconds, 3), "wall_seconds": round(wall, 3),
                   "bpb": r["bpb"], "mean_resolution": r["mean_resolution"]}
            curve.append(rec)
            emit({"kind": "eval", **rec})
            if not opts.quiet:
                print(f"[{name}] step {step} bytes {n_bytes} t {seconds:.0f}s val bpb {r['bpb']:.4f} "
                      f"R {r['mean_resolution']:.3f}", flush=True)

        emit({"kind": "config", "row": name, "params": parameter_count(model), "options": opts.to_dict(), **(info or {})})
        clock = time.process_time if opts.clock == "cpu" else time.perf_counter
        step, n_bytes, train_s, wall_s = 0, 0, 0.0, 0.0
        next_eval = opts.eval_every_s
        stop_reason = None
        losses: list[float] = []
        model.train()
        validate(0, 0, 0.0, 0.0)
        elastic = isinstance(model, HourglassLM) and model.config.budget_range is not None
        while True:
            if train_s >= max_s:
                stop_reason = "max_minutes"
            elif opts.max_bytes is not None and n_bytes >= opts.max_bytes:
                stop_reason = "max_bytes"
            elif opts.max_steps is not None and step >= opts.max_steps:
                stop_reason = "max_steps"
            if stop_reason:
                break
            t0, w0 = clock(), time.perf_counter()
            p = progress(seconds=train_s, max_seconds=max_s, n_bytes=n_bytes, max_bytes=opts.max_bytes, steps=step,
                         max_steps=opts.max_steps)
            lr = opts.lr * lr_factor(step, p, warmup=opts.warmup)
            for grp in opt.param_groups:
                grp["lr"] = lr * grp.get("lr_scale", 1.0)
            x, y = (t.to(opts.device) for t in ds.batch(step, opts.batch_size))
            b_step = model.sample_budget(rng) if elastic else budget
            loss, ce, extra = training_loss(model, x, y, budget=b_step, ratio_weight=opts.ratio_weight)
            if not bool(torch.isfinite(loss)):
                raise RunError(f"[{name}] the loss became {float(loss)} at step {step}: the run diverged (lower --lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            opt.step()
            step += 1
            n_bytes += x.numel()
            train_s += clock() - t0
            wall_s += time.perf_counter() - w0
            losses.append(ce.item())
            if step % 10 == 0 or step == 1:
                emit({"kind": "train", "step": step, "bytes": n_bytes, "train_seconds": round(train_s, 3),
                      "loss": ce.item(), "bpb": ce.item() / math.log(2.0), "lr": lr, "budget": b_step,
                      "extra_loss": None if extra is None else extra.item()})
            due = (step % opts.eval_every_steps == 0) if opts.eval_every_steps else (train_s >= next_eval)
            if due:
                validate(step, n_bytes, train_s, wall_s)
                next_eval = train_s + opts.eval_every_s
        if not curve or curve[-1]["step"] != step:
            validate(step, n_bytes, train_s, wall_s)
        ckpt = save_text_checkpoint(run.file("checkpoint.safetensors"), model, configuration=configuration,
                                    budget=budget, context=opts.context, optimizer=opt, step=step,
                                    info={"train_bytes": n_bytes, "train_seconds": train_s, "seed": opts.seed,
                                          "row": name, **_budget_info(model)})
        run.result_written()  # a finished run replaced by --overwrite is deleted only now
        row = {"row": name, "kind": "trained", "configuration": configuration, "budget": budget,
               "trained_budget": budget, "seed": opts.seed, "validation_curve": curve, "train_bytes": n_bytes,
               "train_seconds": train_s, "train_wall_seconds": wall_s, "clock": opts.clock, "steps": step,
               "stop_reason": stop_reason, "first_loss": losses[0] if losses else None,
               "last_loss": statistics.fmean(losses[-10:]) if losses else None, "params": parameter_count(model),
               "context": opts.context, "batch_size": opts.batch_size, "lr": opts.lr,
               "threads": torch.get_num_threads(), "device": opts.device, "checkpoint": str(ckpt), **(info or {})}
        row.update(evaluation(model, data, opts, budget))
        emit({**{k: v for k, v in row.items() if k != "validation_curve"}, "kind": "summary", "row_kind": row["kind"]})
    run.write_json("row.json", row)
    return row


def _budget_info(model) -> dict:
    if isinstance(model, HourglassLM):
        r = model.config.budget_range
        return {"budget_range": None if r is None else list(r)}
    return {}


def evaluation(model, data: dict[str, Tensor], opts: TrainOptions, budget: float) -> dict:
    """Test bits per byte, the realised resolution, FLOPs per byte and (``opts.speed``) prefill/decode speed."""
    test = evaluate_bytes(model, data["test"], context=opts.context, budget=budget, max_bytes=opts.test_bytes)
    speed = measure_speed(model, data["test"], context=opts.context, budget=budget,
                          decode_bytes=opts.decode_bytes) if opts.speed else None
    return {"test_bpb": test["bpb"], "test_bytes": test["bytes"], "test_mean_resolution": test["mean_resolution"],
            "test_mean_resolution_by_layer": test["mean_resolution_by_layer"],
            "flops_per_byte": test["flops_per_byte"], "madds_per_byte_by_layer": test["madds_per_byte_by_layer"],
            "prefill_bytes_per_s": None if speed is None else speed["prefill_bytes_per_s"],
            "decode_bytes_per_s": None if speed is None else speed["decode_bytes_per_s"],
            "machine": machine_info()}


__all__ = ["RunError", "TrainOptions", "evaluation", "machine_info", "set_threads", "train_run", "training_loss"]
