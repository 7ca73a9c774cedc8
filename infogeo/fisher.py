r"""Fisher metric tensors: closed forms, sample estimates, and metrics pulled back to hidden states.

The information metric of seed 000 §3.1.1 is the Fisher information

.. math::  g_{ij}(\theta) = \mathbb{E}_{x\sim f(\cdot|\theta)}[\partial_i \log f(x|\theta)\,\partial_j \log f(x|\theta)].

This module provides

* closed forms for the categorical family (the open simplex; isometric to the positive orthant
  of the sphere of radius 2 through p ↦ 2√p), the univariate normal family in (μ, σ) (a
  hyperbolic plane of curvature −1/2) and the diagonal multivariate normal family (a product
  of such planes), with their Fisher–Rao distances;
* estimators of g from samples for any differentiable torch log-density ``log_f(x, theta)``:
  :func:`empirical_fisher` (scores at given observations) and :func:`monte_carlo_fisher`
  (scores at samples drawn from the model itself, which estimates the true Fisher);
* the metric a network induces on its hidden states — "the information metric of a token":
  for h ↦ p(h) = softmax(logits(h)), the Fisher metric of the categorical family pulled back by
  the logit map, G(h) = J(h)ᵀ(diag p − p pᵀ)J(h) (:func:`pullback_metric`), a JVP-only quadratic
  form, exact fast paths for a linear-softmax head and an attention row, and the regularisation
  G + εI used for inverses and log-determinants of these (generally singular) metrics.

All functions are pure, follow the dtype and device of their inputs and validate arguments with
:mod:`infogeo.checks`.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch.func import grad, jacfwd, jacrev, jvp, vmap

from infogeo.checks import (
    check_choice,
    check_finite,
    check_int,
    check_positive,
    check_probability,
    check_broadcastable,
    check_precise,
    check_same_device,
    check_same_dtype,
    check_tensor,
)

Tensor = torch.Tensor

# Upper bound on the elements of the per-chunk Jacobian (chunk × V × d) when chunk_size is
# chosen automatically: 2**24 float32 values = 64 MiB.
_CHUNK_ELEMENTS = 2**24


def _require_tensors(**tensors: object) -> None:
    """Type, device and dtype agreement, checked before any value is read.

    Devices are compared before values so that a tensor on another device is reported as such
    rather than failing inside a value check.
    """
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if all(t is None for t in tensors.values()):
        return  # each is checked (and named) where it is required
    check_same_device(**tensors)
    check_same_dtype(**tensors)


def _auto_chunk(chunk_size: int | None, per_item: int) -> int:
    """Tokens per chunk: the user's ``chunk_size``, or as many as keep ≤ _CHUNK_ELEMENTS entries."""
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    return check_int(chunk_size, "chunk_size", minimum=1)


# ----------------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------------


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


def _check_normal(mu: Tensor, sigma: Tensor, mu_name: str, sigma_name: str) -> None:
    _require_tensors(**{mu_name: mu, sigma_name: sigma})
    check_tensor(mu, mu_name)
    check_tensor(sigma, sigma_name)
    check_broadcastable(**{mu_name: mu, sigma_name: sigma})
    check_positive(sigma, sigma_name)
    floor = torch.finfo(sigma.dtype).tiny ** 0.5  # below it 1/σ² overflows
    if sigma.numel() and float(sigma.detach().min()) < floor:
        raise ValueError(f"{sigma_name} must be >= {floor:.3g} (1/σ² overflows {sigma.dtype} below), "
                         f"got min {float(sigma.detach().min()):.3g}")


def normal_metric(mu: Tensor, sigma: Tensor) -> Tensor:
    r"""Fisher metric of the univariate normal family in (μ, σ) coordinates (seed 000 §3.1.1).

    Parameters
    ----------
    mu, sigma : broadcastable tensors, σ > 0.

    Returns
    -------
    (..., 2, 2) metric matrices, ``...`` the broadcast shape of ``mu`` and ``sigma``.

    Raises
    ------
    TypeError, ValueError
        ``mu`` or ``sigma`` is not a finite floating tensor, the shapes do not broadcast, or
        σ ≤ 0 (or so small that 1/σ² overflows).

    Notes
    -----
    The scores of N(μ, σ²) are ∂_μ log f = (x−μ)/σ² and ∂_σ log f = ((x−μ)² − σ²)/σ³, whose
    second moments give

    .. math::  g(\mu, \sigma) = \frac{1}{\sigma^2}\begin{pmatrix}1 & 0\\ 0 & 2\end{pmatrix},

    i.e. 2 × the Poincaré half-plane metric after (μ, σ) ↦ (μ/√2, σ): a hyperbolic plane of
    constant curvature −1/2 (geomstats ``NormalDistributions(sample_dim=1)``). The metric does
    not depend on μ (translation invariance); ``mu`` fixes the broadcast shape only.
    """
    _check_normal(mu, sigma, "mu", "sigma")
    mu, sigma = torch.broadcast_tensors(mu, sigma)
    inv_var = 1.0 / sigma**2
    return torch.diag_embed(torch.stack([inv_var, 2.0 * inv_var], dim=-1))


def normal_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    r"""Fisher–Rao distance between N(μ₁, σ₁²) and N(μ₂, σ₂²) (seed 000 §3.1.2, closed form).

    Parameters
    ----------
    mu1, sigma1 : the first normal, broadcastable tensors, σ₁ > 0.
    mu2, sigma2 : the second normal, likewise.

    Returns
    -------
    Distances of the broadcast shape of the four arguments.

    Raises
    ------
    TypeError, ValueError
        An argument is not a finite floating tensor, the shapes do not broadcast, the devices or
        dtypes differ, or a σ is not positive.

    Notes
    -----
    The family is √2 × the Poincaré half-plane in coordinates (x, y) = (μ/√2, σ), whose distance
    arccosh(1 + ‖Δ‖²/(2 y₁ y₂)) equals 2 asinh(‖Δ‖ / (2√(y₁y₂))). Hence

    .. math::  d = 2\sqrt2\,\operatorname{asinh}\!\Big(\frac{\sqrt{(\mu_1-\mu_2)^2/2 + (\sigma_1-\sigma_2)^2}}{2\sqrt{\sigma_1\sigma_2}}\Big).

    The asinh form is used because arccosh(1 + ε) loses precision for nearby points.
    """
    _require_tensors(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2)
    _check_normal(mu1, sigma1, "mu1", "sigma1")
    _check_normal(mu2, sigma2, "mu2", "sigma2")
    check_broadcastable(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2)
    chord = _hypot((mu1 - mu2) / math.sqrt(2.0), sigma1 - sigma2)
    return 2.0 * math.sqrt(2.0) * torch.asinh(chord / (2.0 * torch.sqrt(sigma1) * torch.sqrt(sigma2)))


def _hypot(a: Tensor, b: Tensor) -> Tensor:
    """√(a² + b²) without overflow of the squares (``torch.hypot``), with gradient 0 at a = b = 0.

    At equal points the distance is the vertex of a cone and has no gradient; ``torch.hypot``'s
    backward gives 0/0 = NaN there, the subgradient 0 is returned instead (as ``torch.linalg.vector_norm`` does).
    """
    moving = (a != 0) | (b != 0)
    return torch.where(moving, torch.hypot(torch.where(moving, a, 1.0), torch.where(moving, b, 1.0)), 0.0)


def _check_diag_normal(mu: Tensor, sigma: Tensor, mu_name: str, sigma_name: str) -> None:
    _check_normal(mu, sigma, mu_name, sigma_name)
    if mu.dim() < 1 or mu.shape != sigma.shape:
        raise ValueError(
            f"{mu_name} and {sigma_name} must have the same shape (..., d) with d ≥ 1, "
            f"got {tuple(mu.shape)} and {tuple(sigma.shape)}"
        )


def diag_normal_metric(mu: Tensor, sigma: Tensor) -> Tensor:
    r"""Fisher metric of N(μ, diag(σ²)) in coordinates (μ₁..μ_d, σ₁..σ_d) (seed 000 §3.1.1).

    Parameters
    ----------
    mu, sigma : (..., d) tensors of equal shape, σ > 0.

    Returns
    -------
    (..., 2d, 2d) metric matrices.

    Raises
    ------
    TypeError, ValueError
        As :func:`normal_metric`, or ``mu`` and ``sigma`` differ in shape or have no coordinate.

    Notes
    -----
    The log-density is a sum over independent coordinates, so the metric is block diagonal with
    one univariate block per coordinate:

    .. math::  g = \operatorname{diag}(1/\sigma_1^2, \dots, 1/\sigma_d^2,\; 2/\sigma_1^2, \dots, 2/\sigma_d^2).

    The (means, then scales) ordering matches geomstats' ``DiagonalNormalDistributions``.
    Note that geomstats stores the *variances* in the point but measures tangent vectors in
    (μ, σ): its inner product equals this matrix at σ = √variance.
    """
    _check_diag_normal(mu, sigma, "mu", "sigma")
    inv_var = 1.0 / sigma**2
    return torch.diag_embed(torch.cat([inv_var, 2.0 * inv_var], dim=-1))


def diag_normal_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    r"""Fisher–Rao distance between diagonal normals (seed 000 §3.1.2, closed form).

    Parameters
    ----------
    mu1, sigma1, mu2, sigma2 : (..., d) tensors of equal shape, σ > 0.

    Returns
    -------
    (...) distances.

    Raises
    ------
    TypeError, ValueError
        As :func:`diag_normal_metric`, or the two normals differ in dimension d.

    Notes
    -----
    The manifold is the Riemannian product of d univariate normal planes, so

    .. math::  d^2 = \sum_{i=1}^d d_{\mathcal N}\big((\mu_{1i}, \sigma_{1i}), (\mu_{2i}, \sigma_{2i})\big)^2.
    """
    _require_tensors(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2)
    _check_diag_normal(mu1, sigma1, "mu1", "sigma1")
    _check_diag_normal(mu2, sigma2, "mu2", "sigma2")
    if mu1.shape[-1] != mu2.shape[-1]:
        raise ValueError(f"mu1 and mu2 must have the same dimension d, got {mu1.shape[-1]} and {mu2.shape[-1]}")
    per_coord = normal_distance(mu1, sigma1, mu2, sigma2)
    return torch.linalg.vector_norm(per_coord, dim=-1)


# ----------------------------------------------------------------------------------------------
# Sample estimates
# ----------------------------------------------------------------------------------------------


def empirical_fisher(
    log_f: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    theta: Tensor,
    *,
    weights: Tensor | None = None,
    batched_x: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Empirical Fisher: the mean outer product of per-sample scores (seed 000 §3.1.1).

    .. math::  \hat F(\theta) = \sum_{i=1}^n w_i\, \nabla_\theta \log f(x_i|\theta)\,\nabla_\theta \log f(x_i|\theta)^\top,
               \qquad w_i = 1/n \text{ by default}.

    Parameters
    ----------
    log_f : ``log_f(x_i, theta) -> scalar`` for one sample ``x_i`` (shape ``x.shape[1:]``, or
        ``x.shape[2:]`` when ``batched_x``) and one parameter vector ``theta`` (p,). It must
        be written with torch operations so that ``torch.func.grad`` and ``vmap`` apply.
    x : (n, *event) samples shared by all parameter points, or (m, n, *event) with
        ``batched_x=True`` — one sample set per parameter point.
    theta : (p,) one parameter point or (m, p) a batch of them.
    weights : optional (n,) non-negative weights summing to one (default uniform 1/n).
    batched_x : ``x`` carries one sample set per row of ``theta``.
    chunk_size : samples per ``vmap`` chunk (bounds memory; default: all at once).

    Returns
    -------
    (p, p) or (m, p, p) estimates, symmetric positive semi-definite.

    Raises
    ------
    TypeError
        ``log_f`` is not callable, or ``x`` is not a real tensor.
    ValueError
        The shapes do not match, ``theta`` or ``x`` is empty, ``weights`` are negative or do not
        sum to one, ``log_f`` does not return a scalar, or the scores are not finite.

    Notes
    -----
    Scores are computed with ``torch.func``: ``vmap`` over samples of ``grad`` with respect to
    θ, and a second ``vmap`` over parameter points when ``theta`` is batched.

    **Empirical vs true Fisher** (Kunstner, Balles & Hennig, 2019). The seed's expectation is over
    x ~ f(·|θ) *at the same θ*. F̂ estimates it only when the x_i are drawn from f(·|θ): then it
    converges to g(θ) at rate 1/√n (:func:`monte_carlo_fisher` does exactly this). At observed
    data from another distribution (e.g. a training set evaluated at fitted parameters) F̂ is a
    different matrix, and for one observation it is the rank-one matrix s sᵀ — positive
    semi-definite but singular as soon as dim θ > 1, hence not a metric. ``weights`` admit a
    quadrature rule: with Gauss–Hermite nodes and weights, F̂ is the exact Fisher of a normal
    model whose scores are polynomials.
    """
    if not callable(log_f):
        raise TypeError(f"log_f must be callable log_f(x, theta) -> scalar, got {type(log_f).__name__}")
    # x may be integer data (e.g. category indices); a floating x must match theta's dtype.
    _require_tensors(theta=theta, x=x if isinstance(x, torch.Tensor) and x.is_floating_point() else None, weights=weights)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_same_device(theta=theta, x=x)
    check_tensor(theta, "theta", ndim=(1, 2))
    check_tensor(x, "x", min_ndim=2 if batched_x else 1, floating=False)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must hold real numbers (integer or floating), got {x.dtype}")
    batched_theta = theta.dim() == 2
    if theta.numel() == 0:  # log_f would index an empty theta: say so rather than let it fail inside
        raise ValueError(f"theta must hold at least one parameter point of at least one parameter, (p,) or (m, p) "
                         f"with m, p >= 1, got shape {tuple(theta.shape)}")
    if batched_x:
        if not batched_theta or x.shape[0] != theta.shape[0]:
            raise ValueError(
                f"x with batched_x=True must have shape (m, n, ...) with m = theta.shape[0] for theta (m, p), "
                f"got x {tuple(x.shape)} and theta {tuple(theta.shape)}"
            )
    n = x.shape[1] if batched_x else x.shape[0]
    if n < 1:
        raise ValueError(f"x must hold at least one sample, got shape {tuple(x.shape)}")
    if weights is not None:
        check_tensor(weights, "weights", shape=(n,))
        check_positive(weights, "weights", strict=False)
        tol = 1e-5 if weights.dtype != torch.float64 else 1e-10
        if abs(float(weights.sum()) - 1.0) > tol:
            raise ValueError(f"weights must sum to 1, got {float(weights.sum()):.6g}")
    chunk = None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)

    first = log_f(x[0, 0] if batched_x else x[0], theta[0] if batched_theta else theta)
    if not isinstance(first, torch.Tensor) or first.dim() != 0:
        got = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise ValueError(f"log_f must return a scalar tensor for one sample and one theta, got {got}")
    score = grad(log_f, argnums=1)

    def fisher_at(xs: Tensor, th: Tensor) -> Tensor:
        s = vmap(score, in_dims=(0, None), chunk_size=chunk)(xs, th)
        sw = s if weights is None else s * weights[:, None]
        out = sw.transpose(0, 1) @ s
        return out / n if weights is None else out

    if batched_theta:
        out = vmap(fisher_at, in_dims=(0 if batched_x else None, 0))(x, theta)
    else:
        out = fisher_at(x, theta)
    return check_finite(out, "empirical Fisher (log_f produced non-finite scores)")


def monte_carlo_fisher(
    log_f: Callable[[Tensor, Tensor], Tensor],
    sampler: Callable[[Tensor, int, torch.Generator | None], Tensor],
    theta: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Monte Carlo estimate of the true Fisher information (seed 000 §3.1.1).

    .. math::  g(\theta) \approx \frac1n \sum_{i=1}^n s_i s_i^\top, \quad s_i = \nabla_\theta \log f(x_i|\theta),\quad x_i \sim f(\cdot|\theta).

    Parameters
    ----------
    log_f : as in :func:`empirical_fisher`.
    sampler : ``sampler(theta, n_samples, generator) -> (n_samples, *event)`` draws from
        f(·|theta) for one parameter vector ``theta`` (p,).
    theta : (p,) or (m, p) parameter points; the sampler is called once per point.
    n_samples : samples per parameter point (≥ 1).
    generator : optional ``torch.Generator`` passed to the sampler for reproducibility.
    chunk_size : as in :func:`empirical_fisher`.

    Returns
    -------
    (p, p) or (m, p, p).

    Raises
    ------
    TypeError
        ``sampler`` is not callable, or ``generator`` is not a ``torch.Generator``.
    ValueError
        ``theta`` holds no parameter, the sampler returns the wrong shape, NaN/Inf samples or
        samples on another device; and as :func:`empirical_fisher`.

    Notes
    -----
    This is :func:`empirical_fisher` at samples drawn from the model at the same θ, so the
    estimate is unbiased and its error falls like 1/√n. The samples are treated as constants
    (score-function form): no gradient flows through the sampler, and θ itself is detached, so
    the estimate carries no gradient (differentiate :func:`empirical_fisher` at fixed samples instead).
    """
    if not callable(sampler):
        raise TypeError(f"sampler must be callable sampler(theta, n_samples, generator), got {type(sampler).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    n = check_int(n_samples, "n_samples", minimum=1, maximum=2 ** 31 - 1)
    check_tensor(theta, "theta", ndim=(1, 2))
    if theta.numel() == 0:
        raise ValueError(f"theta must hold at least one parameter, got shape {tuple(theta.shape)}")
    rows = theta.detach() if theta.dim() == 2 else theta.detach()[None]
    draws = []
    for th in rows:
        xs = sampler(th, n, generator)
        if not isinstance(xs, torch.Tensor) or xs.dim() < 1 or xs.shape[0] != n:
            got = tuple(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
            raise ValueError(f"sampler must return a tensor of shape (n_samples={n}, ...), got {got}")
        if xs.is_floating_point() and not bool(torch.isfinite(xs).all()):  # e.g. a scale of 1e300 in theta
            raise ValueError(f"sampler returned NaN/Inf samples at theta = {th.tolist()}; expected finite samples")
        draws.append(xs.detach())
    if any(d.device != theta.device for d in draws):
        raise ValueError(f"sampler returned samples on {draws[0].device} but theta is on {theta.device}")
    out = empirical_fisher(log_f, torch.stack(draws), rows, batched_x=True, chunk_size=chunk_size)
    return out if theta.dim() == 2 else out[0]


# ----------------------------------------------------------------------------------------------
# Metrics pulled back to hidden states
# ----------------------------------------------------------------------------------------------


def _softmax_fisher_from_jacobian(J: Tensor, logits: Tensor) -> Tensor:
    r"""Jᵀ(diag p − p pᵀ)J in its centred, manifestly PSD form Σ_k p_k (J_k − J̄)(J_k − J̄)ᵀ.

    J̄ = Jᵀp. The centred form avoids the cancellation in Jᵀdiag(p)J − J̄J̄ᵀ when p is nearly
    one-hot (confident predictions), which is the common case for language models.
    """
    p = torch.softmax(logits, dim=-1)
    centred = J - (p[..., None] * J).sum(-2, keepdim=True)
    # √p with derivative 0 at p = 0 (torch's is ∞, and ∞ · 0 = NaN through the softmax): a class
    # with p_k = 0 (masked, or underflowed) adds nothing to the sum, and ∂p_k/∂logits = 0 there
    live = p > 0
    A = torch.where(live, torch.where(live, p, 1.0).sqrt(), 0.0)[..., None] * centred
    return A.transpose(-1, -2) @ A


def _check_tokens(h: Tensor, name: str) -> None:
    check_tensor(h, name, ndim=2)
    check_precise(h, name)
    if h.shape[0] < 1 or h.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n, d ≥ 1, got {tuple(h.shape)}")


def _with_aux(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    def out_and_aux(x: Tensor) -> tuple[Tensor, Tensor]:
        z = fn(x)
        return z, z

    return out_and_aux


#: the marker before the quoted error of a caller's ``fn`` in our messages
FN_RAISED = "fn raised: "


def _logit_width(fn: Callable[[Tensor], Tensor], h0: Tensor) -> int:
    try:
        out = fn(h0)
    except (RuntimeError, IndexError) as e:  # fn does not accept a token of this shape or dtype
        # fn is the caller's code: its own message is quoted after a fixed marker, under ours
        raise ValueError(f"fn must accept one token of h, a tensor of shape (d,) = {tuple(h0.shape)} and dtype "
                         f"{h0.dtype}, and return logits (V,); {FN_RAISED}{type(e).__name__}: {e}") from e
    if not isinstance(out, torch.Tensor) or out.dim() != 1 or out.shape[0] < 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"fn must map one token (d,) to logits (V,) with V ≥ 2, got output {got}")
    return out.shape[0]


def pullback_metric(
    fn: Callable[[Tensor], Tensor],
    h: Tensor,
    *,
    chunk_size: int | None = None,
    mode: str = "auto",
) -> Tensor:
    r"""Fisher metric of p(h) = softmax(fn(h)) pulled back to hidden states (seed 000 §3.1.1).

    Parameters
    ----------
    fn : maps one token h_i (d,) to logits (V,); must be written with torch operations
        (``torch.func`` transforms it; ``nn.Module`` layers acting on the last dimension work).
    h : (n, d) hidden states (float32 or float64).
    chunk_size : tokens per ``vmap`` chunk; default keeps a chunk's Jacobian ≤ 2²⁴ entries.
    mode : "auto", "fwd" (jacfwd) or "rev" (jacrev).

    Returns
    -------
    (n, d, d) symmetric positive semi-definite metrics.

    Raises
    ------
    TypeError
        ``fn`` is not callable.
    ValueError
        ``h`` is not (n, d), ``fn`` fails on one token or does not return V ≥ 2 logits (its
        error is quoted), ``mode`` is unknown, or the metric is not finite.

    Notes
    -----
    The information metric of a token is the Fisher metric of its predictive distribution,
    viewed as a function of the hidden state h. The categorical Fisher metric in logit
    coordinates z is diag p − p pᵀ (the covariance of the one-hot outcome), so by the chain rule

    .. math::  G(h) = J(h)^\top(\operatorname{diag}p - pp^\top)J(h) = J^\top\operatorname{diag}(p)J - (J^\top p)(J^\top p)^\top,
               \qquad J = \partial\,\mathrm{fn}/\partial h.

    G is positive semi-definite but singular in general: every direction that does not change
    p (e.g. the one LayerNorm removes, or any null direction of J, or more directions than
    V − 1) has zero length — use :func:`regularized` / :func:`metric_inverse` /
    :func:`metric_logdet` with ε > 0. It transforms as G ↦ Aᵀ G A under h = A h' (a tensor).

    J is formed per token with ``torch.func``: ``jacfwd`` (d JVPs) when d < V, ``jacrev``
    (V VJPs) otherwise, under ``vmap`` chunked over tokens so that at most
    ``chunk_size · V · d`` Jacobian entries live at once. For a linear head or an attention row
    use the exact, cheaper :func:`linear_softmax_metric` / :func:`attention_row_metric`.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable fn(h_i) -> logits, got {type(fn).__name__}")
    _check_tokens(h, "h")
    check_choice(mode, "mode", ("auto", "fwd", "rev"))
    d = h.shape[1]
    V = _logit_width(fn, h[0])
    chunk = _auto_chunk(chunk_size, V * d)
    use_fwd = mode == "fwd" or (mode == "auto" and d < V)
    # has_aux returns the logits alongside J, so fn is evaluated once per token.
    jac_fn = (jacfwd if use_fwd else jacrev)(_with_aux(fn), has_aux=True)

    def metric_one(x: Tensor) -> Tensor:
        J, logits = jac_fn(x)
        return _softmax_fisher_from_jacobian(J, logits)

    G = vmap(metric_one, chunk_size=chunk)(h)
    return check_finite(G, "pullback metric (fn produced non-finite logits or Jacobian)")


def pullback_quadratic_form(
    fn: Callable[[Tensor], Tensor],
    h: Tensor,
    v: Tensor,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""vᵀG(h)v for the pulled-back metric, from one JVP per token (seed 000 §3.1.1).

    Parameters
    ----------
    fn : as in :func:`pullback_metric`.
    h : (n, d) hidden states.
    v : (n, d) tangent vectors, one per token, or (d,) shared by all tokens.
    chunk_size : tokens per ``vmap`` chunk (default: all at once).

    Returns
    -------
    (n,) non-negative values.

    Raises
    ------
    TypeError
        ``fn`` is not callable.
    ValueError
        ``v`` does not match ``h``; and as :func:`pullback_metric`.

    Notes
    -----
    With u = J(h)v (one forward-mode JVP) and p = softmax(fn(h)),

    .. math::  v^\top G(h) v = u^\top(\operatorname{diag}p - pp^\top)u = \operatorname{Var}_{k\sim p}(u_k)
               = \sum_k p_k\big(u_k - \textstyle\sum_j p_j u_j\big)^2,

    so J is never built: cost ≈ two evaluations of fn per token, memory O(V). This is the
    squared length ‖v‖²_{G(h)} used for densities along a direction (e.g. v = h_{t+1} − h_t).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable fn(h_i) -> logits, got {type(fn).__name__}")
    _require_tensors(h=h, v=v)
    _check_tokens(h, "h")
    check_tensor(v, "v", ndim=(1, 2))
    if v.shape[-1] != h.shape[1] or (v.dim() == 2 and v.shape[0] != h.shape[0]):
        raise ValueError(f"v must have shape (n, d) = {tuple(h.shape)} or (d,) = ({h.shape[1]},), got {tuple(v.shape)}")
    _logit_width(fn, h[0])
    chunk = None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)

    def form_one(x: Tensor, t: Tensor) -> Tensor:
        logits, u = jvp(fn, (x,), (t,))
        p = torch.softmax(logits, dim=-1)
        centred = u - (p * u).sum()
        return (p * centred**2).sum()

    out = vmap(form_one, in_dims=(0, 0 if v.dim() == 2 else None), chunk_size=chunk)(h, v)
    return check_finite(out, "pullback quadratic form (fn produced non-finite logits or JVP)")


def linear_softmax_metric(
    W: Tensor,
    h: Tensor,
    b: Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Exact pulled-back metric of a linear-softmax head p = softmax(W h + b) (seed 000 §3.1.1).

    Parameters
    ----------
    W : (V, d) head weight (``nn.Linear(d, V).weight`` layout), V ≥ 2.
    h : (n, d) hidden states.
    b : optional (V,) bias.
    chunk_size : tokens per chunk; default keeps a chunk ≤ 2²⁴ entries.

    Returns
    -------
    (n, d, d).

    Raises
    ------
    ValueError
        The shapes do not match, W has fewer than 2 rows, or the metric overflows the dtype.

    Notes
    -----
    J = W for every token, so the metric of :func:`pullback_metric` is

    .. math::  G(h) = W^\top(\operatorname{diag}p - pp^\top)W = \sum_k p_k (W_k - \bar W)(W_k - \bar W)^\top,
               \quad \bar W = W^\top p,

    computed in the centred form (no cancellation for confident p) without automatic
    differentiation, chunked over tokens so that at most ``chunk_size · V · d`` entries are
    formed at once. This is the metric an LM head induces on the final hidden states.
    """
    _require_tensors(W=W, h=h, b=b)
    check_tensor(W, "W", ndim=2)
    _check_tokens(h, "h")
    V, d = W.shape
    if V < 2:
        raise ValueError(f"W must have at least 2 rows (classes), got shape {tuple(W.shape)}")
    if h.shape[1] != d:
        raise ValueError(f"h must have shape (n, {d}) to match W {tuple(W.shape)}, got {tuple(h.shape)}")
    if b is not None:
        check_tensor(b, "b", shape=(V,))
    return _softmax_head_metric(W, h, b=b, chunk_size=chunk_size, names=("W", "h"))


def _softmax_head_metric(W: Tensor, h: Tensor, *, b: Tensor | None = None, mask: Tensor | None = None,
                         chunk_size: int | None = None, names: tuple[str, str]) -> Tensor:
    """The centred metric of p = softmax(W h + b) per token (:func:`linear_softmax_metric`'s Notes),
    keys outside ``mask`` (n, V) at p = 0; a metric that overflows the dtype is a ``ValueError``
    naming the caller's arguments ``names`` (for W and h) with their magnitudes."""
    V, d = W.shape
    chunk = _auto_chunk(chunk_size, V * d)
    out = []
    for start in range(0, h.shape[0], chunk):
        hc = h[start:start + chunk]
        logits = hc @ W.T
        if b is not None:
            logits = logits + b
        if mask is not None:  # masked keys get p = 0 and so drop out of the centred sum
            logits = logits.masked_fill(~mask[start:start + chunk], float("-inf"))
        out.append(_softmax_fisher_from_jacobian(W.expand(hc.shape[0], V, d), logits))
    G = torch.cat(out)
    if not bool(torch.isfinite(G).all()):
        w, x = names
        raise ValueError(f"{w} and {x} are too large: the metric overflows {G.dtype} (|{w}| up to "
                         f"{float(W.abs().max()):.3g}, |{x}| up to {float(h.abs().max()):.3g})")
    return G


def attention_row_metric(
    q: Tensor,
    K: Tensor,
    scale: float | None = None,
    *,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Fisher metric of an attention row p = softmax(scale · K q) as a function of the query q.

    Parameters
    ----------
    q : (n, d) queries.
    K : (m, d) keys, m ≥ 2.
    scale : logit scale; default 1/√d (scaled dot-product attention).
    mask : optional (n, m) bool, True where query i may attend key j; every row needs ≥ 1.
    chunk_size : queries per chunk (as in :func:`linear_softmax_metric`).

    Returns
    -------
    (n, d, d).

    Raises
    ------
    TypeError
        ``scale`` is not a float, or ``mask`` is not a bool tensor.
    ValueError
        The shapes do not match, ``scale`` is not finite, a mask row allows no key, or ``q`` and
        ``K`` are so large that the metric overflows the dtype (the message names both).

    Notes
    -----
    An attention row is a categorical distribution over keys; its Fisher metric pulled back to
    the query (seed 000 §3.1.1, with the token's "state" being its query) is, since the logits
    are linear in q with Jacobian scale·K,

    .. math::  G(q) = \mathrm{scale}^2\, K^\top(\operatorname{diag}p - pp^\top)K,

    i.e. :func:`linear_softmax_metric` with W = scale·K. With a ``mask`` (True = attend) the
    row is a distribution over the allowed keys only — a causal mask gives each query its own
    key set — and masked keys contribute nothing.
    """
    _require_tensors(q=q, K=K)
    _check_tokens(q, "q")
    check_tensor(K, "K", ndim=2)
    if K.shape[1] != q.shape[1] or K.shape[0] < 2:
        raise ValueError(f"K must have shape (m, {q.shape[1]}) with m ≥ 2 to match q {tuple(q.shape)}, got {tuple(K.shape)}")
    d = q.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {type(mask).__name__ if not isinstance(mask, torch.Tensor) else mask.dtype}")
        check_same_device(q=q, mask=mask)
        check_tensor(mask, "mask", shape=(q.shape[0], K.shape[0]), floating=False)
        if not bool(mask.any(-1).all()):
            raise ValueError("mask must allow at least one key in every row")
    return _softmax_head_metric(K * scale, q, mask=mask, chunk_size=chunk_size, names=(f"K (times scale {scale:g})", "q"))


# ----------------------------------------------------------------------------------------------
# Regularisation and summaries of (singular) metrics
# ----------------------------------------------------------------------------------------------


def _check_metric(G: Tensor, name: str = "G") -> None:
    check_tensor(G, name, min_ndim=2)
    check_precise(G, name)
    if G.shape[-1] != G.shape[-2] or G.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., d, d), got {tuple(G.shape)}")
    G = G.detach()  # values only
    scale = float(G.abs().max()) if G.numel() else 0.0
    tol = (1e-10 if G.dtype == torch.float64 else 1e-4) * max(scale, 1.0)
    asym = float((G - G.transpose(-1, -2)).abs().max()) if G.numel() else 0.0
    if asym > tol:
        raise ValueError(f"{name} must be symmetric, got max |G − Gᵀ| = {asym:.3g}")


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    check_positive(float(eps), "eps", strict=False)
    return float(eps)


def regularized(G: Tensor, eps: float) -> Tensor:
    r"""G + εI, the regularised metric (seed 000 §3.1.1; departure: ε is not in the text).

    Parameters
    ----------
    G : (..., d, d) symmetric metrics (float32 or float64).
    eps : ε ≥ 0, absolute, in the units of G.

    Returns
    -------
    (..., d, d) tensor G + εI.

    Raises
    ------
    TypeError
        ``eps`` is not a number.
    ValueError
        ``G`` is not a finite symmetric (..., d, d) tensor, or ε < 0.

    Notes
    -----
    Pulled-back metrics are singular in general (:func:`pullback_metric`), so their inverse and
    volume form do not exist; adding εI (ε > 0, absolute, in the units of G) makes the metric
    positive definite while changing lengths of vectors with ‖v‖²_G ≫ ε‖v‖² by a relative
    O(ε/λ_min⁺). This is the Tikhonov/damping convention of natural-gradient methods; choose ε
    relative to the spectrum, e.g. ε = 1e-6 · tr G / d.
    """
    _check_metric(G)
    e = _check_eps(eps)
    return G + e * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)


def _cholesky(G: Tensor, eps: float) -> Tensor:
    L, info = torch.linalg.cholesky_ex(regularized(G, eps))
    if bool((info > 0).any()):
        raise ValueError(
            f"G + eps·I is not positive definite for eps = {eps:g} ({int((info > 0).sum())} matrices); "
            "the metric is singular — expected eps > 0 large enough"
        )
    return L


def metric_inverse(G: Tensor, eps: float) -> Tensor:
    r"""(G + εI)⁻¹ via a Cholesky factorisation (see :func:`regularized`).

    Parameters
    ----------
    G : (..., d, d) symmetric metrics.
    eps : ε ≥ 0.

    Returns
    -------
    (..., d, d) inverses.

    Raises
    ------
    ValueError
        G + εI is not positive definite (e.g. ε = 0 on a singular metric); the message names
        ``eps``. And as :func:`regularized`.
    """
    return torch.cholesky_inverse(_cholesky(G, eps))


def metric_logdet(G: Tensor, eps: float) -> Tensor:
    r"""log det(G + εI) = 2 Σ_i log L_ii with G + εI = L Lᵀ (see :func:`regularized`).

    Parameters
    ----------
    G : (..., d, d) symmetric metrics.
    eps : ε ≥ 0.

    Returns
    -------
    (...) log-determinants.

    Raises
    ------
    ValueError
        As :func:`metric_inverse`.

    Notes
    -----
    ½ log det g is the log of the Riemannian volume density; with ε > 0 it stays finite on
    singular metrics.
    """
    L = _cholesky(G, eps)
    return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def effective_dimension(G: Tensor, *, assume_psd: bool = False) -> Tensor:
    r"""Participation ratio of the metric's spectrum, (tr G)² / ‖G‖_F² = (Σλ)²/Σλ².

    Parameters
    ----------
    G : (..., d, d) symmetric positive semi-definite metrics.
    assume_psd : skip the O(d³) positive semi-definiteness check, for matrices PSD by
        construction (Gram matrices ``AᵀA``).

    Returns
    -------
    (...) for G of shape (..., d, d).

    Raises
    ------
    TypeError
        ``assume_psd`` is not a bool.
    ValueError
        ``G`` is not symmetric, or (unless ``assume_psd``) G + τ·max|G|·I has no Cholesky factor,
        τ = 1e-10 (float64) or 1e-4 (lower precision), the symmetry tolerance; the message names
        ``G``.

    Notes
    -----
    For a PSD metric this lies in [1, d]: d for an isotropic metric, 1 for a rank-one metric
    (e.g. the empirical Fisher of one observation). It counts how many directions of the
    hidden state carry information, and is 0 by convention for the zero metric. A matrix with a
    negative eigenvalue is no metric (the ratio would then count cancelling directions) and is
    refused.
    """
    _check_metric(G)
    if not isinstance(assume_psd, bool):
        raise TypeError(f"assume_psd must be a bool, got {type(assume_psd).__name__}")
    if G.numel():
        G = G / G.abs().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)  # the ratio is scale-free
    if not assume_psd and G.numel():
        scale = G.abs().amax((-2, -1), keepdim=True)
        tol = 1e-10 if G.dtype == torch.float64 else 1e-4
        eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
        _, info = torch.linalg.cholesky_ex(0.5 * (G + G.transpose(-1, -2)) + tol * scale * eye)
        bad = (info > 0) & (scale[..., 0, 0] > 0)  # the zero matrix is PSD (and its ratio 0)
        if bool(bad.any()):
            raise ValueError(f"G must be positive semi-definite (a metric); {int(bad.sum())} of its matrices "
                             f"have a negative eigenvalue beyond the tolerance {tol:g}·max|G|")
    tr = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
    fro2 = (G * G).sum((-2, -1))
    safe = torch.where(fro2 > 0, fro2, torch.ones_like(fro2))
    return torch.where(fro2 > 0, tr**2 / safe, torch.zeros_like(fro2))
