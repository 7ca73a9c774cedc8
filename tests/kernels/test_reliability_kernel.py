"""Sizes that once aborted the process (issue 16, finding 5): a tile far longer than the sequence,
an allocation that fails. Each case runs in a subprocess, so an abort fails the test instead of
killing pytest."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tiling import _build
from tiling.modules.chunk import segment_boundaries
from tiling.policy import tile_density, tile_tail_density

ROOT = Path(__file__).resolve().parents[2]
needs_kernel = pytest.mark.skipif(_build.load_cpu_extension() is None, reason="the C++ CPU kernel could not be built")
HUGE = 2 ** 40  # tokens per tile: scratch sized by the tile would be tens of terabytes


def run_python(code: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # generous: on a loaded 2-core machine the subprocess's torch import alone took minutes (two cases hit
    # 240 s in a fresh-clone make test beside a training sweep); it guards against a hang, not slowness
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@needs_kernel
def test_tile_far_longer_than_the_sequence_runs_and_matches_the_reference():
    proc = run_python(f"""
        import torch
        from tiling.ops import adaptive_selective_scan as scan, adaptive_selective_scan_ref as ref
        g = torch.Generator().manual_seed(0)
        u = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
        d = torch.rand(2, 3, 9, generator=g, dtype=torch.float64)
        A = -torch.rand(3, 2, generator=g, dtype=torch.float64) - 0.5
        B, C = torch.randn(2, 2, 2, 9, generator=g, dtype=torch.float64).unbind(0)
        for T in (10, {HUGE}):
            y = scan(u, d, A, B, C, tile_size=T, resolution=0.5)
            (gu,) = torch.autograd.grad(y.sum(), u)
            r = ref(u, d, A, B, C, tile_size=T, resolution=0.5)
            (gr,) = torch.autograd.grad(r.sum(), u)
            assert float((y - r).abs().max()) < 1e-12 and float((gu - gr).abs().max()) < 1e-12, T
            print(T, "ok")
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["10", "ok", str(HUGE), "ok"]


@needs_kernel
def test_failed_scratch_allocation_is_a_python_exception():
    """With the address space capped below the kernel's scratch, the scan raises RuntimeError
    (naming the scratch) and the process lives on; an exception inside the OpenMP region would abort."""
    proc = run_python("""
        import resource, torch
        from tiling.ops import adaptive_selective_scan as scan
        torch.set_num_threads(1)
        L = 2 ** 22  # one tile of L tokens: the forward's scratch is 4·L vectors (≥ 512 MB), the tensors 32 MB each
        u = torch.randn(1, 1, L, dtype=torch.float64)
        d = torch.rand(1, 1, L, dtype=torch.float64)
        A = -torch.ones(1, 1, dtype=torch.float64)
        B, C = torch.randn(1, 1, L, dtype=torch.float64), torch.randn(1, 1, L, dtype=torch.float64)
        scan(u[..., :64], d[..., :64], A, B[..., :64], C[..., :64], tile_size=64)  # load the kernel first
        vm = int(next(x for x in open("/proc/self/status") if x.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2 ** 20, resource.RLIM_INFINITY))
        try:
            scan(u, d, A, B, C, tile_size=L)
        except RuntimeError as e:
            print("raised:", str(e).splitlines()[0])
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("alive", float(scan(u[..., :8], d[..., :8], A, B[..., :8], C[..., :8], tile_size=L).abs().sum()) > 0)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("raised:") and "cannot allocate" in lines[0] and "scratch" in lines[0], lines
    assert lines[-1] == "alive True"


def test_tile_helpers_never_pad_by_the_tile_size():
    """tile_density, tile_tail_density and segment_boundaries with T ≫ L: one tile, exact values."""
    rho = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    torch.testing.assert_close(tile_density(rho, HUGE), torch.tensor([[3.0]], dtype=torch.float64))
    torch.testing.assert_close(tile_tail_density(rho, HUGE, HUGE), torch.tensor([[3.0]], dtype=torch.float64))
    torch.testing.assert_close(tile_tail_density(rho, HUGE, 2, "max"), torch.tensor([[6.0]], dtype=torch.float64))
    # m segments on the nominal grid of a HUGE tile: only offset 0 starts one inside the sequence
    mask = segment_boundaries(torch.tensor([[3]]), 4, HUGE)
    assert mask.tolist() == [[True, False, False, False]]
    # every offset starts a segment at m = T, so the first L tokens are each their own segment
    assert segment_boundaries(torch.tensor([[HUGE]]), 4, HUGE).tolist() == [[True] * 4]
