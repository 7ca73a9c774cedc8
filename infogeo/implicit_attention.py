r"""The implicit attention of a Mamba layer: the scan written as a causal matrix.

Ali, Zimerman & Wolf (2024), "The Hidden Attention of Mamba Models", observe that the selective
scan of a Mamba mixer (Gu & Dao 2023),

.. math::  h_t = e^{\Delta_t A} h_{t-1} + \Delta_t B_t u_t, \qquad y_t = C_t^\top h_t + D u_t

(per channel c: Δ_t = Δ_{t,c} > 0, A = diag(A_{c,1..N}) < 0, B_t, C_t ∈ R^N shared by the
channels), unrolls into a causal, data-dependent linear map y = M u + D u with

.. math::  M_c[t, s] = C_t^\top \Big(\prod_{s<r\le t} e^{\Delta_{r,c} A_c}\Big)\Delta_{s,c} B_s
           = \sum_n C_{t,n}\, e^{A_{c,n}(S_c[t]-S_c[s])}\,\Delta_{s,c} B_{s,n}\quad(s\le t),

:math:`S_c[t] = \sum_{r\le t}\Delta_{r,c}`, and M_c[t, s] = 0 for s > t. Row t of M_c says how
much of token s's value u_s reaches y_t: the hidden attention of the layer. This module computes
M exactly (float64, every channel) and turns it into the attention rows the geometry of
:mod:`tiling.workflows.analysis` reads (seed 000 §3.1.1: a row is a point of the categorical family).

**Algorithm.** M_c is N-semiseparable. With blocks of Q tokens, a block pair (i, j), j ≤ i, is
the rank-N product

.. math::  M_c[I, J] = \big(C_t e^{A(S[t]-S[a_i])}\big)_{t\in I}\;
           \operatorname{diag}\big(e^{A(S[a_i]-S[a_j])}\big)\;
           \big(e^{-A(S[s]-S[a_j])}\Delta_s B_s\big)_{s\in J}

(a_i the first token of block i; masked to s ≤ t when i = j). The exponents add up to
A(S[t] − S[s]), and floating-point products keep their relative accuracy, so the product equals
the closed form up to rounding — exact in float64, not an approximation — provided no factor
leaves float64's range; Q is halved until the growing factor e^{−A(S[s]−S[a_j])} stays below
e^{600} (see :func:`_column_blocks`). Cost per channel: T·N exponentials and T²·N/2
multiply-adds as batched matrix products (the upper triangle is never computed), instead of
T²·N/2 exponentials.

**The distribution (departure, documented in docs/analysis.md).** M_c[t, ·] is signed and not
normalised, so it is not a point of a simplex. The analysis uses

.. math::  P_c[t, s] = |M_c[t, s]| \Big/ \sum_{s'\le t} |M_c[t, s']| ,

and averages P_c over a group of channels (a "head": a mixture of categorical distributions is
one). This keeps *where* each output reads from and loses: the sign of each contribution (a
token that is subtracted counts like one that is added), the row's total gain (how much the
past matters against the skip D u_t and against other rows), the value u_s itself (M weighs
u_s, it is not the contribution M[t,s]·u_s), the output gate SiLU(z_t), and the differences
between the channels of a group. A row whose magnitudes are all zero (C_t = 0, or every
Δ_s B_s = 0) has no distribution; it is put on the diagonal (s = t) and counted in
``zero_rows``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_finite, check_int, check_tensor

Tensor = torch.Tensor

__all__ = ["ScanInputs", "scan_inputs", "implicit_attention", "scan_recurrence", "attention_output", "layer_output",
           "attention_rows", "MAX_TOKENS"]

#: tokens up to which :func:`implicit_attention` is offered (a (channels, T, T) float64 matrix)
MAX_TOKENS = 1024


@dataclass(frozen=True)
class ScanInputs:
    """The selective scan's inputs of one mixer on one text, float64, channel-first.

    Attributes
    ----------
    u : (D, T) the conv output the scan reads.
    z : (D, T) the gate.
    delta : (D, T) Δ = softplus(dt_proj(·) + b).
    A : (D, N), negative.
    B, C : (N, T).
    skip : (D,) the skip weight D.
    """

    u: Tensor
    z: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    skip: Tensor


_MIXER_PARAMS = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj")


def _check_mixer(mixer: nn.Module) -> None:
    missing = [n for n in _MIXER_PARAMS if getattr(mixer, n, None) is None]
    if missing:
        raise ValueError(f"mixer {type(mixer).__name__} lacks {missing}; expected an HF MambaMixer or a "
                         f"tiling TiledMamba (parameters {', '.join(_MIXER_PARAMS)})")
    act = getattr(mixer, "activation", "silu")
    if act != "silu":
        raise ValueError(f"mixer activation {act!r} is not supported; expected 'silu' (Mamba's)")


def scan_inputs(mixer: nn.Module, x: Tensor) -> ScanInputs:
    """Recompute, in float64, the scan inputs of ``mixer`` for its input ``x``.

    Parameters
    ----------
    mixer : an HF ``MambaMixer`` or a :class:`tiling.modules.TiledMamba` (same parameter names
        and shapes, SiLU activation).
    x : (T, d_model) the mixer's input.

    Returns
    -------
    :class:`ScanInputs` on the CPU.

    Raises
    ------
    ValueError
        ``mixer`` lacks a Mamba parameter or has another activation, or ``x`` is not a finite
        (T, d_model) tensor.

    Notes
    -----
    The shapes are read from the parameters: D = A_log.shape[0], N = A_log.shape[1], the Δ rank
    = dt_proj.in_features. The steps are Mamba's (``MambaMixer.forward``): in_proj → (x, z);
    causal depthwise conv + SiLU; x_proj → (δ, B, C); Δ = softplus(dt_proj δ + b); A = −exp(A_log).
    """
    _check_mixer(mixer)
    check_tensor(x, "x", ndim=2)
    T = x.shape[0]
    f64 = lambda t: None if t is None else t.detach().to("cpu", torch.float64)
    x = f64(x)
    D, N = mixer.A_log.shape
    r = mixer.dt_proj.weight.shape[1]
    xz = F.linear(x, f64(mixer.in_proj.weight), f64(mixer.in_proj.bias)).T  # (2D, T)
    u, z = xz[:D], xz[D:]
    k = mixer.conv1d.weight.shape[-1]
    u = F.silu(F.conv1d(u[None], f64(mixer.conv1d.weight), f64(mixer.conv1d.bias), padding=k - 1, groups=D)[0, :, :T])
    dbc = f64(mixer.x_proj.weight) @ u  # (r + 2N, T)
    delta = F.softplus(f64(mixer.dt_proj.weight) @ dbc[:r] + f64(mixer.dt_proj.bias)[:, None])
    return ScanInputs(u=u, z=z, delta=delta, A=-torch.exp(f64(mixer.A_log)), B=dbc[r:r + N], C=dbc[r + N:],
                      skip=f64(mixer.D))


_EXP_RANGE = 600.0  # |exponent| of every factor: e^±600 is far inside float64's range (e^±708)


def _column_blocks(s: ScanInputs, sl: slice, block: int) -> tuple[list[Tensor], int]:
    """M of channels ``sl`` by key blocks: ``(cols, Q)``, ``cols[j]`` (c, T' − jQ, Q) holds
    M[jQ:, jQ:(j+1)Q] (the rows that can see block j; T' = T rounded up to Q, padded rows and
    columns are zero). The upper triangle is never computed.

    With the reference point S[a_i] of every block (a_i its first token),
    M[I, J] = L_I diag(e^{A(S[a_i] − S[a_j])}) R_J for j ≤ i, L_I = C_t e^{A(S_t − S[a_i])},
    R_J = e^{−A(S_s − S[a_j])} Δ_s B_s, masked to s ≤ t in the diagonal block; the exponents add
    up to A(S_t − S_s). Floating-point products keep their relative accuracy, so this is exact up
    to rounding as long as L and R stay in float64's range: Q is halved until every
    |A_n|·(S[e_i] − S[a_i]) ≤ ``_EXP_RANGE`` (always true at Q = 1, where L = C_t and R = Δ_s B_s).
    The middle factor may underflow to 0 for distant blocks; the entry it drops is then below
    e^{600 − 745} of |C_t|·|Δ_s B_s|.
    """
    delta, A = s.delta[sl], s.A[sl]  # (c, T), (c, N)
    c, T = delta.shape
    Q = min(block, T)
    while True:
        nb = -(-T // Q)
        dl = F.pad(delta, (0, nb * Q - T))  # padding: Δ = 0, B = C = 0 → zero rows and columns
        span = dl.view(c, nb, Q)[:, :, 1:].sum(-1).max(-1).values  # (c,) largest S[e_i] − S[a_i]
        if Q == 1 or bool((A.abs().max(-1).values * span <= _EXP_RANGE).all()):
            break
        Q = max(1, Q // 2)
    pad = nb * Q - T
    B, C = F.pad(s.B, (0, pad)), F.pad(s.C, (0, pad))  # (N, T')
    Sb = dl.cumsum(-1).view(c, nb, Q)
    ref = Sb[:, :, 0]  # S[a_i], (c, nb)
    rel = (Sb - ref[..., None])[:, None]  # (c, 1, nb, Q): S_t − S[a_i] ∈ [0, span]
    An = A[:, :, None, None]  # (c, N, 1, 1)
    left = C.view(1, -1, nb, Q) * torch.exp(An * rel)  # (c, N, nb, Q)
    right = (dl.view(c, 1, nb, Q) * B.view(1, -1, nb, Q)) * torch.exp(-An * rel)  # (c, N, nb, Q)
    causal = torch.tril(torch.ones(Q, Q, dtype=torch.bool))
    cols = []
    for j in range(nb):
        mid = torch.exp(An[..., 0] * (ref[:, None, j:] - ref[:, None, j:j + 1]))  # (c, N, nb − j): e^{A(S[a_i] − S[a_j])}
        lm = (left[:, :, j:] * mid[..., None]).permute(0, 2, 3, 1).reshape(c, -1, A.shape[1])  # (c, (nb−j)Q, N)
        col = torch.bmm(lm, right[:, :, j])  # (c, (nb − j)Q, Q)
        col[:, :Q].mul_(causal)
        cols.append(col)
    return cols, Q


def implicit_attention(s: ScanInputs, *, channels: slice | None = None, block: int = 32) -> Tensor:
    """The implicit attention matrix M of the selected channels.

    Parameters
    ----------
    s : the scan inputs (:func:`scan_inputs`), T ≤ :data:`MAX_TOKENS`.
    channels : the channels to compute (default all).
    block : the largest block size Q tried (a speed knob only).

    Returns
    -------
    M (c, T, T), float64, lower triangular.

    Raises
    ------
    ValueError
        ``block`` < 1, T > :data:`MAX_TOKENS`, or M is not finite.

    Notes
    -----
    Exact up to rounding (module docstring: blockwise semiseparable products whose factors stay
    within float64's range).
    """
    block = check_int(block, "block", minimum=1)
    T = s.delta.shape[1]
    if T > MAX_TOKENS:
        raise ValueError(f"implicit attention is computed for at most {MAX_TOKENS} tokens, got {T}")
    cols, Q = _column_blocks(s, channels if channels is not None else slice(None), block)
    n = len(cols) * Q
    M = torch.zeros(cols[0].shape[0], n, n, dtype=torch.float64)
    for j, col in enumerate(cols):
        M[:, j * Q:, j * Q:(j + 1) * Q] = col
    return check_finite(M[:, :T, :T], "implicit attention")


def scan_recurrence(s: ScanInputs) -> Tensor:
    """Output of the selective scan by its recurrence, float64.

    Parameters
    ----------
    s : the scan inputs (:func:`scan_inputs`).

    Returns
    -------
    y (D, T).

    Notes
    -----
    h_t = e^{Δ_t A} h_{t−1} + Δ_t B_t u_t, y_t = C_tᵀ h_t + D u_t (Gu & Dao 2023, eq. 2a–2b, A
    discretised by zero-order hold); the reference M is tested against, and O(T·D·N) where M is
    O(T²·D·N).
    """
    D, T = s.delta.shape
    dA = torch.exp(s.delta.T[:, :, None] * s.A[None])  # (T, D, N)
    dBu = (s.delta * s.u).T[:, :, None] * s.B.T[:, None, :]  # (T, D, N)
    h = torch.zeros_like(dA[0])
    y = torch.empty(T, D, dtype=torch.float64)
    for t in range(T):
        h = dA[t] * h + dBu[t]
        y[t] = h @ s.C[:, t]
    return y.T + s.skip[:, None] * s.u


def attention_output(M: Tensor, s: ScanInputs) -> Tensor:
    """y = M u + D u: the scan's output through its implicit attention.

    Parameters
    ----------
    M : (D, T, T) implicit attention of all channels (:func:`implicit_attention`).
    s : the scan inputs M was computed from.

    Returns
    -------
    y (D, T).
    """
    return torch.einsum("cts,cs->ct", M, s.u) + s.skip[:, None] * s.u


def layer_output(mixer: nn.Module, s: ScanInputs, y: Tensor) -> Tensor:
    """out_proj(y ⊙ SiLU(z)): the mixer's output from its scan output.

    Parameters
    ----------
    mixer : the mixer ``s`` was computed from.
    s : the scan inputs (for the gate z).
    y : (D, T) scan output.

    Returns
    -------
    (T, d_model) float64 tensor.
    """
    b = mixer.out_proj.bias
    return F.linear((y * F.silu(s.z)).T, mixer.out_proj.weight.detach().to("cpu", torch.float64),
                    None if b is None else b.detach().to("cpu", torch.float64))


def attention_rows(s: ScanInputs, groups: int, *, chunk: int = 32, block: int = 32) -> tuple[Tensor, int]:
    """Row-normalised magnitudes of M averaged over ``groups`` equal groups of channels.

    Parameters
    ----------
    s : the scan inputs (:func:`scan_inputs`), T ≤ :data:`MAX_TOKENS`.
    groups : number of channel groups; must divide D.
    chunk : channels processed at a time (at most the group size, rounded down to a divisor of
        it), so that only (chunk, T, T) is held.
    block : as in :func:`implicit_attention`.

    Returns
    -------
    ``(P, zero_rows)``: P (groups, T, T), rows on the simplex (zeros above the diagonal),
    P_g[t] = mean_{c ∈ g} |M_c[t]| / Σ_s |M_c[t, s]| (module docstring), and the number of
    (channel, row) pairs whose magnitudes were all zero (put on the diagonal).

    Raises
    ------
    ValueError
        ``groups`` does not divide D, T > :data:`MAX_TOKENS`, or M is not finite.
    """
    D, T = s.delta.shape
    groups = check_int(groups, "groups", minimum=1, maximum=D)
    if D % groups:
        raise ValueError(f"groups must divide the {D} channels of the layer, got {groups}")
    if T > MAX_TOKENS:
        raise ValueError(f"implicit attention is computed for at most {MAX_TOKENS} tokens, got {T}")
    size = D // groups
    chunk = max(d for d in range(1, min(check_int(chunk, "chunk", minimum=1), size) + 1) if size % d == 0)
    P = torch.zeros(groups, T, T, dtype=torch.float64)
    zero = 0
    for c0 in range(0, D, chunk):
        cols, Q = _column_blocks(s, slice(c0, c0 + chunk), block)
        n = len(cols) * Q
        tot = torch.zeros(cols[0].shape[0], n, dtype=torch.float64)
        for j, col in enumerate(cols):
            tot[:, j * Q:] += col.abs_().sum(-1)  # Σ_s |M[t, s]|
        check_finite(tot, "implicit attention (row sums of |M|)")  # an Inf or NaN entry shows in its row's sum
        empty = tot[:, :T] == 0
        zero += int(empty.sum())
        inv = torch.where(tot == 0, 0.0, 1.0 / tot)
        Pg = P[c0 // size]
        for j, col in enumerate(cols):
            a, b = j * Q, min((j + 1) * Q, T)
            if a < T:
                Pg[a:, a:b] += (col.mul_(inv[:, a:, None]).sum(0))[:T - a, :b - a]
    P /= size
    # a channel's row with no magnitude at all adds nothing; its share 1/size goes to the diagonal
    P.diagonal(dim1=-2, dim2=-1).add_((1.0 - P.sum(-1)).clamp_min(0))
    return P, zero
