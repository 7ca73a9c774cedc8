"""Learning-rate schedule for budget-limited training (wall time, bytes or steps).

A run stops at whichever limit it reaches first, so the schedule follows the *progress*
``p = max(t / t_max, bytes / bytes_max, steps / steps_max) ∈ [0, 1]`` rather than the step:
linear warm-up over the first ``warmup`` steps, times a cosine from 1 at ``p = 0`` to ``floor``
at ``p = 1``::

    factor(step, p) = min(1, (step + 1)/warmup) · (floor + (1 − floor)·½·(1 + cos(π·min(p, 1))))

With a step limit only, the schedule is a pure function of the step (reproducible); with a
wall-time limit it depends on the machine's speed, which is what a wall-time budget means.
"""
from __future__ import annotations

import math


def progress(*, seconds: float = 0.0, max_seconds: float | None = None, n_bytes: int = 0,
             max_bytes: int | None = None, steps: int = 0, max_steps: int | None = None) -> float:
    """``max`` of the used fractions of the limits that are set (0 if none is)."""
    parts = [0.0]
    if max_seconds:
        parts.append(seconds / max_seconds)
    if max_bytes:
        parts.append(n_bytes / max_bytes)
    if max_steps:
        parts.append(steps / max_steps)
    return min(1.0, max(parts))


def lr_factor(step: int, p: float, *, warmup: int, floor: float = 0.1) -> float:
    """Warm-up × cosine on the progress ``p`` (module docstring)."""
    warm = 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)
    return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(p, 0.0), 1.0))))


__all__ = ["progress", "lr_factor"]
