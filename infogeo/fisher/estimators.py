r"""Sample estimates of the Fisher information of any differentiable model (seed 000 §3.1.1).

The information metric of seed 000 §3.1.1 is the expectation

.. math::  g_{ij}(\theta) = \mathbb{E}_{x\sim f(\cdot|\theta)}[\partial_i \log f(x|\theta)\,\partial_j \log f(x|\theta)],

estimated here from scores computed with ``torch.func`` for any torch log-density
``log_f(x, theta)``: :func:`empirical_fisher` at given observations (optionally weighted, e.g. by a
quadrature rule) and :func:`monte_carlo_fisher` at samples drawn from the model at the same θ,
which estimates the true Fisher (the two differ at data from another distribution: Kunstner,
Balles & Hennig, 2019).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad, vmap

from infogeo.checks import check_finite, check_int, check_positive, check_same_device, check_tensor
from infogeo.fisher._common import _require_tensors

Tensor = torch.Tensor


def _check_empirical_args(
    log_f: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    theta: Tensor,
    weights: Tensor | None,
    batched_x: bool,
    chunk_size: int | None,
) -> tuple[int, int | None]:
    """:func:`empirical_fisher`'s arguments, checked in the order of its Raises before any score is
    computed (``log_f`` is called once, on the first sample, to see that it returns a scalar).

    Returns the number n of samples per parameter point and the ``vmap`` chunk size.
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
    return n, chunk


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
    n, chunk = _check_empirical_args(log_f, x, theta, weights, batched_x, chunk_size)
    batched_theta = theta.dim() == 2
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
