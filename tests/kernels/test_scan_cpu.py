"""The fused C++ CPU kernel against the float64 reference: forward, every gradient, properties."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from reference.mamba_sequential import mamba_scan_sequential
from reference.scan_inputs import OPTIONAL, make, run
from tiling import _build
from tiling.ops import adaptive_selective_scan as scan
from tiling.ops import adaptive_selective_scan_ref as ref
from tiling.ops.scan import CHECKPOINT_SEGMENTS, checkpoint_slots

f64 = torch.float64
ext = _build.load_cpu_extension()
needs_kernel = pytest.mark.skipif(ext is None, reason="the C++ CPU kernel could not be built")
DIFF = ("u", "delta", "A", "B", "C") + OPTIONAL



def assert_match(fast, slow, rtol):
    for k in slow:
        a, b = fast[k].detach().double(), slow[k].detach().double()
        scale = b.abs().max().clamp_min(1.0)
        err = float((a - b).abs().max() / scale)
        assert err <= rtol, f"{k}: relative error {err:.2e} > {rtol:.0e}"


@needs_kernel
@given(batch=st.integers(1, 2), dim=st.integers(1, 20), L=st.integers(1, 160), N=st.integers(1, 6),
       grouped=st.booleans(), T=st.integers(1, 24), seed=st.integers(0, 10_000),
       present=st.sets(st.sampled_from(OPTIONAL)), softplus=st.booleans())
@settings(max_examples=40)
def test_kernel_matches_reference_float64(batch, dim, L, N, grouped, T, seed, present, softplus):
    G = None
    if grouped:
        G = next(g for g in (3, 2, 1) if dim % g == 0)
    t, kw = make(batch, dim, L, N, G, T, seed, present=present)
    if not softplus:
        t["delta"] = t["delta"].abs()
    out_f, gr_f = run(scan, t, kw, softplus)
    out_r, gr_r = run(ref, t, kw, softplus)
    assert_match(out_f, out_r, 1e-11)
    assert_match(gr_f, gr_r, 1e-10)


@needs_kernel
@pytest.mark.parametrize("shape", [(2, 37, 120, 16, 1, 8), (1, 19, 150, 5, 1, 64), (2, 24, 60, 8, 2, 3)])
def test_kernel_float32_against_float64_reference(shape):
    batch, dim, L, N, G, T = shape
    t, kw = make(batch, dim, L, N, G if G > 1 else None, T, seed=7)
    t32 = {k: (v.float() if v is not None else None) for k, v in t.items()}
    kw32 = dict(kw, resolution=kw["resolution"].float())
    out_f, gr_f = run(scan, t32, kw32)
    out_r, gr_r = run(ref, t, kw)
    assert out_f["y"].dtype == torch.float32 and out_f["last"].dtype == torch.float32
    assert_match(out_f, out_r, 2e-5)
    assert_match(gr_f, gr_r, 5e-5)


@needs_kernel
@pytest.mark.parametrize("dtype, tol", [(f64, 1e-11), (torch.float32, 2e-5)])
def test_full_resolution_state16_register_path(dtype, tol):
    """R = 1 with N = S = 16 takes the kernel's register-resident loop: check it and its gradients."""
    t, kw = make(2, 21, 150, 16, None, 64, seed=11)
    kw = dict(kw, resolution=torch.ones_like(kw["resolution"]), state_dims=torch.full_like(kw["state_dims"], 16))
    tc = {k: (v.to(dtype) if v is not None else None) for k, v in t.items()}
    out_f, gr_f = run(scan, tc, dict(kw, resolution=kw["resolution"].to(dtype)))
    out_r, gr_r = run(ref, t, kw)
    assert_match(out_f, out_r, tol)
    assert_match(gr_f, gr_r, 2 * tol)


@needs_kernel
def test_long_sequence_uses_several_checkpoints():
    """L/T tiles at R = 1 span several checkpoint chunks: the recomputing backward stays exact."""
    t, kw = make(1, 5, 400, 3, None, 16, seed=3, res_lo=0.9)
    slot, n = checkpoint_slots(torch.tensor([[16] * 25]))
    assert n == 7 and slot[0].tolist()[:6] == [0, -1, -1, -1, 1, -1]
    out_f, gr_f = run(scan, t, kw)
    out_r, gr_r = run(ref, t, kw)
    assert_match(out_f, out_r, 1e-11)
    assert_match(gr_f, gr_r, 1e-10)


def test_checkpoint_schedule_spacing():
    m = torch.randint(1, 40, (3, 50), generator=torch.Generator().manual_seed(0))
    slot, n = checkpoint_slots(m)
    for b in range(3):
        starts = [i for i in range(50) if slot[b, i] >= 0]
        assert starts[0] == 0 and slot[b, starts].tolist() == list(range(len(starts)))
        gaps = [int(m[b, a:c].sum()) for a, c in zip(starts, starts[1:])]
        assert all(CHECKPOINT_SEGMENTS <= gp < CHECKPOINT_SEGMENTS + 40 for gp in gaps)
        assert len(starts) <= n


@needs_kernel
def test_saved_memory_has_no_state_history():
    batch, dim, L, N = 1, 64, 512, 16
    t, kw = make(batch, dim, L, N, None, 64, seed=0, res_lo=1.0)
    leaves = [t[k].float().requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    y = scan(*leaves, tile_size=64)
    saved = sum(x.numel() for x in y.grad_fn.saved_tensors if x is not None)  # what the backward keeps alive
    inputs = 2 * batch * dim * L + dim * N + 2 * batch * N * L + 4 * batch * (L // 64)
    ckpts = batch * dim * N * (L // CHECKPOINT_SEGMENTS)
    assert saved <= inputs + ckpts < batch * dim * N * L / 4
    y.sum().backward()


@needs_kernel
@pytest.mark.parametrize("G", [None, 2])
def test_gradcheck_float64(G):
    t, kw = make(1, 4, 11, 3, G, 4, seed=5)
    names = [k for k in DIFF if t[k] is not None]

    def f(*xs):
        d = dict(t, **dict(zip(names, xs)))
        y, last, tiles = scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"], d["delta_bias"], True,
                              boundary_gain=d["boundary_gain"], initial_state=d["initial_state"],
                              return_tile_states=True, **kw)
        return y, last, tiles

    xs = [t[k].detach().clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


@needs_kernel
def test_resolution_one_equals_sequential_mamba_float32():
    t, kw = make(2, 33, 130, 16, None, 64, seed=2)
    t32 = {k: (v.float() if v is not None else None) for k, v in t.items()}
    y = scan(t32["u"], t32["delta"], t32["A"], t32["B"], t32["C"], t32["D"], t32["z"], t32["delta_bias"], True)
    y_seq, _ = mamba_scan_sequential(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True)
    torch.testing.assert_close(y.double(), y_seq, rtol=1e-4, atol=1e-4)


@needs_kernel
@given(L1_tiles=st.integers(1, 4), seed=st.integers(0, 1000))
@settings(max_examples=10)
def test_kernel_chaining(L1_tiles, seed):
    T, L = 8, 45
    t, kw = make(2, 5, L, 4, None, T, seed=seed, present=("D", "z", "delta_bias", "initial_state"))
    R, S = kw["resolution"], kw["state_dims"]
    full, last = scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, tile_size=T,
                      resolution=R, state_dims=S, initial_state=t["initial_state"], return_last_state=True)
    L1 = L1_tiles * T
    part = lambda k, s: t[k][..., s]  # noqa: E731
    a, b = slice(0, L1), slice(L1, None)
    y1, h1 = scan(part("u", a), part("delta", a), t["A"], part("B", a), part("C", a), t["D"], part("z", a),
                  t["delta_bias"], True, tile_size=T, resolution=R[:, :L1_tiles], state_dims=S[:, :L1_tiles],
                  initial_state=t["initial_state"], return_last_state=True)
    y2, h2 = scan(part("u", b), part("delta", b), t["A"], part("B", b), part("C", b), t["D"], part("z", b),
                  t["delta_bias"], True, tile_size=T, resolution=R[:, L1_tiles:], state_dims=S[:, L1_tiles:],
                  initial_state=h1, return_last_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, last, rtol=1e-12, atol=1e-12)


@needs_kernel
@given(t0=st.integers(0, 39), which=st.sampled_from(["u", "delta", "B", "C", "z"]), R=st.floats(0.05, 1.0),
       seed=st.integers(0, 1000))
@settings(max_examples=30)
def test_causality(t0, which, R, seed):
    """Changing any input at position t0 changes no output before t0, at any resolution."""
    t, kw = make(1, 4, 40, 3, None, 16, seed=seed)
    kw = dict(kw, resolution=torch.full_like(kw["resolution"], R))

    def call(d):
        return scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"], d["delta_bias"], True,
                    boundary_gain=d["boundary_gain"], initial_state=d["initial_state"], return_last_state=True, **kw)

    y, last = call(t)
    t2 = dict(t)
    t2[which] = t[which].clone()
    t2[which][..., t0] += 1.0 + torch.rand(t[which][..., t0].shape, dtype=f64)
    y2, last2 = call(t2)
    assert torch.equal(y[..., :t0], y2[..., :t0])
    # the change is seen later: by an output at or after t0, or (when every later token of a long
    # segment reads the state before it) by the state
    assert not (torch.equal(y[..., t0:], y2[..., t0:]) and torch.equal(last, last2))


@needs_kernel
def test_exp_and_softplus_polynomials_against_libm():
    x = torch.linspace(-87.0, 88.0, 400_001, dtype=f64)
    rel = ((ext.exp_approx(x.float()).double() - torch.exp(x.float().double())) / torch.exp(x.float().double())).abs()
    assert float(rel.max()) <= 2e-7
    assert ext.exp_approx(torch.tensor([-90.0, -1e30])).tolist() == [0.0, 0.0]
    s = torch.linspace(-80.0, 80.0, 200_001, dtype=f64)
    exact = torch.nn.functional.softplus(s.float().double())
    rel = ((ext.softplus_approx(s.float()).double() - exact) / exact).abs()
    assert float(rel.max()) <= 3e-7


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype):
    t, kw = make(1, 16, 100, 8, None, 32, seed=4, present=("D", "delta_bias"))
    th = {k: (v.to(dtype) if v is not None and k in ("u", "delta", "B", "C") else v) for k, v in t.items()}
    y, last = scan(th["u"], th["delta"], t["A"].float(), th["B"], th["C"], t["D"].float(), None, t["delta_bias"].float(),
                   True, return_last_state=True, **kw)
    assert y.dtype == dtype and last.dtype == torch.float32
    y_ref = ref(*(th[k].double() for k in ("u", "delta")), t["A"], *(th[k].double() for k in ("B", "C")), t["D"], None,
                t["delta_bias"], True, **kw)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-2, atol=1e-2 * float(y_ref.abs().max()))


@needs_kernel
def test_non_contiguous_inputs_are_handled():
    t, kw = make(2, 6, 30, 4, None, 8, seed=8)
    uT = t["u"].transpose(1, 2).contiguous().transpose(1, 2)
    BT = t["B"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not uT.is_contiguous() and not BT.is_contiguous()
    y = scan(uT, t["delta"], t["A"].t().contiguous().t(), BT, t["C"], t["D"], tile_size=8)
    torch.testing.assert_close(y, ref(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], tile_size=8))


def test_fallback_to_reference_without_kernel(monkeypatch):
    monkeypatch.setattr(_build, "load_cpu_extension", lambda: None)
    t, kw = make(1, 3, 10, 2, None, 4, seed=1)
    y = scan(t["u"], t["delta"], t["A"], t["B"], t["C"], **kw)
    torch.testing.assert_close(y, ref(t["u"], t["delta"], t["A"], t["B"], t["C"], **kw), rtol=0, atol=0)


def test_build_failure_warns_and_returns_none(monkeypatch):
    from torch.utils import cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension\nc++: not found")

    monkeypatch.setattr(cpp_extension, "load", broken)
    _build.load_cpu_extension.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build the C\\+\\+ scan kernel .*c\\+\\+: not found"):
            assert _build.load_cpu_extension() is None
        monkeypatch.undo()
        monkeypatch.setenv("TILING_FORCE_REFERENCE", "1")
        _build.load_cpu_extension.cache_clear()
        assert _build.load_cpu_extension() is None
    finally:
        _build.load_cpu_extension.cache_clear()


# ------------------------------------------------------------------ bad input
def base():
    t, _ = make(1, 4, 10, 3, None, 4, seed=0, present=())
    return t


@pytest.mark.parametrize("fn", [scan, ref])
@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(u=torch.zeros(1, 4)), ValueError, "u must have 3"),
        (dict(delta=torch.zeros(1, 4, 9, dtype=f64)), ValueError, "delta must have shape"),
        (dict(A=torch.zeros(5, 3, dtype=f64)), ValueError, "A must have shape"),
        (dict(B=torch.zeros(1, 2, 10, dtype=f64)), ValueError, "B must have shape"),
        (dict(C=torch.zeros(1, 2, 3, 10, dtype=f64)), ValueError, "B and C"),
        (dict(B=torch.zeros(1, 3, 3, 10, dtype=f64), C=torch.zeros(1, 3, 3, 10, dtype=f64)), ValueError, "divide dim"),
        (dict(D=torch.zeros(3, dtype=f64)), ValueError, "D must have shape"),
        (dict(z=torch.zeros(1, 4, 11, dtype=f64)), ValueError, "z must have shape"),
        (dict(delta_bias=torch.zeros(4, 1, dtype=f64)), ValueError, "delta_bias must have shape"),
        (dict(boundary_gain=torch.zeros(4, 2, dtype=f64)), ValueError, "boundary_gain must have shape"),
        (dict(initial_state=torch.zeros(2, 4, 3, dtype=f64)), ValueError, "initial_state must have shape"),
        (dict(resolution=torch.full((1, 3), 1.5, dtype=f64)), ValueError, r"resolution must lie in \(0, 1\]"),
        (dict(resolution=torch.zeros(1, 3, dtype=f64)), ValueError, r"resolution must lie in \(0, 1\]"),
        (dict(resolution=torch.ones(1, 2, dtype=f64)), ValueError, "resolution must have shape"),
        (dict(resolution=2.0), ValueError, "resolution must lie"),
        (dict(state_dims=torch.tensor([[1, 4, 1]])), ValueError, r"state_dims must lie in \[1, N\]"),
        (dict(state_dims=torch.tensor([[0, 1, 1]])), ValueError, r"state_dims must lie in \[1, N\]"),
        (dict(state_dims=torch.ones(1, 3, dtype=f64)), TypeError, "state_dims must have an integer dtype"),
        (dict(state_dims=torch.ones(1, 2, dtype=torch.int64)), ValueError, "state_dims must have shape"),
        (dict(tile_size=0), ValueError, "tile_size must be >= 1"),
        (dict(tile_size=2.5), TypeError, "tile_size must be an int"),
        (dict(delta=torch.zeros(1, 4, 10, dtype=torch.float32)), TypeError, "delta has dtype"),
        (dict(u=torch.zeros(1, 4, 10, dtype=torch.int64)), TypeError, "u must have a floating dtype"),
        (dict(u="x"), TypeError, "u must be a torch.Tensor"),
    ],
)
def test_bad_input(fn, change, exc, match):
    t = base()
    kw = dict(tile_size=4)
    for k, v in change.items():
        (t if k in t else kw)[k] = v
    with pytest.raises(exc, match=match):
        fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
           boundary_gain=t["boundary_gain"], initial_state=t["initial_state"], **kw)


@pytest.mark.parametrize("fn", [scan, ref])
@pytest.mark.parametrize("name", ["u", "delta", "z", "B", "A", "delta_bias"])
def test_nan_is_detected_and_named(fn, name):
    t, _ = make(1, 4, 10, 3, None, 4, seed=0)
    t[name] = t[name].clone()
    t[name].view(-1)[3] = math.nan
    with pytest.raises(ValueError, match=f"{name} contains 1 NaN"):
        fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, tile_size=4)


@pytest.mark.parametrize("fn", [scan, ref])
def test_positive_A_warns(fn):
    t = base()
    with pytest.warns(RuntimeWarning, match="A has positive entries"):
        fn(t["u"], t["delta"], -t["A"], t["B"], t["C"], tile_size=4)


@pytest.mark.parametrize("fn", [scan, ref])
def test_overflow_is_detected(fn):
    t = base()
    with pytest.warns(RuntimeWarning, match="A has positive entries"), pytest.raises(ValueError, match="overflowed"):
        fn(t["u"], t["delta"].abs() + 1.0, 60.0 + t["A"].abs(), t["B"], t["C"], tile_size=4)


def test_mixed_devices_named():
    t = base()
    with pytest.raises(ValueError, match="A is on meta"):
        scan(t["u"], t["delta"], t["A"].to("meta"), t["B"], t["C"], tile_size=4)


def test_build_name_digests_headers(monkeypatch, tmp_path):
    """A header edit changes the extension's cache name: the kernel is rebuilt, never loaded stale."""
    for f in _build.KERNEL_DIR.iterdir():
        if f.suffix in (".cpp", ".h"):
            (tmp_path / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(_build, "KERNEL_DIR", tmp_path)
    before = _build._digest(["scan_cpu.cpp"])
    (tmp_path / "simd.h").write_text((tmp_path / "simd.h").read_text() + "\n// edited\n")
    assert _build._digest(["scan_cpu.cpp"]) != before
