"""Atomic file writes: a temporary file in the target's directory, ``fsync``, ``os.replace`` onto the
final name, ``fsync`` of the directory. A crash leaves the old file or the new one, never a partial
file under the final name (the same discipline as :mod:`tiling.train.checkpoint`)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def default_mode(path: str | os.PathLike) -> None:
    """Give a temporary file the mode a plain ``open()`` would (``0o666`` less the umask).

    Not ``mkstemp``'s ``0o600``, so a results file or a bundled checkpoint is readable by others.

    Parameters
    ----------
    path : the file.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomically(path: str | os.PathLike, fill) -> Path:
    """Call ``fill(tmp)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it onto
    ``path`` (the temporary file is removed if anything fails) and fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fill(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path : the destination.
    data : the bytes.

    Returns
    -------
    The path, as a :class:`~pathlib.Path`.
    """
    return _atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 1) -> Path:
    """``json.dumps(obj)`` (UTF-8, a final newline) written atomically.

    Parameters
    ----------
    path : the destination.
    obj : a JSON-serialisable object.
    indent : ``json.dumps``' indent.

    Returns
    -------
    The path, as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode())


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (a temporary copy beside ``dst``, then ``os.replace``).

    Parameters
    ----------
    src, dst : source and destination files.

    Returns
    -------
    ``dst``, as a :class:`~pathlib.Path`.
    """
    return _atomically(dst, lambda tmp: shutil.copyfile(src, tmp))


__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_copy", "default_mode"]
