"""The block scope's cheap resolution signal (the linearised density), which the tile router's policy
reads (:mod:`tiling.modules.router`).

Block scope runs the Mamba mixer on one token per segment, so the policy's signal cannot come
from the mixer itself: the closed-form density ``ρ_t = (Σ_d Δ_{t,d}²)·‖B_t‖²`` (seed 001 §3.4
step 1, ``infogeo.density.ssm_density``) needs in_proj, conv and x_proj on every token, the very
cost the block scope removes.

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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from infogeo.checks import check_finite, check_in_range, check_same_device, check_same_dtype, check_tensor
from tiling.ops.scan import cpu_kernels

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
    rho = _linear_density(x, proj, dt_weight, dt_bias, scale, offset)
    if validate and not bool(torch.isfinite(rho).all()):
        for name, t in (("x", x), ("proj", proj), ("dt_weight", dt_weight), ("dt_bias", dt_bias), ("offset", offset)):
            if t is not None:
                check_finite(t, name)
        raise ValueError("the density overflowed with finite inputs: x, proj or dt_weight are too large")
    return rho


def _linear_density(x: Tensor, proj: Tensor, dt_weight: Tensor, dt_bias: Tensor, scale: float,
                    offset: Tensor | None) -> Tensor:
    """:func:`linear_density` on checked arguments (the layer checks once, at its boundary)."""
    r = dt_weight.shape[1]
    ab = x @ proj.t() if offset is None else torch.addmm(offset, x.reshape(-1, x.shape[-1]), proj.t()).view(
        *x.shape[:-1], -1)
    z = torch.addmm(dt_bias, ab[..., :r].reshape(-1, r), dt_weight.t())
    ext = None if torch.is_grad_enabled() and x.requires_grad else cpu_kernels(z, ab)
    if ext is not None:  # one pass with the kernel's softplus (torch's is most of this function's time)
        return ext.linear_signal(z, ab.reshape(-1, ab.shape[-1]).contiguous(), r, float(scale)).view(x.shape[:-1])
    delta = F.softplus(z)
    speed = delta.square().sum(-1).view(x.shape[:-1])
    return scale * speed * ab[..., r:].square().sum(-1)


def step_signal(x: Tensor, maps: tuple) -> Tensor:
    """:func:`linear_density` of one token per row, ``x`` (batch, d_model) → (batch,), from a decoding
    state's maps ``(proj, offset, dt_weight, dt_bias, scale)``
    (:meth:`~tiling.modules.TiledMamba._signal_maps`); unchecked (the step checks its arguments)."""
    proj, offset, w, b, scale = maps
    return _linear_density(x.unsqueeze(1), proj, w, b, scale, offset)[:, 0]


def _check_density_maps(x, proj, dt_weight, dt_bias, scale, offset) -> None:
    """Shapes, dtypes and devices of :func:`linear_density`'s arguments (metadata only: no pass over values)."""
    check_tensor(x, "x", min_ndim=2, finite=False)
    if x.numel() == 0:
        raise ValueError(f"x must have non-empty dimensions, got shape {tuple(x.shape)}")
    check_tensor(proj, "proj", ndim=2, finite=False)
    check_tensor(dt_weight, "dt_weight", ndim=2, finite=False)
    k, r = dt_weight.shape
    if k == 0 or r == 0:  # no sampled channel, or Δ of rank 0: no density to compute
        raise ValueError(f"dt_weight must have shape (k, r) with k >= 1 and r >= 1, got {tuple(dt_weight.shape)}")
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


__all__ = ["linear_density", "step_signal"]
