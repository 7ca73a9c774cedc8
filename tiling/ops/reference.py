"""Readable float64 reference of the resolution-adaptive selective scan (seed 001 §3.2–3.4).

This file *defines* the semantics; the fused kernels (``kernels_cuda/``) are tested against it.
It loops over batch rows, tiles and segments and is meant for float64 tests and as the fallback
when no C++ compiler works, not for speed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from infogeo.checks import check_in_range, check_int, check_same_device, check_tensor
from tiling.ops.cost import segment_counts, tile_lengths

Tensor = torch.Tensor


@dataclass(frozen=True)
class ScanInputs:
    """Validated, normalised inputs of the scan (:func:`validate_scan_inputs`).

    Attributes
    ----------
    u, delta, A, D, z, delta_bias, boundary_gain, initial_state : the arguments as given.
    B, C : grouped as (batch, G, N, L) (a (batch, N, L) argument gains ``G = 1``).
    resolution : (batch, n_tiles), dtype of the input, on ``u``'s device.
    state_dims : (batch, n_tiles) int64, on ``u``'s device.
    seg_counts : (batch, n_tiles) int64 segment counts ``m_i``, on ``u``'s device.
    lengths : (n_tiles,) int64 tile lengths ``n_i``, on the CPU.
    tile_size : the tile length ``T``.
    ungrouped : ``B``, ``C`` were given as (batch, N, L).
    """

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None
    z: Tensor | None
    delta_bias: Tensor | None
    boundary_gain: Tensor | None
    initial_state: Tensor | None
    resolution: Tensor  # (batch, n_tiles), dtype of the input, on u's device
    state_dims: Tensor  # (batch, n_tiles) int64, on u's device
    seg_counts: Tensor  # (batch, n_tiles) int64, on u's device
    lengths: Tensor  # (n_tiles,) int64, on CPU
    tile_size: int
    ungrouped: bool  # B, C were given as (batch, N, L)


def validate_scan_inputs(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, *, tile_size=64, resolution=None,
    state_dims=None, boundary_gain=None, initial_state=None, defer_finite=False,
) -> ScanInputs:
    """Check shapes, dtypes, devices and ranges of the scan arguments; name the culprit.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, tile_size, resolution, state_dims, boundary_gain, initial_state :
        the arguments of :func:`adaptive_selective_scan_ref` (shapes there and in
        :func:`tiling.ops.adaptive_selective_scan`).
    defer_finite : skip the NaN/Inf scan of the full-length tensors ``u, delta, z``; the caller
        must then check the output with :func:`check_scan_output`.

    Returns
    -------
    :class:`ScanInputs`, with ``resolution`` defaulting to 1, ``state_dims`` to ``N`` and the
    segment counts of :func:`tiling.ops.cost.segment_counts`.

    Raises
    ------
    TypeError
        A tensor argument is not a tensor or not floating, ``delta``, ``B``, ``C`` or ``z`` has a
        dtype other than ``u``'s, ``state_dims`` is a tensor without an integer dtype, or
        ``tile_size`` is not an int.
    ValueError
        Tensors live on different devices; a shape does not match (``u`` (batch, dim, L) with all
        sizes ≥ 1, ``A`` (dim, N) with N ≥ 1, ``B`` and ``C`` both (batch, N, L) or both
        (batch, G, N, L) with G dividing dim, ...); a full-length tensor holds NaN/Inf (unless
        ``defer_finite``); ``tile_size < 1`` or too small for the int32 tile index;
        ``resolution`` is outside (0, 1]; ``state_dims`` is outside [1, N].

    Warns
    -----
    RuntimeWarning
        ``A`` has positive entries (the recurrence then grows without bound; accepted).

    Notes
    -----
    Non-contiguous tensors are accepted (the kernels make them contiguous).
    """
    big = not defer_finite
    named = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, boundary_gain=boundary_gain,
                 initial_state=initial_state)
    check_same_device(**{k: v for k, v in named.items() if isinstance(v, torch.Tensor)})
    check_tensor(u, "u", ndim=3, finite=big)
    batch, dim, L = u.shape
    if L < 1 or dim < 1 or batch < 1:
        raise ValueError(f"u must have shape (batch, dim, L) with all sizes >= 1, got {tuple(u.shape)}")
    check_tensor(delta, "delta", shape=(batch, dim, L), finite=big)
    check_tensor(A, "A", ndim=2)
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim, N) = ({dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    if N < 1:
        raise ValueError(f"A must have at least one state column, got shape {tuple(A.shape)}")
    if bool((A > 0).any()):
        warnings.warn("A has positive entries: exp(Δ·A) > 1 and the recurrence is unstable", RuntimeWarning, stacklevel=3)
    check_tensor(B, "B", ndim=(3, 4))
    check_tensor(C, "C", ndim=(3, 4))
    ungrouped = B.dim() == 3
    if B.dim() != C.dim():
        raise ValueError(f"B and C must both be (batch, N, L) or both (batch, G, N, L), got {tuple(B.shape)} and {tuple(C.shape)}")
    G = 1 if ungrouped else B.shape[1]
    for name, t in (("B", B), ("C", C)):
        want = (batch, N, L) if ungrouped else (batch, G, N, L)
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {want} (batch, [G,] N, L), got {tuple(t.shape)}")
    if G < 1 or dim % G != 0:
        raise ValueError(f"B/C groups G = {G} must divide dim = {dim}")
    if D is not None:
        check_tensor(D, "D", shape=(dim,))
    if delta_bias is not None:
        check_tensor(delta_bias, "delta_bias", shape=(dim,))
    if z is not None:
        check_tensor(z, "z", shape=(batch, dim, L), finite=big)
    if boundary_gain is not None:
        check_tensor(boundary_gain, "boundary_gain", shape=(dim, N))
    if initial_state is not None:
        check_tensor(initial_state, "initial_state", shape=(batch, dim, N))
    for name, t in (("delta", delta), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.dtype != u.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but u has {u.dtype}; u, delta, z, B, C must share one dtype")
    T = check_int(tile_size, "tile_size", minimum=1)
    lengths = tile_lengths(L, T)
    n_tiles = lengths.numel()
    dev = u.device
    if resolution is None:
        R = torch.ones(batch, n_tiles, dtype=torch.float32, device=dev)
    elif isinstance(resolution, (float, int)) and not isinstance(resolution, bool):
        check_in_range(float(resolution), "resolution", 0.0, 1.0, low_open=True)
        R = torch.full((batch, n_tiles), float(resolution), dtype=torch.float32, device=dev)
    else:
        check_tensor(resolution, "resolution", shape=(batch, n_tiles))
        check_same_device(u=u, resolution=resolution)
        check_in_range(resolution, "resolution", 0.0, 1.0, low_open=True)
        R = resolution.detach()
    if state_dims is None:
        S = torch.full((batch, n_tiles), N, dtype=torch.int64, device=dev)
    elif isinstance(state_dims, int) and not isinstance(state_dims, bool):
        S = torch.full((batch, n_tiles), check_int(state_dims, "state_dims", minimum=1, maximum=N), dtype=torch.int64, device=dev)
    else:
        check_tensor(state_dims, "state_dims", shape=(batch, n_tiles), floating=False, finite=False)
        if state_dims.is_floating_point() or state_dims.is_complex() or state_dims.dtype == torch.bool:
            raise TypeError(f"state_dims must have an integer dtype, got {state_dims.dtype}")
        check_same_device(u=u, state_dims=state_dims)
        S = state_dims.to(torch.int64)
        if bool(((S < 1) | (S > N)).any()):
            raise ValueError(f"state_dims must lie in [1, N] = [1, {N}], got values in [{int(S.min())}, {int(S.max())}]")
    m = segment_counts(R, lengths)
    B4 = B.unsqueeze(1) if ungrouped else B
    C4 = C.unsqueeze(1) if ungrouped else C
    return ScanInputs(u, delta, A, B4, C4, D, z, delta_bias, boundary_gain, initial_state, R, S, m,
                      lengths, T, ungrouped)


def check_scan_output(y: Tensor, u: Tensor, delta: Tensor, z: Tensor | None) -> None:
    """NaN/Inf guard after a scan whose inputs were validated with ``defer_finite``.

    Parameters
    ----------
    y : the scan output.
    u, delta, z : the scan's full-length inputs (``z`` may be None).

    Raises
    ------
    ValueError
        ``y`` is not finite: naming the first of ``u``, ``delta``, ``z`` that holds NaN/Inf, or,
        with finite inputs, saying that the recurrence overflowed.

    Notes
    -----
    Any NaN/Inf in ``u``, ``delta`` or ``z`` reaches ``y`` (through ``Δu``, the decay or the gate),
    so one reduction of ``y`` detects it; only then are the inputs scanned to name the culprit.
    Finite inputs with a non-finite output mean the recurrence overflowed.
    """
    if bool(torch.isfinite(y.sum())) or bool(torch.isfinite(y).all()):
        return
    for name, t in (("u", u), ("delta", delta), ("z", z)):
        if t is not None:
            check_tensor(t, name)
    raise ValueError("the scan output overflowed to NaN/Inf with finite inputs: A has positive entries or "
                     "delta/u are too large for the state to stay finite")


def adaptive_selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *, tile_size=64,
    resolution=None, state_dims=None, boundary_gain=None, initial_state=None,
    return_last_state=False, return_tile_states=False,
):
    """Float64 reference of :func:`tiling.ops.adaptive_selective_scan` (same signature).

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, tile_size, resolution, state_dims,
    boundary_gain, initial_state, return_last_state, return_tile_states :
        as for :func:`tiling.ops.adaptive_selective_scan`.

    Returns
    -------
    ``y`` in ``u``'s dtype; with ``return_last_state`` ``(y, last_state)``, with
    ``return_tile_states`` ``(y, last_state, tile_states)`` where ``tile_states``
    (batch, dim, n_tiles, N) holds the state after each tile. States are float64 for float64
    input, else float32.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments (:func:`validate_scan_inputs`), or a non-finite output
        (:func:`check_scan_output`).

    Notes
    -----
    Semantics (seed 001 §3.2.1 tiles ``(M_i, S_i, R_i)``, §3.3.1 transition φ, §3.4 step 3):

    * ``Δ_t = softplus(delta_t + delta_bias)`` if ``delta_softplus`` else ``delta_t + delta_bias``.
    * Tile ``i`` covers ``[i·T, min((i+1)·T, L))`` (length ``n_i``) and is cut into
      ``m_i = max(1, ⌈R_i·n_i⌉)`` segments, segment ``j`` covering offsets
      ``[⌊j·n_i/m_i⌋, ⌊(j+1)·n_i/m_i⌋)``.
    * A segment ``S`` is one step of the recurrence spanning its time:
      ``h_S = exp(Δ̄_S·A) ⊙ h_{S−1} + (Σ_{t∈S} Δ_t u_t)·B̄_S`` with ``Δ̄_S = Σ_{t∈S} Δ_t`` and
      ``B̄_S = mean_{t∈S} B_t`` (Π exp(Δ_t A) = exp(ΣΔ_t A) keeps time constants exact).
    * ``y_t = C_t·h_S + D u_t`` if ``|S| = 1`` (Mamba), else ``y_t = C_t·h_{S−1} + D u_t``
      (causal: a token never reads a later token); then ``y ← y·silu(z)``.
    * Only the first ``S_i`` state components are updated and read in tile ``i``; the others
      decay once by ``exp(A·Σ_{t∈tile} Δ_t)``.
    * φ: at the start of tile ``i > 0``, ``h ← h ⊙ exp(boundary_gain·(R_i − R_{i−1}))``.

    Computes in float64 throughout.
    """
    p = validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, tile_size=tile_size, resolution=resolution,
                             state_dims=state_dims, boundary_gain=boundary_gain, initial_state=initial_state)
    f64 = torch.float64
    batch, dim, L = u.shape
    N = A.shape[1]
    G = p.B.shape[1]
    group = torch.arange(dim, device=u.device) // (dim // G)  # channel d reads group d // (dim/G)
    x = u.to(f64)
    dt = delta.to(f64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f64)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A64 = A.to(f64)
    Bc = p.B.to(f64)[:, group]  # (batch, dim, N, L): each channel's B
    Cc = p.C.to(f64)[:, group]
    R = p.resolution.to(f64)
    ys, lasts, tiles_all = [], [], []
    for b in range(batch):
        h = initial_state[b].to(f64) if initial_state is not None else x.new_zeros(dim, N)
        y_b, tiles_b = [], []
        for i, n_i in enumerate(p.lengths.tolist()):
            if i > 0 and boundary_gain is not None:
                h = h * torch.exp(boundary_gain.to(f64) * (R[b, i] - R[b, i - 1]))
            s0 = i * p.tile_size
            m_i = int(p.seg_counts[b, i])
            S_i = int(p.state_dims[b, i])
            act, inact = h[:, :S_i], h[:, S_i:]
            for j in range(m_i):
                lo, hi = s0 + (j * n_i) // m_i, s0 + ((j + 1) * n_i) // m_i
                d_seg = dt[b, :, lo:hi]
                U = (d_seg * x[b, :, lo:hi]).sum(-1)  # Σ Δ_t u_t, (dim,)
                Bbar = Bc[b, :, :S_i, lo:hi].mean(-1)  # (dim, S_i)
                new = torch.exp(d_seg.sum(-1)[:, None] * A64[:, :S_i]) * act + U[:, None] * Bbar
                read = new if hi - lo == 1 else act
                y_b.append(torch.einsum("dn,dnt->dt", read, Cc[b, :, :S_i, lo:hi]))
                act = new
            inact = inact * torch.exp(A64[:, S_i:] * dt[b, :, s0:s0 + n_i].sum(-1)[:, None])
            h = torch.cat([act, inact], dim=1)
            tiles_b.append(h)
        ys.append(torch.cat(y_b, dim=1))
        lasts.append(h)
        tiles_all.append(torch.stack(tiles_b, dim=1))
    y = torch.stack(ys)
    if D is not None:
        y = y + D.to(f64)[:, None] * x
    if z is not None:
        y = y * F.silu(z.to(f64))
    check_scan_output(y, u, delta, z)
    y = y.to(u.dtype)
    if not (return_last_state or return_tile_states):
        return y
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    last = torch.stack(lasts).to(acc)
    if return_tile_states:
        return y, last, torch.stack(tiles_all).to(acc)
    return y, last


def block_scope_ref(x: Tensor, weights: dict[str, Tensor], boundary: Tensor, confidence: Tensor | None = None) -> Tensor:
    """Float64 reference of ``TiledMamba(scope="block")`` for a given boundary mask.

    Parameters
    ----------
    x : (batch, L, d_model) input.
    weights : Mamba's parameters by their names (``in_proj.weight``, ``conv1d.weight``,
        ``conv1d.bias``, ``x_proj.weight``, ``dt_proj.weight``, ``dt_proj.bias``, ``A_log``, ``D``,
        ``out_proj.weight``) and ``chunk.pool_gate``.
    boundary : (batch, L) bool; the segments of each row start at its True entries.
    confidence : (batch, L), optional: the learned router's ``c_t``; the output is multiplied by
        ``1 + c_t − sg(c_t)`` (value 1, gradient to ``c``).

    Returns
    -------
    (batch, L, d_model) float64 output, differentiable (autograd) in ``x``, the weights and
    ``confidence``.

    Notes
    -----
    Written plainly from ``docs/tiling.md`` ("Block scope"), independent of the chunk modules and
    of the scan kernels: segment ``S = [a_S, a_{S+1})`` is represented by
    ``x̃_S = x_{a_S} + g ⊙ mean(x_{a_{S−1}+1..a_S−1})`` (0 for an empty set); the Mamba mixer runs
    as a time loop over the representatives with ``Δ_S = gap_S·softplus(W_dt δ_S + b)``,
    ``gap_S = a_S − a_{S−1}`` (1 for ``S = 0``), ``h_S = exp(Δ_S A) h_{S−1} + Δ_S u_S B_S``,
    ``y_S = (C_S·h_S + D u_S)·silu(z_S)``; every token of ``S`` receives ``W_out y_S``.
    No arguments are checked.
    """
    f64 = torch.float64
    w = {k: v.to(f64) for k, v in weights.items()}
    E = w["D"].shape[0]
    N = w["A_log"].shape[1]
    K = w["conv1d.weight"].shape[-1]
    r = w["dt_proj.weight"].shape[1]
    A = -torch.exp(w["A_log"])
    outs = []
    for b in range(x.shape[0]):
        xb = x[b].to(f64)
        starts = [int(t) for t in torch.nonzero(boundary[b]).flatten()]
        reps, gaps = [], []
        for S, a in enumerate(starts):
            prev = starts[S - 1] if S > 0 else None
            rep = xb[a]
            if prev is not None and a - prev > 1:
                rep = rep + w["chunk.pool_gate"] * xb[prev + 1:a].mean(0)
            reps.append(rep)
            gaps.append(1 if prev is None else a - prev)
        window = [xb.new_zeros(E) for _ in range(K)]
        h = xb.new_zeros(E, N)
        ys = []
        for rep, gap in zip(reps, gaps):
            xz = w["in_proj.weight"] @ rep
            v, z = xz[:E], xz[E:]
            window = window[1:] + [v]
            u = sum(w["conv1d.weight"][:, 0, k] * window[k] for k in range(K)) + w["conv1d.bias"]
            u = F.silu(u)
            xdbl = w["x_proj.weight"] @ u
            dt_low, Bt, Ct = xdbl[:r], xdbl[r:r + N], xdbl[r + N:]
            delta = gap * F.softplus(w["dt_proj.weight"] @ dt_low + w["dt_proj.bias"])
            h = torch.exp(delta[:, None] * A) * h + (delta * u)[:, None] * Bt[None, :]
            y = (h @ Ct + w["D"] * u) * F.silu(z)
            ys.append(w["out_proj.weight"] @ y)
        seg = torch.cumsum(boundary[b].to(torch.int64), 0) - 1
        outs.append(torch.stack(ys)[seg])
    y = torch.stack(outs)
    if confidence is not None:
        c = confidence.to(f64)
        y = y * (1.0 + c - c.detach()).unsqueeze(-1)
    return y


__all__ = ["adaptive_selective_scan_ref", "block_scope_ref", "validate_scan_inputs", "check_scan_output", "ScanInputs"]
