"""One run of ``infogeo train`` (:mod:`tiling.train.text_cli`): the data, the model of the command line
(a :class:`~tiling.train.TiledLM` configuration or the hourglass), the training (:func:`tiling.train.trainer.train_run`,
the one training loop) and a row evaluated without training (tiling after the fact).

Every function takes the run's settings, the namespace :func:`tiling.train.text_cli.settings` makes from
the options objects (:class:`~tiling.train.text_cli.TextCommand` and
:class:`~tiling.train.trainer.TrainOptions`): the sweeps copy it and change a row's configuration,
budget, seed and outer layers.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tiling.config import hourglass_config
from tiling.modules.hourglass import HourglassLM, match_main_width
from tiling.train import sweep as hourglass_sweep
from tiling.train.storage import atomic_write_json
from tiling.train.text import TextInputError, evaluate_bytes, forward_madds, measure_speed
from tiling.train.textmodel import build_model, load_text_model, model_config, model_dict
from tiling.train.trainer import TrainOptions, machine_info, set_threads, train_run

# Configurations whose every layer keeps token-level outputs: full-resolution outer layers change nothing
# in "full" and are not needed by the scan scope, so --full-layers does not apply to them (one row serves
# both choices instead of two identical trainings).
TOKEN_LEVEL = ("full", "scan-adaptive")


def outer_layers(config: str, full_layers) -> tuple[int, ...]:
    """The layers kept at full resolution for ``config`` under ``--full-layers``."""
    return () if config in TOKEN_LEVEL else tuple(full_layers)


def row_name(config: str, budget: float, seed: int, full_layers=()) -> str:
    """A run's name: ``CONFIG[+ends|+flI,J]@BUDGET/sSEED``."""
    full_layers = outer_layers(config, full_layers)
    suffix = "+ends" if tuple(full_layers) in ((0, -1),) else ("+fl" + ",".join(map(str, full_layers)) if full_layers else "")
    return f"{config}{suffix}@{budget:g}/s{seed}"


def row_dir(out: Path, name: str) -> Path:
    """The folder of the row ``name`` under ``out``."""
    return out / name.replace("@", "_b").replace("/", "_").replace(",", "-")


def train_options(args) -> TrainOptions:
    """The :class:`~tiling.train.trainer.TrainOptions` of a run's settings (a sweep row's seed included)."""
    return TrainOptions(**{name: getattr(args, name) for name in TrainOptions.specs()})


def load_data(args) -> dict:
    """The three splits (:func:`tiling.train.sweep.load_data`: the prepared corpus, or the given files); a
    file it refuses is named by its option."""
    try:
        return hourglass_sweep.load_data(args)
    except TextInputError as e:
        flags = [f for f, path in (("--train-file", args.train_file), ("--val-file", args.val_file),
                                   ("--test-file", args.test_file)) if path is not None and str(path) in str(e)]
        raise TextInputError(f"{'/'.join(flags) or '--train-file'}: {e}") from None


def build(args) -> tuple[torch.nn.Module, float, dict]:
    """``(model, the budget it is evaluated at, the row's model fields)`` of the command line's configuration."""
    if args.config == "hourglass":
        model, info = build_hourglass(args)
        return model, args.budget, info
    cfg = model_config(args.config, args.budget, d_model=args.d_model, n_layers=args.n_layers,
                       d_state=args.d_state, tile_size=args.tile_size, r_min=args.r_min,
                       full_resolution_layers=outer_layers(args.config, args.full_layers), expand=args.expand)
    model = build_model(cfg)
    info = {"full_resolution_layers": list(model.full_resolution_layers), "d_model": args.d_model,
            "n_layers": args.n_layers, "tile_size": args.tile_size, "model": model_dict(model)}
    return model, cfg.tiling.budget, info


def train(args, data: dict | None = None) -> dict:
    """Train one configuration (:func:`tiling.train.trainer.train_run`, the one training loop); write
    OUT/checkpoint.safetensors, OUT/log.jsonl, OUT/row.json; return the row."""
    data = load_data(args) if data is None else data
    if args.full_layers and args.config in TOKEN_LEVEL:
        print(f"note: --full-layers does not apply to --config {args.config} (every layer keeps token-level "
              f"outputs); training all layers as given by the configuration", flush=True)
    torch.manual_seed(args.seed)
    model, budget, info = build(args)
    name = row_name(args.config, budget, args.seed, args.full_layers)
    return train_run(model, data, train_options(args), args.out, name=name, configuration=args.config, budget=budget,
                     info=info, overwrite=getattr(args, "overwrite", False))


def build_hourglass(args):
    """The hourglass of the command line: ``d_main`` given, or FLOP-matched to plain Mamba of ``--d-model``."""
    base = hourglass_config(d_outer=args.d_outer, d_main=args.d_main or args.d_outer,
                            encoder_layers=args.encoder_layers, main_layers=args.main_layers,
                            decoder_layers=args.decoder_layers, d_state=args.d_state, expand=args.expand,
                            budget=args.budget, tile_size=args.tile_size, r_min=args.r_min, signal=args.signal,
                            dechunk=args.dechunk, budget_range=args.budget_range,
                            budget_skew=args.budget_skew, budget_conditioning=args.budget_conditioning,
                            residual_init=args.residual_init)
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


def evaluate_only(src_row: dict, budget: float, out: Path, data: dict, args) -> dict:
    """A row without training: the model of ``src_row`` evaluated at ``budget`` (tiling after the fact)."""
    set_threads(args.threads)
    model, extra = load_text_model(src_row["checkpoint"])
    test = evaluate_bytes(model, data["test"], context=extra["context"], budget=budget, max_bytes=args.test_bytes)
    speed = None if not args.speed else measure_speed(model, data["test"], context=extra["context"], budget=budget,
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
