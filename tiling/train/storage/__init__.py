"""Storage: the one home of every writer's discipline (reports, batches, ``verify``, training runs,
sweeps, checkpoints, ``save_pretrained``, bundled exports). Nothing a user saved is overwritten or
lost (issue 27). The pieces, each usable alone, one module per concern:

* :mod:`.atomic` -- **atomic files** (:func:`atomic_write_bytes`, :func:`atomic_write_json`,
  :func:`atomic_write_with`): a temporary file beside the target, ``fsync``, ``os.replace`` onto the
  final name, ``fsync`` of the folder, so a crash leaves the old file or the new one, never a torn
  one; a write through a symbolic link that leaves its folder is refused (:func:`check_inside`).
* :mod:`.lock` -- **an advisory lock** (:class:`RunLock`): ``.NAME.lock`` beside the folder ``NAME``;
  a second run into the same folder is refused at once naming the holder's pid and start time; a
  stale lock (dead pid) is reported and taken over.
* :mod:`.folder` -- **output folders** (:func:`~.folder.check_folder`, :func:`check_out_dir`,
  :func:`write_folder`): checked before any work, and a folder written whole into a temporary
  folder and swapped into place, the user's other entries carried over.
* :mod:`.run` -- **the run folder** (:class:`RunDirectory`): locked, its settings fingerprint
  (:func:`fingerprint`, :func:`differing_settings`, ``run.json``) checked on resume before any work,
  ``overwrite`` that moves the old run aside until the new one writes its first result, and
  :func:`cut_log` for resume.

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

from .atomic import StorageError, atomic_write_bytes, atomic_write_json, atomic_write_with, check_inside
from .folder import check_out_dir, write_folder
from .lock import RunLock
from .run import ASIDE, RunDirectory, cut_log, differing_settings, fingerprint

__all__ = [
    "StorageError", "atomic_write_bytes", "atomic_write_json", "atomic_write_with", "check_inside",
    "check_out_dir", "write_folder", "RunLock", "ASIDE", "RunDirectory",
    "cut_log", "differing_settings", "fingerprint",
]
