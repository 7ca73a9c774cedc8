"""Output folders: checked before any work, and written whole (a report, ``infogeo analyse --out``,
``Report.save``, ``TiledMambaForCausalLM.save_pretrained``).

:func:`check_folder` checks that a path can be an output folder (a path, not a file, not under a
file, writable). :func:`write_folder` writes a folder's files into a temporary folder beside the
target and renames it into place, so an interruption (Ctrl-C, a crash, a full disk) leaves the
previous folder as it was, never a folder that mixes two runs' files:

* a missing or empty target: one ``rename`` of the temporary folder onto it;
* a non-empty target is refused unless ``overwrite``; then the old folder is renamed aside, the new
  one renamed into place, every entry of the old one that the writer does not own (the user's
  files and folders) moved into the new one, and the rest (the previous run's files, e.g. its
  figures beside a report saved without figures) deleted. SIGINT is held back during these renames.

Temporary folders are named ``.NAME.infogeo-tmp-*`` (deleted by the next save: they only ever hold
files the writer made); the renamed-aside folder ``.NAME.infogeo-old-*`` is never deleted while it
may hold user files, and :func:`check_out_dir` names it if a save was killed between the renames.
A save holds the folder's lock (:class:`~tiling.train.storage.RunLock`, ``.NAME.lock`` beside it), so
a second writer into the same folder is refused at once, naming the first one's pid and start time.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .atomic import StorageError, signals_held, umask
from .lock import RunLock

__all__ = ["check_folder", "check_out_dir", "write_folder"]

_TMP, _OLD = ".infogeo-tmp-", ".infogeo-old-"


def check_folder(folder: object, name: str) -> Path:
    """Check that ``folder`` can be an output folder: a path, not a file, not under a file, writable.

    Parameters
    ----------
    folder : the folder (str or os.PathLike; it need not exist).
    name : the option's name, quoted in the errors.

    Returns
    -------
    ``folder`` as an absolute path.

    Raises
    ------
    TypeError
        ``folder`` is not a non-empty path.
    StorageError
        It contains a NUL character, is a file or lies under a file, or it (or its nearest existing
        ancestor) is not writable (tested by creating and removing a temporary folder there).
    """
    if not isinstance(folder, (str, os.PathLike)) or os.fspath(folder) in ("", b""):
        raise TypeError(f"{name} must be a non-empty path (str or os.PathLike), got {folder!r}")
    text = os.fsdecode(os.fspath(folder))
    if "\x00" in text:
        raise StorageError(f"{name} {text!r} contains a NUL character; expected a path")
    out = Path(os.path.abspath(text))
    if out.exists() and not out.is_dir():
        raise StorageError(f"{name} {text!r} exists and is not a folder")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StorageError(f"{name} {text!r} lies under {str(ancestor)!r}, which is a file, not a folder")
    for where in [ancestor] + ([out] if out.is_dir() else []):
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".infogeo-probe-", dir=where))
        except OSError as e:
            raise StorageError(f"{name} {text!r}: cannot write in {str(where)!r} "
                               f"({e.strerror or type(e).__name__})") from None
    return out


def _hint(name: str) -> str:
    return "--overwrite" if name.startswith("--") else "overwrite=True"


def check_out_dir(out_dir: object, *, overwrite: bool = False, name: str = "out_dir",
                  must_be_empty: bool = True) -> Path:
    """Check that ``out_dir`` can receive a report.

    Parameters
    ----------
    out_dir : the folder (str or os.PathLike).
    overwrite : an existing non-empty folder may be replaced.
    name : the option's name, quoted in the errors.
    must_be_empty : refuse a non-empty folder unless ``overwrite``; False: the caller writes named
        files of its own and checks them itself.

    Returns
    -------
    ``out_dir`` as an absolute path (symlinks resolved).

    Raises
    ------
    TypeError
        ``out_dir`` is not a non-empty path.
    StorageError
        A ``ValueError`` naming ``name``: the path contains a NUL character, an earlier interrupted save left the
        previous content beside it, it is a file or lies under a file, it is a non-empty folder while
        ``must_be_empty`` and not ``overwrite``, it is (or holds) the current folder while
        ``overwrite`` would swap it, or it or its parent is not writable (tested by creating and
        removing a temporary folder there; nothing else is created).
    """
    check_folder(out_dir, name)  # a path, not a file, not under a file, writable
    out = Path(os.path.abspath(os.fsdecode(os.fspath(out_dir))))
    if out.is_symlink():
        out = out.resolve()
    stale = sorted(p.name for p in out.parent.glob(f".{out.name}{_OLD}*")) if out.parent.is_dir() else []
    if stale:
        raise StorageError(f"{name} {str(out_dir)!r}: an earlier save was interrupted and left the previous content in "
                         f"{str(out.parent / stale[0])!r}; move back what you need from it and delete it")
    if out.exists():
        if not out.is_dir():
            raise StorageError(f"{name} {str(out_dir)!r} exists and is not a folder")
        entries = sorted(os.listdir(out)) if must_be_empty else []
        if entries and not overwrite:
            raise StorageError(f"{name} {str(out_dir)!r} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
                             f"choose another folder, or pass {_hint(name)} to replace the report there (files "
                             "that are not part of a report are kept)")
        cwd = Path.cwd().resolve()
        if entries and (cwd == out or out in cwd.parents):
            raise StorageError(f"{name} {str(out_dir)!r} is (or holds) the current folder; choose a sub-folder")
    return out


def write_folder(out_dir: object, fill: Callable[[Path], object], owned: Iterable[str], *,
                 overwrite: bool = False, name: str = "out_dir") -> Path:
    """Call ``fill(tmp)`` to write a folder's files into a temporary folder, then put it at ``out_dir``.

    Parameters
    ----------
    out_dir : the folder.
    fill : writes the files into the folder it is given.
    owned : glob patterns (``fnmatch``; a plain name matches itself) of the entries this writer
        produces. The entries ``fill`` writes are the writer's too; every other entry of an existing
        ``out_dir`` is the user's and is carried over into the new folder.
    overwrite, name : as for :func:`check_out_dir`.

    Returns
    -------
    The absolute path of ``out_dir``.

    Raises
    ------
    TypeError, StorageError
        As :func:`check_out_dir`; another process is writing ``out_dir`` (its lock,
        :class:`~tiling.train.storage.RunLock`, is held: the message names its pid and start time);
        an exception of ``fill`` propagates (the temporary folder is removed).
    """
    out = check_out_dir(out_dir, overwrite=overwrite, name=name)
    with RunLock(out, name=name):
        out = check_out_dir(out_dir, overwrite=overwrite, name=name)  # again, now that no one else writes
        return _write_folder(out, fill, owned)


def _write_folder(out: Path, fill: Callable[[Path], object], owned: Iterable[str]) -> Path:
    """:func:`write_folder` once the folder is checked and locked."""
    owned = tuple(owned)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}{_TMP}*"):  # a killed save's files, never the user's
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TMP}", dir=out.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0o700 -> the mode of a plain mkdir
        fill(tmp)
        with signals_held():
            if not out.exists() or not os.listdir(out):
                os.replace(tmp, out)  # rename(2) onto a missing or empty folder: atomic
                return out
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}{_OLD}", dir=out.parent))
            os.replace(out, old)  # onto the empty folder just made
            os.replace(tmp, out)
            written = set(os.listdir(out))
            for entry in os.listdir(old):
                if entry not in written and not any(fnmatch.fnmatchcase(entry, p) for p in owned):
                    os.replace(old / entry, out / entry)
            shutil.rmtree(old)
    except BaseException:
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)  # a rename failed between the two: put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
