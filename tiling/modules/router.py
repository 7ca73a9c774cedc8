"""Resolution signals, boundary routers and the policy's running calibration.

Block scope runs the Mamba mixer on one token per segment, so the policy's signal cannot come
from the mixer itself: the closed-form density ``ρ_t = (Σ_d Δ_{t,d}²)·‖B_t‖²`` (seed 001 §3.4
step 1, ``infogeo.density.ssm_density``) needs in_proj, conv and x_proj on every token, the very
cost the block scope removes. Two cheap signals are offered.

Linearised density (:func:`linear_density`, the per-tile policy's default)
    The same formula evaluated on a linear sketch of the mixer: drop the causal conv and the SiLU
    between ``in_proj`` and ``x_proj``, so that ``B_t ≈ W_B W_x^in x_t`` and
    ``Δ_t ≈ softplus(W_dt W_δ W_x^in x_t + b)`` with the composite maps
    ``P = [W_δ; W_B] W_x^in`` of shape ``(dt_rank + N, d_model)``; the sum over the ``d_inner``
    channels of ``Δ²`` is estimated on a fixed stratified subset of ``k`` channels (every
    ``d_inner/k``-th), times ``d_inner/k``. Cost per token ``d_model·(dt_rank + N) + k·dt_rank``
    multiply-adds (≈ 1.6 % of the block at ``d_model = 768``), plus ``(dt_rank + N)·d_inner·d_model``
    once per call for ``P``. No new parameters: the signal follows the layer's weights as it trains.
    Departure from the text: ``ρ`` of seed 001 §3.4 is the rate of change of the model's state; the
    mixer's own closed form is the project's reading of it (``docs/infogeo.md``), and this is its
    linearisation, so it ignores the conv's look-back of ``d_conv − 1`` tokens.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infogeo.checks import check_finite, check_in_range, check_int, check_same_device, check_same_dtype, check_tensor

Tensor = torch.Tensor


def linear_density(x: Tensor, proj: Tensor, dt_weight: Tensor, dt_bias: Tensor, scale: float, *,
                   offset: Tensor | None = None, validate: bool = True) -> Tensor:
    """Linearised SSM density ``ρ̂_t = scale · Σ_{d∈K} softplus(W_dt[d] a_t + b_d)² · ‖b_t‖²``.

    Parameters
    ----------
    x : (batch, L, d_model) block input.
    proj : (r + N, d_model) composite map ``[W_δ; W_B] W_x^in``; ``a_t, b_t`` are its two parts of ``P x_t``.
    dt_weight, dt_bias : (k, r) and (k,), the rows of ``dt_proj`` of the sampled channels ``K``.
    scale : ``d_inner / k``.
    offset : (r + N,), optional: ``[W_δ; W_B] b^in`` when in_proj has a bias.
    validate : check that the output is finite and name the input that is not (``TiledMamba``
        checks its own input and passes False).

    Returns
    -------
    (batch, L) non-negative, dtype of ``x``.

    Raises
    ------
    TypeError
        A tensor argument is not a floating tensor, the tensors do not share one dtype, or ``scale``
        is not a number.
    ValueError
        ``x`` is empty; ``proj``, ``dt_weight``, ``dt_bias`` or ``offset`` has the wrong shape; the
        tensors live on different devices; ``scale`` is negative or infinite; (``validate``) the
        output is not finite: names the non-finite input, or reports an overflow.
    """
    _check_density_maps(x, proj, dt_weight, dt_bias, scale, offset)
    r = dt_weight.shape[1]
    ab = x @ proj.t() if offset is None else torch.addmm(offset, x.reshape(-1, x.shape[-1]), proj.t()).view(
        *x.shape[:-1], -1)
    delta = F.softplus(torch.addmm(dt_bias, ab[..., :r].reshape(-1, r), dt_weight.t()))
    speed = delta.square().sum(-1).view(x.shape[:-1])
    rho = scale * speed * ab[..., r:].square().sum(-1)
    if validate and not bool(torch.isfinite(rho).all()):
        for name, t in (("x", x), ("proj", proj), ("dt_weight", dt_weight), ("dt_bias", dt_bias), ("offset", offset)):
            if t is not None:
                check_finite(t, name)
        raise ValueError("the density overflowed with finite inputs: x, proj or dt_weight are too large")
    return rho


def _check_density_maps(x, proj, dt_weight, dt_bias, scale, offset) -> None:
    """Shapes, dtypes and devices of :func:`linear_density`'s arguments (metadata only: no pass over values)."""
    check_tensor(x, "x", min_ndim=2, finite=False)
    if x.numel() == 0:
        raise ValueError(f"x must have non-empty dimensions, got shape {tuple(x.shape)}")
    check_tensor(proj, "proj", ndim=2, finite=False)
    check_tensor(dt_weight, "dt_weight", ndim=2, finite=False)
    k, r = dt_weight.shape
    check_tensor(dt_bias, "dt_bias", shape=(k,), finite=False)
    if proj.shape[1] != x.shape[-1] or proj.shape[0] <= r:
        raise ValueError(f"proj must have shape (r + N, d_model) = ({r} + N, {x.shape[-1]}) with N >= 1, "
                         f"got {tuple(proj.shape)}")
    if offset is not None:
        check_tensor(offset, "offset", shape=(proj.shape[0],), finite=False)
    check_same_dtype(x=x, proj=proj, dt_weight=dt_weight, dt_bias=dt_bias, offset=offset)
    check_same_device(x=x, proj=proj, dt_weight=dt_weight, dt_bias=dt_bias, offset=offset)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    check_in_range(float(scale), "scale", 0.0, float("inf"), high_open=True)


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
    check_in_range(float(budget), "budget", 0.0, 1.0, low_open=True)
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


__all__ = ["RouterState", "RunningCalibration", "TokenRouter", "linear_density", "ratio_loss"]
