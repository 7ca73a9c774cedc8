"""The float64 reference of the adaptive scan against Mamba's equations and closed forms."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from reference.mamba_sequential import mamba_scan_sequential
from tiling.ops import adaptive_selective_scan_ref as ref
from tiling.ops import segment_counts, tile_lengths

f64 = torch.float64


def make(batch=2, dim=6, L=23, N=4, G=None, seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    Bs = (batch, N, L) if G is None else (batch, G, N, L)
    return dict(u=r(batch, dim, L), delta=0.5 * r(batch, dim, L), A=-torch.rand(dim, N, generator=g, dtype=dtype) - 0.2,
                B=r(*Bs), C=r(*Bs), D=r(dim), z=r(batch, dim, L), delta_bias=0.3 * r(dim),
                boundary_gain=0.5 * r(dim, N), initial_state=r(batch, dim, N))


@pytest.mark.parametrize("G", [None, 2])
@pytest.mark.parametrize("optional", [(), ("D",), ("z", "delta_bias"), ("D", "z", "delta_bias", "initial_state")])
@pytest.mark.parametrize("softplus", [False, True])
def test_resolution_one_is_sequential_mamba(G, optional, softplus):
    a = make(G=G)
    if not softplus:
        a["delta"] = a["delta"].abs()
    kw = {k: a[k] for k in optional}
    y, last = ref(a["u"], a["delta"], a["A"], a["B"], a["C"], delta_softplus=softplus, tile_size=8,
                  return_last_state=True, **kw)
    y_seq, h_seq = mamba_scan_sequential(a["u"], a["delta"], a["A"], a["B"], a["C"], delta_softplus=softplus, **kw)
    torch.testing.assert_close(y, y_seq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, h_seq, rtol=1e-12, atol=1e-12)


def test_single_segment_tile_closed_form():
    """m = 1 (R·n ≤ 1): every token reads the entering state; the tile is one step with ΣΔ, ΣΔu, mean B."""
    a = make(batch=1, dim=3, L=5, N=2)
    dt = torch.nn.functional.softplus(a["delta"] + a["delta_bias"][:, None])
    y, last = ref(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], None, a["delta_bias"], True, tile_size=5,
                  resolution=torch.tensor([[0.2]], dtype=f64), initial_state=a["initial_state"], return_last_state=True)
    h0 = a["initial_state"][0]
    y_exp = torch.einsum("dn,nt->dt", h0, a["C"][0]) + a["D"][:, None] * a["u"][0]
    torch.testing.assert_close(y[0], y_exp, rtol=1e-12, atol=1e-12)
    U = (dt[0] * a["u"][0]).sum(-1)
    h1 = torch.exp(dt[0].sum(-1)[:, None] * a["A"]) * h0 + U[:, None] * a["B"][0].mean(-1)[None, :]
    torch.testing.assert_close(last[0], h1, rtol=1e-12, atol=1e-12)


@given(R=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
@settings(max_examples=15)
def test_decay_is_resolution_independent(R, seed):
    """Without input (B = 0) the state decays by exp(A·ΣΔ) whatever the resolution and state dims."""
    a = make(batch=1, dim=3, L=19, N=3, seed=seed)
    S = torch.randint(1, 4, (1, 3), generator=torch.Generator().manual_seed(seed))
    dt = torch.nn.functional.softplus(a["delta"])
    _, last = ref(a["u"], a["delta"], a["A"], torch.zeros_like(a["B"]), a["C"], delta_softplus=True, tile_size=8,
                  resolution=torch.full((1, 3), R, dtype=f64), state_dims=S, initial_state=a["initial_state"],
                  return_last_state=True)
    expect = a["initial_state"][0] * torch.exp(a["A"] * dt[0].sum(-1)[:, None])
    torch.testing.assert_close(last[0], expect, rtol=1e-12, atol=1e-14)


def test_inactive_state_dims_receive_nothing_and_are_not_read():
    a = make(batch=1, dim=4, L=16, N=5)
    S = torch.tensor([[2, 2]])
    y, last = ref(a["u"], a["delta"], a["A"], a["B"], a["C"], delta_softplus=True, tile_size=8, state_dims=S,
                  initial_state=a["initial_state"], return_last_state=True)
    # the first two components equal a scan with N = 2; the others only decay
    y2, last2 = ref(a["u"], a["delta"], a["A"][:, :2], a["B"][:, :2], a["C"][:, :2], delta_softplus=True, tile_size=8,
                    initial_state=a["initial_state"][:, :, :2], return_last_state=True)
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last[:, :, :2], last2, rtol=1e-12, atol=1e-12)
    dt = torch.nn.functional.softplus(a["delta"])
    torch.testing.assert_close(last[0, :, 2:], a["initial_state"][0, :, 2:] * torch.exp(a["A"][:, 2:] * dt[0].sum(-1)[:, None]))


def test_boundary_gain_closed_form_and_identity():
    a = make(batch=1, dim=3, L=8, N=2)
    zeroB = torch.zeros_like(a["B"])
    R = torch.tensor([[1.0, 0.5]], dtype=f64)
    _, last = ref(a["u"], a["delta"], a["A"], zeroB, a["C"], delta_softplus=True, tile_size=4, resolution=R,
                  boundary_gain=a["boundary_gain"], initial_state=a["initial_state"], return_last_state=True)
    dt = torch.nn.functional.softplus(a["delta"])
    expect = a["initial_state"][0] * torch.exp(a["A"] * dt[0].sum(-1)[:, None] + a["boundary_gain"] * (0.5 - 1.0))
    torch.testing.assert_close(last[0], expect, rtol=1e-12, atol=1e-14)
    same = torch.full((1, 2), 0.5, dtype=f64)
    y_gain = ref(a["u"], a["delta"], a["A"], a["B"], a["C"], tile_size=4, resolution=same, boundary_gain=a["boundary_gain"])
    y_none = ref(a["u"], a["delta"], a["A"], a["B"], a["C"], tile_size=4, resolution=same)
    torch.testing.assert_close(y_gain, y_none, rtol=0, atol=0)


@pytest.mark.parametrize("L1", [8, 16])
def test_chaining_equals_one_scan(L1):
    a = make(batch=2, dim=4, L=29, N=3)
    T = 8
    nt = -(-29 // T)
    R = torch.rand(2, nt, generator=torch.Generator().manual_seed(3), dtype=f64) * 0.9 + 0.1
    S = torch.randint(1, 4, (2, nt), generator=torch.Generator().manual_seed(4))
    full, last = ref(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], True, tile_size=T,
                     resolution=R, state_dims=S, initial_state=a["initial_state"], return_last_state=True)
    k = L1 // T
    cut = lambda t, s: t[..., s]  # noqa: E731
    y1, h1 = ref(cut(a["u"], slice(0, L1)), cut(a["delta"], slice(0, L1)), a["A"], cut(a["B"], slice(0, L1)),
                 cut(a["C"], slice(0, L1)), a["D"], cut(a["z"], slice(0, L1)), a["delta_bias"], True, tile_size=T,
                 resolution=R[:, :k], state_dims=S[:, :k], initial_state=a["initial_state"], return_last_state=True)
    y2, h2 = ref(cut(a["u"], slice(L1, None)), cut(a["delta"], slice(L1, None)), a["A"], cut(a["B"], slice(L1, None)),
                 cut(a["C"], slice(L1, None)), a["D"], cut(a["z"], slice(L1, None)), a["delta_bias"], True, tile_size=T,
                 resolution=R[:, k:], state_dims=S[:, k:], initial_state=h1, return_last_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, last, rtol=1e-12, atol=1e-12)


def test_segment_counts_and_tile_lengths():
    lengths = tile_lengths(70, 32)
    assert lengths.tolist() == [32, 32, 6]
    R = torch.tensor([[1.0, 0.25, 0.5], [0.01, 0.3, 0.34]])
    m = segment_counts(R, lengths)
    assert m.tolist() == [[32, 8, 3], [1, 10, 3]]  # float32 0.3·32 = 9.6 → 10; 0.34·6 = 2.04 → 3
    assert segment_counts(torch.tensor([0.3], dtype=torch.float32), torch.tensor([10])).item() == 3
    assert segment_counts(torch.tensor([0.3000001], dtype=f64), torch.tensor([10])).item() == 4


def test_reference_returns_tile_states_consistent_with_chunks():
    a = make(batch=1, dim=3, L=12, N=2)
    y, last, tiles = ref(a["u"], a["delta"], a["A"], a["B"], a["C"], tile_size=4, resolution=0.5,
                         return_tile_states=True)
    assert tiles.shape == (1, 3, 3, 2)
    torch.testing.assert_close(tiles[:, :, -1], last)
    _, h8 = ref(a["u"][..., :8], a["delta"][..., :8], a["A"], a["B"][..., :8], a["C"][..., :8], tile_size=4,
                resolution=0.5, return_last_state=True)
    torch.testing.assert_close(tiles[:, :, 1], h8)
    assert math.isfinite(float(y.sum()))
