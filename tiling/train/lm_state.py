"""The decoding state of :class:`~tiling.train.model.TiledLM`: one layer state per layer.

A state made by the whole-model kernel (:func:`~tiling.train.fused_step.fused_step`) keeps the
layers' tensors as the kernel reads them, each field stacked over the layers, and makes the
per-layer :class:`~tiling.modules.TiledMambaState` objects (views of those tensors) only when
someone reads them. At budget 0.25 three tokens in four run no mixer, and there making ten-field
objects and two dozen tensors for every step was most of a step's time (issue 23, decode at batch 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from tiling.modules.chunk import ChunkState
from tiling.modules.router import TileRouterState
from tiling.modules.scope import TiledMambaState

Tensor = torch.Tensor

#: the kernel's stacked fields, in its order (``kernels_cuda/lm_step.h``)
FLAT_FIELDS = ("conv", "ssm", "held", "pool_sum", "pool_count", "last_start")


class Pending(NamedTuple):
    """The signals of a tile's tokens that the whole-model step computed and has not yet recorded into the
    router states of the layers whose policy reads them: recording each token's (a concatenation and a new
    state per layer) was a large part of a decoding step of the adaptive policy (issue 23), so the step keeps
    them and records a tile's at its end (:meth:`TileRouter.record_many
    <tiling.modules.router.TileRouter.record_many>`).

    Attributes
    ----------
    routers, configs, reads : per layer its tile router, the configuration at the step's budget and whether
        its policy reads the signal (the plan's, ``tiling.train.fused_step``).
    signals : one (layers, batch) tensor per token since the states were last recorded, in the model's dtype
        (:func:`settle` converts them to the history's float64 at once, exactly).
    """

    routers: tuple
    configs: tuple
    reads: tuple
    signals: tuple


def settle(flat: FlatState) -> FlatState:
    """``flat`` with its :attr:`~FlatState.pending` signals recorded into the reading layers' router states
    (the same states as recording each token in turn)."""
    p = flat.pending
    if p is None:
        return flat
    routers = list(flat.tile_routers)
    first = flat.position - len(p.signals)  # the first pending token (a state may be older: full steps since)
    block = torch.stack(p.signals).to(torch.float64)  # (tokens, layers, batch) in the history's dtype (exact): one
    # op where a view per token and layer was most of an adaptive decoding's host time at a tile's end
    for k, (router, config, reads) in enumerate(zip(p.routers, p.configs, p.reads)):
        if reads:
            routers[k] = router.record_many(block[:, k], at_position(routers[k], first), config)
    return flat._replace(tile_routers=tuple(routers), pending=None)


class FlatState(NamedTuple):
    """The layers' state as the kernel reads and writes it.

    Attributes
    ----------
    tensors : one tensor per field of :data:`FLAT_FIELDS`, of shape ``(layers, *the layer's field)``.
    tile_routers : each layer's :class:`~tiling.modules.router.TileRouterState`, or that of an earlier
        token where the steps since changed only its position (inside a tile the uniform policy planned,
        :meth:`~tiling.modules.router.TileRouter.planned`, or at budget 1), so that most steps make none.
    position : the tokens consumed (every layer's).
    fixed : each layer's fields the step does not change, ``(route, router, proj)``.
    signal : the signal's maps of each layer's state as the kernel reads them, ``(maps, scales)``: four
        tensors per layer (the composite map, its offset or None, the sampled rows of dt_proj and their
        bias) and one scale per layer; None until a step reads them (a zero state makes none, and a decoding
        whose policies read no signal, at budget 1 or uniform, never does).
    pending : the signals of the current tile's tokens that the reading layers' router states in
        ``tile_routers`` do not hold yet (:class:`Pending`), or None: the whole-model step records them at the
        tile's last token, and :func:`settle` (which reading the layer states calls) before that.
    """

    tensors: list
    tile_routers: tuple
    position: int
    fixed: tuple
    signal: tuple
    pending: Pending | None = None


def flatten(layers: Sequence[TiledMambaState]) -> FlatState:
    """The :class:`FlatState` of per-layer states (block scope, all at one position and of one shape:
    the caller checks)."""
    fields = ([st.conv for st in layers], [st.ssm for st in layers], [st.held for st in layers],
              [st.chunk.pool_sum for st in layers], [st.chunk.pool_count for st in layers],
              [st.last_start for st in layers])
    return FlatState([torch.stack(f) for f in fields], tuple(st.tile_router for st in layers), layers[0].position,
                     tuple((st.route, st.router, st.proj) for st in layers), signal_of([st.proj for st in layers]))


def signal_of(projs: Sequence[tuple | None]) -> tuple[list, list] | None:
    """:attr:`FlatState.signal` of the layers' signal maps ``projs`` (each ``(proj, offset, w, b, scale)``), or
    None where a layer's state holds none yet (:func:`~tiling.train.fused_step.zero_state`)."""
    if any(proj is None for proj in projs):
        return None
    return [t for proj in projs for t in proj[:4]], [proj[4] for proj in projs]


def at_position(state: TileRouterState, position: int) -> TileRouterState:
    """A router state of :class:`FlatState` at ``position`` (the same object where it is already there)."""
    if state.position == position:
        return state
    # the fields by hand: dataclasses.replace re-reads the class's fields, 2 us of a decoding step's tile start
    return TileRouterState(position, state.signal, state.tiles, state.carry, state.boundary, state.surplus,
                           state.starts)


def unflatten(flat: FlatState) -> list[TiledMambaState]:
    """The per-layer states of a :class:`FlatState` (their tensors are views of its stacked ones, which
    no step writes)."""
    out = []
    flat = settle(flat)
    for k, (tile_router, (route, router, proj)) in enumerate(zip(flat.tile_routers, flat.fixed)):
        conv, ssm, held, pool_sum, pool_count, last_start = (t[k] for t in flat.tensors)
        out.append(TiledMambaState(conv=conv, ssm=ssm, route=route, position=flat.position, held=held,
                                   chunk=ChunkState(pool_sum=pool_sum, pool_count=pool_count), router=router,
                                   tile_router=at_position(tile_router, flat.position), last_start=last_start,
                                   proj=proj))
    return out


class TiledLMState:
    """The decoding state of :class:`~tiling.train.model.TiledLM`: a sequence of one
    :class:`~tiling.modules.TiledMambaState` per layer, and the model it belongs to.

    Parameters
    ----------
    layers : the layer states, or None with ``flat``.
    owner : ``id`` of the model that made it (:meth:`TiledLM.step` refuses the state of another model).
    flat : the kernel's :class:`FlatState`, or None with ``layers``.

    Attributes
    ----------
    owner, batch : the model's ``id`` and the rows the state was made for.
    flat : the kernel's form, or None once a layer state was replaced (``state[k] = ...``).
    resume : what the kernel's step that made it remembers of its call
        (:class:`~tiling.train.fused_step.Resume`, so the next step skips the checks that still hold), or
        None (a state made otherwise, or once a layer state was replaced).

    Notes
    -----
    Indexing, iterating and assigning a layer (``state[k] = dataclasses.replace(state[k], ...)``)
    work as on the list of layer states; the layer states are made from ``flat`` once, when first read.
    """

    def __init__(self, layers: Sequence[TiledMambaState] | None = None, *, owner: int,
                 flat: FlatState | None = None) -> None:
        if (layers is None) == (flat is None):
            raise TypeError("TiledLMState takes either layers or flat")
        self._layers = None if layers is None else list(layers)
        self.flat = flat
        self.owner = owner
        self.resume = None
        if flat is not None:
            self.batch = int(flat.tensors[0].shape[1])
        else:
            self.batch = int(self._layers[0].conv.shape[0]) if self._layers else 0

    @classmethod
    def of_flat(cls, flat: FlatState, owner: int, batch: int, resume) -> TiledLMState:
        """The state of the kernel's step: ``flat`` of ``batch`` rows and the step's ``resume``, made
        without ``__init__``'s checks (a decoding step makes one per token)."""
        self = cls.__new__(cls)
        self._layers, self.flat, self.owner, self.batch, self.resume = None, flat, owner, batch, resume
        return self

    @property
    def layers(self) -> list[TiledMambaState]:
        if self._layers is None:
            self._layers = unflatten(self.flat)
        return self._layers

    def started(self) -> Tensor:
        """(layers, batch) bool: whether each layer's last token started a segment (its mixer ran on
        it); read from the flat form without making the layer states. Every token does in a layer
        without segments (``last_start`` None)."""
        if self.flat is not None:
            return self.flat.tensors[FLAT_FIELDS.index("last_start")] == self.flat.position - 1
        return torch.stack([torch.ones(self.batch, dtype=torch.bool) if st.last_start is None
                            else (st.last_start == st.position - 1).cpu() for st in self.layers])

    def __len__(self) -> int:
        return len(self.flat.tile_routers) if self._layers is None else len(self._layers)

    def __getitem__(self, k):
        return self.layers[k]

    def __iter__(self):
        return iter(self.layers)

    def __setitem__(self, k: int, value: TiledMambaState) -> None:
        self.layers[k] = value
        self.flat = self.resume = None  # the flat form no longer says what the layers hold

    def __repr__(self) -> str:
        return f"TiledLMState(layers={len(self)}, batch={self.batch}, owner={self.owner:#x})"


Sequence.register(TiledLMState)  # a sequence of layer states, without ABCMeta's slower isinstance on every step

__all__ = ["FLAT_FIELDS", "FlatState", "TiledLMState", "at_position", "flatten", "signal_of", "unflatten"]
