"""The layers' own plan against the plans of the predictive and implicit-attention densities (issue 17, item 4).

References: :func:`tiling.train.text.evaluate_bytes` (the bpb of the model as it is), the policy
itself (a density spike in one tile must raise the next tile's resolution under the causal
adaptive policy), and a change of a later byte (no plan entry of an earlier tile may move).
"""
import pytest
import torch

from tiling.train.text import evaluate_bytes
from tiling.train.textmodel import build_model, model_config
from tiling.workflows.plans import DENSITY_POLICY, bits_per_byte, causal_token_density, compare_plans

T = 8


def _lm(configuration: str, budget: float = 0.35, ends: tuple = ()):
    torch.manual_seed(0)
    lm = build_model(model_config(configuration, budget, d_model=16, n_layers=3, tile_size=T,
                                  full_resolution_layers=ends))
    return lm.eval()


def _text(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (1, n), generator=g, dtype=torch.int64)


def _densities(lm, n: int, spike_tile: int | None = None):
    base = torch.full((n - 1,), 0.01, dtype=torch.float64)
    if spike_tile is not None:
        base[spike_tile * T - 1:(spike_tile + 1) * T - 1] = 5.0  # positions spike_tile*T .. (+T-1)
    return base, {k: base.clone() for k in lm.tiled_layers}


def test_causal_token_density_aligns_transitions_with_the_later_token():
    out = causal_token_density(torch.tensor([1.0, 2.0, 3.0]), "x")
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0] and out.dtype == torch.float64
    with pytest.raises(ValueError, match="x must be non-negative"):
        causal_token_density(torch.tensor([1.0, -2.0]), "x")
    with pytest.raises(ValueError, match="x"):
        causal_token_density(torch.tensor([1.0, float("nan")]), "x")


@pytest.mark.parametrize("configuration", ["adaptive", "uniform", "router"])
def test_chosen_plan_bpb_is_what_evaluate_reports(configuration):
    lm = _lm(configuration, ends=(0,))
    ids = _text(64)
    pred, impl = _densities(lm, 64)
    res = compare_plans(lm, ids, predictive=pred, implicit=impl, budget=0.35)
    ref = evaluate_bytes(lm, bytes(ids[0].tolist()), context=64, budget=0.35)
    assert res["chosen"]["bpb"] == pytest.approx(ref["bpb"], rel=1e-9)
    assert res["chosen"]["mean_resolution"] == pytest.approx(ref["mean_resolution"], rel=1e-9)
    assert res["tiled_layers"] == [1, 2] and set(res["chosen"]["resolution"]) == {"1", "2"}
    assert res["density_policy"] == DENSITY_POLICY


def test_bits_per_byte_against_a_hand_computed_value():
    logits = torch.zeros(1, 2, 4)  # the logits of the inputs ids[:, :-1]
    logits[0, 0, 2] = 10.0  # p(x_1 = 2) close to 1
    ids = torch.tensor([[0, 2, 1]])
    p1 = torch.softmax(logits[0, 0].double(), -1)[2]
    expected = (-torch.log2(p1) + torch.log2(torch.tensor(4.0, dtype=torch.float64))) / 2
    assert bits_per_byte(logits, ids) == pytest.approx(float(expected), rel=1e-12)


def test_a_density_spike_raises_the_next_tiles_resolution():
    lm = _lm("uniform")  # the layers' own plan is flat: only the external density can shape the twin's
    n = 8 * T
    pred, impl = _densities(lm, n, spike_tile=3)
    res = compare_plans(lm, _text(n), predictive=pred, implicit=impl, budget=0.35)
    assert res["chosen"]["mean_resolution"] == pytest.approx(0.35, abs=1 / T)
    for key in ("predictive", "implicit"):
        r = res[key]["resolution"]["1"]
        assert r[4] == max(r) and r[4] > r[2]  # tile 4 is predicted from tile 3, where the density is
        assert res[key]["mean_resolution"] == pytest.approx(0.35, abs=0.15)


def test_a_later_byte_moves_no_earlier_plan_entry():
    lm = _lm("adaptive")
    n = 6 * T
    ids = _text(n)
    pred, impl = _densities(lm, n)
    pred = pred + torch.linspace(0, 1, n - 1, dtype=torch.float64)
    a = compare_plans(lm, ids, predictive=pred, implicit=impl, budget=0.35)
    ids2 = ids.clone()
    ids2[0, 5 * T + 2] = (ids2[0, 5 * T + 2] + 1) % 256
    pred2 = pred.clone()
    pred2[5 * T + 1:] += 3.0  # the densities from byte 5T+2 on change too
    b = compare_plans(lm, ids2, predictive=pred2, implicit=impl, budget=0.35)
    for key in ("chosen", "predictive", "implicit"):
        for k in ("0", "1", "2"):
            assert a[key]["resolution"][k][:6] == b[key]["resolution"][k][:6]  # tiles 0..5 read tiles < 6


def test_bad_input_names_the_argument():
    lm = _lm("adaptive")
    ids = _text(32)
    pred, impl = _densities(lm, 32)
    with pytest.raises(ValueError, match="predictive must have shape"):
        compare_plans(lm, ids, predictive=pred[:-1], implicit=impl)
    with pytest.raises(ValueError, match="missing"):
        compare_plans(lm, ids, predictive=pred, implicit={})
    with pytest.raises(ValueError, match="budget"):
        compare_plans(lm, ids, predictive=pred, implicit=impl, budget=1.5)
    with pytest.raises(ValueError, match="ids"):
        compare_plans(lm, ids[:, :1], predictive=pred[:0], implicit=impl)
    with pytest.raises(ValueError, match="no tiled layer"):
        compare_plans(_lm("adaptive", ends=(0, 1, 2)), ids, predictive=pred, implicit={})
