""":meth:`HourglassLM.step <tiling.modules.hourglass.HourglassLM.step>` in one call of the CPU kernel
(``HourglassDecoder``, ``kernels_cuda/hourglass_step.h``), for the boundary signals ``uniform``, H-Net's cosine
``router``, and the auxiliary head's ``entropy`` and ``surprisal``, in the byte form with either rule.

The reference step runs the three stages' kernels among some forty small torch calls a byte (the router's
maps and norms, the controller, the pool, the EMA, the residual, the head, the checks): at d_outer 176 those
cost more than the stages' arithmetic (stop 42, ``scripts/bench_equal_bpb.py``: 540 µs a byte for the router's
checkpoint at 0.5, 180 µs in one call).
Here the whole byte is one call; the reference stays, and runs wherever this does not apply (the
Fisher–Rao speed, the linear density and the space-like rule; the tile form; budget conditioning; a stage
of no layers; training mode; another device or dtype; a ``torch.func`` transform or a dispatch mode) and
wherever the kernel declines a step (a token out of range, a NaN/Inf logit: the reference names it).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from tiling.modules.boundary import BoundaryState
from tiling.modules.chunk import ChunkState
from tiling.modules.router import RouterState
from tiling.modules.stack import StackState
from tiling.ops.scan import cpu_kernels

Tensor = torch.Tensor

#: ``HourglassDecoder.step``'s statuses (``kernels_cuda/lm_step.h``'s): done, and a weight moved or updated in place
_OK, _STALE = 0, 2
#: the signals the kernel computes, as ``hgstep::Signal`` numbers them
_SIGNALS = {"uniform": 0, "router": 1, "entropy": 2, "surprisal": 3}


def applies(model, tokens: Tensor, state) -> bool:
    """Whether :func:`fast_step` can take this step (the model's configuration, mode, dtype and device)."""
    cfg, boundary = model.config, model.boundary
    w = model.embedding.weight
    return (cfg.boundary.signal in _SIGNALS and boundary.tile_router is None and boundary.causal
            and not cfg.budget_conditioning and all(len(s.layers) for s in (model.encoder, model.main, model.decoder))
            and not model.training and w.dtype in (torch.float32, torch.float64) and w.device.type == "cpu"
            and tokens.device.type == "cpu" and state.held.dtype == w.dtype
            and not torch._C._are_functorch_transforms_active() and not torch._C._len_torch_dispatch_stack())


def _decoder(model, ext, dtype: torch.dtype, *, stale: bool = False):
    """The kernel's ``HourglassDecoder`` over the model's weights in ``dtype``, kept as the stages' decoders are
    (:meth:`~tiling.modules.step_weights.KernelCacheOwner._kernel_object`); ``stale``: a kept one refused a step,
    make it (and the stages') again."""
    def make():
        stages = [getattr(model, n)._decoder(ext, dtype, stale=stale) for n in ("encoder", "main", "decoder")]
        router, cfg = model.boundary.router, model.config.boundary
        maps = [None, None] if router is None else [router.q_proj.weight, router.k_proj.weight]
        reads_aux = cfg.signal in ("entropy", "surprisal")
        aux = [model.aux_norm.weight, model.aux_head.weight] if reads_aux else [None, None]
        main = [None, None] if isinstance(model.main_in, torch.nn.Identity) else [model.main_in.weight,
                                                                               model.main_out.weight]
        sources = [model.embedding.weight, *(t for t in maps + aux + main if t is not None), model.chunk.pool_gate,
                   model.residual.weight, model.norm_f.weight]
        c = lambda t: None if t is None else t.detach().contiguous()  # noqa: E731
        return ext.HourglassDecoder(*stages, c(model.embedding.weight), _SIGNALS[cfg.signal], cfg.rule == "monotonic",
                                    *map(c, maps), c(aux[0]), float(model.aux_norm.eps) if reads_aux else 0.0,
                                    c(aux[1]), c(model.chunk.pool_gate), *map(c, main), c(model.residual.weight),
                                    c(model.norm_f.weight), float(model.norm_f.eps), model.config.dechunk == "ema",
                                    sources)

    return model._kernel_object("_hourglass_decoder", dtype, make, stale=stale)


def fast_step(model, tokens: Tensor, state, budget: float) -> tuple[Tensor, object] | None:
    """One byte per row on a checked ``state`` at a checked ``budget`` in one kernel call: ``(logits, state)``
    equal to the reference step's to float rounding, or None where the kernel does not take it (then the
    caller runs the reference)."""
    if not applies(model, tokens, state):
        return None
    ext = cpu_kernels(state.held)
    if ext is None:
        return None
    b, quantiles = state.boundary, model.boundary.quantiles
    router = model.boundary.router is not None
    scored = budget < 1.0 and model.config.boundary.signal != "uniform"
    threshold, scale = (quantiles.threshold(budget), quantiles.scale()) if scored else (math.inf, 1.0)
    tensors = [*state.encoder, *state.main, *state.decoder, state.chunk.pool_sum, state.chunk.pool_count,
               state.held, b.surplus, b.router.key if router else None, b.prev_logp, b.prev_score]
    args = (tokens.contiguous(), float(budget), float(threshold), float(scale), float(model.config.boundary.slack),
            b.position, tensors)
    status, out = _decoder(model, ext, state.held.dtype).step(*args)
    if status == _STALE:  # a weight was moved or updated in place since the decoder was made
        status, out = _decoder(model, ext, state.held.dtype, stale=True).step(*args)
    if status != _OK:
        return None
    logits, ec, es, mc, ms, dc, ds, pool_sum, pool_count, held, surplus, key, logp, raw, _, starts = out
    if not scored:  # budget 1 or the uniform rule: the signal's and the controller's states stay
        boundary = replace(b, position=b.position + 1)
    else:
        boundary = BoundaryState(position=b.position + 1, prev_logp=logp, prev_score=raw, prev_space=b.prev_space,
                                 surplus=surplus, router=RouterState(key=key) if router else b.router, tile=b.tile)
    return logits, replace(state, encoder=StackState(ec, es), main=StackState(mc, ms), decoder=StackState(dc, ds),
                           boundary=boundary, chunk=ChunkState(pool_sum=pool_sum, pool_count=pool_count), held=held,
                           starts=starts)


__all__ = ["applies", "fast_step"]
