"""Benchmark the graph discretisation (infogeo.graph/geodesic/laplacian/curvature/flow).

Prints one table of sizes, timings and ratios against references measured in the same run:

* kNN: our search (``infogeo.graph.knn``, cKDTree in low dimension, blocked ``torch.cdist`` in
  high dimension) against the naive dense ``scipy.spatial.distance.cdist`` + ``argpartition``;
* geodesics: ``geodesic_distances`` (scipy csgraph Dijkstra) from 100 sources on a 20,000-point
  kNN graph (k = 10; the issue's target is < 2 s) against networkx's
  ``single_source_dijkstra_path_length`` (timed on fewer sources and scaled per source);
* scale: on up to 50,000 points, the token graph (kNN + sequence edges) of a random-walk
  trajectory on the sphere (consecutive tokens close, as along a text), its geodesics, Ollivier–
  and Forman–Ricci curvature and the resolution flow, and the Laplacian + spectrum of uniform
  points of the sphere (whose eigenvalues 2, 6, 6 are printed), with the peak resident memory.

Usage: ``python scripts/bench_geometry.py [--json PATH] [--max-n 50000] [--quick]``;
``--figures docs/figures/infogeo`` draws the documentation figures instead (sphere spectrum,
geodesic error against n); it needs geomstats, from the test extra (``pip install -e '.[test]'``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import sys
import time

import networkx as nx
import numpy as np
import torch
from scipy.spatial.distance import cdist

from infogeo.curvature import forman_ricci, ollivier_ricci
from infogeo.flow import resolution_flow
from infogeo.geodesic import geodesic_distances
from infogeo.graph import TokenGraph, knn
from infogeo.laplacian import laplacian, laplacian_spectrum
from tiling.train.storage import atomic_write_json


_CPU: list[float] = []  # CPU seconds of the last _timed call (best repeat)


def _timed(fn, repeat: int = 1):
    """Best wall time over ``repeat`` runs; the matching process CPU time goes to ``_CPU``.

    CPU time is reported too because the machine is shared: under load the wall time of a
    single-threaded routine exceeds its CPU time by the time it waited for a core.
    """
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    _CPU[:] = [cpu]
    return best, out


def _sphere(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def _walk(n: int, step: float = 0.01, seed: int = 0) -> torch.Tensor:
    """A token-like trajectory: a random walk on the unit sphere (consecutive points are close)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, 3, dtype=torch.float64)
    p = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    noise = step * torch.randn(n, 3, generator=g, dtype=torch.float64)
    for t in range(n):
        p = p + noise[t]
        p = p / p.norm()
        x[t] = p
    return x


def _naive_knn(x: np.ndarray, k: int) -> np.ndarray:
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.argpartition(d, k, axis=1)[:, :k]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _geodesic_errors(n: int, k: int) -> tuple[float, float]:
    """Mean relative error of graph geodesics: unit sphere and univariate-normal manifold."""
    from geomstats.geometry.hypersphere import Hypersphere
    from geomstats.information_geometry.normal import UnivariateNormalDistributions

    from infogeo.fisher import normal_metric

    x = _sphere(n)
    d = geodesic_distances(TokenGraph.from_points(x, k=k, sequence_edges=False), np.arange(15))
    xn = x.numpy()
    ref = np.stack([Hypersphere(dim=2).metric.dist(np.broadcast_to(xn[s], xn.shape), xn) for s in range(15)])
    far = ref > 0.5
    e_sphere = float(np.mean(np.abs(d[far] - ref[far]) / ref[far]))
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 1.5
    sigma = 0.6 + 1.2 * torch.rand(n, generator=g, dtype=torch.float64)
    graph = TokenGraph.from_points(torch.stack([mu, sigma], 1), k=k, metric=normal_metric(mu, sigma), sequence_edges=False)
    inner = np.flatnonzero((mu.abs() < 0.5).numpy() & (sigma > 0.8).numpy() & (sigma < 1.25).numpy())
    d = geodesic_distances(graph, inner[:15])[:, inner]
    pts = torch.stack([mu, sigma], 1).numpy()
    metric = UnivariateNormalDistributions().metric
    ref = np.stack([metric.dist(np.broadcast_to(pts[s], pts[inner].shape), pts[inner]) for s in inner[:15]])
    far = ref > 0.3
    return e_sphere, float(np.mean(np.abs(d[far] - ref[far]) / ref[far]))


def figures(out_dir: str) -> None:
    """The sphere spectrum and the geodesic error against n (docs/figures/infogeo/)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)

    def finish(fig, ax, xlabel: str, ylabel: str, name: str) -> None:
        """Label the axes, add the legend and write the figure to ``out_dir/name``."""
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=130)
        plt.close(fig)

    # Sphere spectrum: 8,000 points, k = 200, first 25 eigenvalues against l(l+1).
    ref = np.concatenate([[l * (l + 1)] * (2 * l + 1) for l in range(5)])
    g = torch.Generator().manual_seed(0)
    uni = _sphere(8000)
    cand = torch.randn(40000, 3, generator=g, dtype=torch.float64)
    cand = cand / cand.norm(dim=1, keepdim=True)
    keep = torch.rand(40000, generator=g, dtype=torch.float64) * 1.8 < 1 + 0.8 * cand[:, 2]
    tilt = cand[keep][:8000]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.step(np.arange(25), ref, where="mid", color="k", lw=1, label="l(l+1), multiplicity 2l+1")
    for pts, kind, alpha, lab, mk in (
        (uni, "diffusion", 1.0, "uniform, diffusion α=1", "o"),
        (uni, "belkin_niyogi", 0.0, "uniform, Belkin–Niyogi", "x"),
        (tilt, "diffusion", 1.0, "density ∝ 1+0.8z, α=1", "s"),
        (tilt, "diffusion", 0.0, "density ∝ 1+0.8z, α=0", "^"),
    ):
        vals, _ = laplacian_spectrum(pts, 25, kind=kind, alpha=alpha, k=200)
        ax.plot(np.arange(25), vals, mk, ms=4, mfc="none", label=lab)
    ax.set_title("Unit sphere, 8,000 points, k = 200")
    finish(fig, ax, "eigenvalue index", "eigenvalue of −Δ", "sphere_spectrum.png")
    # Geodesic error against n: k growing as 0.5 sqrt(n) (consistent) and fixed k = 10.
    ns = [500, 1000, 2000, 4000, 8000]
    grow = [_geodesic_errors(n, int(np.ceil(0.5 * np.sqrt(n)))) for n in ns]
    fixed = [_geodesic_errors(n, 10) for n in ns]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(ns, [e[0] for e in grow], "o-", label="sphere, k = ⌈0.5√n⌉")
    ax.loglog(ns, [e[1] for e in grow], "s-", label="normal manifold, k = ⌈0.5√n⌉")
    ax.loglog(ns, [e[0] for e in fixed], "o--", label="sphere, k = 10")
    ax.loglog(ns, [e[1] for e in fixed], "s--", label="normal manifold, k = 10")
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.xaxis.set_minor_locator(plt.NullLocator())  # the log axis' minor labels collide with the n ticks
    finish(fig, ax, "number of points n", "mean relative geodesic error", "geodesic_error.png")
    for n, e1, e2 in zip(ns, grow, fixed):
        print(f"geodesic error n={n}: k=0.5sqrt(n): sphere {e1[0]:.4f} normal {e1[1]:.4f}; k=10: sphere {e2[0]:.4f} normal {e2[1]:.4f}")


def main() -> None:
    # long: the flags, then one measured row per benchmark of the printed table, in order
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=str, default=None, help="write the rows to this JSON file")
    ap.add_argument("--max-n", type=int, default=50000, help="largest size of the scale rows")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument("--figures", type=str, default=None, help="only draw the docs figures into this folder")
    args = ap.parse_args()
    if args.figures:
        if importlib.util.find_spec("geomstats") is None:  # the figures' reference geodesics; the package needs none
            print("error: --figures needs geomstats (the reference geodesics), which the test extra installs: "
                  "pip install -e '.[test]'", file=sys.stderr)
            sys.exit(2)
        figures(args.figures)
        return
    rows: list[dict] = []

    def row(name: str, n: int, ours: float, ref: float | None = None, ref_name: str = "", note: str = "",
            ref_cpu: float | None = None) -> None:
        cpu = _CPU[0]
        r = {
            "benchmark": name,
            "n": n,
            "ours_s": round(ours, 4),
            "ours_cpu_s": round(cpu, 4),
            "reference": ref_name,
            "reference_s": None if ref is None else round(ref, 4),
            "reference_cpu_s": None if ref_cpu is None else round(ref_cpu, 4),
            "speedup_wall": None if ref is None else round(ref / ours, 2),
            "speedup_cpu": None if ref_cpu is None else round(ref_cpu / cpu, 2),
            "note": note,
        }
        rows.append(r)
        sp = "" if ref is None else f"{ref / ours:7.1f}x"
        spc = "" if ref_cpu is None else f"{ref_cpu / cpu:7.1f}x"
        print(f"{name:<40} {n:>6} {ours:>8.3f} {cpu:>8.3f} {ref_name:<28} {'' if ref is None else f'{ref:8.3f}':>8} "
              f"{'' if ref_cpu is None else f'{ref_cpu:8.3f}':>8} {sp:>8} {spc:>8}  {note}", flush=True)

    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}, "
          f"torch threads {torch.get_num_threads()}, python {platform.python_version()}")
    print(f"{'benchmark':<40} {'n':>6} {'wall (s)':>8} {'cpu (s)':>8} {'reference':<28} {'ref wall':>8} {'ref cpu':>8} "
          f"{'x wall':>8} {'x cpu':>8}  note")

    # kNN against the naive dense distance matrix.
    n_knn = 2000 if args.quick else 5000
    for d in (3, 64):
        x = torch.randn(n_knn, d, dtype=torch.float64)
        method = "kdtree" if d <= 16 else "blocked"
        t_ref, ref_idx = _timed(lambda: _naive_knn(x.numpy(), 10), 1)
        c_ref = _CPU[0]
        t_ours, (idx, _) = _timed(lambda: knn(x, 10, method=method), 3)
        same = float(np.mean(np.sort(idx, 1) == np.sort(ref_idx, 1)))
        row(f"kNN k=10 d={d} ({method})", n_knn, t_ours, t_ref, "scipy cdist + argpartition",
            f"same neighbours {same:.4f}", ref_cpu=c_ref)

    # Geodesics: 100 sources on a 20k-point kNN graph, against networkx.
    n_geo = 5000 if args.quick else 20000
    graph = TokenGraph.from_points(_sphere(n_geo), k=10)
    src = np.arange(100)
    nxg = graph.to_networkx()
    n_nx = 5
    t_nx, nx_rows = _timed(lambda: [nx.single_source_dijkstra_path_length(nxg, int(s)) for s in src[:n_nx]], 1)
    c_nx = _CPU[0]
    t_ours, dist = _timed(lambda: geodesic_distances(graph, src), 3)
    err = max(abs(dist[i, j] - nx_rows[i][j]) for i in range(n_nx) for j in range(0, n_geo, 97))
    row("geodesics: 100 sources, k=10", n_geo, t_ours, t_nx * 100 / n_nx, f"networkx ({n_nx} src, scaled)",
        f"target < 2 s; max |diff| {err:.1e}", ref_cpu=c_nx * 100 / n_nx)

    # Scale rows.
    sizes = [2000, 5000] if args.quick else [5000, 20000, args.max_n]
    for n in sizes:
        w = _walk(n)
        t_g, g = _timed(lambda: TokenGraph.from_points(w, k=10))
        row("TokenGraph.from_points k=10 d=3 (walk)", n, t_g, note=f"{g.n_edges} edges")
        x = _sphere(n, seed=1)
        t_d, _ = _timed(lambda: geodesic_distances(g, np.arange(100)))
        row("geodesic_distances 100 sources", n, t_d)
        t_l, lap = _timed(lambda: laplacian(x, k=30))
        row("laplacian (diffusion a=1, k=30)", n, t_l, note=f"nnz {lap.stiffness.nnz}")
        t_s, (vals, _) = _timed(lambda: laplacian_spectrum(lap, 9))
        row("laplacian_spectrum 9 eigs (shift-inv.)", n, t_s, note="eigs " + " ".join(f"{v:.2f}" for v in vals[1:9:3]))
        t_f, _ = _timed(lambda: forman_ricci(g))
        row("forman_ricci", n, t_f, note=f"{g.n_edges / t_f:.2e} edges/s")
        t_o, kap = _timed(lambda: ollivier_ricci(g, 0.5))
        row("ollivier_ricci alpha=0.5", n, t_o, note=f"{g.n_edges / t_o:.0f} edges/s")
        rho = torch.rand(n, dtype=torch.float64) * 4
        t_r, res = _timed(lambda: resolution_flow(lap, rho, r_min=0.1, lam=0.01, mu=1.0, tol=1e-6))
        row("resolution_flow", n, t_r, note=f"{len(res.energy) - 1} steps, converged={res.converged}")
        print(f"  peak RSS so far: {_peak_rss_gib():.2f} GiB", flush=True)
    rows.append({"benchmark": "peak resident memory", "n": sizes[-1], "peak_rss_gib": round(_peak_rss_gib(), 3)})
    print(f"peak resident memory: {_peak_rss_gib():.2f} GiB")
    if args.json:
        atomic_write_json(args.json, {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                      "load_average_start": load, "rows": rows})


if __name__ == "__main__":
    main()
