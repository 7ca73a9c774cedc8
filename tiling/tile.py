"""Tiles and tile plans: the configuration the layer chose for each tile of a sequence.

Seed 000 §3.2.1 defines a tile as ``T = (M, S, R, Φ)``: a Mamba operator ``M``, a state ``S``, a
resolution ``R ∈ [R_min, 1]`` and a state transition ``Φ``; seed 001 §3.2.1 writes
``T_i = (M_i, S_i, R_i)`` with ``S_i`` the state *dimension*. In :class:`~tiling.modules.TiledMamba`
the operator ``M`` is the layer's shared selective scan restricted to the tile's positions
``[start, start + length)``, ``R`` is :attr:`Tile.resolution` (realised as
:attr:`Tile.segments` ``= max(1, ⌈R·n⌉)`` recurrence steps), the state dimension is
:attr:`Tile.state_dims`, and ``Φ`` is the boundary map ``h ↦ h ⊙ exp(g·(R_i − R_{i−1}))`` applied
when the tile starts (:attr:`Tile.transition_delta` holds ``R_i − R_{i−1}``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Tile:
    """One tile of one sequence (plain Python numbers, for inspection and plots).

    Attributes
    ----------
    index : position of the tile in the sequence's tiles.
    start, length : first token and number of tokens ``n_i``.
    resolution : requested resolution ``R_i``.
    segments : segment count ``m_i``.
    state_dims : active state components ``S_i``, or None when not planned.
    density : the tile density the policy saw.
    transition_delta : ``R_i − R_{i−1}`` (0 for the first tile).
    cost : ``{"madd_total", "exp_total"}`` of the scan on this tile, or None.
    """

    index: int
    start: int
    length: int
    resolution: float
    segments: int
    state_dims: int | None
    density: float
    transition_delta: float
    cost: dict[str, int] | None

    @property
    def effective_resolution(self) -> float:
        """Realised resolution ``m/n`` (``≥ resolution``, by less than one segment)."""
        return self.segments / self.length


@dataclass(frozen=True)
class TilePlan:
    """Per-tile configuration of a batch, as tensors of shape (batch, n_tiles).

    Attributes
    ----------
    start, length : (n_tiles,) int64.
    resolution : (batch, n_tiles) float.
    segments, state_dims : (batch, n_tiles) int64 (``state_dims`` None when not planned).
    density : (batch, n_tiles) the per-tile density the policy saw.
    cost : (batch, n_tiles) the multiply-adds of the scan per tile (``tiling.ops.scan_cost`` of the
        tile alone, ``madd_total``), or None.
    exp_cost : the same for exponentials, or None.
    budget, mode, causal : the policy that produced the plan.
    token_density : (batch, L), optional, the per-token density the tile densities were averaged
        from (on the layer's device, unlike the other fields).
    meta : further JSON-serialisable entries (e.g. ``scope``), merged into :meth:`to_dict`.
    """

    start: Tensor
    length: Tensor
    resolution: Tensor
    segments: Tensor
    state_dims: Tensor | None
    density: Tensor
    cost: Tensor | None
    exp_cost: Tensor | None
    budget: float
    mode: str
    causal: bool
    token_density: Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        """Number of sequences."""
        return int(self.resolution.shape[0])

    @property
    def n_tiles(self) -> int:
        """Number of tiles per sequence."""
        return int(self.resolution.shape[1])

    def mean_resolution(self) -> Tensor:
        """Mean requested resolution per sequence, ``(1/n) Σ_i R_i`` (the budget's quantity)."""
        return self.resolution.to(torch.float64).mean(-1)

    def effective_resolution(self) -> Tensor:
        """Realised fraction of recurrence steps per sequence, ``Σ_i m_i / L``."""
        return self.segments.to(torch.float64).sum(-1) / self.length.sum().to(torch.float64)

    def total_cost(self) -> Tensor:
        """Multiply-adds of the scan per sequence (sum of per-tile costs).

        Returns
        -------
        (batch,) int64.

        Raises
        ------
        ValueError
            The plan has no cost (made without a model: use the layer's ``plan()``).
        """
        if self.cost is None:
            raise ValueError("this plan has no cost (made without a model: use the layer's plan())")
        return self.cost.sum(-1)

    def tiles(self, b: int = 0) -> list[Tile]:
        """The tiles of sequence ``b`` as :class:`Tile` objects.

        Parameters
        ----------
        b : the sequence, ``0 ≤ b < batch``.

        Returns
        -------
        list of :class:`Tile`, in order.

        Raises
        ------
        ValueError
            ``b`` is outside ``[0, batch)``.
        """
        if not 0 <= b < self.batch:
            raise ValueError(f"b must lie in [0, {self.batch}), got {b}")
        R = self.resolution[b].tolist()
        out = []
        for i in range(self.n_tiles):
            out.append(Tile(
                index=i, start=int(self.start[i]), length=int(self.length[i]), resolution=float(R[i]),
                segments=int(self.segments[b, i]),
                state_dims=None if self.state_dims is None else int(self.state_dims[b, i]),
                density=float(self.density[b, i]), transition_delta=0.0 if i == 0 else float(R[i] - R[i - 1]),
                cost=None if self.cost is None else {"madd_total": int(self.cost[b, i]),
                                                     "exp_total": int(self.exp_cost[b, i])},
            ))
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable form (lists), e.g. for logs."""
        return {
            "start": self.start.tolist(), "length": self.length.tolist(),
            "resolution": self.resolution.tolist(), "segments": self.segments.tolist(),
            "state_dims": None if self.state_dims is None else self.state_dims.tolist(),
            "density": self.density.tolist(),
            "cost": None if self.cost is None else self.cost.tolist(),
            "exp_cost": None if self.exp_cost is None else self.exp_cost.tolist(),
            "budget": self.budget, "mode": self.mode, "causal": self.causal, **self.meta,
        }


__all__ = ["Tile", "TilePlan"]
