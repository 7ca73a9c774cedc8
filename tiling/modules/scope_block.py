"""The block scope of :class:`~tiling.modules.TiledMamba`: the whole mixer runs on one token per segment.

Seed 000 §3.5.1 step 1 ("each tile processes O(R_i·n_i) tokens")::

    boundaries  →  segments (SegmentLayout)
    Chunk: representative + gated pool (tiling.modules.chunk)   (batch, L_c = Σ_i m_i, d_model)
    in_proj, conv, x_proj, dt_proj, scan at R = 1 (Δ × gap since the last segment), out_proj
    Dechunk: hold each segment's output over its tokens      (batch, L, d_model)

Where the segments start is a second choice, made once per layer (``tiling.boundaries``):

* :class:`TileBoundaries` (``"tile"``): the cheap signal ``ρ̂`` (the linearised density,
  :func:`~tiling.modules.signal.linear_density`, seed 001 §3.4 step 1) sets ``R_i`` through the
  policy (:class:`~tiling.modules.router.TileRouter`), and tile ``i`` gets ``m_i = ⌈R_i·T⌉``
  segments (error-diffused, :func:`~tiling.policy.dithered_counts`);
* :class:`TokenBoundaries` (``"token"``): a learned router (H-Net's,
  :class:`~tiling.modules.router.TokenRouter`) marks the segment starts, with H-Net's ratio loss.

The scope has no state-dimension policy, routing or φ (those act inside the scan's tiles); its
new parameter ``chunk.pool_gate`` starts at zero, so at budget 1 the layer is Mamba.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from tiling.modules.chunk import Chunk, ChunkState, Dechunk, SegmentLayout, dithered_counts, layout_from_boundaries, \
    layout_from_counts
from tiling.modules.router import RouterState, TileRouter, TileRouterState, TokenRouter, ratio_loss
from tiling.modules.signal import step_signal
from tiling.modules.scope import Scope, TileCosts, TiledMambaState
from tiling.ops import tile_lengths
from tiling.ops.block import block_mixer
from tiling.ops.cost import block_unit_costs, layer_cost, signal_cost_per_token
from tiling.config import TilingConfig
from tiling.policy import tile_density
from tiling.tile import TilePlan

if TYPE_CHECKING:
    from tiling.modules.tiled_mamba import TiledMamba

Tensor = torch.Tensor


class Segments(NamedTuple):
    """The block scope's segments for one forward (:meth:`TileBoundaries.segments`).

    Attributes
    ----------
    layout : the :class:`~tiling.modules.chunk.SegmentLayout`; None is the identity (every token a segment).
    confidence : (batch, L) the router's confidence in its decision (``boundaries="token"``), or None.
    resolution : (batch, n_tiles) float32 on the CPU: segments per token of each tile.
    tile_density : float64 (batch, n_tiles) ``ρ_i``, or None when no signal was computed.
    density : (batch, L) the per-token signal, or None.
    """

    layout: SegmentLayout | None
    confidence: Tensor | None
    resolution: Tensor
    tile_density: Tensor | None
    density: Tensor | None


class StepStarts(NamedTuple):
    """Which rows start a segment at one step of generation.

    Attributes
    ----------
    starts : (batch,) bool, or None when every row starts one.
    kind : 0 no row starts a segment, 1 some rows do, 2 every row does (known on the host).
    router, tile_router : the boundaries' new state (the other one passes through).
    """

    starts: Tensor | None
    kind: int
    router: RouterState | None
    tile_router: TileRouterState | None


class TileBoundaries:
    """Segments per tile from the policy on the linearised density (``boundaries="tile"``).

    Registers the policy ``tile_router`` (:class:`~tiling.modules.router.TileRouter`) on the layer.
    """

    name = "tile"
    signal = "linear"  # what the layer computes per token to place the segments (tiling.ops.cost)

    def __init__(self, tiling: TilingConfig) -> None:
        self.tiling = tiling
        self._layouts: dict = {}  # the uniform policy's layouts by (batch, L, c, device)

    def build_policy(self, layer: TiledMamba, factory: dict) -> None:
        layer.tile_router = TileRouter(self.tiling, device=factory["device"])

    def build_router(self, layer: TiledMamba, factory: dict) -> None:
        layer.router = None

    @staticmethod
    def router_rank(layer: TiledMamba) -> int:
        return 0

    @staticmethod
    def plan_mode(layer: TiledMamba) -> str:
        return layer.policy

    @staticmethod
    def signal_used(layer: TiledMamba, budget: float) -> bool:
        """Whether the segments at ``budget`` need the signal: not at budget 1, nor under the uniform
        policy (``R_i = c``); a plan may compute it there, only to report it."""
        return not (layer._full(budget) or layer.policy == "uniform")

    def segments(self, layer: TiledMamba, x: Tensor, density, curvature, c: float, update: bool,
                 need_density: bool) -> Segments:
        """The segments of ``x`` at budget ``c``; ``update``: calibrate the policy (training);
        ``need_density``: compute the signal even where the segments do not need it (a plan)."""
        batch, L, _ = x.shape
        T, n_tiles = layer.tile_size, -(-L // layer.tile_size)
        full = layer._full(c)
        rho = rho_tile = None
        reads = self.signal_used(layer, c)  # the count's answer too: budget 1 and R_i = c need no signal
        if need_density or reads:
            rho = density.detach().to(device=x.device) if density is not None else layer._signal(x)
        if not reads:  # full, or uniform: the signal only feeds the plan's report
            if rho is not None:
                rho_tile = tile_density(rho.to(torch.float64), T)
            if full:
                return Segments(None, None, torch.ones(batch, n_tiles), rho_tile, rho)
            layout = self._uniform_layout(layer, batch, L, c, x.device)
            return Segments(layout, None, torch.full((batch, n_tiles), c), rho_tile, rho)
        R, m, rho_tile = layer.tile_router.counts(rho, curvature=curvature, budget=c, update=update)
        if bool((m == T).all()):
            return Segments(None, None, R, rho_tile, rho)
        return Segments(layout_from_counts(m, L, T, device=x.device), None, R, rho_tile, rho)

    def _uniform_layout(self, layer: TiledMamba, batch: int, L: int, c: float, device) -> SegmentLayout | None:
        """The layout of the uniform policy (``R_i = c``): the same for every call of one shape, so made
        once (the counts need no signal) and kept (a few shapes; None is the identity)."""
        key = (batch, L, c, str(device))
        if key not in self._layouts:
            T, n_tiles = layer.tile_size, -(-L // layer.tile_size)
            m, _ = dithered_counts(torch.full((batch, n_tiles), c), T)
            if len(self._layouts) >= 8:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[key] = None if bool((m == T).all()) else layout_from_counts(m, L, T, device=device)
        return self._layouts[key]

    @staticmethod
    def allocate(layer: TiledMamba, batch: int, device) -> dict:
        """The boundaries' part of the zero state: the policy's history and the signal's maps."""
        with torch.no_grad():
            maps = layer._signal_maps()
        return {"router": None, "tile_router": layer.tile_router.allocate(batch, device=device), "proj": maps}

    def check_state(self, state: TiledMambaState) -> None:
        if state.tile_router is None:
            raise ValueError(f"state was allocated by a layer with other boundaries than {self.name!r}")

    @staticmethod
    def starts(layer: TiledMamba, x: Tensor, state: TiledMambaState, c: float) -> StepStarts:
        """The tile router decides (:meth:`TileRouter.advance <tiling.modules.router.TileRouter.advance>`):
        at the first token of a tile the causal policy sets the tile's segments from the signal of
        the earlier tiles."""
        rho_t = None
        if layer.tile_router.reads_signal(c):
            # a state of the whole model's zero_state carries no maps until a step reads them
            rho_t = step_signal(x, state.proj if state.proj is not None else layer._signal_maps())
            if not bool(torch.isfinite(rho_t).all()):  # finite but huge: name the caller's argument
                raise ValueError(f"hidden_states (values up to {float(x.detach().abs().max()):.3g}) made the "
                                 "resolution signal overflow; the state is unchanged")
        starts, tstate, kind = layer.tile_router.advance(rho_t, state.tile_router, layer.tile_router._config(c))
        return StepStarts(starts, kind, state.router, tstate)


class TokenBoundaries:
    """Segment starts from H-Net's learned router (``boundaries="token"``).

    Registers the :class:`~tiling.modules.router.TokenRouter` ``router`` on the layer; each forward
    below budget 1 sets the layer's ``ratio_loss`` (H-Net's, to be added to the task loss).
    """

    name = "token"
    signal = "token"

    def __init__(self, tiling: TilingConfig) -> None:
        self.tiling = tiling

    def build_policy(self, layer: TiledMamba, factory: dict) -> None:
        """No policy: the layer has no ``tile_router``."""

    def build_router(self, layer: TiledMamba, factory: dict) -> None:
        layer.router = TokenRouter(layer.d_model, self.tiling.router_rank, **factory)

    @staticmethod
    def router_rank(layer: TiledMamba) -> int:
        return layer.router.rank

    @staticmethod
    def plan_mode(layer: TiledMamba) -> str:
        return "router"

    @staticmethod
    def signal_used(layer: TiledMamba, budget: float) -> bool:
        return budget < 1.0

    def segments(self, layer: TiledMamba, x: Tensor, density, curvature, c: float, update: bool,
                 need_density: bool) -> Segments:
        """The router's segments of ``x`` at budget ``c`` (``density``, ``curvature``, ``update`` and
        ``need_density`` do not apply: the router reads the hidden states)."""
        batch, L, _ = x.shape
        T = layer.tile_size
        layer.ratio_loss = None
        if c >= 1.0:
            return Segments(None, None, torch.ones(batch, -(-L // T)), None, None)
        p = layer.router(x, validate=False)
        bnd = TokenRouter.boundaries(p, c, layer.causal)
        layer.ratio_loss = ratio_loss(bnd, p, c, validate=False)
        per_tile = _tile_sum(bnd, T)
        R = per_tile / tile_lengths(L, T).to(per_tile)
        return Segments(layout_from_boundaries(bnd), torch.where(bnd, p, 1.0 - p), R.float().cpu(), None, None)

    @staticmethod
    def allocate(layer: TiledMamba, batch: int, device) -> dict:
        """The boundaries' part of the zero state: the router's previous key."""
        return {"router": RouterState(key=None), "tile_router": None, "proj": None}

    def check_state(self, state: TiledMambaState) -> None:
        if state.tile_router is not None:
            raise ValueError(f"state was allocated by a layer with other boundaries than {self.name!r}")

    @staticmethod
    def starts(layer: TiledMamba, x: Tensor, state: TiledMambaState, c: float) -> StepStarts:
        """The router decides from this token's key and the previous one (every row starts at budget 1)."""
        if c >= 1.0:
            return StepStarts(None, 2, state.router, state.tile_router)
        p, rstate = layer.router.step(x, state.router)
        starts = p >= 0.5
        kind = 2 if bool(starts.all()) else int(bool(starts.any()))
        return StepStarts(starts, kind, rstate, state.tile_router)


#: ``tiling.boundaries`` → the strategy that places the block scope's segments
BOUNDARIES = {"tile": TileBoundaries, "token": TokenBoundaries}


class BlockScope(Scope):
    """The block scope's strategy (module docstring): the mixer on the segments' representatives.

    It registers on the layer the boundaries' part (``tile_router`` or ``router``), ``chunk``
    (:class:`~tiling.modules.chunk.Chunk`), ``dechunk`` and the non-persistent buffer
    ``signal_index`` (the ``k = signal_channels`` channels of the linearised density).

    Attributes
    ----------
    boundaries : :class:`TileBoundaries` or :class:`TokenBoundaries`, by ``tiling.boundaries``.
    """

    def __init__(self, tiling: TilingConfig) -> None:
        super().__init__(tiling)
        self.boundaries = BOUNDARIES[tiling.boundaries](tiling)
        self._empty_pool_cache: tuple | None = None

    def __repr__(self) -> str:
        return f"BlockScope(boundaries={self.boundaries.name!r})"

    def build(self, layer: TiledMamba, factory: dict) -> None:
        self.boundaries.build_policy(layer, factory)
        layer.chunk = Chunk(layer.d_model, pool=self.tiling.pool, **factory)
        layer.dechunk = Dechunk()
        k, E = self.tiling.signal_channels, layer.d_inner
        step = max(1, E // k)
        layer.register_buffer("signal_index", torch.arange(0, E, step, device=factory["device"])[:k],
                              persistent=False)
        self.boundaries.build_router(layer, factory)

    def forward(self, layer: TiledMamba, x: Tensor, density, curvature, c: float, return_plan: bool,
                residual: Tensor | None = None):
        L = x.shape[1]
        seg = self.boundaries.segments(layer, x, density, curvature, c, layer.training, return_plan)
        layout = seg.layout
        one_call = not (layer.validate or seg.confidence is not None)
        out = self._one_call(layer, x, layout, residual) if one_call else None  # the residual added as it holds
        if out is None:  # the reference path, op by op (a gradient, another device, a dispatch mode)
            if layout is None:
                xc, gap = x, None
            else:
                xc, gap = layer.chunk(x, layout, validate=False), layout.gap
            u, z, dt_raw, B, C = layer._project(xc)
            y = layer._scan(u, dt_raw, B, C, z, gap=gap)
            out = layer._out(y)
            if layout is not None:
                out = layer.dechunk(out, layout, seg.confidence, validate=False)
            if residual is not None:
                out = residual + out
        if return_plan:
            return out, layer._make_plan(seg.resolution, None, seg.tile_density, seg.density, L, c, layout=layout)
        return out

    @staticmethod
    def _one_call(layer: TiledMamba, x: Tensor, layout: SegmentLayout | None,
                  residual: Tensor | None) -> Tensor | None:
        """The mixer from chunk to hold in one kernel call (:func:`~tiling.ops.block.block_mixer`), plus
        ``residual`` where given, equal to the path below it bit for bit; None where that kernel does not run."""
        start = span = gate = gap = None
        if layout is not None:
            gap = layout.gap
            if not layout.is_identity:
                start, span = layout.start.contiguous(), layout.span.contiguous()
                gate = layer.chunk.open_gate()
        return block_mixer(x.contiguous(), in_proj=layer.in_proj, conv1d=layer.conv1d, x_proj=layer.x_proj,
                           dt_proj=layer.dt_proj, A_log=layer.A_log, D=layer.D, out_proj=layer.out_proj,
                           start=start, span=span, gate=gate, gap=gap,
                           residual=None if residual is None else residual.contiguous())

    def plan(self, layer: TiledMamba, x: Tensor, density, curvature, c: float) -> TilePlan:
        seg = self.boundaries.segments(layer, x, density, curvature, c, False, True)
        return layer._make_plan(seg.resolution, None, seg.tile_density, seg.density, x.shape[1], c,
                                layout=seg.layout)

    def tile_costs(self, layer: TiledMamba, R: Tensor, S: Tensor, rho: Tensor | None, L: int, budget: float,
                   layout: SegmentLayout | None) -> TileCosts:
        """Per tile: the mixer on its segments, the signal and the pooling on its tokens."""
        T, d, bounds = layer.tile_size, layer.d_model, self.boundaries
        lengths = tile_lengths(L, T)
        batch = R.shape[0]
        segs = lengths.expand(batch, -1).clone() if layout is None else _tile_sum(layout.boundary, T).cpu()
        signal = bounds.signal if self.computes_signal(layer, budget) else "none"
        per_seg = sum(block_unit_costs(d_model=d, d_state=layer.d_state, d_inner=layer.d_inner,
                                       dt_rank=layer.dt_rank, d_conv=layer.d_conv, bias=layer.in_proj.bias is not None,
                                       conv_bias=layer.conv1d.bias is not None).values())
        per_tok = signal_cost_per_token(signal, d_model=d, d_state=layer.d_state, dt_rank=layer.dt_rank,
                                        signal_channels=int(layer.signal_index.numel()),
                                        router_rank=bounds.router_rank(layer))[0]
        if layout is not None:
            per_seg, per_tok = per_seg + 2 * d, per_tok + d
        madd = segs * per_seg + lengths * per_tok
        exps = segs * (layer.d_inner * layer.d_state)
        Lc = L if layout is None else layout.compact_length
        meta = {"layer_cost": layer.cost(L, compact_length=Lc, batch=batch, signal=self.computes_signal(layer, budget)),
                "scope": "block", "boundaries": bounds.name, "compact_length": Lc,
                "padding": 0.0 if layout is None else layout.padding_fraction()}
        return TileCosts(segments=segs, madd=madd, exp=exps, mode=bounds.plan_mode(layer), meta=meta)

    def computes_signal(self, layer: TiledMamba, budget: float) -> bool:
        return self.boundaries.signal_used(layer, budget)

    def cost(self, layer: TiledMamba, L: int, common: dict, *, compact_length: int | None,
             resolution: Tensor | None, state_dims: Tensor | None, signal: bool) -> dict[str, int]:
        return layer_cost(L, scope="block", compact_length=compact_length,
                          signal=self.boundaries.signal if signal else "none",
                          signal_channels=int(layer.signal_index.numel()),
                          router_rank=self.boundaries.router_rank(layer), **common)

    def allocate(self, layer: TiledMamba, state: TiledMambaState) -> TiledMambaState:
        p = layer.in_proj.weight
        batch = state.conv.shape[0]
        return replace(state, held=p.new_zeros(batch, layer.d_model), chunk=layer.chunk.allocate(batch, p),
                       last_start=torch.zeros(batch, dtype=torch.int64, device=p.device),
                       **self.boundaries.allocate(layer, batch, p.device))

    def check_state(self, layer: TiledMamba, state: TiledMambaState) -> None:
        if state.held is None:
            raise ValueError("state was allocated by a scan-scope layer; use this layer's allocate_inference_state")
        self.boundaries.check_state(state)

    def check_step_budget(self, budget: float | None, c: float) -> None:
        """Every budget the layer accepts steps the block scope."""

    def _empty_pool(self, layer: TiledMamba, x: Tensor) -> ChunkState:
        """An empty pool for ``x``'s rows, made once per shape (states never change a tensor in place)."""
        key = (x.shape[0], x.dtype, x.device)
        cached = self._empty_pool_cache
        if cached is None or cached[0] != key:
            cached = self._empty_pool_cache = (key, layer.chunk.allocate(x.shape[0], x))
        return cached[1]

    def step(self, layer: TiledMamba, x: Tensor, state: TiledMambaState, c: float
             ) -> tuple[Tensor, TiledMambaState]:
        """The mixer runs on the rows that start a segment (:attr:`boundaries` decides), and only when
        one does (known on the host); between starts a token joins the pool (``O(d_model)``) and
        the held output is returned."""
        if not layer.causal:
            raise ValueError("step() needs a causal layer (causal=True): a non-causal plan reads later tokens")
        t, chunk = state.position, state.chunk
        starts, kind, rstate, tstate = self.boundaries.starts(layer, x, state, c)
        if kind == 0:  # no row starts a segment: the token joins the pool, the held output stays
            cstate = ChunkState(pool_sum=chunk.pool_sum + x, pool_count=chunk.pool_count + 1)
            return state.held, TiledMambaState(conv=state.conv, ssm=state.ssm, route=state.route, position=t + 1,
                                               held=state.held, chunk=cstate, router=rstate, tile_router=tstate,
                                               last_start=state.last_start, proj=state.proj)
        if layer._full(c):  # every token its own segment: no pool, Δ × 1
            rep, cstate, last = x, chunk, None
        elif kind == 2:  # every row starts one: the representative takes the pool, which empties
            mean = chunk.pool_sum / chunk.pool_count.clamp_min(1).unsqueeze(-1).to(x.dtype)
            rep, cstate, last = x + layer.chunk.pool_gate * mean, self._empty_pool(layer, x), state.last_start
        else:
            rep, cstate = layer.chunk.step(x, starts, chunk)
            last = state.last_start
        out, conv, ssm, _ = layer._mixer_step(rep, state.conv, state.ssm, last_start=last, position=t)
        if kind == 2:
            held, last_start = out, torch.full_like(state.last_start, t)
        else:
            s = starts.unsqueeze(-1)
            held = torch.where(s, out, state.held)
            conv = torch.where(s.unsqueeze(-1), conv, state.conv)
            ssm = torch.where(s.unsqueeze(-1), ssm, state.ssm)
            last_start = torch.where(starts, torch.full_like(state.last_start, t), state.last_start)
        return held, TiledMambaState(conv=conv, ssm=ssm, route=state.route, position=t + 1, held=held, chunk=cstate,
                                     router=rstate, tile_router=tstate, last_start=last_start, proj=state.proj)


def _tile_sum(x: Tensor, tile_size: int) -> Tensor:
    """Sum of a (batch, L) signal (bool counts as int64) over each tile: (batch, ⌈L/T⌉)."""
    batch, L = x.shape
    T = min(tile_size, L)  # a tile longer than the sequence is the sequence: never pad by more than L
    n_tiles = -(-L // T)
    x = x.to(torch.int64) if x.dtype == torch.bool else x
    return F.pad(x, (0, n_tiles * T - L)).view(batch, n_tiles, T).sum(-1)


__all__ = ["BOUNDARIES", "BlockScope", "Segments", "StepStarts", "TileBoundaries", "TokenBoundaries"]
