"""Pages and figures of an ``infogeo analyse`` report: Markdown, HTML and the PNG figures.

Every function reads a :class:`~tiling.workflows.analysis.report.Report` (its JSON document, its
arrays for the geodesic matrix, its summary rows and findings) and computes no geometry. The
module imports nothing else of the package: :mod:`.report` builds on it for its file methods.
"""
from __future__ import annotations

import base64
import html as html_lib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # report.py imports this module: Report is only an annotation here
    from .report import Report

__all__ = ["draw_figures", "html", "markdown"]


# --------------------------------------------------------------------------------------------
# pages
# --------------------------------------------------------------------------------------------
def markdown(report: Report, figures: dict[str, Path] | None = None) -> str:
    """The findings, the per-layer table and links to ``figures`` as Markdown.

    Parameters
    ----------
    report : the :class:`~tiling.workflows.analysis.report.Report`.
    figures : ``{name: path}`` of the drawn figures (names relative to the page); None: no links.

    Returns
    -------
    The Markdown page.
    """
    d = report.data
    lines = [f"# infogeo analysis: {d['name']}", "",
             f"Model `{d['model']['path'] or d['model']['type']}` · {d['text']['n_tokens']} tokens · "
             f"budget {d['params']['budget']:g} · tile size {d['params']['tile_size']} · "
             f"schema {d['schema']} v{d['schema_version']}", "", "## Findings", ""]
    lines += [f"- {s}" for s in report.findings()]
    lines += ["", "## Per layer", "", "| layer | mean density | attention density | mean curvature | "
              "mean resolution | scan cost saved | recurrence saved |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.summary_rows():
        lines.append(f"| {r['layer']} | {r['mean_density']:.4g} | {r['mean_attention_density']:.4g} | "
                     f"{r['mean_curvature']:+.4f} | {r['mean_resolution']:.3f} | {r['cost_saved']:.1%} | "
                     f"{r['recurrence_saved']:.1%} |")
    if figures:
        lines += ["", "## Figures", ""]
        for key, p in figures.items():
            lines += [f"![{key}]({Path(p).name})", ""]
    return "\n".join(lines) + "\n"


def html(report: Report, figures: dict[str, Path] | None = None) -> str:
    """A static page with the findings, the table and the figures embedded as data URIs.

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
    rows = "".join(
        f"<tr><td>{r['layer']}</td><td>{r['mean_density']:.4g}</td><td>{r['mean_attention_density']:.4g}</td>"
        f"<td>{r['mean_curvature']:+.4f}</td><td>{r['mean_resolution']:.3f}</td><td>{r['cost_saved']:.1%}</td>"
        f"<td>{r['recurrence_saved']:.1%}</td></tr>"
        for r in report.summary_rows())
    imgs = ""
    for key, p in (figures or {}).items():
        b64 = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        imgs += f'<figure><img alt="{esc(key)}" src="data:image/png;base64,{b64}"><figcaption>{esc(key)}</figcaption></figure>\n'
    items = "".join(f"<li>{esc(s)}</li>" for s in report.findings())
    schema = f"{d['schema']} v{d['schema_version']}"  # the document's own, as loaded or made
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>infogeo analysis: {esc(d['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
img{{max-width:100%;border:1px solid #eee}}figure{{margin:1.5em 0}}</style></head>
<body><h1>infogeo analysis: {esc(d['name'])}</h1>
<p>Model <code>{esc(str(d['model']['path'] or d['model']['type']))}</code> · {d['text']['n_tokens']} tokens ·
budget {d['params']['budget']:g} · tile size {d['params']['tile_size']} · schema {schema}</p>
<h2>Findings</h2><ul>{items}</ul>
<h2>Per layer</h2><table><tr><th>layer</th><th>mean density</th><th>attention density</th><th>mean curvature</th>
<th>mean resolution</th><th>scan cost saved</th><th>recurrence saved</th></tr>{rows}</table>
<h2>Figures</h2>{imgs}</body></html>
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


def draw_figures(report: Report, out: Path) -> dict[str, Path]:
    """Draw :data:`FIGURES` (and :data:`CAUSAL_FIGURES` for a causal LM) as PNG files into ``out``.

    Parameters
    ----------
    report : the :class:`~tiling.workflows.analysis.report.Report`.
    out : the folder.

    Returns
    -------
    ``{name: path}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    out.mkdir(parents=True, exist_ok=True)
    d, toks = report.data, report.tokens
    n = len(toks)
    layers = report.layers
    width = float(min(24.0, max(10.0, 0.15 * n + 3)))
    paths: dict[str, Path] = {}

    def save(fig, key):
        p = out / f"{key}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths[key] = p

    # 1. density heatmap, tokens × layers: pulled-back (or attention) density and the attention density
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
    save(fig, "density_heatmap")

    # 2. per-head density summary: layers × heads
    heads = d["params"]["heads"]
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
    save(fig, "head_density")

    # 3. geodesic distance matrix of the chosen layer/head
    sl, sh = d["show"]["layer"], d["show"]["head"]
    key = f"geodesic_L{sl}_H{sh}"
    D = report.arrays[key] if key in report.arrays else np.array(report.layer(sl)["head_mean"]["geodesic"])
    side = float(min(18.0, max(7.0, 0.13 * n + 3)))
    fig, ax = plt.subplots(figsize=(side + 1.5, side), constrained_layout=True)
    im = ax.imshow(D, cmap="cividis", interpolation="nearest")
    _token_ticks(ax, toks, "x", length_in=side - 2)
    _token_ticks(ax, toks, "y", length_in=side - 2)
    ax.set_title(f"graph geodesic distance between attention rows, layer {sl} head {sh} (Fisher–Rao, sphere radius 2)")
    fig.colorbar(im, ax=ax, label="geodesic distance", shrink=0.8)
    save(fig, "geodesic")

    # 4. curvature histogram per layer
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
    save(fig, "curvature")

    # 5. Laplace–Beltrami spectrum per layer (head-averaged graph; dashed: median over heads)
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
    save(fig, "spectrum")

    # 6. the resolution plan drawn over the tokens, one panel per layer
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
        ax.set_title(f"layer {lr['layer']}: mean R {t['mean_resolution']:.3f}, scan cost saved {t['cost_saved']:.1%}",
                     fontsize=9, loc="left")
    axes[-1, 0].set_xlim(-0.5, n - 0.5)
    _token_ticks(axes[-1, 0], toks, "x", length_in=width - 2)
    fig.suptitle(f"resolution per tile (bars; dashed: budget {d['params']['budget']:g}, dotted: r_min) "
                 "and token density (black, scaled to its maximum)")
    save(fig, "resolution_plan")

    # 7. causal LMs: the predictive density beside the surprisal, along the text and against each other
    pr = d.get("predictive")
    if pr:
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
        save(fig, "predictive")

    # 8. TiledLM: the resolution each tiled layer chose against the plans of the two densities
    lp = d.get("layer_plans")
    if lp:
        layers = [str(k) for k in lp["tiled_layers"]]
        fig, axes = plt.subplots(len(layers), 1, figsize=(width, 1.2 + 1.6 * len(layers)), sharex=True,
                                 squeeze=False, constrained_layout=True)
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
        save(fig, "layer_plans")
    return paths
