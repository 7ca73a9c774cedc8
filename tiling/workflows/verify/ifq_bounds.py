"""Theorem 3.3 (IFQ Bounds), seed 000 §3.3.2: the literal and normalised metrics of :mod:`tiling.metrics`.

(1) the literal definitions of seed 000 §3.3.1 (``normalised=False``): counterexamples to
0 ≤ IFQ ≤ 1 found and shrunk by hypothesis; (2) the normalised definitions over generated
tiles with adversarial corners, and a hypothesis property test; real tiles of the scan;
(3) how IFQ = 1 is approached.
"""
from __future__ import annotations

import json
import math
import random
from typing import Callable

import numpy as np
import torch

from .common import F64, FAMILIES, gen, quantiles, rng, scan_inputs
from .render import Figures, table
from .result import FALSE_AS_WRITTEN, HOLDS, Measured

ID = "3.3"
STATEMENT = ("Theorem 3.3 (IFQ Bounds), seed 000 §3.3.2",
             "For any tile $T$, $0 ≤ IFQ(T) ≤ 1$, with $IFQ(T) = 1$ iff the tile achieves optimal information "
             "processing.")


def literal_tile_ifq(tile: dict) -> dict:
    """The four literal terms of seed 000 §3.3.1 and IFQ (weights ¼) for one small tile, via
    :mod:`tiling.metrics` with ``normalised=False``."""
    from tiling import metrics as M

    At = torch.tensor(tile["A_t"], dtype=F64)
    Ap = torch.tensor(tile["A_prev"], dtype=F64)
    P = torch.tensor(tile["P"], dtype=F64)
    P = P / P.sum(-1, keepdim=True)
    W = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)
    ps = M.pattern_stability(At, Ap, normalised=False)
    ctf = M.cross_tile_flow(P, W, normalised=False)[0]
    eu = M.edge_utilization(At, normalised=False)
    id_ = M.information_density(torch.tensor(tile["grad_sq"], dtype=F64), tile["state_dim"], normalised=False)
    q = M.ifq(ps, ctf, eu, id_, normalised=False)
    return {"PS": float(ps), "CTF": float(ctf), "EU": float(eu), "ID": float(id_), "IFQ": float(q)}


def _hypothesis_counterexample(condition: Callable[[dict], bool], seed: int) -> dict:
    """Smallest tile (after hypothesis' shrinking, which makes the result canonical) whose literal
    terms satisfy ``condition``; ``{"tile": None, "terms": None}`` if 5,000 examples have none."""
    from hypothesis import HealthCheck, find, settings
    from hypothesis.errors import NoSuchExample
    from hypothesis import strategies as st

    val = st.floats(-4, 4, allow_nan=False, allow_infinity=False)
    mat = st.lists(st.lists(val, min_size=2, max_size=2), min_size=2, max_size=2)
    prob = st.floats(0.01, 0.99)
    tiles = st.fixed_dictionaries({
        "A_t": mat, "A_prev": mat,
        "P": st.tuples(prob, prob).map(lambda ab: [[ab[0], 1 - ab[0]], [ab[1], 1 - ab[1]]]),
        "grad_sq": st.floats(0, 10, allow_nan=False), "state_dim": st.integers(1, 4),
    })

    def ok(t):
        if not any(abs(v) > 0 for row in t["A_t"] for v in row):
            return False  # the literal PS and EU divide by ‖A_t‖ and mean|A_t|
        return condition(literal_tile_ifq(t))

    cfg = settings(max_examples=5000, database=None, derandomize=True, deadline=None,
                   suppress_health_check=list(HealthCheck))
    try:
        ex = find(tiles, ok, settings=cfg, random=random.Random(seed))
    except NoSuchExample:  # recorded, so that the verdict can see that none was found
        return {"tile": None, "terms": None}
    return {"tile": ex, "terms": literal_tile_ifq(ex)}


def measure(quick: bool, seed: int, cache: dict | None = None) -> Measured:
    """Search literal counterexamples, test the normalised metrics, approach IFQ = 1.

    ``cache`` is unused (the signature is the one every theorem module shares).
    """
    cex, ctf_rows = _literal(quick, seed)
    norm, values, sizes = _normalised_tiles(quick, seed)
    norm["hypothesis"] = _normalised_property(quick)
    real = _real_tiles(quick, seed)
    numbers = {
        "counterexamples": cex, "ctf_unbounded": ctf_rows, "normalised": norm,
        "real_tiles": {k: quantiles(v) for k, v in real.items()},
        "ifq_one": _approach_one(),
    }
    series = {"ifq_values": values, **real, **sizes, "tile": _REAL_TILE}
    return Measured(numbers, series)


def _literal(quick: bool, seed: int) -> tuple[dict, list[list]]:
    """(1) The literal definitions: counterexamples found (and shrunk) by hypothesis, and the literal
    CTF against the normalised one as one row of P tends to a vertex of the simplex."""
    from tiling import metrics as M

    searches = {"IFQ < 0": lambda r: r["IFQ"] < 0, "IFQ > 1": lambda r: r["IFQ"] > 1,
                "PS < 0": lambda r: r["PS"] < 0, "EU > 1": lambda r: r["EU"] > 1}
    if quick:  # the two IFQ counterexamples already exhibit PS < 0 or EU > 1
        searches = {k: v for k, v in searches.items() if k.startswith("IFQ")}
    cex = {k: _hypothesis_counterexample(c, seed) for k, c in searches.items()}
    ctf_rows = []
    for x in (1e-1, 1e-3, 1e-6, 1e-12):
        P = torch.tensor([[0.5, 0.5], [1 - x, x]], dtype=F64)
        W = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)
        ctf_rows.append([f"P_i = (½, ½), P_j = (1 − {x:g}, {x:g})", float(M.cross_tile_flow(P, W, normalised=False)[0]),
                         float(M.cross_tile_flow(P, W)[0])])
    return cex, ctf_rows


def _normalised_tiles(quick: bool, seed: int) -> tuple[dict, np.ndarray, dict]:
    """(2) The normalised definitions over ≥ 10,000 generated tiles, adversarial corners included.

    Returns the numbers (cases, range of IFQ, violations of [0, 1], range of each term), every IFQ
    value, and the sizes of the run.
    """
    from tiling import metrics as M

    rg = rng(seed, 330)
    groups, per = (20, 50) if quick else (100, 120)  # groups × tiles per group
    n, K = 6, 8
    lo, hi, viol, values = np.inf, -np.inf, 0, []
    term_range = {k: [np.inf, -np.inf] for k in ("PS", "CTF", "EU", "ID")}
    for gi in range(groups):
        scale = 10.0 ** rg.uniform(-8, 8, (per, 1, 1))
        At = torch.from_numpy(rg.standard_cauchy((per, n, n)) * scale)
        mode = gi % 4
        if mode == 0:
            Ap = -At  # the largest possible change
        elif mode == 1:
            Ap = At.clone()  # no change
        else:
            Ap = torch.from_numpy(rg.standard_cauchy((per, n, n)) * scale)
        if gi % 10 == 3:
            At[: per // 4] = 0.0
            Ap[: per // 8] = 0.0
        alpha = rg.choice([0.02, 1.0, 50.0])
        P = rg.dirichlet(np.full(K, alpha), size=per)
        P = np.maximum(P, 1e-300)
        P = torch.from_numpy(P / P.sum(-1, keepdims=True))
        Wm = torch.from_numpy(rg.exponential(1.0, (per, per)) * (rg.random((per, per)) < 0.3))
        grad_sq = torch.from_numpy(10.0 ** rg.uniform(-30, 30, per) * (rg.random(per) > 0.05))
        sdim = torch.from_numpy(rg.integers(1, 512, per).astype(np.float64))
        ps = M.pattern_stability(At, Ap)
        ctf = M.cross_tile_flow(P, Wm)
        eu = M.edge_utilization(At, edge_width=int(rg.integers(1, n + 1)))
        id_ = M.information_density(grad_sq, sdim)
        w = rg.dirichlet(np.ones(4))
        w[-1] = 1.0 - w[:-1].sum()
        w = np.clip(w, 0.0, None)
        q = M.ifq(ps, ctf, eu, id_, weights=tuple(float(v) for v in w / w.sum()))
        qa = q.numpy()
        values.append(qa)
        viol += int(((qa < 0) | (qa > 1) | ~np.isfinite(qa)).sum())
        lo, hi = min(lo, float(qa.min())), max(hi, float(qa.max()))
        for k, t in (("PS", ps), ("CTF", ctf), ("EU", eu), ("ID", id_)):
            term_range[k] = [min(term_range[k][0], float(t.min())), max(term_range[k][1], float(t.max()))]
    numbers = {"cases": groups * per, "min": lo, "max": hi, "violations": viol, "term_ranges": term_range}
    return numbers, np.concatenate(values), {"groups": groups, "per_group": per, "pattern_size": n, "categories": K}


def _normalised_property(quick: bool) -> dict:
    """(2) A hypothesis property test of 0 ≤ IFQ ≤ 1 for the normalised IFQ on arbitrary small tiles:
    the examples run and the violations found."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tiling import metrics as M

    hyp = {"examples": 0, "violations": 0}

    @settings(max_examples=50 if quick else 1000, database=None, derandomize=True, deadline=None)
    @given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=8, max_size=8),
           st.floats(0.001, 0.999), st.floats(0.001, 0.999), st.floats(0, 1e12), st.integers(1, 64),
           st.lists(st.floats(0, 1), min_size=4, max_size=4).filter(lambda v: sum(v) > 0))
    def prop(vals, a, b, g2, sd, wv):
        At = torch.tensor(vals[:4], dtype=F64).view(2, 2)
        Ap = torch.tensor(vals[4:], dtype=F64).view(2, 2)
        P = torch.tensor([[a, 1 - a], [b, 1 - b]], dtype=F64)
        W = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
        s = sum(wv)
        q = float(M.ifq(M.pattern_stability(At, Ap), M.cross_tile_flow(P, W)[0], M.edge_utilization(At),
                        M.information_density(torch.tensor(g2, dtype=F64), sd), weights=tuple(v / s for v in wv)))
        hyp["examples"] += 1
        hyp["violations"] += int(not (0.0 <= q <= 1.0))

    prop()
    return hyp


#: tile size of the real tiles of :func:`_real_tiles`
_REAL_TILE = 16


def _real_tiles(quick: bool, seed: int) -> dict[str, np.ndarray]:
    """(2) Real tiles: the implicit attention of the scan (``tile_attention``) on the Theorem 3.5 inputs,
    the pattern at full resolution vs at resolution ½ standing in for two observations of a tile.
    Returns PS and EU per tile, literal and normalised."""
    from tiling import metrics as M

    fam = FAMILIES[2]
    inp = scan_inputs(4, 8, 8, 256, gen(seed, 353), dtype=F64, bursts=fam[1], corr=fam[2])
    T = _REAL_TILE
    nb = 2 if quick else 4
    d, B, C = inp["delta"][:nb, :, : 8 * T], inp["B"][:nb, :, : 8 * T], inp["C"][:nb, :, : 8 * T]
    real_lit, real_norm = [], []
    for i in range(8):
        sl = slice(i * T, (i + 1) * T)
        A1 = M.tile_attention(d[..., sl], inp["A"], B[..., sl], C[..., sl])
        A2 = M.tile_attention(d[..., sl], inp["A"], B[..., sl], C[..., sl], resolution=0.5)
        real_lit.append([M.pattern_stability(A2, A1, pattern_dims=3, normalised=False),
                         M.edge_utilization(A1, pattern_dims=3, normalised=False)])
        real_norm.append([M.pattern_stability(A2, A1, pattern_dims=3), M.edge_utilization(A1, pattern_dims=3)])
    return {"literal_PS": torch.cat([r[0] for r in real_lit]).numpy(),
            "literal_EU": torch.cat([r[1] for r in real_lit]).numpy(),
            "normalised_PS": torch.cat([r[0] for r in real_norm]).numpy(),
            "normalised_EU": torch.cat([r[1] for r in real_norm]).numpy()}


def _approach_one() -> list[list[float]]:
    """(3) IFQ = 1: the normalised terms CTF = 1 − e^{−KL} and ID = x/(x + x_ref) are < 1 for every
    finite input, so IFQ = 1 is out of reach when β > 0 or δ > 0; the supremum is approached.
    One row (x, PS, CTF, EU, ID, IFQ) per x."""
    from tiling import metrics as M

    approach = []
    for x in (1.0, 10.0, 100.0, 700.0):
        P = torch.tensor([[1 - math.exp(-x), math.exp(-x)], [math.exp(-x), 1 - math.exp(-x)]], dtype=F64)
        W = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
        At = torch.zeros(2, 2, dtype=F64)
        At[:, 0] = 1.0
        At[1, :] = 1.0  # all mass on the edge entries: EU = 1
        ctf = M.cross_tile_flow(P, W)[0]
        eu = M.edge_utilization(At)
        id_ = M.information_density(torch.tensor([x, 1.0], dtype=F64), 1)[0]
        ps = M.pattern_stability(At, At)
        approach.append([x, float(ps), float(ctf), float(eu), float(id_), float(M.ifq(ps, ctf, eu, id_))])
    return approach


def _literal_violations(numbers: dict) -> list[float]:
    """IFQ of every literal counterexample found that lies outside [0, 1]."""
    return [v["terms"]["IFQ"] for v in numbers["counterexamples"].values()
            if v["terms"] is not None and not 0.0 <= v["terms"]["IFQ"] <= 1.0]


def decide(numbers: dict) -> str:
    """The verdict of Theorem 3.3 from its numbers.

    Rule: *false as written* if hypothesis found a tile whose literal IFQ (the definitions of
    seed 000 §3.3.1) lies outside [0, 1], or if the normalised IFQ left [0, 1] (or was not
    finite) in any generated tile or hypothesis example; else *holds*.
    """
    nm = numbers["normalised"]
    if _literal_violations(numbers) or nm["violations"] > 0 or nm["hypothesis"]["violations"] > 0:
        return FALSE_AS_WRITTEN
    return HOLDS


def tables(m: Measured) -> list[dict]:
    """Literal counterexamples, the unbounded literal CTF, normalised term ranges, IFQ → 1."""
    nb = m.numbers
    cex_rows = [[k, json.dumps(v["tile"])] + ([v["terms"][t] for t in ("PS", "CTF", "EU", "ID", "IFQ")]
                                              if v["terms"] is not None else ["–"] * 5)
                for k, v in nb["counterexamples"].items()]
    nm = nb["normalised"]
    return [
        table("3.3 literal counterexamples (hypothesis, shrunk)",
              ["violated", "tile", "PS", "CTF", "EU", "ID", "IFQ"], cex_rows),
        table("3.3 literal CTF is unbounded (one link, w = 1)", ["distributions", "literal CTF", "normalised CTF"],
              nb["ctf_unbounded"]),
        table(f"3.3 normalised terms over {nm['cases']:,} generated tiles", ["term", "min", "max"],
              [[k, v[0], v[1]] for k, v in nm["term_ranges"].items()] + [["IFQ", nm["min"], nm["max"]]]),
        table("3.3 approaching IFQ = 1 (static edge-only pattern, KL and density → ∞)",
              ["x (KL scale, density)", "PS", "CTF", "EU", "ID", "IFQ"], nb["ifq_one"]),
    ]


def figures(m: Measured, figs: Figures) -> list[str]:
    """Histogram of the normalised IFQ; literal vs normalised (PS, EU) of real tiles."""
    import matplotlib.pyplot as plt

    s = m.series
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    axes[0].hist(s["ifq_values"], bins=60, color="C0")
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].axvline(1, color="k", lw=0.8)
    axes[0].set_xlabel("normalised IFQ")
    axes[0].set_ylabel("tiles")
    axes[0].set_title(f"normalised IFQ over {m.numbers['normalised']['cases']:,} generated tiles")
    axes[1].scatter(s["literal_PS"], s["literal_EU"], s=10, label="literal (PS, EU)")
    axes[1].scatter(s["normalised_PS"], s["normalised_EU"], s=10, label="normalised (PS, EU)")
    axes[1].axhline(1, color="k", lw=0.8)
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].set_xlabel("PS")
    axes[1].set_ylabel("EU")
    axes[1].set_title("real tiles of the scan (tile_attention)")
    axes[1].legend(fontsize=7)
    return [figs.save(fig, "3_3_ifq")]


def explain(m: Measured) -> str:
    """The verdict's explanation from the numbers."""
    nb, s = m.numbers, m.series
    cex, nm, approach = nb["counterexamples"], nb["normalised"], nb["ifq_one"]
    lit_eu, lit_ps = s["literal_EU"], s["literal_PS"]
    found = {k: v["terms"]["IFQ"] for k, v in cex.items() if k.startswith("IFQ") and v["terms"] is not None}
    if len(found) == 2:
        literal = ("With the literal definitions of §3.3.1 the bound is false. Hypothesis finds (and shrinks) tiles "
                   f"with IFQ = {found['IFQ < 0']:.3g} < 0 and IFQ = {found['IFQ > 1']:.3g} > 1 "
                   "(weights ¼ each, the table gives the tiles); ")
    else:
        literal = ("With the literal definitions of §3.3.1 hypothesis found "
                   + (", ".join(f"IFQ = {v:.3g}" for v in found.values()) or "no tile with IFQ outside [0, 1]")
                   + " in 5,000 examples per search; ")
    return (
        literal
        + "PS < 0 whenever ‖∂A‖ > ‖A‖, EU > 1 whenever the edge entries "
        "carry more than the average entry, and CTF = Σ w·KL grows without bound as a distribution approaches a "
        f"vertex ({nb['ctf_unbounded'][-1][1]:.1f} at 1e-12). Real tiles of the scan leave [0, 1] too: the literal EU of the "
        f"implicit attention ranges over [{lit_eu.min():.2f}, {lit_eu.max():.2f}] (> 1 in {100 * (lit_eu > 1).mean():.0f}% "
        f"of {lit_eu.size} tiles), the literal PS over [{lit_ps.min():.2f}, {lit_ps.max():.2f}] (< 0 in "
        f"{100 * (lit_ps < 0).mean():.0f}%). "
        f"The normalised definitions of `tiling.metrics` hold the bound in all {nm['cases']:,} generated tiles "
        f"(including zero patterns, A_prev = −A_t, near-vertex distributions, densities from 0 to 1e30; range "
        f"[{nm['min']:.3g}, {nm['max']:.3g}], {nm['violations']} violations) and in all {nm['hypothesis']['examples']} "
        f"hypothesis examples ({nm['hypothesis']['violations']} "
        "violations) — by construction, a convex combination of numbers in [0, 1]. 'IFQ = 1 iff optimal' has no "
        "content: 'optimal information processing' is not defined, and IFQ = 1 requires every weighted term to be 1, "
        "i.e. an unchanged pattern (PS = 1) whose whole mass lies on the tile's edge entries (EU = 1), infinite "
        "divergence to every linked tile (CTF = 1) and infinite density (ID = 1): the last two are limits that no "
        f"finite tile attains (IFQ {approach[0][5]:.3f} → {approach[-1][5]:.6f} along the table's sequence), so with "
        "β, δ > 0 IFQ = 1 never happens, and with β = δ = 0 it describes a frozen edge-only pattern, not optimality."
    )


def tested(m: Measured) -> str:
    """What was tested."""
    s = m.series
    return (
        "`tiling.metrics` (`pattern_stability`, `cross_tile_flow`, `edge_utilization`, `information_density`, "
        "`ifq`), literal (`normalised=False`) and normalised. Literal: `hypothesis.find` over 2×2 tiles (entries in "
        "[−4, 4], two-category P, ‖∇s‖² ∈ [0, 10], dim(s) ∈ 1…4, weights ¼) for each violated inequality, "
        f"shrunk to a minimal example. Normalised: {m.numbers['normalised']['cases']:,} generated tiles ({s['groups']} "
        f"groups of {s['per_group']}; {s['pattern_size']}×{s['pattern_size']} Cauchy "
        f"patterns at scales 1e-8…1e8, zero patterns, A_prev ∈ {{−A_t, A_t, independent}}, Dirichlet P over {s['categories']} "
        "categories with concentration 0.02…50, sparse exponential weights W, ‖∇s‖² from 0 to 1e30, random "
        "weights on the simplex) plus a hypothesis property test; real tiles: `tile_attention` of the scan on the "
        f"correlated inputs of Theorem 3.5 (tile {s['tile']}), full resolution vs resolution ½."
    )
