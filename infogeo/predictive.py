r"""The predictive density of a causal language model, beside its surprisal.

Seed 000 §3.1.1 equips the token manifold with the Fisher metric of the model's own conditional
densities f(x | p). For a causal LM the conditional density at position t is the next-token
distribution π_t = softmax(logits_t) = p(· | x_{≤t}), a point of the categorical family; reading
token x_t moves the model from π_{t−1} to π_t. The predictive density is the squared length of
that step in the Fisher–Rao metric (seed 000 §3.1.2, on the simplex: the sphere of radius 2),

.. math::  \rho_t = d_{FR}(\pi_{t-1}, \pi_t)^2 = 16\arcsin^2\big(\|\sqrt{\pi_t} - \sqrt{\pi_{t-1}}\|/2\big),
           \qquad t = 1, …, n−1,

:func:`infogeo.density.categorical_sequence_density` of the rows π. It needs only the logits, so
it is the same for a transformer, a Mamba model or a ``TiledLM``. Departure from seed 000: the
seed's ρ(p) = ‖∇_p s‖²_g is a local (differential) quantity; ρ_t here is the finite step
between consecutive tokens, measured by the exact geodesic distance because consecutive
predictive distributions are rarely close.

Beside it stands the surprisal of the token that caused the step, s_t = −log π_{t−1}(x_t)
(nats): how unexpected x_t was, where ρ_t is how much it changed what comes next. The two are
indexed alike (both belong to token x_t) and :func:`predictive_section` reports their Pearson
and Spearman correlations.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .checks import check_finite, check_tensor
from .density import categorical_sequence_density

Tensor = torch.Tensor

__all__ = ["predictive_density", "surprisal", "predictive_section"]


def _log_probs(logits: Tensor) -> Tensor:
    check_tensor(logits, "logits", ndim=2)
    if logits.shape[0] < 2:
        raise ValueError(f"logits must cover at least 2 positions, got shape {tuple(logits.shape)}")
    check_finite(logits, "logits")
    return torch.log_softmax(logits.detach().to("cpu", torch.float64), dim=-1)


def predictive_density(logits: Tensor) -> Tensor:
    """Predictive density ρ_t = d_FR(π_{t−1}, π_t)² for t = 1..n−1 (module docstring).

    Parameters
    ----------
    logits : (n, V) next-token logits, n ≥ 2, finite.

    Returns
    -------
    (n−1,) float64 tensor on the CPU.

    Raises
    ------
    ValueError
        ``logits`` is not (n, V) with n ≥ 2, or holds NaN/Inf.
    """
    return categorical_sequence_density(_log_probs(logits).exp())


def surprisal(logits: Tensor, ids: Tensor | list[int]) -> Tensor:
    """Surprisal s_t = −log π_{t−1}(x_t) in nats for t = 1..n−1.

    Parameters
    ----------
    logits : (n, V) next-token logits, n ≥ 2, finite.
    ids : (n,) token ids in 0..V−1.

    Returns
    -------
    (n−1,) float64 tensor on the CPU.

    Raises
    ------
    ValueError
        ``logits`` is not (n, V) with n ≥ 2 or holds NaN/Inf, or ``ids`` has another length or an
        id outside the vocabulary.
    """
    logp = _log_probs(logits)
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    if ids.shape[0] != logp.shape[0]:
        raise ValueError(f"ids must have one entry per position ({logp.shape[0]}), got {ids.shape[0]}")
    if int(ids.min()) < 0 or int(ids.max()) >= logp.shape[1]:
        raise ValueError(f"ids must lie in 0..{logp.shape[1] - 1} (the vocabulary), got {int(ids.min())}..{int(ids.max())}")
    return -logp[:-1].gather(1, ids[1:, None])[:, 0]


def _correlations(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson and Spearman correlation; None where one series is constant (undefined)."""
    from scipy.stats import pearsonr, spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None, None
    return float(pearsonr(a, b).statistic), float(spearmanr(a, b).statistic)


def predictive_section(logits: Tensor, ids: Tensor | list[int]) -> dict:
    """The report's ``predictive`` section.

    Parameters
    ----------
    logits : (n, V) next-token logits, n ≥ 2, finite.
    ids : (n,) token ids in 0..V−1.

    Returns
    -------
    dict with the definition, the density and surprisal per token t = 1..n−1, their means, the
    bits per token, and their Pearson and Spearman correlations (None if undefined: fewer than 3
    tokens, or a constant series).

    Raises
    ------
    ValueError
        As :func:`predictive_density` and :func:`surprisal`.
    """
    rho, s = predictive_density(logits), surprisal(logits, ids)
    check_finite(rho, "predictive density")
    check_finite(s, "surprisal")
    pearson, spearman = _correlations(rho.numpy(), s.numpy())
    return {
        "definition": "density[t-1] = d_FR(softmax(logits[t-1]), softmax(logits[t]))^2, "
                      "surprisal[t-1] = -ln p(x_t | x_<t), for t = 1..n-1",
        "density": rho.tolist(), "surprisal": s.tolist(),
        "density_mean": float(rho.mean()), "surprisal_mean": float(s.mean()),
        "bits_per_token": float(s.mean()) / math.log(2),
        "pearson": pearson, "spearman": spearman,
    }
