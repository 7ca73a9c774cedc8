"""Causal downsampling and upsampling for the block scope (seed 000 §3.5.1: a tile processes
``O(R_i·n_i)`` tokens; seed 001 §3.2.1: ``R_i`` is the processing granularity).

A *segment* is a run of consecutive tokens that the Mamba mixer sees as one token. The layout of
the segments of a batch is a :class:`SegmentLayout`; it is built either from per-tile segment
counts (:func:`layout_from_counts`, the policy's ``m_i = ⌈R_i·T⌉``) or from per-token boundaries
(:func:`layout_from_boundaries`, the learned router). Two small modules move between the token
sequence (length ``L``) and the compact sequence (one entry per segment, ``L_c = Σ_i m_i``):

Chunk (downsample)
    The representative of segment ``S = [a_S, a_{S+1})`` is its *first* token plus a gated mean
    of the tokens the previous segment did not send (hourglass transformers' shifted pooling,
    Nawrot et al. 2022, with H-Net's choice of the boundary token, Hwang, Wang, Gu 2025)::

        x̃_S = x_{a_S} + g ⊙ mean_{a_{S−1} < t < a_S} x_t        (g ∈ R^{d_model}, g = 0 at init)

    Every token reaches the mixer, either as a representative or through the next segment's
    pooled summary, and ``x̃_S`` depends only on tokens ``≤ a_S``.

Dechunk (upsample)
    Every token of a segment receives the mixer output of its representative, ``y_t = ỹ_{S(t)}``
    (a hold: hourglass' repeat, H-Net's plug-back without the EMA). With a learned router the
    held value is multiplied by H-Net's confidence straight-through factor
    ``1 + (c_t − sg(c_t))`` (``c_t = p_t`` at a boundary, ``1 − p_t`` inside a segment): the
    forward value is exactly 1 and the router's probabilities receive the gradient.

Why this is causal: ``y_t`` depends on ``ỹ_{S(t)}``, which the causal mixer computes from
``x̃_{S'}``, ``S' ≤ S(t)``, i.e. from tokens ``≤ a_{S(t)} ≤ t``. Why it is exact at ``R = 1``:
every segment is one token, the pooled set is empty (its mean is defined as 0), so ``x̃ = x``
and the hold is the identity, whatever ``g`` is.

Departure from H-Net: no EMA smoothing of the upsampled outputs. The EMA makes ``y_t`` a
mixture of the current and earlier segments' outputs weighted by the router's probability; it is
what gives H-Net's router a gradient. Here the straight-through factor does that alone, and the
tile policy (a non-learned density) needs no gradient; the hold keeps the forward pass equal to
"the mixer at a coarser granularity", which is what seed 000 §3.5 reasons about.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from infogeo.checks import check_finite, check_int, check_same_device, check_tensor
from tiling.ops.scan import cpu_kernels, needs_grad, policy_kernels
from tiling.policy import dithered_counts  # re-exported: the block scope's segments per tile

Tensor = torch.Tensor


@dataclass(frozen=True)
class SegmentLayout:
    """Where the segments of a batch lie.

    Attributes
    ----------
    boundary : (batch, L) bool, True at the first token (the representative) of each segment.
    segment : (batch, L) int64, the compact index of the segment holding token ``t``.
    start : (batch, L_c) int64, the position of each segment's representative; rows with fewer
        segments than ``L_c = max_b lengths[b]`` are padded at the end with position 0.
    span : (batch, L_c) int64, tokens per segment (0 on padding).
    lengths : (batch,) int64, segments per row.
    """

    boundary: Tensor
    segment: Tensor
    start: Tensor
    span: Tensor
    lengths: Tensor

    @property
    def batch(self) -> int:
        """Number of rows."""
        return int(self.boundary.shape[0])

    @property
    def L(self) -> int:
        """Number of tokens per row."""
        return int(self.boundary.shape[1])

    @property
    def compact_length(self) -> int:
        """``L_c``, the padded length of the compact sequence."""
        return int(self.start.shape[1])

    @functools.cached_property
    def is_identity(self) -> bool:
        """Every segment one token (``R = 1``): chunking and dechunking are the identity."""
        return self.compact_length == self.L and bool(self.boundary.all())

    @functools.cached_property
    def gap(self) -> Tensor:
        """Tokens since the previous segment's representative, ``a_S − a_{S−1}``.

        Returns
        -------
        (batch, L_c) int64; ``1`` for the first segment and on padding.

        Notes
        -----
        The mixer scales Δ by it, so a state decays over the time that passed between two
        representatives.
        """
        prev = torch.cat([self.start[:, :1] - 1, self.start[:, :-1]], dim=1)
        valid = torch.arange(self.compact_length, device=self.start.device) < self.lengths.unsqueeze(1)
        return torch.where(valid, self.start - prev, torch.ones_like(self.start))

    @functools.cached_property
    def flat_start(self) -> Tensor:
        """(batch·L_c,) the representatives' rows in ``x.reshape(batch·L, d)`` (made once per layout)."""
        row = torch.arange(self.batch, device=self.start.device).unsqueeze(1)
        return (row * self.L + self.start).reshape(-1)

    @functools.cached_property
    def flat_segment(self) -> Tensor:
        """(batch·L,) each token's segment row in ``y.reshape(batch·L_c, d)`` (made once per layout)."""
        row = torch.arange(self.batch, device=self.start.device).unsqueeze(1)
        return (row * self.compact_length + self.segment).reshape(-1)

    @functools.cached_property
    def pool_index(self) -> tuple[Tensor, Tensor]:
        """The pool's scatter rows and counts: ``(target, count)``, ``target`` (batch·L,) the row of
        ``(batch·(L_c + 1) + 1, d)`` each token's pool sum goes to (representatives: the last, dummy
        row), ``count`` (batch, L_c) the tokens pooled into each segment (at least 1)."""
        batch, Lc = self.batch, self.compact_length
        row = torch.arange(batch, device=self.start.device).unsqueeze(1)
        target = torch.where(self.boundary, batch * (Lc + 1), row * (Lc + 1) + self.segment + 1).reshape(-1)
        count = torch.cat([self.span.new_zeros(batch, 1), self.span[:, :-1] - 1], dim=1).clamp_min(1)
        return target, count

    def padding_fraction(self) -> float:
        """Share of the padded compact batch that is padding, ``1 − Σ_b lengths_b / (batch·L_c)``."""
        return 1.0 - float(self.lengths.sum()) / (self.batch * self.compact_length)


def segment_boundaries(seg_counts: Tensor, L: int, tile_size: int, *, validate: bool = True) -> Tensor:
    """Boundary mask of per-tile segment counts on the *nominal* tile grid.

    Parameters
    ----------
    seg_counts : (batch, n_tiles) integer segment counts ``m_i ∈ [1, T]``, ``n_tiles = ⌈L/T⌉``.
    L : sequence length.
    tile_size : tile length ``T``.
    validate : check the arguments (False: int64 counts the caller made, e.g. a decoding step's).

    Returns
    -------
    (batch, L) bool, True at the first token of each segment.

    Raises
    ------
    TypeError
        ``seg_counts`` is not a tensor, or ``L``/``tile_size`` not an int.
    ValueError
        ``seg_counts`` is not 2-D with at least one row and ``⌈L/T⌉`` tiles, or has a count outside
        ``[1, tile_size]``; ``L`` or ``tile_size`` < 1.

    Notes
    -----
    Tile ``i`` starts at ``i·T``; its segment ``j`` starts at offset ``⌊j·T/m_i⌋`` (the segment rule
    of ``docs/tiling.md`` with the tile length ``T``), ``j = 0..m_i − 1``; offsets beyond the
    sequence end are dropped. Departure from the scan scope, which divides the *last* tile by its
    own length ``n_i``: with ``T`` the segmentation of a token never depends on how many tokens
    follow it, so a prefix of a sequence is segmented as in the whole sequence (the property
    ``TiledMamba.step`` and streaming rely on).

    An offset ``o`` starts a segment iff ``j = ⌈o·m/T⌉ < m`` and ``⌊j·T/m⌋ = o``.
    """
    if not validate:
        return _segment_mask(seg_counts, L, tile_size)
    m, L, T = _check_counts(seg_counts, L, tile_size)
    return _segment_mask(m, L, T)


def _check_counts(seg_counts: Tensor, L: int, tile_size: int) -> tuple[Tensor, int, int]:
    """The checks of :func:`segment_boundaries`: ``(int64 counts, L, T)``."""
    check_tensor(seg_counts, "seg_counts", ndim=2, floating=False, finite=False)
    T = check_int(tile_size, "tile_size", minimum=1)
    L = check_int(L, "L", minimum=1)
    batch, n_tiles = seg_counts.shape
    if batch < 1:
        raise ValueError(f"seg_counts must have at least one row, got shape {tuple(seg_counts.shape)}")
    if n_tiles != -(-L // T):
        raise ValueError(f"seg_counts must have ⌈L/T⌉ = {-(-L // T)} tiles for L={L}, T={T}, got {n_tiles}")
    m = seg_counts.to(torch.int64)
    if bool(((m < 1) | (m > T)).any()):
        raise ValueError(f"seg_counts must lie in [1, tile_size={T}], got range [{int(m.min())}, {int(m.max())}]")
    return m, L, T


def _segment_mask(m: Tensor, L: int, T: int) -> Tensor:
    """:func:`segment_boundaries` of checked int64 counts."""
    batch = m.shape[0]
    m = m.unsqueeze(-1)
    o = torch.arange(min(T, L), device=m.device, dtype=torch.int64)  # offsets past the end never count
    j = (o * m + (T - 1)) // T
    mask = (j < m) & ((j * T) // m == o)
    return mask.reshape(batch, -1)[:, :L]


def layout_from_boundaries(boundary: Tensor, *, compact_length: int | None = None,
                           validate: bool = True) -> SegmentLayout:
    """The :class:`SegmentLayout` of a boundary mask.

    Parameters
    ----------
    boundary : (batch, L) bool whose first column is True.
    compact_length : ``L_c``, the largest number of segments of a row, when the caller knows it
        (no device synchronisation then); None: counted.
    validate : check ``boundary`` (False: the caller made it, e.g. from checked counts).

    Returns
    -------
    :class:`SegmentLayout` on ``boundary``'s device.

    Raises
    ------
    TypeError
        ``boundary`` is not a bool tensor.
    ValueError
        ``boundary`` is not 2-D with at least one row and column, or a row does not start a segment
        at position 0.
    """
    if validate:
        check_tensor(boundary, "boundary", ndim=2, floating=False, finite=False)
        if boundary.dtype != torch.bool:
            raise TypeError(f"boundary must be a bool tensor, got {boundary.dtype}")
        if boundary.shape[0] < 1 or boundary.shape[1] < 1 or not bool(boundary[:, 0].all()):
            raise ValueError(f"boundary must have at least one row and column and start a segment at position 0 of "
                             f"every row, got shape {tuple(boundary.shape)}")
    batch, L = boundary.shape
    segment = boundary.to(torch.int64).cumsum(1) - 1
    lengths = segment[:, -1] + 1
    Lc = int(lengths.max()) if compact_length is None else compact_length
    # each segment's representative: its boundary's position (the other positions go to a dummy column)
    pos = torch.arange(L, device=boundary.device).expand(batch, L)
    target = torch.where(boundary, segment, Lc)
    start = torch.zeros(batch, Lc + 1, dtype=torch.int64, device=boundary.device).scatter_(1, target, pos)[:, :Lc]
    span = torch.zeros(batch, Lc, dtype=torch.int64, device=boundary.device)
    span.scatter_add_(1, segment, torch.ones_like(segment))
    return SegmentLayout(boundary=boundary, segment=segment, start=start, span=span, lengths=lengths)


def layout_from_counts(seg_counts: Tensor, L: int, tile_size: int, *, device=None) -> SegmentLayout:
    """The :class:`SegmentLayout` of per-tile segment counts (:func:`segment_boundaries`).

    Parameters
    ----------
    seg_counts, L, tile_size : as for :func:`segment_boundaries` (whose checks apply).
    device : where the layout goes (default: ``seg_counts``' device). Counts on the CPU and a layout
        on another device cost one small copy and no synchronisation: ``L_c`` is counted on the host.

    Returns
    -------
    :class:`SegmentLayout`.
    """
    m, L, T = _check_counts(seg_counts, L, tile_size)
    dev = m.device if device is None else torch.device(device)
    ext = policy_kernels() if m.device.type == "cpu" and dev.type == "cpu" else None
    if ext is not None:  # one C++ loop
        boundary, segment, start, span, lengths = ext.layout_from_counts(m.contiguous(), L, T)
        return SegmentLayout(boundary=boundary, segment=segment, start=start, span=span, lengths=lengths)
    boundary = _segment_mask(m.to(dev), L, T)
    Lc = None
    if m.device.type == "cpu":
        n_last = L - (m.shape[1] - 1) * T
        # the last tile keeps the starts floor(j T / m) < n_last: min(m, ceil(n_last m / T)) of them
        last = torch.minimum(m[:, -1], -(-(n_last * m[:, -1]) // T))
        Lc = int((m[:, :-1].sum(1) + last).max())
    return layout_from_boundaries(boundary, compact_length=Lc, validate=False)


def check_layout(layout: SegmentLayout, batch: int, L: int) -> None:
    """Reject a layout whose lengths do not add up (a hand-made or stale layout).

    Parameters
    ----------
    layout : the layout.
    batch, L : the shape of the tokens it must describe.

    Raises
    ------
    ValueError
        ``layout.boundary`` is not (batch, L), the spans do not add up to ``batch·L`` tokens, or
        ``layout.lengths`` differs from the number of boundaries (or of non-empty spans) per row.
    """
    if tuple(layout.boundary.shape) != (batch, L):
        raise ValueError(f"layout.boundary must have shape (batch={batch}, L={L}), got {tuple(layout.boundary.shape)}")
    if int(layout.span.sum()) != batch * L:
        raise ValueError(f"layout.span must add up to batch·L = {batch * L} tokens, got {int(layout.span.sum())}")
    if not torch.equal(layout.lengths, layout.boundary.sum(1)) or not torch.equal(
            (layout.span > 0).sum(1), layout.lengths):
        raise ValueError("layout.lengths must equal the number of boundaries (and of non-empty spans) per row")


def _check_tokens(x: Tensor, name: str, layout: SegmentLayout, d_model: int, dtype: torch.dtype, finite: bool) -> None:
    if not isinstance(layout, SegmentLayout):
        raise TypeError(f"layout must be a SegmentLayout, got {type(layout).__name__}")
    check_tensor(x, name, ndim=3, finite=False)
    if tuple(x.shape) != (layout.batch, layout.L, d_model):
        raise ValueError(f"{name} must have shape (batch={layout.batch}, L={layout.L}, d_model={d_model}) of the "
                         f"layout, got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the module's parameters are {dtype}")
    check_same_device(**{name: x, "layout": layout.boundary})
    if finite:
        check_finite(x, name)


@dataclass(frozen=True)
class ChunkState:
    """Decoding state of :class:`Chunk`.

    Attributes
    ----------
    pool_sum : (batch, d_model) sum of the current segment's tokens after its representative.
    pool_count : (batch,) int64 count of those tokens; both become the next segment's pool.
    """

    pool_sum: Tensor
    pool_count: Tensor


class Chunk(nn.Module):
    """Downsample ``(batch, L, d) → (batch, L_c, d)``: representative + gated shifted mean pool.

    Parameters
    ----------
    d_model : model width ``d ≥ 1``.
    pool : learn the gate ``g`` of the pool (a parameter, zero at init); False: the gate is a
        constant zero buffer (the representatives alone, always).
    device, dtype : of the gate.

    Raises
    ------
    TypeError, ValueError
        ``d_model`` is not an int ≥ 1.
    """

    def __init__(self, d_model: int, *, pool: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.d_model = check_int(d_model, "d_model", minimum=1)
        self.pool = bool(pool)
        # zero: the compact sequence starts as the representatives alone (H-Net's boundary tokens);
        # without the pool the gate is a constant zero (the representatives alone, always)
        gate = torch.zeros(self.d_model, device=device, dtype=dtype)
        if self.pool:
            self.pool_gate = nn.Parameter(gate)
        else:
            self.register_buffer("pool_gate", gate, persistent=False)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, pool={self.pool}"

    def forward(self, x: Tensor, layout: SegmentLayout, *, validate: bool = True) -> Tensor:
        """Chunk ``x`` into the compact sequence.

        Parameters
        ----------
        x : (batch, L, d_model), of the gate's dtype and on the layout's device.
        layout : the :class:`SegmentLayout`.
        validate : also scan ``x`` for NaN/Inf (one pass; :class:`~tiling.modules.TiledMamba` checks
            its input itself and passes False).

        Returns
        -------
        (batch, L_c, d_model); ``x`` itself when the layout is the identity.

        Raises
        ------
        TypeError
            ``layout`` is not a :class:`SegmentLayout`, or ``x`` is not a tensor of the gate's dtype.
        ValueError
            ``x`` does not have the layout's shape, lives on another device, or (``validate``) holds
            NaN/Inf.
        """
        _check_tokens(x, "x", layout, self.d_model, self.pool_gate.dtype, validate)
        batch, L, d = x.shape
        if layout.is_identity:
            return x
        ext = None if needs_grad(x, self.pool_gate) else cpu_kernels(x, self.pool_gate)
        if ext is not None:  # inference on the CPU: one pass (kernels_cuda/segments.h); the ops below are its reference
            return ext.chunk_fwd(x.contiguous(), layout.start.contiguous(), layout.span.contiguous(), self.open_gate())
        Lc = layout.compact_length
        flat = x.reshape(batch * L, d)
        reps = flat.index_select(0, layout.flat_start).view(batch, Lc, d)
        if not (torch.is_grad_enabled() and self.pool_gate.requires_grad) and not bool(self.pool_gate.any()):
            return reps  # a closed gate adds exactly nothing: skip the pool (inference only)
        # tokens after a representative feed the *next* segment's pool; representatives go to a dummy row
        target, count = layout.pool_index
        pooled = flat.new_zeros(batch * (Lc + 1) + 1, d).index_add_(0, target, flat)
        pooled = pooled[:-1].view(batch, Lc + 1, d)[:, :Lc]
        return reps + self.pool_gate * (pooled / count.unsqueeze(-1).to(x.dtype))

    def open_gate(self) -> Tensor | None:
        """The pool gate for the inference kernels, or None when it is closed (all zero): a closed gate
        adds exactly nothing, so the kernels copy the representatives alone."""
        return self.pool_gate if bool(self.pool_gate.any()) else None

    def allocate(self, batch: int, like: Tensor) -> ChunkState:
        """An empty :class:`ChunkState` for ``batch`` rows, of ``like``'s dtype and device."""
        return ChunkState(pool_sum=like.new_zeros(batch, self.d_model),
                          pool_count=torch.zeros(batch, dtype=torch.int64, device=like.device))

    def step(self, x: Tensor, starts: Tensor, state: ChunkState) -> tuple[Tensor, ChunkState]:
        """One decoding step.

        Parameters
        ----------
        x : (batch, d) one token.
        starts : (batch,) bool, ``x`` starts a segment.
        state : the :class:`ChunkState`.

        Returns
        -------
        ``(rep, state)``: the representative (meaningful where ``starts``; ``x`` itself where no row
        starts one) and the new state.
        """
        if not bool(starts.any()):  # no row starts one (most bytes): the token joins the pool, nothing else
            return x, ChunkState(pool_sum=state.pool_sum + x, pool_count=state.pool_count + 1)
        mean = state.pool_sum / state.pool_count.clamp_min(1).unsqueeze(-1).to(x.dtype)
        rep = x + self.pool_gate * mean
        if bool(starts.all()):  # every row starts one: the pools empty
            return rep, ChunkState(pool_sum=torch.zeros_like(x), pool_count=torch.zeros_like(state.pool_count))
        s = starts.unsqueeze(-1)
        pool_sum = torch.where(s, torch.zeros_like(x), state.pool_sum + x)
        pool_count = torch.where(starts, torch.zeros_like(state.pool_count), state.pool_count + 1)
        return rep, ChunkState(pool_sum=pool_sum, pool_count=pool_count)


class Dechunk(nn.Module):
    """Upsample ``(batch, L_c, d) → (batch, L, d)``: hold each segment's output over its tokens.

    The held value is multiplied by the straight-through confidence factor when a router supplies
    ``confidence``.
    """

    def forward(self, y: Tensor, layout: SegmentLayout, confidence: Tensor | None = None, *,
                validate: bool = True) -> Tensor:
        """Hold each segment's output over its tokens.

        Parameters
        ----------
        y : (batch, L_c, d) the mixer's compact output.
        layout : the :class:`SegmentLayout`.
        confidence : (batch, L), optional: the router's ``c_t``; the output is multiplied by
            ``1 + (c_t − sg(c_t))``.
        validate : as in :meth:`Chunk.forward`.

        Returns
        -------
        (batch, L, d).

        Raises
        ------
        TypeError
            ``layout`` is not a :class:`SegmentLayout`, or ``y``/``confidence`` is not a floating tensor.
        ValueError
            ``y`` does not have the layout's (batch, L_c), ``confidence`` not (batch, L) or on another
            device, or (``validate``) NaN/Inf.
        """
        if not isinstance(layout, SegmentLayout):
            raise TypeError(f"layout must be a SegmentLayout, got {type(layout).__name__}")
        check_tensor(y, "y", ndim=3, finite=validate)
        if y.shape[:2] != (layout.batch, layout.compact_length):
            raise ValueError(f"y must have shape (batch={layout.batch}, L_c={layout.compact_length}, d) of the layout, "
                             f"got {tuple(y.shape)}")
        if confidence is not None:
            check_tensor(confidence, "confidence", shape=(layout.batch, layout.L), finite=validate)
            check_same_device(y=y, confidence=confidence)
        batch, Lc, d = y.shape
        if not layout.is_identity:
            ext = None if needs_grad(y) else cpu_kernels(y)
            if ext is not None:  # inference on the CPU: each row copied once (kernels_cuda/segments.h)
                y = ext.hold_fwd(y.contiguous(), layout.start.contiguous(), layout.span.contiguous(), layout.L, None)
            else:
                y = y.reshape(batch * Lc, d).index_select(0, layout.flat_segment).view(batch, -1, d)
        if confidence is not None:
            y = y * (1.0 + (confidence - confidence.detach())).unsqueeze(-1).to(y.dtype)
        return y


__all__ = [
    "Chunk", "ChunkState", "Dechunk", "SegmentLayout", "check_layout", "dithered_counts", "layout_from_boundaries",
    "layout_from_counts", "segment_boundaries",
]
