r"""The Fisher metric of a predictive distribution pulled back to hidden states (seed 000 §3.1.1).

"The information metric of a token": for h ↦ p(h) = softmax(logits(h)), the Fisher metric of the
categorical family in logit coordinates, diag p − p pᵀ, pulled back by the logit map,

.. math::  G(h) = J(h)^\top(\operatorname{diag}p - pp^\top)J(h), \qquad J = \partial\,\mathrm{logits}/\partial h.

:func:`pullback_metric` forms G for any torch function with ``torch.func``;
:func:`pullback_quadratic_form` gives vᵀG(h)v from one JVP without forming J;
:func:`linear_softmax_metric` and :func:`attention_row_metric` are the exact, cheaper forms for a
linear-softmax head and an attention row. G is positive semi-definite but singular in general:
:mod:`infogeo.fisher.metric` regularises it for inverses and log-determinants.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch.func import jacfwd, jacrev, jvp, vmap

from infogeo.checks import (
    check_choice,
    check_finite,
    check_int,
    check_precise,
    check_same_device,
    check_tensor,
)
from infogeo.fisher._common import _auto_chunk, _require_tensors

Tensor = torch.Tensor


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
