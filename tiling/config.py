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


@dataclass(frozen=True)
class TilingConfig:
    """Options of the tiling: tiles, the resolution policy, its calibration and the layer's scope.

    Every field is checked once, in ``__post_init__`` (``ValueError``/``TypeError`` naming the
    field); the options that depend on the model (``s_max ≤ d_state``, ``router_rank ≤ d_model``)
    are checked by the layer that knows it.

    Parameters
    ----------
    tile_size : tile length ``T ≥ 1``; tile ``i`` covers tokens ``[i·T, (i+1)·T)`` (seed 001 §3.2.1,
        ``T_i = (M_i, S_i, R_i)``; seed 000 §3.2.1).
    budget : target mean resolution ``c ∈ (0, 1]``, the compute budget of ``R_i = f(ρ_i, d_i, c)``
        (seed 001 §3.2.2); 1 is full resolution (plain Mamba).
    r_min : smallest resolution ``R_min ∈ (0, budget]`` (seed 000 §3.2.1, ``R ∈ [R_min, 1]``).
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
        step 1, :func:`~tiling.modules.router.linear_density`).
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
        put("tile_size", check_int(self.tile_size, "tile_size", minimum=1))
        _check_policy_options(budget=self.budget, r_min=self.r_min, mode=self.policy, causal=self.causal,
                              distance_scale=self.distance_scale, mode_name="policy")
        put("budget", float(self.budget))
        put("r_min", float(self.r_min))
        put("causal", bool(self.causal))
        check_positive(self.exponent, "exponent")
        put("exponent", float(self.exponent))
        put("lookback", check_int(self.lookback, "lookback", minimum=1))
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
        put("calibration_levels", check_int(self.calibration_levels, "calibration_levels", minimum=2))
        if self.state_k is not None:
            check_positive(self.state_k, "state_k", strict=False)
            put("state_k", float(self.state_k))
        if self.s_max is not None:
            put("s_max", check_int(self.s_max, "s_max", minimum=1))
        put("s_min", check_int(self.s_min, "s_min", minimum=1, maximum=self.s_max))
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
        put("signal_channels", check_int(self.signal_channels, "signal_channels", minimum=1))
        if self.router_rank is not None:
            put("router_rank", check_int(self.router_rank, "router_rank", minimum=1))
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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TilingConfig fields {unknown}; known: {sorted(names)}")
        return cls(**data)


__all__ = ["TilingConfig"]
