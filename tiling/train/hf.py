"""A tiled model as a Hugging Face model: ``TiledMambaForCausalLM``, its config, and HF Mamba in and out.

* :func:`from_hf` turns an HF ``MambaForCausalLM`` (the model, a local folder, or a Hub name
  already in the local cache) into a :class:`TiledMambaForCausalLM`; :func:`to_hf` turns a tiled
  model back into ``MambaForCausalLM`` (the model at budget 1). The weight layout is
  :mod:`tiling.train.hf_convert`'s; :meth:`TiledLM.from_hf <tiling.train.TiledLM.from_hf>` and
  :meth:`TiledLM.to_hf <tiling.train.TiledLM.to_hf>` give the bare :class:`~tiling.train.TiledLM`.
* :class:`TiledMambaForCausalLM` is a ``PreTrainedModel`` and a ``GenerationMixin`` around a
  :class:`~tiling.train.TiledLM` (attribute ``tiled``), with its own :class:`TiledMambaConfig`
  (``model_type`` ``"tiled_mamba"``). Importing this module registers both with ``AutoConfig``
  and ``AutoModelForCausalLM``. So ``save_pretrained``/``from_pretrained`` (safetensors),
  ``generate()`` and ``Trainer`` work on a tiled model; ``forward`` takes the tiled model's
  ``budget``, and so does ``generate(..., budget=0.35)``.

Decoding (``generate`` with the cache, HF's default) runs :meth:`TiledLM.step
<tiling.train.TiledLM.step>` token by token, the prompt included, so it equals step decoding by
construction; in the block scope that equals ``forward`` position by position at every budget
(``TiledLM``'s docstring), and ``use_cache=False`` decodes with ``forward`` on the whole prefix.
The decoding state travels in the model keyword ``decoding_state``, which ``generate`` does not
reorder: beam search needs ``use_cache=False`` and is refused otherwise.

Departures from HF's ``MambaForCausalLM``: no ``inputs_embeds``, and ``attention_mask`` may not
mask anything (a tiled model has no padding: the tiles are positions of the sequence); both are
refused with a ``ValueError`` naming the argument. ``save_pretrained`` writes into a temporary
folder beside the target and swaps it into place (:func:`tiling.train.storage.write_folder`), so an
interrupted save never leaves a half-written file under a final name (the project's rule; HF writes
in place).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from tiling.config import MambaConfig, TilingConfig
from tiling.train import hf_convert
from tiling.train.model import TiledLM
from tiling.train.storage import write_folder

Tensor = torch.Tensor
#: the Mamba arguments a configuration's ``mamba`` may hold: :class:`~tiling.config.MambaConfig`'s fields after d_model
_MAMBA_ARGS = sorted(f.name for f in fields(MambaConfig) if f.name != "d_model")

__all__ = ["TiledMambaConfig", "TiledMambaForCausalLM", "TiledCausalLMOutput", "from_hf", "to_hf"]

#: the weight file names a save writes (stale ones of an earlier, e.g. sharded, save are removed)
_WEIGHT_PREFIXES = ("model.safetensors", "model-")
#: the Hub arguments ``from_pretrained`` accepts (``AutoModelForCausalLM`` passes them); the Hub is never contacted
_HUB_KWARGS = frozenset({"cache_dir", "force_download", "local_files_only", "proxies", "subfolder", "token",
                         "revision", "trust_remote_code", "adapter_kwargs", "use_safetensors", "torch_dtype"})


def _read_weights(folder: Path, name: str) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors``, or of the shards its ``model.safetensors.index.json`` lists."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{name} {str(folder)!r}: model.safetensors.index.json is not a weight index ({e})") \
                from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{name} {str(folder)!r} has no model.safetensors (nor an index of shards); expected "
                                "the weights save_pretrained writes")
    state: dict[str, Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(folder / f)))
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{name} {str(folder)!r}: {f} cannot be read ({e}); truncated or corrupt?") from None
    return state


class TiledMambaConfig(PretrainedConfig):
    """The configuration of :class:`TiledMambaForCausalLM`: a :class:`~tiling.train.TiledLM`'s arguments.

    Parameters
    ----------
    vocab_size, hidden_size, num_hidden_layers : ``TiledLM``'s ``vocab_size``, ``d_model``, ``n_layers``.
    layer_norm_epsilon : ε of every RMSNorm (HF Mamba's name; a ``TiledLM`` builds its norms with 1e-5).
    shared_density, full_resolution_layers : as in :class:`~tiling.train.TiledLM`.
    mamba : the Mamba arguments of every layer (``d_state``, ``d_conv``, ``expand``, ``dt_rank``, ...: the
        fields of :class:`~tiling.config.MambaConfig` after ``d_model``; ``expand`` defaults to Mamba's 2).
    tiling : the tiled layers' :class:`~tiling.config.TilingConfig` or its ``to_dict()``; stored as a dict.
    tie_word_embeddings : always True (the head is the embedding).
    **kwargs : ``PretrainedConfig``'s (``eos_token_id``, ``bos_token_id``, ``pad_token_id``, ...).

    Raises
    ------
    TypeError, ValueError
        ``tiling`` is neither a ``TilingConfig`` nor a dict of its fields, or a field is out of
        range (:class:`~tiling.config.TilingConfig`); ``mamba`` holds a name that is not a Mamba
        argument; ``tie_word_embeddings`` is False.
    """

    model_type = "tiled_mamba"

    def __init__(self, vocab_size: int = 256, hidden_size: int = 64, num_hidden_layers: int = 2,
                 layer_norm_epsilon: float = 1e-5, shared_density: bool = False,
                 full_resolution_layers: tuple[int, ...] | list[int] = (), mamba: dict | None = None,
                 tiling: TilingConfig | dict | None = None, tie_word_embeddings: bool = True, **kwargs) -> None:
        if isinstance(tiling, TilingConfig):
            tiling = tiling.to_dict()
        elif tiling is None:
            tiling = TilingConfig().to_dict()
        elif isinstance(tiling, dict):
            tiling = TilingConfig.from_dict(tiling).to_dict()  # checked here, once
        else:
            raise TypeError(f"tiling must be a tiling.config.TilingConfig or a dict of its fields, got "
                            f"{type(tiling).__name__}")
        mamba = dict(mamba or {})
        unknown = sorted(set(mamba) - set(_MAMBA_ARGS))
        if unknown:
            raise ValueError(f"mamba holds {unknown}, which are not Mamba arguments; expected some of "
                             f"{_MAMBA_ARGS}")
        if not tie_word_embeddings:
            raise ValueError("tie_word_embeddings must be True: a tiled model's head is its embedding")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.layer_norm_epsilon = layer_norm_epsilon
        self.shared_density = shared_density
        self.full_resolution_layers = list(full_resolution_layers)
        self.mamba = mamba
        self.tiling = tiling
        super().__init__(tie_word_embeddings=True, **kwargs)

    @property
    def tiling_config(self) -> TilingConfig:
        """:attr:`tiling` as a :class:`~tiling.config.TilingConfig`."""
        return TilingConfig.from_dict(self.tiling)

    @classmethod
    def from_tiled(cls, lm: TiledLM, **kwargs) -> "TiledMambaConfig":
        """The configuration that rebuilds ``lm``.

        Parameters
        ----------
        lm : the :class:`~tiling.train.TiledLM`.
        **kwargs : further ``PretrainedConfig`` fields (token ids, ...).

        Returns
        -------
        :class:`TiledMambaConfig`.
        """
        c = lm.config
        mamba = {k: v for k, v in asdict(c.mamba).items() if k != "d_model"}
        return cls(vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                   layer_norm_epsilon=float(lm.norm_f.eps), shared_density=c.shared_density,
                   full_resolution_layers=list(c.full_resolution_layers), mamba=mamba, tiling=c.tiling, **kwargs)


@dataclass
class TiledCausalLMOutput(ModelOutput):
    """The output of :meth:`TiledMambaForCausalLM.forward`.

    Attributes
    ----------
    loss : the next-token cross-entropy when ``labels`` were given.
    logits : (batch, L, vocab_size).
    decoding_state : one :class:`~tiling.modules.TiledMambaState` per layer after the last token
        (``use_cache=True``), to pass back as ``decoding_state`` with the next token.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    decoding_state: list | None = None


class TiledMambaForCausalLM(PreTrainedModel, GenerationMixin):
    """A :class:`~tiling.train.TiledLM` as an HF causal language model.

    Parameters
    ----------
    config : :class:`TiledMambaConfig`.

    Attributes
    ----------
    tiled : the :class:`~tiling.train.TiledLM` (its parameters are this model's, under ``tiled.``).
    """

    config_class = TiledMambaConfig
    base_model_prefix = "tiled"
    main_input_name = "input_ids"
    _no_split_modules = ["TiledMamba"]
    _is_stateful = True  # HF: a recurrent state, no key/value cache (no assisted decoding)
    # the head is the embedding (HF 5 maps tied names to their source, HF 4 lists them)
    _tied_weights_keys = ({"tiled.head.weight": "tiled.embedding.weight"}
                          if int(transformers.__version__.split(".")[0]) >= 5 else ["tiled.head.weight"])

    def __init__(self, config: TiledMambaConfig) -> None:
        super().__init__(config)
        self.tiled = TiledLM(config.vocab_size, config.hidden_size, config.num_hidden_layers,
                             shared_density=config.shared_density,
                             full_resolution_layers=tuple(config.full_resolution_layers),
                             tiling=config.tiling_config, **config.mamba)
        for norm in [*self.tiled.norms, self.tiled.norm_f]:
            norm.eps = float(config.layer_norm_epsilon)
        self.post_init()

    def _init_weights(self, module) -> None:
        """Nothing: :class:`~tiling.train.TiledLM` initialises its own parameters (Mamba's scheme)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the decoding state is the layers' own (``decoding_state``), not an HF Cache

    # ---- HF's embedding accessors ----------------------------------------------------------
    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.tiled.embedding

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.tiled.embedding = value
        self.tiled.head.weight = value.weight

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.tiled.head

    # ---- conversion ------------------------------------------------------------------------
    @classmethod
    def from_tiled(cls, lm: TiledLM, **config_kwargs) -> "TiledMambaForCausalLM":
        """Wrap a :class:`~tiling.train.TiledLM` (its weights and buffers are copied).

        Parameters
        ----------
        lm : the model.
        **config_kwargs : further :class:`TiledMambaConfig` fields (token ids, ...).

        Returns
        -------
        :class:`TiledMambaForCausalLM` on ``lm``'s device and dtype, in ``lm``'s mode.

        Raises
        ------
        TypeError
            ``lm`` is not a ``TiledLM``.
        """
        if not isinstance(lm, TiledLM):
            raise TypeError(f"lm must be a tiling.train.TiledLM, got {type(lm).__name__}")
        model = cls(TiledMambaConfig.from_tiled(lm, **config_kwargs))
        p = lm.embedding.weight
        model.to(device=p.device, dtype=p.dtype)
        model.tiled.load_state_dict(lm.state_dict())
        return model.train(lm.training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args,
                        config: TiledMambaConfig | None = None, dtype: torch.dtype | str | None = None,
                        output_loading_info: bool = False, **kwargs):
        """Load a folder written by :meth:`save_pretrained`, offline, refusing any tensor that does not fit.

        HF's own loader builds the model on the meta device, where the tiling's argument checks
        cannot run; this one builds it as ``__init__`` does and loads the safetensors weights with a
        strict key and shape check. ``AutoModelForCausalLM.from_pretrained`` comes here too.

        Parameters
        ----------
        pretrained_model_name_or_path : the folder, or a Hub name already in the local cache.
        config : a :class:`TiledMambaConfig` to use instead of the folder's ``config.json``.
        dtype : the parameters' dtype (a ``torch.dtype``, its name, or ``"auto"``/None: as saved).
        output_loading_info : also return HF's ``{"missing_keys": [], ...}`` (always empty: a
            mismatch is refused).
        **kwargs : the Hub arguments ``AutoModelForCausalLM`` passes (``cache_dir``, ``revision``,
            ``subfolder``, ``local_files_only``, ...); ``local_files_only`` is always True.

        Returns
        -------
        The model in eval mode (and the loading info).

        Raises
        ------
        TypeError
            Positional model arguments, an argument that is not a Hub argument, or a bad ``dtype``.
        FileNotFoundError
            Neither a local folder nor a cached Hub name (the message says how to get it), or no weights.
        ValueError
            The folder holds another model type (a plain HF Mamba folder: use :func:`from_hf`), or
            tensors are missing, unexpected or of the wrong shape.
        """
        name = "pretrained_model_name_or_path"
        unknown = sorted(k for k in kwargs if k not in _HUB_KWARGS and not k.startswith("_"))
        if model_args or unknown:
            raise TypeError(f"TiledMambaForCausalLM.from_pretrained takes a folder, config, dtype and the Hub "
                            f"arguments {sorted(_HUB_KWARGS)}; got {unknown or f'{len(model_args)} positional'}")
        source = os.fspath(pretrained_model_name_or_path)
        folder = hf_convert.local_folder(source, name, cache_dir=kwargs.get("cache_dir"),
                                         revision=kwargs.get("revision"))
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        mtype = hf_convert.read_config(folder, name).get("model_type")
        if mtype != TiledMambaConfig.model_type:
            hint = " (an HF Mamba folder: convert it with tiling.train.hf.from_hf)" if mtype == "mamba" else ""
            raise ValueError(f"{name} {source!r} holds a {mtype!r} model{hint}; expected model_type "
                             f"{TiledMambaConfig.model_type!r} (a folder written by save_pretrained)")
        if config is None:
            with hf_convert.quiet_hf():
                config = TiledMambaConfig.from_pretrained(str(folder), local_files_only=True)
        state = _read_weights(folder, name)
        dtype = kwargs.get("torch_dtype") if dtype is None else dtype  # HF 4's name
        model = cls(config)
        own = model.state_dict()
        tied = {"tiled.head.weight"}
        missing = sorted(set(own) - set(state) - tied)
        unexpected = sorted(set(state) - set(own))
        mismatched = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
        if missing or unexpected or mismatched:
            what = "; ".join(f"{label} {keys[:5]}" for label, keys in (("missing tensors", missing),
                             ("unexpected tensors", unexpected), ("tensors of the wrong shape", mismatched)) if keys)
            raise ValueError(f"{name} {source!r}: the weights do not fit its config.json: {what}")
        model.load_state_dict(state, strict=False)
        if dtype not in (None, "auto"):
            target = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
            if not isinstance(target, torch.dtype) or not target.is_floating_point:
                raise TypeError(f"dtype must be a floating torch.dtype, its name, 'auto' or None, got {dtype!r}")
            model.to(target)
        model.eval()
        info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """HF's ``save_pretrained`` (safetensors), the folder swapped into place whole.

        Parameters
        ----------
        save_directory : the folder (created if missing; other files in it are kept, weight files of
            an earlier save that this one does not write are removed, as HF does).
        *args, **kwargs : HF's.

        Raises
        ------
        NotADirectoryError
            ``save_directory`` exists and is not a folder.
        tiling.train.storage.StorageError
            Another process is writing the folder, or it cannot be written
            (:func:`tiling.train.storage.write_folder`, which writes the save).
        """
        target = Path(save_directory).expanduser()
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"save_directory {str(target)!r} exists and is not a folder")
        save = super().save_pretrained
        write_folder(target, lambda tmp: save(tmp, *args, **kwargs), [p + "*" for p in _WEIGHT_PREFIXES],
                     overwrite=True, name="save_directory")

    # ---- the model -------------------------------------------------------------------------
    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, *, budget: float | None = None, decoding_state: list | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None,
                inputs_embeds: Tensor | None = None, **kwargs) -> TiledCausalLMOutput | tuple:
        """Logits (and the loss) of ``input_ids``, through :meth:`TiledLM.forward` or :meth:`TiledLM.step`.

        Parameters
        ----------
        input_ids : (batch, L) int64.
        attention_mask : None or all ones (no padding).
        labels : (batch, L) int64 targets, ``-100`` ignored; shifted inside, as HF does.
        budget : the tiled layers' budget for this call (None: the configuration's).
        decoding_state : the ``decoding_state`` of the previous call: ``input_ids`` continue it.
        use_cache : return the decoding state (the tokens are then run through ``step``).
        return_dict : a :class:`TiledCausalLMOutput` (default) or a tuple.
        inputs_embeds : not supported (refused).
        **kwargs : the loss's (``num_items_in_batch`` of the ``Trainer``).

        Returns
        -------
        :class:`TiledCausalLMOutput` (``loss``, ``logits``, ``decoding_state``) or its tuple.

        Raises
        ------
        ValueError
            ``inputs_embeds`` is given, ``input_ids`` is missing or not (batch, L) int64,
            ``attention_mask`` masks a position, or the model cannot decode step by step
            (``shared_density``; a scan-scope layer below budget 1): ``use_cache=False`` then.
        TypeError
            ``budget`` is not a number (from the layers).
        """
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported by a tiled model; pass input_ids")
        if input_ids is None:
            raise ValueError("input_ids is required: (batch, L) int64 token ids")
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise ValueError("attention_mask masks positions, but a tiled model has no padding (its tiles are "
                             "positions of the sequence); pass rows of equal length without padding")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if decoding_state is None and not use_cache:
            logits, state = self.tiled(input_ids, budget=budget), None
        else:
            logits, state = self._step(input_ids, decoding_state, budget)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        out = TiledCausalLMOutput(loss=loss, logits=logits, decoding_state=state)
        return out if return_dict else out.to_tuple()

    def _step(self, input_ids: Tensor, state: list | None, budget: float | None) -> tuple[Tensor, list]:
        """Run ``input_ids`` (batch, L) through :meth:`TiledLM.step`, from ``state`` or a new one."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.int64:
            raise ValueError(f"input_ids must be int64 of shape (batch, L), got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        if state is None:
            try:
                state = self.tiled.allocate_inference_state(input_ids.shape[0])
            except ValueError as e:
                raise ValueError(f"{e}; pass use_cache=False to decode with forward()") from None
        logits = []
        for t in range(input_ids.shape[1]):
            try:
                out, state = self.tiled.step(input_ids[:, t], state, budget=budget)
            except ValueError as e:
                if "scan-scope" not in str(e):
                    raise
                raise ValueError(f"{e}; or pass use_cache=False to decode with forward()") from None
            logits.append(out)
        return torch.stack(logits, dim=1), state

    # ---- generation ------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids: Tensor, decoding_state: list | None = None,
                                      attention_mask: Tensor | None = None, use_cache: bool | None = None,
                                      budget: float | None = None, **kwargs) -> dict[str, Any]:
        """The keywords of the next :meth:`forward` in ``generate``: the last token once a state exists."""
        if decoding_state is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "decoding_state": decoding_state, "attention_mask": attention_mask,
                "use_cache": use_cache, "budget": budget}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs: dict, *args, **kwargs) -> dict:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["decoding_state"] = outputs.get("decoding_state")
        return model_kwargs

    def generate(self, inputs: Tensor | None = None, generation_config=None, **kwargs):
        """HF's ``generate``; ``budget=`` sets the tiled layers' budget.

        Raises
        ------
        ValueError
            Beam search (``num_beams > 1``) with the cache: the decoding state is not reordered
            between beams, so it needs ``use_cache=False``.
        """
        gc = generation_config if generation_config is not None else self.generation_config
        beams = kwargs.get("num_beams", getattr(gc, "num_beams", 1)) or 1
        if beams > 1 and kwargs.get("use_cache", getattr(gc, "use_cache", True)) is not False:
            raise ValueError(f"num_beams={beams}: beam search with the cache is not supported (the decoding state is "
                             "not reordered between beams); pass use_cache=False")
        return super().generate(inputs, generation_config, **kwargs)

    def to_hf(self) -> torch.nn.Module:
        """The HF ``MambaForCausalLM`` of this model at budget 1, with its token ids (:func:`to_hf`)."""
        return to_hf(self)


AutoConfig.register(TiledMambaConfig.model_type, TiledMambaConfig, exist_ok=True)
AutoModelForCausalLM.register(TiledMambaConfig, TiledMambaForCausalLM, exist_ok=True)


def from_hf(model_or_folder: Any, *, tiling: TilingConfig | None = None, **model_kwargs) -> TiledMambaForCausalLM:
    """An HF Mamba model as a :class:`TiledMambaForCausalLM` (weights copied, token ids kept).

    Parameters
    ----------
    model_or_folder : a ``transformers.MambaForCausalLM``, a local folder of one, or a Hub name in
        the local cache (:func:`tiling.train.hf_convert.load_mamba`).
    tiling : the tiled layers' :class:`~tiling.config.TilingConfig` (default ``TilingConfig()``).
    **model_kwargs : ``shared_density``, ``full_resolution_layers`` of :class:`~tiling.train.TiledLM`.

    Returns
    -------
    The model in eval mode; at budget 1 its logits are the HF model's.

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        :func:`tiling.train.hf_convert.from_hf`'s: not a Mamba model, shapes that do not fit
        ``tiling``, a Hub name that is not cached (offline).
    """
    source = hf_convert.load_mamba(model_or_folder)
    lm = hf_convert.from_hf(source, cls=TiledLM, tiling=tiling, **model_kwargs)
    ids = {k: getattr(source.config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return TiledMambaForCausalLM.from_tiled(lm, **ids).eval()


def to_hf(model: TiledLM | TiledMambaForCausalLM) -> torch.nn.Module:
    """The HF ``MambaForCausalLM`` that computes what ``model`` computes at budget 1.

    Parameters
    ----------
    model : a :class:`~tiling.train.TiledLM` or a :class:`TiledMambaForCausalLM` (whose token ids are kept).

    Returns
    -------
    ``transformers.MambaForCausalLM`` in eval mode (:func:`tiling.train.hf_convert.to_hf`).

    Raises
    ------
    TypeError, ValueError
        Not a tiled model; a layer that is not Mamba at budget 1.
    """
    if isinstance(model, TiledMambaForCausalLM):
        ids = {k: getattr(model.config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        return hf_convert.to_hf(model.tiled, **ids)
    if not isinstance(model, TiledLM):
        raise TypeError(f"model must be a TiledLM or a TiledMambaForCausalLM, got {type(model).__name__}")
    return hf_convert.to_hf(model)
