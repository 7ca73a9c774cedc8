"""The comparison sweep (:func:`sweep`): full resolution, then uniform, binary and adaptive at each budget
(same seed and data), with its table (:func:`table`) and the figure accuracy vs scan cost (:func:`figure`).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from tiling.train.storage import RunDirectory, atomic_write_bytes

from .loop import train
from .options import SyntheticOptions
from .rundir import CHECKPOINT, check_run_dir

__all__ = ["SWEEP_OWNED", "TITLES", "sweep", "table", "figure"]

#: the sweep's own files in its --out (each configuration is a run folder of its own)
SWEEP_OWNED = ("summary.json", "summary.md")
TITLES = {"copy": "Selective burst copying, context {L}", "repeat": "Periodic bursts (recall at a lag), context {L}"}


def configurations(opts: SyntheticOptions) -> list[tuple[str, SyntheticOptions]]:
    """The sweep's runs, named: the base run (with ``--base-steps``), ``full``, then each policy at each budget.

    Each is checked as it is made (its options, its plan); without ``--base-steps`` every run starts from
    ``--init-from`` (if any), with it from the base run's checkpoint."""
    policies = ("uniform", "binary", "adaptive") + (("adaptive-nc",) if opts.with_non_causal else ())
    out = Path(opts.out)
    runs = []
    init = opts.init_from
    if opts.base_steps > 0:
        base = opts.replace(policy="uniform", budget=1.0, out=str(out / "base"), steps=opts.base_steps, resume=None,
                            lr=opts.lr if opts.base_lr is None else opts.base_lr)
        runs.append(("base", base))
        init = str(out / "base" / CHECKPOINT)
    for name, policy, budget in [("full", "uniform", 1.0)] + [(f"{p}@{c:g}", p, c) for c in opts.budgets
                                                               for p in policies]:
        runs.append((name, opts.replace(policy=policy.removesuffix("-nc"), budget=budget,
                                        out=str(out / name.replace("@", "_")), non_causal=policy.endswith("-nc"),
                                        resume=None, init_from=init)))
    return runs


def sweep(opts: SyntheticOptions) -> list[dict]:
    """Full resolution, then uniform, binary and adaptive at each budget; same seed and data.

    Every configuration's options and run folder are checked before the first one trains, and the
    sweep's folder is locked for the whole sweep. Writes ``summary.json`` and ``summary.md`` into
    ``--out``, the figure into ``--figure`` (if given), prints each run's summary as a JSON line and
    the table.

    Returns
    -------
    One summary per configuration (``name`` and ``policy`` added), the base run's left out.
    """
    runs = configurations(opts)
    for _, run in runs:  # refuse before the first run trains, not after hours
        check_run_dir(run)
    rows = []
    with RunDirectory(opts.out, overwrite=opts.overwrite, owned=SWEEP_OWNED, name="--out") as top:
        for name, run in runs:
            summary = train(run)
            if name == "base":
                print(json.dumps({"base": summary}), flush=True)
                continue
            summary["name"], summary["policy"] = name, "adaptive-nc" if run.non_causal else run.policy
            rows.append(summary)
            print(json.dumps(summary), flush=True)
        top.write_bytes("summary.json", json.dumps(rows, indent=1).encode())
        top.write_bytes("summary.md", table(rows).encode())
        top.result_written()
    if opts.figure is not None:
        figure(rows, Path(opts.figure), TITLES[opts.task].format(L=opts.context_len))
    print(table(rows))
    return rows


def table(rows: list[dict]) -> str:
    """The sweep's rows as a Markdown table (the columns of docs/benchmarks.md; early/late answers on the repeat task)."""
    split = all("accuracy_early" in r for r in rows)  # repeat task: accuracy early / late in the burst
    extra = " early answers | later answers |" if split else ""
    lines = ["| run | budget | mean R | accuracy |" + extra + " answer loss | deviation from R=1 | recurrence cost | "
             "scan cost (all) | block cost | IFQ | CER | AE |",
             "|---|---|---|---|" + ("---|---|" if split else "") + "---|---|---|---|---|---|---|---|"]
    for r in rows:
        cols = f" {100 * r['accuracy_early']:.1f}% | {100 * r['accuracy_late']:.1f}% |" if split else ""
        lines.append(
            f"| {r['name']} | {r['budget']:g} | {r['resolution']:.3f} | {100 * r['accuracy']:.1f}% |{cols} {r['loss']:.3f} | "
            f"{r['deviation']:.3f} | {r['recurrence_cost']:.3f} | {r['scan_cost']:.3f} | {r.get('block_cost', float('nan')):.3f} | "
            f"{r.get('ifq', float('nan')):.3f} | "
            f"{r.get('cer', float('nan')):.2f} | {r.get('ae', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path, title: str = "") -> None:
    """Answer accuracy against the scan's recurrence cost, one line per policy and the full-resolution
    accuracy as a horizontal line; written atomically to ``path`` (its suffix is the format)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"uniform": "s--", "binary": "^:", "adaptive": "o-", "adaptive-nc": "x-."}
    for pol, st in styles.items():
        pts = sorted((r["recurrence_cost"], 100 * r["accuracy"]) for r in rows if r["policy"] == pol and r["name"] != "full")
        if pts:
            ax.plot(*zip(*pts), st, label=pol)
    full = [r for r in rows if r["name"] == "full"]
    if full:
        ax.axhline(100 * full[0]["accuracy"], color="k", lw=1, label="full resolution")
    ax.set_xlabel("scan recurrence cost (multiply-adds, relative to full resolution)")
    ax.set_ylabel("answer accuracy (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
