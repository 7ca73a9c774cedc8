"""Atomic, verifiable training checkpoints in one safetensors file.

A checkpoint holds the model, the optimizer, the scheduler, the RNG states (torch CPU, CUDA when
present, Python's ``random``) and the step. Tensors are stored as safetensors tensors
(``model.*``, ``optim.*``, ``rng.*``); everything else (optimizer param groups, scheduler state,
step, the Python RNG state, user extras) is JSON in the safetensors metadata, together with a
SHA-256 of all tensor bytes. Nothing is unpickled on load.

Writing is atomic: the file is written to a temporary name in the target directory, flushed and
``fsync``-ed, renamed over the target with ``os.replace`` and the directory is ``fsync``-ed, so a
crash leaves either the old checkpoint or the new one, never a partial file under the final name
(and a user's existing file is never overwritten in place). Loading checks the format, the
metadata and the hash: a corrupt or truncated file raises :class:`CheckpointError` naming the
file and the problem, it never silently restarts training.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

Tensor = torch.Tensor
FORMAT = "tiling-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or of another format."""


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors, meta_state = {}, {}
    for pid, st in state["state"].items():
        entry = {}
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{pid}.{name}"] = v.detach().cpu().contiguous()
                entry[name] = {"tensor": f"optim.{pid}.{name}"}
            else:
                entry[name] = {"value": v}
        meta_state[str(pid)] = entry
    return tensors, {"state": meta_state, "param_groups": state["param_groups"]}


def _join_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()}
    # JSON turns tuples (e.g. AdamW's betas) into lists; the optimizers store them as tuples
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                    step: int = 0, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically to ``path`` (temporary file, fsync, rename, fsync of the dir).

    Parameters
    ----------
    path : the destination (a safetensors file).
    model : its state dict is saved.
    optimizer, scheduler : their state dicts are saved too, optional.
    step : the training step.
    extra : JSON-serialisable metadata, optional.

    Returns
    -------
    The path, as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta: dict = {"format": FORMAT, "step": int(step), "extra": extra or {}}
    if optimizer is not None:
        t, m = _split_optimizer(optimizer.state_dict())
        tensors.update(t)
        meta["optimizer"] = m
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta["rng_python"] = random.getstate()
    # tied weights share storage; safetensors refuses shared tensors, so each entry is its own copy
    tensors = {k: v.clone() for k, v in tensors.items()}
    metadata = {"meta": json.dumps(meta), "sha256": _digest(tensors)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp's 0o600 -> the mode a plain open() gives (0o666 less the umask)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                    restore_rng: bool = True) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : the checkpoint.
    model : loaded strictly (``load_state_dict``).
    optimizer, scheduler : restored too when given; the checkpoint must then hold their state.
    restore_rng : also restore the random number generators' states.

    Returns
    -------
    ``{"step", "extra"}``.

    Raises
    ------
    CheckpointError
        The file is missing, not a safetensors file, truncated, of another format, fails its
        SHA-256, does not match the model (strict ``load_state_dict``), or holds no optimizer or
        scheduler state when one is given.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (cannot be read as safetensors: {e})") from e
    try:
        meta = json.loads(metadata["meta"])
        digest = metadata["sha256"]
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has no valid tiling metadata ({e!r}); not a {FORMAT} file") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if _digest(tensors) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: the SHA-256 of its tensors does not match its header")
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match the model: {e}") from e
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
    if scheduler is not None:
        if "scheduler" not in meta:
            raise CheckpointError(f"checkpoint {path} holds no scheduler state")
        scheduler.load_state_dict(meta["scheduler"])
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
            states = [tensors[k] for k in keys]
            if states:
                torch.cuda.set_rng_state_all(states)
        st = meta["rng_python"]
        random.setstate((st[0], tuple(st[1]), st[2]))
    return {"step": int(meta["step"]), "extra": meta.get("extra", {})}


__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "FORMAT"]
