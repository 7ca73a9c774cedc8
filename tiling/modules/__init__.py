"""Trainable layers built on the adaptive scan: :class:`TiledMamba` (seed 001 §3.2–3.4)."""
from tiling.modules.tiled_mamba import TiledMamba, TiledMambaState

__all__ = ["TiledMamba", "TiledMambaState"]
