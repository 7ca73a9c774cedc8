"""Train a byte-level LM on real text (the Python documentation, ``make corpus``): a TiledLM configuration
or the hourglass, one run or a sweep of runs (``infogeo train``; ``scripts/train_text.py`` is an alias).

One run (one configuration, one budget, one seed)::

    infogeo train --config adaptive --budget 0.35 --seed 0 --out runs/text_lm/one

The hourglass table of ``docs/benchmarks.md`` (``--sweep``, :mod:`tiling.train.sweep`; ``--resume`` skips
finished rows), and the earlier every-layer tiled table (``--table tiled``, :mod:`tiling.train.text_sweep`)::

    infogeo train --sweep --resume --out runs/hourglass
    infogeo train --sweep --table tiled --resume --out runs/text_lm

``--shard i/n`` runs every n-th row, so n processes (one thread each) share a machine; each rewrites the
table from all finished rows. The table goes to ``--results``, the figures to ``--figures``.

Each run: one thread (``--threads``), AdamW, warm-up then cosine on the progress towards the first limit
reached (``--max-minutes`` of training, ``--max-bytes``, ``--max-steps``; ``tiling.train.schedule``),
validation bpb on a fixed subset of the validation split every ``--eval-every-s`` seconds of training
(evaluation time is not training time), then the atomic checkpoint, test bpb on the test split, FLOPs per
byte and prefill / decode bytes per second. See ``docs/training.md``, "Real text".

The flags come from two options objects (:mod:`tiling.options`): :class:`TextCommand` (what is trained,
on what, and where it goes) and :class:`~tiling.train.trainer.TrainOptions` (the training loop's).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tiling.config import SIGNALS
from tiling.options import Options, Parser, RunError, UsageError, first_line, option, run_main
from tiling.train import sweep as hourglass_sweep
from tiling.train import text_sweep
from tiling.train.corpus import CorpusError
from tiling.train.storage import StorageError
from tiling.train.text import TextInputError
from tiling.train.text_run import build, row_dir, row_name, train
from tiling.train.textmodel import CONFIGURATIONS, TextModelError
from tiling.train.trainer import TrainOptions, set_threads, training_loss

PROG = "train_text"


def parse_budget_range(s: str) -> tuple[float, float]:
    """``"LO,HI"`` → ``(LO, HI)`` (``--budget-range``; :func:`_budget_range` checks the pair)."""
    try:
        lo, hi = (float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget-range takes LO,HI (two numbers), got {s!r}") from None
    return lo, hi


def _budget_range(pair) -> tuple[float, float]:
    lo, hi = (float(v) for v in pair)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"must satisfy 0 < LO <= HI <= 1, got {lo:g},{hi:g}")
    return lo, hi


def parse_full_layers(s: str) -> tuple[int, ...]:
    """``--full-layers``: ``"none"`` → (), ``"ends"`` → (0, -1), ``"0,2"`` → (0, 2)."""
    s = s.strip().lower()
    if s in ("", "none"):
        return ()
    if s == "ends":
        return (0, -1)
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--full-layers takes 'none', 'ends' or comma-separated layer indices, got {s!r}")


def _layer_indices(value) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ValueError(f"must be layer indices (ints), got {value!r}")
    return tuple(value)


def _shard(text: str) -> str:
    try:
        hourglass_sweep.parse_shard(text)
    except ValueError:
        raise ValueError(f"must be i/n with 0 <= i < n, got {text!r}") from None
    return text


def _size(default: int | None, high: int, help: str, low: int = 1):
    return option(default, kind="int", low=low, high=high, help=help)


@dataclass(frozen=True)
class TextCommand(Options):
    """The options of ``infogeo train`` that are not the training loop's: the configuration and its model,
    the data, where the run goes, the sweep. The training loop's are :class:`~tiling.train.trainer.TrainOptions`.

    Parameters
    ----------
    config, budget, out, overwrite, measure : what runs and where it goes.
    corpus_dir, train_file, val_file, test_file : the data.
    d_model, n_layers, d_state, expand, tile_size, r_min, full_layers : a TiledLM configuration's model.
    signal, dechunk, budget_range, budget_skew, budget_conditioning, residual_init, d_outer, d_main, encoder_layers,
    main_layers, decoder_layers : the hourglass.
    sweep, table, resume, results, figures, shard, only, wait_minutes, ablation, bundle : a sweep.
    """

    config: str = option("adaptive", kind="str", choices=tuple(sorted(CONFIGURATIONS)) + ("hourglass",),
                         help="a TiledLM configuration (tiling.train.textmodel) or 'hourglass' (tiling.modules.hourglass)")
    # 0.35, the sweep's headline budget, as the analysis (TilingConfig's 1 leaves a layer unchanged)
    budget: float = option(0.35, kind="float", low=0.0, low_open=True, high=1.0,
                           help="resolution budget in (0, 1] (full: always 1)")
    out: str | None = option(None, kind="str", metavar="DIR",
                             help="run directory (default runs/text_lm/<row>, where a sweep finds it); a sweep: the "
                                  "directory of the rows (default runs/hourglass, or runs/text_lm for --table tiled)")
    overwrite: bool = option(False, kind="bool", help="one run: replace a finished run in --out")
    measure: int | None = option(None, kind="int", low=1, high=2 ** 20, metavar="STEPS",
                                 help="time STEPS training steps of the configuration (after 2 warm-up steps), print "
                                      "the bytes per second and the training bytes the --max-minutes limit allows, "
                                      "and exit")
    corpus_dir: str = option("data/corpus", kind="str", metavar="DIR", help="prepared corpus (make corpus)")
    train_file: str | None = option(None, kind="str", metavar="PATH",
                                    help="instead of the corpus: a UTF-8 training text")
    val_file: str | None = option(None, kind="str", metavar="PATH", help="validation text (default: --train-file)")
    test_file: str | None = option(None, kind="str", metavar="PATH", help="test text (default: --val-file)")
    d_model: int = _size(256, 2 ** 14, "model width")
    n_layers: int = _size(4, 1024, "Mamba layers")
    d_state: int = _size(16, 1024, "SSM state size")
    expand: int = _size(1, 64, "Mamba's expansion, d_inner = expand·d_model (default 1: see docs/training.md, "
                                "'Real text')")
    # tiles of 16 bytes (TilingConfig's 64): a 1024-byte window gets 64 tiles, as in the analysis
    tile_size: int = _size(16, 2 ** 20, "bytes per tile")
    r_min: float = option(0.0625, kind="float", low=0.0, low_open=True, high=1.0,
                          help="resolution floor, in (0, budget]")
    full_layers: tuple = option((), kind="any", parse=parse_full_layers, check=_layer_indices,
                                help="layers kept at full resolution: 'none' (default), 'ends' (first and last) or "
                                     "e.g. '0,-1'")
    signal: str = option("entropy", kind="str", choices=tuple(SIGNALS), help="hourglass: boundary signal "
                                                                             "(docs/tiling.md)")
    dechunk: str = option("ema", kind="str", choices=("ema", "hold"), help="hourglass: how segments are expanded")
    budget_range: tuple | None = option(None, kind="any", parse=parse_budget_range, check=_budget_range,
                                        metavar="LO,HI", help="hourglass, elastic training: a budget drawn per step "
                                                              "from [LO, HI] (0 < LO <= HI <= 1)")
    budget_skew: float = option(1.0, kind="float", low=1.0, high=16.0,
                                help="hourglass, elastic training: the draw LO + (HI - LO)*u^SKEW, u uniform; 1 is "
                                     "uniform, above 1 more steps at the cheap end")
    budget_conditioning: bool = option(False, kind="bool",
                                       help="hourglass: learned vectors of the budget added to the main network's "
                                            "and the decoder's inputs (for elastic training)")
    residual_init: str = option("zero", kind="str", choices=("zero", "identity"),
                                help="hourglass: the encoder-to-decoder residual map at initialisation: zero "
                                     "(H-Net's) or identity (the Hourglass transformer's skip connection)")
    d_outer: int = _size(128, 2 ** 14, "hourglass: width of the byte-level stages")
    d_main: int | None = _size(None, 2 ** 14, "hourglass: main network width (default: FLOP-matched within 5%% to "
                                              "plain Mamba of --d-model, --n-layers at --budget)")
    encoder_layers: int = _size(1, 1024, "hourglass: encoder layers", low=0)
    main_layers: int = _size(4, 1024, "hourglass: main network layers")
    decoder_layers: int = _size(1, 1024, "hourglass: decoder layers", low=0)
    sweep: bool = option(False, kind="bool", help="run a table (module docstring)")
    table: str = option("hourglass", kind="str", choices=("hourglass", "tiled"),
                        help="sweep: 'hourglass' (plain Mamba against the hourglass, tiling.train.sweep; default) or "
                             "'tiled' (every-layer tiled configurations, the earlier table)")
    resume: bool = option(False, kind="bool", help="sweep: skip rows whose row.json exists")
    results: str | None = option(None, kind="str", metavar="PATH",
                                 help="the table (default docs/results/hourglass_lm.json, or text_lm.json for "
                                      "--table tiled)")
    figures: str | None = option(None, kind="str", metavar="DIR",
                                 help="the figures (default docs/figures/hourglass, or docs/figures/training)")
    shard: str = option("0/1", kind="str", check=_shard,
                        help="i/n: run rows i, i+n, i+2n, ... (n processes share a machine)")
    only: tuple | None = option(None, kind="strs", metavar="ROW",
                                help="sweep: run only these rows (e.g. full@1/s0)")
    wait_minutes: float = option(30.0, kind="float", low=0.0, high=1e7,
                                 help="sweep, sharded: wait this long for the other shards' budget-0.35 rows before "
                                      "the second phase")
    ablation: bool = option(False, kind="bool", help="sweep: also the best adaptive configuration at 0.35 with the "
                                                     "first and last layer at full resolution (seed 0)")
    bundle: bool = option(False, kind="bool", help="sweep: copy the seed-0 full and best adaptive models at 0.35 to "
                                                   "the bundled checkpoints")

    def check(self) -> None:
        """``--full-layers`` within ``--n-layers``; ``--only`` names rows of the chosen ``--table``."""
        for k in self.full_layers:
            if not -self.n_layers <= k < self.n_layers:
                raise UsageError(f"{self.label('full_layers')}: layer {k} does not exist in a model of "
                                 f"{self.label('n_layers')} {self.n_layers}")
        if self.only is None:
            return
        if self.table == "hourglass":
            valid = {r["name"] for r in hourglass_sweep.rows() + hourglass_sweep.evaluated_rows()}
        else:
            valid = {text_sweep.spec_name(s) for s in text_sweep.phase1_rows(self)}
            for best in text_sweep.ADAPTIVE:
                valid |= {text_sweep.spec_name(s) for s in text_sweep.phase2_rows(best, self)}
        unknown = sorted(set(self.only) - valid)
        if unknown:
            raise UsageError(f"{self.label('only')}: no such row(s) {', '.join(unknown)}; the rows are "
                             f"{', '.join(sorted(valid))}")


#: the options objects whose fields are the flags, with the title of their group in ``--help``
GROUPS = ((TextCommand, "configuration, data, output and sweep"), (TrainOptions, "training and evaluation"))
#: the fields that hold paths
PATHS = ("out", "corpus_dir", "train_file", "val_file", "test_file", "results", "figures")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of both options objects, one argument group each."""
    for cls, title in GROUPS:
        cls.add_arguments(parser.add_argument_group(title))


def settings(args: argparse.Namespace) -> argparse.Namespace:
    """The run's settings from a parsed command line: both options objects checked (a bad value is a
    :class:`~tiling.options.UsageError` naming its flag), their fields with paths as ``Path``, the
    sweep's defaults filled in, ``shard_index``/``shard_count`` and ``no_speed`` (the form
    :mod:`tiling.train.sweep` reads)."""
    opts, cmd = TrainOptions.from_args(args), TextCommand.from_args(args)
    values = {name: getattr(obj, name) for obj in (cmd, opts) for name in obj.specs()}
    values.update({k: None if values[k] is None else Path(values[k]) for k in PATHS})
    run = argparse.Namespace(**values, no_speed=not opts.speed)
    run.shard_index, run.shard_count = hourglass_sweep.parse_shard(cmd.shard)
    hourglass = cmd.table == "hourglass"
    run.results = run.results or Path("docs/results/hourglass_lm.json" if hourglass else "docs/results/text_lm.json")
    run.figures = run.figures or Path("docs/figures/hourglass" if hourglass else "docs/figures/training")
    return run


def parse_args(argv=None) -> argparse.Namespace:
    """The settings (:func:`settings`) of the command line ``argv``."""
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return settings(p.parse_args(argv))


def measure(args) -> dict:
    """Seconds per training step of one configuration on random bytes (no data needed)."""
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    model, budget, _ = build(args)
    model = model.train().to(args.device)
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


def run(args: argparse.Namespace) -> int:
    """Run the settings ``args`` (:func:`settings`): ``--measure``, a sweep, or one run; exit code 0."""
    try:
        if args.measure:
            print(json.dumps(measure(args)))
        elif args.sweep and args.table == "hourglass":
            args.out = args.out or Path("runs/hourglass")
            hourglass_sweep.sweep(args)
        elif args.sweep:
            args.out = args.out or Path("runs/text_lm")
            text_sweep.sweep(args)
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


#: what a run refuses with one line ``train_text: error: ...`` and exit code 2: bad input, a refused run
#: or folder, a file that cannot be read or written, memory a model or a batch cannot get
EXPECTED = (UsageError, CorpusError, TextInputError, TextModelError, RunError, StorageError, ValueError, OSError,
            MemoryError)


def main(argv=None) -> int:
    """``train_text`` (``scripts/train_text.py``, an alias of ``infogeo train``); returns the exit code (0; 2
    for any expected error, one line; 130 when interrupted)."""
    return run_main(PROG, lambda: run(parse_args(argv)), expected=EXPECTED,
                    interrupted=f"{PROG}: interrupted; what was written so far is kept")


def command(args: argparse.Namespace) -> int:
    """``infogeo train`` on its parsed command line; a missing corpus is a :class:`~tiling.options.RunError`
    (the one-line errors of ``infogeo``)."""
    try:
        return run(settings(args))
    except CorpusError as e:  # a RuntimeError: raised as the shared error type
        raise RunError(first_line(e)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infogeo train`` on an argparse sub-parser collection (:mod:`tiling.workflows.cli`)."""
    p = subparsers.add_parser("train", help="train a byte-level LM on real text (one run, or a sweep)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=command)
    return p


__all__ = ["TextCommand", "add_arguments", "add_parser", "command", "main", "measure", "parse_args", "run", "settings"]


if __name__ == "__main__":
    sys.exit(main())
