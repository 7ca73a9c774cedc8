"""Atomic files: a temporary file beside the target, ``fsync``, ``os.replace`` onto the final name,
``fsync`` of the folder. A crash leaves the old file or the new one, never a torn one.

A write never goes through a symbolic link that leaves its folder (``root``): a parent folder or
the file itself that resolves outside is refused (:class:`StorageError`), so a link planted in a
run folder cannot redirect a write to ``/etc`` or to another run. :func:`signals_held` defers
Ctrl-C around renames that must happen together (:mod:`.folder`, :mod:`.run`).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable

__all__ = ["StorageError", "check_inside", "atomic_write_with", "atomic_write_bytes",
           "atomic_write_json", "signals_held", "umask"]


class StorageError(ValueError):
    """An output folder or file the writer refuses (reported as one line, exit code 2)."""


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
def umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: str | os.PathLike) -> None:
    """Give a temporary file the mode a plain ``open()`` would (``0o666`` less the umask).

    Not ``mkstemp``'s ``0o600``, so a results file or a bundled checkpoint is readable by others.

    Parameters
    ----------
    path : the file.
    """
    os.chmod(path, 0o666 & ~umask())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_inside(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Refuse a write to ``path`` that a symbolic link would carry out of ``root``.

    Parameters
    ----------
    path : the file about to be written.
    root : the folder the write must stay in; default ``path``'s own folder.

    Returns
    -------
    ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    StorageError
        ``path``'s folder resolves outside ``root`` (a link among its parents), or ``path`` itself is a
        symbolic link whose target lies outside ``root`` (replacing it would drop the user's link, and
        writing through it would change a file elsewhere).
    """
    path = Path(path)
    root_real = os.path.realpath(path.parent if root is None else root)
    parent_real = os.path.realpath(path.parent)
    if not _within(parent_real, root_real):
        raise StorageError(f"refusing to write {str(path)!r}: its folder is a link to {parent_real!r}, outside "
                           f"{root_real!r}")
    if path.is_symlink():
        target = os.path.realpath(path)
        if not _within(target, root_real):
            raise StorageError(f"refusing to write {str(path)!r}: it is a symbolic link to {target!r}, outside "
                               f"{root_real!r}; remove the link or choose another folder")
    return path


def atomic_write_with(path: str | os.PathLike, fill: Callable[[str], object], *,
                      root: str | os.PathLike | None = None) -> Path:
    """Call ``fill(tmp)`` to write a temporary file beside ``path``, then put it at ``path`` atomically.

    Parameters
    ----------
    path : the destination (its folder is created if missing).
    fill : writes the whole file at the temporary path it is given (a str).
    root : the folder the write must stay in (:func:`check_inside`); default ``path``'s folder.

    Returns
    -------
    The path, as a :class:`~pathlib.Path`.

    Raises
    ------
    StorageError
        A symbolic link would carry the write out of ``root``.
    OSError
        The write fails (e.g. a full disk); the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_inside(path, root)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fill(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, root: str | os.PathLike | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write_with`).

    Parameters
    ----------
    path : the destination.
    data : the bytes.
    root : the folder the write must stay in; default ``path``'s folder.

    Returns
    -------
    The path, as a :class:`~pathlib.Path`.
    """
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data), root=root)


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 1,
                      root: str | os.PathLike | None = None) -> Path:
    """``json.dumps(obj)`` (UTF-8, a final newline, NaN refused) written atomically.

    Parameters
    ----------
    path : the destination.
    obj : a JSON-serialisable object.
    indent : ``json.dumps``' indent.
    root : the folder the write must stay in; default ``path``'s folder.

    Returns
    -------
    The path, as a :class:`~pathlib.Path`.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode(), root=root)


@contextlib.contextmanager
def signals_held():
    """Defer Ctrl-C (SIGINT) until the block ends, e.g. around renames that must happen together.

    Only the main thread can handle signals; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list = []
    previous = signal.signal(signal.SIGINT, lambda *a: got.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if got:
            raise KeyboardInterrupt
