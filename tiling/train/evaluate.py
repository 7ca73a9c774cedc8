"""Bits per byte of any UTF-8 text file under a byte-level TiledLM checkpoint.

    python -m tiling.train.evaluate CHECKPOINT --text-file PATH [--budget C] [--json]
    python -m tiling.train.evaluate --list

CHECKPOINT is a path to a text checkpoint (``scripts/train_text.py``) or a bundled name,
``bundled:full`` / ``bundled:adaptive``; ``--list`` prints the bundled checkpoints as JSON. The
file is read as bytes (vocabulary 256) and must be UTF-8; it is evaluated in windows of the
trained context (``--context`` may shorten them, ``--stride`` overlap them; see
:mod:`tiling.train.text`), at the checkpoint's budget or ``--budget``. Prints bpb, the text's
bytes per second through the model and the realised mean resolution beside the requested budget
(``--json``: the keys ``bpb``, ``bytes``, ``bytes_per_s``, ``budget``, ``mean_resolution``,
``warnings`` and more). It warns when the checkpoint was not trained for the requested budget, and
when its layers ignore the budget (:func:`budget_notes`).

Any expected error (a bad option value, a file that cannot be read, a checkpoint that is not one)
is one line ``evaluate: error: ...`` naming the option or file, exit code 2; Ctrl-C exits with 130.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from tiling.train.checkpoint import CheckpointError
from tiling.train.text import TextInputError, evaluate_bytes, read_text_file, set_threads
from tiling.train.textmodel import (
    TextModelError, budget_warning, bundled_checkpoints, load_text_model, resolve_checkpoint,
)


class UsageError(ValueError):
    """A bad option value (budget, context, stride)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump): ``main`` prints it, exit code 2."""

    def error(self, message: str):  # noqa: D401 (argparse API)
        raise UsageError(message)


def check_range(flag: str, value, low, high) -> None:
    """``low ≤ value ≤ high`` (None passes; NaN fails), else a :class:`UsageError` naming ``flag``."""
    if value is not None and not (low <= value <= high):
        raise UsageError(f"{flag} must lie in [{low}, {high}], got {value}")


def token_router_layers(model) -> list:
    """The layers whose segment starts a causal learned router decides (``boundaries="token"``): it sets a
    boundary wherever its probability is ≥ ½, so below budget 1 the budget does not steer it at
    inference (only its training, through the ratio loss, did)."""
    layers = getattr(model, "layers", ())
    return [k for k in getattr(model, "tiled_layers", ())
            if layers[k].boundaries == "token" and layers[k].causal]


#: the realised mean resolution may differ from the requested budget by this much before a warning
#: (the causal controller keeps |mean R − c| ≤ slack / tiles, e.g. 4/64 for 1024 bytes in tiles of 16)
BUDGET_TOLERANCE = 0.1


def budget_notes(model, extra: dict, budget: float | None, realised: float | None) -> list[str]:
    """Warnings that make a budget honest (issue 27): what was asked, what was trained, what was realised.

    Parameters
    ----------
    model : the loaded model.
    extra : its checkpoint metadata.
    budget : the budget asked for (None: as trained).
    realised : the realised mean resolution of the layers that run at the budget (None: not known yet).

    Returns
    -------
    The warnings (possibly none): the checkpoint was not trained for ``budget``
    (:func:`~tiling.train.textmodel.budget_warning`); its router ignores the budget
    (:func:`token_router_layers`); the realised mean resolution lies more than
    :data:`BUDGET_TOLERANCE` from the requested budget.
    """
    notes = [w for w in [budget_warning(model, extra, budget)] if w]
    requested = budget if budget is not None else extra.get("budget")
    routed = token_router_layers(model)
    if routed and budget is not None and budget < 1.0:
        notes.append(f"layer(s) {', '.join(map(str, routed))} place their segment starts with a learned router "
                     "(boundaries='token', a boundary wherever its probability is >= 1/2): the budget does not steer "
                     f"it at inference, so --budget {budget:g} gives the same segments as any other budget below 1")
    if realised is not None and requested is not None and abs(realised - float(requested)) > BUDGET_TOLERANCE:
        notes.append(f"the realised mean resolution {realised:.3f} differs from the requested budget "
                     f"{float(requested):g} by more than {BUDGET_TOLERANCE:g}")
    return notes


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
    p = _Parser(prog="python -m tiling.train.evaluate", description=__doc__,
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the physical cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="print the bundled checkpoints as JSON and exit")
    return p.parse_args(argv)


def check_options(args) -> None:
    """The options that need no checkpoint, before it is loaded (each error names its option)."""
    check_range("--threads", args.threads, 1, 4096)
    check_range("--batch-size", args.batch_size, 1, 4096)
    check_range("--max-bytes", args.max_bytes, 2, 2 ** 40)
    check_range("--context", args.context, 1, 2 ** 24)
    check_range("--stride", args.stride, 1, 2 ** 24)
    if args.budget is not None and not (math.isfinite(args.budget) and 0.0 < args.budget <= 1.0):
        raise UsageError(f"--budget must lie in (0, 1], got {args.budget}")


def run(args) -> dict:
    check_options(args)
    set_threads(args.threads, decoding=False)
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
    res = evaluate_bytes(model, data, context=context, budget=args.budget, stride=args.stride,
                         batch_size=args.batch_size, max_bytes=args.max_bytes)
    res.update(checkpoint=str(args.checkpoint), text_file=str(args.text_file),
               configuration=extra.get("configuration"), trained_budget=extra.get("budget"),
               trained_context=trained, requested_budget=args.budget,
               warnings=budget_notes(model, extra, args.budget, res["mean_resolution"]))
    return res


def format_result(r: dict) -> str:
    lay = " ".join(f"{x:.3f}" for x in r["mean_resolution_by_layer"])
    return (f"{r['text_file']}: {r['bpb']:.4f} bits per byte over {r['scored_bytes']} predicted bytes "
            f"({r['bytes']} bytes, {r['windows']} windows of {r['context']}, stride {r['stride']})\n"
            f"checkpoint {r['checkpoint']}: configuration {r['configuration']}, trained at budget "
            f"{r['trained_budget']:g}, context {r['trained_context']}\n"
            f"evaluated at budget {r['budget']:g}{'' if r.get('requested_budget') is not None else ' (as trained)'}: "
            f"realised mean resolution {r['mean_resolution']:.3f} (by layer: {lay}); "
            f"{r['bytes_per_s']:.0f} bytes/s; {r['flops_per_byte'] / 1e6:.3f} MFLOPs per byte")


def one_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def fail(prog: str, e: BaseException) -> int:
    """Print ``e`` as one line ``PROG: error: ...`` and return exit code 2."""
    if isinstance(e, OSError) and not str(e).startswith("checkpoint"):  # e.g. a folder or a device error
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"{prog}: error: cannot read{where}: {e.strerror or one_line(e)}", file=sys.stderr)
    else:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return 2


#: the errors a command-line run reports as one line with exit code 2 (bad input of every kind)
EXPECTED = (TextInputError, TextModelError, CheckpointError, UsageError, ValueError, OSError, MemoryError)


def main(argv=None) -> int:
    """Run the command; returns the exit code (0; 2 for any expected error; 130 when interrupted)."""
    try:
        args = parse_args(argv)
        if args.list:
            print(json.dumps(bundled_checkpoints(), indent=1))
            return 0
        if args.checkpoint is None or args.text_file is None:
            raise UsageError("CHECKPOINT and --text-file are required (or --list)")
        res = run(args)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except EXPECTED as e:
        return fail("evaluate", e)
    except KeyboardInterrupt:
        print("evaluate: interrupted", file=sys.stderr)
        return 130
    for w in res["warnings"]:
        print(f"evaluate: warning: {w}", file=sys.stderr)
    print(json.dumps(res) if args.json else format_result(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
