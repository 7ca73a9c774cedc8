"""Public resolution-adaptive selective scan: validation, device dispatch and autograd.

The op generalises Mamba's selective scan (S6) so that every tile of the sequence is processed
at its own resolution ``R_i`` and state size ``S_i`` (seed 001 §3.2, §3.3.1, §3.4 step 3); its
cost falls with the resolution (seed 000 §3.5.1, :func:`tiling.ops.scan_cost`). The semantics
are defined by :func:`tiling.ops.reference.adaptive_selective_scan_ref` (and ``docs/tiling.md``);
the fused kernels in ``kernels_cuda/`` (C++ on the CPU, CUDA on GPUs) implement them behind the
extension interface of ``kernels_cuda/binding.h``.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from infogeo.checks import check_tensor
from tiling import _build
from tiling.ops.reference import adaptive_selective_scan_ref, check_scan_output, validate_scan_inputs

Tensor = torch.Tensor

#: minimum number of segments between two state checkpoints saved for the backward pass
CHECKPOINT_SEGMENTS = 64
CUDA_MAX_STATE = 64  # the CUDA kernel keeps at most 64 state components per channel in registers


def checkpoint_slots(seg_counts: Tensor, every: int = CHECKPOINT_SEGMENTS) -> tuple[Tensor, int]:
    """Checkpoint schedule of the backward pass.

    Parameters
    ----------
    seg_counts : (batch, n_tiles) segment counts ``m_i``.
    every : least number of segments between two checkpoints (default :data:`CHECKPOINT_SEGMENTS`).

    Returns
    -------
    ``(slot, n_slots)``: ``slot`` (batch, n_tiles) int32 on ``seg_counts``' device, the checkpoint
    index of each tile (``-1`` for tiles without one), and ``n_slots`` the largest number of
    checkpoints of a row.

    Notes
    -----
    A checkpoint holds the state entering a tile; tile 0 always has one (slot 0) and a new one
    is placed at the first tile start after at least ``every`` segments since the previous one,
    so the saved states cost ``batch·dim·N·Σm/every`` at most and a chunk recomputed by the
    backward holds fewer than ``every + T`` segments.
    """
    m = seg_counts.detach().cpu().numpy().astype(np.int64)
    batch, n_tiles = m.shape
    slot = np.full((batch, n_tiles), -1, dtype=np.int32)
    since = np.zeros(batch, dtype=np.int64)
    nxt = np.zeros(batch, dtype=np.int32)
    for i in range(n_tiles):
        put = (since >= every) | (i == 0)
        slot[put, i] = nxt[put]
        nxt[put] += 1
        since[put] = 0
        since += m[:, i]
    return torch.from_numpy(slot).to(seg_counts.device), int(nxt.max())


def _none_if_empty(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 else t


class _AdaptiveScan(torch.autograd.Function):
    """Fused forward/backward; saves inputs and state checkpoints (never the state history).

    The ``forward(ctx, ...)`` form, without ``setup_context``: torch binds the arguments to
    ``forward``'s signature on every call of a Function that has one (``inspect.signature``, about
    0.3 ms a call, measured), and ``torch.func`` transforms never reach this class (the op runs the
    reference under them)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, gain, init, resolution, seg_counts, state_dims,
                ckpt_slot, n_ckpt, tile_size, delta_softplus, return_tile_states, ext, plan_resolution):
        y, last, ckpts, tiles = ext.fwd(u, delta, A, B, C, D, z, delta_bias, gain, init, resolution, seg_counts,
                                        state_dims, ckpt_slot, n_ckpt, tile_size, delta_softplus,
                                        return_tile_states)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, gain, init, resolution, seg_counts,
                              state_dims, ckpt_slot, ckpts)
        ctx.mark_non_differentiable(ckpts)
        ctx.tile_size, ctx.delta_softplus, ctx.ext = tile_size, delta_softplus, ext
        ctx.plan_resolution = plan_resolution  # as validated: its dtype sets the segment counts
        return y, last, tiles, ckpts

    @staticmethod
    def backward(ctx, dy, dlast, dtiles, _dckpts):
        if dtiles is not None and dtiles.numel() == 0:
            dtiles = None
        if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
            return _reference_vjp(ctx, dy, dlast, dtiles) + (None,) * 10
        (u, delta, A, B, C, D, z, delta_bias, gain, init, resolution, seg_counts, state_dims, ckpt_slot,
         ckpts) = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(u)
        grads = ctx.ext.bwd(dy.contiguous(), u, delta, A, B, C, D, z, delta_bias, gain, init, resolution,
                            seg_counts, state_dims, ckpt_slot, ckpts,
                            None if dlast is None else dlast.contiguous(),
                            None if dtiles is None else dtiles.contiguous(),
                            ctx.tile_size, ctx.delta_softplus)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dgain, dinit = (_none_if_empty(g) for g in grads)
        return (du, ddelta, dA, dB, dC, dD, dz, dbias, dgain, dinit) + (None,) * 10


def _reference_vjp(ctx, dy: Tensor | None, dlast: Tensor | None, dtiles: Tensor | None) -> tuple:
    """The backward as a differentiable function of the inputs and of the incoming gradients.

    The fused kernels' backward is not itself differentiable, so a double backward (a gradient
    penalty, a Hessian-vector product: ``create_graph=True``) recomputes the forward through the
    float64 reference :func:`adaptive_selective_scan_ref` (the semantics, seed 001 §3.2–3.4) and
    takes its vector-Jacobian product under autograd. Exact, and as slow as the reference.
    """
    saved = ctx.saved_tensors
    # fresh graph nodes: the inputs may depend on each other (Mamba computes delta, B, C from u), and
    # the vector-Jacobian product needs the partial derivative in each, not the total one
    inputs = tuple(None if t is None else t.view_as(t) for t in saved[:10])
    u, delta, A, B, C, D, z, delta_bias, gain, init = inputs
    state_dims = saved[12]
    y, last, tiles = adaptive_selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, tile_size=ctx.tile_size,
        resolution=ctx.plan_resolution, state_dims=state_dims, boundary_gain=gain, initial_state=init,
        return_tile_states=True)
    pairs = [(o, g) for o, g in ((y, dy), (last, dlast), (tiles, dtiles)) if g is not None]
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    if not pairs or not wanted:
        return (None,) * len(inputs)
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    out: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        out[i] = g
    return tuple(out)


def _extension(device: torch.device, n_state: int):
    if device.type == "cpu":
        return _build.load_cpu_extension()
    if device.type == "cuda" and not _build.force_reference():
        if n_state > CUDA_MAX_STATE:
            raise ValueError(f"A has N={n_state} state dimensions; the CUDA kernel supports N <= {CUDA_MAX_STATE}")
        ext = _build.load_cuda_extension()
        if ext is not None:
            return ext
    warnings.warn(f"tiling: no compiled scan kernel for device {device}; using the PyTorch reference",
                  RuntimeWarning, stacklevel=3)
    return None


def adaptive_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, *, tile_size: int = 64,
    resolution: Tensor | float | None = None, state_dims: Tensor | int | None = None,
    boundary_gain: Tensor | None = None, initial_state: Tensor | None = None,
    return_last_state: bool = False, return_tile_states: bool = False,
):
    """Resolution-adaptive selective scan (seed 001 §3.2–3.4, seed 000 §3.5.1).

    Parameters
    ----------
    u, delta : (batch, dim, L) input and step sizes (Mamba's layout).
    A : (dim, N) state matrix (diagonal per channel).
    B, C : (batch, N, L), or grouped (batch, G, N, L) with G dividing dim.
    D, delta_bias : (dim,), optional.
    z : (batch, dim, L) gate, optional.
    delta_softplus : apply softplus to ``delta + delta_bias``.
    tile_size : tile length ``T``; ``n_tiles = ⌈L / tile_size⌉``.
    resolution : (batch, n_tiles) in (0, 1] or a float (default 1).
    state_dims : (batch, n_tiles) integers in [1, N] or an int (default N).
    boundary_gain : (dim, N) gain of the tile transition φ, optional.
    initial_state : (batch, dim, N), optional.
    return_last_state, return_tile_states : also return the final state / the states after each tile.

    Returns
    -------
    ``y`` (dtype of ``u``); with ``return_last_state`` ``(y, last_state)``; with
    ``return_tile_states`` ``(y, last_state, tile_states)``, ``tile_states`` (batch, dim,
    n_tiles, N) being the state after each tile. States are float64 for float64 input, else
    float32. bf16/fp16 inputs accumulate in float32.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments (:func:`tiling.ops.reference.validate_scan_inputs`), or NaN/Inf in the
        output (:func:`tiling.ops.reference.check_scan_output`: names the non-finite input, or
        reports an overflow of the recurrence).
    ValueError
        On CUDA, ``N`` exceeds :data:`CUDA_MAX_STATE` (64).

    Warns
    -----
    RuntimeWarning
        No compiled kernel for ``u``'s device: the float64 reference runs instead.

    Notes
    -----
    Semantics: defined by the float64 reference :func:`tiling.ops.reference.adaptive_selective_scan_ref`
    (its docstring) and ``docs/tiling.md`` ("Semantics"); at ``R ≡ 1``, ``S ≡ N`` and no gain it is
    ``mamba_ssm``'s ``selective_scan_fn``.

    Gradients flow to ``u, delta, A, B, C, D, z, delta_bias, boundary_gain, initial_state`` (and
    through ``last_state``/``tile_states``), not to ``resolution`` or ``state_dims``. The backward
    recomputes states from checkpoints saved every ≥ 64 segments (:func:`checkpoint_slots`).
    Double backward (``create_graph=True``: gradient penalties, Hessian-vector products) is exact:
    the backward is then recomputed through the float64 reference and differentiated by autograd
    (:func:`_reference_vjp`); ``torch.func`` transforms run the reference throughout.

    Dispatch: the C++ CPU kernel (compiled at first use) or the CUDA kernel by ``u.device``;
    the float64 reference, with a warning, when no kernel is available.
    """
    check_tensor(u, "u", ndim=3, finite=False)
    check_tensor(A, "A", ndim=2, finite=False)  # finiteness and device are checked with the rest below
    # torch.func transforms (grad, jacrev, vmap) cannot see into the fused kernels: they get the reference
    ext = None if torch._C._are_functorch_transforms_active() else _extension(u.device, A.shape[-1])
    p = validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, tile_size=tile_size, resolution=resolution,
                             state_dims=state_dims, boundary_gain=boundary_gain, initial_state=initial_state,
                             defer_finite=ext is not None)
    if ext is None:
        return adaptive_selective_scan_ref(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, tile_size=tile_size, resolution=resolution,
            state_dims=state_dims, boundary_gain=boundary_gain, initial_state=initial_state,
            return_last_state=return_last_state, return_tile_states=return_tile_states)
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(acc).contiguous()

    def i32(t: Tensor) -> Tensor:
        return t.to(device=u.device, dtype=torch.int32).contiguous()

    ckpt_slot, n_ckpt = checkpoint_slots(p.seg_counts)
    y, last, tiles, _ = _AdaptiveScan.apply(
        u.contiguous(), delta.contiguous(), cast(A), p.B.contiguous(), p.C.contiguous(), cast(D),
        None if z is None else z.contiguous(), cast(delta_bias), cast(boundary_gain), cast(initial_state),
        p.resolution.to(device=u.device, dtype=acc).contiguous(), i32(p.seg_counts),
        i32(p.state_dims), i32(ckpt_slot), n_ckpt, p.tile_size, bool(delta_softplus),
        bool(return_tile_states), ext, p.resolution)
    check_scan_output(y, u, delta, z)
    if return_tile_states:
        return y, last, tiles
    if return_last_state:
        return y, last
    return y


#: tile length of :func:`selective_scan` (at ``R ≡ 1`` tiles change nothing but the kernel's blocking
#: and the spacing of the backward's checkpoints)
FULL_TILE = 64


@functools.lru_cache(maxsize=64)
def _full_plan(batch: int, L: int, tile_size: int, n_state: int, acc: torch.dtype, device: torch.device
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """``(resolution, seg_counts, state_dims, ckpt_slot, n_ckpt)`` of a scan at ``R ≡ 1``, made once per shape."""
    n_tiles = -(-L // tile_size)
    lengths = torch.full((batch, n_tiles), tile_size, dtype=torch.int64)
    lengths[:, -1] = L - (n_tiles - 1) * tile_size
    slot, n_ckpt = checkpoint_slots(lengths)
    i32 = dict(device=device, dtype=torch.int32)
    return (torch.ones(batch, n_tiles, dtype=acc, device=device), lengths.to(**i32),
            torch.full((batch, n_tiles), n_state, **i32), slot.to(**i32), n_ckpt)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """Mamba's selective scan (the op at ``R ≡ 1``, full state), with no per-call checks.

    The block scope's mixer and every plain Mamba layer scan at full resolution; this entry skips
    what :func:`adaptive_selective_scan` does per call (argument validation, the plan's defaults,
    the checkpoint schedule, the output's NaN/Inf check), so the op costs its arithmetic also at
    small sizes. The caller checks its own inputs and outputs once (``TiledMamba.forward``,
    ``TiledLM.forward``).

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus : as for :func:`adaptive_selective_scan`,
        with ``B``, ``C`` of shape (batch, N, L) and every tensor on ``u``'s device, already valid.

    Returns
    -------
    ``y`` (batch, dim, L), dtype of ``u``; differentiable as :func:`adaptive_selective_scan`.

    Notes
    -----
    Equal to ``adaptive_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)``
    (tested): at ``R ≡ 1`` every segment is one token, whatever the tile length, so the tiles are
    :data:`FULL_TILE` long. Falls back to that op (with its checks and, without a kernel, the
    reference) under ``torch.func`` transforms and where no kernel runs.
    """
    ext = None
    if not torch._C._are_functorch_transforms_active() and (u.device.type == "cpu" or (
            u.device.type == "cuda" and A.shape[-1] <= CUDA_MAX_STATE)):
        with warnings.catch_warnings():  # the op below warns once, if it falls back
            warnings.simplefilter("ignore", RuntimeWarning)
            ext = _extension(u.device, A.shape[-1])
    if ext is None:
        return adaptive_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, tile_size=FULL_TILE)
    batch, _, L = u.shape
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    R, m, S, slot, n_ckpt = _full_plan(batch, L, FULL_TILE, A.shape[-1], acc, u.device)

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(acc).contiguous()

    args = (u.contiguous(), delta.contiguous(), cast(A), B.unsqueeze(1).contiguous(), C.unsqueeze(1).contiguous(),
            cast(D), None if z is None else z.contiguous(), cast(delta_bias), None, None, R, m, S, slot, n_ckpt,
            FULL_TILE, bool(delta_softplus), False)
    if not needs_grad(u, delta, A, B, C, D, z, delta_bias):  # inference: no autograd node to build
        return ext.fwd(*args)[0]
    return _AdaptiveScan.apply(*args, ext, R)[0]


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records an op on ``tensors`` (else a kernel is called without a Function)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _ConvSiLU(torch.autograd.Function):
    """The CPU kernel's fused causal depthwise conv + SiLU (forward and backward; the ``forward(ctx,
    ...)`` form as :class:`_AdaptiveScan`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, ext):
        ctx.save_for_backward(x, weight, bias)
        ctx.ext = ext
        return ext.conv_silu_fwd(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable, so torch's
            return _torch_vjp(lambda x, w, b: F.silu(F.conv1d(x, w.unsqueeze(1), b, padding=w.shape[1] - 1,
                                                               groups=w.shape[0])[..., :x.shape[-1]]),
                              (x, weight, bias), dy) + (None,)
        dx, dw, db = ctx.ext.conv_silu_bwd(dy, x, weight, bias)
        return dx, dw, (db if bias is not None else None), None


def _torch_vjp(fn, inputs: tuple, dy: Tensor) -> tuple:
    """The vector-Jacobian product of ``fn`` at ``inputs`` (None entries pass through), differentiable:
    the double backward of a fused kernel, computed with the torch expression it replaces."""
    # fresh graph nodes on the saved inputs (as _reference_vjp): the partial derivative in each,
    # still connected to the inputs for the next derivative
    fresh = tuple(None if t is None else t.view_as(t) for t in inputs)
    with torch.enable_grad():
        y = fn(*fresh)
    live = [t for t in fresh if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(y, live, dy, create_graph=True, allow_unused=True) if live else ())
    return tuple(next(grads) if t is not None and t.requires_grad else None for t in fresh)


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``silu(conv1d(x))`` with Mamba's causal depthwise convolution, no checks.

    Parameters
    ----------
    x : (batch, E, L).
    weight : (E, 1, K), the ``nn.Conv1d(E, E, K, groups=E, padding=K − 1)`` weight.
    bias : (E,) or None.

    Returns
    -------
    (batch, E, L): ``silu(F.conv1d(x, weight, bias, padding=K − 1, groups=E)[..., :L])``, as
    ``mamba_ssm`` and HF's ``MambaMixer`` compute it (tested against that expression).

    Notes
    -----
    On the CPU (``1 ≤ K ≤ 16``, float32/float64, no ``torch.func`` transform or dispatch mode such as
    ``FlopCounterMode``, a built kernel) the C++
    kernel runs it in one pass and its backward recomputes the pre-activation (oneDNN's depthwise
    convolution takes 2 ms at (1, 256, 1024), the fused kernel 0.3 ms on the project's machine);
    elsewhere the expression above.
    """
    E, K = weight.shape[0], weight.shape[-1]
    ext = cpu_kernels(x, weight) if K <= 16 and weight.dtype == x.dtype else None
    if ext is None:
        return F.silu(F.conv1d(x, weight, bias, padding=K - 1, groups=E)[..., :x.shape[-1]])
    args = (x.contiguous(), weight.reshape(E, K).contiguous(), None if bias is None else bias.contiguous())
    if not needs_grad(x, weight, bias):
        return ext.conv_silu_fwd(*args)
    return _ConvSiLU.apply(*args, ext)


def cpu_kernels(*tensors: Tensor):
    """The CPU extension when every tensor is a float32/float64 CPU tensor and no ``torch.func``
    transform or dispatch mode (``FlopCounterMode``) is active (they see torch's ops, not a kernel);
    else None (the caller runs torch's ops)."""
    for t in tensors:  # a plain loop: this runs several times per layer and decoded token
        if not t.is_cpu or (t.dtype is not torch.float32 and t.dtype is not torch.float64):
            return None
    if torch._C._are_functorch_transforms_active() or torch._C._len_torch_dispatch_stack():
        return None
    return _build.load_cpu_extension()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, ext):
        y, r = ext.rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, r)
        ctx.ext, ctx.eps = ext, eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, r = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient (torch's expression)
            return _torch_vjp(lambda x, w: F.rms_norm(x, (x.shape[-1],), w, ctx.eps), (x, weight), dy) + (None, None)
        dx, dw = ctx.ext.rms_norm_bwd(dy, x, weight, r)
        return dx, dw, None, None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim, ``x / sqrt(mean(x²) + eps) · weight`` (``nn.RMSNorm``), no checks.

    Parameters
    ----------
    x : (..., d).
    weight : (d,), of ``x``'s dtype.
    eps : added to the mean square.

    Returns
    -------
    ``x``'s shape and dtype; ``F.rms_norm(x, (d,), weight, eps)`` to float rounding (the CPU kernel
    accumulates the mean square in float64; tested), differentiable in ``x`` and ``weight``.

    Notes
    -----
    On the CPU the kernel makes one pass (torch's composite ``rms_norm`` five; 0.16 ms against
    0.03 ms at (1, 1024, 256) on the project's machine); elsewhere ``F.rms_norm``.
    """
    ext = cpu_kernels(x, weight) if weight.dtype == x.dtype else None
    if ext is None:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    if not needs_grad(x, weight):
        return ext.rms_norm_fwd(x.contiguous(), weight.contiguous(), float(eps))[0]
    return _RMSNorm.apply(x.contiguous(), weight.contiguous(), float(eps), ext)


class _SoftplusGap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw, bias, gap, ext):
        ctx.save_for_backward(raw, bias, gap)
        return ext.softplus_gap(raw, bias, gap)

    @staticmethod
    def backward(ctx, g):
        raw, bias, gap = ctx.saved_tensors
        d = g * gap.unsqueeze(1) * torch.sigmoid(raw + bias[:, None])
        return d, d.sum((0, 2)), None, None


def softplus_gap(raw: Tensor, bias: Tensor, gap: Tensor) -> Tensor:
    """The block scope's step sizes ``softplus(raw + bias) · gap``, no checks.

    Parameters
    ----------
    raw : (batch, E, L) Δ before its bias.
    bias : (E,).
    gap : (batch, L) tokens since the previous segment start (no gradient).

    Returns
    -------
    (batch, E, L); one pass of the kernel's softplus on the CPU (torch's softplus is the slowest
    elementwise op of the block scope's forward), the torch expression elsewhere. Differentiable in
    ``raw`` and ``bias``.
    """
    gap = gap.to(raw.dtype)
    ext = cpu_kernels(raw, bias) if bias.dtype == raw.dtype else None
    if ext is None:
        return F.softplus(raw + bias[:, None]) * gap.unsqueeze(1)
    if not needs_grad(raw, bias):
        return ext.softplus_gap(raw.contiguous(), bias.contiguous(), gap.contiguous())
    return _SoftplusGap.apply(raw.contiguous(), bias.contiguous(), gap.contiguous(), ext)


def policy_kernels():
    """The CPU extension holding the policy's sequential steps (``dither_counts``,
    ``budget_controller``, ``bisect_scale``), or None without a compiled kernel (the policy then runs
    its numpy reference)."""
    return _build.load_cpu_extension()


__all__ = ["adaptive_selective_scan", "causal_conv1d_silu", "checkpoint_slots", "cpu_kernels", "needs_grad", "policy_kernels",
           "rms_norm",
           "selective_scan", "softplus_gap",
           "CHECKPOINT_SEGMENTS", "FULL_TILE"]
