"""Train a small TiledMamba language model on a synthetic variable-density task (seed 001 §3.2–3.4):
selective burst copying (``--task copy``) or recall at a lag inside periodic bursts (``--task repeat``).

Single run::

    infogeo train-synthetic --policy adaptive --budget 0.35 --steps 400 --out runs/adaptive

Comparison (full resolution; uniform, binary and adaptive at each budget) with a table, JSON
lines logs and the figure accuracy vs scan cost::

    infogeo train-synthetic --sweep --budgets 0.25 0.35 0.5 --out runs/sweep \\
        --figure docs/figures/training/accuracy_vs_cost.png

Distributed (DistributedDataParallel; gloo on CPU, nccl on GPU; DistributedSampler)::

    torchrun --nproc_per_node=2 scripts/train_tiled.py --steps 100 --out runs/ddp

(``python -m tiling.train.synthetic`` and ``scripts/train_tiled.py`` are the same program.)

Model: embedding, ``n_layers`` × [RMSNorm + TiledMamba] with residuals, final RMSNorm, tied
head; ``--scope block`` (default) or ``scan`` (the runs of docs/benchmarks.md up to run 5). AdamW
(no decay on A_log, D, norms, biases, tiling parameters), linear warm-up then cosine decay, periodic
evaluation (answer accuracy, loss, mean resolution, scan cost relative to full resolution, load
imbalance, IFQ/CER of the first layer), metrics as JSON lines. Checkpoints (model, optimizer,
scheduler, RNG, step) are atomic safetensors files; ``--resume`` continues bit-identically (the data
order is a function of the step).

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
disk at the checkpoint) ends as one line ``train_tiled: error: ...`` (``infogeo: error: ...`` under
``infogeo``) naming the option, exit code 2; Ctrl-C exits with code 130 and keeps what was written.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from tiling.options import RunError, UsageError, add_subcommand, first_line, run_main, standalone_parser
from tiling.train.checkpoint import CheckpointError
from tiling.train.storage import StorageError

from .loop import train
from .options import SyntheticOptions
from .rundir import PROG
from .sweep import sweep

__all__ = ["parse_args", "run", "command", "add_parser", "main"]

#: the errors that are bad input or a refused run: one line, exit code 2
EXPECTED = (UsageError, RunError, StorageError, CheckpointError, ValueError)


def parse_args(argv=None) -> SyntheticOptions:
    """The options of a command line (``python -m tiling.train.synthetic`` and ``scripts/train_tiled.py``).

    Raises
    ------
    tiling.options.UsageError
        An unknown flag or a bad value, naming the flag.
    """
    parser = standalone_parser(PROG, SyntheticOptions, __doc__)
    return SyntheticOptions.from_args(parser.parse_args(argv))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def run(opts: SyntheticOptions) -> None:
    """The sweep (``--sweep``, which prints its rows and table) or one run (which prints its summary as JSON).

    Raises
    ------
    RunError
        A refused run, or an ``OSError`` while writing (a read-only ``--out``, a full disk at the
        checkpoint; nothing under a final name is torn), as one line naming ``--out`` and the file.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line each (a stale lock taken over, a run put back)
        try:
            if opts.sweep:
                sweep(opts)
            else:
                print(json.dumps(train(opts)))
        except OSError as e:
            where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
            raise RunError(f"cannot write in --out{where}: {e.strerror or first_line(e)}") from e


def command(args: argparse.Namespace) -> int:
    """``infogeo train-synthetic``: run the parsed command line; its exit code (0)."""
    run(SyntheticOptions.from_args(args))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infogeo train-synthetic`` on an argparse sub-parser collection (:mod:`tiling.workflows.cli`)."""
    return add_subcommand(subparsers, "train-synthetic", SyntheticOptions, command, description=__doc__,
                          help="train a small TiledLM on the burst copy / repeat tasks (runs, sweeps, torchrun)")


def main(argv=None) -> int:
    """``python -m tiling.train.synthetic`` and ``scripts/train_tiled.py`` (aliases of ``infogeo
    train-synthetic``); returns the exit code (0; 2 for any expected error; 130 when interrupted)."""
    return run_main(PROG, lambda: run(parse_args(argv)), expected=EXPECTED,
                    interrupted=f"{PROG}: interrupted; the last checkpoint and the log written so far are kept")
