"""The hourglass sweep's figures (:mod:`tiling.train.sweep`): bpb against FLOPs per byte (the Pareto front)
and against training time, and the strip of text with the bytes that start a segment marked, for each
signal, so a reader sees where the compute went (issue "tiling VII", item 5)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from tiling.train.storage import atomic_write_bytes
from tiling.train.textmodel import load_text_model


def save_figure(fig, path: Path) -> None:
    """``fig`` laid out and written as a PNG at 120 dpi, atomically (a figure is replaced whole or not at
    all)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


#: each row family's colour in the figures, by a part of its name (the first that matches), and its legend label
_COLORS = (("mamba", "k", "plain Mamba"), ("uniform", "tab:blue", "uniform"), ("elastic", "tab:orange", "elastic"),
           ("entropy", "tab:red", "entropy"), ("surprisal", "tab:pink", "surprisal"),
           ("fisher_rao", "tab:purple", "Fisher–Rao"), ("space", "tab:olive", "space"), ("router", "tab:green", "router"),
           ("linear", "tab:brown", "linear"))


def _color(name: str) -> str:
    for key, c, _ in _COLORS:
        if key in name:
            return c
    return "gray"


def figures(table_rows: list[dict], directory: Path) -> None:
    """bpb against FLOPs per byte (the Pareto front) and against training time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    best = {}  # per colour (the signal's family), the row named on the figure: some 110 names would overlap
    for r in table_rows:
        c = _color(r["row"])
        ax.scatter(r["flops_per_byte"] / 1e6, r["test_bpb"], color=c, marker="*" if r["row"].startswith("mamba") else "o",
                   facecolors="none" if r["kind"] == "evaluated" else None)
        if r["row"].startswith("mamba"):  # every plain size is named
            ax.annotate(r["row"].split("/")[0], (r["flops_per_byte"] / 1e6, r["test_bpb"]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        elif r["kind"] == "trained" and (c not in best or r["test_bpb"] < best[c]["test_bpb"]):
            best[c] = r
    for c, r in best.items():
        ax.annotate(r["row"], (r["flops_per_byte"] / 1e6, r["test_bpb"]), fontsize=6, color=c, xytext=(6, -3),
                    textcoords="offset points")
    for _, c, label in _COLORS:
        ax.scatter([], [], color=c, marker="*" if c == "k" else "o", label=label)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_xlabel("MFLOPs per byte (2 × multiply-adds as run)")
    ax.set_ylabel("test bits per byte")
    ax.set_title("Plain Mamba (★) and the hourglass (●; hollow: elastic checkpoint at another budget; each colour's\n"
                 "best trained row named), each trained for 15 CPU-minutes or the same steps", fontsize=9)
    save_figure(fig, directory / "hourglass_bpb_vs_flops.png")

    fig, ax = plt.subplots(figsize=(12, 5.5))
    labelled = set()  # one legend entry per configuration (its seeds share it), beside the axes: some 60 rows
    for r in table_rows:
        if r["kind"] != "trained":
            continue
        cur = r["validation_curve"]
        name = r["row"].split("/")[0]
        ax.plot([p["train_seconds"] / 60 for p in cur[1:]], [p["bpb"] for p in cur[1:]], color=_color(r["row"]),
                ls="-" if r["row"].startswith("mamba") else "--", label="_" if name in labelled else name, lw=1)
        labelled.add(name)
    ax.set_xlabel("training CPU minutes (one thread)")
    ax.set_ylabel("validation bits per byte")
    ax.set_ylim(top=3.5)
    ax.legend(fontsize=5.5, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title("bpb against training time", fontsize=9)
    save_figure(fig, directory / "hourglass_bpb_vs_time.png")


def boundary_strip(table_rows: list[dict], text: bytes, path: Path, *, width: int = 96) -> None:
    """A strip of text per hourglass row with the bytes that start a segment marked: where the compute went."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hg = [r for r in table_rows if r.get("family") == "hourglass" and r["kind"] == "trained"
          and Path(r["checkpoint"]).is_file()]
    if not hg:
        return
    tokens = torch.tensor(list(text[:width]), dtype=torch.int64).view(1, -1)
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(hg) + 0.6))
    for i, r in enumerate(hg):
        model, _ = load_text_model(r["checkpoint"])
        with torch.no_grad():
            _, out = model(tokens, budget=r["budget"], return_output=True)
        b = out.routing.boundary[0].tolist()
        y = len(hg) - i
        ax.text(-1, y, r["row"].split("/")[0], ha="right", va="center", fontsize=7)
        for j, byte in enumerate(text[:width]):
            ch = chr(byte) if 32 <= byte < 127 else "·"
            ax.text(j, y, ch, ha="center", va="center", fontsize=7, family="monospace",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "gold", "ec": "none"} if b[j] else None)
    ax.set_xlim(-25, width)
    ax.set_ylim(0.3, len(hg) + 0.7)
    ax.axis("off")
    ax.set_title("Bytes that start a segment (yellow): the main network runs once per segment", fontsize=9)
    save_figure(fig, path)


__all__ = ["boundary_strip", "figures", "save_figure"]
