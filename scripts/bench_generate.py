#!/usr/bin/env python
"""``generate`` as a user runs it (issue 23's goal: 300 bytes with the default settings in at most 1.2× the
time of the best ``--threads`` setting).

Each case is one process of ``python -m tiling.train.generate CHECKPOINT --prompt PROMPT --max-bytes N
--seed 0`` with the default thread count or ``--threads k`` for ``k = 1 … --max-threads``; rounds run every
case once, in a rotated order, so that a shared machine's quiet moments fall evenly. A cell is the median
wall time of the process: start-up, loading the checkpoint, the prompt and the sampled bytes, what the
user waits for (the start-up is the same for every setting of one checkpoint). The table gives each
setting's time over the best setting's.

    python scripts/bench_generate.py [--checkpoints bundled:full bundled:hourglass] [--max-bytes 300]
                                     [--rounds 5] [--max-threads 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_text import require_positive  # noqa: E402

from tiling.train.storage import atomic_write_bytes  # noqa: E402

GOAL = 1.2  # the default setting's time over the best setting's, at most
PROMPT = "The for statement"


def command(checkpoint: str, threads: int | None, max_bytes: int) -> list[str]:
    """The generate command of one case (``threads`` None: the default setting)."""
    cmd = [sys.executable, "-m", "tiling.train.generate", checkpoint, "--prompt", PROMPT,
           "--max-bytes", str(max_bytes), "--seed", "0", "--json"]
    return cmd if threads is None else cmd + ["--threads", str(threads)]


def run_once(cmd: list[str]) -> float:
    """Wall seconds of one process; its failure is an error naming the command."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"bench_generate: error: {' '.join(cmd[2:])} exited {done.returncode}: "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    return wall


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", nargs="+", default=["bundled:full", "bundled:hourglass"])
    ap.add_argument("--max-bytes", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-threads", type=int, default=os.cpu_count() or 1,
                    help="the settings timed besides the default: --threads 1 … this (default: the CPUs)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    require_positive(ap, args, ("max_bytes", "rounds", "max_threads"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    settings: list[int | None] = [None, *range(1, args.max_threads + 1)]
    cases = [(c, t) for c in args.checkpoints for t in settings]
    times: dict[tuple[str, int | None], list[float]] = {case: [] for case in cases}
    for r in tqdm(range(args.rounds), desc="rounds"):
        for c, t in cases[r % len(cases):] + cases[:r % len(cases)]:
            times[(c, t)].append(run_once(command(c, t, args.max_bytes)))
    rows = []
    print(f"generate of {args.max_bytes} bytes after a {len(PROMPT)}-byte prompt, median wall of "
          f"{args.rounds} processes (× the best setting of the checkpoint; goal: default ≤ {GOAL}×)\n")
    print("| checkpoint | setting | seconds | × best |\n|---|---|---|---|")
    for c in args.checkpoints:
        med = {t: statistics.median(times[(c, t)]) for t in settings}
        best = min(med.values())
        for t in settings:
            row = {"checkpoint": c, "threads": t, "seconds": med[t], "all_seconds": times[(c, t)],
                   "over_best": med[t] / best}
            rows.append(row)
            print(f"| {c} | {'default' if t is None else f'--threads {t}'} | {med[t]:.2f} | {med[t] / best:.2f} |")
    met = all(r["over_best"] <= GOAL for r in rows if r["threads"] is None)
    print(f"\ndefault ≤ {GOAL}× the best setting: {'met' if met else 'NOT met'}")
    if args.json is not None:
        out = {"command": "python scripts/bench_generate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_average": os.getloadavg()},
               "max_bytes": args.max_bytes, "rounds": args.rounds, "goal": GOAL, "met": met, "rows": rows}
        atomic_write_bytes(args.json, (json.dumps(out, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
