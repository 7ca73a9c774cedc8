"""The decoding step of a whole :class:`~tiling.train.model.TiledLM` as one kernel call on the CPU
(issue 23, "decoding that skips work": between segment starts a tiled layer costs ``O(d_model)``).

:meth:`TiledLM.step <tiling.train.model.TiledLM.step>` is the reference: per layer an RMSNorm, the
layer's :meth:`~tiling.modules.TiledMamba.step_unchecked` (the block scope's pool, hold and mixer,
``tiling/modules/scope_block.py``) and the residual, then the final norm and the head. For a small
model each of those is a few microseconds of dispatch, and at budget 0.25 three tokens in four run
no mixer, so the dispatch was most of a step (a decode at 0.25 was 0.9× as fast as at budget 1). Here
the host decides each layer's segment starts (the tile router's :meth:`advance
<tiling.modules.router.TileRouter.advance>`, unchanged) and one call of the CPU kernel
(``kernels_cuda/lm_step.h``) does the rest.

It applies where the starts do not read the token (budget 1, or the uniform policy), every layer is
of the block scope with tile boundaries, every row starts together, and no gradient is wanted; else
:func:`fused_step` returns None and the caller takes the reference path, which also raises the
errors (a non-finite logit is found here and named there).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from tiling.modules.assignments import assignments
from tiling.modules.chunk import ChunkState
from tiling.modules.scope import TiledMambaState
from tiling.modules.step_weights import step_weights
from tiling.ops.scan import cpu_kernels

Tensor = torch.Tensor

#: the kernel's kind of a full-resolution layer (the tile router's kinds are 0, no row starts a segment,
#: and 2, every row does)
FULL = 3


class _Plan(NamedTuple):
    """What a step reads of the model, gathered once per model, budgets and count of assignments
    (:func:`~tiling.modules.assignments.assignments`: a parameter or module assigned anew anywhere
    makes a new plan), so a step makes no module attribute lookups (a microsecond each, dozens per
    step). ``same[k]``: layer k's policy at its budget equals layer k − 1's, so where the two also hold
    the same router state (one object, shared after the first step) layer k's starts are layer k − 1's
    (the uniform policy and budget 1 read nothing else)."""

    layers: tuple
    routers: tuple
    configs: tuple
    full: tuple
    same: tuple
    emb: Tensor
    norms: list
    eps: list
    head: tuple
    gates: list


def _plan(model, budgets: list[float]) -> _Plan | None:
    """The model's :class:`_Plan` at ``budgets``, or None where a layer's step needs more than the kernel
    holds: a scope other than block, token boundaries, or starts that read the token at its budget."""
    cache = model.__dict__.setdefault("_fused_plans", {})
    key = (assignments(), *budgets)
    plan = cache.get(key, False)
    if plan is not False:
        return plan
    layers = tuple(model.layers)
    ok = all(layer.scope == "block" and layer._scope.boundaries.name == "tile"
             and not layer.tile_router.reads_signal(c) for layer, c in zip(layers, budgets))
    configs = [layer.tile_router._config(c) if ok else None for layer, c in zip(layers, budgets)]
    plan = None if not ok else _Plan(
        layers=layers, routers=tuple(layer.tile_router for layer in layers), configs=tuple(configs),
        full=tuple(layer._full(c) for layer, c in zip(layers, budgets)),
        same=(False, *(a == b for a, b in zip(configs, configs[1:]))),
        emb=model.embedding.weight, norms=[n.weight for n in model.norms] + [model.norm_f.weight],
        eps=[float(n.eps) for n in model.norms] + [float(model.norm_f.eps)],
        head=(model.head.weight, model.head.bias), gates=[layer.chunk.pool_gate for layer in layers])
    if len(cache) >= 16 or any(k[0] != key[0] for k in cache):  # plans of earlier assignments are stale
        cache.clear()
    cache[key] = plan
    return plan


def share_router_states(model, states: list) -> list:
    """``states`` (fresh, one per layer) where each layer whose tile router has the configuration of the
    layer before it holds that layer's router state object (equal in value, and states are immutable),
    so that :func:`fused_step` runs one policy step for both (``_Plan.same``)."""
    out = list(states)
    layers = list(model.layers)
    for k in range(1, len(out)):
        a, b = getattr(layers[k - 1], "tile_router", None), getattr(layers[k], "tile_router", None)
        if a is not None and b is not None and out[k].tile_router is not None and a.tiling == b.tiling:
            out[k] = dataclasses.replace(out[k], tile_router=out[k - 1].tile_router)
    return out


def fused_step(model, tokens: Tensor, state: list, budgets: list[float]) -> tuple[Tensor, list] | None:
    """:meth:`TiledLM.step <tiling.train.model.TiledLM.step>` on checked ``tokens`` and ``state`` at
    the layers' checked ``budgets``, in one kernel call; None where it does not apply.

    Returns
    -------
    ``(logits (batch, vocab), [TiledMambaState per layer])``, equal to the reference path's to
    float rounding (the tests compare them to 1e-6), or None.
    """
    plan = _plan(model, budgets)
    if plan is None or (torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())):
        return None
    ext = cpu_kernels(plan.emb)
    if ext is None:
        return None
    t, dtype = state[0].position, plan.emb.dtype
    kinds, advanced, flat_state = [], [], []
    previous = None
    weights = []
    for layer, router, config, full, same, st in zip(plan.layers, plan.routers, plan.configs, plan.full, plan.same,
                                                     state):
        if st.position != t or st.ssm.dtype != dtype:
            return None
        if same and st.tile_router is previous.tile_router:  # the same policy on the same history: its starts
            tile_router, kind = advanced[-1], kinds[-1]
        else:  # TileBoundaries.starts without the token (_plan: the policy reads none)
            _, tile_router, kind = router.advance(None, st.tile_router, config)
        previous = st
        if kind == 1:  # some rows start a segment, others not: the reference path
            return None
        kinds.append(FULL if full else kind)
        advanced.append(tile_router)
        flat_state += [st.conv, st.ssm, st.held, st.chunk.pool_sum, st.chunk.pool_count, st.last_start]
        weights += step_weights(layer, dtype)
    out = ext.lm_step(tokens.contiguous(), plan.emb, plan.norms, plan.eps, *plan.head, weights, plan.gates, kinds,
                      flat_state, t)
    if not bool(out[1]):
        return None
    new = []
    for k, (st, tile_router) in enumerate(zip(state, advanced)):
        conv, ssm, held, pool_sum, pool_count, last_start = out[2 + 6 * k: 8 + 6 * k]
        new.append(TiledMambaState(conv=conv, ssm=ssm, route=st.route, position=t + 1, held=held,
                                   chunk=ChunkState(pool_sum=pool_sum, pool_count=pool_count), router=st.router,
                                   tile_router=tile_router, last_start=last_start, proj=st.proj))
    return out[0], new


__all__ = ["fused_step"]
