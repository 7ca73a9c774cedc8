r"""``infogeo verify``: measured verdicts on Theorems 3.1–3.5 of the chapter (seed 000, seed 001).

Every theorem of seed 000 §3.1.2, §3.2.2, §3.3.2 and §3.5 (and seed 001 §3.5.1–3.5.2, which
state the last two in another form) is turned into experiments on the toolkit's own
implementations, one module per theorem (:data:`THEOREMS`, in report order):

* :mod:`.geodesics` — **3.1** (geodesic optimality, seed 000 §3.1.2);
* :mod:`.flow_convergence` — **3.2** (resolution convergence, seed 000 §3.2.2);
* :mod:`.ifq_bounds` — **3.3** (IFQ bounds, seed 000 §3.3.2);
* :mod:`.complexity` — **3.4** (complexity, seed 000 §3.5.1 / seed 001 §3.5.1);
* :mod:`.preservation` — **3.5** (information preservation, seed 000 §3.5.2 / seed 001 §3.5.2);
* :mod:`.special_cases` — **§3.6** special cases (seed 000 §3.6; seed 001 §3.6).

Each module has ``ID``, ``STATEMENT`` and

* ``measure(quick, seed, cache) -> Measured`` — the experiments; ``numbers`` is what
  ``theorems.json`` holds for the theorem;
* ``decide(numbers) -> str`` — the verdict, by the rule its docstring states;
* ``explain(m)``, ``tested(m)``, ``tables(m)``, ``figures(m, figs)`` — the report.

Shared helpers are in :mod:`.common`, the result layout in :mod:`.result`, the rendering in
:mod:`.render`. :func:`run_verify` runs everything and writes ``theorems.md`` (generated),
``theorems.json`` (every number) and figures under ``figures/theorems/`` of the output folder.
All randomness flows from ``seed`` through explicit generators, so every number except wall
times is reproducible. ``quick=True`` runs the same experiments at small sizes (about a minute).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np
import torch

from infogeo.checks import check_int

from . import complexity, flow_convergence, geodesics, ifq_bounds, preservation, special_cases
from .common import fit_power_law
from .render import Figures, key_number, render_markdown
from .result import Measured, TheoremResult, jsonable

__all__ = ["run_verify", "run_theorem", "render_markdown", "fit_power_law", "add_verify_parser", "main",
           "STATEMENTS", "THEOREMS", "TheoremResult", "Measured"]

#: The theorem modules in report order.
THEOREMS: tuple[ModuleType, ...] = (geodesics, flow_convergence, ifq_bounds, complexity, preservation, special_cases)

#: The statements as the chapter gives them (quoted verbatim in the report), by theorem id.
STATEMENTS = {mod.ID: mod.STATEMENT for mod in THEOREMS}


def run_theorem(mod: ModuleType, *, quick: bool, seed: int, figs: Figures, cache: dict) -> TheoremResult:
    """Measure one theorem, decide its verdict from the numbers and render its report parts.

    Parameters
    ----------
    mod : module
        One of :data:`THEOREMS`.
    quick : bool
        Small sizes.
    seed : int
        Seed of every random choice.
    figs : Figures
        Where the figures go.
    cache : dict
        Shared between theorems of one run (the pretrained model's outputs, the inputs of 3.5).
    """
    m = mod.measure(quick, seed, cache)
    return TheoremResult(id=mod.ID, statement=mod.STATEMENT, verdict=mod.decide(m.numbers), verdict_text=mod.explain(m),
                         tested=mod.tested(m), numbers=m.numbers, tables=mod.tables(m), figures=mod.figures(m, figs))


def run_verify(out_dir: str | os.PathLike = "docs", *, quick: bool = False, seed: int = 0,
               progress: bool = True) -> dict:
    """Run every theorem experiment and write ``theorems.md``, ``theorems.json`` and figures.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder that receives ``theorems.md``, ``theorems.json`` and ``figures/theorems/*.png``
        (created if missing).
    quick : bool
        Small sizes (about a minute on two CPU cores) instead of the full run (≤ 10 min).
    seed : int
        Seed of every random choice (numbers other than wall times are reproducible).
    progress : bool
        Show a tqdm bar over the experiments.

    Returns
    -------
    dict
        ``{"meta": {...}, "theorems": {"3.1": {...}, …, "3.6": {...}}}``, each theorem as
        :meth:`TheoremResult.to_dict` gives it: statement, what was tested, tables, figure paths
        (relative to ``out_dir``), all raw numbers, the verdict and its explanation.
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
    figs = Figures(out)
    cache: dict = {}
    theorems, seconds, cpu = {}, {}, {}
    t_all, c_all = time.perf_counter(), time.process_time()
    bar = tqdm(THEOREMS, desc="infogeo verify", disable=not progress)
    for mod in bar:
        bar.set_postfix_str(f"Theorem {mod.ID}")
        t0, c0 = time.perf_counter(), time.process_time()
        theorems[mod.ID] = run_theorem(mod, quick=quick, seed=seed, figs=figs, cache=cache).to_dict()
        seconds[mod.ID] = time.perf_counter() - t0
        cpu[mod.ID] = time.process_time() - c0
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
    (out / "theorems.json").write_text(json.dumps(jsonable(results), indent=1, allow_nan=False) + "\n",
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
        print(f"{r['statement'][0].split(',')[0]}: {r['verdict']} — {key_number(r)}")
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
