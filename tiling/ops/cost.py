"""Segmentation of tiles and the exact operation count of the adaptive scan (seed 000 §3.5.1).

A tile of ``n_i`` tokens at resolution ``R_i`` is cut into ``m_i = max(1, ⌈R_i·n_i⌉)`` segments
(seed 001 §3.2.1: the tile processes ``O(R_i·n_i)`` recurrence steps). ``scan_cost`` counts the
exponentials and multiply-adds of :func:`tiling.ops.adaptive_selective_scan`, split into the
recurrence part (∝ ``Σ_i m_i·S_i``, which falls with the resolution — the quantity Theorem 3.4
of seed 000 is about) and the full-length part (input aggregation and read-out, ∝ ``L``).
"""
from __future__ import annotations

import torch

from infogeo._checks import check_int, check_in_range

Tensor = torch.Tensor


def tile_lengths(L: int, tile_size: int) -> Tensor:
    """Lengths ``n_i = min(T, L − i·T)`` of the ``⌈L/T⌉`` tiles (the last tile may be shorter)."""
    L = check_int(L, "L", minimum=1)
    T = check_int(tile_size, "tile_size", minimum=1)
    n_tiles = -(-L // T)
    lengths = torch.full((n_tiles,), T, dtype=torch.int64)
    lengths[-1] = L - (n_tiles - 1) * T
    return lengths


def segment_counts(resolution: Tensor, lengths: Tensor) -> Tensor:
    """Number of segments per tile, ``m_i = max(1, ⌈R_i·n_i⌉)`` (seed 001 §3.2.2, §3.5.1).

    Parameters
    ----------
    resolution : (..., n_tiles) floating tensor in (0, 1].
    lengths : (n_tiles,) integer tile lengths ``n_i``.

    Returns
    -------
    (..., n_tiles) int64 tensor with ``1 <= m_i <= n_i``.

    Departure from the text: the product ``R_i·n_i`` is evaluated in float64 and reduced by
    ``n_i·eps`` of ``resolution``'s dtype before the ceiling, so that the representation error of
    a value such as float32 ``0.3`` (stored as 0.30000001) does not add a segment.
    """
    res = resolution.detach().to(torch.float64)
    n = lengths.to(device=res.device, dtype=torch.float64)
    eps = torch.finfo(resolution.dtype).eps if resolution.is_floating_point() else 0.0
    m = torch.ceil(res * n - n * eps).to(torch.int64)
    return torch.minimum(m.clamp_min(1), lengths.to(device=res.device, dtype=torch.int64))


def _per_tile(x: Tensor | float | int | None, default: float, n_tiles: int, name: str, dtype) -> Tensor:
    if x is None:
        return torch.full((1, n_tiles), default, dtype=dtype)
    t = torch.as_tensor(x, dtype=dtype).detach().cpu()
    if t.dim() == 0:
        return t.expand(1, n_tiles).clone()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[1] != n_tiles:
        raise ValueError(f"{name} must be a scalar or have shape (n_tiles,) or (batch, n_tiles) with "
                         f"n_tiles = {n_tiles}, got {tuple(t.shape)}")
    return t


def scan_cost(
    L: int,
    tile_size: int,
    resolution: Tensor | float | None,
    state_dims: Tensor | int | None,
    N: int,
    dim: int,
    *,
    boundary_gain: bool = False,
    groups: int = 1,
) -> dict[str, int]:
    """Exact counts of exponentials and multiply-adds of the adaptive scan (seed 000 §3.5.1).

    For ``dim`` channels, tiles ``i`` of length ``n_i``, ``m_i`` segments and ``S_i`` active
    state components (``resolution``/``state_dims`` may be scalars, ``(n_tiles,)`` or
    ``(batch, n_tiles)``; a batch is summed), the op performs per channel:

    * recurrence, per segment and active component: one exponential ``exp(Δ̄_S A_n)`` and three
      multiply-adds (``Δ̄_S·A_n``, ``U_S·B̄_S,n``, ``a·h + ·``); per tile and inactive component
      (``S_i < N``): one exponential and two multiply-adds (``A_n·ΣΔ``, ``·h``)::

          exp_recurrence  = dim·Σ_i (m_i S_i + N − S_i)
          madd_recurrence = dim·Σ_i (3 m_i S_i + 2 (N − S_i))

    * boundary transition (``boundary_gain=True``), per tile ``i > 0`` and component: one
      exponential and two multiply-adds (``g·(R_i − R_{i−1})``, ``·h``);
    * input aggregation, per token and channel: ``U += Δ_t u_t`` and ``Δ̄ += Δ_t`` (two
      multiply-adds); and, once per group of ``B`` (``groups`` = G, shared by its ``dim/G``
      channels), for segments longer than one token the mean ``B̄``: ``N`` per token plus ``N``
      per segment (the scaling by ``1/|S|``)::

          madd_input = dim·Σ_i 2 n_i + G·N·Σ_{i, |S|>1} (|S| + 1)

    * read-out, per token: ``Σ_{n<S_i} C_t,n h_n + D u_t`` (``S_i + 1`` multiply-adds).

    Departure from a per-channel count: ``B̄`` does not depend on the channel, so the kernels
    compute it once per (batch, group) for all ``N`` components (the float64 reference, written
    for readability, recomputes it per channel; that is not what is counted).

    The pointwise maps softplus (of Δ) and silu (of z) cost ``O(dim·L)`` independent of the
    resolution and are not counted.

    Returns
    -------
    dict with integer entries ``segments`` (Σ m_i), ``exp_recurrence``, ``madd_recurrence``,
    ``exp_boundary``, ``madd_boundary``, ``madd_input``, ``madd_readout``, ``exp_total``,
    ``madd_total``.
    """
    L = check_int(L, "L", minimum=1)
    T = check_int(tile_size, "tile_size", minimum=1)
    N = check_int(N, "N", minimum=1)
    dim = check_int(dim, "dim", minimum=1)
    G = check_int(groups, "groups", minimum=1, maximum=dim)
    lengths = tile_lengths(L, T)
    n_tiles = lengths.numel()
    R = _per_tile(resolution, 1.0, n_tiles, "resolution", torch.float64)
    check_in_range(R, "resolution", 0.0, 1.0, low_open=True)
    S = _per_tile(state_dims, N, n_tiles, "state_dims", torch.int64)
    if bool(((S < 1) | (S > N)).any()):
        raise ValueError(f"state_dims must lie in [1, N] = [1, {N}], got values in [{int(S.min())}, {int(S.max())}]")
    R, S = torch.broadcast_tensors(R, S)
    m = segment_counts(R, lengths)
    batch = R.shape[0]
    n = lengths.unsqueeze(0).expand_as(m)
    # segment lengths are q = ⌊n/m⌋ (m − r of them) and q + 1 (r = n mod m of them)
    q, r = n // m, n % m
    long_tokens = torch.where(q >= 2, n, 2 * r)  # tokens in segments longer than one token
    long_segs = torch.where(q >= 2, m, r)
    exp_rec = dim * int((m * S + (N - S)).sum())
    madd_rec = dim * int((3 * m * S + 2 * (N - S)).sum())
    exp_bd = dim * N * (n_tiles - 1) * batch if boundary_gain else 0
    madd_bd = 2 * exp_bd
    madd_in = dim * int((2 * n).sum()) + G * N * int((long_tokens + long_segs).sum())
    madd_out = dim * int(((S + 1) * lengths.unsqueeze(0)).sum())
    return {
        "segments": int(m.sum()),
        "exp_recurrence": exp_rec,
        "madd_recurrence": madd_rec,
        "exp_boundary": exp_bd,
        "madd_boundary": madd_bd,
        "madd_input": madd_in,
        "madd_readout": madd_out,
        "exp_total": exp_rec + exp_bd,
        "madd_total": madd_rec + madd_bd + madd_in + madd_out,
    }


__all__ = ["tile_lengths", "segment_counts", "scan_cost"]
