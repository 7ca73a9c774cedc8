"""Atomic file writes: a temporary file in the target's directory, ``fsync``, ``os.replace`` onto the
final name, ``fsync`` of the directory. A crash leaves the old file or the new one, never a partial
file under the final name.

The implementation is :mod:`tiling.train.storage` (one for every writer: checkpoints, results,
reports, tables); this module keeps the names it has always offered. A write never goes through a
symbolic link that leaves its folder (:func:`tiling.train.storage.check_inside`).
"""
from __future__ import annotations

from tiling.train.storage import atomic_copy, atomic_write_bytes, atomic_write_json, atomic_write_with, default_mode

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_copy", "atomic_write_with", "default_mode"]
