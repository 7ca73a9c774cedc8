"""Moved: the output folders' writer is :mod:`tiling.train.storage.folder` (one home for storage,
issue 26). This alias goes once its last importer has moved."""
from tiling.train.storage import check_out_dir, write_folder

__all__ = ["check_out_dir", "write_folder"]
