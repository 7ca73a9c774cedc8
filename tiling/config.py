"""One tiling configuration: every option of the resolution policy and of the tiled layer.

:class:`TilingConfig` is the single place where the options of :func:`tiling.policy.plan_tiles`,
:func:`tiling.policy.resolution_policy` and :class:`~tiling.modules.TiledMamba` are written down
and checked. It is frozen, so one configuration can be shared by the layers of a model, the
analysis job and a checkpoint's metadata; :meth:`TilingConfig.replace` derives a changed copy
(checked again) and :meth:`TilingConfig.to_dict` / :meth:`TilingConfig.from_dict` store it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from infogeo.checks import check_choice, check_in_range, check_int, check_positive

#: the largest tile size and causal lookback (2**20 tokens): beyond any sequence this code runs, and far
#: from 2**53, so a tile's segment count ⌈R·T⌉ (float64) and products with the tile count (int64) stay exact
MAX_SIZE = 2 ** 20
#: the smallest budget and r_min (2**-20 = 1/MAX_SIZE, one segment in the largest tile): a smaller one plans
#: the same segments, and below float32's smallest normal number it would underflow to a resolution of 0
MIN_RESOLUTION = 2.0 ** -20


def _check_policy_options(*, budget: float, r_min: float, mode: str, causal: bool, distance_scale: float | None,
                          mode_name: str) -> None:
    """Budget, minimum resolution, mode and the causal/distance pairing (messages name the option)."""
    check_in_range(budget, "budget", 0.0, 1.0, low_open=True)
    check_in_range(r_min, "r_min", 0.0, 1.0, low_open=True)
    if r_min > budget:
        raise ValueError(f"r_min must be <= budget (the budget cannot be met below r_min), got r_min={r_min} > budget={budget}")
    check_choice(mode, mode_name, ["adaptive", "uniform", "binary"])
    if causal and distance_scale is not None:
        raise ValueError(
            "distance_scale needs causal=False: the distance d_i to the end of the sequence is not "
            "known causally (in a causal model every tile is the current position)"
        )


def _refuse_unknown(cls: type, data: dict, where: str = "") -> None:
    """Refuse the keys of ``data`` that are not fields of the dataclass ``cls`` (named, after ``where``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")


@dataclass(frozen=True)
class TilingConfig:
    """Options of the tiling: tiles, the resolution policy, its calibration and the layer's scope.

    Every field is checked once, in ``__post_init__`` (``ValueError``/``TypeError`` naming the
    field); the options that depend on the model (``s_max ≤ d_state``, ``router_rank ≤ d_model``)
    are checked by the layer that knows it.

    Parameters
    ----------
    tile_size : tile length ``1 ≤ T ≤ MAX_SIZE`` (2**20); tile ``i`` covers tokens ``[i·T, (i+1)·T)``
        (seed 001 §3.2.1, ``T_i = (M_i, S_i, R_i)``; seed 000 §3.2.1).
    budget : target mean resolution ``c ∈ [MIN_RESOLUTION, 1]`` (``MIN_RESOLUTION = 2**-20``), the compute
        budget of ``R_i = f(ρ_i, d_i, c)`` (seed 001 §3.2.2); 1 is full resolution (plain Mamba).
    r_min : smallest resolution ``R_min ∈ [MIN_RESOLUTION, budget]`` (seed 000 §3.2.1, ``R ∈ [R_min, 1]``).
    policy : ``"adaptive"`` (the level-of-detail map of seed 001 §3.2.2), ``"uniform"`` (``R_i = c``,
        seed 000 §3.6 "linear attention") or ``"binary"`` (``R_i ∈ {r_min, 1}``, seed 000 §3.6
        "sparse attention").
    causal : True: tile ``i``'s resolution depends on tiles ``< i`` only (module docstring of
        :mod:`tiling.policy`; a departure needed by language models, which seed 001 §3.2.2 does not
        discuss); False: the tile's own density, the budget met exactly per sequence.
    exponent : ``γ > 0`` of the importance ``q_i = ρ_i^γ · exp(−η κ_i) / (1 + d_i/d_0)``
        (seed 001 §3.2.2, :func:`tiling.policy.tile_importance`).
    lookback : causal predictor window ``w ≥ 1`` in tiles, ``p_i = max_{i−w≤j<i} q_j``
        (:func:`tiling.policy.causal_predictor`).
    slack : causal budget controller bound ``D ≥ 0.5`` (tiles) on the running surplus
        ``b_i = Σ_{j<i} (c − R_j)``, so ``|mean R − c| ≤ D / n_tiles``.
    curvature_weight : ``η ≥ 0``, weight of the curvature ``κ_i`` in the importance (seed 001 §3.2.2).
    distance_scale : ``d_0 > 0`` of the distance falloff ``1/(1 + d_i/d_0)`` (seed 001 §3.2.2,
        ``d_i``); None: off. Needs ``causal=False``.
    predictor_tail : causal mode: tile ``i`` is predicted from the last ``predictor_tail ≤ tile_size``
        tokens of tile ``i − 1`` (:func:`tiling.policy.tile_tail_density`, a departure from the
        whole-tile mean of seed 001 §3.4 step 1); None: the whole tile's mean.
    predictor_reduce : ``"mean"`` or ``"max"`` over the predictor's tail.
    calibration : causal adaptive policy: ``"history"`` calibrates the scale on the sequence's own
        past tiles, ``"running"`` on the running quantiles of
        :class:`~tiling.modules.router.RunningCalibration` (module docstring of :mod:`tiling.policy`).
    calibration_momentum : EMA weight ``∈ (0, 1]`` of a batch in the running quantiles.
    calibration_levels : number ``K ≥ 2`` of running quantiles (levels ``(k + ½)/K``).
    state_k : ``k ≥ 0`` of the state-dimension policy ``S_i = max(min(⌈kρ_i⌉, S_max), S_min)``
        (seed 001 §3.4 step 3); None: off (``S_i = d_state``). Needs ``scope="scan"``.
    s_min : ``S_min ≥ 1`` (seed 001 §3.4 step 3).
    s_max : ``S_max ≥ s_min`` (seed 001 §3.4 step 3); None: the layer's ``d_state``.
    routing : cross-scale routing between consecutive tiles, ``y_{i→j} = σ(W_s s_i + W_r (R_i − R_j))``
        (seed 001 §3.3.2); None: on in the scan scope, off in the block scope (True needs
        ``scope="scan"``).
    scope : ``"block"``: the whole mixer runs on ``O(R_i·n_i)`` tokens per tile (seed 000 §3.5.1
        step 1); ``"scan"``: the resolution sets the scan's segments only (seed 001 §3.5.1).
    boundaries : block scope: ``"tile"`` (``m_i`` segments per tile from the policy) or ``"token"``
        (H-Net's learned router, :class:`~tiling.modules.router.TokenRouter`). ``"token"`` needs
        ``scope="block"``.
    signal_channels : block scope: channels ``k ≥ 1`` of the linearised density (seed 001 §3.4
        step 1, :func:`~tiling.modules.signal.linear_density`).
    router_rank : ``boundaries="token"``: rank ``≥ 1`` of the router's query and key maps; None:
        ``min(32, d_model)``.
    pool : block scope: feed each segment's skipped tokens to the next representative
        (:class:`~tiling.modules.chunk.Chunk`).

    Raises
    ------
    TypeError
        An integer field (``tile_size``, ``lookback``, ``predictor_tail``, ``calibration_levels``,
        ``s_min``, ``s_max``, ``signal_channels``, ``router_rank``) is not an int, or a number
        field is not a number.
    ValueError
        A field is out of its range above or not one of its choices; ``r_min > budget``;
        ``distance_scale`` with ``causal=True``; ``routing=True`` or ``state_k`` with
        ``scope="block"``; ``boundaries="token"`` with ``scope="scan"``.
    """

    tile_size: int = 64
    budget: float = 1.0
    r_min: float = 0.0625
    policy: str = "adaptive"
    causal: bool = True
    exponent: float = 0.5
    lookback: int = 1
    slack: float = 4.0
    curvature_weight: float = 1.0
    distance_scale: float | None = None
    predictor_tail: int | None = None
    predictor_reduce: str = "mean"
    calibration: str = "history"
    calibration_momentum: float = 0.05
    calibration_levels: int = 64
    state_k: float | None = None
    s_min: int = 1
    s_max: int | None = None
    routing: bool | None = None
    scope: str = "block"
    boundaries: str = "tile"
    signal_channels: int = 128
    router_rank: int | None = None
    pool: bool = True

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (normalised types)
        # upper bounds (issue 27): a size far beyond any sequence, so int64 products and float64 counts stay exact
        put("tile_size", check_int(self.tile_size, "tile_size", minimum=1, maximum=MAX_SIZE))
        _check_policy_options(budget=self.budget, r_min=self.r_min, mode=self.policy, causal=self.causal,
                              distance_scale=self.distance_scale, mode_name="policy")
        for name in ("budget", "r_min"):  # a lower bound too (issue 27): no float32 underflow to R = 0 inside
            if float(getattr(self, name)) < MIN_RESOLUTION:
                raise ValueError(f"{name} must be >= {MIN_RESOLUTION:g} (2**-20, one segment in the largest tile), "
                                 f"got {getattr(self, name)}")
        put("budget", float(self.budget))
        put("r_min", float(self.r_min))
        put("causal", bool(self.causal))
        check_positive(self.exponent, "exponent")
        put("exponent", float(self.exponent))
        put("lookback", check_int(self.lookback, "lookback", minimum=1, maximum=MAX_SIZE))
        check_in_range(self.slack, "slack", 0.5, math.inf)
        put("slack", float(self.slack))
        check_positive(self.curvature_weight, "curvature_weight", strict=False)
        put("curvature_weight", float(self.curvature_weight))
        if self.distance_scale is not None:
            check_positive(self.distance_scale, "distance_scale")
            put("distance_scale", float(self.distance_scale))
        if self.predictor_tail is not None:
            put("predictor_tail", check_int(self.predictor_tail, "predictor_tail", minimum=1, maximum=self.tile_size))
        check_choice(self.predictor_reduce, "predictor_reduce", ["mean", "max"])
        check_choice(self.calibration, "calibration", ["history", "running"])
        check_in_range(self.calibration_momentum, "calibration_momentum", 0.0, 1.0, low_open=True)
        put("calibration_momentum", float(self.calibration_momentum))
        put("calibration_levels", check_int(self.calibration_levels, "calibration_levels", minimum=2, maximum=2 ** 16))
        if self.state_k is not None:
            check_positive(self.state_k, "state_k", strict=False)
            put("state_k", float(self.state_k))
        if self.s_max is not None:
            put("s_max", check_int(self.s_max, "s_max", minimum=1, maximum=2 ** 16))
        put("s_min", check_int(self.s_min, "s_min", minimum=1, maximum=self.s_max or 2 ** 16))
        check_choice(self.scope, "scope", ["block", "scan"])
        check_choice(self.boundaries, "boundaries", ["tile", "token"])
        if self.scope == "block":
            if self.routing:
                raise ValueError("routing acts between the scan's tiles: it needs scope='scan' (got routing=True)")
            if self.state_k is not None:
                raise ValueError("state_k (the state-dimension policy) needs scope='scan'")
        elif self.boundaries != "tile":
            raise ValueError(f"boundaries={self.boundaries!r} needs scope='block'")
        if self.routing is not None:
            put("routing", bool(self.routing))
        put("signal_channels", check_int(self.signal_channels, "signal_channels", minimum=1, maximum=2 ** 16))
        if self.router_rank is not None:
            put("router_rank", check_int(self.router_rank, "router_rank", minimum=1, maximum=2 ** 16))
        put("pool", bool(self.pool))

    @property
    def routes(self) -> bool:
        """Whether routing is on (``routing`` None: on in the scan scope only)."""
        return self.scope == "scan" if self.routing is None else self.routing

    def replace(self, **changes: Any) -> TilingConfig:
        """A copy with ``changes`` applied (:func:`dataclasses.replace`; checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` (JSON-serialisable), e.g. for a checkpoint's metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TilingConfig:
        """The configuration of :meth:`to_dict`'s output.

        Parameters
        ----------
        data : ``{field: value}``; a missing field takes its default.

        Returns
        -------
        A checked :class:`TilingConfig`.

        Raises
        ------
        ValueError
            ``data`` has a key that is not a field, or a value fails the checks of the class.
        TypeError
            A value has the wrong type (the checks of the class).
        """
        _refuse_unknown(cls, data)
        return cls(**data)





# ----------------------------------------------------------------------------- whole models
#: boundary signals of the hourglass (tiling.modules.boundary): the seeds' information density read
#: from an auxiliary next-byte head (entropy, surprisal, Fisher–Rao speed), the layer's linearised
#: density, H-Net's learned router, and two baselines (uniform pooling, SpaceByte's space-like bytes)
SIGNALS = ("entropy", "surprisal", "fisher_rao", "linear", "router", "uniform", "space")
#: the signals read from the auxiliary next-byte head (they need ``aux_weight > 0`` to be trained)
AUX_SIGNALS = ("entropy", "surprisal", "fisher_rao")


@dataclass(frozen=True)
class MambaConfig:
    """One Mamba layer: its shape and initialisation (mamba_ssm's ``Mamba`` arguments, HF ``MambaConfig``'s
    ``time_step_*``/``use_*bias``).

    Parameters
    ----------
    d_model : width ``≥ 1``.
    d_state : state size ``N ≥ 1``.
    d_conv : causal conv width ``≥ 1``.
    expand : ``d_inner = expand · d_model``, ``≥ 1``. The default 1 is the text models' (Mamba's own is 2,
        which :class:`~tiling.modules.TiledMamba` and ``TiledLM``'s keyword form keep).
    dt_rank : rank of Δ's projection, ``≥ 1``; None (or ``"auto"``, stored as None): ``⌈d_model / 16⌉``
        (Mamba's "auto").
    dt_min, dt_max : the range ``0 < dt_min ≤ dt_max`` of Δ's initial values (log-uniform).
    dt_init : ``"random"`` or ``"constant"`` initialisation of Δ's projection weight.
    dt_scale : scale ``> 0`` of that weight's initial range.
    dt_init_floor : floor ``> 0`` of Δ's initial values.
    conv_bias, bias : biases of the conv and of the in/out projections.

    Raises
    ------
    TypeError, ValueError
        A field is not of its type or not in its range (named).
    """

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 1
    dt_rank: int | None = None
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for name in ("d_model", "d_state", "d_conv", "expand"):
            put(name, check_int(getattr(self, name), name, minimum=1, maximum=2 ** 20))
        if self.dt_rank == "auto":
            put("dt_rank", None)
        if self.dt_rank is not None:
            # at most d_inner: Δ = softplus(W_up·W_down·x) has rank ≤ d_inner anyway, and a text checkpoint's
            # loader refuses a larger one (a model saved with it could not be read back)
            put("dt_rank", check_int(self.dt_rank, "dt_rank", minimum=1, maximum=self.d_model * self.expand))
        for name in ("dt_min", "dt_max", "dt_scale", "dt_init_floor"):
            check_positive(getattr(self, name), name)
            put(name, float(getattr(self, name)))
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min must be <= dt_max, got {self.dt_min} > {self.dt_max}")
        check_choice(self.dt_init, "dt_init", ["random", "constant"])
        for name in ("conv_bias", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def d_inner(self) -> int:
        """``expand · d_model``."""
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """The resolved ``dt_rank``."""
        return math.ceil(self.d_model / 16) if self.dt_rank is None else self.dt_rank

    def layer_kwargs(self) -> dict[str, Any]:
        """The arguments of :class:`~tiling.modules.TiledMamba` after ``d_model``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "d_model"}
        return {**out, "dt_rank": "auto" if self.dt_rank is None else self.dt_rank}


@dataclass(frozen=True)
class StageConfig:
    """A stack of ``n_layers`` Mamba layers of one shape (an hourglass stage; ``n_layers`` may be 0
    for the encoder or the decoder)."""

    n_layers: int
    mamba: MambaConfig

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_layers", check_int(self.n_layers, "n_layers", minimum=0, maximum=1024))
        if not isinstance(self.mamba, MambaConfig):
            raise TypeError(f"mamba must be a MambaConfig, got {type(self.mamba).__name__}")


@dataclass(frozen=True)
class BoundaryConfig:
    """Where the hourglass' segments start (:mod:`tiling.modules.boundary`).

    Parameters
    ----------
    signal : one of :data:`SIGNALS`.
    rule : ``"global"`` (a segment starts where the score exceeds the budget's threshold; BLT's
        global rule) or ``"monotonic"`` (where the score *rises* by more than the threshold,
        ``s_t − s_{t−1}``; BLT's monotonic rule).
    form : ``"byte"`` (a boundary per byte) or ``"tile"`` (the seeds' per-tile ``R_i`` from the
        tile's mean score, seed 001 §3.2.2, through :func:`tiling.policy.plan_tiles`).
    aux_weight : weight ``≥ 0`` of the auxiliary next-byte head's cross-entropy in the loss; the
        signals of :data:`AUX_SIGNALS` need it ``> 0``; 0 elsewhere removes the head.
    ratio_weight : weight ``≥ 0`` of H-Net's ratio loss (``signal="router"``).
    slack : byte form, causal: the controller's bound ``S ≥ 1`` (bytes) on the running surplus
        ``D_t = Σ_{j≤t} (c − b_j)``, so ``|mean b − c| ≤ S / L``.
    levels : running quantiles ``K ≥ 2`` of the score that set the threshold of any budget.
    momentum : EMA weight ``∈ (0, 1]`` of a training batch in those quantiles.
    router_rank : ``signal="router"``: rank of the router's maps (None: ``min(32, d_outer)``).
    """

    signal: str = "entropy"
    rule: str = "global"
    form: str = "byte"
    aux_weight: float = 0.1
    ratio_weight: float = 0.03
    slack: float = 32.0
    levels: int = 64
    momentum: float = 0.05
    router_rank: int | None = None

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        check_choice(self.signal, "signal", list(SIGNALS))
        check_choice(self.rule, "rule", ["global", "monotonic"])
        check_choice(self.form, "form", ["byte", "tile"])
        check_positive(self.aux_weight, "aux_weight", strict=False)
        put("aux_weight", float(self.aux_weight))
        if self.signal in AUX_SIGNALS and self.aux_weight <= 0:
            raise ValueError(f"signal={self.signal!r} reads the auxiliary next-byte head: aux_weight must be > 0, "
                             f"got {self.aux_weight}")
        check_positive(self.ratio_weight, "ratio_weight", strict=False)
        put("ratio_weight", float(self.ratio_weight))
        check_in_range(self.slack, "slack", 1.0, 1e9)
        put("slack", float(self.slack))
        put("levels", check_int(self.levels, "levels", minimum=2, maximum=4096))
        check_in_range(self.momentum, "momentum", 0.0, 1.0, low_open=True)
        put("momentum", float(self.momentum))
        if self.router_rank is not None:
            put("router_rank", check_int(self.router_rank, "router_rank", minimum=1))

    @property
    def uses_aux(self) -> bool:
        """Whether the model has the auxiliary next-byte head."""
        return self.aux_weight > 0


def _stage_from(data: Any, name: str) -> StageConfig:
    if isinstance(data, StageConfig):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("mamba"), dict):
        raise TypeError(f"{name} must be a StageConfig or a dict {{'n_layers': int, 'mamba': {{...}}}}, "
                        f"got {type(data).__name__}")
    _refuse_unknown(StageConfig, data, f"{name}: ")
    _refuse_unknown(MambaConfig, data["mamba"], f"{name}.mamba: ")
    return StageConfig(n_layers=data.get("n_layers"), mamba=MambaConfig(**data["mamba"]))


@dataclass(frozen=True)
class HourglassConfig:
    """A byte-level hourglass LM (:class:`~tiling.modules.hourglass.HourglassLM`), nested and frozen.

    Parameters
    ----------
    encoder, main, decoder : the stages. The encoder and decoder run at full resolution on every
        byte (width ``d_outer = encoder.mamba.d_model``, which the decoder must share); the main
        network runs on the compact sequence at width ``d_main = main.mamba.d_model ≥ d_outer``.
    tiling : the main network's :class:`TilingConfig`: ``budget`` (the default budget ``c``),
        ``r_min``, ``causal``, and for ``boundary.form="tile"`` the tile policy's options
        (``tile_size``, ``policy``, ``slack``, ``calibration``...).
    boundary : the :class:`BoundaryConfig`.
    dechunk : ``"ema"`` (H-Net's smoothing of the compact outputs with the boundary probability,
        and its confidence straight-through) or ``"hold"`` (each byte receives its segment's output).
    budget_range : ``(low, high) ⊂ (0, 1]``: training samples the budget per step from it (elastic
        level of detail); None: trained at ``tiling.budget`` only.
    budget_skew : ``γ ∈ [1, 16]``, the elastic draw ``c = low + (high − low)·u^γ`` with ``u ~ U(0, 1)``,
        density ``∝ ((c − low)/(high − low))^(1/γ − 1)``: 1 is uniform, γ > 1 spends more steps at the
        cheap end (γ = 3: half the steps below ``low + (high − low)/8``). Checkpoints without it: 1.
    budget_conditioning : tell the stages the budget they run at: learned vectors
        ``e(c) = (c − 1)·u + (log c)·v`` (zero at initialisation, and zero at ``c = 1`` always) added to the
        main network's input at every segment and to the decoder's input at every byte. For an elastic
        checkpoint, whose compact sequence's statistics change with the budget (slimmable networks'
        switchable norms, in one continuous form). Checkpoints without it: False.
    residual_init : the encoder-to-decoder residual map ``W_res`` at initialisation: ``"zero"`` (H-Net's:
        the decoder starts from the main network's output alone) or ``"identity"`` (the Hourglass
        transformer's skip connection, Nawrot et al. 2022: the decoder starts from the encoder's output
        plus the main network's, so each byte's own information reaches the decoder from the first step).
        Checkpoints without it: ``"zero"``.
    vocab_size : 256 for bytes.

    Raises
    ------
    TypeError, ValueError
        A nested config of the wrong type, ``d_main < d_outer``, decoder width ≠ encoder width, a
        budget range outside (0, 1] or reversed, a main network of 0 layers.
    """

    encoder: StageConfig
    main: StageConfig
    decoder: StageConfig
    tiling: TilingConfig = TilingConfig(budget=0.25, tile_size=16)
    boundary: BoundaryConfig = BoundaryConfig()
    dechunk: str = "ema"
    budget_range: tuple[float, float] | None = None
    budget_skew: float = 1.0
    budget_conditioning: bool = False
    residual_init: str = "zero"
    vocab_size: int = 256

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for name in ("encoder", "main", "decoder"):
            put(name, _stage_from(getattr(self, name), name))
        if isinstance(self.tiling, dict):
            put("tiling", TilingConfig.from_dict(self.tiling))
        if isinstance(self.boundary, dict):
            _refuse_unknown(BoundaryConfig, self.boundary, "boundary: ")
            put("boundary", BoundaryConfig(**self.boundary))
        if not isinstance(self.tiling, TilingConfig):
            raise TypeError(f"tiling must be a TilingConfig, got {type(self.tiling).__name__}")
        if not isinstance(self.boundary, BoundaryConfig):
            raise TypeError(f"boundary must be a BoundaryConfig, got {type(self.boundary).__name__}")
        if self.tiling.scope != "block" or self.tiling.boundaries != "tile":
            raise ValueError("the hourglass' tiling must have scope='block' and boundaries='tile' (the boundary "
                             "signal is chosen by boundary.signal)")
        if self.main.n_layers < 1:
            raise ValueError(f"main.n_layers must be >= 1, got {self.main.n_layers}")
        if self.decoder.mamba.d_model != self.encoder.mamba.d_model:
            raise ValueError(f"decoder.mamba.d_model must equal the encoder's (d_outer = {self.encoder.mamba.d_model}), "
                             f"got {self.decoder.mamba.d_model}")
        if self.main.mamba.d_model < self.encoder.mamba.d_model:
            raise ValueError(f"main.mamba.d_model (d_main) must be >= d_outer = {self.encoder.mamba.d_model}, got "
                             f"{self.main.mamba.d_model}")
        check_choice(self.dechunk, "dechunk", ["ema", "hold"])
        if self.budget_range is not None:
            try:
                lo, hi = (float(v) for v in self.budget_range)
            except (TypeError, ValueError):
                raise TypeError(f"budget_range must be a pair (low, high) of numbers, got {self.budget_range!r}") from None
            if not (0.0 < lo <= hi <= 1.0):
                raise ValueError(f"budget_range must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
            if self.tiling.r_min > lo:
                raise ValueError(f"budget_range's low end {lo} is below tiling.r_min = {self.tiling.r_min}")
            put("budget_range", (lo, hi))
        check_in_range(self.budget_skew, "budget_skew", 1.0, 16.0)
        put("budget_skew", float(self.budget_skew))
        if not isinstance(self.budget_conditioning, bool):
            raise TypeError(f"budget_conditioning must be a bool, got {type(self.budget_conditioning).__name__}")
        check_choice(self.residual_init, "residual_init", ["zero", "identity"])
        put("vocab_size", check_int(self.vocab_size, "vocab_size", minimum=2, maximum=2 ** 24))

    @property
    def d_outer(self) -> int:
        """Width of the encoder and decoder."""
        return self.encoder.mamba.d_model

    @property
    def d_main(self) -> int:
        """Width of the main network."""
        return self.main.mamba.d_model

    def replace(self, **changes: Any) -> HourglassConfig:
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-serialisable), the form checkpoints store."""
        out = dataclasses.asdict(self)
        out["budget_range"] = None if self.budget_range is None else list(self.budget_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HourglassConfig:
        """The configuration of :meth:`to_dict`'s output.

        Raises
        ------
        TypeError, ValueError
            ``data`` is not a dict, has an unknown or a missing key, or a value fails the checks.
        """
        if not isinstance(data, dict):
            raise TypeError(f"an hourglass configuration must be a dict, got {type(data).__name__}")
        _refuse_unknown(cls, data)
        missing = sorted({"encoder", "main", "decoder"} - set(data))
        if missing:
            raise ValueError(f"an hourglass configuration needs the stages {missing}")
        data = dict(data)
        if data.get("budget_range") is not None:
            data["budget_range"] = tuple(data["budget_range"])
        return cls(**data)


def hourglass_config(*, d_outer: int = 128, d_main: int = 512, encoder_layers: int = 1, main_layers: int = 4,
                     decoder_layers: int = 1, d_state: int = 16, expand: int = 1, budget: float = 0.25,
                     tile_size: int = 16, r_min: float = 0.0625, causal: bool = True, signal: str = "entropy",
                     dechunk: str = "ema", budget_range: tuple[float, float] | None = None,
                     budget_skew: float = 1.0, budget_conditioning: bool = False, residual_init: str = "zero",
                     **boundary: Any) -> HourglassConfig:
    """A :class:`HourglassConfig` from flat options (the CLI's and the sweep's)."""
    outer = MambaConfig(d_model=d_outer, d_state=d_state, expand=expand)
    if boundary.get("aux_weight") is None:
        boundary["aux_weight"] = 0.1 if signal in AUX_SIGNALS else 0.0
    return HourglassConfig(
        encoder=StageConfig(encoder_layers, outer),
        main=StageConfig(main_layers, MambaConfig(d_model=d_main, d_state=d_state, expand=expand)),
        decoder=StageConfig(decoder_layers, outer),
        tiling=TilingConfig(budget=budget, tile_size=tile_size, r_min=min(r_min, budget),
                            causal=causal, calibration="running"),
        boundary=BoundaryConfig(signal=signal, **boundary), dechunk=dechunk, budget_range=budget_range,
        budget_skew=budget_skew, budget_conditioning=budget_conditioning, residual_init=residual_init)


#: the keys of the flat configuration ``TiledLM`` stored before the nested one (read by :meth:`TiledLMConfig.from_dict`)
_FLAT_KEYS = frozenset({"vocab_size", "d_model", "n_layers", "shared_density", "full_resolution_layers",
                        "layer_kwargs"})


def _nested(cls: type, data: Any, name: str) -> Any:
    """``data`` as a ``cls`` (a dict of its fields, or one already); errors name the field ``name``."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be a {cls.__name__} or a dict of its fields, got {type(data).__name__}")
    _refuse_unknown(cls, data, f"{name}: ")
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None


@dataclass(frozen=True)
class TiledLMConfig:
    """A language model of tiled Mamba layers (:class:`~tiling.train.TiledLM`), nested and frozen.

    Parameters
    ----------
    mamba : every layer's :class:`MambaConfig` (the model's width is ``mamba.d_model``).
    n_layers : ``≥ 1``.
    tiling : the :class:`TilingConfig` of the tiled layers (those not in ``full_resolution_layers``).
    vocab_size : ``≥ 2`` (256 for bytes).
    shared_density : every layer's policy reads the first layer's per-token density (``TiledLM``).
    full_resolution_layers : layers that always run at full resolution (plain Mamba); negative indices
        count from the end, as in Python. Stored resolved: sorted, distinct, in ``[0, n_layers)``.

    Raises
    ------
    TypeError, ValueError
        A nested config of the wrong type, a field out of range or of the wrong type, a layer index
        that does not exist (the message names the field).

    Examples
    --------
    >>> cfg = TiledLMConfig(MambaConfig(d_model=64), n_layers=4, tiling=TilingConfig(budget=0.5, tile_size=16),
    ...                     full_resolution_layers=(0, -1))
    >>> cfg.full_resolution_layers
    (0, 3)
    >>> TiledLMConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    mamba: MambaConfig
    n_layers: int = 2
    tiling: TilingConfig = TilingConfig()
    vocab_size: int = 256
    shared_density: bool = False
    full_resolution_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        put("mamba", _nested(MambaConfig, self.mamba, "mamba"))
        put("tiling", _nested(TilingConfig, self.tiling, "tiling"))
        n = check_int(self.n_layers, "n_layers", minimum=1, maximum=2 ** 16)
        put("n_layers", n)
        put("vocab_size", check_int(self.vocab_size, "vocab_size", minimum=2, maximum=2 ** 24))
        if not isinstance(self.shared_density, bool):
            raise TypeError(f"shared_density must be a bool, got {self.shared_density!r}")
        layers = self.full_resolution_layers
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (tuple, list)):
            raise TypeError(f"full_resolution_layers must be a tuple of layer indices, got {type(layers).__name__}")
        for k in layers:
            if isinstance(k, bool) or not isinstance(k, int):
                raise TypeError(f"full_resolution_layers must hold ints, got {k!r}")
            if not -n <= k < n:
                raise ValueError(f"full_resolution_layers: layer {k} does not exist in a model of {n} layers")
        put("full_resolution_layers", tuple(sorted({k % n for k in layers})))

    @property
    def d_model(self) -> int:
        """The model's width, ``mamba.d_model``."""
        return self.mamba.d_model

    def replace(self, **changes: Any) -> TiledLMConfig:
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-serialisable), the form checkpoints store."""
        out = dataclasses.asdict(self)
        out["full_resolution_layers"] = list(self.full_resolution_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TiledLMConfig:
        """The configuration of :meth:`to_dict`'s output, or of the flat form stored before it.

        Parameters
        ----------
        data : the nested form ``{"mamba": {...}, "tiling": {...}, "n_layers", "vocab_size",
            "shared_density", "full_resolution_layers"}``, or the flat form earlier checkpoints store,
            ``{"vocab_size", "d_model", "n_layers", "shared_density", "full_resolution_layers",
            "layer_kwargs": {Mamba's arguments and the TilingConfig fields, flat}}`` (told apart by
            ``layer_kwargs``). A missing field takes its default, except ``mamba`` (``d_model``);
            a flat form without ``expand`` has Mamba's 2, which its model was built with.

        Returns
        -------
        A checked :class:`TiledLMConfig`.

        Raises
        ------
        TypeError, ValueError
            ``data`` or a nested part is not a dict, a key is unknown, a field fails its check, or
            the flat form's ``layer_kwargs`` chooses the device or dtype (the message names the field).
        """
        if not isinstance(data, dict):
            raise TypeError(f"a TiledLM configuration must be a dict, got {type(data).__name__}")
        if "layer_kwargs" in data:
            data = _unflatten(data)
        _refuse_unknown(cls, data)
        if "mamba" not in data:
            raise ValueError("a TiledLM configuration needs its mamba (at least {'d_model': ...})")
        return cls(**data)


def _unflatten(data: dict[str, Any]) -> dict[str, Any]:
    """The nested fields of the flat form that ``TiledLM`` stored in checkpoints before :class:`TiledLMConfig`."""
    unknown = sorted(set(data) - _FLAT_KEYS)
    if unknown:
        raise ValueError(f"unknown fields {unknown} in a flat TiledLM configuration; known: {sorted(_FLAT_KEYS)}")
    layer = data["layer_kwargs"]
    if not isinstance(layer, dict):
        raise TypeError(f"layer_kwargs is a {type(layer).__name__}, expected an object")
    if "device" in layer or "dtype" in layer:
        raise ValueError("layer_kwargs may not choose the device or dtype")
    mamba_names = {f.name for f in dataclasses.fields(MambaConfig)} - {"d_model"}
    tiling_names = {f.name for f in dataclasses.fields(TilingConfig)}
    unknown = sorted(set(layer) - mamba_names - tiling_names - {"validate"})  # validate: a check, not the model
    if unknown:
        raise ValueError(f"layer_kwargs: unknown layer arguments {unknown}")
    out = {k: v for k, v in data.items() if k not in ("d_model", "layer_kwargs")}
    out["mamba"] = {"d_model": data.get("d_model"), "expand": 2, **{k: v for k, v in layer.items() if k in mamba_names}}
    out["tiling"] = {k: v for k, v in layer.items() if k in tiling_names}
    return out


__all__ = ["TilingConfig", "MambaConfig", "StageConfig", "BoundaryConfig", "HourglassConfig", "TiledLMConfig",
           "hourglass_config", "SIGNALS", "AUX_SIGNALS"]
