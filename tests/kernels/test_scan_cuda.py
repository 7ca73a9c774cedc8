"""The CUDA kernel (kernels_cuda/scan_fwd.cu, scan_bwd.cu, scan_cuda.cpp) on a GPU.

Checked against the float64 reference (tiling/ops/reference.py, the definition of the semantics)
on rounded copies of the same inputs, against the C++ CPU kernel, and for the properties of the
op: chaining through initial_state/last_state, causality, determinism. Errors are relative
Frobenius norms ‖fast − ref‖/‖ref‖. Every test here needs an NVIDIA GPU (skipped otherwise).
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from reference.scan_inputs import OPTIONAL, make, run
from tiling import _build
from tiling.ops import adaptive_selective_scan as scan
from tiling.ops import adaptive_selective_scan_ref as ref
from tiling.ops.scan import checkpoint_slots

pytestmark = pytest.mark.cuda

f64 = torch.float64
INPUTS = ("u", "delta", "B", "C", "z")  # in the input dtype; the rest in the state dtype
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}


@pytest.fixture(scope="module")
def ext():
    e = _build.load_cuda_extension()
    assert e is not None, "the CUDA extension must build on a machine with a GPU and nvcc"
    return e


def cast(t, kw, device, dtype):
    """Inputs on `device`: u, delta, B, C, z in `dtype`, the others in its state dtype."""
    acc = f64 if dtype == f64 else torch.float32
    tt = {k: (None if v is None else v.to(device, dtype if k in INPUTS else acc)) for k, v in t.items()}
    kk = dict(kw, resolution=kw["resolution"].to(device, torch.float32), state_dims=kw["state_dims"].to(device))
    return tt, kk



def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values in the kernel's result"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_close(fast, slow, tol, what=""):
    for k in slow:
        err = rel_err(fast[k], slow[k])
        assert err <= tol, f"{what}{k}: relative error {err:.2e} > {tol:.0e}"


def assert_cuda_matches_cpu(t, kw):
    """The same float32 inputs through the CUDA and the CPU extension: outputs and gradients to 1e-4."""
    tg, kg = cast(t, kw, "cuda", torch.float32)
    tc, kc = cast(t, kw, "cpu", torch.float32)
    out_g, gr_g = run(scan, tg, kg)
    out_c, gr_c = run(scan, tc, kc)
    assert_close(out_g, out_c, 1e-4, "forward ")
    assert_close(gr_g, gr_c, 1e-4, "gradient ")


def check_against_reference(t, kw, dtype, softplus=True):
    tc, kc = cast(t, kw, "cuda", dtype)
    out_f, gr_f = run(scan, tc, kc, softplus)
    rounded = {k: (None if v is None else v.detach().cpu().double()) for k, v in tc.items()}
    out_r, gr_r = run(ref, rounded, dict(kc, resolution=kc["resolution"].cpu(), state_dims=kc["state_dims"].cpu()),
                      softplus)
    assert_close(out_f, out_r, TOL[dtype], "forward ")
    assert_close(gr_f, gr_r, TOL[dtype], "gradient ")


@given(batch=st.integers(1, 2), dim=st.integers(1, 40), L=st.integers(1, 150),
       N=st.sampled_from([1, 3, 4, 5, 8, 13, 16, 17, 32, 64]), grouped=st.booleans(), T=st.integers(1, 40),
       seed=st.integers(0, 10_000), present=st.sets(st.sampled_from(OPTIONAL)), softplus=st.booleans())
@settings(max_examples=30)
def test_float64_matches_reference(ext, batch, dim, L, N, grouped, T, seed, present, softplus):
    """Random shapes and plans, ragged tiles, L across windows and checkpoints, every optional input."""
    G = next(g for g in (3, 2, 1) if dim % g == 0) if grouped else None
    t, kw = make(batch, dim, L, N, G, T, seed, present=present)
    if not softplus:
        t["delta"] = t["delta"].abs()
    check_against_reference(t, kw, f64, softplus)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 70, 300, 16, 1, 64), (1, 19, 257, 5, 1, 24), (2, 48, 190, 16, 4, 7),
                                   (1, 8, 130, 64, 2, 100)])
def test_low_precision_matches_reference(ext, dtype, shape):
    """float32 ≤ 1e-4, bf16 ≤ 2e-2, fp16 ≤ 1e-2 relative to the float64 reference, forward and gradients."""
    batch, dim, L, N, G, T = shape
    t, kw = make(batch, dim, L, N, G if G > 1 else None, T, seed=11)
    check_against_reference(t, kw, dtype)


@pytest.mark.parametrize("resolution", [1.0, 0.25, None])
def test_matches_cpu_kernel(ext, resolution):
    """Same float32 inputs through the CPU and the CUDA extension: outputs, checkpoints, gradients."""
    t, kw = make(2, 96, 700, 16, None, 64, seed=5)
    if resolution is not None:
        kw["resolution"] = torch.full_like(kw["resolution"], resolution)
        kw["state_dims"] = torch.full_like(kw["state_dims"], 16)
    assert_cuda_matches_cpu(t, kw)


def test_checkpoints_have_the_cpu_layout(ext):
    """The CUDA forward saves the same states as the CPU forward (the state entering each slot's tile)."""
    cpu = _build.load_cpu_extension()
    if cpu is None:
        pytest.skip("the C++ CPU kernel could not be built")
    from tiling.ops.reference import validate_scan_inputs

    t, kw = make(2, 33, 900, 16, None, 16, seed=3, res_lo=0.02)
    out = {}
    for dev, e in (("cuda", ext), ("cpu", cpu)):
        x, k = cast(t, kw, dev, torch.float32)
        p = validate_scan_inputs(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                                 tile_size=k["tile_size"], resolution=k["resolution"], state_dims=k["state_dims"],
                                 boundary_gain=x["boundary_gain"], initial_state=x["initial_state"])
        slot, n_ckpt = checkpoint_slots(p.seg_counts)
        i32 = lambda v: v.to(dev, torch.int32).contiguous()  # noqa: E731
        out[dev] = e.fwd(x["u"], x["delta"], x["A"], p.B, p.C, x["D"], x["z"], x["delta_bias"], x["boundary_gain"],
                         x["initial_state"], p.resolution.float(), i32(p.seg_counts), i32(p.state_dims), i32(slot),
                         n_ckpt, k["tile_size"], True, True)
        assert n_ckpt > 1  # the test crosses several checkpoints
    for a, b, name in zip(out["cuda"], out["cpu"], ("y", "last_state", "checkpoints", "tile_states")):
        assert a.shape == b.shape, name
        assert rel_err(a, b) <= 1e-4, name


def test_chaining_through_states(ext):
    """Scanning [0, L1) then [L1, L) from last_state equals one scan (L1 a multiple of T, no gain)."""
    present = ("D", "z", "delta_bias", "initial_state")
    t, kw = make(2, 40, 333, 16, 2, 32, seed=8, present=present)
    tc, kc = cast(t, kw, "cuda", f64)
    split, ts = 160, 5  # 160 = 5 tiles of 32
    args = lambda sl: [tc[k][..., sl] if tc[k] is not None and k in ("u", "delta", "z", "B", "C") else tc[k]  # noqa: E731
                       for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    y, last = scan(*args(slice(None)), True, tile_size=32, resolution=kc["resolution"], state_dims=kc["state_dims"],
                   initial_state=tc["initial_state"], return_last_state=True)
    y1, h1 = scan(*args(slice(0, split)), True, tile_size=32, resolution=kc["resolution"][:, :ts],
                  state_dims=kc["state_dims"][:, :ts], initial_state=tc["initial_state"], return_last_state=True)
    y2, h2 = scan(*args(slice(split, None)), True, tile_size=32, resolution=kc["resolution"][:, ts:],
                  state_dims=kc["state_dims"][:, ts:], initial_state=h1, return_last_state=True)
    assert rel_err(torch.cat([y1, y2], -1), y) <= 1e-12
    assert rel_err(h2, last) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_causality(ext, dtype):
    """Changing u, delta, B, C or z at position t0 leaves every output before t0 bit-identical."""
    t, kw = make(1, 24, 200, 16, None, 16, seed=21)
    tc, kc = cast(t, kw, "cuda", dtype)
    base = scan(tc["u"], tc["delta"], tc["A"], tc["B"], tc["C"], tc["D"], tc["z"], tc["delta_bias"], True,
                boundary_gain=tc["boundary_gain"], initial_state=tc["initial_state"], **kc)
    for name in ("u", "delta", "B", "C", "z"):
        for t0 in (0, 37, 63, 64, 150):
            pert = dict(tc)
            pert[name] = tc[name].clone()
            pert[name][..., t0] += 1.0
            y = scan(pert["u"], pert["delta"], pert["A"], pert["B"], pert["C"], pert["D"], pert["z"],
                     pert["delta_bias"], True, boundary_gain=pert["boundary_gain"],
                     initial_state=pert["initial_state"], **kc)
            assert torch.equal(y[..., :t0], base[..., :t0]), f"{name} at {t0} changed an earlier output"
            assert not torch.equal(y[..., t0:], base[..., t0:]), f"{name} at {t0} changed nothing"


def test_deterministic_option(ext):
    """Under torch.use_deterministic_algorithms, dB and dC (the cross-channel sums) are bit-reproducible."""
    t, kw = make(2, 130, 400, 16, 2, 64, seed=4)
    tc, kc = cast(t, kw, "cuda", torch.float32)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        _, g1 = run(scan, tc, kc)
        _, g2 = run(scan, tc, kc)
    finally:
        torch.use_deterministic_algorithms(before)
    _, g3 = run(scan, tc, kc)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), f"{k} differs between two deterministic runs"
        assert rel_err(g1[k], g3[k]) <= 1e-5, k


def test_long_sequence(ext):
    """L = 65,536 (many windows and checkpoints) agrees with the CPU kernel, forward and gradients."""
    t, kw = make(1, 8, 65536, 16, None, 64, seed=2, present=("D", "z", "delta_bias"), res_lo=0.1)
    assert_cuda_matches_cpu(t, kw)


def test_every_output_element_is_written(ext):
    """Outputs come from torch.empty: NaN left in the allocator's cached blocks must not reach results."""
    t, kw = make(2, 37, 101, 13, None, 10, seed=6)
    tc, kc = cast(t, kw, "cuda", torch.float32)
    # Fill cached blocks of both allocator pools (small: <= 1 MB, large) with NaN and release them;
    # the outputs and scratch of the next calls are carved from these blocks.
    poison = [torch.full((1 << 18,), float("nan"), device="cuda") for _ in range(16)]
    poison.append(torch.full((1 << 24,), float("nan"), device="cuda"))
    del poison
    out, grads = run(scan, tc, kc)
    for k, v in {**out, **grads}.items():
        assert torch.isfinite(v).all(), f"{k} has unwritten (NaN) elements"


def test_state_size_above_limit_is_rejected(ext):
    """N > 64 has no CUDA kernel: a clear error naming N, not a wrong result."""
    t, kw = make(1, 4, 20, 65, None, 8, seed=1, present=())
    tc, kc = cast(t, kw, "cuda", torch.float32)
    with pytest.raises((ValueError, RuntimeError), match="N"):
        scan(tc["u"], tc["delta"], tc["A"], tc["B"], tc["C"], tile_size=8)


def test_state_size_beyond_the_kernel_is_named(ext):
    t, kw = make(1, 2, 8, 65, None, 4, seed=0, present=())
    t, kw = cast(t, kw, "cuda", torch.float32)
    with pytest.raises(ValueError, match="N=65 state dimensions; the CUDA kernel supports N <= 64"):
        scan(t["u"], t["delta"], t["A"], t["B"], t["C"], **kw)
