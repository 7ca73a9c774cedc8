"""A small language model of TiledMamba blocks: embedding, n × [RMSNorm + TiledMamba] with
residuals, final RMSNorm, head tied to the embedding (the layout of HF's ``MambaForCausalLM``)."""
from __future__ import annotations

import torch
from torch import nn

from infogeo._checks import check_int
from tiling.modules import TiledMamba
from tiling.tile import TilePlan

Tensor = torch.Tensor


class TiledLM(nn.Module):
    """``tokens (batch, L) int64 → logits (batch, L, vocab)``; ``layer_kwargs`` go to every
    :class:`~tiling.modules.TiledMamba` (tile_size, budget, policy, ...).

    ``shared_density``: every layer's resolution policy reads the per-token density of the
    *first* layer, ``ρ_t = (Σ_d Δ_{t,d}²)‖B_t‖²`` (seed 001 §3.4 step 1, the closed form of the
    first layer), passed as the layers' external density, so every layer sees the first layer's
    tile means (and tail means, with ``predictor_tail``). Why: in a deep stack only the first layer sees the token
    stream itself; deeper layers see the residual stream, whose density need not follow the
    content (in the burst tasks the second layer's density ratio burst/filler is ≈ 1 while the
    first layer's is ≈ 4). Causal as the layers are: layer ``l``'s tile ``i`` uses densities of
    tiles ``< i`` only (the causal policy), whichever layer produced them.
    """

    def __init__(self, vocab_size: int, d_model: int = 32, n_layers: int = 2, *, shared_density: bool = False,
                 **layer_kwargs) -> None:
        super().__init__()
        self.vocab_size = check_int(vocab_size, "vocab_size", minimum=2)
        self.shared_density = bool(shared_density)
        check_int(n_layers, "n_layers", minimum=1)
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)  # tied head: unit-variance rows would give logits of std √d_model
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=1e-5) for _ in range(n_layers))
        self.layers = nn.ModuleList(TiledMamba(d_model, **layer_kwargs) for _ in range(n_layers))
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied

    def forward(self, tokens: Tensor, *, budget: float | None = None, return_plans: bool = False):
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be int64 of shape (batch, L), got {tokens.dtype} {tuple(tokens.shape)}")
        h = self.embedding(tokens)
        plans: list[TilePlan] = []
        density = None
        for k, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            if return_plans or (self.shared_density and k == 0 and len(self.layers) > 1):
                out, plan = layer(norm(h), budget=budget, density=density, return_plan=True)
                plans.append(plan)
                if self.shared_density and k == 0:
                    density = plan.token_density.to(device=h.device, dtype=h.dtype)
            else:
                out = layer(norm(h), budget=budget, density=density)
            h = h + out
        logits = self.head(self.norm_f(h))
        return (logits, plans) if return_plans else logits

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on weight matrices only; none on A_log, D (Mamba's ``_no_weight_decay``),
        norms, biases and the tiling parameters (``route_*``, ``transition_gain``), whose scale is
        set by their identity initialisation rather than by a prior towards zero."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            skip = (getattr(p, "_no_weight_decay", False) or p.dim() < 2 or "norm" in name
                    or "route_" in name or "transition_gain" in name)
            (no_decay if skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


__all__ = ["TiledLM"]
