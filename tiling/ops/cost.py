"""Segmentation of tiles and the exact operation count of the adaptive scan (seed 000 §3.5.1).

A tile of ``n_i`` tokens at resolution ``R_i`` is cut into ``m_i = max(1, ⌈R_i·n_i⌉)`` segments
(seed 001 §3.2.1: the tile processes ``O(R_i·n_i)`` recurrence steps). ``scan_cost`` counts the
exponentials and multiply-adds of :func:`tiling.ops.adaptive_selective_scan`, split into the
recurrence part (∝ ``Σ_i m_i·S_i``, which falls with the resolution — the quantity Theorem 3.4
of seed 000 is about) and the full-length part (input aggregation and read-out, ∝ ``L``).
"""
from __future__ import annotations

import torch

from infogeo.checks import check_int, check_in_range, check_tensor

Tensor = torch.Tensor


_MAX_TILES = 2 ** 31 - 1


def tile_lengths(L: int, tile_size: int) -> Tensor:
    """Lengths ``n_i = min(T, L − i·T)`` of the ``⌈L/T⌉`` tiles (the last tile may be shorter)."""
    L = check_int(L, "L", minimum=1)
    T = check_int(tile_size, "tile_size", minimum=1)
    n_tiles = -(-L // T)
    if n_tiles > _MAX_TILES:
        raise ValueError(f"L / tile_size = {L} / {T} gives {n_tiles} tiles, more than {_MAX_TILES} (the kernels index "
                         "tiles with int32); use a larger tile_size")
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
    check_tensor(resolution, "resolution", min_ndim=1)
    check_tensor(lengths, "lengths", ndim=1, floating=False, finite=False)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    if resolution.shape[-1] != lengths.shape[0]:
        raise ValueError(f"resolution must have n_tiles = {lengths.shape[0]} (the length of lengths) in its last "
                         f"dimension, got shape {tuple(resolution.shape)}")
    if bool((lengths < 1).any()):
        raise ValueError(f"lengths must be >= 1, got min {int(lengths.min())}")
    check_in_range(resolution, "resolution", 0.0, 1.0, low_open=True)
    res = resolution.detach().to(torch.float64)
    n = lengths.to(device=res.device, dtype=torch.float64)
    eps = torch.finfo(resolution.dtype).eps if resolution.is_floating_point() else 0.0
    m = torch.ceil(res * n - n * eps).to(torch.int64)
    return torch.minimum(m.clamp_min(1), lengths.to(device=res.device, dtype=torch.int64))


def _per_tile(x: Tensor | float | int | None, default: float, n_tiles: int, name: str, dtype) -> Tensor:
    if x is None:
        return torch.full((1, n_tiles), default, dtype=dtype)
    if isinstance(x, bool) or not isinstance(x, (torch.Tensor, float, int)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(x).__name__}")
    if dtype == torch.int64 and isinstance(x, float):
        raise TypeError(f"{name} must be an int or an integer tensor, got float {x}")
    if isinstance(x, torch.Tensor):
        check_tensor(x, name, floating=False, finite=False)
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        if dtype == torch.int64 and x.is_floating_point():
            raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
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
    if R.shape[0] != S.shape[0] and 1 not in (R.shape[0], S.shape[0]):
        raise ValueError(f"resolution and state_dims must have the same batch, got {tuple(R.shape)} and {tuple(S.shape)}")
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


def block_unit_costs(*, d_model: int, d_state: int, d_inner: int, dt_rank: int, d_conv: int = 4, bias: bool = False,
                     conv_bias: bool = True) -> dict[str, int]:
    """Multiply-adds of the Mamba mixer per token it processes, by part (seed 000 §3.5.1).

    ``in_proj`` ``2·E·d (+2E)``, ``conv`` ``E·K (+E)``, ``x_proj`` ``E·(r + 2N)``, ``dt_proj``
    ``r·E (+E)``, ``scan`` ``E·(4N + 3)`` (:func:`scan_cost` at ``R = 1``: ``3N`` recurrence,
    ``2`` input sums, ``N + 1`` read-out), ``out_proj`` ``E·d (+d)``, with ``E`` = d_inner,
    ``d`` = d_model, ``r`` = dt_rank, ``N`` = d_state, ``K`` = d_conv (bias terms in brackets)."""
    E, d, r, N, K = (check_int(v, n, minimum=1) for v, n in ((d_inner, "d_inner"), (d_model, "d_model"),
                                                               (dt_rank, "dt_rank"), (d_state, "d_state"),
                                                               (d_conv, "d_conv")))
    return {
        "in_proj": 2 * E * d + (2 * E if bias else 0),
        "conv": E * K + (E if conv_bias else 0),
        "x_proj": E * (r + 2 * N),
        "dt_proj": r * E + E,
        "scan": E * (4 * N + 3),
        "out_proj": E * d + (d if bias else 0),
    }


def signal_cost_per_token(signal: str, *, d_model: int, d_state: int, dt_rank: int, signal_channels: int = 128,
                          router_rank: int = 0) -> tuple[int, int]:
    """``(multiply-adds, of which matmul)`` per token of the block scope's resolution signal.

    ``"linear"``: ``d·(r + N) + k·r`` (matmuls) ``+ k + N + 1`` (squares, sums, product);
    ``"token"``: ``2·rank·d`` (matmuls) ``+ 3·rank`` (the cosine); ``"none"``: 0."""
    d, N, r, k = d_model, d_state, dt_rank, signal_channels
    if signal == "linear":
        return d * (r + N) + k * r + k + N + 1, d * (r + N) + k * r
    if signal == "token":
        q = check_int(router_rank, "router_rank", minimum=1)
        return 2 * q * d + 3 * q, 2 * q * d
    return 0, 0


def layer_cost(
    L: int,
    *,
    d_model: int,
    d_state: int,
    d_inner: int,
    dt_rank: int,
    d_conv: int = 4,
    tile_size: int = 64,
    scope: str = "block",
    batch: int = 1,
    compact_length: int | None = None,
    resolution: Tensor | float | None = None,
    state_dims: Tensor | int | None = None,
    routing: bool = False,
    signal: str = "linear",
    signal_channels: int = 128,
    router_rank: int = 0,
    bias: bool = False,
    conv_bias: bool = True,
    signal_maps: bool = True,
) -> dict[str, int]:
    """Multiply-adds of a whole ``TiledMamba`` block on a batch, as it runs (seed 000 §3.5.1).

    Scope ``"block"``: the mixer runs on ``compact_length`` tokens per row (``L_c``, the padded
    compact length; default ``L``, i.e. budget 1), so every part of :func:`block_unit_costs` is
    multiplied by ``batch·L_c``, except the conv, which computes ``L_c + K − 1`` outputs (its
    causal padding) of which the last ``K − 1`` are dropped. Per token of the *full* sequence
    come the resolution signal and the chunking:

    * ``signal="linear"`` (:func:`tiling.modules.signal.linear_density`): ``d·(r + N)`` for the
      sketch, ``k·r`` for Δ on ``k = signal_channels`` channels, ``k + N + 1`` for the squares and
      the product; ``(r + N)·E·d`` for the composite map (``signal_maps``), once per weight
      update (the layer caches it until a weight changes: count it per training step, and pass
      ``signal_maps=False`` for inference calls that find it cached);
    * ``signal="token"`` (:class:`tiling.modules.router.TokenRouter`): ``2·rank·d`` for the
      query and key maps, ``3·rank`` for the cosine;
    * ``signal="none"``: nothing (budget 1, or an external density);
    * ``pooling`` (when ``L_c < L``): ``d`` per token (the segmented sum) and ``2d`` per segment
      (the mean and the gate); the upsampling is a gather (no arithmetic).

    Scope ``"scan"``: every projection runs on ``L`` tokens, the scan costs
    :func:`scan_cost` at the plan's ``resolution``/``state_dims`` (with the boundary map), the
    density ``ρ_t`` costs ``3E + N + 1`` per token (softplus-free part: ``Δ²``, the sum, ``‖B‖²``;
    not counted with ``signal="none"``: at budget 1 no policy runs), and routing
    (``routing=True``) ``E·(N + 4)`` per tile boundary.

    Returns
    -------
    dict of int: the parts (``in_proj``, ``conv``, ``x_proj``, ``dt_proj``, ``scan``, ``out_proj``,
    ``signal_maps``, ``signal``, ``pooling``, ``routing``, ``density``), ``matmul`` (the parts
    that are matrix products or convolutions, without bias terms: what
    ``torch.utils.flop_counter.FlopCounterMode`` counts, at 2 FLOPs per multiply-add), and
    ``total``.
    """
    L = check_int(L, "L", minimum=1)
    batch = check_int(batch, "batch", minimum=1)
    if scope not in ("block", "scan"):
        raise ValueError(f"scope must be one of ['block', 'scan'], got {scope!r}")
    if signal not in ("linear", "token", "none"):
        raise ValueError(f"signal must be one of ['linear', 'token', 'none'], got {signal!r}")
    E, d, r, N, K = d_inner, d_model, dt_rank, d_state, d_conv
    unit = block_unit_costs(d_model=d, d_state=N, d_inner=E, dt_rank=r, d_conv=K, bias=bias, conv_bias=conv_bias)
    unit_mm = block_unit_costs(d_model=d, d_state=N, d_inner=E, dt_rank=r, d_conv=K, bias=False, conv_bias=False)
    unit_mm["dt_proj"] -= E  # the dt bias is added by the scan (softplus), not by a matmul
    out = dict.fromkeys(("in_proj", "conv", "x_proj", "dt_proj", "scan", "out_proj", "signal_maps", "signal",
                         "pooling", "routing", "density"), 0)
    if scope == "block":
        Lc = L if compact_length is None else check_int(compact_length, "compact_length", minimum=1, maximum=L)
        tokens = {k: batch * Lc for k in unit}
        tokens["conv"] = batch * (Lc + K - 1)
        for k in unit:
            out[k] = unit[k] * tokens[k]
        matmul = sum(unit_mm[k] * tokens[k] for k in ("in_proj", "conv", "x_proj", "dt_proj", "out_proj"))
        k_ch = check_int(signal_channels, "signal_channels", minimum=1)
        per_tok, per_tok_mm = signal_cost_per_token(signal, d_model=d, d_state=N, dt_rank=r, signal_channels=k_ch,
                                                    router_rank=router_rank)
        n_sig = L - 1 if signal == "token" else L  # the router's first token is a boundary by definition
        out["signal"] = batch * n_sig * per_tok
        matmul += batch * n_sig * per_tok_mm
        if signal == "linear" and signal_maps:
            out["signal_maps"] = (r + N) * E * d + ((r + N) * E if bias else 0)
            matmul += (r + N) * E * d
        if Lc < L:
            out["pooling"] = batch * (L * d + 2 * Lc * d)
    else:
        T = check_int(tile_size, "tile_size", minimum=1)
        for k in unit:
            out[k] = unit[k] * batch * L
        out["conv"] = unit["conv"] * batch * (L + K - 1)
        sc = scan_cost(L, T, resolution, state_dims, N, E, boundary_gain=True)
        shaped = [torch.as_tensor(t) for t in (resolution, state_dims) if t is not None]
        rows = max([int(t.shape[0]) for t in shaped if t.dim() == 2] + [1])
        out["scan"] = sc["madd_total"] * (batch if rows == 1 else 1)
        out["density"] = 0 if signal == "none" else batch * L * (3 * E + N + 1)
        matmul = sum(unit_mm[k] * batch * L for k in ("in_proj", "x_proj", "dt_proj", "out_proj"))
        matmul += unit_mm["conv"] * batch * (L + K - 1)
        if routing:
            out["routing"] = batch * E * (N + 4) * (-(-L // T) - 1)
            matmul += batch * E * N * (-(-L // T) - 1)  # the read-out C·s_i, an einsum (a bmm)
    out["matmul"] = matmul
    out["total"] = sum(v for k, v in out.items() if k != "matmul")
    return out


__all__ = [
    "tile_lengths", "segment_counts", "scan_cost", "layer_cost", "block_unit_costs", "signal_cost_per_token",
]
