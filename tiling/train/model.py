"""A small language model of TiledMamba blocks: embedding, n × [RMSNorm + TiledMamba] with
residuals, final RMSNorm, head tied to the embedding (the layout of HF's ``MambaForCausalLM``)."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from infogeo.checks import check_int
from tiling.config import TilingConfig
from tiling.modules import TiledMamba
from tiling.modules.tiled_mamba import all_finite
from tiling.ops.scan import rms_norm
from tiling.tile import TilePlan

Tensor = torch.Tensor

#: the constructor arguments of Mamba itself (shapes, initialisation), shared by every layer
MAMBA_KWARGS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                "dt_init_floor", "conv_bias", "bias", "validate", "device", "dtype")
_TILING_FIELDS = tuple(f.name for f in dataclasses.fields(TilingConfig))


def split_layer_kwargs(layer_kwargs: dict) -> tuple[dict, TilingConfig]:
    """Split flat layer arguments into Mamba's arguments and a tiling configuration.

    Parameters
    ----------
    layer_kwargs : the flat ``layer_kwargs`` of :attr:`TiledLM.config` (Mamba's arguments and the
        fields of :class:`~tiling.config.TilingConfig`).

    Returns
    -------
    ``(mamba_kwargs, tiling)``: Mamba's arguments and a :class:`~tiling.config.TilingConfig` of the rest.

    Raises
    ------
    TypeError
        A name is neither a Mamba argument nor a tiling field.
    """
    unknown = sorted(set(layer_kwargs) - set(MAMBA_KWARGS) - set(_TILING_FIELDS))
    if unknown:
        raise TypeError(f"unknown layer arguments {unknown}")
    mamba = {k: v for k, v in layer_kwargs.items() if k in MAMBA_KWARGS}
    return mamba, TilingConfig(**{k: v for k, v in layer_kwargs.items() if k in _TILING_FIELDS})


class TiledLM(nn.Module):
    """Language model of tiled Mamba layers: ``tokens (batch, L) int64 → logits (batch, L, vocab)``.

    Parameters
    ----------
    vocab_size : ≥ 2.
    d_model : model width.
    n_layers : ≥ 1.
    shared_density : every layer's resolution policy reads the per-token density of the *first*
        layer, ``ρ_t = (Σ_d Δ_{t,d}²)‖B_t‖²`` (seed 001 §3.4 step 1, the closed form of the first
        layer), passed as the layers' external density, so every layer sees the first layer's tile
        means (and tail means, with ``predictor_tail``).
    full_resolution_layers : indices of layers (negative ones count from the end, as in Python:
        ``(0, -1)`` is the first and the last) that always run at full resolution, whatever the
        budget of the model or of a call: they are block-scope layers at budget 1, i.e. plain Mamba
        (the block scope is exact at ``R = 1``), built from the Mamba arguments of ``mamba_kwargs``
        and the tile size only (the other tiling options do not apply). The other layers get ``tiling``.
    tiling : the :class:`~tiling.config.TilingConfig` of every tiled layer; default ``TilingConfig()``.
    **mamba_kwargs : Mamba arguments (d_state, expand, ...) of every
        :class:`~tiling.modules.TiledMamba`. Deprecated (one release, ``DeprecationWarning``): tiling
        options as keywords among them (they build ``tiling``).

    Attributes
    ----------
    config : the constructor arguments (JSON-serialisable; ``layer_kwargs``: the Mamba arguments
        and every field of ``tiling``, flat, the format checkpoints have always stored), so a
        checkpoint can rebuild the model (:mod:`tiling.train.textmodel`, :func:`split_layer_kwargs`).
    tiling : the tiling configuration.
    layers : the :class:`~tiling.modules.TiledMamba` layers.

    Raises
    ------
    TypeError
        ``tiling`` is not a :class:`~tiling.config.TilingConfig` or is given together with tiling
        keywords; ``vocab_size``/``n_layers`` or an entry of ``full_resolution_layers`` is not an int.
    ValueError
        ``vocab_size < 2``, ``n_layers < 1``, a layer index does not exist, or a layer rejects its
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
    """

    def __init__(self, vocab_size: int, d_model: int = 32, n_layers: int = 2, *, shared_density: bool = False,
                 full_resolution_layers: tuple[int, ...] | list[int] = (), tiling: TilingConfig | None = None,
                 **mamba_kwargs) -> None:
        super().__init__()
        options = {k: v for k, v in mamba_kwargs.items() if k in _TILING_FIELDS}
        if options:
            if tiling is not None:
                raise TypeError("TiledLM() takes tiling=TilingConfig(...) or the deprecated tiling keywords, not both")
            warnings.warn("TiledLM(..., budget=..., policy=..., ...) is deprecated: pass tiling=TilingConfig(...); "
                          "the keyword options will be removed in the next release", DeprecationWarning, stacklevel=2)
            mamba_kwargs, tiling = split_layer_kwargs(mamba_kwargs)
        elif tiling is None:
            tiling = TilingConfig()
        if not isinstance(tiling, TilingConfig):
            raise TypeError(f"tiling must be a tiling.config.TilingConfig, got {type(tiling).__name__}")
        self.tiling = tiling
        self.vocab_size = check_int(vocab_size, "vocab_size", minimum=2)
        self.shared_density = bool(shared_density)
        n_layers = check_int(n_layers, "n_layers", minimum=1)
        self.full_resolution_layers = self._resolve_layers(full_resolution_layers, n_layers)
        self.config = {"vocab_size": self.vocab_size, "d_model": int(d_model), "n_layers": n_layers,
                       "shared_density": self.shared_density,
                       "full_resolution_layers": list(self.full_resolution_layers),
                       "layer_kwargs": {**{k: v for k, v in mamba_kwargs.items() if k not in ("device", "dtype")},
                                        **tiling.to_dict()}}
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)  # tied head: unit-variance rows would give logits of std √d_model
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=1e-5) for _ in range(n_layers))
        full = TilingConfig(tile_size=tiling.tile_size, scope="block", boundaries="tile", budget=1.0, policy="uniform")
        self.layers = nn.ModuleList(
            TiledMamba(d_model, **mamba_kwargs, tiling=full if k in self.full_resolution_layers else tiling)
            for k in range(n_layers))
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied

    @staticmethod
    def _resolve_layers(layers, n_layers: int) -> tuple[int, ...]:
        out = set()
        for k in layers:
            if isinstance(k, bool) or not isinstance(k, int):
                raise TypeError(f"full_resolution_layers must hold ints, got {k!r}")
            if not -n_layers <= k < n_layers:
                raise ValueError(f"full_resolution_layers: layer {k} does not exist in a model of {n_layers} layers")
            out.add(k % n_layers)
        return tuple(sorted(out))

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
            if return_plans or (self.shared_density and k == 0 and len(self.layers) > 1):
                out, plan = layer(x, budget=b, density=rho, return_plan=True, check=False)
                plans.append(plan)
                if self.shared_density and k == 0:
                    shared = plan.token_density.to(device=h.device, dtype=h.dtype)
            else:
                out = layer(x, budget=b, density=rho, check=False)
            h = h + out
        logits = self.head(rms_norm(h, self.norm_f.weight, self.norm_f.eps))
        return (logits, plans) if return_plans else logits

    def _check_tokens(self, tokens: Tensor, shape: str, ndim: int) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != ndim or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be int64 of shape {shape}, got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.numel() == 0:
            raise ValueError(f"tokens must have at least one row and one position, got shape {tuple(tokens.shape)}")
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

    def allocate_inference_state(self, batch: int) -> list:
        """Zero decoding state: one :class:`~tiling.modules.TiledMambaState` per layer.

        Parameters
        ----------
        batch : rows (prompts decoded together, ≥ 1).

        Returns
        -------
        :class:`TiledLMState`, a list of layer states that remembers the model and the batch size it
        was made for (:meth:`step` refuses it elsewhere).

        Raises
        ------
        ValueError
            The model has ``shared_density=True`` (a whole-sequence signal of the first layer).
        """
        if self.shared_density:
            raise ValueError("step() does not support shared_density=True (the shared density is a whole-sequence "
                             "signal of the first layer); use forward()")
        return TiledLMState([layer.allocate_inference_state(batch) for layer in self.layers], owner=id(self))

    def step(self, tokens: Tensor, state: list, *, budget: float | None = None) -> tuple[Tensor, list]:
        """One token per row: ``batch`` prompts decoded together.

        Parameters
        ----------
        tokens : (batch,) int64 in ``[0, vocab_size)``.
        state : the list of :meth:`allocate_inference_state` for this batch size, or of a previous step.
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
        self._check_tokens(tokens, "(batch,)", 1)
        self.check_state(state, tokens.shape[0])
        budgets = []
        for k, layer in enumerate(self.layers):
            b = self.layer_budget(k, budget)
            c = layer._budget(b)
            if layer.scope == "scan" and c < 1.0:
                raise ValueError(f"layer {k} is a scan-scope layer: its step() runs at full resolution only, so it "
                                 f"cannot decode at budget {c:g} (use forward(), or budget=1)")
            budgets.append(c)
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

    def check_state(self, state: list, batch: int) -> None:
        """Refuse a decoding state that is not this model's or not of ``batch`` rows (naming which)."""
        if not isinstance(state, list) or len(state) != len(self.layers):
            raise ValueError(f"state must be the list of {len(self.layers)} layer states of this model's "
                             f"allocate_inference_state, got {type(state).__name__}"
                             f"{f' of {len(state)} entries' if isinstance(state, list) else ''}")
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


def _nonfinite(module: nn.Module) -> list[str]:
    """The names of ``module``'s parameters that hold NaN/Inf (at most four)."""
    with torch.no_grad():
        return [n for n, p in module.named_parameters() if not bool(torch.isfinite(p).all())][:4]


class TiledLMState(list):
    """The decoding state of :class:`TiledLM`: one layer state per layer, and the model it belongs to.

    Attributes
    ----------
    owner : ``id`` of the model that made it (:meth:`TiledLM.step` refuses the state of another model).
    batch : the rows it was made for.
    """

    def __init__(self, layers, *, owner: int) -> None:
        super().__init__(layers)
        self.owner = owner
        self.batch = int(layers[0].conv.shape[0]) if layers else 0


__all__ = ["TiledLM", "TiledLMState", "MAMBA_KWARGS"]
