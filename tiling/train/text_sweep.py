"""The earlier real-text table (``infogeo train --sweep --table tiled``): byte-level TiledLM configurations
compared at equal budgets, bits per byte against compute and wall time (``docs/results/text_lm.json``,
``docs/figures/training/``; ``docs/training.md``, "Real text").

Rows: at budget 0.35 every configuration (``full`` is trained at budget 1) with seeds 0 and 1; then at 0.5
and 0.25 ``uniform`` and the best adaptive configuration (lowest mean test bpb at 0.35 among ``adaptive``,
``router``, ``scan-adaptive``) with seed 0, and the seed-0 full-resolution model evaluated at those budgets
(no training: tiling after the fact). ``--shard i/n`` runs every n-th row, so n processes (one thread each)
share a machine; each rewrites the table from all finished rows.

Every function takes the run's settings (:func:`tiling.train.text_cli.settings`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from tiling.train import sweep as hourglass_sweep
from tiling.train.sweep_figures import save_figure
from tiling.train.storage import atomic_write_json
from tiling.train.text_run import TOKEN_LEVEL, evaluate_only, load_data, outer_layers, row_dir, row_name, train
from tiling.train.textmodel import export_bundled
from tiling.train.trainer import RunError

ADAPTIVE = ("adaptive", "router", "scan-adaptive")


def phase1_rows(args) -> list[dict]:
    """The first phase: every configuration at budget 0.35 (``full`` at 1), seeds 0 and 1."""
    rows = []
    for seed in (0, 1):
        for config in ("full", "uniform", "adaptive", "router", "scan-adaptive"):
            b = 1.0 if config == "full" else 0.35
            rows.append({"config": config, "budget": b, "seed": seed,
                         "full_layers": outer_layers(config, args.full_layers)})
    return rows


def best_adaptive(done: dict[str, dict], args) -> str | None:
    """The adaptive configuration with the lowest mean test bpb at 0.35 (None until all are done)."""
    means = {}
    for c in ADAPTIVE:
        vals = [done[n]["test_bpb"] for n in (row_name(c, 0.35, s, args.full_layers) for s in (0, 1)) if n in done]
        if len(vals) < 2:
            return None
        means[c] = statistics.fmean(vals)
    return min(means, key=means.get)


def phase2_rows(best: str, args) -> list[dict]:
    """The second phase: ``uniform`` and ``best`` at 0.5 and 0.25, and the full model evaluated there."""
    rows = []
    for b in (0.5, 0.25):
        rows.append({"config": "full", "budget": b, "seed": 0, "full_layers": (), "evaluate_only": True})
        for c in ("uniform", best):
            rows.append({"config": c, "budget": b, "seed": 0, "full_layers": outer_layers(c, args.full_layers)})
    if args.ablation:  # the other choice of full-resolution outer layers
        fl = () if tuple(args.full_layers) else (0, -1)
        rows.append({"config": best, "budget": 0.35, "seed": 0, "full_layers": fl})
    return rows


def spec_name(spec: dict) -> str:
    """The row name of a row's spec."""
    return row_name(spec["config"], spec["budget"], spec["seed"], spec["full_layers"])


finished_rows = hourglass_sweep.finished  # one reader of a sweep folder's row.json files


def run_spec(spec: dict, args, data: dict, done: dict) -> dict:
    """Train (or evaluate) one row into its folder under ``args.out``; its row."""
    name = spec_name(spec)
    out = row_dir(args.out, name)
    if spec.get("evaluate_only"):
        src = done[row_name("full", 1.0, spec["seed"], spec["full_layers"])]
        return evaluate_only(src, spec["budget"], out, data, args)
    run = argparse.Namespace(**vars(args))
    run.config, run.budget, run.seed, run.full_layers, run.out = (spec["config"], spec["budget"], spec["seed"],
                                                                 tuple(spec["full_layers"]), out)
    return train(run, data)


def sweep(args) -> dict:
    """Run this shard's rows (finished ones skipped with ``--resume``), then the table and the figures."""
    args.out.mkdir(parents=True, exist_ok=True)
    done = finished_rows(args.out)
    if done and not args.resume:
        raise RunError(f"{args.out} already holds {len(done)} finished rows; pass --resume to skip them "
                         f"or choose another --out")
    if args.results.exists() and not args.resume:
        raise RunError(f"{args.results} exists; pass --resume to rewrite it from the finished rows")
    data = load_data(args)
    mine = lambda i: i % args.shard_count == args.shard_index  # noqa: E731

    def run_list(specs: list[dict]) -> None:
        for i, spec in enumerate(specs):
            name = spec_name(spec)
            if not mine(i) or (args.only is not None and name not in args.only):
                continue
            if name in done:
                print(f"[sweep] {name}: finished, skipped", flush=True)
                continue
            print(f"[sweep] {name}: running", flush=True)
            done[name] = run_spec(spec, args, data, done)
            write_results(done, args)

    specs1 = phase1_rows(args)
    run_list(specs1)
    deadline = time.time() + 60 * args.wait_minutes
    best = best_adaptive(done, args)
    while best is None and args.shard_count > 1 and time.time() < deadline and args.only is None:
        time.sleep(30)
        done.update(finished_rows(args.out))
        best = best_adaptive(done, args)
    done.update(finished_rows(args.out))
    best = best_adaptive(done, args)
    if best is None:
        missing = [spec_name(s) for s in specs1 if spec_name(s) not in done]
        print(f"[sweep] second phase not started: budget-0.35 rows missing: {', '.join(missing)}", flush=True)
    else:
        specs2 = phase2_rows(best, args)
        if row_name("full", 1.0, 0, args.full_layers) not in done:  # the model the evaluated rows tile
            print("[sweep] full@1/s0 not finished: its evaluations at 0.5 and 0.25 wait", flush=True)
            specs2 = [s for s in specs2 if not s.get("evaluate_only")]
        run_list(specs2)
        if args.bundle:
            bundle(done, best, args)
    done.update(finished_rows(args.out))
    return write_results(done, args)


def bundle(done: dict, best: str, args) -> None:
    """Copy the seed-0 full and best adaptive models at 0.35 to the bundled checkpoints."""
    for name, row in (("full", done.get(row_name("full", 1.0, 0, args.full_layers))),
                      ("adaptive", done.get(row_name(best, 0.35, 0, args.full_layers)))):
        if row is None:
            print(f"[bundle] {name}: its row is not finished", flush=True)
            continue
        path = export_bundled(row["checkpoint"], name, info={"row": row["row"], "test_bpb": row["test_bpb"]})
        print(f"[bundle] {name}: {row['row']} -> {path} ({path.stat().st_size / 2**20:.1f} MiB)", flush=True)


# ----------------------------------------------------------------------------- table, goals, figures
def _interp(curve: list[dict], x: float, key: str = "bytes") -> float | None:
    pts = [(c[key], c["bpb"]) for c in curve]
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


#: the command that times the trained rows' speed goals (``scripts/bench_text.py``'s trained-rows mode)
SPEED_BENCH = "python scripts/bench_text.py --runs <the sweep's --out> --json <path>"
#: the speed goals: × the full model at budget 1, for the best adaptive configuration at budget 0.25
SPEED_GOALS = {"prefill": 2.5, "decode": 2.0}


def goals(rows: list[dict], best: str | None, full_layers=()) -> dict:
    """The issue's goals, checked on the rows present (None where a row is missing), over the rows of
    the sweep's ``--full-layers`` choice (rows of the other choice stay in the table, not in the goals).
    The speed goals name the bench that times them (:data:`SPEED_BENCH`): the rows' own rates, measured
    beside their training in turns, are the table's columns, never divided into a ratio."""
    def chosen(r: dict) -> bool:  # rows store resolved indices ([0, 3]); --full-layers may count from the end
        want = {k % r["n_layers"] for k in outer_layers(r["configuration"], full_layers)}
        return set(r.get("full_resolution_layers", ())) == want

    by = {}
    for r in rows:
        if chosen(r):
            by.setdefault((r["configuration"], r["budget"], r.get("kind")), []).append(r)

    def mean(cfg, b, key, kind="trained"):
        vals = [r[key] for r in by.get((cfg, b, kind), []) if r.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    out: dict = {"best_adaptive": best}
    full = by.get(("full", 1.0, "trained"), [])
    if best is None or not full:
        return out
    fb, ab, ub = mean("full", 1.0, "test_bpb"), mean(best, 0.35, "test_bpb"), mean("uniform", 0.35, "test_bpb")
    # equal training bytes: the adaptive validation curve at full resolution's final training bytes
    eq = []
    for f in full:
        for a in by.get((best, 0.35, "trained"), []):
            if a["seed"] == f["seed"]:
                v = _interp(a["validation_curve"], f["train_bytes"])
                if v is not None:
                    eq.append((v, f["validation_curve"][-1]["bpb"]))
    out["equal_bytes_val_bpb"] = None if not eq else {"adaptive": statistics.fmean(v for v, _ in eq),
                                                      "full": statistics.fmean(w for _, w in eq)}
    if eq:
        a_eq, f_eq = out["equal_bytes_val_bpb"]["adaptive"], out["equal_bytes_val_bpb"]["full"]
        out["within_3pct_of_full_at_equal_bytes"] = a_eq <= 1.03 * f_eq
    if ab is not None and ub is not None:
        out["test_bpb_at_0.35"] = {"full": fb, best: ab, "uniform": ub}
        out["2pct_better_than_uniform"] = ab <= 0.98 * ub
    if ab is not None and fb is not None:
        out["beats_full_at_equal_wall_time"] = ab < fb
    # the speed goals are not divided here: each row measured its rates at the end of its own training, in its own
    # process and at its own time (a sweep runs shards side by side), so two rows' rates are not one measurement;
    # the bench times the trained rows interleaved in one process
    out["speed"] = {"timed_by": SPEED_BENCH, "goals_x_full_at_0.25": dict(SPEED_GOALS)}
    return out


def write_results(done: dict, args) -> dict:
    """Write the table (``args.results``) and the figures (``args.figures``) of the finished rows; the table."""
    rows = sorted(done.values(), key=lambda r: (r["budget"] != 1.0, -r["budget"], r["configuration"], r["seed"],
                                                r["row"]))
    best = best_adaptive(done, args)
    table = {
        "description": "Byte-level TiledLM on the Python 3.11 documentation (python3.11-doc, split by document); "
                       "infogeo train --sweep --table tiled. test_bpb on the test split; flops_per_byte = 2 x "
                       "multiply-adds of the layers as run (tiling.ops.layer_cost, per row) plus the tied head; speeds "
                       "on one thread, one row.",
        "command": "infogeo train --sweep --table tiled --resume " + " ".join(_cmd_args(args)),
        "goals": goals(rows, best, args.full_layers),
        "rows": rows,
    }
    atomic_write_json(args.results, table)
    try:
        figures(rows, args.figures)
    except Exception as e:  # a figure must never lose the table
        print(f"warning: figures not written: {e!r}", file=sys.stderr)
    print(format_table(rows), flush=True)
    return table


def _cmd_args(args) -> list[str]:
    out = [f"--out {args.out}", f"--max-minutes {args.max_minutes:g}", f"--clock {args.clock}", f"--context {args.context}",
           f"--batch-size {args.batch_size}", f"--d-model {args.d_model}", f"--n-layers {args.n_layers}"]
    if args.full_layers:
        out.append("--full-layers " + ",".join(map(str, args.full_layers)))
    return out


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table; ``× full`` columns divide by the seed-0 full-resolution row."""
    full = next((r for r in rows if r["row"] == "full@1/s0"), None)
    lines = ["| row | kind | test bpb | mean R | train bytes | train s | MFLOPs/byte | FLOPs × full | prefill B/s "
             "| decode B/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dec = "—" if r.get("decode_bytes_per_s") is None else f"{r['decode_bytes_per_s']:.0f}"
        pre = "—" if r.get("prefill_bytes_per_s") is None else f"{r['prefill_bytes_per_s']:.0f}"
        rel = "—" if full is None else f"{r['flops_per_byte'] / full['flops_per_byte']:.3f}"
        lines.append(f"| {r['row']} | {r['kind']} | {r['test_bpb']:.4f} | {r['test_mean_resolution']:.3f} | "
                     f"{r['train_bytes']} | {r['train_seconds']:.0f} | {r['flops_per_byte'] / 1e6:.3f} | {rel} "
                     f"| {pre} | {dec} |")
    return "\n".join(lines) + "\n"


_COLORS = {"full": "k", "uniform": "tab:blue", "adaptive": "tab:red", "router": "tab:green",
           "scan-adaptive": "tab:purple"}
_MARKERS = {1.0: "*", 0.5: "s", 0.35: "o", 0.25: "^"}


def _style(r: dict, seen: set) -> dict:
    """A row's colour, marker, legend label (the first of its configuration and outer layers, e.g.
    ``uniform+ends``) and alpha (faint: a block-scope row without full-resolution outer layers)."""
    name = r["row"].split("@")[0]
    faint = r["configuration"] not in TOKEN_LEVEL and not r.get("full_resolution_layers")
    style = {"color": _COLORS.get(r["configuration"], "gray"), "marker": _MARKERS.get(r["budget"], "x"),
             "label": None if name in seen else name, "alpha": 0.4 if faint else 1.0}
    seen.add(name)
    return style


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def figures(rows: list[dict], directory: Path) -> None:
    """bpb against FLOPs per byte and against training time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    seen: set = set()
    for r in rows:
        ax.scatter(r["flops_per_byte"] / 1e6, r["test_bpb"], facecolors="none" if r["kind"] == "evaluated" else None,
                   **_style(r, seen))
    _finish(fig, ax, directory / "text_lm_bpb_vs_flops.png",
            "MFLOPs per byte (2 × multiply-adds as run, layer_cost + head)", "test bits per byte", "Byte-level TiledLM on the Python docs: bpb vs compute\n(marker: ★ 1, ■ 0.5, "
            "● 0.35, ▲ 0.25; hollow: tiled after training; faint: every layer tiled)")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    seen = set()
    for r in (r for r in rows if r["kind"] == "trained"):
        cur = r["validation_curve"]
        ax.plot([p["train_seconds"] / 60 for p in cur], [p["bpb"] for p in cur],
                ls="-" if r["budget"] in (1.0, 0.35) else ":", ms=3, **_style(r, seen))
    _finish(fig, ax, directory / "text_lm_bpb_vs_time.png",
            "training time (minutes on one thread: CPU time, or wall time for rows without a clock)",
            "validation bits per byte", "bpb vs training wall time (solid: budget 1 / 0.35; dotted: 0.5, 0.25; faint: "
            "every layer tiled)")
