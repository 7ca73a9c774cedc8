"""The scan scope of :class:`~tiling.modules.TiledMamba`: the resolution shrinks the recurrence only.

Seed 001 §3.2–3.4: in_proj, conv, x_proj, dt_proj and out_proj run on every token; the density
``ρ_t = (Σ_d Δ_{t,d}²)·‖B_t‖²`` (:func:`infogeo.density.ssm_density`) sets, per tile, the
resolution ``R_i`` and the state dimensions ``S_i`` (the layer's
:class:`~tiling.modules.router.TileRouter`); the adaptive scan runs ``⌈R_i·n_i⌉`` segments per
tile with the boundary gain ``φ`` (seed 001 §3.3.1), and the routed vector
``y_{i→i+1} = g ⊙ tanh(W_s·read(s_i) + W_r·(R_i − R_{i+1}))`` (seed 001 §3.3.2) is added to the
next tile's outputs. The scope's parameters (``transition_gain``, ``route_*``) start as the
identity, so at budget 1 the layer is Mamba.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from infogeo.density import ssm_density
from tiling.modules.chunk import SegmentLayout
from tiling.modules.router import TileRouter
from tiling.modules.scope import Scope, TileCosts, TiledMambaState
from tiling.ops import scan_cost, segment_counts, tile_lengths
from tiling.ops.cost import layer_cost
from tiling.policy import tile_density
from tiling.tile import TilePlan

if TYPE_CHECKING:
    from tiling.modules.tiled_mamba import TiledMamba

Tensor = torch.Tensor


class ScanScope(Scope):
    """The scan scope's strategy (module docstring): per-tile resolution and state dims inside the scan.

    It registers on the layer the policy ``tile_router``
    (:class:`~tiling.modules.router.TileRouter`), the boundary gain ``transition_gain``
    (d_inner, N) (zero: ``φ = id``) and the routing weights ``route_state_weight``,
    ``route_resolution_weight`` (ones) and ``route_gate`` (zero: nothing routed), per channel.
    """

    def build(self, layer: TiledMamba, factory: dict) -> None:
        E, N = layer.d_inner, layer.d_state
        layer.tile_router = TileRouter(self.tiling, device=factory["device"])
        # φ (seed 001 §3.3.1): h ← h ⊙ exp(g·(R_i − R_{i−1})) at a tile boundary; g = 0 is φ = id.
        layer.transition_gain = nn.Parameter(torch.zeros(E, N, **factory))
        # routing (seed 001 §3.3.2), diagonal W_s, W_r (per channel) and a zero gate
        layer.route_state_weight = nn.Parameter(torch.ones(E, **factory))
        layer.route_resolution_weight = nn.Parameter(torch.ones(E, **factory))
        layer.route_gate = nn.Parameter(torch.zeros(E, **factory))

    @staticmethod
    def density(layer: TiledMamba, dt_raw: Tensor, B: Tensor, density: Tensor | None) -> Tensor:
        """Per-token density ``(batch, L)``: the external one (checked) or the closed form."""
        with torch.no_grad():
            if density is None:
                return ssm_density(F.softplus(dt_raw + layer.dt_proj.bias[:, None]), B)
            return density.detach().to(device=dt_raw.device)

    def forward(self, layer: TiledMamba, x: Tensor, density, curvature, c: float, return_plan: bool,
                residual: Tensor | None = None):
        batch, L, _ = x.shape
        u, z, dt_raw, B, C = layer._project(x)
        n_tiles = -(-L // layer.tile_size)
        rho = rho_tile = S = None
        full = layer._full(c)
        if full and not return_plan:
            R = torch.ones(batch, n_tiles)
        elif not (return_plan or self.computes_signal(layer, c)):
            R = torch.full((batch, n_tiles), c)  # R_i = c: no density needed (the count's answer too)
        else:
            rho = self.density(layer, dt_raw, B, density)
            if full:
                R, rho_tile = torch.ones(batch, n_tiles), tile_density(rho.to(torch.float64), layer.tile_size)
            else:
                tp = layer.tile_router(rho, curvature=curvature, budget=c)
                R, rho_tile = tp.resolution, tp.density
                S = None if self.tiling.state_k is None else tp.state_dims.to(x.device)
        need_tiles = layer.routing and n_tiles > 1
        out = layer._scan(u, dt_raw, B, C, z, resolution=None if full else R,
                          state_dims=S, boundary_gain=None if full else layer.transition_gain,
                          return_tile_states=need_tiles)
        if need_tiles:
            y, _, tile_states = out
            y = self.route(layer, y, tile_states, C, R.to(x.device), S)
        else:
            y = out
        result = layer._out(y)
        if residual is not None:
            result = residual + result
        if return_plan:
            return result, layer._make_plan(R, S, rho_tile, rho, L, c)
        return result

    @staticmethod
    def route(layer: TiledMamba, y: Tensor, tile_states: Tensor, C: Tensor, R: Tensor, S: Tensor | None) -> Tensor:
        """Add ``g ⊙ tanh(W_s·read(s_i) + W_r·(R_i − R_{i+1}))`` to the outputs of tile ``i+1``.

        ``read(s_i) = Σ_{n<S_i} C_{e_i,n} s_{i,n}`` is the layer's own read-out map applied to the
        state after tile ``i`` at the tile's last position ``e_i`` (seed 001 §3.3.2 with σ = tanh,
        zero-centred so a zero input routes nothing; W_s, W_r diagonal, one weight per channel).
        Causal: tile ``i+1`` only receives the state after tile ``i`` and ``R_i, R_{i+1}``, which
        depend on tiles ``≤ i``.
        """
        batch, dim, L = y.shape
        T = layer.tile_size
        n_tiles = tile_states.shape[2]
        ends = torch.arange(n_tiles, device=y.device) * T + tile_lengths(L, T).to(y.device) - 1
        C_end = C[:, :, ends].to(tile_states.dtype)  # (b, N, n_tiles)
        if S is not None:
            keep = torch.arange(layer.d_state, device=y.device).view(1, 1, -1) < S.unsqueeze(-1)  # (b, n_tiles, N)
            C_end = C_end * keep.transpose(1, 2).to(C_end.dtype)
        read = torch.einsum("bdin,bni->bdi", tile_states[:, :, :-1], C_end[:, :, :-1])
        dR = (R[:, :-1] - R[:, 1:]).to(read.dtype).unsqueeze(1)  # R_i − R_{i+1}
        w_s = layer.route_state_weight.to(read.dtype)[None, :, None]
        w_r = layer.route_resolution_weight.to(read.dtype)[None, :, None]
        routed = layer.route_gate.to(read.dtype)[None, :, None] * torch.tanh(w_s * read + w_r * dR)
        # position t of tile i+1 receives routed[..., i]; tile 0 receives nothing
        per_pos = torch.cat([routed.new_zeros(batch, dim, 1), routed], dim=2)
        tile_of = torch.arange(L, device=y.device) // T
        return y + per_pos[:, :, tile_of].to(y.dtype)

    def plan(self, layer: TiledMamba, x: Tensor, density, curvature, c: float) -> TilePlan:
        L = x.shape[1]
        _, _, dt_raw, B, _ = layer._project(x)
        rho = self.density(layer, dt_raw, B, density)
        if layer._full(c):
            R, S, rho_tile = torch.ones(x.shape[0], -(-L // layer.tile_size)), None, \
                tile_density(rho.double(), layer.tile_size)
        else:
            tp = layer.tile_router.plan(rho, curvature=curvature, budget=c)
            R, rho_tile = tp.resolution, tp.density
            S = None if self.tiling.state_k is None else tp.state_dims
        return layer._make_plan(R, S, rho_tile, rho, L, c)

    def tile_costs(self, layer: TiledMamba, R: Tensor, S: Tensor, rho: Tensor | None, L: int, budget: float,
                   layout: SegmentLayout | None) -> TileCosts:
        T, N, E = layer.tile_size, layer.d_state, layer.d_inner
        lengths = tile_lengths(L, T)
        batch = R.shape[0]
        segs = segment_counts(R, lengths)
        madd = torch.zeros(R.shape, dtype=torch.int64)
        exps = torch.zeros(R.shape, dtype=torch.int64)
        for b in range(batch):
            for i, n_i in enumerate(lengths.tolist()):
                madd[b, i], exps[b, i] = _tile_cost(n_i, T, int(segs[b, i]), int(S[b, i]), N, E)
        whole = [scan_cost(L, T, R[b], S[b], N, E, boundary_gain=True) for b in range(batch)]
        meta = {"scan_cost": whole, "scope": "scan",
                "layer_cost": layer.cost(L, resolution=R, state_dims=S, batch=batch,
                                        signal=self.computes_signal(layer, budget))}
        return TileCosts(segments=segs, madd=madd, exp=exps, mode=layer.policy, meta=meta)

    def computes_signal(self, layer: TiledMamba, budget: float) -> bool:
        """The density is computed below budget 1, except for the uniform policy without a state-dimension
        policy (``R_i = c``, as :meth:`forward` runs it)."""
        return not (layer._full(budget) or (layer.policy == "uniform" and self.tiling.state_k is None))

    def cost(self, layer: TiledMamba, L: int, common: dict, *, compact_length: int | None,
             resolution: Tensor | None, state_dims: Tensor | None, signal: bool) -> dict[str, int]:
        return layer_cost(L, scope="scan", resolution=resolution, state_dims=state_dims, routing=layer.routing,
                          signal="linear" if signal else "none", **common)

    def allocate(self, layer: TiledMamba, state: TiledMambaState) -> TiledMambaState:
        return state

    def check_state(self, layer: TiledMamba, state: TiledMambaState) -> None:
        """Any state of the layer's shapes steps the scan scope (it reads conv, ssm and route only)."""

    def check_step_budget(self, budget: float | None, c: float) -> None:
        if budget is not None and c < 1.0:
            raise ValueError(f"a scan-scope layer steps at full resolution only; got budget={budget} "
                             "(use forward() for a coarser plan, or scope='block')")

    def step(self, layer: TiledMamba, x: Tensor, state: TiledMambaState, c: float
             ) -> tuple[Tensor, TiledMambaState]:
        """Full resolution, routing included: at the end of each tile the routed vector
        ``g ⊙ tanh(W_s·(C_t·h_t))`` is formed and added to the next tile's outputs."""
        routing = layer.routing
        out, conv, h, read = layer._mixer_step(x, state.conv, state.ssm, route=state.route if routing else None)
        position = state.position + 1
        route = state.route
        if routing and position % layer.tile_size == 0:
            gate, w_s = layer.route_gate.to(h.dtype), layer.route_state_weight.to(h.dtype)
            route = (gate * torch.tanh(w_s * read)).to(state.route.dtype)
        return out, TiledMambaState(conv=conv, ssm=h, route=route, position=position)


@functools.lru_cache(maxsize=4096)
def _tile_cost(n: int, T: int, m: int, S: int, N: int, dim: int) -> tuple[int, int]:
    """``(madd_total, exp_total)`` of one tile of ``n`` tokens in ``m`` segments with ``S`` state dims.

    The cost depends on the resolution only through ``m``, and ``R = m/n`` realises ``m``."""
    cost = scan_cost(n, T, torch.tensor([[m / n]], dtype=torch.float64), S, N, dim)
    return cost["madd_total"], cost["exp_total"]


__all__ = ["ScanScope"]
