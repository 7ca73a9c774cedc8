"""Benchmark the graph discretisation (infogeo.graph/geodesic/laplacian/curvature/flow).

Prints one table of sizes, timings and ratios against references measured in the same run:

* kNN: our search (``infogeo.graph.knn``, cKDTree in low dimension, blocked ``torch.cdist`` in
  high dimension) against the naive dense ``scipy.spatial.distance.cdist`` + ``argpartition``;
* geodesics: ``geodesic_distances`` (scipy csgraph Dijkstra) from 100 sources on a 20,000-point
  kNN graph (k = 10; the issue's target is < 2 s) against networkx's
  ``single_source_dijkstra_path_length`` (timed on fewer sources and scaled per source);
* scale: graph, geodesics, Laplacian + spectrum, Ollivier–Ricci, Forman–Ricci and the resolution
  flow on up to 50,000 points, with the peak resident memory.

Usage: ``python scripts/bench_geometry.py [--json PATH] [--max-n 50000] [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
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


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _sphere(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def _naive_knn(x: np.ndarray, k: int) -> np.ndarray:
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.argpartition(d, k, axis=1)[:, :k]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=str, default=None, help="write the rows to this JSON file")
    ap.add_argument("--max-n", type=int, default=50000, help="largest size of the scale rows")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[dict] = []

    def row(name: str, n: int, ours: float, ref: float | None = None, ref_name: str = "", note: str = "") -> None:
        r = {
            "benchmark": name,
            "n": n,
            "ours_s": round(ours, 4),
            "reference": ref_name,
            "reference_s": None if ref is None else round(ref, 4),
            "speedup": None if ref is None else round(ref / ours, 2),
            "note": note,
        }
        rows.append(r)
        sp = "" if ref is None else f"{ref / ours:8.1f}x"
        print(f"{name:<38} {n:>7} {ours:>9.3f} {ref_name:<30} {'' if ref is None else f'{ref:9.3f}':>9} {sp:>9}  {note}", flush=True)

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"python {platform.python_version()}")
    print(f"{'benchmark':<38} {'n':>7} {'ours (s)':>9} {'reference':<30} {'ref (s)':>9} {'ratio':>9}  note")

    # kNN against the naive dense distance matrix.
    n_knn = 2000 if args.quick else 5000
    for d in (3, 64):
        x = torch.randn(n_knn, d, dtype=torch.float64)
        method = "kdtree" if d <= 16 else "blocked"
        t_ours, (idx, _) = _timed(lambda: knn(x, 10, method=method), 3)
        t_ref, ref_idx = _timed(lambda: _naive_knn(x.numpy(), 10), 1)
        same = float(np.mean(np.sort(idx, 1) == np.sort(ref_idx, 1)))
        row(f"kNN k=10 d={d} ({method})", n_knn, t_ours, t_ref, "scipy cdist + argpartition", f"same neighbours {same:.4f}")

    # Geodesics: 100 sources on a 20k-point kNN graph, against networkx.
    n_geo = 5000 if args.quick else 20000
    graph = TokenGraph.from_points(_sphere(n_geo), k=10)
    src = np.arange(100)
    t_ours, dist = _timed(lambda: geodesic_distances(graph, src), 3)
    nxg = graph.to_networkx()
    n_nx = 5
    t_nx, nx_rows = _timed(lambda: [nx.single_source_dijkstra_path_length(nxg, int(s)) for s in src[:n_nx]], 1)
    err = max(abs(dist[i, j] - nx_rows[i][j]) for i in range(n_nx) for j in range(0, n_geo, 97))
    row("geodesics: 100 sources, k=10", n_geo, t_ours, t_nx * 100 / n_nx, f"networkx ({n_nx} src, scaled)",
        f"target < 2 s; max |diff| {err:.1e}")

    # Scale rows.
    sizes = [2000, 5000] if args.quick else [5000, 20000, args.max_n]
    for n in sizes:
        x = _sphere(n, seed=1)
        t_g, g = _timed(lambda: TokenGraph.from_points(x, k=10))
        row("TokenGraph.from_points k=10 d=3", n, t_g, note=f"{g.n_edges} edges")
        t_d, _ = _timed(lambda: geodesic_distances(g, np.arange(100)))
        row("geodesic_distances 100 sources", n, t_d)
        t_l, lap = _timed(lambda: laplacian(x, k=30))
        row("laplacian (diffusion a=1, k=30)", n, t_l, note=f"nnz {lap.stiffness.nnz}")
        t_s, (vals, _) = _timed(lambda: laplacian_spectrum(lap, 9))
        row("laplacian_spectrum 9 eigs (LOBPCG)", n, t_s, note="eigs " + " ".join(f"{v:.2f}" for v in vals[1:9:3]))
        t_f, _ = _timed(lambda: forman_ricci(g))
        row("forman_ricci", n, t_f, note=f"{g.n_edges / t_f:.2e} edges/s")
        t_o, kap = _timed(lambda: ollivier_ricci(g, 0.5))
        row("ollivier_ricci alpha=0.5", n, t_o, note=f"{g.n_edges / t_o:.0f} edges/s")
        rho = torch.rand(n, dtype=torch.float64) * 4
        t_r, res = _timed(lambda: resolution_flow(lap, rho, r_min=0.1, lam=0.01, mu=1.0, tol=1e-6))
        row("resolution_flow", n, t_r, note=f"{len(res.energy) - 1} steps, converged={res.converged}")
        print(f"  peak RSS so far: {_peak_rss_gib():.2f} GiB", flush=True)
    rows.append({"benchmark": "peak RSS (GiB)", "n": sizes[-1], "ours_s": round(_peak_rss_gib(), 3)})
    print(f"peak resident memory: {_peak_rss_gib():.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
