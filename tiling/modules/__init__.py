"""Trainable layers built on the adaptive scan: :class:`TiledMamba` (seed 001 §3.2–3.4), its scope
strategies (:mod:`tiling.modules.scope`, :mod:`~tiling.modules.scope_scan`,
:mod:`~tiling.modules.scope_block`) and the block scope's parts (:mod:`tiling.modules.chunk`,
:mod:`tiling.modules.router`)."""
from tiling.modules.chunk import Chunk, Dechunk, SegmentLayout, layout_from_boundaries, layout_from_counts
from tiling.modules.router import TileRouter, TileRouterState, TokenRouter, ratio_loss
from tiling.modules.signal import linear_density
from tiling.modules.tiled_mamba import TiledMamba, TiledMambaState

__all__ = [
    "Chunk", "Dechunk", "SegmentLayout", "TileRouter", "TileRouterState", "TiledMamba", "TiledMambaState",
    "TokenRouter", "layout_from_boundaries", "layout_from_counts", "linear_density", "ratio_loss",
]
