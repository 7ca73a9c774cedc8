"""What a scope of :class:`~tiling.modules.TiledMamba` does: the contract of its strategies.

A *scope* says where the resolution acts (``docs/tiling.md``): the *scan* scope
(:class:`~tiling.modules.scope_scan.ScanScope`, seed 001 §3.2–3.4) shrinks the recurrence only, the
*block* scope (:class:`~tiling.modules.scope_block.BlockScope`, seed 000 §3.5.1 step 1) runs the
whole mixer on one token per segment. The layer owns the Mamba mixer (its parameters, projections,
conv, scan and one-token step) and the checks at its boundary; it picks its strategy once, in
``__init__``, and hands every scope-dependent step to it: building the scope's parameters on the
layer, the forward, the plan, the cost, the recurrent state and the generation step. A strategy
keeps no parameters of its own (they are the layer's, under the names checkpoints have always
used); it may keep caches that depend on the call's shape only.

The recurrent state both scopes share is :class:`TiledMambaState`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tiling.config import TilingConfig
from tiling.modules.chunk import ChunkState, SegmentLayout
from tiling.modules.router import RouterState, TileRouterState
from tiling.tile import TilePlan

if TYPE_CHECKING:  # the layer imports the strategies, not the other way round
    from tiling.modules.tiled_mamba import TiledMamba

Tensor = torch.Tensor


@dataclass(frozen=True)
class TiledMambaState:
    """Recurrent state for :meth:`TiledMamba.step <tiling.modules.TiledMamba.step>`.

    Attributes
    ----------
    conv : (batch, d_inner, d_conv) the last ``d_conv`` conv inputs.
    ssm : (batch, d_inner, N) float32 (float64 for a float64 layer): the scan state.
    route : (batch, d_inner) the routed vector added to the outputs of the current tile.
    position : tokens consumed so far.
    held : block scope: (batch, d_model) the output of the current segment.
    chunk : block scope: the pool of the current segment.
    router : block scope, ``boundaries="token"``: the learned router's previous key.
    tile_router : block scope, ``boundaries="tile"``: the policy's history
        (:class:`~tiling.modules.router.TileRouterState`).
    last_start : block scope: (batch,) the position of the current segment's representative.
    proj : block scope: the signal's composite map, computed once.

    Notes
    -----
    In the block scope ``conv`` and ``ssm`` are the mixer's state on the *compact* sequence.
    """

    conv: Tensor
    ssm: Tensor
    route: Tensor
    position: int
    held: Tensor | None = None
    chunk: ChunkState | None = None
    router: RouterState | None = None
    tile_router: TileRouterState | None = None
    last_start: Tensor | None = None
    proj: tuple | None = None


@dataclass(frozen=True)
class TileCosts:
    """Per-tile figures of a plan, as a scope counts them (the layer wraps them in a :class:`TilePlan`).

    Attributes
    ----------
    segments : (batch, n_tiles) int64 segments (mixer tokens) per tile.
    madd, exp : (batch, n_tiles) int64 multiply-adds and exponentials per tile.
    mode : the plan's ``mode`` (the resolution policy, or ``"router"``).
    meta : the plan's ``meta`` (``scope``, ``layer_cost``, ...).
    """

    segments: Tensor
    madd: Tensor
    exp: Tensor
    mode: str
    meta: dict


class Scope(ABC):
    """A scope's strategy: what :class:`~tiling.modules.TiledMamba` does differently per scope.

    Parameters
    ----------
    tiling : the layer's :class:`~tiling.config.TilingConfig` (``s_max`` resolved).

    Every method takes the layer, whose mixer and parameters it uses; none keeps a reference to it.
    """

    def __init__(self, tiling: TilingConfig) -> None:
        self.tiling = tiling

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @abstractmethod
    def build(self, layer: TiledMamba, factory: dict) -> None:
        """Register the scope's parameters, buffers and submodules on ``layer`` (``factory``: device, dtype)."""

    @abstractmethod
    def forward(self, layer: TiledMamba, x: Tensor, density: Tensor | None, curvature: Tensor | None, c: float,
                return_plan: bool, residual: Tensor | None = None):
        """The layer's forward on checked arguments at budget ``c``: the output (plus ``residual`` where
        given), or ``(output, plan)``."""

    @abstractmethod
    def plan(self, layer: TiledMamba, x: Tensor, density: Tensor | None, curvature: Tensor | None,
             c: float) -> TilePlan:
        """The plan :meth:`forward` would use (no scan), on checked arguments, under ``no_grad``."""

    @abstractmethod
    def tile_costs(self, layer: TiledMamba, R: Tensor, S: Tensor, rho: Tensor | None, L: int, budget: float,
                   layout: SegmentLayout | None) -> TileCosts:
        """Per-tile segments and costs of a plan with CPU resolutions ``R`` and state dims ``S``."""

    @abstractmethod
    def computes_signal(self, layer: TiledMamba, budget: float) -> bool:
        """Whether the forward at ``budget`` computes the resolution signal (the density, the router's
        scores) to place its segments; a plan may compute it only to report it, and that is not counted."""

    @abstractmethod
    def cost(self, layer: TiledMamba, L: int, common: dict, *, compact_length: int | None,
             resolution: Tensor | None, state_dims: Tensor | None, signal: bool) -> dict[str, int]:
        """:func:`~tiling.ops.layer_cost` of the scope (``common``: the layer's shapes and ``batch``)."""

    @abstractmethod
    def allocate(self, layer: TiledMamba, state: TiledMambaState) -> TiledMambaState:
        """The zero state of :meth:`TiledMamba.allocate_inference_state`, from the mixer's zero ``state``."""

    @abstractmethod
    def check_state(self, layer: TiledMamba, state: TiledMambaState) -> None:
        """Refuse a state (of the right shapes) that another scope or boundaries mode allocated."""

    @abstractmethod
    def check_step_budget(self, budget: float | None, c: float) -> None:
        """Refuse a budget :meth:`step` cannot run at (``budget`` as given, ``c`` as checked)."""

    @abstractmethod
    def step(self, layer: TiledMamba, x: Tensor, state: TiledMambaState, c: float
             ) -> tuple[Tensor, TiledMambaState]:
        """One token ``x`` (batch, d_model) at budget ``c``, unchecked: ``(output, new state)``."""


def all_finite(x: Tensor) -> bool:
    """Whether ``x`` holds no NaN/Inf, in one pass: the sum of a tensor with a NaN or an infinity is
    not finite; a finite tensor whose sum overflows is then checked element by element."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


__all__ = ["Scope", "TileCosts", "TiledMambaState", "all_finite"]
