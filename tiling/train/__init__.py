"""Training helpers for :mod:`scripts.train_tiled`: the synthetic task, the small LM, checkpoints."""
from tiling.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tiling.train.data import BurstCopyDataset, BurstRepeatDataset
from tiling.train.model import TiledLM

__all__ = ["BurstCopyDataset", "BurstRepeatDataset", "TiledLM", "save_checkpoint", "load_checkpoint", "CheckpointError"]
