"""Mamba language models seen through their implicit attention, for :func:`tiling.workflows.analysis.analyse`.

:class:`ImplicitAttentionModel` wraps an HF ``MambaForCausalLM`` or a ``tiling`` ``TiledLM`` and
answers ``model(input_ids, output_attentions=True, output_hidden_states=True)`` the way an HF
transformer does: ``attentions`` holds, per layer, the row-normalised magnitudes of the scan's
implicit attention M (:mod:`infogeo.implicit_attention`) averaged over ``groups`` groups of
channels, each group playing the part of a head; ``logits`` feeds the predictive density
(:mod:`infogeo.predictive`). So the density, graph, geodesic, spectrum, curvature and tiling
pipeline runs on a Mamba model unchanged.

Every layer's rebuilt output is checked against the layer's own: the scan inputs recomputed in
float64 are run through the recurrence h_t = e^{Δ_t A} h_{t−1} + Δ_t B_t u_t (the definition of
M, seed 000 §3.2.1's T = (M, S, R, Φ) at R = 1), and the largest deviation from the mixer's
output is reported (``reproduction_error``). M itself is tested against that recurrence and
against the layer's output in ``tests/test_implicit_attention.py``.

A ``TiledLM`` is analysed at budget 1 (full resolution): its block-scope layers are then Mamba
exactly, and the implicit attention is that of the model's own weights. A scan-scope layer with
trained routing adds routed tile states even at budget 1; its reproduction error shows it.
"""
from __future__ import annotations

import string
import warnings
from types import SimpleNamespace

import torch
from torch import nn

from infogeo.implicit_attention import MAX_TOKENS, attention_rows, layer_output, scan_inputs, scan_recurrence

Tensor = torch.Tensor

__all__ = ["ByteTokenizer", "ImplicitAttentionModel", "REPRODUCTION_TOL"]

#: the largest |rebuilt − layer output| relative to the output's scale that passes (float32 layers)
REPRODUCTION_TOL = 1e-3


class ByteTokenizer:
    """The byte-level "tokenizer" of a ``TiledLM`` (vocabulary 256: the UTF-8 bytes of the text).

    Answers the part of the HF tokenizer interface :func:`tiling.workflows.analysis.analyse` uses.
    Tokens are shown as the character for printable ASCII and ``\\xNN`` otherwise.
    """

    model_max_length = MAX_TOKENS

    def __call__(self, text: str, *, return_tensors: str = "pt", truncation: bool = False,
                 max_length: int | None = None, **_) -> dict:
        """The UTF-8 bytes of ``text`` as ``{"input_ids": (1, n) int64}``.

        Parameters
        ----------
        text : the text.
        return_tensors : accepted for the HF interface (always PyTorch).
        truncation, max_length : keep the first ``max_length`` bytes when ``truncation``.
        """
        ids = list(text.encode("utf-8"))
        if truncation and max_length is not None:
            ids = ids[:max_length]
        return {"input_ids": torch.tensor([ids], dtype=torch.int64)}

    @staticmethod
    def convert_ids_to_tokens(ids: list[int]) -> list[str]:
        r"""Each byte as the character for printable ASCII, ``\xNN`` otherwise."""
        shown = set(string.printable) - set("\t\n\r\x0b\x0c")
        return [chr(i) if chr(i) in shown else f"\\x{i:02x}" for i in ids]


class ImplicitAttentionModel(nn.Module):
    """An HF ``MambaForCausalLM`` or a ``TiledLM`` with the interface :func:`~tiling.workflows.analysis.analyse` reads.

    Parameters
    ----------
    model : nn.Module
        ``MambaForCausalLM`` (``model.backbone.layers[i].mixer`` are ``MambaMixer``) or ``TiledLM``
        (``model.layers[i]`` are ``TiledMamba``).
    groups : int
        Channel groups per layer, the "heads" of the analysis: head g is the mean of the
        row-normalised |M_c| over channels c of group g (d_inner must be divisible by it).
    kind : str
        ``"mamba"`` (HF) or ``"tiled-lm"``.
    """

    def __init__(self, model: nn.Module, *, groups: int = 8, kind: str) -> None:
        super().__init__()
        if kind not in ("mamba", "tiled-lm"):
            raise ValueError(f"kind must be 'mamba' or 'tiled-lm', got {kind!r}")
        self.inner, self.kind = model, kind
        self.mixers = list(model.layers) if kind == "tiled-lm" else [b.mixer for b in model.backbone.layers]
        d_model = int(self.mixers[0].out_proj.weight.shape[0])
        d_inner, N = self.mixers[0].A_log.shape
        if int(d_inner) % groups:
            raise ValueError(f"groups must divide the layers' d_inner = {int(d_inner)} channels, got {groups}")
        self.groups = groups
        self.config = SimpleNamespace(
            model_type=kind, num_hidden_layers=len(self.mixers), num_attention_heads=groups, hidden_size=d_model,
            intermediate_size=int(d_inner), state_size=int(N), max_position_embeddings=MAX_TOKENS,
            architectures=[type(model).__name__], implicit_attention=True)
        #: per layer, max |rebuilt − layer output| / max |layer output| of the last forward
        self.reproduction_error: list[float] = []
        self.zero_rows: list[int] = []

    def forward(self, input_ids: Tensor, output_attentions: bool = True, output_hidden_states: bool = True,
                **_) -> SimpleNamespace:
        """The implicit attention rows and the inputs of every layer on one sequence.

        Parameters
        ----------
        input_ids : (1, n) int64, ``n ≤ MAX_TOKENS``.
        output_attentions, output_hidden_states : return the rows / the layers' inputs.

        Returns
        -------
        Namespace with ``attentions`` (per layer, (1, groups, n, n) rows), ``hidden_states`` (per
        layer, its float64 input) and ``logits``; a ``TiledLM`` runs at budget 1.

        Raises
        ------
        ValueError
            ``input_ids`` is not (1, n) or longer than ``MAX_TOKENS``.

        Warns
        -----
        UserWarning
            The rows of a layer do not rebuild its output (relative error above ``REPRODUCTION_TOL``):
            the layer is not a plain Mamba mixer at budget 1.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"input_ids must have shape (1, n), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > MAX_TOKENS:
            raise ValueError(f"implicit attention is computed for at most {MAX_TOKENS} tokens, "
                             f"got {input_ids.shape[1]}")
        seen: list[tuple[Tensor, Tensor]] = []
        hooks = [m.register_forward_hook(lambda _m, a, out: seen.append((a[0][0].detach(), out[0].detach())))
                 for m in self.mixers]
        try:
            with torch.no_grad():
                if self.kind == "tiled-lm":
                    logits = self.inner(input_ids, budget=1.0)
                else:
                    logits = self.inner(input_ids=input_ids).logits
        finally:
            for h in hooks:
                h.remove()
        attentions, hidden, errs, zeros = [], [], [], []
        for mixer, (x, y) in zip(self.mixers, seen):
            s = scan_inputs(mixer, x)
            rebuilt = layer_output(mixer, s, scan_recurrence(s))
            ref = y.to(torch.float64)
            errs.append(float((rebuilt - ref).abs().max() / ref.abs().max().clamp_min(1e-30)))
            P, z = attention_rows(s, self.groups)
            attentions.append(P[None])
            hidden.append(x[None].to(torch.float64))
            zeros.append(z)
        self.reproduction_error, self.zero_rows = errs, zeros
        bad = [i for i, e in enumerate(errs) if not e <= REPRODUCTION_TOL]
        if bad:
            warnings.warn(f"implicit attention of layer(s) {bad} does not rebuild the layer's output (relative "
                          f"error up to {max(errs[i] for i in bad):.2g} > {REPRODUCTION_TOL:g}): the layer is not a "
                          "plain Mamba mixer at budget 1 (e.g. trained scan-scope routing)")
        return SimpleNamespace(attentions=tuple(attentions) if output_attentions else None,
                               hidden_states=tuple(hidden) if output_hidden_states else None, logits=logits)



def implicit_attention_info(model) -> dict:
    """The implicit-attention entry of the report's ``model`` section.

    Parameters
    ----------
    model : any model.

    Returns
    -------
    ``{"implicit_attention": {...}}`` for an :class:`ImplicitAttentionModel` (how the rows were made,
    the per-layer reproduction error of the last forward, rows without magnitude); ``{}`` for any
    other model.
    """
    if not isinstance(model, ImplicitAttentionModel):
        return {}
    return {"implicit_attention": {
        "rows": "P_g[t, s] = mean over the channels c of group g of |M_c[t, s]| / sum_s' |M_c[t, s']|",
        "groups": model.groups, "channels_per_group": model.config.intermediate_size // model.groups,
        "d_inner": model.config.intermediate_size, "state_size": model.config.state_size,
        "reproduction_error": list(model.reproduction_error), "zero_rows": list(model.zero_rows),
    }}
