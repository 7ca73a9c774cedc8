"""Tests of ``infogeo verify`` (tiling/workflows/verify/): the key number behind every verdict.

One quick end-to-end run (module fixture, ≤ 1 min) provides the numbers; each test asserts the
number a verdict rests on, so that a regression in any module it exercises (fisher, density,
graph, geodesic, laplacian, flow, tiling.metrics, tiling.ops, tiling.policy) flips a test. The
verdict rules themselves (each theorem's ``decide``) are tested on hand-made numbers on both
sides of the rule.
Independent references: closed-form Fisher–Rao distances, the sequential float64 Mamba scan
of ``tests/reference/mamba_sequential.py``, exact power laws, hand-computed literal metrics.
"""
import json
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiling.workflows import verify as V
from tiling.workflows.verify import (common, complexity, flow_convergence, geodesics, ifq_bounds, preservation,
                                     special_cases)
from tiling.workflows.verify.result import (FALSE_AS_WRITTEN, HOLDS, HOLDS_UNDER_CONDITIONS, Measured,
                                            TheoremResult, jsonable)
from infogeo.density import path_length
from infogeo.fisher import categorical_distance, normal_distance

F64 = torch.float64


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    t0, c0 = time.perf_counter(), time.process_time()
    res = V.run_verify(out, quick=True, seed=0, progress=False)
    return out, res, (time.perf_counter() - t0, time.process_time() - c0)


# ---------------------------------------------------------------------------- end to end
def test_quick_run_writes_report_within_a_minute(quick):
    out, res, (_wall, cpu) = quick
    # The budget is one minute on two cores, in CPU time: what this process used, robust to other jobs
    # sharing the machine. No wall-clock guard: beside a training sweep the same run took 276 s of wall
    # time (issue 27: no flaky tests; speed is measured by scripts, not by timed tests).
    assert cpu <= 60.0, f"--quick used {cpu:.1f} s of CPU"
    md = (out / "theorems.md").read_text(encoding="utf-8")
    assert md.startswith("<!-- GENERATED FILE")
    assert "infogeo verify --quick" in md
    for tid in ("3.1", "3.2", "3.3", "3.4", "3.5", "3.6"):
        r = res["theorems"][tid]
        assert r["verdict"] in ("holds", "holds under stated conditions", "false as written")
        assert f"**Verdict: {r['verdict']}.**" in md
        for fig in r["figures"]:
            assert (out / fig).is_file() and (out / fig).stat().st_size > 5000, fig
            assert f"]({fig})" in md
    data = json.loads((out / "theorems.json").read_text(encoding="utf-8"))  # strict JSON: no NaN
    assert set(data["theorems"]) == {"3.1", "3.2", "3.3", "3.4", "3.5", "3.6"}
    assert data["meta"]["seed"] == 0 and data["meta"]["quick"] is True


def test_verdicts_of_the_quick_run(quick):
    _, res, _ = quick
    v = {k: r["verdict"] for k, r in res["theorems"].items()}
    assert v == {"3.1": "holds under stated conditions", "3.2": "holds under stated conditions",
                 "3.3": "false as written", "3.4": "false as written", "3.5": "false as written", "3.6": "holds"}


def test_deterministic_under_seed(quick):
    _, res, _ = quick
    again = ifq_bounds.measure(True, 0).numbers
    assert again["normalised"]["min"] == res["theorems"]["3.3"]["normalised"]["min"]
    assert again["counterexamples"]["IFQ < 0"]["tile"] == res["theorems"]["3.3"]["counterexamples"]["IFQ < 0"]["tile"]
    other = ifq_bounds.measure(True, 1).numbers
    assert other["normalised"]["min"] != res["theorems"]["3.3"]["normalised"]["min"]
    # to the last digit: no hidden randomness (e.g. ARPACK's random start vector)
    assert flow_convergence.measure(True, 0).numbers["summary"] == res["theorems"]["3.2"]["summary"]


def test_verdicts_are_decided_from_the_recorded_numbers(quick):
    _, res, _ = quick
    for mod in V.THEOREMS:
        r = TheoremResult.from_dict(res["theorems"][mod.ID])
        assert mod.decide(r.numbers) == r.verdict, mod.ID
    assert [m.ID for m in V.THEOREMS] == list(res["theorems"])


# ---------------------------------------------------------------------------- Theorem 3.1
def test_31_graph_geodesics_converge_only_with_growing_k(quick):
    a = quick[1]["theorems"]["3.1"]["parts"]["a"]["results"]
    for fam in ("normal", "categorical"):
        grow = a[f"{fam} / k = ⌈2√n⌉"]["fit"]
        fixed = a[f"{fam} / k = 10"]["fit"]
        assert grow["exponent"] < -0.4, grow  # converges (3 sizes in the quick run: the CI is wide)
        assert fixed["exponent"] > -0.3, fixed  # fixed degree: the error settles
        errs = [e["mean"] for e in a[f"{fam} / k = ⌈2√n⌉"]["errors"]]
        assert errs[-1] < errs[0] and errs[-1] < 0.03
        assert all(e["min"] >= -0.02 for e in a[f"{fam} / k = ⌈2√n⌉"]["errors"])  # graph paths are not shorter


def test_31_geodesics_minimise_length(quick):
    b = quick[1]["theorems"]["3.1"]["parts"]["b"]
    for fam in ("normal", "categorical"):
        for eps, q in b["closed_form"][fam].items():
            assert q["shorter_beyond_rule_error"] == 0, (fam, eps)
        # the excess length grows like ε² (second variation), within an order of magnitude
        med = [b["closed_form"][fam][str(e)]["median"] for e in b["epsilons"]]
        assert 30 < med[1] / med[0] < 300 and 30 < med[2] / med[1] < 300
    assert b["discretisation_error"]["max"] < 1e-3


def test_31_attention_rows_ratio(quick):
    c = quick[1]["theorems"]["3.1"]["parts"]["c"]
    assert c["ratio"]["min"] >= 1.0 - 1e-9  # exact Fisher–Rao edges: the triangle inequality
    assert 1.0 < c["ratio"]["median"] < 3.0


def test_closed_form_geodesic_curves_have_the_closed_form_length():
    t = torch.linspace(0, 1, 2049, dtype=F64)
    a, b = torch.tensor([-1.0, 0.5], dtype=F64), torch.tensor([2.0, 1.7], dtype=F64)
    L = float(path_length(geodesics.normal_geodesic(a, b, t), geodesics.normal_field))
    assert L == pytest.approx(float(normal_distance(a[0], a[1], b[0], b[1])), rel=1e-6)
    v = torch.tensor([0.3, 1.2], dtype=F64)  # vertical geodesic (equal means)
    w = torch.tensor([0.3, 0.2], dtype=F64)
    L = float(path_length(geodesics.normal_geodesic(v, w, t), geodesics.normal_field))
    assert L == pytest.approx(math.sqrt(2) * math.log(6), rel=1e-6)  # √2·|log(σ₁/σ₂)|
    p, q = torch.tensor([0.7, 0.2, 0.1], dtype=F64), torch.tensor([0.05, 0.15, 0.8], dtype=F64)
    curve = geodesics.categorical_geodesic(p, q, t)
    assert torch.allclose(curve[0], p) and torch.allclose(curve[-1], q)
    L = float(path_length(curve, geodesics.categorical_field))
    assert L == pytest.approx(float(categorical_distance(p, q)), rel=1e-5)


# ---------------------------------------------------------------------------- Theorem 3.2
def test_32_energy_never_rises_under_the_bound_and_reaches_the_minimum(quick):
    s = quick[1]["theorems"]["3.2"]["summary"]
    assert s["monotone"] == s["runs"] and s["converged"] == s["runs"]
    assert s["worst_relative_rise"] <= 1e-13
    assert s["worst_F_gap"] < 1e-9 and s["worst_R_gap"] < 1e-4  # vs scipy L-BFGS-B
    assert s["smoother_than_argmin_E"] == s["runs"]


def test_32_a_step_over_the_bound_breaks_monotonicity(quick):
    over = quick[1]["theorems"]["3.2"]["over_bound"]
    assert all(o["refused"] for o in over)  # the flow's guard
    assert all(o["over_rises"] > 0 for o in over)
    assert all(o["under_rises"] == 0 for o in over)
    assert all(o["L_true"] <= o["L_bound"] * (1 + 1e-9) for o in over)


# ---------------------------------------------------------------------------- Theorem 3.3
# Counterexamples found by hypothesis (shrunk) while this instrument was built; weights ¼ each.
_IFQ_NEGATIVE = {"A_t": [[0.0, 0.0], [0.0, 0.25]], "A_prev": [[0.0, 0.0], [0.0, 1.0]],
                 "P": [[0.5, 0.5], [0.5, 0.5]], "grad_sq": 0.0, "state_dim": 1}
_IFQ_ABOVE_ONE = {"A_t": [[0.0, 0.0], [0.0, 1.0]], "A_prev": [[0.0, 0.0], [0.0, 0.0]],
                  "P": [[0.5, 0.5], [0.5, 0.5]], "grad_sq": 3.0, "state_dim": 1}


def test_33_literal_counterexamples_still_break_the_bound():
    neg = ifq_bounds.literal_tile_ifq(_IFQ_NEGATIVE)
    # by hand: PS = 1 − ‖(0.75)‖/0.25 = −2; EU = mean over 3 edge entries / mean over 4 = 4/3
    assert neg["PS"] == pytest.approx(-2.0) and neg["EU"] == pytest.approx(4 / 3)
    assert neg["IFQ"] == pytest.approx(-1 / 6) and neg["IFQ"] < 0
    high = ifq_bounds.literal_tile_ifq(_IFQ_ABOVE_ONE)
    assert high["IFQ"] == pytest.approx((0 + 0 + 4 / 3 + 3) / 4) and high["IFQ"] > 1


def test_33_quick_run_finds_literal_counterexamples_and_normalised_bound_holds(quick):
    r = quick[1]["theorems"]["3.3"]
    assert r["counterexamples"]["IFQ < 0"]["terms"]["IFQ"] < 0
    assert r["counterexamples"]["IFQ > 1"]["terms"]["IFQ"] > 1
    assert r["ctf_unbounded"][-1][1] > 10  # literal CTF grows like log(1/x)
    n = r["normalised"]
    assert n["violations"] == 0 and 0.0 <= n["min"] and n["max"] <= 1.0
    assert n["hypothesis"]["violations"] == 0 and n["hypothesis"]["examples"] > 0
    assert all(row[-1] < 1.0 for row in r["ifq_one"][:-1])  # IFQ = 1 is a limit, not attained


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=8, max_size=8), st.floats(0.01, 0.99),
       st.floats(0.01, 0.99), st.floats(0, 1e6))
def test_33_normalised_ifq_in_unit_interval(vals, a, b, g2):
    from tiling import metrics as M

    At = torch.tensor(vals[:4], dtype=F64).view(2, 2)
    Ap = torch.tensor(vals[4:], dtype=F64).view(2, 2)
    P = torch.tensor([[a, 1 - a], [b, 1 - b]], dtype=F64)
    W = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
    q = float(M.ifq(M.pattern_stability(At, Ap), M.cross_tile_flow(P, W)[0], M.edge_utilization(At),
                    M.information_density(torch.tensor(g2, dtype=F64), 2)))
    assert 0.0 <= q <= 1.0


# ---------------------------------------------------------------------------- Theorem 3.4
def test_34_op_count_is_linear_in_n_and_only_the_recurrence_scales_with_rbar(quick):
    r = quick[1]["theorems"]["3.4"]
    for key, f in r["fits_n"].items():
        assert 0.9 <= f["exponent"] <= 1.1, key
        assert f["ci_high"] - f["ci_low"] < 1e-6, key  # exact counts
    assert abs(r["fits_rbar"]["recurrence multiply-adds"]["exponent"] - 1.0) < 1e-9
    assert abs(r["fits_rbar"]["exponentials"]["exponent"] - 1.0) < 1e-9
    assert r["fits_rbar"]["multiply-adds"]["exponent"] < 0.5  # the full-length part does not shrink
    assert abs(r["nlogn"]["multiply-adds"]["relative_slope"]) < 1e-12  # per-token cost constant: not n log n
    assert r["seed001_n_sum_R_exponent"]["exponent"] == pytest.approx(2.0, abs=1e-9)
    # cost model a·n·R̄ + b·n for R̄ < 1, per token and channel (N = 16, dim = 64, one B group): the
    # recurrence 3N per segment, read-out N + 1 and U, Δ̄ sums 2 per token, the means B̄ (N per token
    # and per segment) once per group, i.e. N/dim per channel: a = 3N + N/dim, b = N + 3 + N/dim
    assert r["cost_model"]["a_per_token_channel"] == pytest.approx(3 * 16 + 16 / 64, rel=1e-9)
    assert r["cost_model"]["b_per_token_channel"] == pytest.approx(16 + 3 + 16 / 64, rel=1e-9)


def test_34_whole_block_cost_follows_rbar_only_in_block_scope(quick):
    b = quick[1]["theorems"]["3.4"]["block"]
    fr = b["fits_rbar"]
    # block scope: the whole mixer runs on Σ m_i tokens (seed 000 §3.5.1 step 1); the O(n) signal
    # keeps the exponent a little below 1. Scan scope: the projections on every token dominate.
    assert fr["block"]["exponent"] > 0.9, fr["block"]
    assert fr["scan"]["exponent"] < 0.1 and fr["scan"]["exponent"] < fr["block"]["exponent"], fr["scan"]
    frac = b["fraction_of_full"]
    assert frac["block"]["0.0625"] < 0.1 and frac["scan"]["0.0625"] > 0.95
    for key, f in b["fits_n"].items():  # linear in n; the block total carries a once-per-call constant
        if key.startswith("scan") or "per-token" in key:
            # (routing per tile boundary, ⌈n/T⌉ − 1, and the conv's K − 1 padding: not exactly ∝ n)
            assert f["exponent"] == pytest.approx(1.0, abs=1e-3), key
        elif key.endswith("R̄=0.0625"):
            assert f["exponent"] < 0.95, key
    # a·n·R̄ + b·n + c by hand (d = 768, E = 1536, r = 48, N = 16, K = 4, k = 128 signal channels):
    # a = in_proj 2Ed + conv E(K+1) + x_proj E(r+2N) + dt_proj E(r+1) + scan E(4N+3) + out_proj Ed + pool 2d
    d, E, r, N, K, k = 768, 1536, 48, 16, 4, 128
    cm = b["cost_model"]
    assert cm["a_per_compact_token"] == pytest.approx(2 * E * d + E * (K + 1) + E * (r + 2 * N) + E * (r + 1)
                                                      + E * (4 * N + 3) + E * d + 2 * d, rel=1e-9)
    assert cm["b_per_token"] == pytest.approx(d * (r + N) + k * r + k + N + 1 + d, rel=1e-9)
    assert cm["c_per_call"] == pytest.approx((r + N) * E * d + (K - 1) * (E * K + E), rel=1e-9)
    assert cm["max_relative_error"] < 1e-12
    assert all(v["equal"] for v in b["plan_check"].values()), b["plan_check"]


def test_34_whole_block_wall_time_falls_with_rbar_in_block_scope(quick):
    w = quick[1]["theorems"]["3.4"]["block"]["wall_time"]
    # generous bounds (shared machine): the count falls to ~8%, the scan scope's does not fall at all
    assert w["cpu@block@0.0625"] < 0.8 * w["cpu@block@1"]
    assert w["cpu@block@0.0625"] / w["cpu@block@1"] < w["cpu@scan@0.0625"] / w["cpu@scan@1"]


def test_fit_power_law_exact_and_noisy():
    x = np.array([1.0, 2, 4, 8, 16])
    f = V.fit_power_law(x, 3.0 * x**1.5)
    assert f["exponent"] == pytest.approx(1.5) and f["constant"] == pytest.approx(3.0)
    assert f["ci_high"] - f["ci_low"] < 1e-9 and f["r2"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    xs = np.logspace(0, 3, 40)
    f = V.fit_power_law(xs, 2.0 * xs**-0.5 * np.exp(0.05 * rng.standard_normal(40)))
    assert f["ci_low"] < -0.5 < f["ci_high"] and f["ci_high"] - f["ci_low"] < 0.05


@pytest.mark.parametrize("x, y", [([1, 2], [1, 2]), ([1, 2, 3], [1, 2]), ([1, 2, 0], [1, 2, 3]),
                                  ([1, 2, 3], [1, -2, 3]), ([1, 2, float("nan")], [1, 2, 3])])
def test_fit_power_law_rejects_bad_input(x, y):
    with pytest.raises(ValueError, match="fit_power_law"):
        V.fit_power_law(x, y)


# ---------------------------------------------------------------------------- Theorem 3.5
def test_35_ratio_table_finite_and_monotone_where_claimed(quick):
    r = quick[1]["theorems"]["3.5"]
    assert r["finite"]
    for key, m in r["monotone"].items():
        if key.startswith(("correlated", "pretrained")):  # smooth inputs: error falls with the budget
            assert m["mean_relative"], key
        assert m["sup_ratio_values"][-1] == 0.0, key  # budget 1 = the full scan, error exactly 0


def test_35_literal_ratio_is_unbounded_over_inputs(quick):
    sc = quick[1]["theorems"]["3.5"]["scaling"]
    u = [s for s in sc if s["scaled"] == "u"]
    d = [s for s in sc if s["scaled"] == "Δ"]
    assert u[-1]["ratio"] / u[0]["ratio"] == pytest.approx(100.0, rel=1e-9)  # ρ does not see u
    assert u[-1]["max_rho"] == u[0]["max_rho"]
    assert d[-1]["ratio"] / d[0]["ratio"] > 10.0  # error O(Δ), max ρ O(Δ²)


def test_35_density_driven_plan_beats_uniform_on_bursty_correlated_inputs(quick):
    g = quick[1]["theorems"]["3.5"]["grid"][common.FAMILIES[2][0]]
    u = g["T=64|uniform|c=0.5"]["mean_relative"] if "T=64|uniform|c=0.5" in g else g["T=16|uniform|c=0.5"]["mean_relative"]
    a = (g["T=64|adaptive (non-causal)|c=0.5"] if "T=64|adaptive (non-causal)|c=0.5" in g
         else g["T=16|adaptive (non-causal)|c=0.5"])["mean_relative"]
    assert a < u


def test_35_scopes_exact_at_budget_one_and_block_scope_trades_error_for_cost(quick):
    r = quick[1]["theorems"]["3.5"]
    assert r["scope_budget_one_error"] == 0.0  # both scopes are plain Mamba at budget 1
    fams = r["scopes"]
    assert set(fams) == {f[0] for f in preservation.TOKEN_FAMILIES} | {"pretrained hidden states"}
    for fam, v in fams.items():
        assert v["budget_one_scope_difference"] == 0.0, fam
        assert v["pool_gate_max"] == 0.0, fam
        g = v["grid"]
        for p in common.PLANS:
            assert g[f"{p}|block|c=1"]["sup_ratio"] == 0.0 and g[f"{p}|scan|c=1"]["sup_ratio"] == 0.0
            lo_s, lo_b = g[f"{p}|scan|c=0.0625"], g[f"{p}|block|c=0.0625"]
            # the hold costs accuracy (token-local terms are held too), the scan scope costs compute
            assert lo_b["mean_relative"] > 3 * lo_s["mean_relative"], (fam, p)
            # (the scan scope's projections run on every token; the uniform plan, which computes no
            # density, measured 0.785 of Mamba here on i.i.d. tokens)
            assert lo_b["cost_fraction"] < 0.2 and lo_s["cost_fraction"] > 0.75, (fam, p)
    # error falls with the budget in the block scope (every family, every plan)
    assert all(m for k, m in r["scope_monotone"].items() if k.endswith("block")), r["scope_monotone"]
    assert min(r["median_block_over_scan"].values()) > 3.0
    assert r["literal_bound_refuted"] is True


# ---------------------------------------------------------------------------- §3.6
def test_36_full_resolution_is_the_mamba_scan(quick):
    eq = quick[1]["theorems"]["3.6"]["equivalence"]
    for name, v in eq.items():
        assert v["fast_vs_hf"] < 1e-12 and v["reference_vs_hf"] < 1e-12, name


def test_36_full_resolution_matches_the_sequential_reference():
    from reference.mamba_sequential import mamba_scan_sequential
    from tiling.ops import adaptive_selective_scan

    inp = common.scan_inputs(2, 4, 4, 96, torch.Generator().manual_seed(3), dtype=F64, bursts=True, corr=0.9)
    y_ref, _ = mamba_scan_sequential(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"])
    y = adaptive_selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], tile_size=32,
                                resolution=torch.ones(2, 3, dtype=F64))
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12 * float(y_ref.abs().max()))


def test_36_constant_half_resolution_cost(quick):
    cases = quick[1]["theorems"]["3.6"]["cases"]
    half = cases["linear: constant R = c|c=0.5"]
    assert half["exp_fraction"] == pytest.approx(0.5, abs=1e-12)
    # N = 8, dim = 8 (quick): ((3N + N/dim)·½ + N + 3 + N/dim) / (4N + 3) of the multiply-adds
    N, dim = 8, 8
    assert half["madd_fraction"] == pytest.approx(((3 * N + N / dim) * 0.5 + N + 3 + N / dim) / (4 * N + 3), rel=1e-9)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(quick="yes"), TypeError, "quick"),
])
def test_run_verify_rejects_bad_arguments(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        V.run_verify(tmp_path, **kwargs)


def test_run_verify_rejects_bad_out_dir(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        V.run_verify(f, quick=True)
    with pytest.raises(TypeError, match="out_dir"):
        V.run_verify(5, quick=True)


def test_cli_reports_bad_seed_as_one_line(tmp_path, capsys):
    from tiling.workflows.cli import main as cli_main

    assert V.main(["--seed", "-3", "--out", str(tmp_path)]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
    assert cli_main(["verify", "--seed", "-3", "--out", str(tmp_path)]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------- verdict rules
def _fit(exponent, ci_high=None):
    return {"exponent": exponent, "ci_low": exponent - 0.05, "ci_high": exponent + 0.05 if ci_high is None else ci_high}


def _numbers_31(beyond=0, fixed=-0.1):
    return {"parts": {
        "a": {"results": {"normal / k = 10": {"fit": _fit(fixed)}, "normal / k = ⌈2√n⌉": {"fit": _fit(-0.7)}}},
        "b": {"epsilons": [0.01, 0.1],
              "closed_form": {"normal": {"0.01": {"shorter_beyond_rule_error": 0},
                                         "0.1": {"shorter_beyond_rule_error": beyond}}}}}}


def test_decide_31_counterexample_and_fixed_k_convergence():
    assert geodesics.decide(_numbers_31()) == HOLDS_UNDER_CONDITIONS  # converges only with growing k
    assert geodesics.decide(_numbers_31(fixed=-0.5)) == HOLDS  # converges with k = 10 too
    assert geodesics.decide(_numbers_31(beyond=1)) == FALSE_AS_WRITTEN  # a shorter curve: not minimal
    assert geodesics.decide(_numbers_31(beyond=1, fixed=-0.5)) == FALSE_AS_WRITTEN


def _numbers_32(monotone=10, gap=1e-10, broke=2):
    return {"summary": {"runs": 10, "monotone": monotone, "worst_F_gap": gap, "over_bound_broke": broke}}


def test_decide_32_monotone_limit_and_step_bound():
    assert flow_convergence.decide(_numbers_32()) == HOLDS_UNDER_CONDITIONS  # the step bound is needed
    assert flow_convergence.decide(_numbers_32(broke=0)) == HOLDS  # no step broke the descent
    assert flow_convergence.decide(_numbers_32(monotone=9)) == FALSE_AS_WRITTEN  # F rose under the bound
    gap = flow_convergence.F_GAP_TOLERANCE
    assert flow_convergence.decide(_numbers_32(gap=0.5 * gap)) == HOLDS_UNDER_CONDITIONS
    assert flow_convergence.decide(_numbers_32(gap=2 * gap)) == FALSE_AS_WRITTEN  # not the minimum


def _numbers_33(low=None, high=None, violations=0, hyp_violations=0):
    def found(ifq):
        return {"tile": None, "terms": None} if ifq is None else {"tile": {"x": 1}, "terms": {"IFQ": ifq}}
    return {"counterexamples": {"IFQ < 0": found(low), "IFQ > 1": found(high)},
            "normalised": {"violations": violations, "hypothesis": {"violations": hyp_violations}}}


def test_decide_33_literal_counterexample_or_normalised_violation():
    assert ifq_bounds.decide(_numbers_33()) == HOLDS  # nothing found outside [0, 1]
    assert ifq_bounds.decide(_numbers_33(low=-1 / 6)) == FALSE_AS_WRITTEN
    assert ifq_bounds.decide(_numbers_33(high=1.08)) == FALSE_AS_WRITTEN
    assert ifq_bounds.decide(_numbers_33(low=0.0, high=1.0)) == HOLDS  # on the bound is inside it
    assert ifq_bounds.decide(_numbers_33(violations=1)) == FALSE_AS_WRITTEN
    assert ifq_bounds.decide(_numbers_33(hyp_violations=1)) == FALSE_AS_WRITTEN


def _numbers_34(madd=1.0, block=1.0):
    return {"fits_n": {"multiply-adds @ R̄=0.5": _fit(madd), "exponentials @ R̄=0.5": _fit(1.0),
                       "recurrence multiply-adds @ R̄=0.5": _fit(5.0)},  # not part of the rule
            "block": {"fits_n": {"scan / whole block @ R̄=0.5": _fit(1.0),
                                 "block / whole block − signal_maps (per-token part) @ R̄=0.5": _fit(block),
                                 "block / whole block @ R̄=0.0625": _fit(0.5)}}}  # the once-per-call total: not either


def test_decide_34_linear_in_n_or_not():
    assert complexity.decide(_numbers_34()) == FALSE_AS_WRITTEN  # linear: no log n
    assert complexity.decide(_numbers_34(madd=1.099, block=0.901)) == FALSE_AS_WRITTEN
    assert complexity.decide(_numbers_34(madd=1.2)) == HOLDS
    assert complexity.decide(_numbers_34(block=1.15)) == HOLDS


def _numbers_35(u_factor=100.0, d_factor=1.0):
    return {"scaling": [{"scaled": "u", "factor": 1.0, "ratio": 2.0}, {"scaled": "u", "factor": 100.0, "ratio": 2.0 * u_factor},
                        {"scaled": "Δ", "factor": 1.0, "ratio": 3.0}, {"scaled": "Δ", "factor": 0.01, "ratio": 3.0 * d_factor}]}


def test_decide_35_ratio_under_input_scaling():
    assert preservation.decide(_numbers_35()) == FALSE_AS_WRITTEN  # the ratio follows the scale of u
    assert preservation.decide(_numbers_35(u_factor=1.0, d_factor=20.0)) == FALSE_AS_WRITTEN
    assert preservation.decide(_numbers_35(u_factor=1.0)) == HOLDS_UNDER_CONDITIONS  # scale-free ratio
    assert preservation.decide(_numbers_35(u_factor=1 + 1e-9, d_factor=1 - 1e-9)) == HOLDS_UNDER_CONDITIONS


def test_decide_36_full_resolution_equivalence():
    def numbers(err):
        return {"equivalence": {"plain": {"fast_vs_hf": 1e-16, "reference_vs_hf": 1e-16},
                                "gated": {"fast_vs_hf": err, "reference_vs_hf": 1e-16}}}
    assert special_cases.decide(numbers(1e-15)) == HOLDS
    assert special_cases.decide(numbers(special_cases.EXACT_TOLERANCE * 10)) == FALSE_AS_WRITTEN


# ---------------------------------------------------------------------------- result layout
def _result():
    return TheoremResult(id="3.9", statement=("Theorem 3.9, seed 000 §3.9", "quote"), verdict=HOLDS,
                         verdict_text="because", tested="this", numbers={"b": {"x": [1.0, 2.5]}, "a": 3, "flag": True},
                         tables=[{"title": "t", "columns": ["c"], "rows": [[1]]}], figures=["figures/theorems/f.png"])


def test_theorem_result_dict_layout_and_round_trip():
    r = _result()
    d = r.to_dict()
    assert list(d) == ["id", "statement", "verdict", "verdict_text", "tested", "b", "a", "flag", "tables", "figures"]
    assert TheoremResult.from_dict(d) == r
    back = json.loads(json.dumps(jsonable(d), allow_nan=False))  # as theorems.json holds it
    assert TheoremResult.from_dict(back) == r and list(back) == list(d)


def test_theorem_result_rejects_bad_verdict_and_clashing_numbers():
    with pytest.raises(ValueError, match="verdict"):
        TheoremResult(id="3.9", statement=("t", "q"), verdict="true", verdict_text="", tested="", numbers={})
    with pytest.raises(ValueError, match="numbers"):
        TheoremResult(id="3.9", statement=("t", "q"), verdict=HOLDS, verdict_text="", tested="", numbers={"tables": []})
    with pytest.raises(ValueError, match="keys"):
        TheoremResult.from_dict({"id": "3.9"})


def test_every_theorem_module_has_the_interface():
    for mod in V.THEOREMS:
        for name in ("measure", "decide", "explain", "tested", "tables", "figures"):
            assert callable(getattr(mod, name)), (mod.__name__, name)
        assert "Rule:" in mod.decide.__doc__, mod.__name__
        assert V.STATEMENTS[mod.ID] == mod.STATEMENT
    assert isinstance(Measured({"a": 1}).series, dict)
