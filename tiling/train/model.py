"""A small language model of TiledMamba blocks: embedding, n × [RMSNorm + TiledMamba] with
residuals, final RMSNorm, head tied to the embedding (the layout of HF's ``MambaForCausalLM``)."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from infogeo.checks import check_int
from tiling.config import MambaConfig, TiledLMConfig, TilingConfig
from tiling.modules import TiledMamba
from tiling.modules.assignments import assignments
from tiling.modules.step_weights import KernelCacheOwner
from tiling.modules.tiled_mamba import all_finite
from tiling.ops.scan import rms_norm
from tiling.train.fused_step import fused_step, resume_step, share_router_states, zero_state
from tiling.train.lm_state import TiledLMState
from tiling.tile import TilePlan

Tensor = torch.Tensor

#: the options of :class:`~tiling.config.TilingConfig`, accepted as deprecated ``TiledLM`` keywords
_TILING_FIELDS = frozenset(f.name for f in dataclasses.fields(TilingConfig))
#: the Mamba arguments of :class:`~tiling.config.MambaConfig` that ``TiledLM``'s keyword form takes
_MAMBA_FIELDS = frozenset(f.name for f in dataclasses.fields(MambaConfig)) - {"d_model"}


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook (the module's own or a global one) would see ``module``'s output."""
    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


class TiledLM(KernelCacheOwner, nn.Module):
    """Language model of tiled Mamba layers: ``tokens (batch, L) int64 → logits (batch, L, vocab)``.

    Built from a :class:`~tiling.config.TiledLMConfig` (``TiledLM(config=...)``), or from the keywords
    below, which make one.

    Parameters
    ----------
    vocab_size : ≥ 2.
    d_model : model width (default 32).
    n_layers : ≥ 1 (default 2).
    config : the whole configuration; then none of the model's other arguments may be given.
    shared_density : every layer's resolution policy reads the per-token density of the *first*
        layer, ``ρ_t = (Σ_d Δ_{t,d}²)‖B_t‖²`` (seed 001 §3.4 step 1, the closed form of the first
        layer), passed as the layers' external density, so every layer sees the first layer's tile
        means (and tail means, with ``predictor_tail``).
    full_resolution_layers : indices of layers (negative ones count from the end, as in Python:
        ``(0, -1)`` is the first and the last) that always run at full resolution, whatever the
        budget of the model or of a call: they are block-scope layers at budget 1, i.e. plain Mamba
        (the block scope is exact at ``R = 1``), built from the Mamba configuration and the tile
        size only (the other tiling options do not apply). The other layers get ``tiling``.
    tiling : the :class:`~tiling.config.TilingConfig` of every tiled layer; default ``TilingConfig()``.
    validate, device, dtype : of every :class:`~tiling.modules.TiledMamba` (not part of the configuration).
    **mamba : the fields of :class:`~tiling.config.MambaConfig` after ``d_model`` (d_state, expand, dt_rank,
        dt_min, ...; ``expand`` defaults to Mamba's 2 here). Deprecated (one release,
        ``DeprecationWarning``): tiling options as keywords among them (they build ``tiling``).

    Attributes
    ----------
    config : the :class:`~tiling.config.TiledLMConfig` (checkpoints store its ``to_dict()``,
        :mod:`tiling.train.textmodel`).
    tiling : ``config.tiling``.
    layers : the :class:`~tiling.modules.TiledMamba` layers.

    Raises
    ------
    TypeError
        ``config`` is given with other model arguments or is not a ``TiledLMConfig``; ``tiling`` is not a
        :class:`~tiling.config.TilingConfig` or is given together with tiling keywords; a keyword is
        neither a Mamba argument nor a tiling option; a value has the wrong type (named).
    ValueError
        A value is out of range (:class:`~tiling.config.TiledLMConfig`, named), or a layer rejects its
        arguments (:class:`~tiling.modules.TiledMamba`).

    Warns
    -----
    DeprecationWarning
        Tiling options are given as keywords.

    Notes
    -----
    Why a shared density: in a deep stack only the first layer sees the token stream itself; deeper
    layers see the residual stream, whose density need not follow the content (in the burst tasks
    the second layer's density ratio burst/filler is ≈ 1 while the first layer's is ≈ 4). Causal as
    the layers are: layer ``l``'s tile ``i`` uses densities of tiles ``< i`` only (the causal
    policy), whichever layer produced them.

    Hourglass transformers and H-Net keep the outermost layers at full resolution;
    ``full_resolution_layers`` makes that choice one argument.

    Decoding: :meth:`allocate_inference_state` and :meth:`step` run the model one token at a
    time with each layer's :meth:`~tiling.modules.TiledMamba.step`; in the block scope (causal)
    that equals :meth:`forward` token by token at every budget, in the scan scope only at budget 1.

    Examples
    --------
    >>> from tiling.config import MambaConfig, TiledLMConfig, TilingConfig
    >>> lm = TiledLM(config=TiledLMConfig(MambaConfig(d_model=16, d_state=4), n_layers=2,
    ...                                   tiling=TilingConfig(tile_size=8, budget=0.5)))
    >>> lm(torch.zeros(1, 32, dtype=torch.int64)).shape
    torch.Size([1, 32, 256])
    >>> TiledLM(256, 16, 2, d_state=4, expand=1, tiling=TilingConfig(tile_size=8, budget=0.5)).config == lm.config
    True
    """

    #: the decoding step's plans (tiling/train/fused_step.py), which hold the kernel's LmDecoder
    _kernel_caches = ("_fused_plans",)

    def __init__(self, vocab_size: int | None = None, d_model: int | None = None, n_layers: int | None = None, *,
                 config: TiledLMConfig | None = None, shared_density: bool = False,
                 full_resolution_layers: tuple[int, ...] | list[int] = (), tiling: TilingConfig | None = None,
                 validate: bool = False, device=None, dtype=None, **mamba) -> None:
        super().__init__()
        if config is None:
            config = _keyword_config(vocab_size, 32 if d_model is None else d_model, 2 if n_layers is None else n_layers,
                                     shared_density, full_resolution_layers, tiling, mamba)
        elif (vocab_size, d_model, n_layers, tiling) != (None,) * 4 or mamba or shared_density or full_resolution_layers:
            raise TypeError("TiledLM() takes config=TiledLMConfig(...) or the model's arguments, not both")
        elif not isinstance(config, TiledLMConfig):
            raise TypeError(f"config must be a tiling.config.TiledLMConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, d)
        nn.init.normal_(self.embedding.weight, std=0.02)  # tied head: unit-variance rows would give logits of std √d_model
        self.norms = nn.ModuleList(nn.RMSNorm(d, eps=1e-5) for _ in range(config.n_layers))
        tiling = config.tiling
        full = TilingConfig(tile_size=tiling.tile_size, scope="block", boundaries="tile", budget=1.0, policy="uniform")
        layer = {**config.mamba.layer_kwargs(), "validate": validate, "device": device, "dtype": dtype}
        self.layers = nn.ModuleList(
            TiledMamba(d, **layer, tiling=full if k in config.full_resolution_layers else tiling)
            for k in range(config.n_layers))
        self.norm_f = nn.RMSNorm(d, eps=1e-5)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied

    @property
    def tiling(self) -> TilingConfig:
        """The tiled layers' configuration, ``config.tiling``."""
        return self.config.tiling

    @property
    def vocab_size(self) -> int:
        """``config.vocab_size``."""
        return self.config.vocab_size

    @property
    def shared_density(self) -> bool:
        """``config.shared_density``."""
        return self.config.shared_density

    @property
    def full_resolution_layers(self) -> tuple[int, ...]:
        """``config.full_resolution_layers`` (resolved: sorted, non-negative)."""
        return self.config.full_resolution_layers

    def layer_budget(self, k: int, budget: float | None) -> float | None:
        """The budget layer ``k`` runs at for a call with ``budget`` (None: the layer's own)."""
        return 1.0 if k in self.full_resolution_layers else budget

    @property
    def tiled_layers(self) -> list[int]:
        """Indices of the layers that run at the model's budget (not pinned at full resolution)."""
        return [k for k in range(len(self.layers)) if k not in self.full_resolution_layers]

    def forward(self, tokens: Tensor, *, budget: float | None = None, return_plans: bool = False,
                density: Sequence[Tensor | None] | None = None):
        """``tokens (batch, L) → logits (batch, L, vocab)``.

        Parameters
        ----------
        tokens : (batch, L) int64.
        budget : the budget of this call for the tiled layers (None: each layer's own).
        return_plans : also return the layers' plans.
        density : one entry per layer, an external per-token density (batch, L) that layer's
            policy reads instead of its own signal (``TiledMamba.forward``'s ``density``), or None for
            the layer's own; it takes precedence over ``shared_density``. Layers at full resolution
            run no policy and ignore it. E.g. :mod:`tiling.workflows.plans` runs the plans of the
            predictive and implicit-attention densities this way.

        Returns
        -------
        The logits; with ``return_plans`` ``(logits, plans)``, one :class:`~tiling.tile.TilePlan` per layer.

        Raises
        ------
        ValueError
            ``tokens`` is not int64 of shape (batch, L) with values in ``[0, vocab_size)``, ``density``
            does not hold one (batch, L) finite non-negative entry per layer, the budget is invalid, or
            the logits hold NaN/Inf: the message names the source (the embeddings of which tokens, the
            layer, or the head).

        Notes
        -----
        Checked once per call (issue 23): the arguments on entry and the logits on exit (one pass);
        the layers run with ``check=False``. A non-finite logit runs the forward again with every
        layer's checks to name where it came from.
        """
        self._check_tokens(tokens, "(batch, L)", 2)
        if density is not None:
            if len(density) != len(self.layers):
                raise ValueError(f"density must hold one entry (a (batch, L) tensor or None) per layer, "
                                 f"{len(self.layers)}, got {len(density)}")
            density = [None if d is None else self.layers[k]._external_density(d, *tokens.shape, tokens.device)
                       for k, d in enumerate(density)]
        for k in self.tiled_layers:  # budgets are checked once, before any work
            self.layers[k]._budget(self.layer_budget(k, budget))
        try:
            result = self._forward(tokens, budget, return_plans, density)
        except ValueError:  # a NaN/Inf met inside (e.g. by a layer's plan): name its source
            self._diagnose(tokens, budget, density)
            raise
        logits = result[0] if return_plans else result
        if not all_finite(logits):  # the one check of the call: find where the NaN/Inf came from
            self._diagnose(tokens, budget, density)
            raise ValueError("the model's logits contain NaN/Inf")
        return result

    def _forward(self, tokens: Tensor, budget: float | None, return_plans: bool, density):
        """The forward on checked arguments: no layer checks anything (``check=False``)."""
        h = self.embedding(tokens)
        plans: list[TilePlan] = []
        shared = None
        for k, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            b = self.layer_budget(k, budget)
            rho = density[k] if density is not None and density[k] is not None else shared
            x = rms_norm(h, norm.weight, norm.eps)
            # h + layer(x): the layer adds the residual itself (the one-call mixer while it holds), unless a
            # forward hook watches it, which must see the layer's own output
            res = None if _hooked(layer) else h
            if return_plans or (self.shared_density and k == 0 and len(self.layers) > 1):
                out, plan = layer(x, budget=b, density=rho, return_plan=True, check=False, residual=res)
                plans.append(plan)
                if self.shared_density and k == 0:
                    shared = plan.token_density.to(device=h.device, dtype=h.dtype)
            else:
                out = layer(x, budget=b, density=rho, check=False, residual=res)
            h = out if res is not None else h + out
        logits = self.head(rms_norm(h, self.norm_f.weight, self.norm_f.eps))
        return (logits, plans) if return_plans else logits

    def _check_tokens(self, tokens: Tensor, shape: str, ndim: int, *, values: bool = True) -> None:
        """Refuse ``tokens`` that are not int64 of ``ndim`` dims, empty, or (``values``) outside the
        vocabulary (the decoding kernel checks the values itself: :func:`fused_step`)."""
        if not isinstance(tokens, Tensor) or tokens.dim() != ndim or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be int64 of shape {shape}, got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.numel() == 0:
            raise ValueError(f"tokens must have at least one row and one position, got shape {tuple(tokens.shape)}")
        if not values:
            return
        lo, hi = torch.aminmax(tokens)
        if int(lo) < 0 or int(hi) >= self.vocab_size:
            raise ValueError(f"tokens must lie in [0, vocab_size={self.vocab_size}), got values in "
                             f"[{int(lo)}, {int(hi)}]")

    @torch.no_grad()
    def _diagnose(self, tokens: Tensor, budget: float | None, density) -> None:
        """Name where a NaN/Inf in the logits came from (the forward again, checking every stage)."""
        h = self.embedding(tokens)
        if not bool(torch.isfinite(h).all()):
            bad = tokens[~torch.isfinite(h).all(-1)].unique()[:8].tolist()
            raise ValueError(f"the embeddings of tokens {bad} contain NaN/Inf (embedding.weight is not finite)")
        shared = None
        for k, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            rho = density[k] if density is not None and density[k] is not None else shared
            try:
                out, plan = layer(norm(h), budget=self.layer_budget(k, budget), density=rho, return_plan=True)
            except ValueError as e:
                bad = _nonfinite(layer)
                why = f"its weights {bad} are not finite" if bad else str(e)
                raise ValueError(f"layer {k} produced NaN/Inf: {why}") from None
            if self.shared_density and k == 0:
                shared = plan.token_density.to(device=h.device, dtype=h.dtype)
            h = h + out
            if not bool(torch.isfinite(h).all()):
                raise ValueError(f"the residual stream overflowed after layer {k}")
        if bool(torch.isfinite(self.head(self.norm_f(h))).all()):
            return  # nothing non-finite on the checked path: the caller re-raises what it met
        raise ValueError("the model's logits contain NaN/Inf (the final norm or the head: norm_f.weight or "
                         "embedding.weight is not finite, or the values overflow)")

    def ratio_loss(self) -> Tensor | None:
        """Sum of the layers' H-Net ratio losses of the last forward (learned boundaries), or None."""
        losses = [layer.ratio_loss for layer in self.layers if layer.ratio_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def allocate_inference_state(self, batch: int) -> TiledLMState:
        """Zero decoding state: one :class:`~tiling.modules.TiledMambaState` per layer.

        Parameters
        ----------
        batch : rows (prompts decoded together, ≥ 1).

        Returns
        -------
        :class:`TiledLMState`, the sequence of layer states that remembers the model and the batch size it
        was made for (:meth:`step` refuses it elsewhere).

        Raises
        ------
        ValueError
            The model has ``shared_density=True`` (a whole-sequence signal of the first layer).
        """
        if self.shared_density:
            raise ValueError("step() does not support shared_density=True (the shared density is a whole-sequence "
                             "signal of the first layer); use forward()")
        batch = check_int(batch, "batch", minimum=1)
        flat = zero_state(self, batch)  # the kernel's form, made directly where its step applies
        if flat is not None:
            return TiledLMState(owner=id(self), flat=flat)
        return TiledLMState(share_router_states(self, [layer.allocate_inference_state(batch) for layer in self.layers]),
                            owner=id(self))

    def step(self, tokens: Tensor, state: Sequence, *, budget: float | None = None) -> tuple[Tensor, TiledLMState]:
        """One token per row: ``batch`` prompts decoded together.

        Parameters
        ----------
        tokens : (batch,) int64 in ``[0, vocab_size)``.
        state : the state of :meth:`allocate_inference_state` for this batch size, or of a previous step (or
            a list of one layer state per layer).
        budget : the decoding budget of the tiled layers (None: each layer's own).

        Returns
        -------
        ``(logits (batch, vocab), new state)``; the state passed in is unchanged.

        Raises
        ------
        ValueError
            ``tokens`` is not int64 of shape (batch,) in range; ``state`` is not this model's (another
            model, or one layer state per layer of another shape) or was made for another batch size
            (the message says which); a scan-scope layer would decode at a budget below 1 (it steps only
            at full resolution); the logits hold NaN/Inf.

        Notes
        -----
        Equals :meth:`forward` position by position (block scope, causal layers), every row of a
        batch as if decoded alone. Checked once per call (the tokens, the state, the budgets, the
        logits); a tiled layer runs its mixer only on the tokens that start a segment, elsewhere a
        token costs ``O(d_model)`` in that layer (:meth:`~tiling.modules.TiledMamba.step`).
        """
        fused = resume_step(self, tokens, state, budget)  # the kernel's state of this model's last step
        if fused is not None:
            return fused
        self._check_tokens(tokens, "(batch,)", 1, values=False)
        budgets = self._step_budgets(budget)
        batch = tokens.shape[0]
        self.check_state(state, batch, n_layers=len(budgets))
        fused = fused_step(self, tokens, state, budgets, batch, budget)  # one kernel call where it applies
        if fused is not None:
            return fused
        self._check_tokens(tokens, "(batch,)", 1)  # the values: the kernel refuses them too, without a message
        h = self.embedding(tokens)
        new = []
        for k, (norm, layer, st, c) in enumerate(zip(self.norms, self.layers, state, budgets)):
            try:
                out, st = layer.step_unchecked(rms_norm(h, norm.weight, norm.eps), st, c)
            except ValueError as e:  # e.g. the signal of a NaN weight: name the weight rather than the input
                bad = _nonfinite(layer)
                raise ValueError(f"layer {k}: {f'its weights {bad} are not finite' if bad else e}; the state is "
                                 "unchanged") from None
            h = h + out
            new.append(st)
        logits = self.head(rms_norm(h, self.norm_f.weight, self.norm_f.eps))
        if not all_finite(logits):
            if not bool(torch.isfinite(self.embedding.weight[tokens]).all()):
                raise ValueError(f"the embeddings of tokens {tokens.tolist()[:8]} contain NaN/Inf (embedding.weight "
                                 "is not finite); the state is unchanged")
            bad = [f"layer {k}: {_nonfinite(layer)}" for k, layer in enumerate(self.layers) if _nonfinite(layer)]
            why = ", ".join(bad) or "a weight or the state overflowed"
            raise ValueError(f"the step's logits contain NaN/Inf ({why}); the state is unchanged")
        return logits, TiledLMState(new, owner=id(self))

    def _step_budgets(self, budget: float | None) -> list[float]:
        """Each layer's checked decoding budget for a call with ``budget``, kept per value while no module
        or parameter is assigned anew (the layers' configurations are frozen): one dictionary lookup per
        step, whose length is also the number of layers (:meth:`check_state`)."""
        cache = self.__dict__.setdefault("_budgets_cache", {})
        cacheable = budget is None or type(budget) in (int, float)  # not a bool, a tensor or a list: checked
        key = (assignments(), budget)
        if cacheable and key in cache:
            return cache[key]
        budgets = []
        for k, layer in enumerate(self.layers):
            c = layer._budget(self.layer_budget(k, budget))
            if layer.scope == "scan" and c < 1.0:
                raise ValueError(f"layer {k} is a scan-scope layer: its step() runs at full resolution only, so "
                                 f"it cannot decode at budget {c:g} (use forward(), or budget=1)")
            budgets.append(c)
        if cacheable:
            if len(cache) >= 16 or any(k[0] != key[0] for k in cache):  # budgets of earlier assignments
                cache.clear()
            cache[key] = budgets
        return budgets

    def check_state(self, state: Sequence, batch: int, *, n_layers: int | None = None) -> None:
        """Refuse a decoding state that is not this model's or not of ``batch`` rows (naming which);
        ``n_layers``: the model's number of layers where the caller knows it (``len(self.layers)``
        reads three module dictionaries)."""
        n_layers = len(self.layers) if n_layers is None else n_layers
        if not isinstance(state, (list, TiledLMState)) or len(state) != n_layers:
            raise ValueError(f"state must be the list of {n_layers} layer states of this model's "
                             f"allocate_inference_state, got {type(state).__name__}"
                             f"{f' of {len(state)} entries' if isinstance(state, (list, TiledLMState)) else ''}")
        if isinstance(state, TiledLMState):
            if state.owner != id(self):
                raise ValueError("state was allocated by another model (allocate_inference_state of this model)")
            if state.batch == batch:  # this model's own state of this batch: its layers' states are right
                return
        for k, (layer, st) in enumerate(zip(self.layers, state)):
            try:
                layer.check_state(st, batch)
            except (TypeError, ValueError) as e:
                raise ValueError(f"state of layer {k}: {e}") from None

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups.

        Parameters
        ----------
        weight_decay : the decay of the weight matrices.

        Returns
        -------
        Two groups: decay on weight matrices only; none on A_log, D (Mamba's ``_no_weight_decay``),
        norms, biases and the tiling parameters (``route_*``, ``transition_gain``), whose scale is set
        by their identity initialisation rather than by a prior towards zero.
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            skip = (getattr(p, "_no_weight_decay", False) or p.dim() < 2 or "norm" in name
                    or "route_" in name or "transition_gain" in name)
            (no_decay if skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @classmethod
    def from_hf(cls, model_or_folder, *, tiling: TilingConfig | None = None, **kwargs) -> "TiledLM":
        """A ``TiledLM`` with the weights of an HF ``MambaForCausalLM`` (a model, a local folder, or a
        cached Hub name; offline). At budget 1 its logits are the HF model's. See
        :func:`tiling.train.hf_convert.from_hf` (``kwargs``: ``shared_density``, ``full_resolution_layers``)
        and :mod:`tiling.train.hf` for the HF ``PreTrainedModel`` of a tiled model."""
        from tiling.train.hf_convert import from_hf

        return from_hf(model_or_folder, cls=cls, tiling=tiling, **kwargs)

    def to_hf(self, **config_kwargs):
        """The HF ``MambaForCausalLM`` computing what this model computes at budget 1
        (:func:`tiling.train.hf_convert.to_hf`; ``config_kwargs``: further ``MambaConfig`` fields)."""
        from tiling.train.hf_convert import to_hf

        return to_hf(self, **config_kwargs)


def _keyword_config(vocab_size: int | None, d_model: int, n_layers: int, shared_density: bool,
                    full_resolution_layers, tiling: TilingConfig | None, mamba: dict[str, Any]) -> TiledLMConfig:
    """The :class:`~tiling.config.TiledLMConfig` of ``TiledLM``'s keyword form (its deprecated tiling keywords too)."""
    if vocab_size is None:
        raise TypeError("TiledLM() needs vocab_size (or config=TiledLMConfig(...))")
    options = {k: mamba.pop(k) for k in list(mamba) if k in _TILING_FIELDS}
    if options:
        if tiling is not None:
            raise TypeError("TiledLM() takes tiling=TilingConfig(...) or the deprecated tiling keywords, not both")
        warnings.warn("TiledLM(..., budget=..., policy=..., ...) is deprecated: pass tiling=TilingConfig(...); "
                      "the keyword options will be removed in the next release", DeprecationWarning, stacklevel=3)
        tiling = TilingConfig(**options)
    elif tiling is None:
        tiling = TilingConfig()
    if not isinstance(tiling, TilingConfig):
        raise TypeError(f"tiling must be a tiling.config.TilingConfig, got {type(tiling).__name__}")
    unknown = sorted(set(mamba) - _MAMBA_FIELDS)
    if unknown:
        raise TypeError(f"unknown TiledLM arguments {unknown}: neither Mamba arguments ({sorted(_MAMBA_FIELDS)}) "
                        "nor tiling options")
    return TiledLMConfig(MambaConfig(d_model=d_model, **{"expand": 2, **mamba}), n_layers=n_layers, tiling=tiling,
                         vocab_size=vocab_size, shared_density=shared_density,
                         full_resolution_layers=tuple(full_resolution_layers))


def _nonfinite(module: nn.Module) -> list[str]:
    """The names of ``module``'s parameters that hold NaN/Inf (at most four)."""
    with torch.no_grad():
        return [n for n, p in module.named_parameters() if not bool(torch.isfinite(p).all())][:4]


__all__ = ["TiledLM", "TiledLMState"]
