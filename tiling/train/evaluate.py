"""Bits per byte of any UTF-8 text file under a byte-level TiledLM checkpoint.

    python -m tiling.train.evaluate CHECKPOINT --text-file PATH [--budget C] [--json]
    python -m tiling.train.evaluate --list

CHECKPOINT is a path to a text checkpoint (``scripts/train_text.py``) or a bundled name,
``bundled:full`` / ``bundled:adaptive``; ``--list`` prints the bundled checkpoints as JSON. The
file is read as bytes (vocabulary 256) and must be UTF-8; it is evaluated in windows of the
trained context (``--context`` may shorten them, ``--stride`` overlap them; see
:mod:`tiling.train.text`), at the checkpoint's budget or ``--budget``. Prints bpb, the text's
bytes per second through the model and the realised mean resolution (``--json``: the keys
``bpb``, ``bytes``, ``bytes_per_s``, ``mean_resolution`` and more). Bad input exits with code 2
and a message saying what was wrong.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from tiling.train.checkpoint import CheckpointError
from tiling.train.text import TextInputError, evaluate_bytes, read_text_file
from tiling.train.textmodel import (
    TextModelError, budget_warning, bundled_checkpoints, load_text_model, resolve_checkpoint,
)


class UsageError(ValueError):
    """A bad option value (budget, context, stride)."""


def check_budget(model, budget: float | None) -> None:
    """Budget in (0, 1] and not below the smallest resolution of a tiled layer (``r_min``).

    Parameters
    ----------
    model : the :class:`~tiling.train.model.TiledLM`.
    budget : the budget asked for; None passes.

    Raises
    ------
    UsageError
        ``budget`` is outside (0, 1] or below a tiled layer's ``r_min``.
    """
    if budget is None:
        return
    if not 0.0 < budget <= 1.0:
        raise UsageError(f"--budget must lie in (0, 1], got {budget}")
    floors = ([(k, model.layers[k].r_min) for k in model.tiled_layers] if hasattr(model, "tiled_layers")
              else [("main", model.config.tiling.r_min)])  # an HourglassLM: its main network's
    for k, r_min in floors:
        if budget < r_min:
            raise UsageError(f"--budget {budget} is below the checkpoint's smallest resolution r_min = {r_min} "
                             f"(layer {k}); use a budget in [{r_min}, 1]")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tiling.train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a text checkpoint path, or bundled:full / bundled:adaptive")
    p.add_argument("--text-file", help="UTF-8 text file to evaluate")
    p.add_argument("--budget", type=float, default=None, help="resolution budget in (0, 1] (default: as trained)")
    p.add_argument("--context", type=int, default=None,
                   help="window length in bytes (default and maximum: the trained context)")
    p.add_argument("--stride", type=int, default=None,
                   help="window stride (default: the context, non-overlapping windows); smaller = more context")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-bytes", type=int, default=None, help="evaluate only the first N bytes of the file")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="print the bundled checkpoints as JSON and exit")
    return p.parse_args(argv)


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    model, extra = load_text_model(resolve_checkpoint(args.checkpoint))
    check_budget(model, args.budget)
    trained = int(extra["context"])
    context = trained if args.context is None else args.context
    if context < 1:
        raise UsageError(f"--context must be >= 1, got {context}")
    if context > trained:
        raise UsageError(f"--context {context} is longer than the checkpoint was trained for ({trained} bytes)")
    if args.stride is not None and not 1 <= args.stride <= context:
        raise UsageError(f"--stride must lie in [1, context = {context}], got {args.stride}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_bytes is not None and args.max_bytes < 2:
        raise UsageError(f"--max-bytes must be >= 2, got {args.max_bytes}")
    data = read_text_file(args.text_file)
    warning = budget_warning(model, extra, args.budget)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    res = evaluate_bytes(model, data, context=context, budget=args.budget, stride=args.stride,
                         batch_size=args.batch_size, max_bytes=args.max_bytes)
    res.update(checkpoint=str(args.checkpoint), text_file=str(args.text_file),
               configuration=extra.get("configuration"), trained_budget=extra.get("budget"),
               trained_context=trained)
    return res


def format_result(r: dict) -> str:
    lay = " ".join(f"{x:.3f}" for x in r["mean_resolution_by_layer"])
    return (f"{r['text_file']}: {r['bpb']:.4f} bits per byte over {r['scored_bytes']} predicted bytes "
            f"({r['bytes']} bytes, {r['windows']} windows of {r['context']}, stride {r['stride']})\n"
            f"checkpoint {r['checkpoint']}: configuration {r['configuration']}, trained at budget "
            f"{r['trained_budget']:g}, context {r['trained_context']}; evaluated at budget {r['budget']:g}\n"
            f"realised mean resolution {r['mean_resolution']:.3f} (by layer: {lay}); "
            f"{r['bytes_per_s']:.0f} bytes/s; {r['flops_per_byte'] / 1e6:.3f} MFLOPs per byte")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print(json.dumps(bundled_checkpoints(), indent=1))
        return 0
    if args.checkpoint is None or args.text_file is None:
        print("error: CHECKPOINT and --text-file are required (or --list)", file=sys.stderr)
        return 2
    try:
        res = run(args)
    except (TextInputError, TextModelError, CheckpointError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res) if args.json else format_result(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
