"""The results file of ``infogeo analyse --batch``: one JSON line per text, resumable, self-checking.

Every line is ``{"index", "sha256", "settings", "summary", "report"}``: the text's line number in
``--file``, the SHA-256 of its UTF-8 bytes, the settings it was computed with, and the report.
:func:`read_done` reads a file for ``--resume``: it refuses (``ValueError`` naming the results file
and every differing setting) when any line was computed with other settings, so a resume never
mixes results of two configurations; it moves lines that do not parse (a line torn by an
interruption) to ``results.jsonl.unparsable`` with a warning, and warns about lines whose text is no
longer in ``--file``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

from .analysis.options import AnalysisOptions

__all__ = ["FLAGS", "UNRECORDED", "settings_of", "text_key", "read_done", "split_texts", "rank_file", "rank_files",
           "merge_results"]

#: the settings a result depends on, with the flag that sets each (named when a resume refuses): the model,
#: its tokenizer and every :class:`~tiling.workflows.analysis.options.AnalysisOptions` field
FLAGS = {"model": "--model", **AnalysisOptions.flags(), "tokenizer": "--tokenizer"}


def settings_of(model: str | None, options: AnalysisOptions) -> dict:
    """The settings of a run in the form stored on each line.

    Parameters
    ----------
    model : the ``--model`` argument (None: the bundled model).
    options : the analysis options.

    Returns
    -------
    dict of JSON values: ``"model"`` (a path made absolute) and :meth:`AnalysisOptions.to_dict`, the
    same dict as each report's ``params``. :func:`read_done` compares ``layers`` and ``heads`` as sets
    (their order does not change the numbers).
    """
    if model is not None and not str(model).startswith("bundled:"):
        model = os.path.abspath(os.path.expanduser(str(model)))
    return {"model": model or "bundled all-MiniLM-L6-v2", **options.to_dict()}


#: the value a setting had before a version of infogeo recorded it: a line without it was computed so
#: (``curvature_alpha`` and ``state_dim`` reached the command line after results were written without them)
UNRECORDED = {"curvature_alpha": AnalysisOptions.curvature_alpha, "state_dim": AnalysisOptions.state_dim}


def _indices(value):
    """``layers``/``heads`` as compared: a sorted set of indices, or None for all (older lines wrote ``"all"``
    and sorted lists); any other value as it is."""
    if value is None or value == "all":
        return None
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return sorted(set(value))
    return value


def _same(name: str, there, want) -> bool:
    """A recorded setting equals the current one (``layers`` and ``heads`` as sets of indices)."""
    if name in ("layers", "heads"):
        return _indices(there) == _indices(want)
    return there == want


def text_key(index: int, text: str) -> tuple[int, str]:
    """What identifies a finished text.

    Parameters
    ----------
    index : the text's line number.
    text : the text.

    Returns
    -------
    ``(line number, SHA-256 of the UTF-8 text)``.
    """
    return index, hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_texts(text: str) -> list[tuple[int, str]]:
    r"""The non-blank lines of a ``--file``, with their numbers.

    Parameters
    ----------
    text : the file's contents.

    Returns
    -------
    ``(line number, line)`` of the non-blank lines.

    Notes
    -----
    Lines end at ``\n`` (``\r\n`` and ``\r`` are read as ``\n``), so the numbers are those of an
    editor or ``wc -l``; the other Unicode line separators (U+2028, U+0085, form feed, …) stay inside
    their line.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(i, line) for i, line in enumerate(lines) if line.strip()]


def _show(value) -> str:
    return "(none recorded: an older infogeo)" if value is _MISSING else json.dumps(value, ensure_ascii=False)


_MISSING = object()


def read_done(path: Path, settings: dict, keys: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """The texts already in the results file ``path`` (none if it is missing).

    Parameters
    ----------
    path : the results file (JSON lines).
    settings : the current run's settings (:func:`settings_of`); a setting a line does not record counts
        as its :data:`UNRECORDED` value where it has one.
    keys : the texts of the current ``--file`` (:func:`text_key`).

    Returns
    -------
    The ``(index, sha256)`` of the finished texts.

    Raises
    ------
    ValueError
        Naming ``path`` and the flags whose values differ from ``settings`` on any line; or the file
        cannot be read.

    Warns
    -----
    UserWarning
        Unparsable lines are moved to ``path.unparsable`` (appended; the results file is rewritten
        atomically without them), with a warning that counts them; lines whose text is not in
        ``keys`` are kept, with a warning.
    """
    from tiling.train.storage import atomic_write_bytes

    if not path.exists():
        return set()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the results file {str(path)!r}: {e.strerror or type(e).__name__}") from None
    done: set[tuple[int, str]] = set()
    keep, bad, differ = [], [], {}
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            key = (int(rec["index"]), str(rec["sha256"]))
        except (ValueError, KeyError, TypeError):  # torn JSON, bad UTF-8 (a ValueError), another shape
            bad.append((number, line))
            continue
        got = rec.get("settings", _MISSING)
        for name, want in settings.items():
            there = got.get(name, UNRECORDED.get(name, _MISSING)) if isinstance(got, dict) else _MISSING
            if not _same(name, there, want):
                differ.setdefault(name, (there, want))
        keep.append(line)
        done.add(key)
    if differ:
        parts = "; ".join(f"{FLAGS[n]} {_show(a)} there, {_show(b)} now" for n, (a, b) in differ.items())
        raise ValueError(f"--resume: the results file {str(path)!r} was computed with other settings ({parts}); "
                         "pass the same settings, --overwrite to compute every text again, or another --out")
    if bad or (raw and not raw.endswith(b"\n")):
        if bad:
            side = path.with_name(path.name + ".unparsable")
            previous = side.read_bytes() if side.exists() else b""
            atomic_write_bytes(side, previous + b"".join(line + b"\n" for _, line in bad))
            lines = ", ".join(str(n) for n, _ in bad[:5]) + (", …" if len(bad) > 5 else "")
            warnings.warn(f"--resume: {len(bad)} line(s) of {str(path)!r} do not parse (line {lines}; e.g. torn by "
                          f"an interrupted run); moved to {str(side)!r}, and their texts are computed again")
        atomic_write_bytes(path, b"".join(line + b"\n" for line in keep))  # appends start on a new line
    stale = done - keys
    if stale:
        warnings.warn(f"--resume: {len(stale)} result(s) in {str(path)!r} belong to no line of --file as it is now "
                      "(the file changed since); they are kept, and the changed lines are computed")
    return done


def rank_file(results: Path, rank: int) -> Path:
    """The file rank ``rank`` of a torchrun launch appends to: ``results.rank{rank}.jsonl`` beside ``results``."""
    return results.with_name(f"{results.stem}.rank{rank}{results.suffix}")


def rank_files(results: Path) -> list[Path]:
    """The rank files beside ``results`` (of this run or left by an interrupted one), by rank."""
    found = []
    for p in results.parent.glob(f"{results.stem}.rank*{results.suffix}"):
        digits = p.name[len(results.stem) + len(".rank"):len(p.name) - len(results.suffix)]
        if digits.isdigit():
            found.append((int(digits), p))
    return [p for _, p in sorted(found)]


def _line_index(line: bytes) -> int | None:
    try:
        return int(json.loads(line.decode("utf-8"))["index"])
    except (ValueError, KeyError, TypeError):
        return None


def merge_results(results: Path, parts: Sequence[Path], *, keep: bool = True) -> int:
    """Append the lines of the rank files ``parts`` to ``results`` in input order and delete them.

    Parameters
    ----------
    results : the results file.
    parts : the rank files.
    keep : the lines already in ``results`` stay first, as they are (``False``: they are dropped,
        as ``--overwrite`` does).

    Returns
    -------
    The number of lines taken from ``parts``.

    Notes
    -----
    The new lines are ordered by their ``index`` (stable, so ties keep rank order); lines that do
    not parse follow in the order met, for :func:`read_done` to move aside. The results file is
    written atomically before any rank file is deleted, so an interruption loses nothing.
    """
    from tiling.train.storage import atomic_write_bytes

    base = results.read_bytes() if keep and results.exists() else b""
    if base and not base.endswith(b"\n"):
        base += b"\n"  # a torn last line stays one line
    lines = [line for p in parts for line in p.read_bytes().split(b"\n") if line.strip()]
    index = [_line_index(line) for line in lines]
    order = sorted(range(len(lines)), key=lambda j: (index[j] is None, index[j] or 0, j))
    atomic_write_bytes(results, base + b"".join(lines[j] + b"\n" for j in order))
    for p in parts:
        p.unlink()
    return len(lines)
