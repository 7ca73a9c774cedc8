r"""Theorem 3.1 (Information Flow Optimality), seed 000 §3.1.2: geodesics of the Fisher metric.

(a) Graph geodesics of :class:`infogeo.graph.TokenGraph` against the closed-form Fisher–Rao
distances of :mod:`infogeo.fisher` (univariate normal = hyperbolic plane of curvature −1/2;
categorical = sphere of radius 2); (b) minimality of the information length
:math:`L(\gamma)=\int\sqrt{g(\dot\gamma,\dot\gamma)}` (:func:`infogeo.density.path_length`)
under perturbations; (c) the graph geodesic against the closed form on attention rows of the
pretrained all-MiniLM-L6-v2.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .common import F64, fit_power_law, gen, model_outputs, quantiles, rng
from .render import Figures, figure_path, table
from .result import FALSE_AS_WRITTEN, HOLDS, HOLDS_UNDER_CONDITIONS, Measured

Tensor = torch.Tensor

ID = "3.1"
STATEMENT = ("Theorem 3.1 (Information Flow Optimality), seed 000 §3.1.2",
             "The geodesics of $(\\mathcal{M}, g)$ represent paths of optimal information transfer under "
             "computational constraints.")

#: figure names of the three parts (their paths are recorded with each part's numbers)
_FIGURES = {"a": "3_1a_convergence", "b": "3_1b_minimality", "c": "3_1c_attention_rows"}


def _sample_normal_disc(n: int, radius: float, g: torch.Generator) -> Tensor:
    r"""``n`` points (μ, σ) uniform in Fisher volume on the Fisher–Rao disc of radius ``radius`` about N(0, 1).

    The normal family is the half-plane (x, σ) = (μ/√2, σ) with metric 2(dx² + dσ²)/σ²; a disc of
    Fisher radius r is the Euclidean disc of centre (0, cosh ρ), radius sinh ρ, ρ = r/√2. Samples
    come from the box around it with σ-density ∝ 1/σ² (the volume element), kept when inside
    (rejection). A disc is geodesically convex, so every geodesic between samples stays in the
    sampled region and the graph can follow it.
    """
    from infogeo.fisher import normal_distance

    rho = radius / math.sqrt(2.0)
    s_lo, s_hi, x_hi = math.exp(-rho), math.exp(rho), math.sinh(rho)
    out = []
    have = 0
    while have < n:
        m = 2 * (n - have) + 64
        u = torch.rand(m, generator=g, dtype=F64)
        sigma = 1.0 / (1.0 / s_lo - u * (1.0 / s_lo - 1.0 / s_hi))
        mu = math.sqrt(2.0) * x_hi * (2.0 * torch.rand(m, generator=g, dtype=F64) - 1.0)
        one = torch.ones_like(mu)
        keep = normal_distance(mu, sigma, 0.0 * one, one) <= radius
        pts = torch.stack([mu[keep], sigma[keep]], dim=-1)
        out.append(pts)
        have += pts.shape[0]
    return torch.cat(out)[:n]


def _sample_simplex_jeffreys(n: int, K: int, rg: np.random.Generator) -> Tensor:
    """``n`` points of the open simplex from Dirichlet(½, …, ½), the Jeffreys prior: uniform in
    Fisher volume (the positive orthant of the radius-2 sphere, which is geodesically convex)."""
    p = rg.dirichlet(np.full(K, 0.5), size=n)
    p = np.maximum(p, 1e-12)
    return torch.from_numpy(p / p.sum(-1, keepdims=True))


def normal_geodesic(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    r"""Points of the Fisher–Rao geodesic from (μ₁, σ₁) to (μ₂, σ₂) at parameters ``t`` ∈ [0, 1].

    In (x, σ) = (μ/√2, σ) the geodesics of the half-plane are half-circles centred on σ = 0 (or
    vertical lines): centre c = (x₂² + σ₂² − x₁² − σ₁²)/(2(x₂ − x₁)), radius |(x₁ − c, σ₁)|,
    traversed linearly in the polar angle (any monotone parametrisation gives the same L(γ)).
    """
    x1, s1 = float(a[0]) / math.sqrt(2.0), float(a[1])
    x2, s2 = float(b[0]) / math.sqrt(2.0), float(b[1])
    if abs(x2 - x1) < 1e-12 * (1.0 + abs(x1)):
        x = torch.full_like(t, x1)
        s = s1 ** (1 - t) * s2**t
    else:
        c = (x2 * x2 + s2 * s2 - x1 * x1 - s1 * s1) / (2.0 * (x2 - x1))
        r = math.hypot(x1 - c, s1)
        th1, th2 = math.atan2(s1, x1 - c), math.atan2(s2, x2 - c)
        th = th1 + (th2 - th1) * t
        x, s = c + r * torch.cos(th), r * torch.sin(th)
    return torch.stack([math.sqrt(2.0) * x, s], dim=-1)


def categorical_geodesic(p: Tensor, q: Tensor, t: Tensor) -> Tensor:
    r"""Fisher–Rao geodesic of the simplex: the great circle of the radius-2 sphere through 2√p, 2√q.

    ξ(t) = (sin((1−t)ω) √p + sin(tω) √q)/sin ω with cos ω = Σ√(pq); the curve is ξ(t)².
    """
    a, b = p.sqrt(), q.sqrt()
    w = torch.arccos((a * b).sum().clamp(-1.0, 1.0))
    xi = (torch.sin((1 - t) * w)[:, None] * a + torch.sin(t * w)[:, None] * b) / torch.sin(w)
    c = xi * xi
    return c / c.sum(-1, keepdim=True)


def normal_field(x: Tensor) -> Tensor:
    from infogeo.fisher import normal_metric

    return normal_metric(x[..., 0], x[..., 1])


def categorical_field(x: Tensor) -> Tensor:
    from infogeo.fisher import categorical_metric

    return categorical_metric(x / x.sum(-1, keepdim=True))


def _smooth_bumps(n_curves: int, n_t: int, dims: int, g: torch.Generator, modes: int = 4) -> Tensor:
    """Random smooth perturbation fields η(t) = Σ_k a_k sin(kπt)/k with η(0) = η(1) = 0, max|η| = 1."""
    t = torch.linspace(0.0, 1.0, n_t, dtype=F64)
    k = torch.arange(1, modes + 1, dtype=F64)
    basis = torch.sin(math.pi * k[:, None] * t[None, :]) / k[:, None]  # (modes, n_t)
    coef = torch.randn(n_curves, dims, modes, generator=g, dtype=F64)
    eta = torch.einsum("cdm,mt->ctd", coef, basis)
    return eta / eta.abs().amax(dim=(1, 2), keepdim=True)


def _perturb(kind: str, curve: Tensor, eta: Tensor, eps: float) -> Tensor:
    """Perturb a curve (endpoints fixed) by ``eps``·η in coordinates where the metric is ~ unit:
    (μ + εσ η₀, σ e^{ε η₁}) on the normal family, p ⊙ e^{ε η} renormalised on the simplex."""
    if kind == "normal":
        mu = curve[..., 0] + eps * curve[..., 1] * eta[..., 0]
        sigma = curve[..., 1] * torch.exp(eps * eta[..., 1])
        return torch.stack([mu, sigma], dim=-1)
    p = curve * torch.exp(eps * eta)
    return p / p.sum(-1, keepdim=True)


def _graph_convergence(seed: int, quick: bool) -> dict:
    """Theorem 3.1(a): graph geodesic distance → closed-form Fisher–Rao distance as n grows."""
    from infogeo.fisher import categorical_distance, normal_distance, normal_metric
    from infogeo.geodesic import geodesic_distances
    from infogeo.graph import TokenGraph

    sizes = [200, 400, 800] if quick else [250, 500, 1000, 2000, 4000, 8000]
    n_src = 8 if quick else 24
    radius, K, d_min = 2.0, 3, 0.25
    schedules = {"k = 10": lambda n: 10, "k = ⌈2√n⌉": lambda n: int(math.ceil(2 * math.sqrt(n)))}
    rows, per = [], {}
    for fam in ("normal", "categorical"):
        for sname, kfun in schedules.items():
            errs = []
            for n in sizes:
                if fam == "normal":
                    X = _sample_normal_disc(n, radius, gen(seed, 311 + n))
                    graph = TokenGraph.from_points(X, k=kfun(n), metric=normal_metric(X[:, 0], X[:, 1]),
                                                   kind="metric", sequence_edges=False)
                    S = X[:n_src]
                    D = normal_distance(S[:, None, 0], S[:, None, 1], X[None, :, 0], X[None, :, 1]).numpy()
                else:
                    X = _sample_simplex_jeffreys(n, K, rng(seed, 312 + n))
                    graph = TokenGraph.from_points(X, k=kfun(n), kind="fisher_rao", sequence_edges=False)
                    D = categorical_distance(X[:n_src, None, :], X[None, :, :]).numpy()
                DG = geodesic_distances(graph, np.arange(n_src))
                mask = (D > d_min) & np.isfinite(DG)
                rel = (DG[mask] - D[mask]) / D[mask]
                q = quantiles(rel)
                q["unreachable"] = int(((D > d_min) & ~np.isfinite(DG)).sum())
                q["k"] = kfun(n)
                q["edges"] = int(graph.n_edges)
                errs.append(q)
                rows.append([fam, sname, n, kfun(n), q["mean"], q["median"], q["p90"], q["min"], q["unreachable"]])
            fit = fit_power_law(sizes, [e["mean"] for e in errs])
            per[f"{fam} / {sname}"] = {"sizes": sizes, "errors": errs, "fit": fit}
    fit_rows = [[k, v["fit"]["exponent"], v["fit"]["ci_low"], v["fit"]["ci_high"], v["errors"][-1]["mean"]]
                for k, v in per.items()]
    return {
        "sizes": sizes, "sources": n_src, "disc_radius": radius, "categories": K, "min_distance": d_min,
        "results": per,
        "tables": [
            table("3.1(a) relative error of graph geodesics (d_G − d)/d over source–target pairs with d > "
                  f"{d_min}", ["family", "k schedule", "n", "k", "mean", "median", "p90", "min", "unreachable"],
                  rows),
            table("3.1(a) fitted rate: mean relative error ≈ c·n^a (95% CI)",
                  ["family / schedule", "a", "CI low", "CI high", f"error at n = {sizes[-1]}"], fit_rows),
        ],
        "figures": [figure_path(_FIGURES["a"])],
    }


def _minimality(seed: int, quick: bool, graph_points: int) -> dict:
    """Theorem 3.1(b): L(γ) of the geodesic against perturbed curves with the same endpoints
    (:func:`_closed_form_minimality`), and of graph geodesics against node-wise perturbations
    (:func:`_graph_path_minimality`)."""
    n_pairs, n_pert, n_t = (4, 20, 257) if quick else (20, 100, 1025)
    epsilons = [1e-3, 1e-2, 1e-1]
    rows, raw, disc_err = [], {}, []
    for fam in ("normal", "categorical"):
        fam_rows, raw[fam], errs = _closed_form_minimality(fam, seed, n_pairs, n_pert, n_t, epsilons)
        rows += fam_rows
        disc_err += errs
    g_rows, graph_raw = _graph_path_minimality(seed, quick, graph_points, n_pert, epsilons)
    return {
        "pairs": n_pairs, "perturbations_per_pair_and_eps": n_pert, "curve_points": n_t, "epsilons": epsilons,
        "closed_form": raw, "graph_path": graph_raw,
        "discretisation_error": quantiles(np.asarray(disc_err)),
        "tables": [table("3.1(b) relative excess length of perturbed curves (same endpoints)",
                         ["family", "curve", "ε", "curves", "min excess", "median excess", "shorter",
                          "shorter beyond rule error"],
                         rows + g_rows)],
        "figures": [figure_path(_FIGURES["b"])],
    }


def _closed_form_minimality(fam: str, seed: int, n_pairs: int, n_pert: int, n_t: int,
                            epsilons: list[float]) -> tuple[list[list], dict, list[float]]:
    """Theorem 3.1(b) on one family: smooth perturbations (endpoints fixed) of closed-form geodesics.

    Returns the table rows, the quantiles of the relative excess length per ε, and the midpoint
    rule's relative error on each geodesic.
    """
    from infogeo.density import path_length
    from infogeo.fisher import categorical_distance, normal_distance

    t = torch.linspace(0.0, 1.0, n_t, dtype=F64)
    g = gen(seed, 321 if fam == "normal" else 322)
    if fam == "normal":
        P = _sample_normal_disc(2 * n_pairs, 2.0, g)
        field = normal_field
    else:
        P = _sample_simplex_jeffreys(2 * n_pairs, 3, rng(seed, 323))
        field = categorical_field
    dims = P.shape[1]
    excess = {e: [] for e in epsilons}
    beyond = {e: 0 for e in epsilons}
    disc_err = []
    for i in range(n_pairs):
        a, b = P[2 * i], P[2 * i + 1]
        if fam == "normal":
            curve = normal_geodesic(a, b, t)
            d = float(normal_distance(a[0], a[1], b[0], b[1]))
        else:
            curve = categorical_geodesic(a, b, t)
            d = float(categorical_distance(a, b))
        L0 = float(path_length(curve, field))
        # The midpoint rule errs by O(h²) on every curve; a perturbed curve shorter than the
        # geodesic by less than the rule's own error on the geodesic is not a counterexample.
        tol = abs(L0 - d) / d
        disc_err.append(tol)
        for e in epsilons:
            eta = _smooth_bumps(n_pert, n_t, dims, g)
            pert = _perturb(fam, curve.expand(n_pert, -1, -1), eta, e)
            Lp = path_length(pert, field).numpy()
            excess[e].extend(((Lp - L0) / L0).tolist())
            beyond[e] += int(((Lp - L0) / L0 < -tol).sum())
    rows = []
    for e in epsilons:
        x = np.asarray(excess[e])
        rows.append([fam, "smooth, closed-form geodesic", e, x.size, x.min(), np.median(x), int((x < 0).sum()),
                     beyond[e]])
    raw = {str(e): quantiles(np.asarray(excess[e])) | {"shorter": int((np.asarray(excess[e]) < 0).sum()),
                                                       "shorter_beyond_rule_error": beyond[e]}
           for e in epsilons}
    return rows, raw, disc_err


def _graph_path_minimality(seed: int, quick: bool, graph_points: int, n_pert: int,
                           epsilons: list[float]) -> tuple[list[list], dict]:
    """Theorem 3.1(b) on graph geodesics (normal family, k = 10): the graph geodesic is minimal among
    graph paths only, so perturbing its interior nodes independently may shorten it (it zig-zags
    around the true geodesic). Returns the table rows and the numbers per ε."""
    from infogeo.density import path_length
    from infogeo.fisher import normal_distance, normal_metric
    from infogeo.geodesic import geodesic_path
    from infogeo.graph import TokenGraph

    g = gen(seed, 324)
    X = _sample_normal_disc(graph_points, 2.0, g)
    graph = TokenGraph.from_points(X, k=10, metric=normal_metric(X[:, 0], X[:, 1]), kind="metric",
                                   sequence_edges=False)
    g_rows = []
    graph_raw = {}
    n_gp = 4 if quick else 20
    for e in epsilons:
        ratios, shorter, total = [], 0, 0
        for i in range(n_gp):
            path = geodesic_path(graph, 2 * i, 2 * i + 1)
            if len(path) < 3:
                continue
            curve = X[path]
            L0 = float(path_length(curve, normal_field))
            noise = torch.randn(n_pert, len(path), 2, generator=g, dtype=F64)
            noise[:, 0] = 0.0
            noise[:, -1] = 0.0
            Lp = path_length(_perturb("normal", curve.expand(n_pert, -1, -1), noise, e), normal_field).numpy()
            d = float(normal_distance(X[2 * i, 0], X[2 * i, 1], X[2 * i + 1, 0], X[2 * i + 1, 1]))
            ratios.append(L0 / d)
            shorter += int((Lp < L0).sum())
            total += Lp.size
        g_rows.append(["normal", "i.i.d. node noise, graph geodesic (k = 10)", e, total, "–", "–", shorter, "–"])
        graph_raw[str(e)] = {"perturbations": total, "shorter": shorter, "L_graph_over_d": quantiles(np.asarray(ratios))}
    return g_rows, graph_raw


def _attention_rows(seed: int, quick: bool, cache: dict) -> tuple[dict, np.ndarray]:
    """Theorem 3.1(c): graph geodesic vs closed-form Fisher–Rao distance between attention rows.

    Returns the part's numbers and every ratio d_G / d_FR (drawn as a histogram)."""
    from infogeo.fisher import categorical_distance
    from infogeo.geodesic import geodesic_distances
    from infogeo.graph import TokenGraph

    mo = model_outputs(cache)
    attn = mo["attentions"]
    n_layers, n_heads, n, _ = attn.shape
    layers = [0, n_layers - 1] if quick else list(range(n_layers))
    heads = list(range(4)) if quick else list(range(n_heads))
    k = min(10, n - 1)
    ratios, per_layer, direct = [], [], 0
    iu = np.triu_indices(n, 1)
    for li in layers:
        lay = []
        for h in heads:
            P = attn[li, h]
            graph = TokenGraph.from_points(P, k=k, kind="fisher_rao", sequence_edges=True)
            DG = geodesic_distances(graph)
            D = categorical_distance(P[:, None, :], P[None, :, :]).numpy()
            r = DG[iu] / D[iu]
            r = r[np.isfinite(r) & (D[iu] > 1e-9)]
            direct += int((np.abs(r - 1) < 1e-12).sum())
            lay.append(r)
            ratios.append(r)
        per_layer.append([li, quantiles(np.concatenate(lay))])
    allr = np.concatenate(ratios)
    q = quantiles(allr)
    rows = [[f"layer {li}", v["n"], v["median"], v["mean"], v["p90"], v["p99"], v["max"]] for li, v in per_layer]
    rows.append(["all", q["n"], q["median"], q["mean"], q["p90"], q["p99"], q["max"]])
    part = {
        "model": mo["name"], "tokens": n, "layers": layers, "heads": heads, "k": k, "ratio": q,
        "direct_edge_pairs": direct, "per_layer": {str(li): v for li, v in per_layer},
        "tables": [table(f"3.1(c) ratio d_G / d_FR over token pairs of the demo text ({n} tokens), k = {k}, "
                         "sequence edges on", ["layers", "pairs", "median", "mean", "p90", "p99", "max"], rows)],
        "figures": [figure_path(_FIGURES["c"])],
    }
    return part, allr


def measure(quick: bool, seed: int, cache: dict | None = None) -> Measured:
    """Run parts (a), (b), (c); ``cache`` shares the pretrained model's outputs with Theorem 3.5.

    ``numbers["parts"]`` holds each part's numbers with its own tables and figure paths.
    """
    cache = {} if cache is None else cache
    a = _graph_convergence(seed, quick)
    b = _minimality(seed, quick, 500 if quick else 4000)
    c, ratios = _attention_rows(seed, quick, cache)
    return Measured({"parts": {"a": a, "b": b, "c": c}}, {"attention_ratios": ratios, "quick": quick})


def _converges(fit: dict) -> bool:
    """A fitted error rate n^a that falls clearly: 95% interval below 0 and a < −0.3."""
    return fit["ci_high"] < 0 and fit["exponent"] < -0.3


def _shorter_beyond_rule_error(b: dict) -> int:
    """Perturbed curves shorter than the closed-form geodesic by more than the midpoint rule's error."""
    cf = b["closed_form"]
    return sum(cf[f][str(e)]["shorter_beyond_rule_error"] for f in cf for e in b["epsilons"])


def decide(numbers: dict) -> str:
    """The verdict of Theorem 3.1 from its numbers.

    Rule: *false as written* if any perturbed curve with a geodesic's endpoints is shorter than
    the closed-form geodesic by more than the midpoint rule's own error on the geodesic (a
    counterexample to length-minimality, part b); else *holds* if the graph geodesics also
    converge to the closed form with the fixed neighbour count k = 10 (fitted rate n^a with its
    95% interval below 0 and a < −0.3 on both families, part a); else *holds under stated
    conditions* (the discretisation converges only with a neighbour count growing with n, a
    condition the text does not state).
    """
    parts = numbers["parts"]
    if _shorter_beyond_rule_error(parts["b"]) > 0:
        return FALSE_AS_WRITTEN
    fixed = [v["fit"] for k, v in parts["a"]["results"].items() if "k = 10" in k]
    return HOLDS if all(_converges(f) for f in fixed) else HOLDS_UNDER_CONDITIONS


def tables(m: Measured) -> list[dict]:
    """The tables of parts (a), (b), (c) in order."""
    parts = m.numbers["parts"]
    return parts["a"]["tables"] + parts["b"]["tables"] + parts["c"]["tables"]


def figures(m: Measured, figs: Figures) -> list[str]:
    """Convergence rates (a), excess length against ε (b), histogram of d_G/d on attention rows (c)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    a, b, c = (m.numbers["parts"][p] for p in "abc")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, v in a["results"].items():
        ax.loglog(v["sizes"], [e["mean"] for e in v["errors"]], "o-",
                  label=f"{key}: rate n^{v['fit']['exponent']:.2f}")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("n (sampled points)")
    ax.set_ylabel("mean relative error (d_G − d)/d")
    ax.set_title("Thm 3.1(a): graph geodesic vs closed-form Fisher–Rao")
    ax.legend(fontsize=7)
    paths = [figs.save(fig, _FIGURES["a"])]

    epsilons, raw = b["epsilons"], b["closed_form"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for fam in ("normal", "categorical"):
        meds = [raw[fam][str(e)]["median"] for e in epsilons]
        mins = [raw[fam][str(e)]["min"] for e in epsilons]
        ax.loglog(epsilons, meds, "o-", label=f"{fam}: median excess")
        ax.loglog(epsilons, np.maximum(mins, 1e-16), "v--",
                  label=f"{fam}: minimum excess (≤ 0 drawn at 1e-16; within the rule's error)")
    ax.loglog(epsilons, np.asarray(epsilons) ** 2, "k:", label="ε²")
    ax.set_xlabel("perturbation size ε")
    ax.set_ylabel("(L(perturbed) − L(geodesic)) / L(geodesic)")
    ax.set_title("Thm 3.1(b): geodesics minimise L(γ)")
    ax.legend(fontsize=7)
    paths.append(figs.save(fig, _FIGURES["b"]))

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(m.series["attention_ratios"], bins=80, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("graph geodesic / closed-form Fisher–Rao distance")
    ax.set_ylabel("token pairs")
    ax.set_title(f"Thm 3.1(c): attention rows of {c['model'].split(' ')[0]}, n = {c['tokens']} tokens")
    paths.append(figs.save(fig, _FIGURES["c"]))
    return paths


def explain(m: Measured) -> str:
    """The verdict's explanation from the numbers."""
    a, b, c = (m.numbers["parts"][p] for p in "abc")
    fixed = [v for k, v in a["results"].items() if "k = 10" in k]
    grow = [v for k, v in a["results"].items() if "√n" in k]
    grow_conv = all(v["fit"]["ci_high"] < 0 for v in grow)
    fixed_conv = all(_converges(v["fit"]) for v in fixed)
    cf = b["closed_form"]
    beyond = _shorter_beyond_rule_error(b)
    n_curves = sum(cf[f][str(e)]["n"] for f in cf for e in b["epsilons"])
    min_excess = {str(e): min(cf[f][str(e)]["min"] for f in cf) for e in b["epsilons"]}
    graph_shorter = sum(v["shorter"] for v in b["graph_path"].values())
    fmt_fit = lambda v: f"{v['fit']['exponent']:.2f} [{v['fit']['ci_low']:.2f}, {v['fit']['ci_high']:.2f}]"  # noqa: E731
    return (
        "Read as a statement about length, the theorem is the definition of a geodesic and holds: of "
        f"{n_curves:,} perturbed curves with the geodesic's endpoints none was shorter by more than the midpoint "
        f"rule's own error on the geodesic ({beyond} exceptions; smallest relative excess at ε = "
        f"{b['epsilons'][-1]:g}: {min_excess[str(b['epsilons'][-1])]:.1e}, and the median excess grows like ε²). "
        "The graph discretisation the toolkit uses converges to the closed-form distance only under a condition the "
        "text does not state, a neighbour count that grows with n: with k = ⌈2√n⌉ the mean relative error falls "
        "like n^a with a = " + ", ".join(fmt_fit(v) for v in grow)
        + (" (95% intervals below 0)" if grow_conv else " (the intervals of this short run are wide)")
        + ", while with a fixed k = 10 it "
        + ("also falls (" if fixed_conv else "falls slowly if at all, the zig-zag error of a fixed-degree graph (")
        + "a = " + ", ".join(fmt_fit(v) for v in fixed) + "; still "
        + " and ".join(f"{100 * v['errors'][-1]['mean']:.1f}%" for v in fixed)
        + f" at n = {a['sizes'][-1]}). A graph geodesic is minimal only among graph "
        f"paths: {graph_shorter} of {sum(v['perturbations'] for v in b['graph_path'].values())} node-wise "
        "perturbations of graph paths were shorter. On real attention rows the graph geodesic overestimates the "
        f"closed-form distance by a median factor {c['ratio']['median']:.3f} (p99 {c['ratio']['p99']:.3f}): "
        f"{c['tokens']} rows on a {c['tokens'] - 1}-dimensional sphere are far from the continuum limit. "
        "'Optimal information transfer under computational constraints' is not defined in the text; nothing here "
        "measures a computational constraint, so only the length-minimising reading can be verified."
    )


def tested(m: Measured) -> str:
    """What was tested."""
    a, b, c = (m.numbers["parts"][p] for p in "abc")
    return (
        "(a) Points sampled uniformly in Fisher volume — on the Fisher–Rao disc of radius 2 about N(0,1) for the "
        "univariate normal family (hyperbolic plane, metric diag(1, 2)/σ²) and from the Jeffreys prior "
        "Dirichlet(½,½,½) on the 3-category simplex (sphere of radius 2) — joined by a symmetric kNN graph "
        "(`TokenGraph.from_points`, midpoint-rule metric edges for the normal family, exact Fisher–Rao edges for "
        f"the simplex, no sequence edges); Dijkstra distances from {a['sources']} sources against the closed forms "
        f"(`normal_distance`, `categorical_distance`) for pairs farther apart than {a['min_distance']}, "
        f"n ∈ {a['sizes']}, two neighbour schedules. "
        f"(b) {b['pairs']} random endpoint pairs per family; the closed-form geodesic sampled at "
        f"{b['curve_points']} points; L(γ) by `infogeo.density.path_length` (midpoint rule; its error on the "
        f"geodesic itself is at most {b['discretisation_error']['max']:.1e} relative); {b['perturbations_per_pair_and_eps']} "
        "smooth perturbations with fixed endpoints per pair and size ε; plus i.i.d. node perturbations of graph "
        f"geodesics. (c) Attention rows of every head of {('2' if m.series['quick'] else 'all')} layers of the pretrained "
        f"{c['model']} on the package's demo text ({c['tokens']} tokens): kNN + sequence graph with exact "
        "Fisher–Rao edges, all-pairs graph geodesics against the closed form."
    )
