"""The CUDA kernels compile with nvcc alone (no GPU, no torch CUDA headers) for Hopper (sm_90).

CI has nvcc but no GPU and a CPU wheel of torch, which lacks the generated CUDA headers; the
kernels therefore live in .cu files that need only the CUDA toolkit (kernels_cuda/scan_params.h)
and are compiled here with `nvcc -c -std=c++17 -arch=sm_90 -O3`, plus the defines
torch.utils.cpp_extension adds to every nvcc call (no implicit half/bfloat16 conversions), so
that the JIT build on a CUDA machine sees the same code. ptxas's resource report is checked for
the property the design rests on: state slices stay in registers (no local-memory stack frame or
spills) in the forward kernels and the backward's main case (N <= 16, four lanes per channel).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import kernels_cuda

KERNEL_DIR = Path(kernels_cuda.__file__).resolve().parent
# torch.utils.cpp_extension.COMMON_NVCC_FLAGS (torch 2.x), written out so this test needs no torch CUDA.
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")


def _entries(report: str) -> dict[str, dict[str, int]]:
    """ptxas -v report → {mangled kernel name: {stack, spill_stores, spill_loads, registers}}."""
    out: dict[str, dict[str, int]] = {}
    name = None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            out[name] = {}
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[name]["registers"] = int(m.group(1))
    return out


@pytest.mark.parametrize("source", ["scan_fwd.cu", "scan_bwd.cu"])
def test_kernel_compiles_for_sm90(source, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", "-arch=sm_90", "-O3", "-Xptxas", "-v", *TORCH_NVCC_FLAGS,
           str(KERNEL_DIR / source), "-o", str(tmp_path / (source + ".o"))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"nvcc failed:\n{res.stdout}\n{res.stderr}"
    assert (tmp_path / (source + ".o")).stat().st_size > 0
    report = _entries(res.stdout + res.stderr)
    kind = source.split(".")[0]
    kernels = {k: v for k, v in report.items() if f"{kind}_kernel" in k}
    # 4 input dtypes (float32, bfloat16, float16, float64) x 5 lane counts per channel (N up to 64)
    assert len(kernels) == 20, sorted(kernels)
    for name, r in kernels.items():
        main_case = kind == "scan_fwd" or re.search(r"Li4ELi\d+E", name)
        if main_case:
            assert r["stack"] == 0 and r["spill_stores"] == 0, f"{name} uses local memory: {r}"
        assert r["registers"] <= 255, f"{name}: {r}"
    warnings = [ln for ln in (res.stdout + res.stderr).splitlines() if "warning" in ln.lower()]
    assert not warnings, "\n".join(warnings)


def test_cuda_build_cache_name_follows_arch_list(monkeypatch):
    """TORCH_CUDA_ARCH_LIST names the build (and its cache), so another GPU never loads foreign code."""
    from tiling import _build

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0;9.0a+PTX")
    assert _build._cuda_arch_tag() == "9_0_9_0a_PTX"


def test_cuda_loader_declines_without_gpu(monkeypatch):
    """Without a usable GPU the loader returns None (the op then warns and uses the reference)."""
    import torch

    from tiling import _build

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _build.load_cuda_extension.cache_clear()
    try:
        assert _build.load_cuda_extension() is None
    finally:
        _build.load_cuda_extension.cache_clear()
