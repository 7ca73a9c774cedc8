"""What one theorem experiment produces: :class:`Measured` numbers and the :class:`TheoremResult`.

The result dictionary of every theorem in ``theorems.json`` has one layout, written here once
(:meth:`TheoremResult.to_dict`) instead of by hand in each experiment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["HOLDS", "HOLDS_UNDER_CONDITIONS", "FALSE_AS_WRITTEN", "VERDICTS", "Measured", "TheoremResult", "jsonable"]

#: The three verdicts a theorem can get (the report explains each one from the numbers).
HOLDS = "holds"
HOLDS_UNDER_CONDITIONS = "holds under stated conditions"
FALSE_AS_WRITTEN = "false as written"
VERDICTS = (HOLDS, HOLDS_UNDER_CONDITIONS, FALSE_AS_WRITTEN)

#: Keys of a result dictionary that are not measured numbers (the numbers go between them).
_HEAD = ("id", "statement", "verdict", "verdict_text", "tested")
_TAIL = ("tables", "figures")


@dataclass
class Measured:
    """The output of a theorem's ``measure``.

    Attributes
    ----------
    numbers : dict
        Every measured number, exactly as ``theorems.json`` holds it for the theorem (the verdict
        is decided from these alone).
    series : dict
        What the figures, tables and prose draw on besides ``numbers`` and ``theorems.json`` does
        not keep: raw samples behind a histogram, energy trajectories, the sizes of the run,
        tuple-keyed working copies of the numbers.
    """

    numbers: dict
    series: dict = field(default_factory=dict)


@dataclass
class TheoremResult:
    """One theorem's measured verdict.

    Attributes
    ----------
    id : str
        ``"3.1"`` … ``"3.6"``.
    statement : tuple of str
        (title with its seed citation, the statement quoted from the chapter).
    verdict : str
        One of :data:`VERDICTS`, decided from ``numbers`` by the theorem's ``decide``.
    verdict_text : str
        The explanation of the verdict, from the numbers.
    tested : str
        What was tested (inputs, sizes, implementations).
    numbers : dict
        Every measured number (see :class:`Measured`).
    tables : list of dict
        ``{"title", "columns", "rows"}`` each.
    figures : list of str
        Figure paths relative to the output folder.
    """

    id: str
    statement: tuple[str, str]
    verdict: str
    verdict_text: str
    tested: str
    numbers: dict
    tables: list[dict] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        clash = set(self.numbers) & set(_HEAD + _TAIL)
        if clash:
            raise ValueError(f"numbers must not use the result's own keys, got {sorted(clash)}")

    def to_dict(self) -> dict:
        """The theorem's dictionary in ``theorems.json``: the head keys, the numbers, tables and figures."""
        head = {"id": self.id, "statement": self.statement, "verdict": self.verdict,
                "verdict_text": self.verdict_text, "tested": self.tested}
        return head | self.numbers | {"tables": self.tables, "figures": self.figures}

    @classmethod
    def from_dict(cls, d: dict) -> "TheoremResult":
        """Inverse of :meth:`to_dict` (also reads a theorem back from ``theorems.json``)."""
        known = set(_HEAD + _TAIL)
        missing = [k for k in known if k not in d]
        if missing:
            raise ValueError(f"a theorem result needs the keys {sorted(missing)}")
        return cls(id=d["id"], statement=tuple(d["statement"]), verdict=d["verdict"], verdict_text=d["verdict_text"],
                   tested=d["tested"], numbers={k: v for k, v in d.items() if k not in known},
                   tables=list(d["tables"]), figures=list(d["figures"]))


def jsonable(x):
    """Numpy/torch scalars and arrays to plain Python; non-finite floats to strings (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x
