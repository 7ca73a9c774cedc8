#!/usr/bin/env python
"""Theorems 3.4 and 3.5 of the seeds on a trained (elastic) hourglass LM: cost against n·R̄, and the
tiled model's error against its budget (``docs/benchmarks.md``, "The hourglass sweep").

Theorem 3.4 (seed 000 §3.5.1; seed 001 §3.5.1): "the computational complexity is O(n·R̄·log n)"
(seed 001: O(n·Σ R_i)). Measured: the counted multiply-adds (``HourglassLM.cost``, as run) and the
wall time of one forward over n bytes of test text at budgets c, fitted by least squares to
``cost = α·n + β·n·R̄`` (R̄ the realised mean resolution). The whole model is affine, not
proportional, in n·R̄: the full-resolution outer stages cost α·n at any budget. No log n factor appears.

Theorem 3.5 (seed 000 §3.5.2; seed 001 §3.5.2): ``‖y_tiled − y_full‖₂ ≤ ε·max ρ``. Measured per window
of test text: the logits' error ``‖y_c − y_1‖₂`` (y_1 the same checkpoint at budget 1), the density
``ρ`` the model reads (its boundary score, e.g. the next-byte entropy), the smallest ε that makes the
bound hold, ``ε_c = max_window ‖y_c − y_1‖ / max ρ``, and the bits per byte at each budget.

    python scripts/verify_hourglass.py CHECKPOINT --json docs/results/hourglass_verify.json \\
        --figure docs/figures/hourglass/hourglass_theorems.png
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiling.modules.hourglass import HourglassLM  # noqa: E402
from tiling.train.storage import atomic_write_json  # noqa: E402
from tiling.train.sweep_figures import save_figure  # noqa: E402
from tiling.train.corpus import CorpusError, load_split  # noqa: E402
from tiling.train.text import as_byte_tensor, read_text_file  # noqa: E402
from tiling.train.textmodel import TextModelError, load_text_model, resolve_checkpoint  # noqa: E402
from tiling.train.checkpoint import CheckpointError  # noqa: E402


def theorem_3_4(model: HourglassLM, text: torch.Tensor, lengths: list[int], budgets: list[float], reps: int) -> dict:
    pts = []
    for n in lengths:
        x = text[:n].view(1, n)
        for c in budgets:
            with torch.no_grad():
                _, out = model(x, budget=c, return_output=True)
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    model(x, budget=c)
                    times.append(time.perf_counter() - t0)
            cost = model.cost(n, out.lengths)
            pts.append({"n": n, "budget": c, "mean_resolution": out.mean_resolution, "madds": cost["total"],
                        "madds_main": cost["main"] + cost["main_in"] + cost["main_out"],
                        "seconds": statistics.median(times)})
    A = np.array([[p["n"], p["n"] * p["mean_resolution"]] for p in pts], dtype=np.float64)
    fits = {}
    for key in ("madds", "seconds"):
        y = np.array([p[key] for p in pts])
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        pred = A @ coef
        fits[key] = {"alpha_per_byte": coef[0], "beta_per_segment": coef[1],
                     "max_relative_residual": float(np.max(np.abs(pred - y) / y)),
                     "floor_share_at_R_0.25": float(coef[0] / (coef[0] + 0.25 * coef[1]))}
    return {"points": pts, "fit_cost_alpha_n_plus_beta_nR": fits}


def theorem_3_5(model: HourglassLM, text: torch.Tensor, context: int, windows: int, budgets: list[float]) -> dict:
    n = min(windows, text.numel() // (context + 1))
    x = text[:n * (context + 1)].view(n, context + 1)
    inp, tgt = x[:, :-1], x[:, 1:]
    with torch.no_grad():
        y1 = model(inp, budget=1.0)
        bpb1 = F.cross_entropy(y1.reshape(-1, 256), tgt.reshape(-1)).item() / math.log(2)
        rows = [{"budget": 1.0, "bpb": bpb1, "max_error": 0.0, "max_rho": None, "epsilon": 0.0, "mean_resolution": 1.0}]
        for c in budgets:
            yc, out = model(inp, budget=c, return_output=True)
            err = (yc - y1).flatten(1).norm(dim=1)  # ‖y_tiled − y_full‖₂ per window
            rho = out.routing.score
            max_rho = float(rho.max()) if rho is not None else None
            rows.append({"budget": c, "bpb": F.cross_entropy(yc.reshape(-1, 256), tgt.reshape(-1)).item() / math.log(2),
                         "max_error": float(err.max()), "mean_error": float(err.mean()), "max_rho": max_rho,
                         "epsilon": None if not max_rho else float(err.max()) / max_rho,
                         "mean_resolution": out.mean_resolution})
    return {"windows": n, "context": context, "rows": rows}


def where_the_bits_are(model: HourglassLM, text: torch.Tensor, context: int, windows: int, budget: float) -> dict:
    """Bits per byte at the bytes that start a segment and elsewhere, for the model and for its auxiliary
    head alone (the encoder's prediction), and the boundary probability the EMA would use there."""
    n = min(windows, text.numel() // (context + 1))
    x = text[:n * (context + 1)].view(n, context + 1)
    inp, tgt = x[:, :-1], x[:, 1:]
    was = model.training
    model.train()  # the auxiliary head runs in training mode (no parameter changes: no optimiser step)
    state = copy.deepcopy(model.boundary.quantiles.state_dict())
    try:
        with torch.no_grad():
            logits, out = model(inp, budget=budget, return_output=True)
    finally:
        model.boundary.quantiles.load_state_dict(state)  # the forward folded this batch in: undo it
        model.train(was)
    b = out.routing.boundary
    nll = F.cross_entropy(logits.reshape(-1, 256), tgt.reshape(-1), reduction="none").view_as(b) / math.log(2)
    res = {"budget": budget, "windows": n, "boundary_share": float(b.float().mean()),
           "model_bpb_at_starts": float(nll[b].mean()), "model_bpb_elsewhere": float(nll[~b].mean())}
    if out.aux_logits is not None:
        aux = F.cross_entropy(out.aux_logits.reshape(-1, 256), tgt.reshape(-1), reduction="none").view_as(b) / math.log(2)
        res.update(aux_bpb_at_starts=float(aux[b].mean()), aux_bpb_elsewhere=float(aux[~b].mean()))
    p = out.routing.prob[b].float()
    res["prob_at_starts_quartiles"] = torch.quantile(p, torch.tensor([0.25, 0.5, 0.75])).tolist()
    return res


def main_network_share(model: HourglassLM, text: torch.Tensor, context: int, windows: int, budget: float) -> dict:
    """What the main network carries: the bits per byte with its output and with its output replaced by
    zeros (the decoder then reads the encoder's residual alone), on the same windows. The difference is
    the information the compressed sequence adds; a main network the outer stages ignore gives ~0."""
    n = min(windows, text.numel() // (context + 1))
    x = text[:n * (context + 1)].view(n, context + 1)
    inp, tgt = x[:, :-1], x[:, 1:]

    def bpb() -> float:
        with torch.no_grad():
            logits = model(inp, budget=budget)
        return F.cross_entropy(logits.reshape(-1, 256), tgt.reshape(-1)).item() / math.log(2)

    with_main = bpb()
    # MambaStack returns (output, last layer's input): the output alone is replaced
    hook = model.main.register_forward_hook(lambda _m, _i, out: (torch.zeros_like(out[0]), out[1]))
    try:
        without = bpb()
    finally:
        hook.remove()
    return {"budget": budget, "windows": n, "bpb": with_main, "bpb_main_zeroed": without,
            "main_network_bits_per_byte": without - with_main}


def figure(r34: dict, r35: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for n in sorted({p["n"] for p in r34["points"]}):
        ps = [p for p in r34["points"] if p["n"] == n]
        a.plot([p["n"] * p["mean_resolution"] for p in ps], [p["madds"] / 1e6 for p in ps], "o-", label=f"n = {n}")
    a.set_xlabel("n · R̄ (segments the main network runs on)")
    a.set_ylabel("counted M multiply-adds")
    a.set_title("Theorem 3.4: affine in n·R̄; the outer stages' α·n floor", fontsize=9)
    a.legend(fontsize=7)
    rs = r35["rows"]
    b.plot([r["budget"] for r in rs], [r["bpb"] for r in rs], "o-", color="tab:red", label="test bpb")
    b.set_xlabel("budget c")
    b.set_ylabel("bits per byte", color="tab:red")
    b2 = b.twinx()
    b2.plot([r["budget"] for r in rs], [r["epsilon"] for r in rs], "s--", color="tab:blue", label="ε")
    b2.set_ylabel("smallest ε of the bound", color="tab:blue")
    b.set_title("Theorem 3.5: error against the budget (one elastic checkpoint)", fontsize=9)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="an hourglass text checkpoint, or bundled:hourglass")
    p.add_argument("--text-file", type=Path, default=None, help="UTF-8 text (default: the corpus' test split)")
    p.add_argument("--corpus-dir", type=Path, default=Path("data/corpus"))
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model, extra = load_text_model(resolve_checkpoint(args.checkpoint))
        if not isinstance(model, HourglassLM):
            raise TextModelError(f"checkpoint {args.checkpoint} is not an hourglass LM")
        raw = read_text_file(args.text_file) if args.text_file else load_split("test", args.corpus_dir)
    except (TextModelError, CheckpointError, CorpusError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = as_byte_tensor(raw).to(torch.int64)
    context = int(extra["context"])
    budgets = [0.25, 0.35, 0.5]
    lengths = sorted({max(16, context // 4), max(16, context // 2), context})
    r34 = theorem_3_4(model, text, lengths, budgets + [1.0], args.reps)
    r35 = theorem_3_5(model, text, context, args.windows, budgets)
    where = where_the_bits_are(model, text, context, args.windows, model.budget)
    share = main_network_share(model, text, context, args.windows, model.budget)
    out = {"checkpoint": str(args.checkpoint), "budget_range": model.config.budget_range,
           "signal": model.config.boundary.signal, "theorem_3_4": r34, "theorem_3_5": r35,
           "where_the_bits_are": where, "main_network": share,
           "command": "python scripts/verify_hourglass.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    f = r34["fit_cost_alpha_n_plus_beta_nR"]["madds"]
    print(f"Theorem 3.4: counted cost = {f['alpha_per_byte']:.4g}·n + {f['beta_per_segment']:.4g}·n·R̄ "
          f"(max residual {f['max_relative_residual']:.2%}); the R̄-free floor is {f['floor_share_at_R_0.25']:.0%} "
          f"of the cost at R̄ = 0.25")
    for r in r35["rows"]:
        eps = "—" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        print(f"Theorem 3.5: budget {r['budget']:g}: R̄ {r['mean_resolution']:.3f}, bpb {r['bpb']:.4f}, "
              f"max ‖y_c − y_1‖ {r['max_error']:.3g}, ε {eps}")
    w = where
    print(f"Where the bits are (budget {w['budget']:g}, {w['boundary_share']:.1%} of the bytes start a segment): model "
          f"{w['model_bpb_at_starts']:.3f} bpb at segment starts, {w['model_bpb_elsewhere']:.3f} elsewhere"
          + ("" if "aux_bpb_at_starts" not in w else
             f"; the auxiliary head alone {w['aux_bpb_at_starts']:.3f} / {w['aux_bpb_elsewhere']:.3f}")
          + f"; boundary probability at starts, quartiles {', '.join(f'{q:.2f}' for q in w['prob_at_starts_quartiles'])}")
    print(f"The main network (budget {share['budget']:g}): {share['bpb']:.3f} bpb with it, "
          f"{share['bpb_main_zeroed']:.3f} with its output zeroed: it carries "
          f"{share['main_network_bits_per_byte']:.3f} bits per byte")
    if args.json:
        atomic_write_json(args.json, out)
    if args.figure:
        figure(r34, r35, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
