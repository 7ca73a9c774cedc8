"""tiling.runtime: glibc keeps freed memory, so repeated large allocations take no page faults."""
import subprocess
import sys
import textwrap

import pytest

from tiling.runtime import keep_freed_memory

# a forward's pattern: activations of 8 × 1,024 × 256 and × 512 floats (8 and 16 MiB), made and freed
# layer by layer. The baseline holds glibc's initial mmap threshold (128 KiB) fixed: each such block is
# mmap'd, returned when freed and faulted in again by the next forward. (glibc's own default raises that
# threshold as blocks are freed and trims the heap's top past a threshold that follows it, so whether it
# faults them in again depends on the heap's layout: 65,000–71,000 faults in one run, 0 in another.)
_PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    import torch
    from tiling.runtime import keep_freed_memory
    torch.set_num_threads(1)
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    else:
        assert ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024) == 1  # M_MMAP_THRESHOLD, held fixed
    W, V, x = torch.randn(256, 512) * 0.05, torch.randn(512, 256) * 0.05, torch.randn(8 * 1024, 256)
    def forward():
        h = x
        for _ in range(4):
            h = h + torch.relu(h @ W) @ V
        return float(h[-1, -1])
    forward(); forward()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        forward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_removes_the_page_faults_of_repeated_forwards():
    mapped, kept = _faults("mmap"), _faults("keep")
    assert mapped > 20_000  # 4 KiB pages: the forwards' hundreds of MiB faulted in again
    assert kept < mapped / 5


@pytest.mark.parametrize("kw", [{"mmap_threshold": 0}, {"trim_threshold": -1}, {"trim_threshold": 2**31},
                                {"mmap_threshold": 1.5}])
def test_keep_freed_memory_refuses_bad_thresholds(kw):
    with pytest.raises((TypeError, ValueError), match=next(iter(kw))):
        keep_freed_memory(**kw)
