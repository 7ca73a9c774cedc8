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

Loading trusts nothing in the file (issue 27). The safetensors header is read and checked first
(:func:`read_header`: its length, its JSON, every tensor's dtype, shape and byte range inside the
file), then the metadata (:func:`read_meta`: types and ranges), then every tensor the model has
is matched by name and shape against the header, all before a tensor is read. Tensors are then
read one at a time (the SHA-256 pass, then the copy into the model), so memory stays at the
model's own size plus one tensor, not twice the file. A tied weight (a head sharing the
embedding's tensor) must be stored equal in the file: a file whose tied tensors differ is
refused, since loading would keep one of them silently.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tiling.train.storage import atomic_write_with

Tensor = torch.Tensor
FORMAT = "tiling-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or of another format."""


def _hash_one(h, k: str, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(k.encode())
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        _hash_one(h, k, tensors[k])
    return h.hexdigest()


#: safetensors dtypes a checkpoint may hold, and their torch types
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
#: the longest header read (safetensors' own limit): a larger length field is refused before it is read
MAX_HEADER_BYTES = 100 * 2 ** 20


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it: dtype, shape and its size in bytes."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: the string metadata and the tensors, by name."""

    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    file_size: int

    def elements(self, prefix: str = "") -> int:
        """Elements of the tensors whose names start with ``prefix``."""
        return sum(math.prod(t.shape) for k, t in self.tensors.items() if k.startswith(prefix))


def read_header(path: str | os.PathLike) -> Header:
    """Read and check the header of a safetensors file without reading a tensor.

    Parameters
    ----------
    path : the file.

    Returns
    -------
    :class:`Header`.

    Raises
    ------
    CheckpointError
        The file does not exist, is shorter than its header says, its header length exceeds
        :data:`MAX_HEADER_BYTES`, its header is not a JSON object of string metadata and tensor
        entries, or a tensor has an unknown dtype, a shape that is not a list of non-negative
        ints, or a byte range that does not match its shape, overlaps another or leaves the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    size = p.stat().st_size
    bad = f"checkpoint {p} is corrupt or truncated (not a safetensors file: "
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(bad + f"{size} bytes, shorter than the 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise CheckpointError(bad + f"its header claims {n} bytes; the file has {size - 8} after the length "
                                  f"field, and at most {MAX_HEADER_BYTES} are read)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise CheckpointError(bad + f"its header is not UTF-8 JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(bad + f"its header is a JSON {type(header).__name__}, expected an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(bad + "its __metadata__ is not an object of strings)")
    data = size - 8 - n
    tensors, spans = {}, []
    for name, entry in header.items():
        where = f"{bad}tensor {name!r}: "
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in _DTYPES:
            got = entry.get("dtype") if isinstance(entry, dict) else type(entry).__name__
            raise CheckpointError(where + f"dtype {got!r} is not one of {sorted(_DTYPES)})")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise CheckpointError(where + f"shape {shape!r} is not a list of non-negative ints)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool)
                                                                       for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise CheckpointError(where + f"byte range {offsets!r} is not inside the {data} data bytes)")
        dtype = _DTYPES[entry["dtype"]]
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(where + f"shape {shape} needs {nbytes} bytes, its range holds "
                                  f"{offsets[1] - offsets[0]})")
        tensors[name] = TensorInfo(dtype, tuple(shape), nbytes)
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(bad + f"tensors {a!r} and {b!r} overlap)")
    return Header(metadata=metadata, tensors=tensors, file_size=size)


def _is_int(x: object, minimum: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def read_meta(path: str | os.PathLike) -> tuple[dict, Header]:
    """The checked tiling metadata of a checkpoint and its header, without reading a tensor.

    Parameters
    ----------
    path : the checkpoint.

    Returns
    -------
    ``(meta, header)``: ``meta`` is ``{"format", "step", "extra", ...}`` as :func:`save_checkpoint`
    wrote it.

    Raises
    ------
    CheckpointError
        As :func:`read_header`; or the metadata is not a tiling checkpoint's: ``meta`` missing or not
        a JSON object, another ``format``, a ``step`` that is not a non-negative int, an ``extra``,
        ``optimizer`` or ``scheduler`` that is not an object, a ``sha256`` that is not 64 hex digits.
    """
    header = read_header(path)
    p = Path(path)
    try:
        meta = json.loads(header.metadata["meta"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {p} has no valid tiling metadata ({e!r}); not a {FORMAT} file") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {p}: its metadata is a JSON {type(meta).__name__}, expected an object; "
                              f"not a {FORMAT} file")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if not _is_int(meta.get("step")):
        raise CheckpointError(f"checkpoint {p}: its step {meta.get('step')!r} is not a non-negative int")
    for key in ("extra", "optimizer", "scheduler"):
        if key in meta and not isinstance(meta[key], dict):
            raise CheckpointError(f"checkpoint {p}: its metadata's {key!r} is a {type(meta[key]).__name__}, "
                                  "expected an object")
    meta.setdefault("extra", {})
    digest = header.metadata.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise CheckpointError(f"checkpoint {p} has no valid SHA-256 of its tensors in its header")
    return meta, header


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """State-dict names that share one tensor (e.g. a head tied to the embedding), in groups of ≥ 2."""
    groups: dict[tuple, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if v.numel() and v.device.type != "meta":
            groups.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def _check_against_model(path: Path, header: Header, model: torch.nn.Module) -> None:
    """Every tensor of the model that the file holds under its name has the model's shape (before any read)."""
    expected = model.state_dict(keep_vars=True)
    stored = {k[len("model."):]: v for k, v in header.tensors.items() if k.startswith("model.")}
    if not stored:
        raise CheckpointError(f"checkpoint {path} does not match the model: it holds no model tensors")
    wrong = [f"{k}: {list(stored[k].shape)} in the file, {list(v.shape)} in the model"
             for k, v in expected.items() if k in stored and tuple(v.shape) != stored[k].shape]
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not match the model: {len(wrong)} tensor(s) of another shape "
                              f"({'; '.join(wrong[:3])}{'; …' if len(wrong) > 3 else ''})")
    kinds = [k for k, v in expected.items() if k in stored
             and v.dtype.is_floating_point != stored[k].dtype.is_floating_point]
    if kinds:
        raise CheckpointError(f"checkpoint {path} does not match the model: {kinds[0]} is "
                              f"{stored[kinds[0]].dtype} in the file, {expected[kinds[0]].dtype} in the model")


def _verify_tensors(path: Path, header: Header, digest: str, tied: list[list[str]]) -> None:
    """The SHA-256 of the tensors, read one at a time; tied tensors must be stored equal."""
    h = hashlib.sha256()
    first: dict[str, Tensor] = {}
    lead = {f"model.{k}": f"model.{g[0]}" for g in tied for k in g[1:]}
    keep = set(lead.values())
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in sorted(header.tensors):
                t = f.get_tensor(k)
                _hash_one(h, k, t)
                if k in keep:
                    first[k] = t
                elif k in lead and lead[k] in first and not torch.equal(first[lead[k]], t):
                    diff = float((first[lead[k]].double() - t.double()).abs().max())
                    raise CheckpointError(f"checkpoint {path}: {k[6:]} is tied to {lead[k][6:]} in the model (one "
                                          f"tensor) but differs from it in the file (max |difference| {diff:.3g}); "
                                          "loading would keep one of them silently")
    except CheckpointError:
        raise
    except Exception as e:  # safetensors' own errors for data it cannot read
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (cannot be read as safetensors: {e})") from e
    if h.hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: the SHA-256 of its tensors does not match its header")


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
    return atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


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
        The file is missing, not a safetensors file, truncated, of another format
        (:func:`read_meta`), fails its SHA-256, does not match the model (a missing, unknown or
        differently shaped tensor), stores a tied weight (e.g. the head tied to the embedding)
        as two different tensors, or holds no optimizer or scheduler state when one is given.

    Notes
    -----
    Every check that needs no tensor data runs before any tensor is read, and the SHA-256 and
    tied-weight checks run before the model is touched; the model is then loaded one tensor at a
    time, so memory stays at the model's size plus one tensor. Only a shape mismatch that a
    module's own key renaming reveals (an older checkpoint's names) is found while loading; the
    model may then hold part of the file, and the error says so by being raised.
    """
    path = Path(path)
    meta, header = read_meta(path)
    _check_against_model(path, header, model)
    for what, given in (("optimizer", optimizer), ("scheduler", scheduler)):
        if given is not None and what not in meta:
            raise CheckpointError(f"checkpoint {path} holds no {what} state")
    if restore_rng and (header.tensors.get("rng.torch") is None or header.tensors["rng.torch"].dtype != torch.uint8):
        raise CheckpointError(f"checkpoint {path} holds no torch RNG state (rng.torch, uint8)")
    _verify_tensors(path, header, header.metadata["sha256"], _tied_groups(model))
    # the file passed every check: now the model (one tensor at a time), then the rest
    tensors: dict[str, Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(model.state_dict())
            loaded: set[str] = set()
            for k in sorted(header.tensors):
                if k.startswith("model."):  # through load_state_dict: the modules' own key renames apply
                    result = model.load_state_dict({k[len("model."):]: f.get_tensor(k)}, strict=False)
                    if result.unexpected_keys:
                        raise CheckpointError(f"checkpoint {path} does not match the model: the model has no "
                                              f"{result.unexpected_keys[0]!r}")
                    loaded |= set(names) - set(result.missing_keys)
                else:
                    tensors[k] = f.get_tensor(k)
    except RuntimeError as e:  # load_state_dict: a shape that only a renamed key reveals
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path} does not match the model: {e}") from e
    missing = [k for k in names if k not in loaded]
    if missing:
        raise CheckpointError(f"checkpoint {path} does not match the model: it lacks {len(missing)} of the model's "
                              f"tensors (e.g. {missing[0]!r})")
    try:
        if optimizer is not None:
            optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
        if scheduler is not None:
            scheduler.load_state_dict(meta["scheduler"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path}: its optimizer or scheduler state does not fit ({e!r})") from e
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
            states = [tensors[k] for k in keys]
            if states:
                torch.cuda.set_rng_state_all(states)
        st = meta.get("rng_python")
        try:
            random.setstate((st[0], tuple(st[1]), st[2]))
        except (TypeError, ValueError, IndexError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: its Python RNG state is not one ({e!r})") from None
    return {"step": int(meta["step"]), "extra": meta.get("extra", {})}


__all__ = ["save_checkpoint", "load_checkpoint", "read_header", "read_meta", "Header", "TensorInfo", "CheckpointError",
           "FORMAT", "MAX_HEADER_BYTES"]
