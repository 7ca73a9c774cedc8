"""tiling.ops.kernel_available: the op's own choice between a compiled kernel and the float64 reference."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from tiling import _build
from tiling.ops import kernel_available
from tiling.ops.scan import _extension


def ops_choice(device: str) -> bool:
    """Whether the op picks a compiled kernel for tensors on ``device`` (its fallback warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _extension(torch.device(device), 1) is not None


@pytest.mark.parametrize("device", ["cpu", "meta", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_answer_is_the_ops_choice(device):
    available = kernel_available(device)
    assert isinstance(available, bool)
    assert available is ops_choice(device)
    assert kernel_available(torch.device(device)) is available


def test_cpu_answer_is_the_loaders():
    assert kernel_available() is (_build.load_cpu_extension() is not None)


def test_no_kernel_off_cpu_and_cuda_nor_on_cuda_without_a_gpu():
    assert kernel_available("meta") is False
    if not torch.cuda.is_available():
        assert kernel_available("cuda") is False and kernel_available("cuda:1") is False


def test_force_reference_disables_the_kernels():
    """``TILING_FORCE_REFERENCE=1`` (read at the first load, so in a fresh interpreter): no kernel, as the op sees it."""
    code = ("import torch; from tiling.ops import kernel_available; from tiling.ops.scan import _extension\n"
            "print(kernel_available('cpu'), _extension(torch.device('cpu'), 1) is not None)\n")
    env = {**os.environ, "TILING_FORCE_REFERENCE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("device, err, match", [
    ("gpu", ValueError, "device must name a torch device"),
    ("cuda:-1", ValueError, "device"),
    ("", ValueError, "device"),
    (0, TypeError, "device must be a str or a torch.device"),
    (None, TypeError, "device"),
    (True, TypeError, "device"),
])
def test_bad_device(device, err, match):
    with pytest.raises(err, match=match):
        kernel_available(device)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """A build killed mid-way leaves torch's lock behind, and every later load waited on it for ever."""
    lock = tmp_path / "lock"
    assert _build._clear_stale_lock(tmp_path) is False  # no lock: nothing to do
    lock.write_text("")
    now = lock.stat().st_mtime
    assert _build._clear_stale_lock(tmp_path, now=now + _build.STALE_LOCK_S - 1) is False and lock.exists()
    with pytest.warns(RuntimeWarning, match="stale kernel build lock"):
        assert _build._clear_stale_lock(tmp_path, now=now + _build.STALE_LOCK_S + 1) is True
    assert not lock.exists()
