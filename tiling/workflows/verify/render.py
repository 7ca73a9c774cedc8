"""Rendering of the theorem report in one place: number formatting, tables, figures, ``theorems.md``."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

__all__ = ["fmt", "table", "figure_path", "Figures", "md_table", "key_number", "anchor", "render_markdown"]

#: rows of a table shown in ``theorems.md`` (every row is in ``theorems.json``)
MAX_MD_ROWS = 48


def fmt(v, digits: int = 3) -> str:
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


def table(title: str, columns: list[str], rows: list[list]) -> dict:
    """A report table as ``theorems.json`` holds it."""
    return {"title": title, "columns": columns, "rows": rows}


def figure_path(name: str) -> str:
    """Path of figure ``name`` relative to the output folder (known before the figure is drawn)."""
    return f"figures/theorems/{name}.png"


class Figures:
    """Saves matplotlib figures (Agg) under ``<out>/figures/theorems`` and returns their relative paths.

    Parameters
    ----------
    out_dir : Path
        The report's output folder.
    """

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg")  # no display: the report is written by batch jobs
        self.out_dir = Path(out_dir)
        self.folder = self.out_dir / "figures" / "theorems"
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, fig, name: str) -> str:
        """Write ``fig`` as ``<name>.png``, close it and return :func:`figure_path` of ``name``."""
        import matplotlib.pyplot as plt

        from tiling.train.storage import atomic_write_bytes

        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, dpi=110, format="png")
        plt.close(fig)
        atomic_write_bytes(self.out_dir / figure_path(name), buf.getvalue(), root=self.out_dir)
        return figure_path(name)


def md_table(tb: dict) -> str:
    """A table as markdown (the first :data:`MAX_MD_ROWS` rows)."""
    rows = tb["rows"]
    head = f"**{tb['title']}**\n\n| " + " | ".join(tb["columns"]) + " |\n|" + "---|" * len(tb["columns"]) + "\n"
    body = "".join("| " + " | ".join(fmt(v).replace("|", "\\|") for v in r) + " |\n" for r in rows[:MAX_MD_ROWS])
    more = (f"\n*{len(rows) - MAX_MD_ROWS} more rows in `theorems.json`.*\n" if len(rows) > MAX_MD_ROWS else "")
    return head + body + more


def key_number(res: dict) -> str:
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
        lit = " and ".join(f"{v['terms']['IFQ']:.3g}" for k, v in c.items() if k.startswith("IFQ") and v["terms"])
        return (f"literal IFQ = {lit or 'in [0, 1] (no counterexample found)'}; normalised: "
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


def anchor(res: dict) -> str:
    """The markdown anchor of a theorem's section (GitHub's rule on its title)."""
    title = res["statement"][0].lower()
    keep = "".join(ch for ch in title if ch.isalnum() or ch in " -")
    return keep.replace(" ", "-")


def render_markdown(results: dict) -> str:
    """``theorems.md`` from the results of ``run_verify`` (statement, test, tables, figures, verdict)."""
    meta = results["meta"]
    cmd = "infogeo verify" + (" --quick" if meta["quick"] else "") + f" --out {meta['out_arg']} --seed {meta['seed']}"
    out = [
        "<!-- GENERATED FILE: written by `infogeo verify` (tiling/workflows/verify/). Do not edit by hand; "
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
        key = key_number(res).replace("|", "\\|")
        out.append(f"| [{res['statement'][0].split(',')[0]}](#{anchor(res)}) | **{res['verdict']}** | {key} |")
    out.append("")
    for tid, res in results["theorems"].items():
        title, quote = res["statement"]
        out += [f"## {title}", "", f"> {quote}", "", f"**What was tested.** {res['tested']}", "",
                f"**Results.** (experiment time {meta['seconds'][tid]:.1f} s)", ""]
        for tb in res["tables"]:
            out += [md_table(tb), ""]
        for fp in res["figures"]:
            out += [f"![{title}]({fp})", ""]
        out += [f"**Verdict: {res['verdict']}.** {res['verdict_text']}", ""]
    return "\n".join(out)
