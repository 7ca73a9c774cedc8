"""Training: the small LM (:class:`TiledLM`), the burst tasks, checkpoints; the synthetic-task trainer is
:mod:`tiling.train.synthetic`, the text LMs' loop :mod:`tiling.train.trainer`."""
from tiling.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tiling.train.data import BurstCopyDataset, BurstRepeatDataset
from tiling.train.model import TiledLM

__all__ = ["BurstCopyDataset", "BurstRepeatDataset", "TiledLM", "save_checkpoint", "load_checkpoint", "CheckpointError"]
