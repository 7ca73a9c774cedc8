"""Argument handling shared by the modules of :mod:`infogeo.fisher`: tensor agreement, chunk sizes.

No formula lives here; the families, the estimators and the pull-backs validate their tensors with
these helpers before they read a value, and size their ``vmap`` chunks with :func:`_auto_chunk`.
"""
from __future__ import annotations

import torch

from infogeo.checks import check_int, check_same_device, check_same_dtype

# Upper bound on the elements of the per-chunk Jacobian (chunk × V × d) when chunk_size is
# chosen automatically: 2**24 float32 values = 64 MiB.
_CHUNK_ELEMENTS = 2**24


def _require_tensors(**tensors: object) -> None:
    """Type, device and dtype agreement, checked before any value is read.

    Devices are compared before values so that a tensor on another device is reported as such
    rather than failing inside a value check.
    """
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if all(t is None for t in tensors.values()):
        return  # each is checked (and named) where it is required
    check_same_device(**tensors)
    check_same_dtype(**tensors)


def _auto_chunk(chunk_size: int | None, per_item: int) -> int:
    """Tokens per chunk: the user's ``chunk_size``, or as many as keep ≤ _CHUNK_ELEMENTS entries."""
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    return check_int(chunk_size, "chunk_size", minimum=1)
