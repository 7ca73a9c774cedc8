"""One writer discipline for every output folder: reports, batches, ``verify``, training runs, sweeps.

Nothing a user saved is overwritten or lost (issue 27). The pieces, each usable alone:

* **Atomic writes** (:func:`atomic_write_bytes`, :func:`atomic_write_json`, :func:`atomic_copy`,
  :func:`atomic_write_with`): a temporary file beside the target, ``fsync``, ``os.replace`` onto the
  final name, ``fsync`` of the folder, so a crash leaves the old file or the new one, never a torn
  one. A write never goes through a symbolic link that leaves its folder (``root``): a parent folder
  or the file itself that resolves outside is refused (``StorageError``), so a link planted in a run
  folder cannot redirect a write to ``/etc`` or to another run.
* **An advisory lock** (:class:`RunLock`): ``.NAME.lock`` beside the folder ``NAME``, held with
  ``flock`` for the whole run and recording the holder's pid, start time, host and command. A second
  run into the same folder is refused at once, naming them. The kernel drops the lock of a dead
  process, so a lock file left by a killed run is *stale*: it is reported (a warning naming the dead
  pid) and taken over.
* **A settings fingerprint** (:func:`fingerprint`, :func:`differing_settings`): ``run.json`` in the
  folder records the settings a run was started with; a resume under other settings is refused
  before any work, naming each differing setting.
* **Overwrite without loss** (:class:`RunDirectory`): ``overwrite`` moves the previous run's own files
  aside (``.NAME.run-old-*`` beside the folder) instead of deleting them; they are deleted once the
  new run has written its first result (:meth:`RunDirectory.result_written`), and put back if the
  new run fails or is interrupted before that. A run killed in between leaves the aside folder,
  which the next run names and never deletes.
* **Resume bookkeeping**: :func:`cut_log` cuts a JSON-lines log back to a checkpoint's step.

Typical use (a training script)::

    settings = {...}                      # every option that changes what is computed
    check_everything_else(settings)       # typos fail here, before the old run is touched
    with RunDirectory(out, settings=settings, overwrite=args.overwrite, resume=args.resume,
                      owned=("checkpoint.safetensors", "log.jsonl")) as run:
        if run.resumed:
            step = load(...); cut_log(run.path / "log.jsonl", lambda r: r.get("step", 0) <= step)
        ...
        save_checkpoint(run.path / "checkpoint.safetensors", ...)
        run.result_written()              # the old run (if any) is deleted only now

Errors are :class:`StorageError` (a ``ValueError``) whose message names the option (``name``, e.g.
``--out``) and says what to do; command-line programs print it as one line and exit with code 2.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

try:  # POSIX; elsewhere the lock falls back to the recorded pid
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None

__all__ = [
    "StorageError", "check_folder", "default_mode", "check_inside", "atomic_write_with", "atomic_write_bytes", "atomic_write_json",
    "atomic_copy", "signals_held", "RunLock", "fingerprint", "differing_settings", "RunDirectory", "cut_log",
    "RECORD", "ASIDE",
]

#: the file in a run folder that records its settings
RECORD = "run.json"
#: infix of the folder beside NAME that holds a previous run moved aside by ``overwrite``
ASIDE = ".run-old-"
_FORMAT = "tiling-run-v1"


class StorageError(ValueError):
    """An output folder or file the writer refuses (reported as one line, exit code 2)."""


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
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
        default_mode(tmp)
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


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """Copy ``src`` to ``dst`` atomically (a temporary copy beside ``dst``, then ``os.replace``).

    Parameters
    ----------
    src, dst : source and destination files.
    root : the folder the write must stay in; default ``dst``'s folder.

    Returns
    -------
    ``dst``, as a :class:`~pathlib.Path`.
    """
    return atomic_write_with(dst, lambda tmp: shutil.copyfile(src, tmp), root=root)


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


# ------------------------------------------------------------------------------------------------
# the lock
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# the run folder
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# logs
# ------------------------------------------------------------------------------------------------
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
