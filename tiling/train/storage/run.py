"""The run folder (:class:`RunDirectory`): locked, checked against its settings, never silently replaced.

* **A settings fingerprint** (:func:`fingerprint`, :func:`differing_settings`): ``run.json`` in the
  folder records the settings a run was started with; a resume under other settings is refused
  before any work, naming each differing setting.
* **Overwrite without loss**: ``overwrite`` moves the previous run's own files aside
  (``.NAME.run-old-*`` beside the folder) instead of deleting them; they are deleted once the new
  run has written its first result (:meth:`RunDirectory.result_written`), and put back if the new
  run fails or is interrupted before that. A run killed in between leaves the aside folder, which
  the next run names and never deletes.
* **Resume bookkeeping**: :func:`cut_log` cuts a JSON-lines log back to a checkpoint's step.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .atomic import StorageError, atomic_write_bytes, atomic_write_json, check_inside, signals_held
from .folder import check_folder
from .lock import RunLock

__all__ = ["RECORD", "ASIDE", "fingerprint", "differing_settings", "RunDirectory", "cut_log"]

#: the file in a run folder that records its settings
RECORD = "run.json"
#: infix of the folder beside NAME that holds a previous run moved aside by ``overwrite``
ASIDE = ".run-old-"
_FORMAT = "tiling-run-v1"


def _canonical(settings: Mapping) -> dict:
    """``settings`` as JSON values (what a record read back holds)."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def fingerprint(settings: Mapping) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (keys sorted; non-JSON values by ``str``).

    Parameters
    ----------
    settings : the options that change what a run computes.

    Returns
    -------
    64 hexadecimal digits.
    """
    text = json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


_MISSING = object()


def differing_settings(recorded: Mapping, now: Mapping, *, flags: Mapping[str, str] | None = None) -> list[str]:
    """The settings that differ between two runs, one phrase each.

    Parameters
    ----------
    recorded : the settings of the earlier run.
    now : the settings of this run.
    flags : the option that sets each key (default ``--key-with-dashes``).

    Returns
    -------
    ``["--lr 0.003 there, 0.001 now", ...]`` in the order of ``now`` then ``recorded`` (empty when equal).
    """
    a, b = _canonical(recorded), _canonical(now)
    flags = flags or {}
    out = []
    for key in list(b) + [k for k in a if k not in b]:
        there, here = a.get(key, _MISSING), b.get(key, _MISSING)
        if there != here:
            show = lambda v: "(not recorded)" if v is _MISSING else json.dumps(v, ensure_ascii=False)  # noqa: E731
            out.append(f"{flags.get(key, '--' + key.replace('_', '-'))} {show(there)} there, {show(here)} now")
    return out



class RunDirectory:
    """An output folder held by one run: locked, checked against its settings, never silently replaced.

    Parameters
    ----------
    path : the folder (created if missing).
    settings : the options that change what the run computes (JSON values); recorded in
        ``run.json`` and compared on ``resume``. None: nothing is recorded or compared.
    overwrite : replace a previous run in the folder: its files are moved aside first and deleted only
        once this run calls :meth:`result_written` (or ends without an error).
    resume : continue the run in the folder (refused if its recorded settings differ).
    owned : glob patterns, relative to the folder, of the files a run writes there, e.g.
        ``("checkpoint.safetensors", "log.jsonl", "figures/theorems")``; every other entry is the
        user's and is never moved or deleted. None: every (non-hidden) entry belongs to the run.
        ``run.json`` is always owned.
    name : the option that named the folder, quoted in the errors (e.g. ``"--out"``).
    flags : the option that sets each settings key, for the errors (default ``--key-with-dashes``).
    primary : False for the other processes of a multi-process run (ranks > 0): they neither lock nor
        check nor move anything; the primary process does.

    Attributes
    ----------
    path : the folder, absolute.
    resumed : True when ``resume`` found a run to continue.
    previous : the earlier run's record (``run.json``: settings, fingerprint, created, command), or None.

    Raises
    ------
    TypeError
        ``path`` is not a path.
    StorageError
        On entering: ``path`` is a file or lies under one, is not writable, a killed overwrite left a
        previous run aside, another run holds the lock, the folder holds a run and neither ``resume``
        nor ``overwrite`` is given (or both are), or ``resume`` meets other recorded settings (each
        named with its value there and now).

    Notes
    -----
    Enter it after every check of the new settings, so that a typo fails before the old run is
    moved. Leaving it with an exception before :meth:`result_written` deletes the new run's files and
    puts the old run back (Ctrl-C included); the lock is released in every case.
    """

    def __init__(self, path: str | os.PathLike, *, settings: Mapping | None = None, overwrite: bool = False,
                 resume: bool = False, owned: Iterable[str] | None = None, name: str = "out_dir",
                 flags: Mapping[str, str] | None = None, primary: bool = True):
        self.name = name
        self.path = check_folder(path, name)
        self.settings = None if settings is None else _canonical(settings)
        self.overwrite, self.resume, self.primary = bool(overwrite), bool(resume), bool(primary)
        self.owned = None if owned is None else tuple(owned) + (RECORD,)
        self.flags = dict(flags or {})
        self.resumed = False
        self.previous: dict | None = None
        self._lock = RunLock(self.path, name=name)
        self._aside: Path | None = None
        self._moved: list[str] = []

    # ---- what the folder holds ------------------------------------------------------------------
    def held(self) -> list[str]:
        """The paths (relative to the folder, sorted) that belong to a run and exist.

        Every non-hidden entry when ``owned`` is None, else those matching ``owned`` (a pattern with
        ``/`` matches inside sub-folders, e.g. ``figures/theorems``).
        """
        if not self.path.is_dir():
            return []
        if self.owned is None:
            return sorted(e for e in os.listdir(self.path) if not e.startswith("."))
        found = set()
        for pattern in self.owned:
            found |= {str(p.relative_to(self.path)) for p in self.path.glob(pattern)
                      if not p.name.startswith(".") or p.name == RECORD}
        return sorted(found)

    def read_record(self) -> dict | None:
        """The folder's ``run.json`` (None if missing; a ``StorageError`` if it cannot be read)."""
        p = self.path / RECORD
        if not p.exists():
            return None
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StorageError(f"{self.name} {str(self.path)!r}: its {RECORD} cannot be read ({e}); the settings of "
                               "the run there are unknown: choose another folder, or pass --overwrite") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("settings"), dict):
            raise StorageError(f"{self.name} {str(self.path)!r}: its {RECORD} records no settings; pass --overwrite "
                               "or choose another folder")
        return rec

    def _aside_folders(self) -> list[Path]:
        return sorted(self.path.parent.glob(f".{self.path.name}{ASIDE}*"))

    # ---- entering ---------------------------------------------------------------------------------
    def __enter__(self) -> RunDirectory:
        if not self.primary:
            self.path.mkdir(parents=True, exist_ok=True)
            return self
        if self.resume and self.overwrite:
            raise StorageError(f"give either --resume (continue the run in {self.name}) or --overwrite (replace it), "
                               "not both")
        left = self._aside_folders()
        if left:
            raise StorageError(f"{self.name} {str(self.path)!r}: an earlier --overwrite was interrupted and left the "
                               f"previous run in {str(left[0])!r}; move back what you need from it and delete it")
        self._lock.acquire()
        try:
            self._enter_locked()
        except BaseException:
            self._lock.release()
            raise
        return self

    def _enter_locked(self) -> None:
        held = self.held()
        self.previous = self.read_record()
        if held and not (self.resume or self.overwrite):
            raise StorageError(f"{self.name} {str(self.path)!r} holds a run ({', '.join(held[:3])}"
                               f"{', …' if len(held) > 3 else ''}); pass --resume to continue it, --overwrite to "
                               f"replace it (the old run is kept aside until the new one writes its first result), "
                               f"or choose another {self.name}")
        if self.resume and held:
            if self.previous is not None and self.settings is not None:
                differ = differing_settings(self.previous["settings"], self.settings, flags=self.flags)
                if differ:
                    raise StorageError(f"--resume: {self.name} {str(self.path)!r} ({', '.join(held[:3])}) was run "
                                       f"with other settings "
                                       f"({'; '.join(differ)}); pass the same settings (a resume continues the run "
                                       f"as it was), --overwrite to start again, or another {self.name}")
            self.resumed = True
        if self.overwrite and held:
            self._move_aside(held)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.settings is not None and not (self.resumed and self.previous is not None):
            now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
            atomic_write_json(self.path / RECORD, {"format": _FORMAT, "settings": self.settings,
                                                   "fingerprint": fingerprint(self.settings), "created": now,
                                                   "command": " ".join(sys.argv)[:2000]}, root=self.path)

    def _move_aside(self, held: list[str]) -> None:
        with signals_held():
            self._aside = Path(tempfile.mkdtemp(prefix=f".{self.path.name}{ASIDE}", dir=self.path.parent))
            for entry in held:
                (self._aside / entry).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path / entry, self._aside / entry)
                self._moved.append(entry)

    # ---- while running ----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """``path / name``, refused if a link would carry a write out of the folder."""
        return check_inside(self.path / name, self.path)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``path / name`` atomically, inside the folder (:func:`atomic_write_bytes`)."""
        return atomic_write_bytes(self.path / name, data, root=self.path)

    def write_json(self, name: str, obj, *, indent: int | None = 1) -> Path:
        """Write ``path / name`` as JSON atomically, inside the folder (:func:`atomic_write_json`)."""
        return atomic_write_json(self.path / name, obj, indent=indent, root=self.path)

    def result_written(self) -> None:
        """The new run has written its first result: the previous run moved aside is deleted now."""
        if self._aside is not None:
            shutil.rmtree(self._aside, ignore_errors=True)
            self._aside, self._moved = None, []

    # ---- leaving ----------------------------------------------------------------------------------
    def _put_back(self) -> None:
        with signals_held():
            for entry in self.held():  # the new run's partial files (no result yet)
                p = self.path / entry
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            for entry in self._moved:
                (self.path / entry).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._aside / entry, self.path / entry)
            shutil.rmtree(self._aside)  # only the emptied sub-folders of moved entries are left
            self._aside, self._moved = None, []

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._aside is not None:
                if exc_type is None:
                    self.result_written()
                else:
                    self._put_back()
                    warnings.warn(f"{self.name} {str(self.path)!r}: the run stopped before its first result; the "
                                  "previous run there was put back")
        finally:
            if self.primary:
                self._lock.release()
        return False




def cut_log(path: str | os.PathLike, keep: Callable[[dict], bool], *, root: str | os.PathLike | None = None) -> int:
    """Cut a JSON-lines log back to what a checkpoint covers (on resume).

    Parameters
    ----------
    path : the log (nothing happens if it is missing).
    keep : ``keep(record)`` is True for the records to keep (e.g. ``lambda r: r.get("step", 0) <= step``).
    root : the folder the write must stay in; default the log's folder.

    Returns
    -------
    The number of lines dropped (records not kept, and lines that do not parse: a line torn by the
    interruption). The log is rewritten atomically only when something is dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            ok = isinstance(rec, dict) and bool(keep(rec))
        except (ValueError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept), root=root)
    return dropped
