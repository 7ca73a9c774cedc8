"""An advisory lock on an output folder (:class:`RunLock`): one run into a folder at a time.

``.NAME.lock`` beside the folder ``NAME``, held with ``flock`` for the whole run and recording the
holder's pid, start time, host and command. A second run into the same folder is refused at once,
naming them. The kernel drops the lock of a dead process, so a lock file left by a killed run is
*stale*: it is reported (a warning naming the dead pid) and taken over.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
import threading
import warnings
from pathlib import Path

from .atomic import StorageError

try:  # POSIX; elsewhere the lock falls back to the recorded pid
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None

__all__ = ["RunLock"]


def _process_start(pid: int) -> float | None:
    """Seconds since the epoch at which process ``pid`` started (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _alive(pid: int, start: float | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start`` (pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _process_start(pid)
    return start is None or now is None or abs(now - start) < 2.0


def _describe(info: dict) -> str:
    when = info.get("started")
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {when or '?'}"
            + (f" ({info['command']})" if info.get("command") else ""))


#: locks this process holds: lock path -> [file descriptor, depth] (a lock is re-entrant in one process)
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


class RunLock:
    """An advisory lock on an output folder, held by one process at a time.

    Parameters
    ----------
    folder : the folder (it need not exist); the lock file is ``.NAME.lock`` beside it.
    name : the option that named the folder, quoted in the errors (e.g. ``"--out"``).

    Notes
    -----
    ``flock`` on the lock file; the file holds JSON ``{"pid", "started", "process_start", "host",
    "command"}`` of the holder. A lock whose holder died is released by the kernel: the next
    :meth:`acquire` takes it and warns that it was stale, naming the dead pid. Taking the same lock
    again in one process nests (the lock is released when the outermost holder releases it).
    """

    def __init__(self, folder: str | os.PathLike, *, name: str = "out_dir"):
        folder = Path(os.path.abspath(os.fspath(folder)))
        self.folder, self.name = folder, name
        self.path = folder.parent / f".{folder.name}.lock"

    def holder(self) -> dict | None:
        """The holder recorded in the lock file (None if there is none, or it cannot be read)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def acquire(self) -> RunLock:
        """Take the lock.

        Returns
        -------
        ``self``.

        Raises
        ------
        StorageError
            Another live process holds it: the message names the folder's option, the holder's pid,
            host, start time and command.

        Warns
        -----
        UserWarning
            A stale lock (its recorded holder is no longer running) was taken over.
        """
        key = str(self.path)
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StorageError(self._held_message(self.holder())) from None
            try:  # the file may have been unlinked by a releasing holder between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self.holder()
            if fcntl is None and previous and previous.get("pid") != os.getpid() and \
                    _alive(int(previous.get("pid", 0)), previous.get("process_start")):
                os.close(fd)
                raise StorageError(self._held_message(previous))
            if previous and previous.get("pid") is not None:
                warnings.warn(f"{self.name} {str(self.folder)!r}: a stale lock of {_describe(previous)} was left by a "
                              "run that is no longer running; it is taken over")
            now = _dt.datetime.now().astimezone()
            info = {"pid": os.getpid(), "started": now.isoformat(timespec="seconds"),
                    "process_start": _process_start(os.getpid()), "host": socket.gethostname(),
                    "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            with _HELD_GUARD:
                _HELD[key] = [fd, 1]
            return self
        raise StorageError(f"{self.name} {str(self.folder)!r}: cannot take the lock {str(self.path)!r} (it keeps "
                           "changing); is another run starting there?")

    def _held_message(self, info: dict | None) -> str:
        who = _describe(info) if info else "another process (the lock file names no holder)"
        return (f"{self.name} {str(self.folder)!r} is in use by another run ({who}); wait for it to finish or stop "
                f"it, or choose another {self.name}")

    def release(self) -> None:
        """Release the lock (the outermost release of this process removes the lock file)."""
        key = str(self.path)
        with _HELD_GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[key]
        fd = entry[0]
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still held: a waiting process re-checks the inode
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

