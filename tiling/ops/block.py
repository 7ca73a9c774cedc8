"""The block scope's mixer in inference as one kernel call (``kernels_cuda/block_fwd.h``).

:class:`~tiling.modules.TiledMamba`'s block scope runs, per layer (seed 000 §3.5.1 step 1)::

    chunk → in_proj → conv + SiLU → x_proj → dt_proj → Δ = softplus(·)·gap → scan at R = 1 → out_proj → hold

about thirty Python-level calls, each a dispatch through the interpreter. On the CPU that work
costs the same whatever the plan, so it weighs most at a low budget, and none of it is arithmetic
the count holds (issue 23: time follows FLOPs; ``docs/benchmarks.md``, runs 18–23).
:func:`block_mixer` makes the same products and kernel calls from C++, in the same order on the same
layouts, so its output equals the Python path bit for bit (tested); the Python
path stays the reference, and runs wherever this one does not (a gradient, another device, a
``torch.func`` transform or dispatch mode such as ``FlopCounterMode``).
"""
from __future__ import annotations

import torch

from tiling.ops.scan import FULL_TILE, _full_plan, cpu_kernels, needs_grad

Tensor = torch.Tensor


def block_mixer(x: Tensor, *, in_proj: torch.nn.Linear, conv1d: torch.nn.Conv1d, x_proj: torch.nn.Linear,
                dt_proj: torch.nn.Linear, A_log: Tensor, D: Tensor, out_proj: torch.nn.Linear,
                start: Tensor | None = None, span: Tensor | None = None, gate: Tensor | None = None,
                gap: Tensor | None = None, residual: Tensor | None = None) -> Tensor | None:
    """The Mamba mixer of the block scope on a layout, in one kernel call, or None where it does not run.

    Parameters
    ----------
    x : (batch, L, d_model), contiguous; the layer's (already checked) input.
    in_proj, conv1d, x_proj, dt_proj, out_proj, A_log, D : the layer's mixer, as ``TiledMamba`` holds it.
    start, span : the :class:`~tiling.modules.chunk.SegmentLayout`'s (batch, L_c) int64 tensors, or None
        where every token is a segment (no chunk, no hold).
    gate : the open pool gate (d_model,), or None for a closed one (the representatives alone).
    gap : (batch, L_c) tokens since the previous segment's start, scaling Δ; None: no layout.
    residual : (batch, L, d_model) contiguous, of ``x``'s dtype, or None: added to the output as the hold
        writes it (``residual + mixer(x)``, the same sums as a separate add, one pass over the
        full-resolution output fewer: :class:`~tiling.train.TiledLM`'s ``h + layer(norm(h))``).

    Returns
    -------
    (batch, L, d_model) equal to ``Dechunk(out_proj(scan(project(Chunk(x)))))`` (plus ``residual``), or None
    when a gradient is wanted, a tensor is not a float32/float64 CPU tensor of ``x``'s dtype, a
    ``torch.func`` transform or dispatch mode is active, or the conv is longer than the kernel's 16 taps:
    the caller then runs the Python path.
    """
    params = [in_proj.weight, conv1d.weight, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight]
    biases = [in_proj.bias, conv1d.bias, out_proj.bias]
    present = [t for t in params + biases + [gate, residual] if t is not None]
    if (dt_proj.bias is None or conv1d.weight.shape[-1] > 16 or needs_grad(x, *present)
            or any(t.dtype != x.dtype for t in present if t is not A_log)):
        return None
    ext = cpu_kernels(x, *present)
    if ext is None:
        return None
    batch, Lc = (x.shape[0], x.shape[1]) if start is None else tuple(start.shape)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    R, m, S, slot, n_ckpt = _full_plan(batch, Lc, FULL_TILE, A_log.shape[-1], acc, x.device)
    return ext.block_fwd(x, start, span, gate, gap, in_proj.weight, in_proj.bias, conv1d.weight, conv1d.bias,
                         x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight, out_proj.bias,
                         R, m, S, slot, n_ckpt, FULL_TILE, residual)


__all__ = ["block_mixer"]
