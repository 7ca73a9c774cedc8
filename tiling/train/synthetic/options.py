"""The options of the synthetic-task trainer, each defined once (:class:`SyntheticOptions`).

The flags, defaults and ranges are those of ``scripts/train_tiled.py`` before it moved into the
package (docs/training.md and docs/benchmarks.md name them). Two of them differ from other jobs on
purpose: ``--tile-size 16`` and ``--budget 1.0`` (a run without ``--budget`` is the full-resolution
reference the comparison is made against; docs/cli.md, "Why the plan's defaults differ").
"""
from __future__ import annotations

from dataclasses import dataclass

from tiling.config import MIN_RESOLUTION, TilingConfig
from tiling.options import MAX_THREADS, Options, UsageError, option, seed_option

__all__ = ["SyntheticOptions", "RUN_CONTROL", "settings"]

#: the options that steer the run, not what is trained: a resume may change them, and the settings
#: fingerprint (:func:`settings`) leaves them out
RUN_CONTROL = frozenset({"out", "resume", "init_from", "stop_at", "eval_every", "log_every", "ckpt_every", "device",
                         "threads", "quiet", "no_ifq", "overwrite", "sweep", "budgets", "base_steps", "base_lr",
                         "figure", "with_non_causal"})

#: the upper ends of the sizes keep every product far from int64 and memory limits
_BIG = 2 ** 40


def _size(default: int | None, high: int, help: str, low: int = 1) -> object:
    """An integer option in ``[low, high]``."""
    return option(default, kind="int", low=low, high=high, metavar="N", help=help)


def _resolution(default: float, help: str) -> object:
    """A budget-like number in ``[MIN_RESOLUTION, 1]`` (:data:`tiling.config.MIN_RESOLUTION`)."""
    return option(default, kind="float", low=MIN_RESOLUTION, high=1.0, help=help)


def _device(value: str) -> str:
    """``value`` if torch knows it as a device and it is usable here (cpu, or cuda when available)."""
    import torch

    try:
        device = torch.device(value)
    except RuntimeError as e:
        raise ValueError(f"{value!r} is not a device ({str(e).splitlines()[0]}); expected e.g. cpu, cuda or "
                         "cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{value!r}: no CUDA device is available here; pass --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{value!r}: expected cpu or cuda")
    return value


@dataclass(frozen=True)
class SyntheticOptions(Options):
    """The options of ``infogeo train-synthetic`` (``python -m tiling.train.synthetic``,
    ``scripts/train_tiled.py``): the task, the model, the optimisation, the run and the sweep.

    Parameters
    ----------
    task, period, context_len, ..., with_non_causal :
        the flags of the same names (their help says what each does). Paths (``out``, ``resume``,
        ``init_from``, ``figure``) are strings, so that :meth:`~tiling.options.Options.to_dict` is JSON.

    Examples
    --------
    >>> SyntheticOptions(budget=0.35).tiling().budget
    0.35
    """

    # the task (tiling.train.data)
    task: str = option("copy", kind="str", choices=("copy", "repeat"),
                       help="copy: BurstCopyDataset (copy the bursts after SEP); repeat: BurstRepeatDataset "
                            "(recall at lag --period inside periodic bursts)")
    period: int = _size(8, 2 ** 20, "repeat: period of the burst pattern (recall lag)")
    context_len: int = _size(1024, 2 ** 20, "tokens of context before the answers", low=2)
    n_bursts: int = _size(2, 2 ** 16, "bursts per sequence")
    burst_len: int = _size(16, 2 ** 16, "symbols per burst")
    n_symbols: int = _size(8, 2 ** 16, "alphabet of the burst content", low=2)
    burst_window: int | None = _size(None, 2 ** 20, "copy: bursts lie in the last W context tokens")
    train_size: int = _size(100_000, 2 ** 31, "training sequences")
    eval_size: int = _size(128, 2 ** 24, "evaluation sequences")
    # the model (tiling.train.model.TiledLM and its TilingConfig)
    d_model: int = _size(32, 2 ** 14, "model width")
    n_layers: int = _size(2, 1024, "TiledMamba layers")
    d_state: int = _size(16, 1024, "state size of each channel")
    tile_size: int = _size(16, 2 ** 20, "tokens per tile")
    scope: str = option("block", kind="str", choices=("block", "scan"),
                        help="block: the whole mixer runs on one token per segment (cost falls with the budget); "
                             "scan: the resolution shrinks the recurrence only (the earlier runs of "
                             "docs/benchmarks.md)")
    boundaries: str = option("tile", kind="str", choices=("tile", "token"),
                             help="block scope: per-tile segment counts from the policy, or H-Net's learned router")
    ratio_weight: float = option(0.03, kind="float", low=0.0, high=1e6,
                                 help="boundaries=token: weight of H-Net's ratio loss (the paper's alpha)")
    policy: str = option("adaptive", kind="str", choices=("adaptive", "uniform", "binary"),
                         help="how the budget is shared between tiles")
    budget: float = _resolution(1.0, "target mean resolution in [2**-20, 1] (1: the full-resolution reference)")
    r_min: float = _resolution(0.0625, "smallest resolution of a tile, at most --budget")
    non_causal: bool = option(False, kind="bool", help="encoder mode (leaks the segmentation)")
    exponent: float = option(0.5, kind="float", low=0.0, low_open=True, high=1e3,
                             help="policy importance q_i = ρ_i^exponent")
    slack: float = option(4.0, kind="float", low=0.5, high=1e12, help="causal budget controller's slack D (tiles)")
    predictor_tail: int | None = _size(None, 2 ** 20, "causal policy: predict tile i from the last N tokens of "
                                                      "tile i-1 (default: the whole tile)")
    predictor_reduce: str = option("mean", kind="str", choices=("mean", "max"),
                                   help="causal policy: mean or max of the predictor's tail tokens")
    calibration: str = option("running", kind="str", choices=("history", "running"),
                              help="causal policy: calibrate on running population quantiles (default) or on the "
                                   "sequence's history")
    shared_density: bool = option(False, kind="bool", help="every layer's policy reads the first layer's tile "
                                                           "densities (TiledLM shared_density)")
    # the optimisation
    steps: int = _size(400, _BIG, "training steps (the schedule's length)")
    dt_min: float = option(0.001, kind="float", low=0.0, low_open=True, high=1.0, help="smallest initial step dt")
    dt_max: float = option(0.1, kind="float", low=0.0, low_open=True, high=1.0, help="largest initial step dt")
    stop_at: int | None = _size(None, _BIG, "stop after this step (schedule still over --steps)")
    batch_size: int = _size(16, 2 ** 16, "sequences per step, per process")
    lr: float = option(3e-3, kind="float", low=0.0, low_open=True, high=1e3, help="peak learning rate (AdamW)")
    weight_decay: float = option(0.1, kind="float", low=0.0, high=1e3, help="AdamW weight decay")
    warmup: int = _size(20, _BIG, "linear warm-up steps", low=0)
    grad_clip: float = option(1.0, kind="float", low=0.0, high=1e12, help="gradient norm clip (0: none)")
    seed: int = seed_option(0, high=2 ** 32 - 1)
    # the run
    out: str = option("runs/train_tiled", kind="str", metavar="PATH", help="the run folder")
    eval_every: int = _size(100, _BIG, "evaluate every N steps")
    log_every: int = _size(10, _BIG, "log the training loss every N steps")
    ckpt_every: int = _size(0, _BIG, "checkpoint every N steps (0: only at the end)", low=0)
    resume: str | None = option(None, kind="str", metavar="PATH",
                                help="checkpoint to continue from (refused if trained with other settings)")
    overwrite: bool = option(False, kind="bool",
                             help="replace the run already in --out (its checkpoint and log); without it, or "
                                  "--resume, an --out that holds a run is refused")
    init_from: str | None = option(None, kind="str", metavar="PATH",
                                   help="start from this checkpoint's model weights only")
    device: str = option("cpu", kind="str", check=_device, help="cpu, cuda or cuda:K")
    threads: int | None = option(None, kind="int", low=1, high=MAX_THREADS, metavar="N",
                                 help="torch CPU threads, an integer >= 1 (default: torch's own)")
    no_ifq: bool = option(False, kind="bool", help="skip the IFQ/CER evaluation")
    quiet: bool = option(False, kind="bool", help="no progress bar")
    # the sweep
    sweep: bool = option(False, kind="bool", help="full + {uniform, binary, adaptive} × budgets")
    budgets: tuple[float, ...] = option((0.25, 0.35, 0.5), kind="floats", low=MIN_RESOLUTION, high=1.0,
                                        metavar="C", help="sweep: the budgets")
    base_steps: int = _size(0, _BIG, "sweep: first train a full-resolution model this long, then fine-tune every "
                                     "configuration from it for --steps (0 steps: evaluate it as is); without it, "
                                     "--init-from gives the common starting checkpoint", low=0)
    base_lr: float | None = option(None, kind="float", low=0.0, low_open=True, high=1e3,
                                   help="sweep: learning rate of the base run (default --lr)")
    figure: str | None = option(None, kind="str", metavar="PATH", help="accuracy-vs-cost figure (sweep)")
    with_non_causal: bool = option(False, kind="bool",
                                   help="sweep: also adaptive with causal=False (encoder mode; leaks the "
                                        "segmentation)")

    def check(self) -> None:
        """``dt_min <= dt_max``, ``resume`` alone (not with ``overwrite`` or ``sweep``), a valid
        :meth:`tiling` plan, and, in a sweep, no budget below ``r_min``."""
        if self.dt_min > self.dt_max:
            raise UsageError(f"{self.label('dt_min')} must be <= {self.label('dt_max')} = {self.dt_max}, "
                             f"got {self.dt_min}")
        if self.resume is not None and (self.overwrite or self.sweep):
            raise UsageError(f"{self.label('resume')} continues one run: not with {self.label('overwrite')} or "
                             f"{self.label('sweep')}")
        self.tiling()
        low = [c for c in self.budgets if c < self.r_min] if self.sweep else []
        if low:
            raise UsageError(f"{self.label('budgets')} {low[0]} is below {self.label('r_min')} = {self.r_min} "
                             "(the budget cannot be met below r_min)")

    def tiling(self) -> TilingConfig:
        """The layers' :class:`~tiling.config.TilingConfig` (its errors name the flag, as :meth:`relabel` does)."""
        try:
            return TilingConfig(tile_size=self.tile_size, budget=self.budget, r_min=self.r_min, policy=self.policy,
                                causal=not self.non_causal, exponent=self.exponent, slack=self.slack,
                                predictor_tail=self.predictor_tail, predictor_reduce=self.predictor_reduce,
                                calibration=self.calibration, scope=self.scope,
                                boundaries=self.boundaries if self.scope == "block" else "tile")
        except (TypeError, ValueError) as e:
            raise self.relabel(e) from None


def settings(opts: SyntheticOptions) -> dict[str, str]:
    """What the run trains: :meth:`~tiling.options.Options.to_dict` but :data:`RUN_CONTROL`, each value as
    its ``str`` (as the checkpoints of ``scripts/train_tiled.py`` record them, so those still resume).
    Stored in each checkpoint and ``run.json``; a resume under other settings is refused naming them."""
    return {k: str(v) for k, v in opts.to_dict().items() if k not in RUN_CONTROL}
