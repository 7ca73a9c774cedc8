"""scan_cost: exact counts, checked against closed forms and against the reference's own exp calls."""
import pytest
import torch

import tiling.ops.reference as reference_module
from tiling.ops import adaptive_selective_scan_ref, scan_cost


def test_full_resolution_closed_form():
    L, T, N, dim = 2048, 64, 16, 1536
    c = scan_cost(L, T, None, None, N, dim)
    assert c["segments"] == L
    assert c["exp_recurrence"] == dim * L * N
    assert c["madd_recurrence"] == 3 * dim * L * N
    assert c["madd_readout"] == dim * L * (N + 1)
    assert c["madd_input"] == 2 * dim * L  # no segment longer than one token
    assert c["exp_boundary"] == 0 and c["exp_total"] == c["exp_recurrence"]


@pytest.mark.parametrize("R", [0.5, 0.25, 0.125, 1 / 64])
def test_recurrence_falls_in_proportion_to_resolution(R):
    full = scan_cost(4096, 64, 1.0, None, 16, 256)
    part = scan_cost(4096, 64, R, None, 16, 256)
    assert part["exp_recurrence"] * 1.0 == pytest.approx(R * full["exp_recurrence"], rel=0, abs=0)
    assert part["madd_recurrence"] * 1.0 == pytest.approx(R * full["madd_recurrence"], rel=0, abs=0)
    assert part["segments"] == R * full["segments"]
    assert part["madd_readout"] == full["madd_readout"]  # the full-length read-out does not shrink


def test_state_dims_and_ragged_tiles():
    # L = 70, T = 32: tiles of 32, 32, 6; R = (1, .25, .5) → m = (32, 8, 3); S = (4, 2, 1), N = 4
    R = torch.tensor([1.0, 0.25, 0.5])
    S = torch.tensor([4, 2, 1])
    c = scan_cost(70, 32, R, S, 4, 3)
    assert c["segments"] == 43
    assert c["exp_recurrence"] == 3 * (32 * 4 + 8 * 2 + 2 + 3 * 1 + 3)
    assert c["madd_recurrence"] == 3 * (3 * (32 * 4 + 8 * 2 + 3 * 1) + 2 * (2 + 3))
    # B̄ once per group for all N = 4 components: tile 2 has 8 segments of 4 tokens (32 tokens + 8
    # scalings), tile 3 has 6 tokens in 3 segments of 2
    assert c["madd_input"] == 3 * 2 * 70 + 4 * ((32 + 8) + (6 + 3))
    assert scan_cost(70, 32, R, S, 4, 3, groups=3)["madd_input"] == 3 * 2 * 70 + 3 * 4 * ((32 + 8) + (6 + 3))
    assert c["madd_readout"] == 3 * (32 * 5 + 32 * 3 + 6 * 2)


@pytest.mark.parametrize("gain", [False, True])
def test_exponentials_equal_those_the_reference_evaluates(monkeypatch, gain):
    """Count every element the float64 reference passes to torch.exp: it is exp_total."""
    g = torch.Generator().manual_seed(0)
    batch, dim, L, N, T = 2, 3, 45, 5, 8
    nt = -(-L // T)
    R = torch.rand(batch, nt, generator=g, dtype=torch.float64) * 0.9 + 0.1
    S = torch.randint(1, N + 1, (batch, nt), generator=g)
    count = [0]
    real_exp = torch.exp

    def counting_exp(x, *a, **k):
        count[0] += x.numel()
        return real_exp(x, *a, **k)

    monkeypatch.setattr(reference_module.torch, "exp", counting_exp)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    adaptive_selective_scan_ref(r(batch, dim, L), r(batch, dim, L), -torch.rand(dim, N, dtype=torch.float64),
                                r(batch, N, L), r(batch, N, L), tile_size=T, resolution=R, state_dims=S,
                                boundary_gain=r(dim, N) if gain else None)
    monkeypatch.undo()
    expect = sum(scan_cost(L, T, R[b], S[b], N, dim, boundary_gain=gain)["exp_total"] for b in range(batch))
    assert count[0] == expect
    assert scan_cost(L, T, R, S, N, dim, boundary_gain=gain)["exp_total"] == expect


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(L=0), ValueError, "L must be >= 1"),
        (dict(tile_size=0), ValueError, "tile_size must be >= 1"),
        (dict(resolution=1.5), ValueError, r"resolution must lie in \(0, 1\]"),
        (dict(resolution=torch.ones(3)), ValueError, "resolution must be a scalar or have shape"),
        (dict(state_dims=17), ValueError, r"state_dims must lie in \[1, N\]"),
        (dict(N=0), ValueError, "N must be >= 1"),
        (dict(dim=1.5), TypeError, "dim must be an int"),
    ],
)
def test_bad_input(kw, exc, match):
    args = dict(L=128, tile_size=64, resolution=None, state_dims=None, N=16, dim=8)
    args.update(kw)
    with pytest.raises(exc, match=match):
        scan_cost(**args)
