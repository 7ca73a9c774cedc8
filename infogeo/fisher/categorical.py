r"""The categorical family: Fisher metric and Fisher–Rao distance on the simplex (seed 000 §3.1.1, §3.1.2).

With f(x = k | p) = p_k the Fisher metric of seed 000 §3.1.1 is diag(1/p) on the open simplex,
which p ↦ 2√p maps isometrically onto the positive orthant of the sphere of radius 2; the
Fisher–Rao distance is therefore 2 × a great-circle angle (seed 000 §3.1.2). Departure: the
distance is extended to the closed simplex (the metric completion), because attention rows under a
causal mask and float32 softmax outputs that underflow hold exact zeros; the gradients there follow
the convention documented in :func:`categorical_distance`. This is the family that
:mod:`infogeo.fisher.pullback` pulls back to hidden states (an attention row, a next-token
distribution).
"""
from __future__ import annotations

import torch

from infogeo.checks import check_broadcastable, check_probability, check_tensor
from infogeo.fisher._common import _require_tensors

Tensor = torch.Tensor


def categorical_metric(p: Tensor, *, chart: bool = False) -> Tensor:
    r"""Fisher metric of the categorical family at ``p`` (seed 000 §3.1.1, closed form).

    Parameters
    ----------
    p : (..., K) points of the open simplex (p > 0, Σ p = 1), K ≥ 2.
    chart : return the (..., K−1, K−1) chart metric instead of the (..., K, K) ambient one.

    Returns
    -------
    (..., K, K) ambient metrics diag(1/p), or (..., K−1, K−1) chart metrics with ``chart=True``.

    Raises
    ------
    ValueError
        ``p`` has fewer than 2 categories, or is not a point of the open simplex.

    Notes
    -----
    With f(x = k | p) = p_k, the score along a tangent vector v (Σ_k v_k = 0) is v_k/p_k, so

    .. math::  g(v, w) = \sum_k v_k w_k / p_k, \qquad g = \operatorname{diag}(1/p)

    in the ambient coordinates of R^K, restricted to the tangent space Σ v = 0 of the open
    simplex (this is what geomstats' ``CategoricalDistributions.metric.metric_matrix`` returns).
    With ``chart=True`` the metric is returned in the global chart (p_1, …, p_{K−1}) with
    p_K = 1 − Σ_{k<K} p_k, i.e. the pull-back Eᵀ diag(1/p) E by the embedding
    E = [I_{K−1}; −1ᵀ]:

    .. math::  g^{chart} = \operatorname{diag}(1/p_{1..K-1}) + \tfrac{1}{p_K}\,\mathbf{1}\mathbf{1}^\top,

    a positive-definite (K−1)×(K−1) matrix.
    """
    check_tensor(p, "p", min_ndim=1)
    if p.shape[-1] < 2:
        raise ValueError(f"p must have at least 2 categories in its last dimension, got shape {tuple(p.shape)}")
    check_probability(p, "p")
    if not chart:
        return torch.diag_embed(1.0 / p)
    head, last = p[..., :-1], p[..., -1:]
    ones = torch.ones_like(head)
    return torch.diag_embed(1.0 / head) + (1.0 / last)[..., None] * (ones[..., :, None] * ones[..., None, :])


def _check_closed_simplex(p: Tensor, name: str) -> None:
    """p ≥ 0 summing to one along the last axis (the tolerance of ``check_probability``)."""
    check_tensor(p, name, min_ndim=1)
    if p.numel() == 0:
        return
    p = p.detach()  # the checks read values only (float() of a tensor that requires grad warns)
    if bool((p < 0).any()):
        raise ValueError(f"{name} must be non-negative (a point of the simplex), got min {float(p.min()):.3g}")
    tol = 1e-4 if p.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
    err = float((p.sum(-1) - 1).abs().max())
    if err > tol:
        raise ValueError(f"{name} must sum to 1 along dim -1 (max deviation {err:.3g} > {tol:g})")


def categorical_distance(p: Tensor, q: Tensor) -> Tensor:
    r"""Fisher–Rao distance between categorical distributions (seed 000 §3.1.2 on the simplex).

    Parameters
    ----------
    p, q : (..., K) broadcastable points of the closed simplex (p ≥ 0, Σ p = 1), on one device
        and of one dtype.

    Returns
    -------
    (...) distances, in [0, π].

    Raises
    ------
    TypeError
        ``p`` or ``q`` is not a tensor, or their dtypes differ.
    ValueError
        A point leaves the closed simplex, the numbers of categories differ, the shapes do not
        broadcast, or the devices differ.

    Notes
    -----
    The map p ↦ 2√p is an isometry from (simplex, diag(1/p)) onto the positive orthant of the
    sphere of radius 2, so the distance is 2 × the great-circle angle,

    .. math::  d(p, q) = 2\arccos\sum_k \sqrt{p_k q_k} = 4\arcsin\big(\|\sqrt p - \sqrt q\|/2\big).

    The arcsine form is used: arccos loses all precision for nearby points (its derivative is
    infinite at 1), while the chord ‖√p − √q‖ is computed without cancellation.

    Departure from the open simplex: the metric diag(1/p) needs p > 0, but the distance extends
    continuously to the closed simplex (the image of p ↦ 2√p is the closed orthant of the
    sphere, the metric completion), so zero probabilities are accepted here. Attention rows under
    a causal mask, and float32 softmax outputs that underflow, contain exact zeros.

    Gradients on the boundary (:func:`_sphere_chord`). With c = ‖√p − √q‖,
    ∂c/∂p_k = (1 − √(q_k/p_k)) / (2c), finite wherever p_k > 0. At p_k = 0 = q_k it is the
    one-sided limit, 1/(2c) (the term (√p_k − √q_k)² is p_k there). At p_k = 0 < q_k the one-sided
    derivative is −∞ (the distance is not differentiable there); the ratio √(q_k/p_k) is then
    taken as 0, so ∂c/∂p_k = 1/(2c): a documented subgradient convention, exact in every
    parametrisation that keeps p_k = 0 (a masked or underflowing softmax: ∂p_k/∂logits = 0 there,
    and the limit of the product is 0). At p = q (c = 0, the vertex of a cone) the gradient is the
    subgradient 0. Both, and the second derivatives, are finite everywhere on the closed simplex.
    """
    _require_tensors(p=p, q=q)
    _check_closed_simplex(p, "p")
    _check_closed_simplex(q, "q")
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same number of categories, got {p.shape[-1]} and {q.shape[-1]}")
    check_broadcastable(p=p, q=q)
    chord = _sphere_chord(*torch.broadcast_tensors(p, q))
    # c ≤ √2 on the simplex (c² = 2 − 2Σ√(pq)), so asin's argument stays ≤ 1/√2: no infinite slope
    return 4.0 * torch.asin((chord / 2.0).clamp(max=1.0))


def _root_ratio(a: Tensor, b: Tensor) -> Tensor:
    """√(b/a) where a > 0 and b > 0, 0 elsewhere; its gradient is 0 where it is 0 (no 0·∞)."""
    both = (a > 0) & (b > 0)
    return torch.where(both, (torch.where(both, b, 1.0) / torch.where(both, a, 1.0)).sqrt(), 0.0)


class _SphereChord(torch.autograd.Function):
    """c = ‖√p − √q‖ over the last axis with the boundary gradients of :func:`categorical_distance`.

    The backward is written in differentiable operations on the saved inputs and output, so
    double backward (``create_graph=True``, ``gradgradcheck``) runs through it too.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(p: Tensor, q: Tensor) -> Tensor:
        return torch.linalg.vector_norm(p.sqrt() - q.sqrt(), dim=-1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs, output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        p, q, c = ctx.saved_tensors
        moving = c > 0  # c = 0: p = q, the vertex of a cone; subgradient 0
        scale = torch.where(moving, grad / (2.0 * torch.where(moving, c, 1.0)), 0.0)[..., None]
        return scale * (1.0 - _root_ratio(p, q)), scale * (1.0 - _root_ratio(q, p))


def _sphere_chord(p: Tensor, q: Tensor) -> Tensor:
    """‖√p − √q‖ over the last axis of same-shape points of the closed simplex (gradients: see
    :func:`categorical_distance`, Notes)."""
    return _SphereChord.apply(p, q)
