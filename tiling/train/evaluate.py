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
import sys
from dataclasses import dataclass

from tiling.options import (
    Options, RunError, UsageError, add_subcommand, option, run_main, standalone_parser, threads_option,
)
from tiling.runtime import keep_freed_memory
from tiling.train.checkpoint import CheckpointError
from tiling.train.text import TextInputError, evaluate_bytes, read_text_file, set_threads
from tiling.train.textmodel import (
    TextModelError, budget_warning, bundled_checkpoints, load_text_model, resolve_checkpoint,
)


def budget_option() -> object:
    """``--budget``: the resolution budget a text model runs at, in (0, 1] (None: as trained); ``evaluate``
    and ``generate`` share it (its floor, the checkpoint's ``r_min``, is :func:`check_budget`'s)."""
    return option(None, kind="float", low=0.0, low_open=True, high=1.0, metavar="C",
                  help="resolution budget in (0, 1] (default: as trained)")


@dataclass(frozen=True)
class EvaluateOptions(Options):
    """The options of ``evaluate`` (``infogeo evaluate``, ``python -m tiling.train.evaluate``).

    Parameters
    ----------
    checkpoint, text_file, budget, context, stride, batch_size, max_bytes, threads, json, list :
        the flags of the same names (their help says what each does).
    """

    checkpoint: str | None = option(None, kind="str", positional=True,
                                    help="a text checkpoint path, or bundled:full / bundled:adaptive")
    text_file: str | None = option(None, kind="str", metavar="PATH", help="UTF-8 text file to evaluate")
    budget: float | None = budget_option()
    context: int | None = option(None, kind="int", low=1, high=2 ** 24, metavar="N",
                                 help="window length in bytes (default and maximum: the trained context)")
    stride: int | None = option(None, kind="int", low=1, high=2 ** 24, metavar="N",
                                help="window stride (default: the context, non-overlapping windows); smaller = "
                                     "more context")
    batch_size: int = option(8, kind="int", low=1, high=4096, metavar="N", help="windows per forward (default 8)")
    max_bytes: int | None = option(None, kind="int", low=2, high=2 ** 40, metavar="N",
                                   help="evaluate only the first N bytes of the file")
    # the physical cores: evaluation is batched forwards, which use every core
    threads: int | None = threads_option(None, "evaluation is batched forwards")
    json: bool = option(False, kind="bool", help="print one JSON object")
    list: bool = option(False, kind="bool", help="print the bundled checkpoints as JSON and exit")

    def check(self) -> None:
        """A checkpoint and a text file, unless ``--list``."""
        if not self.list and (self.checkpoint is None or self.text_file is None):
            raise UsageError("CHECKPOINT and --text-file are required (or --list)")


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
    """Budget not below the smallest resolution of a tiled layer (``r_min``); its range (0, 1] is the
    option's (:func:`budget_option`).

    Parameters
    ----------
    model : the :class:`~tiling.train.model.TiledLM`.
    budget : the budget asked for; None passes.

    Raises
    ------
    UsageError
        ``budget`` is below a tiled layer's ``r_min``.
    """
    if budget is None:
        return
    floors = ([(k, model.layers[k].r_min) for k in model.tiled_layers] if hasattr(model, "tiled_layers")
              else [("main", model.config.tiling.r_min)])  # an HourglassLM: its main network's
    for k, r_min in floors:
        if budget < r_min:
            raise UsageError(f"--budget {budget} is below the checkpoint's smallest resolution r_min = {r_min} "
                             f"(layer {k}); use a budget in [{r_min}, 1]")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infogeo evaluate`` on an argparse sub-parser collection (:mod:`tiling.workflows.cli`)."""
    return add_subcommand(subparsers, "evaluate", EvaluateOptions, command, description=__doc__,
                          help="bits per byte of a UTF-8 text file under a text checkpoint")


def run(opts: EvaluateOptions) -> dict:
    """Evaluate ``opts.text_file`` under ``opts.checkpoint``; the result with its warnings."""
    set_threads(opts.threads, decoding=False)
    keep_freed_memory()  # this process is ours: reuse freed activations (tiling.runtime)
    model, extra = load_text_model(resolve_checkpoint(opts.checkpoint))
    check_budget(model, opts.budget)
    trained = int(extra["context"])
    context = trained if opts.context is None else opts.context
    if context > trained:
        raise UsageError(f"--context {context} is longer than the checkpoint was trained for ({trained} bytes)")
    if opts.stride is not None and opts.stride > context:
        raise UsageError(f"--stride must lie in [1, context = {context}], got {opts.stride}")
    data = read_text_file(opts.text_file)
    res = evaluate_bytes(model, data, context=context, budget=opts.budget, stride=opts.stride,
                         batch_size=opts.batch_size, max_bytes=opts.max_bytes)
    res.update(checkpoint=str(opts.checkpoint), text_file=str(opts.text_file),
               configuration=extra.get("configuration"), trained_budget=extra.get("budget"),
               trained_context=trained, requested_budget=opts.budget,
               warnings=budget_notes(model, extra, opts.budget, res["mean_resolution"]))
    return res


def command(args: argparse.Namespace) -> int:
    """The command on a parsed command line: prints the result (or the bundled checkpoints); exit code 0."""
    opts = EvaluateOptions.from_args(args)
    if opts.list:
        print(json.dumps(bundled_checkpoints(), indent=1))
        return 0
    res = run(opts)
    for w in res["warnings"]:
        print(f"evaluate: warning: {w}", file=sys.stderr)
    print(json.dumps(res) if opts.json else format_result(res))
    return 0


def format_result(r: dict) -> str:
    lay = " ".join(f"{x:.3f}" for x in r["mean_resolution_by_layer"])
    return (f"{r['text_file']}: {r['bpb']:.4f} bits per byte over {r['scored_bytes']} predicted bytes "
            f"({r['bytes']} bytes, {r['windows']} windows of {r['context']}, stride {r['stride']})\n"
            f"checkpoint {r['checkpoint']}: configuration {r['configuration']}, trained at budget "
            f"{r['trained_budget']:g}, context {r['trained_context']}\n"
            f"evaluated at budget {r['budget']:g}{'' if r.get('requested_budget') is not None else ' (as trained)'}: "
            f"realised mean resolution {r['mean_resolution']:.3f} (by layer: {lay}); "
            f"{r['bytes_per_s']:.0f} bytes/s; {r['flops_per_byte'] / 1e6:.3f} MFLOPs per byte")


#: the errors a command-line run reports as one line with exit code 2 (bad input of every kind)
EXPECTED = (TextInputError, TextModelError, CheckpointError, UsageError, RunError, ValueError, OSError, MemoryError)


def main(argv=None) -> int:
    """``python -m tiling.train.evaluate`` (an alias of ``infogeo evaluate``); returns the exit code (0; 2 for
    any expected error; 130 when interrupted)."""
    parser = standalone_parser("python -m tiling.train.evaluate", EvaluateOptions, __doc__)
    return run_main("evaluate", lambda: command(parser.parse_args(argv)), expected=EXPECTED, reads=True)


if __name__ == "__main__":
    sys.exit(main())
