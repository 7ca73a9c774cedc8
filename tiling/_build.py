"""Just-in-time build and cache of the kernels in ``kernels_cuda/`` (torch.utils.cpp_extension).

The CPU kernel is compiled at first use (about a minute), cached by torch under
``~/.cache/torch_extensions`` (or ``$TORCH_EXTENSIONS_DIR``) and reused afterwards. The cache key
(the extension name) carries the instruction-set level (CPU) or the GPU archs (CUDA) it was
compiled for, so a cache shared between machines never runs code the processor cannot execute,
and a digest of the sources and headers, so an edited or upgraded kernel is built afresh, never
loaded stale. ``TILING_FORCE_REFERENCE=1`` skips the kernels and uses the float64 reference (slow,
for debugging).
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import kernels_cuda

if TYPE_CHECKING:
    import torch

KERNEL_DIR = Path(kernels_cuda.__file__).resolve().parent


def force_reference() -> bool:
    """``TILING_FORCE_REFERENCE=1`` in the environment disables the compiled kernels."""
    return os.environ.get("TILING_FORCE_REFERENCE", "0") not in ("", "0")


def _cpu_isa() -> tuple[str, list[str]]:
    """(tag, flags): the x86-64 micro-architecture level this CPU supports (v4 = AVX-512)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "generic", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "generic", []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        return "x86_64_v4", ["-march=x86-64-v4"]
    if {"avx2", "fma", "bmi2", "movbe"} <= flags:
        return "x86_64_v3", ["-march=x86-64-v3"]
    return "generic", []


def _digest(sources: list[str]) -> str:
    """Short hash of ``sources`` and of every header in ``kernels_cuda/`` (what they may include)."""
    h = hashlib.sha256()
    for path in [*(KERNEL_DIR / s for s in sources), *sorted(KERNEL_DIR.glob("*.h")), *sorted(KERNEL_DIR.glob("*.cuh"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _build_dir(name: str) -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


#: a build lock older than this is taken to be left by a build that died (a build takes ~1 min idle, a few
#: under load); torch's FileBaton would otherwise wait for it forever, hanging every process that loads
STALE_LOCK_S = 900.0


def _clear_stale_lock(build_dir: Path, now: float | None = None) -> bool:
    """Remove ``build_dir/lock`` when older than :data:`STALE_LOCK_S` (warns); True if removed.

    A build killed mid-way leaves torch's lock file behind, and every later ``cpp_extension.load`` of the
    same name waits on it without end (seen: a whole test run and training sweep frozen on a 12-minute-old
    lock). A younger lock is left alone: another process may be building.
    """
    lock = build_dir / "lock"
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_S:
        return False
    warnings.warn(f"tiling: removing a stale kernel build lock ({lock}, {age / 60:.0f} min old) left by a "
                  "build that stopped", RuntimeWarning, stacklevel=3)
    lock.unlink(missing_ok=True)
    return True


@functools.lru_cache(maxsize=None)
def load_cpu_extension() -> ModuleType | None:
    """Compile (once) and import the C++ CPU scan kernel.

    Returns
    -------
    The extension module, or ``None`` if ``TILING_FORCE_REFERENCE`` is set or no compiler works.

    Warns
    -----
    RuntimeWarning
        The build failed (the message names the error); the caller falls back to the reference.

    Notes
    -----
    Flags: ``-O3 -fopenmp`` and the ISA level of this CPU (``-march=x86-64-v3``/``-v4``); no
    ``-ffast-math`` (the kernel's exponential is a tested polynomial, and IEEE semantics are
    kept elsewhere).
    """
    if force_reference():
        return None
    tag, isa = _cpu_isa()
    sources = ["scan_cpu.cpp"]
    name = f"tiling_scan_cpu_{tag}_{_digest(sources)}"
    return _jit_load(name, sources, "C++", "~1 min", extra_cflags=["-O3", "-fopenmp", *isa],
                     extra_ldflags=["-fopenmp"])


def _jit_load(name: str, sources: list[str], what: str, duration: str, **flags) -> ModuleType | None:
    """``cpp_extension.load`` of ``sources`` as ``name`` (a stale lock cleared first, the first build
    announced); any compiler or linker failure is a warning naming it and None (the reference is used)."""
    from torch.utils import cpp_extension

    _clear_stale_lock(_build_dir(name))
    if not any(_build_dir(name).glob(f"{name}*.so")):
        print(f"tiling: compiling the {what} scan kernel (first use, {duration})…", file=sys.stderr, flush=True)
    try:
        return cpp_extension.load(name=name, sources=[str(KERNEL_DIR / f) for f in sources],
                                  extra_include_paths=[str(KERNEL_DIR)], verbose=False, **flags)
    except Exception as exc:  # any compiler/linker failure: fall back, say why
        last_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        warnings.warn(f"tiling: could not build the {what} scan kernel ({type(exc).__name__}: {last_line}); "
                      "falling back to the (slow) PyTorch reference", RuntimeWarning, stacklevel=3)
        return None


def _cuda_arch_tag() -> str:
    """Tag of the GPU archs the CUDA extension is built for: ``TORCH_CUDA_ARCH_LIST`` if set (torch's
    cpp_extension honours it), else the compute capabilities of the visible devices (its default)."""
    import torch

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        return "".join(ch if ch.isalnum() else "_" for ch in archs)
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return "_".join(f"sm{major}{minor}" for major, minor in caps)


@functools.lru_cache(maxsize=None)
def load_cuda_extension() -> ModuleType | None:
    """Compile (once) and import the CUDA scan kernel.

    Returns
    -------
    The extension module; ``None`` if ``TILING_FORCE_REFERENCE`` is set, without a GPU or a CUDA
    toolkit, or on failure.

    Warns
    -----
    RuntimeWarning
        The build failed (the message names the error); the caller falls back to the reference.

    Notes
    -----
    Sources: ``scan_cuda.cpp`` (tensors to kernel parameters, behind the interface of
    ``binding.h`` shared with ``scan_cpu.cpp``) and ``scan_fwd.cu``, ``scan_bwd.cu`` (CUDA toolkit
    only). Built at first use for the archs of
    :func:`_cuda_arch_tag` (part of the cache name, so a cache shared between machines never loads
    code for another GPU), ``-O3``, no ``--use_fast_math`` (the decays call ``ex2.approx``
    explicitly; softplus and sigmoid keep the accurate ``expf``/``log1pf``). ``pip install`` needs no
    GPU: nothing is compiled before this call.
    """
    if force_reference():
        return None
    import torch
    from torch.utils import cpp_extension

    if not torch.cuda.is_available() or cpp_extension.CUDA_HOME is None:
        return None
    sources = ["scan_cuda.cpp", "scan_fwd.cu", "scan_bwd.cu"]
    name = f"tiling_scan_cuda_{_cuda_arch_tag()}_{_digest(sources)}"
    return _jit_load(name, sources, "CUDA", "~2 min", extra_cflags=["-O3"],
                     extra_cuda_cflags=["-O3", "-lineinfo"])


def kernel_available(device: str | torch.device = "cpu") -> bool:
    """Whether :func:`tiling.ops.adaptive_selective_scan` runs a compiled kernel on ``device``.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; its type decides (the index is not checked).

    Returns
    -------
    bool
        True: the op runs the C++ kernel (CPU) or the CUDA kernel on tensors of ``device``. False:
        it falls back to the float64 PyTorch reference there, with a ``RuntimeWarning`` — as it does
        with ``TILING_FORCE_REFERENCE=1``, when no compiler (CPU) or no GPU or CUDA toolkit (CUDA)
        works, and on any other device type.

    Raises
    ------
    TypeError
        ``device`` is not a str or a ``torch.device``.
    ValueError
        ``device`` names no torch device.

    Notes
    -----
    The answer is the op's own choice: both load the kernel with :func:`load_cpu_extension` /
    :func:`load_cuda_extension`. So the first call for a device builds the kernel unless it is
    cached (about a minute for the CPU, two for CUDA; once per machine and kernel version), and a
    failed build warns (``RuntimeWarning``, naming the error) and answers False. Per call the CUDA
    kernel also needs ``N ≤ tiling.ops.scan.CUDA_MAX_STATE`` state dimensions (a larger ``N`` is a
    ``ValueError`` of the op, not a fallback).

    Examples
    --------
    >>> from tiling.ops import kernel_available
    >>> kernel_available("meta")
    False
    """
    import torch

    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or a torch.device, got {type(device).__name__}")
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise ValueError(f"device must name a torch device (e.g. 'cpu', 'cuda'), got {device!r}: {e}") from None
    if kind == "cpu":
        return load_cpu_extension() is not None
    if kind == "cuda":
        return load_cuda_extension() is not None
    return False
