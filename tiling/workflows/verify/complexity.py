r"""Theorem 3.4 (Computational Complexity), seed 000 §3.5.1; seed 001 §3.5.1: cost against n and R̄.

Exact operation counts (:func:`tiling.ops.scan_cost`) and wall time of
:func:`tiling.ops.adaptive_selective_scan`; whole-block counts (:func:`tiling.ops.layer_cost`)
and wall time of a whole :class:`tiling.modules.TiledMamba` block in both scopes
(``scope="scan"``: the resolution shrinks the recurrence only; ``scope="block"``: the whole mixer
runs on one token per segment, seed 000 §3.5.1 proof step 1).
"""
from __future__ import annotations

import math
import time
from functools import partial

import numpy as np
import torch

from .common import F64, R_MIN, fit_power_law, gen, layer_pair, named_values, scan_inputs
from .render import Figures, table
from .result import FALSE_AS_WRITTEN, HOLDS, Measured

Tensor = torch.Tensor

ID = "3.4"
STATEMENT = ("Theorem 3.4 (Computational Complexity), seed 000 §3.5.1; seed 001 §3.5.1",
             "For input sequence length $n$ and average resolution $\\bar{R}$, the computational complexity is "
             "$O(n·\\bar{R}·\\log n)$. — Seed 001: for a sequence of length $n$ divided into $m$ tiles, our "
             "method achieves $O(n \\cdot \\sum_{i=1}^m R_i)$ complexity.")

def _time_scan(inp: dict, L: int, resolution: float, tile: int, reps: int, device: str) -> float:
    """Minimum wall time (s) over ``reps`` runs of the adaptive scan on the first ``L`` positions at
    constant resolution (the minimum is the least-disturbed run on a shared machine)."""
    from tiling.ops import adaptive_selective_scan

    args = {k: (v[..., :L].contiguous() if k in ("u", "delta", "B", "C") else v).to(device) for k, v in inp.items()}
    n_tiles = -(-L // tile)
    R = torch.full((args["u"].shape[0], n_tiles), resolution, dtype=args["u"].dtype, device=device)

    def call():
        return adaptive_selective_scan(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"],
                                       tile_size=tile, resolution=R)

    call()  # warm-up (kernel load, allocations)
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


#: Mixer dimensions of the whole-block counts of Theorem 3.4: Mamba-130m's layer (d_model 768,
#: expand 2, dt_rank ⌈768/16⌉ = 48, N = 16, d_conv 4).
BLOCK_DIMS = dict(d_model=768, d_state=16, d_inner=1536, dt_rank=48, d_conv=4)


def _block_cost(L: int, rbar: float, tile: int, scope: str, dims: dict, *, signal: bool = True) -> dict:
    r"""Whole-block multiply-adds (:func:`tiling.ops.layer_cost`) of a ``TiledMamba`` block on one
    sequence at constant resolution R̄, as the layer runs it (seed 000 §3.5.1).

    Scope ``"block"``: the mixer runs on the compact sequence of ``L_c = Σ_i m_i`` tokens,
    ``m_i = max(1, ⌈R̄·n_i⌉)`` (seed 000 §3.5.1 proof step 1, "each tile processes O(R_i·n_i)
    tokens"; seed 001 §3.2.2), plus the linearised density signal on all ``L`` tokens when R̄ < 1
    (at budget 1 the layer runs no policy, so no signal). Scope ``"scan"``: every projection on
    ``L`` tokens, the scan at R̄, the density and routing of the default layer (``routing=True``).
    That is the cost of a policy that reads the signal at mean resolution R̄ (the adaptive one);
    ``signal=False``: the uniform policy's, which places its segments without one
    (:meth:`~tiling.modules.TiledMamba.computes_signal`).
    """
    from tiling.ops import layer_cost, segment_counts, tile_lengths

    if scope == "block":
        lens = tile_lengths(L, tile)
        Lc = int(segment_counts(torch.full((lens.numel(),), float(rbar), dtype=F64), lens).sum())
        return layer_cost(L, scope="block", tile_size=tile, compact_length=Lc,
                          signal="linear" if rbar < 1.0 and signal else "none", **dims)
    return layer_cost(L, scope="scan", tile_size=tile, resolution=float(rbar), routing=True,
                      signal="linear" if signal else "none", **dims)


def _time_block(layer, x: Tensor, budget: float, reps: int, device: str) -> float:
    """Minimum wall time (s) over ``reps`` forward passes of a whole ``TiledMamba`` block at ``budget``."""
    with torch.no_grad():
        layer(x, budget=budget)  # warm-up (kernel load, allocations, the signal's cached maps)
        times = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            layer(x, budget=budget)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return float(np.min(times))


def _cpu_backend() -> str:
    """What runs the scan on the CPU: the compiled kernel where :func:`tiling.ops.kernel_available`
    says so, else the op's fallback, the PyTorch reference."""
    from tiling.ops import kernel_available

    return "C++ CPU kernel" if kernel_available("cpu") else "PyTorch float64 reference (no compiler)"


#: working names of the tables and prose that ``numbers`` holds as they are (path of keys)
_IN_NUMBERS = {
    "fits_n": ('fits_n',),
    "fits_r": ('fits_rbar',),
    "nlogn": ('nlogn',),
    "seed001": ('seed001_n_sum_R_exponent',),
    "backend": ('backend',),
    "devices": ('devices',),
    "t_fits": ('wall_fits_n',),
    "t_r_fits": ('wall_fits_rbar',),
    "bd": ('block', 'dims'),
    "bfits_n": ('block', 'fits_n'),
    "bfits_r": ('block', 'fits_rbar'),
    "shares": ('block', 'shares_at_rmin'),
    "plan_check": ('block', 'plan_check'),
    "bt_fits": ('block', 'wall_fits_rbar'),
    "a_b": ('block', 'cost_model', 'a_per_compact_token'),
    "b_b": ('block', 'cost_model', 'b_per_token'),
    "c_b": ('block', 'cost_model', 'c_per_call'),
    "bmodel_err": ('block', 'cost_model', 'max_relative_error'),
    "model_err": ('cost_model', 'max_relative_error'),
}


#: the named working values in order (:func:`~.common.named_values` with this module's table)
_series = partial(named_values, _IN_NUMBERS)


#: tile size, state size and channels of the scan counts of Theorem 3.4; the constant resolutions R̄
TILE, STATE, CHANNELS = 64, 16, 64
RBARS = [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]
#: sequence lengths of the exact counts: 256 … 32768, 2.1 decades
COUNT_SIZES = [2**e for e in range(8, 16)]


def measure(quick: bool, seed: int, cache: dict | None = None) -> Measured:
    """Exact counts of the scan and the whole block over n × R̄, and wall times.

    ``cache`` is unused (the signature is the one every theorem module shares). The steps:
    :func:`_scan_counts`, :func:`_block_counts`, :func:`_plan_check`, :func:`_scan_wall`,
    :func:`_block_wall`; every step's working values are kept by name in ``w``, and ``numbers``
    holds those the report keeps.
    """
    w = {"tile": TILE, "N": STATE, "dim": CHANNELS, "rbars": RBARS, "count_sizes": COUNT_SIZES,
         "Lbig": COUNT_SIZES[-1], "bd": BLOCK_DIMS, "scopes": ("scan", "block"),
         "devices": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "reps": 3 if quick else 7}
    w |= _scan_counts()
    w |= _block_counts()
    w |= _plan_check(seed)
    w |= _scan_wall(quick, seed, w["devices"], w["reps"])
    w |= _block_wall(quick, seed, w["devices"], w["reps"])
    dim, bd = CHANNELS, BLOCK_DIMS
    numbers = {
        "counts": {f"{L}@{r:g}": c for (L, r), c in w["costs"].items()},
        "fits_n": w["fits_n"], "fits_rbar": w["fits_r"], "nlogn": w["nlogn"],
        "cost_model": {"a_per_token_channel": w["a_c"] / dim, "b_per_token_channel": w["b_c"] / dim,
                       "exp_per_token_channel_at_R1": w["a_e"] / dim, "max_relative_error": w["model_err"]},
        "seed001_n_sum_R_exponent": w["seed001"],
        "wall_time": {f"{d}@{L}@{r:g}": t for (d, L, r), t in w["wall"].items()}, "wall_fits_n": w["t_fits"],
        "wall_fits_rbar": w["t_r_fits"], "backend": _cpu_backend(), "devices": w["devices"],
        "block": {"dims": bd, "counts": {f"{sc}@{L}@{r:g}": c for (sc, L, r), c in w["bcost"].items()},
                  "fits_n": w["bfits_n"], "fits_rbar": w["bfits_r"],
                  "fraction_of_full": {sc: {f"{r:g}": v for r, v in d.items()} for sc, d in w["bfrac"].items()},
                  "shares_at_rmin": w["shares"],
                  "cost_model": {"a_per_compact_token": w["a_b"], "b_per_token": w["b_b"], "c_per_call": w["c_b"],
                                 "max_relative_error": w["bmodel_err"]},
                  "plan_check": w["plan_check"],
                  "wall_time": {f"{d}@{sc}@{r:g}": t for (d, sc, r), t in w["bwall"].items()},
                  "wall_fits_rbar": w["bt_fits"], "wall_sizes": {"d_model": w["bt_d"], "n": w["bt_L"]}},
    }
    # what the numbers do not hold as such: tuple-keyed working copies and the sizes of the run
    series = {k: w[k] for k in ("tile", "N", "dim", "rbars", "count_sizes", "costs", "fit_rows", "Lbig", "r_rows",
                                "a_c", "b_c", "a_e", "scopes", "bfit_rows", "bfrac", "parts", "Lchk", "rchk",
                                "time_sizes", "reps", "wall", "tdim", "tN", "t_rows", "bt_d", "bt_L", "bwall",
                                "bt_rows")}
    return Measured(numbers, series)


#: the scan's counts whose exponents are fitted (exact counts of :func:`tiling.ops.scan_cost`)
_COUNTED = {"exponentials": lambda c: c["exp_total"], "multiply-adds": lambda c: c["madd_total"],
            "recurrence multiply-adds": lambda c: c["madd_recurrence"],
            "full-length multiply-adds (input + read-out)": lambda c: c["madd_input"] + c["madd_readout"]}


def _scan_counts() -> dict:
    """Exact counts of the scan over n × R̄: exponents in n and R̄, the n·log n test, the cost model
    a·n·R̄ + b·n, and seed 001's O(n·Σ_i R_i)."""
    from tiling.ops import scan_cost

    tile, rbars, sizes = TILE, RBARS, COUNT_SIZES
    costs = {(L, r): scan_cost(L, tile, r, None, STATE, CHANNELS) for L in sizes for r in rbars}
    fit_rows, fits_n = [], {}
    for name, get in _COUNTED.items():
        for r in rbars:
            f = fit_power_law(sizes, [get(costs[(L, r)]) for L in sizes])
            fits_n[f"{name} @ R̄={r:g}"] = f
            fit_rows.append([name, f"{r:g}", f["exponent"], f["ci_low"], f["ci_high"]])
    Lbig = sizes[-1]
    fits_r, r_rows = {}, []
    for name, get in _COUNTED.items():
        f = fit_power_law(rbars, [get(costs[(Lbig, r)]) for r in rbars])
        fits_r[name] = f
        r_rows.append([name, f["exponent"], f["ci_low"], f["ci_high"],
                       get(costs[(Lbig, rbars[0])]) / get(costs[(Lbig, 1.0)])])
    # n log n test: per-token cost must not grow with log n; least squares of cost/n on log2 n.
    nlogn = {}
    for name in ("exponentials", "multiply-adds"):
        per_tok = np.array([_COUNTED[name](costs[(L, 0.25)]) / L for L in sizes])
        slope = np.polyfit(np.log2(sizes), per_tok, 1)[0]
        nlogn[name] = {"per_token": per_tok.tolist(), "slope_per_doubling": float(slope),
                       "relative_slope": float(slope / per_tok.mean())}
    # Cost model madd_total = a·n·R̄ + b·n (least squares over R̄ < 1: at R̄ = 1 every segment is
    # one token and the op skips the mean B̄, so full resolution is a separate, cheaper case).
    coarse = [r for r in rbars if r < 1.0]
    Xd = np.array([[L * r, L] for L in sizes for r in coarse], dtype=np.float64)
    yd = np.array([costs[(L, r)]["madd_total"] for L in sizes for r in coarse], dtype=np.float64)
    (a_c, b_c), *_ = np.linalg.lstsq(Xd, yd, rcond=None)
    model_err = float(np.max(np.abs(Xd @ np.array([a_c, b_c]) - yd) / yd))
    Xe = np.array([[L * r] for L in sizes for r in rbars], dtype=np.float64)
    ye = np.array([costs[(L, r)]["exp_total"] for L in sizes for r in rbars], dtype=np.float64)
    (a_e,), *_ = np.linalg.lstsq(Xe, ye, rcond=None)
    # Seed 001's O(n·Σ_i R_i): Σ_i R_i = R̄·n/T grows with n, so n·Σ R_i ∝ n².
    seed001 = fit_power_law(sizes, [L * sum([r] * (-(-L // tile))) for L, r in ((L, 0.25) for L in sizes)])
    return {"costs": costs, "fit_rows": fit_rows, "fits_n": fits_n, "fits_r": fits_r, "r_rows": r_rows,
            "nlogn": nlogn, "a_c": a_c, "b_c": b_c, "model_err": model_err, "a_e": a_e, "seed001": seed001}


def _block_counts() -> dict:
    """Whole-block counts (:func:`tiling.ops.layer_cost`) over n × R̄ in both scopes.

    Seed 000 §3.5.1 proof step 1 says each tile processes O(R_i·n_i) tokens. Scan scope: only the
    recurrence follows R̄; block scope: the whole mixer runs on Σ_i m_i tokens. The block scope's
    composite signal map is a once-per-call constant, so its exponent in n is fitted on the
    per-token part (total − signal_maps) too.
    """
    rbars, sizes, Lbig, scopes = RBARS, COUNT_SIZES, COUNT_SIZES[-1], ("scan", "block")
    bcost = {(sc, L, r): _block_cost(L, r, TILE, sc, BLOCK_DIMS) for sc in scopes for L in sizes for r in rbars}
    per_token_part = {"whole block": lambda c: c["total"],
                      "whole block − signal_maps (per-token part)": lambda c: c["total"] - c["signal_maps"]}
    bfits_n, bfit_rows = {}, []
    for sc in scopes:
        for name, get in per_token_part.items():
            if sc == "scan" and name != "whole block":
                continue  # the scan scope has no once-per-call part
            for r in rbars:
                f = fit_power_law(sizes, [get(bcost[(sc, L, r)]) for L in sizes])
                bfits_n[f"{sc} / {name} @ R̄={r:g}"] = f
                bfit_rows.append([sc, name, f"{r:g}", f["exponent"], f["ci_low"], f["ci_high"]])
    bfits_r = {sc: fit_power_law(rbars, [bcost[(sc, Lbig, r)]["total"] for r in rbars]) for sc in scopes}
    bfrac = {sc: {r: bcost[(sc, Lbig, r)]["total"] / bcost[(sc, Lbig, 1.0)]["total"] for r in rbars} for sc in scopes}
    # share of the parts in the whole block at R̄ = 1/16 (which part the resolution does not reach)
    parts = ("in_proj", "conv", "x_proj", "dt_proj", "scan", "out_proj", "signal_maps", "signal", "pooling",
             "routing", "density")
    shares = {sc: {k: bcost[(sc, Lbig, rbars[0])][k] / bcost[(sc, Lbig, rbars[0])]["total"] for k in parts}
              for sc in scopes}
    # Block-scope cost model total = a·n·R̄ + b·n + c over R̄ < 1 (least squares; exact when R̄·T is
    # whole): a per compact token (the mixer and the pool's mean and gate), b per token (signal ρ̂,
    # the pool's sum), c once per call (the signal's composite map and the conv's K − 1 padding).
    coarse = [r for r in rbars if r < 1.0]
    Xb = np.array([[L * r, L, 1.0] for L in sizes for r in coarse], dtype=np.float64)
    yb = np.array([bcost[("block", L, r)]["total"] for L in sizes for r in coarse], dtype=np.float64)
    (a_b, b_b, c_b), *_ = np.linalg.lstsq(Xb, yb, rcond=None)
    bmodel_err = float(np.max(np.abs(Xb @ np.array([a_b, b_b, c_b]) - yb) / yb))
    return {"bcost": bcost, "bfits_n": bfits_n, "bfit_rows": bfit_rows, "bfits_r": bfits_r, "bfrac": bfrac,
            "parts": parts, "shares": shares, "a_b": a_b, "b_b": b_b, "c_b": c_b, "bmodel_err": bmodel_err}


def _plan_check(seed: int) -> dict:
    """The whole-block counts are those the layer itself reports in ``plan.meta["layer_cost"]``
    (n = 1024, R̄ = 1/4, both scopes; a uniform layer, so without the signal)."""
    from tiling.config import TilingConfig
    from tiling.modules import TiledMamba

    bd, tile = BLOCK_DIMS, TILE
    Lchk, rchk = 1024, 0.25
    xchk = torch.randn(1, Lchk, bd["d_model"], generator=gen(seed, 341))
    plan_check = {}
    for sc in ("scan", "block"):
        with torch.random.fork_rng(devices=[]):  # the weights do not matter to the count; keep the global RNG
            lay = TiledMamba(bd["d_model"], d_state=bd["d_state"], d_conv=bd["d_conv"],
                             tiling=TilingConfig(tile_size=tile, scope=sc, policy="uniform", r_min=R_MIN)).eval()
        with torch.no_grad():
            got = lay.plan(xchk, budget=rchk).meta["layer_cost"]["total"]
        want = _block_cost(Lchk, rchk, tile, sc, bd, signal=False)["total"]
        plan_check[sc] = {"plan": int(got), "layer_cost": int(want), "equal": int(got) == int(want)}
        del lay
    return {"plan_check": plan_check, "Lchk": Lchk, "rchk": rchk}


def _scan_wall(quick: bool, seed: int, devices: list[str], reps: int) -> dict:
    """Wall time of the compiled scan over n × R̄ on each device (one thread on the CPU: the machine is
    shared, and one core gives the cleanest scaling), with its exponents in n and R̄."""
    rbars, tile = RBARS, TILE
    time_sizes = [2**e for e in range(8, 14)] if quick else [2**e for e in range(9, 17)]
    wall = {}
    tdim, tN = 32, 16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dev in devices:
            inp = scan_inputs(1, tdim, tN, time_sizes[-1], gen(seed, 340))
            for L in time_sizes:
                for r in rbars:
                    wall[(dev, L, r)] = _time_scan(inp, L, r, tile, reps, dev)
    finally:
        torch.set_num_threads(threads)
    t_rows, t_fits = [], {}
    for dev in devices:
        for r in rbars:
            f = fit_power_law(time_sizes, [wall[(dev, L, r)] for L in time_sizes])
            t_fits[f"{dev} @ R̄={r:g}"] = f
            t_rows.append([dev, f"{r:g}", f["exponent"], f["ci_low"], f["ci_high"],
                           wall[(dev, time_sizes[-1], r)] * 1e3,
                           wall[(dev, time_sizes[-1], r)] / (time_sizes[-1] * tdim) * 1e9])
    t_r_fits = {dev: fit_power_law(rbars, [wall[(dev, time_sizes[-1], r)] for r in rbars]) for dev in devices}
    return {"time_sizes": time_sizes, "wall": wall, "tdim": tdim, "tN": tN, "t_rows": t_rows, "t_fits": t_fits,
            "t_r_fits": t_r_fits}


def _block_wall(quick: bool, seed: int, devices: list[str], reps: int) -> dict:
    """Wall time of a whole TiledMamba block (float32, uniform plan, same weights), both scopes, against R̄."""
    rbars, scopes = RBARS, ("scan", "block")
    bt_d, bt_L = (128, 1024) if quick else (256, 4096)
    bwall = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dev in devices:
            pair = layer_pair(bt_d, TILE, seed, 342, policy="uniform", r_min=R_MIN)
            xb = torch.randn(1, bt_L, bt_d, generator=gen(seed, 343)).to(dev)
            for sc in scopes:
                lay = pair[sc].to(dev)
                for r in rbars:
                    bwall[(dev, sc, r)] = _time_block(lay, xb, r, reps, dev)
    finally:
        torch.set_num_threads(threads)
    bt_fits = {f"{dev} / {sc}": fit_power_law(rbars, [bwall[(dev, sc, r)] for r in rbars])
               for dev in devices for sc in scopes}
    bt_rows = [[dev, f"{r:g}"] + [v for sc in scopes for v in (bwall[(dev, sc, r)] * 1e3,
                                                               bwall[(dev, sc, r)] / bwall[(dev, sc, 1.0)])]
               for dev in devices for r in rbars]
    return {"bt_d": bt_d, "bt_L": bt_L, "bwall": bwall, "bt_fits": bt_fits, "bt_rows": bt_rows}


def decide(numbers: dict) -> str:
    """The verdict of Theorem 3.4 from its numbers.

    Rule: *false as written* if every fitted exponent in n of the exact counts lies in
    [0.9, 1.1] — the total multiply-adds and the exponentials of the scan at every R̄, and the
    per-token part of the whole block in both scopes — i.e. the cost is linear in n, without the
    log n factor of O(n·R̄·log n); else *holds*.
    """
    fits = [v for k, v in numbers["fits_n"].items() if k.startswith(("multiply-adds @", "exponentials @"))]
    fits += [v for k, v in numbers["block"]["fits_n"].items() if "per-token" in k or k.startswith("scan")]
    linear = all(0.9 <= f["exponent"] <= 1.1 for f in fits)
    return FALSE_AS_WRITTEN if linear else HOLDS


def tables(m: Measured) -> list[dict]:
    """Fitted exponents in n and R̄, per-token cost, the whole block by scope, wall times."""
    (tile, N, dim, rbars, count_sizes, fit_rows, Lbig, r_rows, nlogn, bd, scopes, bfit_rows,
     bfits_r, bfrac, parts, shares, backend, time_sizes, reps, wall, devices, tdim, tN, t_rows,
     bt_d, bt_L, bt_rows) = _series(
        m, "tile N dim rbars count_sizes fit_rows Lbig r_rows nlogn bd scopes bfit_rows bfits_r bfrac parts "
        "shares backend time_sizes reps wall devices tdim tN t_rows bt_d bt_L bt_rows")
    tables = [
        table(f"3.4 fitted exponent a of cost ∝ n^a (exact counts, n = {count_sizes[0]}…{count_sizes[-1]}, tile "
              f"{tile}, N = {N}, dim = {dim}; 95% CI)", ["quantity", "R̄", "a", "CI low", "CI high"], fit_rows),
        table(f"3.4 fitted exponent b of cost ∝ R̄^b at n = {Lbig}",
              ["quantity", "b", "CI low", "CI high", "cost(R̄=1/16)/cost(R̄=1)"], r_rows),
        table("3.4 per-token cost at R̄ = 1/4 against n (constant ⇒ linear, not n·log n)",
              ["n"] + list(nlogn.keys()),
              [[L] + [nlogn[k]["per_token"][i] for k in nlogn] for i, L in enumerate(count_sizes)]),
    ]
    tables += [
        table(f"3.4 whole block (`layer_cost`, d_model {bd['d_model']}, d_inner {bd['d_inner']}, N {bd['d_state']}, "
              f"tile {tile}), scan scope vs block scope: fitted exponent in R̄ at n = {Lbig} and cost relative to "
              "R̄ = 1", ["scope", "exponent in R̄", "CI low", "CI high"] + [f"R̄ = {r:g}" for r in rbars],
              [[sc, bfits_r[sc]["exponent"], bfits_r[sc]["ci_low"], bfits_r[sc]["ci_high"]]
                + [bfrac[sc][r] for r in rbars] for sc in scopes]),
        table(f"3.4 whole block: fitted exponent in n (n = {count_sizes[0]}…{count_sizes[-1]}), by scope",
              ["scope", "quantity", "R̄", "a", "CI low", "CI high"], bfit_rows),
        table(f"3.4 whole block: share of each part at R̄ = 1/16, n = {Lbig}",
              ["part"] + [f"{sc} scope" for sc in scopes],
              [[k] + [shares[sc][k] for sc in scopes] for k in parts if any(shares[sc][k] for sc in scopes)]),
    ]
    wall_cols = ["device", "R̄", "exponent in n", "CI low", "CI high", f"ms at n = {time_sizes[-1]}",
                 "ns per token·channel"]
    tables.append(table(f"3.4 wall time, CPU ({backend}; machine shared with other jobs), batch 1, dim {tdim}, "
                        f"N {tN}, tile {tile}, minimum of {reps} runs, 1 thread", wall_cols,
                        [r for r in t_rows if r[0] == "cpu"]))
    if "cuda" in devices:
        tables.append(table(f"3.4 wall time, GPU ({torch.cuda.get_device_name(0)}; CUDA kernel), batch 1, dim {tdim}, "
                            f"N {tN}, tile {tile}, minimum of {reps} runs", wall_cols,
                            [r for r in t_rows if r[0] == "cuda"]))
    else:
        tables.append(table("3.4 wall time, GPU", ["note"], [["no GPU on the machine that generated this report "
                                                                "(torch.cuda.is_available() is False)"]]))
    tables.append(table(f"3.4 wall time of a whole TiledMamba block (float32, batch 1, d_model {bt_d}, n = {bt_L}, "
                        f"tile {tile}, uniform plan, same weights; minimum of {reps} runs, 1 thread on the CPU), "
                        "scan scope vs block scope",
                        ["device", "R̄", "scan: ms", "scan: / R̄ = 1", "block: ms", "block: / R̄ = 1"], bt_rows))
    return tables


def figures(m: Measured, figs: Figures) -> list[str]:
    """Operation count, scan wall time, whole-block count and wall time against R̄."""
    (N, dim, rbars, count_sizes, costs, Lbig, bd, scopes, bfits_r, bfrac, backend, time_sizes, wall,
     devices, tdim, tN, bt_d, bt_L, bwall) = _series(
        m, "N dim rbars count_sizes costs Lbig bd scopes bfits_r bfrac backend time_sizes wall devices tdim "
        "tN bt_d bt_L bwall")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes2 = plt.subplots(2, 2, figsize=(10.5, 8.0))
    axes = axes2.ravel()
    for r in rbars:
        axes[0].loglog(count_sizes, [costs[(L, r)]["madd_total"] for L in count_sizes], "o-", label=f"R̄ = {r:g}")
    axes[0].loglog(count_sizes, [costs[(L, 1.0)]["madd_total"] * (np.log2(L) / np.log2(count_sizes[0]))
                                 for L in count_sizes], "k:", label="n·log n (through R̄ = 1 at the left)")
    axes[0].set_xlabel("n")
    axes[0].set_ylabel("multiply-adds (scan_cost)")
    axes[0].set_title("operation count")
    axes[0].legend(fontsize=7)
    for dev in devices:
        for r in rbars:
            axes[1].loglog(time_sizes, [wall[(dev, L, r)] for L in time_sizes], "o-" if dev == "cpu" else "s--",
                           label=f"{dev}, R̄ = {r:g}")
    axes[1].set_xlabel("n")
    axes[1].set_ylabel("wall time (s)")
    axes[1].set_title(f"wall time of the scan op ({backend}, dim {tdim}, N {tN})")
    axes[1].legend(fontsize=6)
    for sc, mk in zip(scopes, ("o-", "s-")):
        axes[2].loglog(rbars, [bfrac[sc][r] for r in rbars], mk, label=f"{sc} scope (exponent {bfits_r[sc]['exponent']:.2f})")
    axes[2].loglog(rbars, rbars, "k:", label="∝ R̄ (seed 000 §3.5.1 step 1)")
    axes[2].set_xlabel("R̄")
    axes[2].set_ylabel("whole-block multiply-adds / (R̄ = 1)")
    axes[2].set_title(f"whole block (layer_cost), n = {Lbig}, d_model {bd['d_model']}")
    axes[2].legend(fontsize=7)
    for dev in devices:
        for sc, mk in zip(scopes, ("o-", "s-")):
            axes[3].loglog(rbars, [bwall[(dev, sc, r)] for r in rbars], mk if dev == "cpu" else mk[0] + "--",
                           label=f"{dev}, {sc} scope")
    axes[3].set_xlabel("R̄")
    axes[3].set_ylabel("wall time (s)")
    axes[3].set_title(f"wall time, whole TiledMamba block (d_model {bt_d}, n = {bt_L})", fontsize=10)
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.xaxis.set_minor_formatter(NullFormatter())
    return [figs.save(fig, "3_4_complexity")]


def explain(m: Measured) -> str:
    """The verdict's explanation from the numbers."""
    (tile, N, dim, rbars, count_sizes, costs, fits_n, Lbig, fits_r, r_rows, nlogn, a_c, b_c,
     model_err, a_e, seed001, bd, scopes, bfits_n, bfits_r, bfrac, shares, a_b, b_b, c_b,
     bmodel_err, plan_check, Lchk, rchk, backend, time_sizes, wall, t_fits, t_r_fits, bt_d, bt_L,
     bwall, bt_fits) = _series(
        m, "tile N dim rbars count_sizes costs fits_n Lbig fits_r r_rows nlogn a_c b_c model_err a_e seed001 "
        "bd scopes bfits_n bfits_r bfrac shares a_b b_b c_b bmodel_err plan_check Lchk rchk backend "
        "time_sizes wall t_fits t_r_fits bt_d bt_L bwall bt_fits")
    madd_n = [fits_n[f"multiply-adds @ R̄={r:g}"] for r in rbars]
    exp_n = [fits_n[f"exponentials @ R̄={r:g}"] for r in rbars]
    rec_r = fits_r["recurrence multiply-adds"]["exponent"]
    full_r = fits_r["full-length multiply-adds (input + read-out)"]["exponent"]
    cpu_fits = [t_fits[f"cpu @ R̄={r:g}"] for r in rbars]
    return (
        f"The cost is linear in n, not n·log n: the fitted exponent of the exact counts in n is "
        f"{min(f['exponent'] for f in madd_n + exp_n):.3f}–{max(f['exponent'] for f in madd_n + exp_n):.3f} for every R̄, "
        f"and the per-token multiply-adds change by {100 * nlogn['multiply-adds']['relative_slope']:+.3f}% per doubling of n "
        "(an n·log n cost would add a constant per doubling). The O(log n) 'cross-tile communication' of the proof "
        "sketch does not exist in the scan: tiles hand over one state each, O(1) per tile. Read as a mere upper bound "
        "O(n·R̄·log n) is true but loose (R̄ ≥ R_min > 0 lets the constant absorb everything); read as the order of the "
        "cost, which is what the theorem is for, it is false on both factors: no log n, and only the recurrence scales "
        "with R̄ "
        f"(exponent {rec_r:.3f} in R̄), the full-length input aggregation and read-out do not (exponent {full_r:.2f}"
        + ("; they even grow below R̄ = 1, where segments need their mean B̄" if full_r < -0.05 else "")
        + "), so the "
        f"cost is a·n·R̄ + b·n with a = {a_c / dim:.2f} and b = {b_c / dim:.2f} multiply-adds per token and channel "
        f"for R̄ < 1 (N = {N}; largest relative deviation of the model {model_err:.1e}; at R̄ = 1 the op skips the "
        f"segment means and costs {costs[(Lbig, 1.0)]['madd_total'] / Lbig / dim:.0f}) and {a_e / dim:.2f}·R̄ = N·R̄ "
        f"exponentials per token and channel; at R̄ = 1/16 the multiply-adds fall only to "
        f"{r_rows[1][4] * 100:.1f}% of full resolution (exponentials to {r_rows[0][4] * 100:.1f}%). Seed 001's "
        f"O(n·Σ_i R_i) grows like n^{seed001['exponent']:.2f} at fixed tile size (Σ_i R_i itself grows with n): false as "
        f"written; the measured cost is O(Σ_i R_i·n_i + n). Wall time on the CPU ({backend}) has exponents "
        + ", ".join(f"{f['exponent']:.2f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}]" for f in cpu_fits)
        + f" in n for R̄ = {', '.join(f'{r:g}' for r in rbars)} (the interval contains 1 for "
        f"{sum(f['ci_low'] <= 1.0 <= f['ci_high'] for f in cpu_fits)} of {len(cpu_fits)}; fixed per-call costs flatten "
        f"the small sizes), and exponent {t_r_fits['cpu']['exponent']:.2f} in R̄ at "
        f"n = {time_sizes[-1]}: at R̄ = 1/16 the scan takes {100 * wall[('cpu', time_sizes[-1], rbars[0])] / wall[('cpu', time_sizes[-1], 1.0)]:.0f}% "
        "of its full-resolution time (the full-length passes dominate). "
        f"The whole block (`tiling.ops.layer_cost`, d_model {bd['d_model']}, N {bd['d_state']}) depends on the "
        "scope. Scan scope: in_proj, conv, x_proj, dt_proj and out_proj run on every token "
        f"({100 * sum(shares['scan'][k] for k in ('in_proj', 'conv', 'x_proj', 'dt_proj', 'out_proj')):.1f}% of the "
        f"block at R̄ = 1/16, the scan {100 * shares['scan']['scan']:.1f}%), so the block's exponent in R̄ is "
        f"{bfits_r['scan']['exponent']:.3f} and at R̄ = 1/16 it still costs {100 * bfrac['scan'][rbars[0]]:.1f}% of "
        f"R̄ = 1. Block scope: the mixer runs on Σ_i m_i tokens (seed 000 §3.5.1 step 1), exponent "
        f"{bfits_r['block']['exponent']:.3f} [{bfits_r['block']['ci_low']:.3f}, {bfits_r['block']['ci_high']:.3f}] "
        f"in R̄, {100 * bfrac['block'][rbars[0]]:.1f}% of R̄ = 1 at R̄ = 1/16; the cost is a·n·R̄ + b·n + c with "
        f"a = {a_b:,.0f} multiply-adds per compact token (the mixer and the pool), b = {b_b:,.0f} per token "
        f"(the signal ρ̂ and the pool's sum, {100 * b_b / a_b:.1f}% of a: what keeps the exponent below 1) and "
        f"c = {c_b:,.0f} once per call (the signal's composite map; largest relative deviation of the model "
        f"{bmodel_err:.1e}). Both scopes are linear in n: the fitted exponent of the per-token part is "
        f"{min(v['exponent'] for k, v in bfits_n.items() if 'per-token' in k or k.startswith('scan')):.3f}–"
        f"{max(v['exponent'] for k, v in bfits_n.items() if 'per-token' in k or k.startswith('scan')):.3f}; the "
        "block scope's total including the once-per-call map fits "
        f"n^{min(v['exponent'] for k, v in bfits_n.items() if k.startswith('block / whole block @')):.2f} at "
        f"R̄ = 1/16 over n = {count_sizes[0]}…{count_sizes[-1]} (a constant, not a sublinear cost). So in the block "
        "scope the order of the proof sketch's step 1 is what the block costs, O(n·R̄) + O(n) with a small O(n) "
        "term, still without the log n. Wall time of one whole block on the CPU (float32, 1 thread, "
        f"d_model {bt_d}, n = {bt_L}): at R̄ = 1/16 the scan scope takes "
        f"{100 * bwall[('cpu', 'scan', rbars[0])] / bwall[('cpu', 'scan', 1.0)]:.0f}% of its R̄ = 1 time and the "
        f"block scope {100 * bwall[('cpu', 'block', rbars[0])] / bwall[('cpu', 'block', 1.0)]:.0f}% "
        f"(exponents in R̄ {bt_fits['cpu / scan']['exponent']:.2f} and {bt_fits['cpu / block']['exponent']:.2f}); the "
        f"layer's own plan reports the same counts ({'equal' if all(v['equal'] for v in plan_check.values()) else 'NOT equal'} "
        f"for both scopes at n = {Lchk}, R̄ = {rchk:g})."
    )


def tested(m: Measured) -> str:
    """What was tested."""
    (tile, N, dim, rbars, count_sizes, bd, time_sizes, reps, tdim, tN, bt_d, bt_L) = _series(
        m, "tile N dim rbars count_sizes bd time_sizes reps tdim tN bt_d bt_L")
    return (
        f"`tiling.ops.scan_cost` (exact counts of the op) for n ∈ {count_sizes[0]}…{count_sizes[-1]} "
        f"({len(count_sizes)} sizes, {math.log10(count_sizes[-1] / count_sizes[0]):.1f} decades) × constant "
        f"R̄ ∈ {{{', '.join(f'{r:g}' for r in rbars)}}}, tile {tile}, N = {N}, dim = {dim}; wall time of "
        f"`tiling.ops.adaptive_selective_scan` (float32, batch 1, dim {tdim}, N {tN}) for n ∈ "
        f"{time_sizes[0]}…{time_sizes[-1]} ({len(time_sizes)} sizes) × the same R̄, minimum of {reps} runs after a "
        "warm-up on one thread; log–log least-squares exponents with Student-t 95% intervals. Whole block, both "
        "scopes of `tiling.modules.TiledMamba`: `tiling.ops.layer_cost` (every multiply-add of the block as it "
        f"runs; d_model {bd['d_model']}, d_inner {bd['d_inner']}, dt_rank {bd['dt_rank']}, N {bd['d_state']}, "
        f"d_conv {bd['d_conv']}) over the same n × R̄ grid, checked against the layer's own `plan.meta['layer_cost']`, "
        f"and the wall time of one whole block per scope (same weights, d_model {bt_d}, n = {bt_L}, uniform plan)."
    )
