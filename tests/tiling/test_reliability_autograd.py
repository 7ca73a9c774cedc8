"""Second-order gradients through the adaptive scan (issue 16, finding 1): exact on every path.

The fused kernels' backward is not differentiable; under ``create_graph=True`` the op recomputes
its backward through the float64 reference, so a gradient penalty or a Hessian-vector product is
the reference's own. ``gradgradcheck`` (finite differences of the backward) checks the reference.
"""
import pytest
import torch

from reference.scan_inputs import OPTIONAL, make
from tiling import _build
from tiling.config import TilingConfig
from tiling.modules import TiledMamba
from tiling.ops import adaptive_selective_scan as scan
from tiling.ops import adaptive_selective_scan_ref as ref

f64 = torch.float64
needs_kernel = pytest.mark.skipif(_build.load_cpu_extension() is None, reason="the C++ CPU kernel could not be built")
NAMES = ("u", "delta", "A", "B", "C") + OPTIONAL


def call(fn, t, kw, softplus):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], softplus,
              boundary_gain=t["boundary_gain"], initial_state=t["initial_state"], return_tile_states=True, **kw)


def leaves(t):
    return {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in t.items()}


def gradient_penalty(fn, t, kw, softplus):
    """The issue's case: gu = ∂(Σy)/∂u with create_graph, then ∂(Σy + Σgu² + Σ last²)/∂(every input)."""
    x = leaves(t)
    y, last, tiles = call(fn, x, kw, softplus)
    (gu,) = torch.autograd.grad(y.sum() + tiles.sum(), x["u"], create_graph=True)
    loss = y.sum() + (gu ** 2).sum() + (last ** 2).sum()
    wrt = [x[k] for k in NAMES if x[k] is not None]
    return torch.autograd.grad(loss, wrt)


@needs_kernel
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("present, softplus", [((), False), (OPTIONAL, True), (("z", "boundary_gain"), True)])
def test_gradient_penalty_through_the_kernel_equals_the_reference(grouped, present, softplus):
    t, kw = make(2, 4, 11, 3, 2 if grouped else None, 4, seed=5, present=present)
    if not softplus:
        t["delta"] = t["delta"].abs()
    fast = gradient_penalty(scan, t, kw, softplus)
    slow = gradient_penalty(ref, t, kw, softplus)
    for name, a, b in zip([k for k in NAMES if t[k] is not None], fast, slow):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    # the penalty is not zero: without it the two sides would differ by ∂Σgu²/∂input (the bug)
    x = leaves(t)
    y = call(ref, x, kw, softplus)[0]
    (plain,) = torch.autograd.grad(y.sum(), x["delta"])
    assert float((fast[1] - plain).abs().max()) > 1e-3


@needs_kernel
def test_hessian_vector_product_through_the_kernel_equals_the_reference():
    """v requiring grad (the Hessian-vector product of the old test that expected a refusal)."""
    t, kw = make(1, 3, 8, 2, None, 4, seed=0, present=())
    out = []
    for fn in (scan, ref):
        x = leaves(t)
        y = fn(x["u"], x["delta"], x["A"], x["B"], x["C"], **kw)
        v = torch.ones_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, x["u"], v, create_graph=True)
        out.append(torch.autograd.grad((g ** 2).sum(), [x["delta"], x["B"], v]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@needs_kernel
def test_inputs_that_depend_on_each_other():
    """delta, B, C computed from u (as in Mamba): the double backward takes partial derivatives."""
    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(1, 3, 10, generator=g, dtype=f64)
    w = torch.randn(2, 3, generator=g, dtype=f64)
    A = -torch.rand(3, 2, generator=g, dtype=f64) - 0.2
    out = []
    for fn in (scan, ref):
        x = x0.clone().requires_grad_()
        delta = torch.nn.functional.softplus(0.5 * x)
        B = torch.einsum("nd,bdl->bnl", w, x)
        y, tiles = fn(x, delta, A, B, B.flip(-1), tile_size=4, resolution=0.6, return_tile_states=True)[::2]
        (gx,) = torch.autograd.grad((y ** 2).sum() + tiles.sum(), x, create_graph=True)
        out.append(torch.autograd.grad((gx ** 2).sum(), x)[0])
    torch.testing.assert_close(out[0], out[1], rtol=1e-10, atol=1e-12)


@needs_kernel
def test_float32_gradient_penalty_is_close_to_the_float64_reference():
    t, kw = make(1, 3, 9, 2, None, 4, seed=2, present=("D", "z"))
    t32 = {k: (v.float() if v is not None else None) for k, v in t.items()}
    fast = gradient_penalty(scan, t32, dict(kw, resolution=kw["resolution"].float()), True)
    slow = gradient_penalty(ref, t, kw, True)
    for a, b in zip(fast, slow):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("present", [(), OPTIONAL])
def test_reference_gradgradcheck(present):
    """Finite differences of the reference's backward agree with its double backward."""
    t, kw = make(1, 2, 6, 2, None, 3, seed=3, present=present)
    names = [k for k in NAMES if t[k] is not None]
    x = leaves(t)

    def f(*args):
        d = dict(zip(names, args))
        full = {k: d.get(k) for k in NAMES}
        y, last, _ = call(ref, full, kw, True)
        return y, last

    assert torch.autograd.gradgradcheck(f, [x[k] for k in names], eps=1e-6, atol=1e-5, rtol=1e-4)


@needs_kernel
def test_op_gradgradcheck_on_the_kernel_path():
    """The op (kernel forward, kernel backward, reference double backward) passes gradgradcheck."""
    t, kw = make(1, 2, 7, 2, None, 3, seed=4, present=("D", "z", "initial_state"))
    names = [k for k in NAMES if t[k] is not None]
    x = leaves(t)

    def f(*args):
        d = dict(zip(names, args))
        y, last, _ = call(scan, {k: d.get(k) for k in NAMES}, kw, True)
        return y, last

    assert torch.autograd.gradcheck(f, [x[k] for k in names], eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradgradcheck(f, [x[k] for k in names], eps=1e-6, atol=1e-5, rtol=1e-4)


@needs_kernel
def test_float32_plan_dtype_keeps_the_kernels_segment_counts():
    """A float32 resolution with float64 inputs: the double backward uses the same segment counts
    as the forward (R = 0.3 in float32 is 0.30000001; counted in float64 it would add a segment)."""
    t, kw = make(1, 2, 10, 2, None, 10, seed=1, present=())
    kw = dict(kw, resolution=torch.full((1, 1), 0.3, dtype=torch.float32))
    fast = gradient_penalty(scan, t, kw, True)
    slow = gradient_penalty(ref, t, kw, True)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("scope", ["scan", "block"])
def test_tiled_mamba_double_backward_matches_the_reference_scan(scope, monkeypatch):
    """TiledMamba's gradient penalty with the kernels equals the one computed with the reference scan."""
    torch.manual_seed(0)
    # eval: no calibration update
    layer = TiledMamba(8, d_state=3, tiling=TilingConfig(tile_size=4, budget=0.5, scope=scope)).double().eval()
    x0 = torch.randn(1, 13, 8, dtype=f64)

    def penalty():
        x = x0.clone().requires_grad_()
        y = layer(x)
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return torch.autograd.grad((gx ** 2).sum(), [x, layer.A_log, layer.in_proj.weight])

    fast = penalty()
    import tiling.ops.scan as scan_mod

    calls = []
    monkeypatch.setattr(scan_mod, "_extension", lambda device, n_state: calls.append(device))  # None: the reference
    slow = penalty()
    assert calls  # the layer did call the op (both scopes scan)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_torch_func_grad_of_grad_uses_the_reference():
    """torch.func transforms cannot see into the kernels; the op hands them the reference, exactly."""
    t, kw = make(1, 3, 8, 2, None, 4, seed=6, present=())
    out = []
    for fn in (scan, ref):
        def penalty(delta, fn=fn):
            inner = torch.func.grad(lambda u: fn(u, delta, t["A"], t["B"], t["C"], **kw).sum())
            return (inner(t["u"]) ** 2).sum()

        out.append(torch.func.grad(penalty)(t["delta"].abs()))
    torch.testing.assert_close(out[0], out[1], rtol=1e-12, atol=1e-14)
    assert float(out[0].abs().max()) > 1e-3
