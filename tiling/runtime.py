"""Process settings for fast CPU inference: glibc's allocator keeps the memory it freed.

A forward of a byte LM allocates its activations afresh at every layer (``batch·L·d`` floats
each: 1 MiB at 1 × 1,024 bytes and d_model 256, 8 MiB at 8 × 1,024). With glibc's default
thresholds, blocks that size are returned to the kernel when they are freed (``mmap``'d blocks,
and the top of the heap past ``M_TRIM_THRESHOLD``), so the next forward faults every page in
again: thousands of minor page faults per forward at 8 × 1,024 (``getrusage``), a larger share of a
forward at budget 0.25 than at 1, since the full-resolution arrays (embedding, norms, residual, head)
are what a cheaper plan keeps (``docs/benchmarks.md``, issue 23). PyTorch's CPU tensors have no caching allocator of their own;
its performance guide suggests a different ``malloc`` (jemalloc, tcmalloc) for the same reason.

:func:`keep_freed_memory` makes glibc keep freed blocks for reuse instead. It is process-wide, so
the library never calls it on import: the project's commands (``evaluate``, ``generate``) and its
benches call it for their own process, and a user's program may.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

from infogeo.checks import check_int

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MiB = 1 << 20


def keep_freed_memory(*, mmap_threshold: int = 256 * MiB, trim_threshold: int = 1024 * MiB) -> bool:
    """Have glibc's ``malloc`` keep freed blocks for reuse (``mallopt``), so repeated forwards take no
    page faults.

    Parameters
    ----------
    mmap_threshold : blocks of at least this many bytes get their own ``mmap`` (and go back to the
        kernel when freed); smaller ones come from the heap. glibc's default is 128 KiB, raised
        dynamically up to 32 MiB, and setting any threshold ends that adjustment, so this sets one.
    trim_threshold : free memory at the top of the heap is returned to the kernel once it exceeds
        this many bytes (glibc: twice the mmap threshold).

    Returns
    -------
    True where both settings took (Linux with glibc); False elsewhere (another C library, another
    OS), where nothing changed.

    Notes
    -----
    The process then holds up to ``trim_threshold`` bytes of freed memory instead of returning it:
    the working set of one forward, which the next one reuses.
    """
    mmap_threshold = check_int(mmap_threshold, "mmap_threshold", minimum=1, maximum=2**31 - 1)
    trim_threshold = check_int(trim_threshold, "trim_threshold", minimum=1, maximum=2**31 - 1)
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


__all__ = ["keep_freed_memory"]
