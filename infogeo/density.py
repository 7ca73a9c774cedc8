r"""Local information density along sequences, and the information length of paths.

Seed 000 §3.1.1 defines the local information density of a state field s on the information
manifold as ρ(p) = ‖∇_p s(p)‖²_{g(p)}, seed 001 §3.4 as the sensitivity ρ(x) = ‖∇_x s‖², and
seed 000 §3.1.2 the information length of a path, L(γ) = ∫₀¹ √(g_{ij}(γ)γ̇ⁱγ̇ʲ) dt. On a token
sequence these become

* :func:`sequence_density` — the discrete squared speed ρ_t = ‖s_{t+1} − s_t‖²_{g_t} of a
  sequence of states (Euclidean when no metric is given), and
  :func:`categorical_sequence_density` — its exact form for predictive distributions, the
  squared Fisher–Rao distance between consecutive rows;
* :func:`sensitivity_density` — ρ = ‖∂s/∂x‖²_F of any torch function, and :func:`ssm_density`
  — its closed form for a selective state-space (Mamba) step;
* :func:`path_length` — L(γ) of a discrete curve under a metric field, by a second-order rule.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import jacrev, vmap

from infogeo.checks import check_finite, check_int, check_positive, check_tensor
from infogeo.fisher._common import _require_tensors
from infogeo.fisher.categorical import _check_closed_simplex, categorical_distance

Tensor = torch.Tensor
MetricField = Callable[[Tensor], Tensor]


def _check_curve(x: Tensor, name: str) -> None:
    check_tensor(x, name, min_ndim=2)
    if x.shape[-2] < 2 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., n, d) with n ≥ 2 points and d ≥ 1, got {tuple(x.shape)}")


def _evaluate_field(metric: MetricField, points: Tensor, name: str) -> Tensor:
    """Call a metric field on (..., m, d) points and check it returns (..., m, d, d)."""
    g = metric(points)
    want = (*points.shape, points.shape[-1])
    if not isinstance(g, torch.Tensor) or tuple(g.shape) != want:
        got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise ValueError(f"{name} must map points {tuple(points.shape)} to metrics {want}, got {got}")
    return check_finite(g, f"{name} output")


def _quadratic(v: Tensor, g: Tensor | None) -> Tensor:
    """vᵀ g v over the last axis (Euclidean when g is None)."""
    if g is None:
        return (v * v).sum(-1)
    return torch.einsum("...i,...ij,...j->...", v, g, v)


def sequence_density(states: Tensor, metrics: Tensor | MetricField | None = None) -> Tensor:
    r"""Discrete information density along a sequence of states (seed 000 §3.1.1, seed 001 §3.4).

    .. math::  \rho_t = \|s_{t+1} - s_t\|^2_{g_t} = (s_{t+1}-s_t)^\top g_t\,(s_{t+1}-s_t), \qquad t = 1, \dots, n-1.

    Parameters
    ----------
    states : (..., n, d) states s_1..s_n, n ≥ 2.
    metrics : None; a tensor of per-state metrics (..., n, d, d) (the last is unused) or
        (..., n−1, d, d); or a callable field mapping (..., m, d) points to (..., m, d, d).

    Returns
    -------
    (..., n−1) non-negative densities.

    Raises
    ------
    ValueError
        ``states`` has fewer than 2 points or no coordinate, ``metrics`` has the wrong shape, or
        a callable field returns the wrong shape or non-finite values.

    Notes
    -----
    The squared speed of the state along the sequence with unit time step, measured in the
    metric g_t at the step's starting state (Euclidean g = I when ``metrics`` is None).
    Departure from the text: the seed's ρ(p) = ‖∇_p s(p)‖²_{g(p)} differentiates a state field
    on the manifold; on a sequence the only available direction is the step to the next token,
    so the gradient becomes the forward difference (first order in the step).
    """
    _check_curve(states, "states")
    steps = states[..., 1:, :] - states[..., :-1, :]
    n, d = states.shape[-2], states.shape[-1]
    if metrics is None:
        g = None
    elif callable(metrics):
        g = _evaluate_field(metrics, states[..., :-1, :], "metrics")
    else:
        _require_tensors(states=states, metrics=metrics)
        check_tensor(metrics, "metrics", min_ndim=3)
        lead = tuple(states.shape[:-2])
        if metrics.shape[-2:] != (d, d) or metrics.shape[-3] not in (n, n - 1) or tuple(metrics.shape[:-3]) != lead:
            raise ValueError(
                f"metrics must have shape {(*lead, n, d, d)} or {(*lead, n - 1, d, d)} to match states "
                f"{tuple(states.shape)}, got {tuple(metrics.shape)}"
            )
        g = metrics[..., : n - 1, :, :]
    return _quadratic(steps, g)


def categorical_sequence_density(P: Tensor) -> Tensor:
    r"""Squared Fisher–Rao speed of a sequence of categorical distributions (seed 000 §3.1.1–3.1.2).

    .. math::  \rho_t = d_{FR}(p_t, p_{t+1})^2 = 16\arcsin^2\big(\|\sqrt{p_{t+1}} - \sqrt{p_t}\|/2\big).

    Parameters
    ----------
    P : (..., n, K) rows in the simplex (P ≥ 0, rows sum to one; exact zeros such as
        causally masked attention entries are allowed, see :func:`infogeo.fisher.categorical_distance`), n ≥ 2.

    Returns
    -------
    (..., n−1).

    Raises
    ------
    ValueError
        ``P`` has fewer than 2 rows, or a row leaves the closed simplex.

    Notes
    -----
    To second order in the step this is (p_{t+1}−p_t)ᵀ diag(1/p_t) (p_{t+1}−p_t), i.e.
    :func:`sequence_density` with the categorical metric; the exact geodesic distance is used
    because consecutive predictive distributions of a language model are rarely close.
    """
    _check_curve(P, "P")
    _check_closed_simplex(P, "P")
    return categorical_distance(P[..., 1:, :], P[..., :-1, :]) ** 2


def sensitivity_density(fn: Callable[[Tensor], Tensor], x: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Sensitivity density ρ(x) = ‖∂s/∂x‖²_F of a state map s = fn(x) (seed 001 §3.4).

    .. math::  \rho(x_i) = \sum_{a,b} \Big(\frac{\partial s_a}{\partial x_b}(x_i)\Big)^2.

    Parameters
    ----------
    fn : maps one point x_i (shape ``x.shape[1:]``) to a state of any shape; torch operations.
    x : (n, ...) points.
    chunk_size : points per ``vmap`` chunk (default: all at once).

    Returns
    -------
    (n,).

    Raises
    ------
    TypeError
        ``fn`` is not callable.
    ValueError
        ``x`` holds no point, or the Jacobian is not finite.

    Notes
    -----
    The squared Frobenius norm of the Jacobian (the seed's ‖∇_x s‖²₂, read as the Frobenius
    norm since s is a vector), computed with ``torch.func.jacrev`` under ``vmap`` over points.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable fn(x_i) -> state, got {type(fn).__name__}")
    check_tensor(x, "x", min_ndim=1)
    if x.shape[0] < 1:
        raise ValueError(f"x must hold at least one point, got shape {tuple(x.shape)}")
    chunk = None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)

    def rho_one(xi: Tensor) -> Tensor:
        J = jacrev(fn)(xi)
        return (J * J).sum()

    out = vmap(rho_one, chunk_size=chunk)(x)
    return check_finite(out, "sensitivity density (fn produced a non-finite Jacobian)")


def ssm_density(delta: Tensor, B: Tensor) -> Tensor:
    r"""Closed-form sensitivity density of a selective SSM step (seed 001 §3.4).

    Parameters
    ----------
    delta : (batch, dim, L) step sizes, already softplus-ed (≥ 0).
    B : (batch, N, L), or (batch, G, N, L) with G dividing dim.

    Returns
    -------
    (batch, L).

    Raises
    ------
    ValueError
        The shapes do not match, G does not divide dim, or ``delta`` is negative.

    Notes
    -----
    A Mamba step updates the state h_t ∈ R^{dim×N} by h_{t,d} = exp(Δ_{t,d}A_d) h_{t−1,d} +
    Δ_{t,d} B_t u_{t,d}, so for given Δ_t and B_t, ∂h_t/∂u_t = diag(Δ_t) ⊗ B_t and

    .. math::  \rho_t = \|\partial h_t/\partial u_t\|_F^2 = \Big(\sum_d \Delta_{t,d}^2\Big)\,\|B_t\|^2.

    With grouped B (G groups, channel d reading group g(d) = d // (dim/G)) this is
    ρ_t = Σ_d Δ_{t,d}² ‖B_{g(d),t}‖². Departures: Δ and B are treated as given (in Mamba they
    are themselves functions of u_t, whose contribution through the selection path is not
    included), and the input term uses the Euler discretisation Δ·B of the reference
    ``selective_scan`` (not the zero-order hold (exp(ΔA) − 1)/A · B).
    """
    _require_tensors(delta=delta, B=B)
    check_tensor(delta, "delta", ndim=3)
    check_tensor(B, "B", ndim=(3, 4))
    check_positive(delta, "delta (already softplus-ed)", strict=False)
    batch, dim, L = delta.shape
    groups = 1 if B.dim() == 3 else B.shape[1]
    if B.shape[0] != batch or B.shape[-1] != L:
        raise ValueError(
            f"B must have shape ({batch}, N, {L}) or ({batch}, G, N, {L}) to match delta {tuple(delta.shape)}, "
            f"got {tuple(B.shape)}"
        )
    if groups < 1 or dim % groups:
        raise ValueError(f"B's group count G = {groups} must divide dim = {dim}")
    b_sq = (B * B).sum(-2)  # (batch, L) or (batch, G, L)
    if B.dim() == 3:
        return (delta * delta).sum(1) * b_sq
    delta_sq = (delta * delta).reshape(batch, groups, dim // groups, L).sum(2)
    return (delta_sq * b_sq).sum(1)


def path_length(curve: Tensor, metric: Tensor | MetricField | None = None) -> Tensor:
    r"""Information length of a discrete curve (seed 000 §3.1.2), second-order accurate.

    .. math::  L(\gamma) = \int_0^1 \sqrt{g_{ij}(\gamma(t))\,\dot\gamma^i\dot\gamma^j}\,dt
               \approx \sum_{i=0}^{n-2} \sqrt{\Delta_i^\top \bar g_i\,\Delta_i}, \quad \Delta_i = \gamma_{i+1} - \gamma_i.

    Parameters
    ----------
    curve : (..., n, d) points γ_0..γ_{n−1}, n ≥ 2.
    metric : None; a callable field mapping (..., m, d) points to (..., m, d, d); or a
        tensor (..., n, d, d) of metrics at the curve's points.

    Returns
    -------
    (...) lengths (a 0-dim tensor for one curve).

    Raises
    ------
    ValueError
        ``curve`` has fewer than 2 points, ``metric`` has the wrong shape or non-finite values, or
        the metric is not positive semi-definite along the curve.

    Notes
    -----
    ḡ_i is the metric at the chord midpoint (γ_i + γ_{i+1})/2 when ``metric`` is a callable
    field, or the mean (g_i + g_{i+1})/2 of the per-point metrics when it is a tensor. Both are
    the midpoint rule with the chord as velocity, each O(h²) away from the value at the
    parameter midpoint, so a segment errs by O(h³) and the sum by O(h²): exact in the limit
    of refinement, independent of the parametrisation, and Euclidean length when ``metric`` is None.
    """
    _check_curve(curve, "curve")
    steps = curve[..., 1:, :] - curve[..., :-1, :]
    d = curve.shape[-1]
    if metric is None:
        g = None
    elif callable(metric):
        g = _evaluate_field(metric, 0.5 * (curve[..., 1:, :] + curve[..., :-1, :]), "metric")
    else:
        _require_tensors(curve=curve, metric=metric)
        want = (*curve.shape, d)
        check_tensor(metric, "metric", min_ndim=3)
        if tuple(metric.shape) != want:
            raise ValueError(f"metric must have shape {want} (one metric per point of curve), got {tuple(metric.shape)}")
        g = 0.5 * (metric[..., 1:, :, :] + metric[..., :-1, :, :])
    sq = _quadratic(steps, g)
    if g is not None:
        # Rounding makes vᵀgv slightly negative on null directions of a singular PSD metric;
        # anything beyond rounding of |v|ᵀ|g||v| means the metric is not PSD.
        tol = 64 * torch.finfo(sq.dtype).eps * _quadratic(steps.abs(), g.abs())
        if bool((sq < -tol).any()):
            raise ValueError(f"metric is not positive semi-definite along the curve (min vᵀgv = {float(sq.min()):.3g})")
        sq = sq.clamp(min=0)
    # a zero step (two equal points) is the vertex of a cone: subgradient 0, not sqrt's 0 · ∞ = NaN
    moving = sq > 0
    return torch.where(moving, torch.where(moving, sq, 1.0).sqrt(), 0.0).sum(-1)
