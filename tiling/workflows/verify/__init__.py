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

The output folder is held like every other (:mod:`tiling.train.storage`): a second ``verify`` into
it is refused at once; a folder that already holds ``theorems.md``/``theorems.json`` is refused unless
``overwrite`` (``--overwrite``), and then the old report (the two files and ``figures/theorems/``) is
kept aside until the new one is written, and put back if the run fails or is interrupted; every file
is written atomically. The default folder is ``./infogeo-verify`` (the repository's own report is
regenerated with ``infogeo verify --out docs --overwrite``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np
import torch

from infogeo.checks import check_int
from tiling.options import Options, RunError, add_subcommand, option, run_main, seed_option, standalone_parser
from tiling.train.storage import RunDirectory

from . import complexity, flow_convergence, geodesics, ifq_bounds, preservation, special_cases
from .common import fit_power_law
from .render import Figures, key_number, render_markdown
from .result import Measured, TheoremResult, jsonable

__all__ = ["run_verify", "run_theorem", "render_markdown", "fit_power_law", "add_verify_parser", "main", "VerifyOptions",
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


#: what a verify run writes into its folder (every other entry, e.g. the rest of docs/, is left alone)
OWNED = ("theorems.md", "theorems.json", "figures/theorems")


def run_verify(out_dir: str | os.PathLike = "infogeo-verify", *, quick: bool = False, seed: int = 0,
               progress: bool = True, overwrite: bool = False, name: str = "out_dir") -> dict:
    """Run every theorem experiment and write ``theorems.md``, ``theorems.json`` and figures.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder that receives ``theorems.md``, ``theorems.json`` and ``figures/theorems/*.png``
        (created if missing; default ``./infogeo-verify``).
    quick : bool
        Small sizes (about a minute on two CPU cores) instead of the full run (≤ 10 min).
    seed : int
        Seed of every random choice (numbers other than wall times are reproducible).
    progress : bool
        Show a tqdm bar over the experiments.
    overwrite : bool
        Replace the report already in ``out_dir`` (kept aside until the new one is written).
    name : str
        The option that named ``out_dir``, quoted in the errors (``--out`` for the command line).

    Returns
    -------
    dict
        ``{"meta": {...}, "theorems": {"3.1": {...}, …, "3.6": {...}}}``, each theorem as
        :meth:`TheoremResult.to_dict` gives it: statement, what was tested, tables, figure paths
        (relative to ``out_dir``), all raw numbers, the verdict and its explanation.
    """
    seed = check_int(seed, "seed", minimum=0)
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got {type(quick).__name__}")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path (str or os.PathLike), got {type(out_dir).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{name} {str(out)!r} exists and is not a folder")
    held = RunDirectory(out, owned=OWNED, name=name).held()
    if held and not overwrite:
        flag = "--overwrite" if name.startswith("--") else "overwrite=True"
        raise ValueError(f"{name} {str(out)!r} already holds a report ({', '.join(held)}); pass {flag} to replace it "
                         "(the old one is kept until the new one is written), or choose another folder")
    with RunDirectory(out, overwrite=overwrite, owned=OWNED, name=name) as run:
        results = _measure_all(out, quick=quick, seed=seed, progress=progress, out_arg=str(out_dir))
        run.write_bytes("theorems.json", (json.dumps(jsonable(results), indent=1, allow_nan=False) + "\n").encode())
        run.write_bytes("theorems.md", render_markdown(results).encode())
        run.result_written()
    return results


def _measure_all(out: Path, *, quick: bool, seed: int, progress: bool, out_arg: str) -> dict:
    """Every theorem's experiments, their figures written under ``out``; the results with their meta."""
    from tqdm.auto import tqdm

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
        "seed": seed, "quick": quick, "out_arg": out_arg, "seconds": seconds, "cpu_seconds": cpu,
        "seconds_total": time.perf_counter() - t_all, "cpu_seconds_total": time.process_time() - c_all,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs)"
                   + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__},
    }
    return {"meta": meta, "theorems": theorems}


@dataclass(frozen=True)
class VerifyOptions(Options):
    """The options of ``infogeo verify`` (and ``python -m tiling.workflows.verify``).

    Parameters
    ----------
    quick, out, overwrite, seed, no_progress : the flags of the same names (their help says what each does).
    """

    quick: bool = option(False, kind="bool", help="small sizes, about a minute (used by the tests)")
    out: str = option("infogeo-verify", kind="str", metavar="DIR",
                      help="folder for theorems.md, theorems.json and figures/theorems/ (default: ./infogeo-verify; "
                           "the repository's report: --out docs --overwrite)")
    overwrite: bool = option(False, kind="bool",
                             help="replace the report already in --out (kept aside until the new one is written)")
    seed: int = seed_option(0)
    no_progress: bool = option(False, kind="bool", help="no progress bar")


def _run(args: argparse.Namespace) -> int:
    opts = VerifyOptions.from_args(args)
    res = run_verify(opts.out, quick=opts.quick, seed=opts.seed, progress=not opts.no_progress,
                     overwrite=opts.overwrite, name="--out")
    for r in res["theorems"].values():
        print(f"{r['statement'][0].split(',')[0]}: {r['verdict']} — {key_number(r)}")
    print(f"wrote {Path(opts.out) / 'theorems.md'}, {Path(opts.out) / 'theorems.json'} and "
          f"{Path(opts.out) / 'figures' / 'theorems'} in {res['meta']['seconds_total']:.0f} s")
    return 0


def add_verify_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infogeo verify`` on an argparse sub-parser collection (used by :mod:`tiling.workflows.cli`)."""
    return add_subcommand(subparsers, "verify", VerifyOptions, _run,
                          help="run the theorem experiments and write docs/theorems.md",
                          description="Measured verdicts on Theorems 3.1–3.5 (writes theorems.md, theorems.json and "
                                      "figures/theorems/ under --out).")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tiling.workflows.verify [--quick] [--out DIR] [--seed N]`` (an alias of ``infogeo verify``);
    returns the exit code."""
    parser = standalone_parser("infogeo verify", VerifyOptions, "Measured verdicts on Theorems 3.1–3.5.")
    return run_main("infogeo verify", lambda: _run(parser.parse_args(argv)),
                    expected=(ValueError, TypeError, OSError, RunError))
