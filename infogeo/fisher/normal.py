r"""The univariate and the diagonal normal families in (μ, σ) coordinates (seed 000 §3.1.1, §3.1.2).

The univariate normal family with the Fisher metric of seed 000 §3.1.1 is a hyperbolic plane of
constant curvature −1/2 (2 × the Poincaré half-plane after (μ, σ) ↦ (μ/√2, σ)); the diagonal
normal family N(μ, diag σ²) is the Riemannian product of d such planes. Both metrics and
Fisher–Rao distances (seed 000 §3.1.2) have closed forms, which the tests and ``infogeo verify``
use as exact references (geomstats' ``NormalDistributions`` agrees, ``tests/infogeo``).
"""
from __future__ import annotations

import math

import torch

from infogeo.checks import check_broadcastable, check_positive, check_tensor
from infogeo.fisher._common import _require_tensors

Tensor = torch.Tensor


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
