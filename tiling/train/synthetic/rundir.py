"""The run folder of a synthetic-task run (``--out``): what it holds, and the checks before a run enters it.

Nothing saved is lost (:mod:`tiling.train.storage`): an ``--out`` that holds a run is refused unless
``--resume`` (continue it) or ``--overwrite`` (replace it, the old run kept aside until the new one
writes its first checkpoint); a resume under other settings, with a ``--stop-at`` below the
checkpoint's step, or of another folder's checkpoint into a folder that holds a run is refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tiling.options import RunError
from tiling.train.checkpoint import read_meta
from tiling.train.storage import ASIDE, RunDirectory

from .options import SyntheticOptions, settings

__all__ = ["PROG", "CHECKPOINT", "OWNED", "run_directory", "check_run_dir", "check_resume", "remove_stale_temporaries"]

#: the program's name in its messages (the script's, which the docs and the users' logs name)
PROG = "train_tiled"
CHECKPOINT = "checkpoint.safetensors"
#: the files a run writes into --out (the others are the user's: never moved or deleted)
OWNED = (CHECKPOINT, "log.jsonl", "params_rank*.safetensors")


def _resumes_in_place(opts: SyntheticOptions) -> bool:
    """Whether ``--resume`` names the checkpoint of the run in ``--out`` (not one of another folder)."""
    return opts.resume is not None and Path(opts.resume).resolve().parent == Path(opts.out).resolve()


def run_directory(opts: SyntheticOptions, *, primary: bool = True) -> RunDirectory:
    """The :class:`~tiling.train.storage.RunDirectory` of ``--out`` (entered by :func:`~.loop.train`)."""
    return RunDirectory(opts.out, settings=settings(opts), overwrite=opts.overwrite, resume=_resumes_in_place(opts),
                        owned=OWNED, name="--out", primary=primary)


def check_run_dir(opts: SyntheticOptions) -> None:
    """Refuse an ``--out`` that holds a run unless ``--resume`` or ``--overwrite`` says what to do with it.

    Writes nothing (a sweep calls it for every configuration before the first one trains); the
    same checks run again under the folder's lock when :func:`~.loop.train` enters it.

    Raises
    ------
    RunError
        An interrupted ``--overwrite`` left the previous run aside, ``--out`` holds a run and
        ``--resume`` names another folder's checkpoint, or ``--out`` holds a run and neither
        ``--resume`` nor ``--overwrite`` is given.
    """
    run = run_directory(opts)  # checks the path: not a file, not under one, writable
    out, checkpoint = str(Path(opts.out)), Path(opts.out) / CHECKPOINT
    left = sorted(run.path.parent.glob(f".{run.path.name}{ASIDE}*"))
    if left:
        raise RunError(f"--out {out!r}: an earlier --overwrite was interrupted and left the previous run in "
                       f"{str(left[0])!r}; move back what you need from it and delete it")
    held = run.held()
    if held and opts.resume is not None and not _resumes_in_place(opts):
        raise RunError(f"--out {out!r} holds a run ({', '.join(held)}), and --resume {opts.resume!r} "
                       f"is another folder's checkpoint; pass --resume {checkpoint} to continue the run "
                       "in --out, or choose an empty --out to continue that checkpoint there")
    if held and opts.resume is None and not opts.overwrite:
        raise RunError(f"--out {out!r} holds a run ({', '.join(held)}); pass --resume {checkpoint} to continue "
                       "it, --overwrite to replace it (the old run is kept aside until the new one writes its "
                       "first checkpoint), or choose another --out")


def check_resume(opts: SyntheticOptions) -> None:
    """Refuse a checkpoint whose recorded settings differ from this run's, naming each one, and a
    ``--stop-at`` below its step (the header only is read: nothing is loaded).

    Raises
    ------
    RunError
        Other settings, or a ``--stop-at`` below the checkpoint's step.
    tiling.train.checkpoint.CheckpointError
        A missing or corrupt checkpoint (named).
    """
    meta, _ = read_meta(opts.resume)
    if opts.stop_at is not None and opts.stop_at < meta["step"]:
        raise RunError(f"--stop-at {opts.stop_at} is below the step of --resume {opts.resume!r} "
                       f"({meta['step']}); pass a --stop-at of at least {meta['step']}")
    recorded = meta["extra"].get("args")
    if not isinstance(recorded, dict):
        print(f"{PROG}: warning: {opts.resume} records no settings (an older checkpoint); they are not checked",
              file=sys.stderr)
        return
    flags = SyntheticOptions.flags()
    differ = [f"{flags[k]} {recorded[k]} there, {v} now" for k, v in settings(opts).items()
              if k in recorded and recorded[k] != v]
    if differ:
        raise RunError(f"--resume {opts.resume!r} was trained with other settings ({'; '.join(differ)}); "
                       "pass the same settings (a resume continues the run as it was), or start a new run")


def remove_stale_temporaries(out: str | Path) -> None:
    """Delete the temporary files a killed checkpoint write left (``.checkpoint.safetensors.*.tmp``)."""
    stale = list(Path(out).glob(f".{CHECKPOINT}.*.tmp"))
    for f in stale:
        f.unlink()
    if stale:
        print(f"{PROG}: removed {len(stale)} temporary file(s) of an interrupted checkpoint write in {out}",
              file=sys.stderr)
