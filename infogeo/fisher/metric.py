r"""Algebra of (generally singular) metric tensors: G + εI, its inverse and log-determinant, the effective dimension.

Pulled-back metrics (:mod:`infogeo.fisher.pullback`) are positive semi-definite but singular in
general, so the inverse metric and the volume density ½ log det g of seed 000 §3.1.1 are taken of
the regularised G + εI (departure: ε is not in the text; it is the Tikhonov/damping convention of
natural-gradient methods, see :func:`regularized`). :func:`effective_dimension` summarises a
metric's spectrum by its participation ratio.
"""
from __future__ import annotations

import torch

from infogeo.checks import check_positive, check_precise, check_tensor

Tensor = torch.Tensor


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
        G + εI is not positive definite (e.g. ε = 0 on a singular metric), or its inverse overflows the
        dtype (an eigenvalue below about 1 / the dtype's largest number, e.g. a subnormal metric at ε =
        0); the message names ``eps``. And as :func:`regularized`.
    """
    inv = torch.cholesky_inverse(_cholesky(G, eps))
    if not bool(torch.isfinite(inv).all()):  # positive definite, yet too close to singular for the dtype
        raise ValueError(f"the inverse of G + eps·I overflows {str(G.dtype).removeprefix('torch.')} for eps = "
                         f"{eps:g} (an eigenvalue near 0); expected eps > 0 large enough")
    return inv


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
