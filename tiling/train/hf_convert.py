"""Hugging Face ``MambaForCausalLM`` ↔ :class:`~tiling.train.TiledLM`: the weight layout, both ways.

The two models have the same layout (``tiling/train/model.py``'s module docstring): an embedding,
``n`` blocks ``h ← h + mixer(RMSNorm(h))``, a final RMSNorm and a head tied to the embedding. The
mixer's parameters (``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj``) have HF
``MambaMixer``'s names and shapes in :class:`~tiling.modules.TiledMamba`, so a conversion is a
copy of tensors plus the norms' ε. At budget 1 the tiled model *is* the HF model (block scope:
exactly; ``tests/tiling/test_hf_interop.py`` checks the logits to 1e-5 relative).

This module does not import :mod:`tiling.train.model`: :meth:`TiledLM.from_hf` /
:meth:`TiledLM.to_hf` import it lazily, and an import back would close a module cycle, which
``tests/test_architecture.py`` refuses. The class to build is therefore an argument (``cls``).
:mod:`tiling.train.hf` builds on this module (the HF ``PreTrainedModel`` of a tiled model).

Loading never touches the network: a folder is read with ``local_files_only=True``; a Hub name
loads only when it is already in the local Hugging Face cache, and is otherwise refused with a
message that says how to get the folder.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["from_hf", "load_mamba", "local_folder", "mamba_config_kwargs", "quiet_hf", "read_config", "to_hf"]

@contextlib.contextmanager
def quiet_hf():
    """transformers' notes and progress bars off while loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def read_config(folder: Path, name: str) -> dict:
    """The ``config.json`` of a model folder as a dict.

    Parameters
    ----------
    folder : the folder.
    name : the argument's name in error messages.

    Returns
    -------
    dict.

    Raises
    ------
    ValueError
        No ``config.json`` (not a Hugging Face model folder), or not a JSON object.
    """
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{name} {str(folder)!r} has no config.json: not a Hugging Face model folder "
                         "(expected the folder save_pretrained writes: config.json and *.safetensors)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{name} {str(folder)!r}: config.json is not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{name} {str(folder)!r}: config.json is not a JSON object")
    return cfg


def local_folder(source: str | os.PathLike, name: str, *, cache_dir: str | os.PathLike | None = None,
                 revision: str | None = None) -> Path:
    """The local folder of a model: ``source`` itself, or a Hub name's snapshot in the local cache.

    Parameters
    ----------
    source : a folder, or a Hub name (``"state-spaces/mamba-130m-hf"``).
    name : the argument's name in error messages.
    cache_dir, revision : of the Hugging Face cache lookup.

    Returns
    -------
    The folder (it may still lack ``config.json``: :func:`read_config` says so).

    Raises
    ------
    TypeError
        ``source`` is not a path or a name.
    FileNotFoundError
        Neither a folder nor a name in the local cache: the Hub is never reached (offline), and the
        message says how to get the folder.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{name} must be a local folder or a Hub name in the local cache, got {type(source).__name__}")
    text = os.fspath(source)
    folder = Path(text).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise FileNotFoundError(f"{name} {text!r} is a file, not a folder; expected a Hugging Face model folder "
                                "(config.json and *.safetensors)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True, cache_dir=cache_dir, revision=revision))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or not a valid Hub name at all
        raise FileNotFoundError(
            f"{name} {text!r} is not a local folder, and it is not in the local Hugging Face cache; models are "
            "loaded offline only (the Hub is never contacted). Download it where there is network, e.g. "
            f"`huggingface-cli download {text} --local-dir DIR`, and pass DIR") from None


def load_mamba(model_or_folder: Any, *, name: str = "model_or_folder") -> nn.Module:
    """An HF ``MambaForCausalLM`` from itself, a local folder, or a Hub name already in the local cache.

    Parameters
    ----------
    model_or_folder : a ``transformers.MambaForCausalLM``, a folder written by its
        ``save_pretrained`` (``config.json`` with ``model_type`` ``"mamba"`` and ``*.safetensors``
        weights), or a Hub name (``"state-spaces/mamba-130m-hf"``) found in the local cache.
    name : the argument's name in error messages.

    Returns
    -------
    The model in float32 and eval mode (a model passed in is returned as it is).

    Raises
    ------
    TypeError
        ``model_or_folder`` is neither a ``MambaForCausalLM`` nor a path or name.
    ValueError
        The folder is not a Mamba model (no ``config.json``, another ``model_type``, no
        safetensors weights: nothing is unpickled) or its weights do not fit its ``config.json``.
    FileNotFoundError
        Neither a local folder nor a cached Hub name (offline; :func:`local_folder`).
    """
    import transformers

    if isinstance(model_or_folder, transformers.MambaForCausalLM):
        return model_or_folder
    if isinstance(model_or_folder, nn.Module):
        raise TypeError(f"{name} must be a transformers.MambaForCausalLM or a folder, got a "
                        f"{type(model_or_folder).__name__}")
    folder = local_folder(model_or_folder, name)
    source = os.fspath(model_or_folder)
    mtype = read_config(folder, name).get("model_type")
    if mtype != "mamba":
        hint = (" (a tiled model: load it with tiling.train.hf.TiledMambaForCausalLM.from_pretrained)"
                if mtype == "tiled_mamba" else "")
        raise ValueError(f"{name} {source!r} is not a Mamba model: its config.json has model_type {mtype!r}{hint}; "
                         "expected 'mamba' (transformers.MambaForCausalLM)")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{name} {source!r} has no *.safetensors weights (pytorch_model.bin is not read: nothing "
                         "is unpickled); expected e.g. model.safetensors")
    with quiet_hf():
        try:
            model, info = transformers.MambaForCausalLM.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, output_loading_info=True,
                dtype=torch.float32)
        except (OSError, RuntimeError, ValueError) as e:  # unreadable or truncated files, size mismatches
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{name} {source!r}: the checkpoint does not fit its config.json ({msg})") from None
    missing = list(info.get("missing_keys") or [])
    mismatched = [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        what = f"missing tensors {sorted(missing)[:5]}" if missing else f"tensors of the wrong shape {mismatched[:5]}"
        raise ValueError(f"{name} {source!r}: the checkpoint does not fit its config.json: {what}")
    return model.eval()


def mamba_config_kwargs(config: Any, name: str = "model_or_folder") -> dict:
    """The :class:`~tiling.modules.TiledMamba` arguments of an HF ``MambaConfig``.

    Parameters
    ----------
    config : the ``MambaConfig``.
    name : the argument's name in error messages.

    Returns
    -------
    ``{d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor,
    conv_bias, bias}`` (the ``dt_*`` only initialise Δ and are carried for completeness).

    Raises
    ------
    ValueError
        The model is not one :class:`~tiling.modules.TiledMamba` computes: an activation other than
        SiLU, or ``intermediate_size`` not an integer multiple of ``hidden_size``.
    """
    act = str(getattr(config, "hidden_act", "silu"))
    if act not in ("silu", "swish"):
        raise ValueError(f"{name}: hidden_act {act!r} is not supported; the tiled mixer uses SiLU (Mamba's 'silu')")
    d, inner = int(config.hidden_size), int(config.intermediate_size)
    if inner % d:
        raise ValueError(f"{name}: intermediate_size {inner} is not a multiple of hidden_size {d}; the tiled mixer "
                         "has d_inner = expand·d_model with an integer expand")
    return {"d_state": int(config.state_size), "d_conv": int(config.conv_kernel), "expand": inner // d,
            "dt_rank": int(config.time_step_rank), "dt_min": float(config.time_step_min),
            "dt_max": float(config.time_step_max), "dt_init": str(config.time_step_init_scheme),
            "dt_scale": float(config.time_step_scale), "dt_init_floor": float(config.time_step_floor),
            "conv_bias": bool(config.use_conv_bias), "bias": bool(config.use_bias)}


def from_hf(model_or_folder: Any, *, cls: type, tiling=None, **model_kwargs) -> nn.Module:
    """A ``cls`` (:class:`~tiling.train.TiledLM`) with the weights of an HF ``MambaForCausalLM``.

    Parameters
    ----------
    model_or_folder : what :func:`load_mamba` reads.
    cls : the class to build, :class:`~tiling.train.TiledLM` (passed in: this module does not import it).
    tiling : the :class:`~tiling.config.TilingConfig` of the tiled layers (default ``TilingConfig()``:
        block scope at budget 1, i.e. the HF model).
    **model_kwargs : ``shared_density``, ``full_resolution_layers`` of ``cls``.

    Returns
    -------
    The model in float32 and eval mode. The norms' ε is the HF model's ``layer_norm_epsilon``.

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        From :func:`load_mamba` and :func:`mamba_config_kwargs`; ValueError also when ``tiling``
        does not fit the model's shapes (e.g. ``s_max > state_size``, ``router_rank > hidden_size``),
        naming both, or when the HF head is not tied to the embedding (the tiled head is).
    """
    hf = load_mamba(model_or_folder)
    cfg = hf.config
    mamba = mamba_config_kwargs(cfg)
    emb = hf.get_input_embeddings().weight
    head = hf.get_output_embeddings().weight
    if head is not emb and (head.shape != emb.shape or not torch.equal(head, emb)):
        raise ValueError("model_or_folder: the HF model's lm_head is not tied to its embedding "
                         "(tie_word_embeddings=False with different weights); the tiled model's head is tied")
    vocab, d = emb.shape
    n_layers = len(hf.backbone.layers)
    try:
        lm = cls(int(vocab), int(d), n_layers, tiling=tiling, **model_kwargs, **mamba)
    except (TypeError, ValueError) as e:
        shape = (f"hidden_size={d}, state_size={mamba['d_state']}, intermediate_size={mamba['expand'] * d}, "
                 f"num_hidden_layers={n_layers}")
        raise type(e)(f"tiling does not fit the Mamba model ({shape}): {e}") from None
    eps = float(cfg.layer_norm_epsilon)
    with torch.no_grad():
        lm.embedding.weight.copy_(emb)
        for k, block in enumerate(hf.backbone.layers):
            lm.norms[k].weight.copy_(block.norm.weight)
            lm.norms[k].eps = eps
            lm.layers[k].load_mamba_state_dict({key: v.float() for key, v in block.mixer.state_dict().items()})
        lm.norm_f.weight.copy_(hf.backbone.norm_f.weight)
        lm.norm_f.eps = eps
    return lm.eval()


def _check_exact_at_full_resolution(lm: nn.Module) -> None:
    """Refuse layers that are not Mamba at budget 1: the HF model could not compute them."""
    for k, layer in enumerate(lm.layers):
        if layer.scope != "scan":
            continue  # block scope at budget 1 is Mamba exactly (every segment one token, the pool gate idle)
        if layer.tiling.state_k is not None:
            raise ValueError(f"model: layer {k} has a state-dimension policy (state_k={layer.tiling.state_k}), which "
                             "shrinks the state even at budget 1; an HF MambaForCausalLM cannot hold it")
        if layer.routing and bool((layer.route_gate != 0).any()):
            raise ValueError(f"model: layer {k} has trained cross-tile routing (route_gate ≠ 0), which adds routed "
                             "tile states even at budget 1; an HF MambaForCausalLM cannot hold it")


def to_hf(lm: nn.Module, **config_kwargs) -> nn.Module:
    """The HF ``MambaForCausalLM`` that computes what ``lm`` computes at budget 1.

    Parameters
    ----------
    lm : a :class:`~tiling.train.TiledLM`.
    **config_kwargs : further ``MambaConfig`` fields (e.g. ``eos_token_id``; the token ids default
        to None: a ``TiledLM`` does not know them).

    Returns
    -------
    ``transformers.MambaForCausalLM`` in float32 and eval mode, head tied to the embedding. The
    tiling options, ``full_resolution_layers`` and ``shared_density`` have no HF counterpart and
    are dropped: the HF model is the tiled model at full resolution.

    Raises
    ------
    TypeError
        ``lm`` is not a ``TiledLM``-shaped model (embedding, norms, layers, norm_f).
    ValueError
        A layer is not Mamba at budget 1 (scan scope with a state-dimension policy, or with trained
        routing), or the norms do not share one ε.
    """
    import transformers

    if not all(hasattr(lm, a) for a in ("embedding", "norms", "layers", "norm_f")):
        raise TypeError(f"model must be a tiling.train.TiledLM, got {type(lm).__name__}")
    _check_exact_at_full_resolution(lm)
    eps = {float(n.eps if n.eps is not None else torch.finfo(n.weight.dtype).eps) for n in [*lm.norms, lm.norm_f]}
    if len(eps) != 1:
        raise ValueError(f"model: the RMSNorms use different eps {sorted(eps)}; MambaConfig has one layer_norm_epsilon")
    first = lm.layers[0]
    vocab, d = lm.embedding.weight.shape
    fields = {"vocab_size": int(vocab), "hidden_size": int(d), "state_size": first.d_state,
              "num_hidden_layers": len(lm.layers), "layer_norm_epsilon": eps.pop(), "expand": first.expand,
              "conv_kernel": first.d_conv, "use_bias": first.in_proj.bias is not None,
              "use_conv_bias": first.conv1d.bias is not None, "hidden_act": "silu", "time_step_rank": first.dt_rank,
              "tie_word_embeddings": True, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    cfg = transformers.MambaConfig(**{**fields, **config_kwargs})
    with quiet_hf():
        hf = transformers.MambaForCausalLM(cfg)
    with torch.no_grad():
        hf.backbone.embeddings.weight.copy_(lm.embedding.weight)
        for k, block in enumerate(hf.backbone.layers):
            block.norm.weight.copy_(lm.norms[k].weight)
            own = lm.layers[k].state_dict()
            block.mixer.load_state_dict({key: own[key].float() for key in block.mixer.state_dict()}, strict=True)
        hf.backbone.norm_f.weight.copy_(lm.norm_f.weight)
    hf.tie_weights()
    return hf.eval()
