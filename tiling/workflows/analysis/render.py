"""Pages and figures of an ``infogeo analyse`` report: the plain-text table, Markdown, HTML and the PNG figures.

Every function reads a :class:`~tiling.workflows.analysis.report.Report` (its JSON document, its
arrays for the geodesic matrix, its summary rows and findings) and computes no geometry. The
module imports only :mod:`.report`; :func:`tiling.workflows.analysis.writer.save_report` writes
what it renders into a report's folder.

A report is read without the source: the per-layer table's columns (:data:`COLUMNS`) are each
defined once on the page, with a link to their section of ``docs/analysis.md``; a column that
cannot vary (the mean resolution, the budget by construction) is replaced by what does (the spread
of ``R_i``), and :func:`table_notes` says so and why the FLOPs saved differ from the budget; every
figure has a title and a caption of one or two sentences (:func:`captions`).
"""
from __future__ import annotations

import base64
import html as html_lib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .report import Report

__all__ = ["COLUMNS", "DOCS", "DRAWERS", "SECTIONS", "captions", "doc_link", "draw_figures", "html", "markdown",
           "summary_table", "table", "table_notes"]


# --------------------------------------------------------------------------------------------
# what the numbers mean: the table's columns, their definitions, the figures' captions
# --------------------------------------------------------------------------------------------
#: the page the report's definitions link to, and the section of each definition (its heading there)
DOCS = "docs/analysis.md"
#: name → (the heading in :data:`DOCS`, the link's text)
SECTIONS = {
    "attention": ("Per layer ℓ and head h: the Fisher–Rao geometry of attention rows (seed 000 §3.1)",
                  "attention geometry"),
    "curvature": ("Per layer ℓ: curvature on the head-averaged rows", "curvature"),
    "pullback": ("Per layer ℓ: the pulled-back Fisher metric of the hidden states", "pulled-back metric"),
    "tiling": ("Per layer ℓ: the tiling plan (seed 001 §3.2.2, seed 000 §3.2.1, §3.5.1)", "tiling plan"),
}


@dataclass(frozen=True)
class Column:
    """One column of the per-layer table: its header, its definition (stated once in the report,
    linked to ``section`` of :data:`DOCS`), and its text from a layer's entry of ``report.json``."""

    header: str
    definition: str
    section: str | None
    text: Callable[[dict], str]


def _spread(lr: dict) -> str:
    R = np.asarray(lr["tiling"]["resolution"], dtype=np.float64)
    return f"{R.min():.2f}–{R.max():.2f} (σ {R.std():.2f})"


COLUMNS = (
    Column("layer", "", None, lambda lr: str(lr["layer"])),
    Column("mean density ρ",
           "mean over the tokens of the density the tiling policy read: the pulled-back Fisher density of the "
           "hidden states, ρₜ = (xₜ₊₁ − xₜ)ᵀ G(xₜ) (xₜ₊₁ − xₜ), where G is the Fisher metric of the "
           "layer's attention pulled back to the hidden state (models without a pull-back, e.g. Mamba, use the "
           "attention density instead)", "pullback",
           lambda lr: f"{np.mean(lr['tiling']['token_density']):.4g}"),
    Column("attention density",
           "mean over heads and tokens of ρₜ = d_FR(pₜ, pₜ₊₁)², the squared Fisher–Rao distance between "
           "consecutive rows of an attention map (how fast what a token attends to changes along the text)",
           "attention", lambda lr: f"{np.mean([h['density_mean'] for h in lr['attention']['heads']]):.4g}"),
    Column("mean curvature κ",
           "mean Ollivier–Ricci curvature κ(i, j) = 1 − W₁(mᵢ, mⱼ)/d(i, j) over the edges of the token graph "
           "of the head-averaged attention rows: > 0 where neighbourhoods overlap (clusters), < 0 on bridges",
           "curvature", lambda lr: f"{lr['head_mean']['curvature_mean']:+.4f}"),
    Column("Rᵢ range (σ)",
           "the smallest and largest resolution Rᵢ ∈ [R_min, 1] the policy gave a tile (the fraction of its "
           "recurrence steps kept), and their standard deviation over the tiles", "tiling", _spread),
    Column("FLOPs saved",
           "1 − FLOPs(plan) / FLOPs(every Rᵢ = 1) of a Mamba selective scan of the model's width (state size "
           "N), exponentials and multiply-adds counted exactly by tiling.ops.scan_cost", "tiling",
           lambda lr: f"{lr['tiling']['cost_saved']:.1%}"),
    Column("recurrence saved",
           "the same saving for the scan's sequential recurrence alone (its segments × state components), the "
           "part the resolution shrinks", "tiling", lambda lr: f"{lr['tiling']['cost_saved_recurrence']:.1%}"),
)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: link syntax and punctuation dropped, spaces → hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def doc_link(section: str) -> str:
    """The address of ``section`` of :data:`DOCS`: the file in this checkout when it exists, else the
    path relative to the repository (a report may be read where the repository is not)."""
    path = Path(__file__).resolve().parents[3] / DOCS
    return f"{path.as_uri() if path.is_file() else DOCS}#{_slug(SECTIONS[section][0])}"


def table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The per-layer table: headers and one row of texts per analysed layer (:data:`COLUMNS`)."""
    return [c.header for c in COLUMNS], [[c.text(lr) for c in COLUMNS] for lr in report.data["layers"]]


def summary_table(report: Report) -> str:
    """The per-layer table as plain text (``infogeo analyse --summary``): :func:`table`'s columns, right-aligned."""
    headers, rows = table(report)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in [headers, *rows])


def table_notes(report: Report) -> list[str]:
    """What the table leaves out and why its numbers are what they are (one sentence each)."""
    d = report.data
    c = d["params"]["budget"]
    saved = np.mean([lr["tiling"]["cost_saved"] for lr in d["layers"]])
    rec = np.mean([lr["tiling"]["cost_saved_recurrence"] for lr in d["layers"]])
    return [
        f"Every layer's mean resolution R̄ is the budget {c:g} by construction (the analysis plans the whole text "
        "at once and meets the budget exactly), so the table shows how the Rᵢ spread instead.",
        f"Why the FLOPs saved ({saved:.0%} on average) fall short of 1 − budget = {1 - c:.0%}: the budget is the "
        "fraction of recurrence steps kept, but the input sums and the read-out Cₜ·hₜ + D·uₜ run on every token "
        f"at any resolution and each tile keeps ⌈Rᵢ·nᵢ⌉ ≥ 1 segments (rounded up), so only the recurrence falls "
        f"close to the budget ({rec:.0%} saved).",
    ]


def _figure_titles(d: dict) -> dict[str, str]:
    sl, sh = d["show"]["layer"], d["show"]["head"]
    return {"density_heatmap": "Information density per token and layer",
            "head_density": "Attention density per head",
            "geodesic": f"Geodesic distances between the tokens (layer {sl}, head {sh})",
            "curvature": "Ollivier–Ricci curvature of the token graph",
            "spectrum": "Laplace–Beltrami spectrum of the token graph",
            "resolution_plan": "The tiling plan",
            "predictive": "Predictive density and surprisal",
            "layer_plans": "The TiledLM's own plan against the geometry's"}


def captions(report: Report) -> dict[str, str]:
    """One or two sentences per figure (every name of ``FIGURES`` and ``CAUSAL_FIGURES``)."""
    d = report.data
    pull = d["layers"][0]["tiling"]["density_source"] == "pullback"
    top = ("the pulled-back Fisher density of the hidden states, the density the tiling policy reads" if pull else
           "the attention density averaged over heads, which the tiling policy reads")
    lp = d.get("layer_plans") or {}
    return {
        "density_heatmap": f"Where the information is: each column is a token, each row a layer; top: {top}; "
                           "bottom: the attention density of the head-averaged rows. Bright cells are tokens at "
                           "which the representation changes fast (log colour scale).",
        "head_density": "The mean attention density of every head: bright heads change what they attend to from "
                        "token to token, dark heads attend nearly the same distribution throughout.",
        "geodesic": f"Shortest-path distance between every pair of tokens on the k-nearest-neighbour graph of the "
                    f"attention rows (k = {d['params']['k']}, Fisher–Rao edge lengths), for the head with the "
                    "largest density unless --show chose another. Dark blocks on the diagonal are runs of tokens "
                    "that attend alike.",
        "curvature": f"How the edges of each layer's token graph curve (Ollivier–Ricci, idleness α = "
                     f"{d['params']['curvature_alpha']:g}; red: the mean). Positive curvature marks clusters of "
                     "tokens attending alike, negative curvature the bridges between them.",
        "spectrum": "The smallest eigenvalues λᵢ of the Laplace–Beltrami operator of each layer's token graph "
                    "(solid: head-averaged graph; dashed: median over heads). A small λ₁, the spectral gap, "
                    "means the graph nearly splits into two clusters.",
        "resolution_plan": f"The resolution Rᵢ the policy gives each tile of {d['params']['tile_size']} tokens "
                           f"(bars; dashed: the budget {d['params']['budget']:g}, dotted: R_min), over the density "
                           "it read (black). Denser tiles get a higher R, sparser ones a lower R down to R_min, and "
                           "the mean stays at the budget.",
        "predictive": "The predictive density (squared Fisher–Rao step between consecutive next-token "
                      "distributions) and the surprisal of each token along the text; right: one against the "
                      "other, with their correlation.",
        "layer_plans": f"Per tiled layer, the resolution per tile the model chose itself (black) against the plans "
                       f"tiling makes from the predictive (purple) and the implicit-attention (green) densities at "
                       f"budget {lp.get('budget', d['params']['budget']):g}, with the bits per byte of each.",
    }


def _definitions(report: Report) -> list[tuple[str, str, str, str]]:
    """(quantity, definition, docs address, link text) for every column of the table, once."""
    return [(c.header, c.definition, doc_link(c.section), f"{DOCS} § {SECTIONS[c.section][1]}")
            for c in COLUMNS if c.definition]


# --------------------------------------------------------------------------------------------
# pages
# --------------------------------------------------------------------------------------------
def markdown(report: Report, figures: dict[str, Path] | None = None) -> str:
    """The findings, the per-layer table with its definitions, and the captioned figures as Markdown.

    Parameters
    ----------
    report : the :class:`~tiling.workflows.analysis.report.Report`.
    figures : ``{name: path}`` of the drawn figures (names relative to the page); None: no figures.

    Returns
    -------
    The Markdown page.
    """
    d = report.data
    headers, rows = table(report)
    lines = [f"# infogeo analysis: {d['name']}", "",
             f"Model `{d['model']['path'] or d['model']['type']}` · {d['text']['n_tokens']} tokens · "
             f"budget {d['params']['budget']:g} · tile size {d['params']['tile_size']} · "
             f"schema {d['schema']} v{d['schema_version']}", "", "## Findings", ""]
    lines += [f"- {s}" for s in report.findings()]
    lines += ["", "## Per layer", "", "| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""]
    for note in table_notes(report):
        lines += [note, ""]
    lines += ["### What the numbers mean", ""]
    lines += [f"- **{q}**: {text} ([{label}]({href}))" for q, text, href, label in _definitions(report)]
    if figures:
        titles, caps = _figure_titles(d), captions(report)
        lines += ["", "## Figures", ""]
        for key, p in figures.items():
            lines += [f"### {titles.get(key, key)}", "", f"![{titles.get(key, key)}]({Path(p).name})", "",
                      f"*{caps.get(key, '')}*", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


_STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.5em;line-height:1.45;color:#1d1d1f}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f4f4f6;vertical-align:bottom}td:first-child,th:first-child{text-align:center}
.note{color:#333;max-width:60em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35em 1em;max-width:62em}
dt{font-weight:600}dd{margin:0}
figure{margin:1.8em 0;padding:0}figure h3{margin:.2em 0 .4em}
img{max-width:100%;border:1px solid #eee}
figcaption{color:#333;max-width:60em;margin-top:.4em}
a{color:#0b57d0}"""


def html(report: Report, figures: dict[str, Path] | None = None) -> str:
    """A static page: findings, the per-layer table with its definitions, the captioned figures
    (embedded as data URIs, so the page is one self-contained file).

    Parameters
    ----------
    report : the :class:`~tiling.workflows.analysis.report.Report`.
    figures : ``{name: path}`` of the drawn figures; None: none.

    Returns
    -------
    The HTML page.
    """
    d = report.data
    esc = html_lib.escape
    headers, rows = table(report)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in table_notes(report))
    defs = "".join(f'<dt>{esc(q)}</dt><dd>{esc(text)} (<a href="{esc(href)}">{esc(label)}</a>)</dd>'
                   for q, text, href, label in _definitions(report))
    titles, caps = _figure_titles(d), captions(report)
    imgs = ""
    for key, p in (figures or {}).items():
        b64 = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        title = titles.get(key, key)
        imgs += (f'<figure id="{esc(key)}"><h3>{esc(title)}</h3><img alt="{esc(title)}" '
                 f'src="data:image/png;base64,{b64}"><figcaption>{esc(caps.get(key, ""))}</figcaption></figure>\n')
    items = "".join(f"<li>{esc(s)}</li>" for s in report.findings())
    schema = f"{d['schema']} v{d['schema_version']}"  # the document's own, as loaded or made
    figure_part = f"<h2>Figures</h2>{imgs}" if imgs else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>infogeo analysis: {esc(d['name'])}</title>
<style>{_STYLE}</style></head>
<body><h1>infogeo analysis: {esc(d['name'])}</h1>
<p class="meta">Model <code>{esc(str(d['model']['path'] or d['model']['type']))}</code> · {d['text']['n_tokens']} tokens ·
budget {d['params']['budget']:g} · tile size {d['params']['tile_size']} · schema {schema}</p>
<h2>Findings</h2><ul>{items}</ul>
<h2>Per layer</h2><table><tr>{head}</tr>{body}</table>{notes}
<h3>What the numbers mean</h3><dl>{defs}</dl>
{figure_part}</body></html>
"""


# --------------------------------------------------------------------------------------------
# figures (matplotlib, Agg)
# --------------------------------------------------------------------------------------------
_MAX_TICKS = 96  # labelled tokens per axis: laying out text dominates the figures' time (512 tokens: 30 s at 512 labels)


def _token_ticks(ax, tokens: list[str], axis: str = "x", *, length_in: float) -> None:
    """Token strings as tick labels, every token when there is room (≥ 6 pt per label and at
    most ``_MAX_TICKS`` labels), else every k-th; the font fills the spacing up to 9 pt."""
    n = len(tokens)
    step = max(1, math.ceil(n * 6.0 / (72.0 * length_in)), math.ceil(n / _MAX_TICKS))
    idx = list(range(0, n, step))
    fs = max(4.5, min(9.0, 0.8 * 72.0 * length_in / len(idx)))
    labels = [tokens[i] for i in idx]
    if axis == "x":
        ax.set_xticks(idx)
        ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    else:
        ax.set_yticks(idx)
        ax.set_yticklabels(labels, fontsize=fs)


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display: reports are written by batch jobs too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _width(n: int) -> float:
    """The width in inches of a figure with one column per token (``n`` tokens)."""
    return float(min(24.0, max(10.0, 0.15 * n + 3)))


def _density_heatmap(report: Report):
    """Tokens × layers: the density the policy read (pulled-back or attention) and the attention density."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    d, toks, layers = report.data, report.tokens, report.layers
    width = _width(len(toks))
    src = d["layers"][0]["tiling"]["density_source"]
    pull = np.array([lr["tiling"]["token_density"] for lr in d["layers"]])
    att = report.attention_token_density()
    fig, axes = plt.subplots(2, 1, figsize=(width, 2.2 + 0.9 * len(layers) * 2), constrained_layout=True)
    for ax, M, title in ((axes[0], pull, "pulled-back Fisher density ρ_t of the hidden states" if src == "pullback"
                          else "attention density (mean over heads of the squared Fisher–Rao speed)"),
                         (axes[1], att, "attention density: squared Fisher–Rao speed of the head-averaged rows")):
        pos = M[M > 0]
        norm = LogNorm(vmin=max(pos.min(), pos.max() * 1e-6), vmax=pos.max()) if pos.size else None
        im = ax.imshow(np.where(M > 0, M, np.nan), aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels([f"layer {li}" for li in layers])
        ax.set_title(title + " (per token, log colour scale)")
        _token_ticks(ax, toks, "x", length_in=width - 2)
        fig.colorbar(im, ax=ax, label="density", pad=0.01)
    return fig


def _head_density(report: Report):
    """Layers × heads: each head's mean attention density, written in its cell."""
    plt = _pyplot()
    d, layers, heads = report.data, report.layers, report.heads
    H = np.array([[h["density_mean"] for h in lr["attention"]["heads"]] for lr in d["layers"]])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(heads) + 2), 0.7 * len(layers) + 1.8), constrained_layout=True)
    im = ax.imshow(H, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(H):
        ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=8,
                color="white" if v < H.min() + 0.6 * (H.max() - H.min()) else "black")
    ax.set_xticks(range(len(heads)))
    ax.set_xticklabels([str(h) for h in heads])
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([str(li) for li in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("mean attention density per head (squared Fisher–Rao speed between consecutive query rows)")
    fig.colorbar(im, ax=ax, label="mean ρ")
    return fig


def _geodesic(report: Report):
    """The geodesic distance matrix of the shown layer and head (``--show``; from ``arrays.npz`` when loaded)."""
    plt = _pyplot()
    d, toks = report.data, report.tokens
    sl, sh = d["show"]["layer"], d["show"]["head"]
    key = f"geodesic_L{sl}_H{sh}"
    D = report.arrays[key] if key in report.arrays else np.array(report.layer(sl)["head_mean"]["geodesic"])
    side = float(min(18.0, max(7.0, 0.13 * len(toks) + 3)))
    fig, ax = plt.subplots(figsize=(side + 1.5, side), constrained_layout=True)
    im = ax.imshow(D, cmap="cividis", interpolation="nearest")
    _token_ticks(ax, toks, "x", length_in=side - 2)
    _token_ticks(ax, toks, "y", length_in=side - 2)
    ax.set_title(f"graph geodesic distance between attention rows, layer {sl} head {sh} (Fisher–Rao, sphere radius 2)")
    fig.colorbar(im, ax=ax, label="geodesic distance", shrink=0.8)
    return fig


def _curvature(report: Report):
    """One histogram of the edges' Ollivier–Ricci curvature per layer, on common bins."""
    plt = _pyplot()
    d, layers = report.data, report.layers
    cols = min(3, len(layers))
    rws = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rws, cols, figsize=(4.2 * cols, 3.0 * rws), squeeze=False, sharex=True,
                             constrained_layout=True)
    allk = np.concatenate([np.asarray(lr["head_mean"]["edge_curvature"]) for lr in d["layers"]])
    bins = np.linspace(float(allk.min()), float(allk.max()) + 1e-12, 31)
    for ax, lr in zip(axes.flat, d["layers"]):
        kap = np.asarray(lr["head_mean"]["edge_curvature"])
        ax.hist(kap, bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(kap.mean(), color="tab:red", lw=1.5, label=f"mean {kap.mean():+.3f}")
        ax.axvline(0, color="k", lw=0.8, ls=":")
        ax.set_title(f"layer {lr['layer']}")
        ax.set_xlabel("Ollivier–Ricci curvature κ of an edge")
        ax.set_ylabel("edges")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle("Ollivier–Ricci curvature of the head-averaged token graph (α = "
                 f"{d['params']['curvature_alpha']:g})")
    return fig


def _spectrum(report: Report):
    """The low Laplace–Beltrami spectrum per layer (head-averaged graph; dashed: median over heads)."""
    plt = _pyplot()
    d, layers = report.data, report.layers
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, lr in enumerate(d["layers"]):
        c = cmap(i / max(1, len(layers) - 1))
        ev = np.asarray(lr["head_mean"]["spectrum"])
        per = np.array([h["spectrum"] for h in lr["attention"]["heads"]])
        ax.plot(np.arange(len(ev)), ev, "o-", color=c, label=f"layer {lr['layer']}: head-averaged graph")
        ax.plot(np.arange(per.shape[1]), np.median(per, 0), "--", color=c, lw=1,
                label=f"layer {lr['layer']}: median over heads")
    ax.set_xlabel("eigenvalue index i")
    ax.set_yscale("symlog", linthresh=1e-2)  # λ₀ = 0 and the small gaps stay visible next to the large λ
    ax.set_ylabel("λ_i of −Δ_g on the token graph (symlog)")
    ax.set_title("low Laplace–Beltrami spectrum per layer")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _resolution_plan(report: Report):
    """The resolution plan drawn over the tokens and their density, one panel per layer."""
    plt = _pyplot()
    d, toks, layers = report.data, report.tokens, report.layers
    n, width = len(toks), _width(len(toks))
    fig, axes = plt.subplots(len(layers), 1, figsize=(width, 1.7 * len(layers) + 1.6), sharex=True, squeeze=False,
                             constrained_layout=True)
    r_min = d["params"]["r_min"]
    for ax, lr in zip(axes[:, 0], d["layers"]):
        t = lr["tiling"]
        for tile in t["tiles"]:
            ax.bar(tile["start"] - 0.5, tile["resolution"], width=tile["length"], align="edge",
                   color=plt.get_cmap("RdYlGn_r")(tile["resolution"]), edgecolor="k", lw=0.5, alpha=0.85)
        ax.axhline(d["params"]["budget"], color="tab:blue", ls="--", lw=1)
        ax.axhline(r_min, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"layer {lr['layer']}\nresolution R")
        td = np.asarray(t["token_density"])
        ax2 = ax.twinx()
        ax2.plot(np.arange(n), td / td.max(), color="k", lw=1)
        ax2.set_ylim(0, 1.05)
        ax2.set_yticks([])
        ax.set_title(f"layer {lr['layer']}: R per tile {_spread(lr)}, FLOPs saved {t['cost_saved']:.1%}",
                     fontsize=9, loc="left")
    axes[-1, 0].set_xlim(-0.5, n - 0.5)
    _token_ticks(axes[-1, 0], toks, "x", length_in=width - 2)
    fig.suptitle(f"resolution per tile (bars; dashed: budget {d['params']['budget']:g}, dotted: r_min) "
                 "and token density (black, scaled to its maximum)")
    return fig


def _predictive(report: Report):
    """Causal LMs: the predictive density beside the surprisal, along the text and against each other
    (None for a report without a ``predictive`` section)."""
    pr = report.data.get("predictive")
    if not pr:
        return None
    plt = _pyplot()
    toks = report.tokens
    n, width = len(toks), _width(len(toks))
    rho, sur = np.asarray(pr["density"]), np.asarray(pr["surprisal"])
    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(width + 5, 4.2), gridspec_kw={"width_ratios": [width, 5]},
                                   constrained_layout=True)
    t = np.arange(1, n)
    ax.plot(t, rho, color="tab:purple", lw=1.2, label="predictive density ρ_t = d_FR(π_{t−1}, π_t)²")
    ax.set_ylabel("ρ_t (squared Fisher–Rao, sphere radius 2)", color="tab:purple")
    ax2 = ax.twinx()
    ax2.plot(t, sur, color="tab:orange", lw=1, alpha=0.8, label="surprisal −ln π_{t−1}(x_t)")
    ax2.set_ylabel("surprisal (nats)", color="tab:orange")
    ax.set_xlim(-0.5, n - 0.5)
    _token_ticks(ax, toks, "x", length_in=width - 2)
    ax.set_title("predictive density and surprisal of each token", loc="left")
    ax_s.scatter(sur, rho, s=8, alpha=0.6, color="tab:purple")
    ax_s.set_xlabel("surprisal (nats)")
    ax_s.set_ylabel("predictive density ρ_t")
    corr = "undefined" if pr["pearson"] is None else f"Pearson {pr['pearson']:+.2f}, Spearman {pr['spearman']:+.2f}"
    ax_s.set_title(corr, fontsize=9)
    return fig


def _layer_plans(report: Report):
    """TiledLM: the resolution each tiled layer chose against the plans of the two densities (None for a
    report without a ``layer_plans`` section)."""
    lp = report.data.get("layer_plans")
    if not lp:
        return None
    plt = _pyplot()
    layers = [str(k) for k in lp["tiled_layers"]]
    fig, axes = plt.subplots(len(layers), 1, figsize=(_width(len(report.tokens)), 1.2 + 1.6 * len(layers)),
                             sharex=True, squeeze=False, constrained_layout=True)
    styles = {"chosen": ("black", "-"), "predictive": ("tab:purple", "--"), "implicit": ("tab:green", ":")}
    for ax, k in zip(axes[:, 0], layers):
        for key, (color, ls) in styles.items():
            r = lp[key]["resolution"][k]
            ax.step(np.arange(len(r)) * lp["tile_size"], r, where="post", color=color, ls=ls, lw=1.4,
                    label=f"{key} ({lp[key]['bpb']:.3f} bpb)")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"layer {k}\nR per tile")
    axes[0, 0].legend(fontsize=8, loc="upper right", ncol=3)
    axes[0, 0].set_title(f"resolution chosen by the layers vs the plans of the predictive and implicit-attention "
                         f"densities (budget {lp['budget']:g})", loc="left")
    axes[-1, 0].set_xlabel("token position")
    return fig


#: each figure's drawer, in the pages' order (:data:`FIGURES`, then :data:`CAUSAL_FIGURES`); a drawer
#: returns a matplotlib figure, or None when the report lacks the section the figure shows
DRAWERS: dict[str, Callable[[Report], object]] = {
    "density_heatmap": _density_heatmap, "head_density": _head_density, "geodesic": _geodesic,
    "curvature": _curvature, "spectrum": _spectrum, "resolution_plan": _resolution_plan,
    "predictive": _predictive, "layer_plans": _layer_plans,
}


def draw_figures(report: Report, out: Path) -> dict[str, Path]:
    """Draw :data:`FIGURES` (and :data:`CAUSAL_FIGURES` for a causal LM) as PNG files into ``out``.

    Parameters
    ----------
    report : the :class:`~tiling.workflows.analysis.report.Report`.
    out : the folder.

    Returns
    -------
    ``{name: path}``, in the order of :data:`DRAWERS`.
    """
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key, draw in DRAWERS.items():
        fig = draw(report)
        if fig is None:
            continue
        paths[key] = out / f"{key}.png"
        fig.savefig(paths[key], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths
