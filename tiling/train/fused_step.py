"""The decoding step of a whole :class:`~tiling.train.model.TiledLM` as one kernel call on the CPU
(issue 23, "decoding that skips work": between segment starts a tiled layer costs ``O(d_model)``).

:meth:`TiledLM.step <tiling.train.model.TiledLM.step>` is the reference: per layer an RMSNorm, the
layer's :meth:`~tiling.modules.TiledMamba.step_unchecked` (the block scope's pool, hold and mixer,
``tiling/modules/scope_block.py``) and the residual, then the final norm and the head. For a small
model each of those is a few microseconds of dispatch, and at budget 0.25 three tokens in four run
no mixer, so the dispatch was most of a step (a decode at 0.25 was 0.9× as fast as at budget 1). Here
the host decides each layer's segment starts (the tile router's :meth:`decide
<tiling.modules.router.TileRouter.decide>`: the starts of a token never read the token itself, only
the tiles before it) and one call of the CPU kernel (``kernels_cuda/lm_step.h``) does the rest; where
a layer's policy reads the signal (the adaptive policies below budget 1), the kernel also computes the
token's signal from the layer's normalised input and its state's maps (the reference's
:func:`~tiling.modules.signal.step_signal`, to float rounding), which the host records
(:meth:`~tiling.modules.router.TileRouter.record`). Where the rows of a batch disagree (their own signals
place their segments), the layer's kind is 1 and the kernel runs the mixer on the rows that start, gathered,
each row as if decoded alone.

It applies where every layer is of the block scope with tile boundaries and no gradient is wanted; else
:func:`fused_step` returns None and the caller takes the reference path, which also raises the errors (a
non-finite logit or signal is found here and named there).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch

from tiling.modules.assignments import assignments
from tiling.modules.step_weights import kernel_weights
from tiling.ops.scan import cpu_kernels
from tiling.train.lm_state import FLAT_FIELDS, FlatState, Pending, TiledLMState, at_position, flatten, settle, signal_of

Tensor = torch.Tensor

#: the kernel's kind of a full-resolution layer (the tile router's kinds are 0, no row starts a segment,
#: and 2, every row does)
FULL = 3
#: ``LmDecoder.step``'s statuses (``kernels_cuda/lm_step.h``): done, and the weights changed since the decoder
#: was made (the other two, a non-finite logit and a token out of range, go to the reference path)
OK, STALE = 0, 2


class _Plan(NamedTuple):
    """What a step reads of the model, gathered once per model, budgets and count of assignments
    (:func:`~tiling.modules.assignments.assignments`: a parameter or module assigned anew anywhere
    makes a new plan), so a step makes no module attribute lookups (a microsecond each, dozens per
    step). ``same[k]``: layer k's policy at its budget equals layer k − 1's and reads no signal, so where
    the two also hold the same router state (one object, shared after the first step) layer k's starts
    are layer k − 1's (the uniform policy and budget 1 read nothing else). ``reads[k]``: layer k's
    policy reads the signal at its budget (``kernel_reads``: the same as the kernel takes it, empty
    where no layer reads). ``decoder``: the kernel's ``LmDecoder`` over
    the model's tensors (checked and converted once; it refuses a step once a parameter it reads is
    updated in place or moved, and the plan is made again). ``shared``: ``"full"`` where every layer is
    at full resolution, ``"same"`` where every layer has layer 0's policy and it reads no signal (so one
    decision serves all where the layers share one router state), else None. ``kind_lists``: per kind, the
    list of it for every layer, made once (the kernel only reads it). ``read_tiles``: the tile sizes of the
    layers whose policy reads the signal (their pending signals are recorded at each such tile's end)."""

    routers: tuple
    configs: tuple
    full: tuple
    same: tuple
    reads: tuple
    kernel_reads: list
    emb: Tensor
    dtype: torch.dtype
    decoder: object
    shared: str | None
    kind_lists: dict
    read_tiles: tuple


def _plan(model, budgets: list[float], *, stale: bool = False) -> _Plan | None:
    """The model's :class:`_Plan` at ``budgets``, or None where a layer's step needs more than the kernel
    holds: a scope other than block, or token boundaries, or (not kept) a model off the CPU or of a dtype
    the kernel lacks. ``stale``: the cached plan's decoder
    refused a step (its weights changed): make it again."""
    cache = model.__dict__.setdefault("_fused_plans", {})
    key = (assignments(), *budgets)
    plan = cache.get(key, False)
    if plan is not False and not stale:
        return plan
    layers = tuple(model.layers)
    ok = all(map(_kernel_layer, layers))
    ext = cpu_kernels(model.embedding.weight)
    if ok and ext is None:  # not a lasting property of the model: no plan is kept
        cache.pop(key, None)
        return None
    plan = None
    if ok:
        dtype = model.embedding.weight.dtype
        configs = tuple(layer.tile_router._config(c) for layer, c in zip(layers, budgets))
        weights, layer_sources, copied = kernel_weights(layers, dtype)
        norms = [n.weight for n in model.norms] + [model.norm_f.weight]
        gates = [layer.chunk.pool_gate for layer in layers]
        head = (model.head.weight, model.head.bias)
        sources = [model.embedding.weight, *norms, *gates, *(p for p in head if p is not None), *layer_sources]
        eps = [float(n.eps) for n in model.norms] + [float(model.norm_f.eps)]
        decoder = ext.LmDecoder(model.embedding.weight, norms, eps, *head, weights, gates, sources, copied)
        reads = tuple(layer.tile_router.reads_signal(c) for layer, c in zip(layers, budgets))
        full = tuple(layer._full(c) for layer, c in zip(layers, budgets))
        same = (False, *(a == b and not r for a, b, r in zip(configs, configs[1:], reads[1:])))
        shared = "full" if all(full) else "same" if all(same[1:]) and not reads[0] and not any(full) else None
        plan = _Plan(routers=tuple(layer.tile_router for layer in layers), configs=configs, full=full, same=same,
                     reads=reads, kernel_reads=[int(r) for r in reads] if any(reads) else [],
                     emb=model.embedding.weight, dtype=dtype, decoder=decoder, shared=shared,
                     kind_lists={kind: [kind] * len(layers) for kind in (0, 1, 2, FULL)},
                     read_tiles=tuple({c.tile_size for c, r in zip(configs, reads) if r}))
    if len(cache) >= 16 or any(k[0] != key[0] for k in cache):  # plans of earlier assignments are stale
        cache.clear()
    cache[key] = plan
    return plan


def _kernel_layer(layer) -> bool:
    """Whether the kernel's step holds ``layer``: the block scope with tile boundaries."""
    return layer.scope == "block" and layer._scope.boundaries.name == "tile"


def _same_tiling(before, layer) -> bool:
    """Whether ``layer``'s tile router has the configuration of the one of the layer ``before`` it (then the
    two hold one router state object)."""
    a, b = getattr(before, "tile_router", None), getattr(layer, "tile_router", None)
    return a is not None and b is not None and a.tiling == b.tiling


def share_router_states(model, states: list) -> list:
    """``states`` (fresh, one per layer) where each layer whose tile router has the configuration of the
    layer before it holds that layer's router state object (equal in value, and states are immutable),
    so that :func:`fused_step` runs one policy step for both (``_Plan.same``)."""
    out = list(states)
    layers = list(model.layers)
    for k in range(1, len(out)):
        if out[k].tile_router is not None and _same_tiling(layers[k - 1], layers[k]):
            out[k] = dataclasses.replace(out[k], tile_router=out[k - 1].tile_router)
    return out


def zero_state(model, batch: int) -> FlatState | None:
    """The zero decoding state of ``model`` for ``batch`` rows, made in the kernel's flat form: each field
    stacked over the layers, the layers of one tiling sharing one router state (:func:`share_router_states`).
    It equals :func:`~tiling.train.lm_state.flatten` of the layers' ``allocate_inference_state`` (tested)
    without making the per-layer states the first step would stack again, a fixed cost of every decoding
    that weighs most on a cheap plan (issue 23); and it holds no signal maps (None), which the first step
    whose policy reads the signal makes (:func:`_with_maps`), so a decoding at budget 1 or under the uniform
    policy never pays for them (a cached lookup per layer, keyed on five parameters). None where the kernel's
    step does not apply (a scope other than block, token boundaries, no CPU kernel) or the layers differ in
    shape."""
    layers = tuple(model.layers)
    first = layers[0]
    p = first.in_proj.weight
    shape = (first.d_model, first.d_inner, first.d_conv, first.d_state, p.dtype, p.device)
    if not all(_kernel_layer(layer)
               and (layer.d_model, layer.d_inner, layer.d_conv, layer.d_state, layer.in_proj.weight.dtype,
                    layer.in_proj.weight.device) == shape for layer in layers) or cpu_kernels(p) is None:
        return None
    n, d, E = len(layers), first.d_model, first.d_inner
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    tensors = [p.new_zeros(n, batch, E, first.d_conv), torch.zeros(n, batch, E, first.d_state, dtype=acc),
               p.new_zeros(n, batch, d), p.new_zeros(n, batch, d), torch.zeros(n, batch, dtype=torch.int64),
               torch.zeros(n, batch, dtype=torch.int64)]
    routers = []
    for k, layer in enumerate(layers):
        shared = k > 0 and _same_tiling(layers[k - 1], layer)
        routers.append(routers[-1] if shared else layer.tile_router.allocate(batch, device=p.device))
    fixed = tuple((p.new_zeros(batch, E), None, None) for _ in layers)  # the maps: at the first step that reads
    return FlatState(tensors, tuple(routers), 0, fixed, None)


def _with_maps(model, flat: FlatState) -> FlatState:
    """``flat`` with every layer's signal maps (``_signal_maps``, of the weights now) where some layer's state
    holds none: a zero state makes them at the first step whose policy reads the signal."""
    with torch.no_grad():
        projs = [proj if proj is not None else layer._signal_maps()
                 for layer, (_, _, proj) in zip(model.layers, flat.fixed)]
    fixed = tuple((route, router, proj) for (route, router, _), proj in zip(flat.fixed, projs))
    return flat._replace(fixed=fixed, signal=signal_of(projs))


def _unread_kind(router, config, tile_router, t: int) -> tuple:
    """``(router state, kind)`` at token ``t`` of a policy that reads no signal: the plan of the tile the
    uniform policy planned where ``t`` lies inside it, else ``TileBoundaries.starts``' decision."""
    kind = router.planned(tile_router, config, t)
    if kind is None:
        _, tile_router, kind = router.advance(None, at_position(tile_router, t), config, host_only=True)
    return tile_router, kind


def _one_object(items: tuple) -> bool:
    """Whether every entry of ``items`` is its first (identity: router states hold tensors, whose ``==`` is
    elementwise)."""
    first = items[0]
    for item in items:
        if item is not first:
            return False
    return True


def _in_planned_tiles(plan: _Plan, flat: FlatState, t: int) -> bool:
    """Whether token ``t`` lies, for every layer whose policy reads the signal, inside the tile its state
    planned at the tile's first token (then :func:`_kinds` reads the plan, not the history, and the tile's
    pending signals may wait)."""
    return all(_planned_at(state, config, t) for state, config, reads in zip(flat.tile_routers, plan.configs,
                                                                           plan.reads) if reads)


def _planned_at(state, config, t: int) -> bool:
    """Whether token ``t`` lies inside the tile ``state`` planned at the tile's first token (not that token)."""
    off = t % config.tile_size
    return bool(off) and state.starts is not None and t - off <= state.position <= t


def _kinds(plan: _Plan, routers: tuple, t: int) -> tuple[list, tuple | list, list]:
    """Each layer's kind at token ``t``, its router state after the decision, and where some rows start a
    segment and others not (kind 1) whether each row does (layers × batch, row-major; empty where no layer
    is of kind 1), from the states ``routers`` of :class:`FlatState` (of token ``t`` or of an earlier one).
    The states come as ``routers`` itself where none changed (inside a planned tile, or at full resolution:
    no new object at most steps), as a list where the caller records a signal."""
    if plan.shared == "full":  # every token starts a segment in every layer: the router states stay behind
        return plan.kind_lists[FULL], routers, []
    if plan.shared == "same" and _one_object(routers):  # one decision serves every layer
        tile_router, kind = _unread_kind(plan.routers[0], plan.configs[0], routers[0], t)
        rows = _row_starts(tile_router, plan.configs[0], t) * len(routers) if kind == 1 else []
        return plan.kind_lists[kind], (routers if tile_router is routers[0] else (tile_router,) * len(routers)), rows
    kinds, advanced = [], []
    for k, (router, config, full, same, reads) in enumerate(zip(plan.routers, plan.configs, plan.full, plan.same,
                                                                plan.reads)):
        tile_router = routers[k]  # of token t, or of an earlier token (FlatState)
        if same and tile_router is routers[k - 1]:  # the same policy on the same history
            tile_router, kind = advanced[-1], kinds[-1]
        elif full:  # every token starts a segment: the router state would change only its position
            kind = FULL
        elif reads and _planned_at(tile_router, config, t):
            kind = tile_router.starts[t % config.tile_size]  # inside the tile the policy planned at its first
            # token, whose state (with the tile's signals pending, FlatState.pending) decide would return as it is
        elif reads:  # the starts from the tiles before; the token's signal is recorded after the kernel
            _, tile_router, kind = router.decide(at_position(tile_router, t), config, host_only=True)
        else:
            tile_router, kind = _unread_kind(router, config, tile_router, t)
        kinds.append(kind)
        advanced.append(tile_router)
    rows = []
    if 1 in kinds:  # the rows' own starts of the layers where they differ (each row as if decoded alone)
        batch = advanced[kinds.index(1)].boundary.shape[0]
        for kind, tile_router, config in zip(kinds, advanced, plan.configs):
            rows += _row_starts(tile_router, config, t) if kind == 1 else [0] * batch
    return kinds, advanced, rows


def _row_starts(tile_router, config, t: int) -> list[int]:
    """Whether each row starts a segment at token ``t``, from the plan of the tile of ``tile_router`` (a state
    of that tile, decided at its first token)."""
    return [int(v) for v in tile_router.boundary[:, t % config.tile_size].tolist()]


class Resume(NamedTuple):
    """What a state made by :func:`fused_step` remembers of the call that made it, so that the next step
    on it skips the checks that still hold (:func:`resume_step`): the model (``id``), the ``budget``
    argument, the count of :func:`~tiling.modules.assignments.assignments` then, the layers' checked
    budgets and the plan."""

    owner: int
    budget: float | None
    assigned: int
    budgets: list
    plan: _Plan


def fused_step(model, tokens: Tensor, state: Sequence, budgets: list[float], batch: int,
               budget: float | None = None) -> tuple[Tensor, TiledLMState] | None:
    """:meth:`TiledLM.step <tiling.train.model.TiledLM.step>` on checked ``tokens`` of ``batch`` rows and
    ``state`` at the layers' checked ``budgets`` (of the call's ``budget`` argument), in one kernel call;
    None where it does not apply.

    Returns
    -------
    ``(logits (batch, vocab), new state)``, equal to the reference path's to float rounding (the tests
    compare them to 1e-6), or None. The new state is in the kernel's flat form
    (:class:`~tiling.train.lm_state.FlatState`), which the next call reads as it is, and remembers the
    call (:class:`Resume`).
    """
    if torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()):
        return None
    plan = _plan(model, budgets)
    if plan is not None and (not plan.emb.is_cpu or plan.emb.dtype is not plan.dtype):  # the model was moved
        plan = _plan(model, budgets, stale=True)
    if plan is None:
        return None
    flat = getattr(state, "flat", None)  # a state of the kernel: one dtype and one position by construction
    if flat is None:
        if any(st.position != state[0].position or st.ssm.dtype != plan.dtype or st.conv.shape != state[0].conv.shape
               for st in state):
            return None
        flat = flatten(state)
    elif flat.tensors[1].dtype != plan.dtype:
        return None
    return _run(model, plan, tokens, flat, batch, Resume(id(model), budget, assignments(), budgets, plan))


def resume_step(model, tokens: Tensor, state: Sequence, budget: float | None) -> tuple[Tensor, TiledLMState] | None:
    """:func:`fused_step` on the state its previous call made for this model, at the same ``budget``
    argument, with no parameter or module assigned since and no gradient wanted: the checks that call
    made of the budget, the state and the plan still hold, so only the tokens' form is checked (their
    values: the kernel). None where any of that differs (the caller then takes :func:`fused_step`'s way,
    which checks everything); a parameter updated in place or moved is the kernel's ``STALE``."""
    r = getattr(state, "resume", None)
    if (r is None or r.owner != id(model) or r.assigned != assignments() or type(budget) is not type(r.budget)
            or budget != r.budget or torch.is_grad_enabled() or not isinstance(tokens, Tensor)
            or tokens.dtype is not torch.int64 or tokens.dim() != 1 or tokens.shape[0] != state.batch):
        return None
    return _run(model, r.plan, tokens, state.flat, state.batch, r)


def _run(model, plan: _Plan, tokens: Tensor, flat: FlatState, batch: int,
         resume: Resume) -> tuple[Tensor, TiledLMState] | None:
    """The kernel's step on the flat state, with the policies' decisions and records around it."""
    if torch._C._are_functorch_transforms_active() or torch._C._len_torch_dispatch_stack():
        return None  # a transform or dispatch mode sees torch's ops, not the kernel (cpu_kernels)
    t = flat.position
    if flat.pending is not None and (flat.pending.configs != plan.configs or not _in_planned_tiles(plan, flat, t)):
        flat = settle(flat)  # kept at another budget, or a layer's decision reads its history: record them now
    kinds, advanced, rows = _kinds(plan, flat.tile_routers, t)
    tokens = tokens.contiguous()
    if plan.kernel_reads and flat.signal is None:
        flat = _with_maps(model, flat)
    signal = flat.signal if plan.kernel_reads else ((), ())  # the maps cross into C++ only where a layer reads
    status, out = plan.decoder.step(tokens, kinds, flat.tensors, t, plan.kernel_reads, *signal, rows)
    if status == STALE:  # a parameter was updated in place or moved since the plan was made
        plan = _plan(model, resume.budgets, stale=True)
        if plan is None or flat.tensors[1].dtype != plan.dtype:  # moved off the CPU, or to another dtype
            return None
        resume = resume._replace(plan=plan)
        status, out = plan.decoder.step(tokens, kinds, flat.tensors, t, plan.kernel_reads, *signal, rows)
    if status != OK:  # a non-finite logit or signal, or a token out of range: the reference path names it
        return None
    pending = None
    if plan.kernel_reads:  # the token's signal (layers, batch) joins the reading layers' pending ones
        rho = out[-1]  # in the model's dtype: settle converts a tile's at once (exact)
        p = flat.pending
        pending = Pending(plan.routers, plan.configs, plan.reads, (rho,) if p is None else p.signals + (rho,))
    new = FlatState(out[1:1 + len(FLAT_FIELDS)], tuple(advanced), t + 1, flat.fixed, flat.signal, pending)
    if pending is not None and any(t % size == size - 1 for size in plan.read_tiles):
        new = settle(new)  # a reading layer's tile ends: its signals fold into the history the next tile plans on
    return out[0], TiledLMState.of_flat(new, id(model), batch, resume)


__all__ = ["Resume", "fused_step", "resume_step", "zero_state"]
