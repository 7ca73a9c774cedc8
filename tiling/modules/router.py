"""Boundary routers and the policy's running calibration.

Block scope runs the Mamba mixer on one token per segment, so the policy's signal cannot come
from the mixer itself (seed 001 §3.4 step 1's density needs the mixer on every token, the very
cost the block scope removes). Two cheap ways to place segment starts are offered.

Linearised density (:func:`~tiling.modules.signal.linear_density`, the per-tile policy's default)
    The mixer's closed-form density on a linear sketch of the mixer (:mod:`tiling.modules.signal`).

Learned boundaries (:class:`TokenRouter`, H-Net's routing module, Hwang, Wang, Gu 2025)
    ``p_t = ½ (1 − cos(W_q x_t, W_k x_{t−1}))``, ``p_0 = 1``, low-rank ``W_q, W_k`` (rank ``r``,
    both initialised to the same random orthonormal rows, so that ``p_t`` starts as the angle
    between consecutive sketched inputs); a segment starts where ``p_t ≥ ½`` (causal: ``p_t``
    reads ``x_t`` and ``x_{t−1}`` only) or, in the non-causal mode, at the ``⌈c·L⌉`` largest ``p_t``
    of each row (the budget met exactly). The ratio loss that steers the causal router to the
    budget ``c`` (H-Net eq. 10, target ratio ``N = 1/c``)::

        L_ratio = N/(N − 1) · ((N − 1)·F·G + (1 − F)(1 − G)),   F = mean_t b_t,  G = mean_t p_t

    is minimal at ``F = G = c``. Cost per token ``2 r d_model + 3 r``.

Running calibration (:class:`RunningCalibration`, the stateful part of the resolution policy)
    The causal adaptive policy with ``calibration="running"`` solves
    ``mean_k clip(s·r_k, r_min, 1) = c`` over a population reference ``r`` instead of the
    sequence's own history (module docstring of :mod:`tiling.policy`; a departure from seed 001
    §3.2.2, which leaves the calibration of ``R_i = f(ρ_i, d_i, c)`` open). The reference is
    ``r_k = exp(Q_k)``, ``Q_k`` the exponential moving average over training batches of the
    ``(k + ½)/K`` quantiles of ``log p`` (``p`` the predictor importances ``q`` of seed 001 §3.2.2),
    averaged over the ranks of a ``torch.distributed`` job.

Tile boundaries (:class:`TileRouter`, the policy as a module beside the layer)
    The tile-boundary counterpart of :class:`TokenRouter`, laid out as H-Net's routing module (a
    module that decides where segments start, with a frozen decoding state): it owns the layer's
    policy ``R_i = f(ρ_i, d_i, c)`` (seed 001 §3.2.2) on the tile densities of the signal (seed 001
    §3.4 step 1), its :class:`RunningCalibration`, and, in decoding, the policy's history
    (:class:`TileRouterState`). It has no parameters: the signal is the layer's.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infogeo.checks import check_in_range, check_int, check_same_device, check_tensor
from tiling.config import TilingConfig
from tiling.modules.chunk import segment_boundaries
from tiling.ops.scan import policy_kernels
from tiling.policy import block_counts, causal_step, dithered_counts, plan_densities, plan_tiles, tile_importance, \
    tile_mean
from tiling.tile import TilePlan

Tensor = torch.Tensor
_NO_REFERENCE = torch.empty(0, dtype=torch.float64)  # causal_tile's reference where the history calibrates


def ratio_loss(boundary: Tensor, prob: Tensor, budget: float, *, validate: bool = True) -> Tensor:
    """H-Net's ratio loss (eq. 10) for a target compression ``N = 1/budget``; 0 at ``budget = 1``.

    Parameters
    ----------
    boundary : (batch, L) bool.
    prob : (batch, L) in [0, 1].
    budget : in (0, 1].
    validate : check ``prob``'s values (``TiledMamba``'s router makes them in range and passes False).

    Returns
    -------
    0-d tensor of ``prob``'s dtype.

    Raises
    ------
    TypeError
        ``boundary`` is not a bool tensor, ``prob`` not a floating tensor, or ``budget`` not a number.
    ValueError
        ``prob`` does not have ``boundary``'s shape, the tensors are empty or on different devices,
        (``validate``) ``prob`` is not finite or outside [0, 1], or ``budget`` is outside (0, 1].
    """
    check_tensor(boundary, "boundary", ndim=2, floating=False, finite=False)
    if boundary.dtype != torch.bool:
        raise TypeError(f"boundary must be a bool tensor, got {boundary.dtype}")
    check_tensor(prob, "prob", shape=tuple(boundary.shape), finite=validate)
    if prob.numel() == 0:
        raise ValueError(f"boundary and prob must be non-empty, got shape {tuple(prob.shape)}")
    if validate:
        check_in_range(prob, "prob", 0.0, 1.0)
    check_same_device(boundary=boundary, prob=prob)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"budget must be a float, got {type(budget).__name__}")
    if not 0.0 < float(budget) <= 1.0:  # a Python comparison (NaN fails it): this runs on every forward
        raise ValueError(f"budget must lie in (0, 1], got {budget}")
    if budget >= 1.0:
        return prob.sum() * 0.0
    N = 1.0 / budget
    F_ = boundary.to(prob.dtype).mean()
    G = prob.mean()
    return N / (N - 1.0) * ((N - 1.0) * F_ * G + (1.0 - F_) * (1.0 - G))


class RunningCalibration(nn.Module):
    """Running quantiles of the policy's log predictor importances (module docstring).

    Parameters
    ----------
    levels : number ``K ≥ 2`` of quantiles, at levels ``(k + ½)/K``.
    momentum : EMA weight ``∈ (0, 1]`` of a batch: ``Q ← (1 − momentum) Q + momentum Q_batch``.
    device : of the buffers.

    Attributes
    ----------
    quantiles : buffer (K,) float64, the running ``Q_k`` (the buffers travel with the layer's
        checkpoint).
    updates : buffer () int64, the number of batches folded in (0: no reference yet, the policy
        falls back to the sequence's history).

    Raises
    ------
    TypeError, ValueError
        ``levels`` is not an int ≥ 2 (named ``calibration_levels``) or ``momentum`` is outside (0, 1]
        (named ``calibration_momentum``).
    """

    def __init__(self, levels: int, momentum: float, *, device=None) -> None:
        super().__init__()
        levels = check_int(levels, "calibration_levels", minimum=2)
        check_in_range(momentum, "calibration_momentum", 0.0, 1.0, low_open=True)
        self.momentum = float(momentum)
        self.register_buffer("quantiles", torch.zeros(levels, dtype=torch.float64, device=device))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))

    def extra_repr(self) -> str:
        return f"levels={self.quantiles.numel()}, momentum={self.momentum}"

    def reference(self) -> Tensor | None:
        """The reference importances ``exp(Q)`` (float64), or None before the first update."""
        if int(self.updates) == 0:
            return None
        return torch.exp(self.quantiles.to(torch.float64))

    @torch.no_grad()
    def update(self, importance: Tensor) -> None:
        """Fold one batch of positive predictor importances into the running quantiles.

        Parameters
        ----------
        importance : positive predictor importances, any shape.

        Notes
        -----
        Under an initialised ``torch.distributed`` every rank folds in the mean of all ranks'
        batch quantiles, so the buffers stay identical (as SyncBatchNorm's statistics); the call
        is a collective, so the ranks' training forwards must run in lock-step.
        """
        buf = self.quantiles
        levels = (torch.arange(buf.numel(), dtype=torch.float64, device=importance.device) + 0.5) / buf.numel()
        batch_q = torch.quantile(torch.log(importance.flatten().to(torch.float64)), levels).to(buf)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_q)
            batch_q /= torch.distributed.get_world_size()
        if int(self.updates) == 0:
            buf.copy_(batch_q)
        else:
            buf.lerp_(batch_q, self.momentum)
        self.updates += 1


@dataclass(frozen=True)
class RouterState:
    """Decoding state of :class:`TokenRouter`.

    Attributes
    ----------
    key : (batch, r) the key of the previous token, or None before the first token.
    """

    key: Tensor | None


class TokenRouter(nn.Module):
    """Per-token boundary probabilities ``p_t`` and boundaries (H-Net's cosine routing module).

    Parameters
    ----------
    d_model : model width ``≥ 1``.
    rank : rank ``r`` of the query and key maps, ``1 ≤ r ≤ d_model``; None: ``min(32, d_model)``.
    device, dtype : of the parameters.

    Raises
    ------
    TypeError, ValueError
        ``d_model`` or ``rank`` is not an int in its range.
    """

    def __init__(self, d_model: int, rank: int | None = None, *, device=None, dtype=None) -> None:
        super().__init__()
        self.d_model = check_int(d_model, "d_model", minimum=1)
        self.rank = min(32, self.d_model) if rank is None else check_int(rank, "rank", minimum=1, maximum=d_model)
        self.q_proj = nn.Linear(d_model, self.rank, bias=False, device=device, dtype=dtype)
        self.k_proj = nn.Linear(d_model, self.rank, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            w = torch.empty(self.rank, d_model, device=device, dtype=torch.float32)
            nn.init.orthogonal_(w)
            self.q_proj.weight.copy_(w)
            self.k_proj.weight.copy_(w)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, rank={self.rank}"

    def forward(self, x: Tensor, *, validate: bool = True) -> Tensor:
        """Boundary probabilities of a sequence.

        Parameters
        ----------
        x : (batch, L, d_model), L ≥ 1, of the router's dtype and device.
        validate : scan ``x`` for NaN/Inf (``TiledMamba`` checks its own input and passes False).

        Returns
        -------
        ``p`` (batch, L) in [0, 1], ``p_0 = 1``.

        Raises
        ------
        TypeError
            ``x`` is not a floating tensor or has another dtype than the router's parameters.
        ValueError
            ``x`` is not (batch, L ≥ 1, d_model), lives on another device, or (``validate``) holds NaN/Inf.
        """
        check_tensor(x, "x", ndim=3, finite=validate)
        if x.shape[-1] != self.d_model or x.shape[1] < 1:
            raise ValueError(f"x must have shape (batch, L >= 1, d_model={self.d_model}), got {tuple(x.shape)}")
        if x.dtype != self.q_proj.weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the router's parameters are {self.q_proj.weight.dtype}")
        check_same_device(x=x, weights=self.q_proj.weight)
        q = F.normalize(self.q_proj(x[:, 1:]), dim=-1, eps=1e-6)
        k = F.normalize(self.k_proj(x[:, :-1]), dim=-1, eps=1e-6)
        p = (0.5 * (1.0 - (q * k).sum(-1))).clamp(0.0, 1.0)
        return torch.cat([p.new_ones(x.shape[0], 1), p], dim=1)

    @staticmethod
    def boundaries(p: Tensor, budget: float, causal: bool) -> Tensor:
        """Boundary mask: ``p_t ≥ ½`` (causal), or the ``⌈budget·L⌉`` largest ``p_t`` per row.

        Parameters
        ----------
        p : (batch, L) boundary probabilities.
        budget : in (0, 1]; at 1 every token is a boundary.
        causal : threshold at ½ instead of taking the largest.

        Returns
        -------
        (batch, L) bool, True in column 0.
        """
        if budget >= 1.0:
            return torch.ones_like(p, dtype=torch.bool)
        if causal:
            b = p >= 0.5
        else:
            k = max(1, math.ceil(budget * p.shape[1] - 1e-9))
            top = p.detach().topk(k, dim=1).indices
            b = torch.zeros_like(p, dtype=torch.bool).scatter_(1, top, True)
        b[:, 0] = True
        return b

    def step(self, x: Tensor, state: RouterState) -> tuple[Tensor, RouterState]:
        """One decoding step.

        Parameters
        ----------
        x : (batch, d_model) one token.
        state : the :class:`RouterState`.

        Returns
        -------
        ``(p, state)``: ``p_t`` (batch,) and the new state.
        """
        key = F.normalize(self.k_proj(x), dim=-1, eps=1e-6)
        if state.key is None:
            p = x.new_ones(x.shape[0])
        else:
            q = F.normalize(self.q_proj(x), dim=-1, eps=1e-6)
            p = (0.5 * (1.0 - (q * state.key).sum(-1))).clamp(0.0, 1.0)
        return p, RouterState(key=key)


@dataclass(frozen=True)
class TileRouterState:
    """Decoding state of :class:`TileRouter`: the causal policy's history.

    Attributes
    ----------
    position : tokens consumed so far.
    signal : (batch, ≤ T) float64, the per-token signal of the current tile (empty while the policy
        reads none: uniform policy, budget 1).
    tiles : the densities ``(ρ_i, predictor_i)``, each (batch, tiles done) float64, of the finished
        tiles (:func:`~tiling.policy.plan_densities`).
    carry : (batch,) float64 on the CPU, the rounding error carried to the next tile
        (:func:`~tiling.policy.dithered_counts`).
    boundary : (batch, T) bool, the segment starts of the current tile; None before the first tile
        is planned (and at budget 1, where every token starts a segment).
    surplus : (batch,) float64 on the CPU, the budget controller's surplus after the planned tiles
        (:func:`~tiling.policy.causal_step`); None before the first tile.
    starts : the current tile's starts on the host, one entry per offset: 0 (no row starts a
        segment there), 1 (some rows), 2 (every row), so that a step knows without reading the
        device whether the mixer runs.
    """

    position: int
    signal: Tensor
    tiles: tuple[Tensor, Tensor]
    carry: Tensor
    boundary: Tensor | None = None
    surplus: Tensor | None = None
    starts: tuple[int, ...] | None = None


class TileRouter(nn.Module):
    """Segments per tile from a per-token signal: the layer's resolution policy and its state.

    The tile-boundary counterpart of :class:`TokenRouter`, laid out as H-Net's routing module
    (Hwang, Wang, Gu 2025): a module beside the mixer that decides where segments start, with a
    frozen decoding state (:class:`TileRouterState`). It has no parameters.

    Whole sequence (:meth:`forward`, :meth:`plan`): :func:`~tiling.policy.plan_tiles`, i.e. tile
    densities ``ρ_i`` (seed 001 §3.4 step 1), ``R_i = f(ρ_i, d_i, c)`` (seed 001 §3.2.2), state
    dimensions (seed 001 §3.4 step 3) and segments, with the running reference when
    ``calibration="running"``; :meth:`forward` then folds the batch into the calibration in training
    mode (after the plan, so that a batch never calibrates itself).

    Decoding (:meth:`allocate`, :meth:`step`; block scope, causal): at the first token of tile ``i``
    the causal policy sets ``R_i`` from the densities of the tiles before it, and the tile's
    ``m_i = clamp(⌊R_i T + e_{i−1} + ½⌋, 1, T)`` segments start at the offsets ``⌊j T/m_i⌋``
    (:func:`~tiling.policy.dithered_counts`, :func:`~tiling.modules.chunk.segment_boundaries`);
    each token's signal joins its tile's, folded into the history at the tile's end. The segment
    starts are those of :meth:`forward`'s plan on the same signal (tested), since both read tiles
    ``< i`` only.

    Parameters
    ----------
    tiling : the layer's :class:`~tiling.config.TilingConfig`, ``boundaries="tile"`` (with
        ``s_max`` set when ``state_k`` is).
    device : of the calibration's buffers.

    Attributes
    ----------
    tiling : the configuration.
    calibrator : :class:`RunningCalibration` (``calibration="running"``, buffers
        ``calibrator.quantiles`` and ``calibrator.updates``) or None.

    Raises
    ------
    TypeError
        ``tiling`` is not a :class:`~tiling.config.TilingConfig`.
    ValueError
        ``tiling.boundaries`` is not ``"tile"`` (the token router reads the hidden states:
        :class:`TokenRouter`).
    """

    def __init__(self, tiling: TilingConfig, *, device=None) -> None:
        super().__init__()
        if not isinstance(tiling, TilingConfig):
            raise TypeError(f"tiling must be a tiling.config.TilingConfig, got {type(tiling).__name__}")
        if tiling.boundaries != "tile":
            raise ValueError(f"TileRouter needs boundaries='tile', got {tiling.boundaries!r} (see TokenRouter)")
        self.tiling = tiling
        self.calibrator = RunningCalibration(tiling.calibration_levels, tiling.calibration_momentum, device=device) \
            if tiling.calibration == "running" else None

    def extra_repr(self) -> str:
        t = self.tiling
        return (f"tile_size={t.tile_size}, budget={t.budget}, policy={t.policy!r}, causal={t.causal}, "
                f"calibration={t.calibration!r}, scope={t.scope!r}")

    def _config(self, budget: float | None) -> TilingConfig:
        """The configuration at a call's budget (a new budget is checked by :class:`TilingConfig`)."""
        return self.tiling if budget is None or budget == self.tiling.budget else self.tiling.replace(budget=budget)

    def reference(self) -> Tensor | None:
        """The running reference the policy reads (causal, ``calibration="running"``, after the first
        update), or None: the sequence's own history calibrates the policy."""
        return self.calibrator.reference() if self.calibrator is not None and self.tiling.causal else None

    def _reference_kept(self) -> Tensor | None:
        """:meth:`reference`, contiguous, kept while the running quantiles are the same tensors at the same versions
        (an update, a load or a move makes another): a decoding step reads it at every tile."""
        c = self.calibrator if self.tiling.causal else None
        if c is None:
            return None
        q, u = c.quantiles, c.updates
        if q.is_inference() or u.is_inference():  # no version counter to keep it by (made under inference_mode)
            ref = self.reference()
            return None if ref is None else ref.contiguous()
        kept = self.__dict__.get("_reference")
        if kept is None or kept[0] is not q or kept[1] is not u or kept[2] != (q._version, u._version):
            ref = self.reference()
            kept = (q, u, (q._version, u._version), None if ref is None else ref.contiguous())
            self.__dict__["_reference"] = kept
        return kept[3]

    def _full(self, budget: float) -> bool:
        """Budget 1 without a state-dimension policy: every tile at ``R = 1``, no policy to run."""
        return budget >= 1.0 and self.tiling.state_k is None

    def reads_signal(self, budget: float | None = None) -> bool:
        """Whether :meth:`step` reads the signal at ``budget`` (default the configuration's): not under
        the uniform policy (``R_i = c``), nor at budget 1 without a state-dimension policy."""
        return self.tiling.policy != "uniform" and not self._full(self.tiling.budget if budget is None else budget)

    def plan(self, density: Tensor, *, curvature: Tensor | None = None, budget: float | None = None) -> TilePlan:
        """The plan of a sequence, without touching the calibration.

        Parameters
        ----------
        density : (batch, L) non-negative per-token signal.
        curvature : (batch, L) per-token curvature, optional.
        budget : overrides the configuration's budget.

        Returns
        -------
        :func:`~tiling.policy.plan_tiles` of ``density`` at ``budget`` with :meth:`reference`.

        Raises
        ------
        TypeError, ValueError
            As :func:`~tiling.policy.plan_tiles`; ``budget`` refused by :class:`TilingConfig`.
        """
        with torch.no_grad():
            return plan_tiles(density, self._config(budget), curvature=curvature, reference=self.reference())

    def forward(self, density: Tensor, *, curvature: Tensor | None = None, budget: float | None = None) -> TilePlan:
        """The plan of a sequence (:meth:`plan`); in training mode the batch then joins the calibration.

        Parameters
        ----------
        density, curvature, budget : as for :meth:`plan`.

        Returns
        -------
        :class:`~tiling.tile.TilePlan`, made before the update.

        Notes
        -----
        The update (:meth:`RunningCalibration.update`, a collective under ``torch.distributed``)
        folds in the importances ``q_i`` of seed 001 §3.2.2 of the causal predictor's densities
        and the tiles' curvature; only a causal router with ``calibration="running"`` has one.
        """
        plan = self.plan(density, curvature=curvature, budget=budget)
        if self.training and self.calibrator is not None and self.tiling.causal:
            config = self._config(budget)
            with torch.no_grad():
                kappa = None if curvature is None else tile_mean(
                    curvature.detach().to(device=density.device, dtype=torch.float64), config.tile_size)
                predictor = plan_densities(density, config)[1]
                self.calibrator.update(tile_importance(predictor, exponent=config.exponent, curvature=kappa,
                                                       curvature_weight=config.curvature_weight))
        return plan

    def counts(self, density: Tensor, *, curvature: Tensor | None = None, budget: float | None = None,
               update: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """The block scope's plan of a sequence: what :meth:`forward` decides, without the checks and
        the :class:`~tiling.tile.TilePlan` (the layer's forward, which checks once at its boundary).

        Parameters
        ----------
        density : (batch, L) the signal, finite and non-negative.
        curvature : (batch, L), optional.
        budget : overrides the configuration's budget.
        update : fold the batch into the running calibration after the plan (training mode).

        Returns
        -------
        ``(R, m, rho_tile)``: float32 resolutions and int64 segment counts (batch, n_tiles) on the
        CPU (:func:`~tiling.policy.block_counts`), and the float64 tile densities.
        """
        config = self._config(budget)
        with torch.no_grad():
            R, m, rho_tile, pred, kappa = block_counts(density, config, curvature=curvature,
                                                       reference=self.reference())
            if update and self.calibrator is not None and self.tiling.causal:
                self.calibrator.update(tile_importance(pred, exponent=config.exponent, curvature=kappa,
                                                       curvature_weight=config.curvature_weight))
        return R, m, rho_tile

    def allocate(self, batch: int, *, device=None) -> TileRouterState:
        """The empty :class:`TileRouterState` of ``batch`` rows.

        Parameters
        ----------
        batch : rows, ≥ 1.
        device : of the signal and the boundaries (the carry stays on the CPU).

        Raises
        ------
        TypeError, ValueError
            ``batch`` is not an int ≥ 1.
        """
        batch = check_int(batch, "batch", minimum=1)
        empty = torch.zeros(batch, 0, dtype=torch.float64, device=device)
        return TileRouterState(position=0, signal=empty, tiles=(empty, empty),
                               carry=torch.zeros(batch, dtype=torch.float64))

    def step(self, signal_t: Tensor | None, state: TileRouterState, *, budget: float | None = None
             ) -> tuple[Tensor, TileRouterState]:
        """One decoding step.

        Parameters
        ----------
        signal_t : (batch,) the signal of the token; None where :meth:`reads_signal` is False.
        state : the :class:`TileRouterState` of :meth:`allocate`.
        budget : overrides the configuration's budget (read at each tile's first token).

        Returns
        -------
        ``(is_segment_start, state)``: (batch,) bool on the state's device, and the new state.

        Raises
        ------
        TypeError
            ``state`` is not a :class:`TileRouterState`, or ``signal_t`` not a floating tensor.
        ValueError
            The router is not causal or not of the block scope (the scan scope's last tile is
            divided by its own length, which a prefix does not know), or ``signal_t`` is missing,
            not (batch,), holds NaN/Inf or is negative.
        """
        if not isinstance(state, TileRouterState):
            raise TypeError(f"state must be a TileRouterState (TileRouter.allocate), got {type(state).__name__}")
        if not self.tiling.causal or self.tiling.scope != "block":
            raise ValueError("step() needs a causal block-scope router (causal=True, scope='block')")
        config = self._config(budget)
        if self.reads_signal(config.budget):
            batch = state.carry.shape[0]
            if signal_t is None:
                raise ValueError(f"signal_t is needed by the {config.policy!r} policy at budget {config.budget}")
            check_tensor(signal_t, "signal_t", shape=(batch,))  # a NaN would reach the policy's history
            if bool((signal_t < 0).any()):
                raise ValueError(f"signal_t must be a non-negative density, got min {float(signal_t.min()):.6g}")
        starts, new, _ = self.advance(signal_t, state, config)
        return torch.ones(state.carry.shape[0], dtype=torch.bool, device=state.signal.device) if starts is None \
            else starts, new

    def _tile_starts(self, m: Tensor, T: int, device) -> tuple[Tensor, tuple[int, ...]]:
        """A tile's segment starts (batch, T) on ``device`` for the counts ``m`` (batch, 1), and the host's
        summary per offset (0: no row starts a segment, 1: some rows, 2: every row); kept for the few
        count patterns a decoding meets (a row's count is one of ``1 … T``)."""
        key = (tuple(m.flatten().tolist()), T, str(device))
        cache = self.__dict__.setdefault("_starts_cache", {})
        if key not in cache:
            host = segment_boundaries(m, T, T, validate=False)
            summary = tuple(2 if all(col) else int(any(col)) for col in zip(*host.tolist()))
            if len(cache) >= 256:
                cache.pop(next(iter(cache)))
            cache[key] = (host.to(device), summary)
        return cache[key]

    def _uniform_tile(self, carry: Tensor, config: TilingConfig, device) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """The uniform policy's next tile, ``(carry, starts (batch, T), summary)`` (:meth:`_tile_starts`),
        kept per carried rounding errors, budget and tile size: at a fixed budget the errors cycle through
        a few values, and the tile is then a dictionary lookup instead of a dozen small tensor ops."""
        key = (tuple(carry.tolist()), config.budget, config.tile_size, device)
        cache = self.__dict__.setdefault("_uniform_cache", {})
        if key not in cache:
            R = torch.full((carry.shape[0], 1), config.budget)
            m, after = dithered_counts(R, config.tile_size, carry, validate=False)  # a new carry: never written
            if len(cache) >= 256:
                cache.pop(next(iter(cache)))
            cache[key] = (after, *self._tile_starts(m, config.tile_size, device))
        return cache[key]

    @staticmethod
    def planned(state: TileRouterState, config: TilingConfig, position: int) -> int | None:
        """The host's summary of the starts at token ``position`` where the uniform policy planned it
        with the tile of ``state``'s last token (``position`` inside that tile, not its first token),
        else None (:meth:`advance` decides). There a step changes nothing of the state but its
        position, so a caller may keep the state of an earlier token of the tile and call this."""
        off = position % config.tile_size
        if off and config.policy == "uniform" and state.starts is not None and state.position > position - off:
            return state.starts[off]
        return None

    def advance(self, signal_t: Tensor | None, state: TileRouterState, config: TilingConfig, *,
                host_only: bool = False) -> tuple[Tensor | None, TileRouterState, int]:
        """:meth:`step` on checked arguments at ``config`` (:meth:`_config` of the budget), and the
        host's summary of the starts: 0 (no row starts a segment), 1 (some rows), 2 (every row); the
        starts are None at full resolution (every token of every row), and with ``host_only`` (a
        caller that reads the summary only: the whole-model decoding step, where every row agrees).
        It is :meth:`decide` then :meth:`record`.

        At the first token of tile ``i`` the causal policy sets ``R_i`` from the earlier tiles in
        one call (:func:`~tiling.policy.causal_step` with the controller's surplus carried in the
        state: ``O(i)`` for the history calibration, ``O(1)`` with the running reference, not the
        whole history's plan again); the other tokens only join the tile's signal. A step at budget 1
        runs at full resolution whatever the tile's plan; a tile begun at budget 1 has none, and runs at
        full resolution to its end whatever the later steps' budget (the new budget plans the next tile).
        """
        starts, decided, kind = self.decide(state, config, host_only=host_only)
        return starts, self.record(signal_t, decided, config), kind

    def decide(self, state: TileRouterState, config: TilingConfig, *, host_only: bool = False
               ) -> tuple[Tensor | None, TileRouterState, int]:
        """The next token's starts and summary from the history alone (the first half of
        :meth:`advance`): at a tile's first token the returned state holds the tile's plan, at the same
        position. The token's own signal is not read, so a caller may compute it once the starts are
        known (the whole-model decoding step) and pass it to :meth:`record`."""
        T, off = config.tile_size, state.position % config.tile_size
        if self._full(config.budget) or (off and state.starts is None):  # full resolution (None: every row)
            return None, state, 2
        kind = self.planned(state, config, state.position)
        if kind is not None:  # inside a planned tile of the uniform policy
            return None if host_only else state.boundary[:, off], state, kind
        signal, tiles, carry, surplus = state.signal, state.tiles, state.carry, state.surplus
        device = state.signal.device
        if off:  # inside a tile the causal policy planned at its first token
            boundary, summary = state.boundary, state.starts
        elif config.policy == "uniform":  # the new tile at the budget: a function of the carried error only
            carry, boundary, summary = self._uniform_tile(carry, config, device)
        else:  # the new tile's resolution, from the tiles before it (causal policy)
            m, carry, surplus = self._causal_tile(tiles[1], carry, surplus, config)
            boundary, summary = self._tile_starts(m, T, device)
            signal = signal[:, :0]
        decided = TileRouterState(state.position, signal, tiles, carry, boundary, surplus, summary)
        return None if host_only else boundary[:, off], decided, summary[off]

    def _causal_tile(self, predictor: Tensor, carry: Tensor, surplus: Tensor | None, config: TilingConfig
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """The next tile's counts ``m`` (batch, 1), carry and surplus from the predictor's densities (batch, i) of
        the tiles before it: one call of the CPU kernel (``causal_tile``) where it is built and the history
        lies on the CPU, else the torch ops below, its reference (tested equal, bit for bit)."""
        ext = policy_kernels() if predictor.is_cpu else None
        reference = self._reference_kept() if ext is not None else None
        if ext is not None and (reference is None or reference.is_cpu):
            s0 = torch.zeros(carry.shape[0], dtype=torch.float64) if surplus is None else surplus
            q = tile_importance(predictor, exponent=config.exponent, validate=False)  # torch's power: its rounding
            return tuple(ext.causal_tile(q.contiguous(), _NO_REFERENCE if reference is None else reference,
                                         float(config.budget), float(config.r_min), config.policy == "adaptive",
                                         int(config.lookback), float(config.slack), s0, carry, config.tile_size))
        batch, i = carry.shape[0], predictor.shape[1]
        q = tile_importance(torch.cat([predictor, predictor.new_zeros(batch, 1)], 1), exponent=config.exponent,
                            curvature_weight=config.curvature_weight, validate=False)  # column i: never read
        R, surplus = causal_step(q, budget=config.budget, r_min=config.r_min, mode=config.policy,
                                 lookback=config.lookback, slack=config.slack, reference=self.reference(),
                                 first_tile=i, surplus=surplus)
        R = R.to(torch.float32)  # the plan's dtype (tiling.policy.tile_policy): the counts round it
        m, carry = dithered_counts(R, config.tile_size, carry, validate=False)
        return m, carry, surplus

    def record(self, signal_t: Tensor | None, state: TileRouterState, config: TilingConfig) -> TileRouterState:
        """The state after the token (the second half of :meth:`advance`, on :meth:`decide`'s state): the
        position moves on, and where the policy reads the signal in a planned tile, ``signal_t``
        (batch,) joins the tile's, which is folded into the history at the tile's last token."""
        signal, tiles = state.signal, state.tiles
        if self.reads_signal(config.budget) and state.starts is not None:
            if signal_t.dtype is not torch.float64:  # the whole-model step passes float64 already
                signal_t = signal_t.to(torch.float64)
            signal = torch.cat([signal, signal_t.unsqueeze(1)], dim=1)
            if state.position % config.tile_size == config.tile_size - 1:
                folded = plan_densities(signal, config, validate=False)
                tiles = tuple(torch.cat([h, d], 1) for h, d in zip(tiles, folded))
        return TileRouterState(state.position + 1, signal, tiles, state.carry, state.boundary, state.surplus,
                               state.starts)

    def record_many(self, signals: Sequence[Tensor] | Tensor, state: TileRouterState, config: TilingConfig
                    ) -> TileRouterState:
        """:meth:`record` of consecutive tokens' ``signals`` (each (batch,), or one (n, batch) tensor) in turn,
        with one concatenation where they lie in one tile (its last token at most the last of them): the
        whole-model decoding step keeps a tile's signals and records them at the tile's end, or when someone
        reads its state (``tiling.train.lm_state.settle``). The same state as the records one by one (tested)."""
        n, T = len(signals), config.tile_size
        if n <= 1 or state.position % T + n > T:  # one token, or a tile's end before the last: one by one
            for signal_t in signals:
                state = self.record(signal_t, state, config)
            return state
        signal, tiles = state.signal, state.tiles
        if self.reads_signal(config.budget) and state.starts is not None:
            block = signals.t() if isinstance(signals, Tensor) else torch.stack(list(signals), 1)  # (batch, n)
            signal = torch.cat([signal, block.to(torch.float64)], dim=1)
            if (state.position + n) % T == 0:  # the tile's last token: its signal folds into the history
                folded = plan_densities(signal, config, validate=False)
                tiles = tuple(torch.cat([h, d], 1) for h, d in zip(tiles, folded))
        return TileRouterState(state.position + n, signal, tiles, state.carry, state.boundary, state.surplus,
                               state.starts)


__all__ = ["RouterState", "RunningCalibration", "TileRouter", "TileRouterState", "TokenRouter", "ratio_loss"]
