"""Where a byte-level hourglass starts its segments: boundary signals, the budget controller and the
routing module (in the layout of H-Net's ``RoutingModule``, Hwang, Wang, Gu 2025: a module that decides
the segment starts, with a frozen decoding state).

Signals (all causal: the score ``s_t`` reads bytes ``≤ t`` only)
    The seeds' information density ρ (seed 001 §3.1.1: "the rate of change in the model's internal
    state"; seed 001 §3.4 step 1) is read, for a language model, off its predictive distribution.
    An auxiliary next-byte head on the encoder output gives ``p_t = softmax(W_aux x_t)``, the
    distribution of byte ``t + 1``:

    ``"entropy"``    ``s_t = H(p_t)``: the next byte is hard to predict, so position ``t`` gets a fresh
                     read of the main network (BLT's entropy patching, Pagnoni et al. 2024).
    ``"surprisal"``  ``s_t = −log p_{t−1}(x_t)``: byte ``t`` was a surprise (dynamic token pooling's
                     entropy spikes, Nawrot et al. 2023).
    ``"fisher_rao"`` ``s_t = d_FR(p_{t−1}, p_t) = 4 arcsin(‖√p_{t−1} − √p_t‖ / 2)``: the Fisher–Rao
                     speed of the predictive distribution (seed 000 §3.1.2's path length on the
                     simplex, :func:`infogeo.fisher.categorical_distance`; ``infogeo.predictive``).
    ``"linear"``     the linearised SSM density of the encoder's last layer
                     (:func:`~tiling.modules.signal.linear_density`; seed 001 §3.4 step 1).
    ``"router"``     H-Net's learned cosine router ``p_t = ½(1 − cos(W_q x_t, W_k x_{t−1}))``
                     (:class:`~tiling.modules.router.TokenRouter`), trained with its ratio loss.
    ``"uniform"``    fixed pooling: a segment starts where ``⌊t·c⌋`` steps (every ``1/c`` bytes).
    ``"space"``      SpaceByte's rule (Slagle 2024): ``s_t = 1`` where byte ``t`` is space-like (not an
                     ASCII letter or digit, not a UTF-8 continuation byte) and byte ``t − 1`` is not.

    No gradient flows from a boundary decision into the auxiliary head: the scores are detached
    (the head learns from its own next-byte loss only). BLT's monotonic rule replaces ``s_t`` by
    ``s_t − s_{t−1}``.

The budget controller (byte form)
    A budget ``c`` asks for ``≈ c·L`` segments. The threshold ``θ(c)`` is the running quantile of
    level ``1 − c`` of the score over training batches (:class:`ScoreQuantiles`; updated *after*
    each training forward, so a forward never reads its own batch: the decision stays causal).
    Causal mode adds a deterministic feedback on the surplus ``D_t = Σ_{j≤t} (c − b_j)``
    (``b_0 = 1``): a boundary is forced when ``D_{t−1} + c ≥ S`` and forbidden when
    ``D_{t−1} + c − 1 < −S``, otherwise ``b_t = [s_t > θ(c)]``. By induction ``|D_t| ≤ S`` for every
    ``t``, so the realised rate obeys ``|mean_t b_t − c| ≤ S / L`` (``S = boundary.slack``). This is
    the per-byte form of the tile policy's controller (:mod:`tiling.policy`, ``slack``).
    Non-causal mode takes the ``⌈c·L⌉`` largest scores of each row (position 0 included): the
    budget is met exactly. The tile form (``boundary.form = "tile"``) gives the tile's mean score to
    the seeds' per-tile policy ``R_i = f(ρ_i, d_i, c)`` (seed 001 §3.2.2; :func:`tiling.policy.plan_tiles`
    through :class:`~tiling.modules.router.TileRouter`), whose controller and bounds are those of
    the tiled layer.

Departure from the seeds: seed 001 §3.2.2 assigns a resolution per tile; the byte form assigns a
boundary per byte (a tile of variable length), which is what H-Net, BLT and dynamic pooling found to
matter. The per-tile form is kept beside it and measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from infogeo.fisher import categorical_distance
from tiling.config import BoundaryConfig, TilingConfig
from tiling.modules.assignments import assignments
from tiling.modules.chunk import SegmentLayout, layout_from_boundaries, layout_from_counts
from tiling.modules.router import RouterState, TileRouter, TileRouterState, TokenRouter, ratio_loss

Tensor = torch.Tensor

#: bytes that are not space-like (SpaceByte): ASCII letters and digits, and UTF-8 continuation bytes
_WORD_BYTES = frozenset(list(range(ord("0"), ord("9") + 1)) + list(range(ord("A"), ord("Z") + 1))
                        + list(range(ord("a"), ord("z") + 1)) + list(range(0x80, 0xC0)))


def spacelike(tokens: Tensor) -> Tensor:
    """Whether each byte is space-like (SpaceByte): not an ASCII letter or digit, not a UTF-8
    continuation byte ``0x80–0xBF``.

    Parameters
    ----------
    tokens : int64 bytes, any shape.

    Returns
    -------
    bool tensor of ``tokens``' shape.
    """
    table = torch.ones(256, dtype=torch.bool, device=tokens.device)
    table[torch.tensor(sorted(_WORD_BYTES), device=tokens.device)] = False
    return table[tokens.clamp(0, 255)]


def uniform_boundaries(positions: Tensor, budget: float) -> Tensor:
    """Fixed pooling: ``b_t = ⌊t·c⌋ > ⌊(t − 1)·c⌋``, ``b_0 = 1`` (every ``1/c`` bytes; causal, stateless).

    Parameters
    ----------
    positions : int64 positions ``t ≥ 0``, any shape.
    budget : ``c ∈ (0, 1]``.

    Returns
    -------
    bool tensor of ``positions``' shape; over ``0 ≤ t < L`` it holds ``⌈c·L⌉`` ones (up to rounding
    of ``c`` in floating point).
    """
    t = positions.to(torch.float64)
    return (positions == 0) | (torch.floor(t * budget) > torch.floor((t - 1) * budget))


def exact_boundaries(score: Tensor, budget: float) -> Tensor:
    """Non-causal: the ``⌈c·L⌉`` largest scores of each row (position 0 always; the budget met exactly).

    Parameters
    ----------
    score : (batch, L) finite.
    budget : ``c ∈ (0, 1]``.

    Returns
    -------
    (batch, L) bool with exactly ``⌈c·L⌉`` ones per row.
    """
    batch, L = score.shape
    k = max(1, math.ceil(budget * L - 1e-9))
    s = score.detach().clone()
    s[:, 0] = math.inf
    top = s.topk(k, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)


def causal_boundaries(score: Tensor, threshold: float, budget: float, slack: float, *,
                      surplus: Tensor | None = None, start: int = 0) -> tuple[Tensor, Tensor]:
    """The causal controller (module docstring): ``b_t = [s_t > θ]`` within ``|D_t| ≤ S``.

    Parameters
    ----------
    score : (batch, L) scores of positions ``start, …, start + L − 1``.
    threshold : ``θ(c)``.
    budget : ``c ∈ (0, 1]``.
    slack : ``S ≥ 1``.
    surplus : (batch,) ``D_{start−1}`` (decoding); None: a fresh sequence (``start`` must be 0).
    start : the position of the first column.

    Returns
    -------
    ``(boundary (batch, L) bool, surplus (batch,) float64)``.

    Notes
    -----
    A sequential rule, like a scan: it runs as a loop over positions on the host over the (small)
    score matrix; the model's tensors stay where they are. ``b_0 = 1`` always.
    """
    batch, L = score.shape
    above = (score.detach() > threshold).cpu().tolist()
    D = [0.0] * batch if surplus is None else surplus.detach().cpu().to(torch.float64).tolist()
    out = [[False] * L for _ in range(batch)]
    hi, lo = slack, -slack
    for b in range(batch):
        row, a, d = out[b], above[b], D[b]
        for j in range(L):
            d += budget
            if start + j == 0 or d >= hi:
                take = True
            elif d - 1.0 < lo:
                take = False
            else:
                take = a[j]
            if take:
                d -= 1.0
            row[j] = take
        D[b] = d
    return (torch.tensor(out, dtype=torch.bool, device=score.device),
            torch.tensor(D, dtype=torch.float64, device=score.device))


class ScoreQuantiles(nn.Module):
    """Running quantiles of a boundary score, from which the threshold of any budget is read.

    Parameters
    ----------
    levels : ``K ≥ 2`` quantiles at levels ``(k + ½)/K``.
    momentum : EMA weight of a batch, ``∈ (0, 1]``.

    Attributes
    ----------
    quantiles : buffer (K,) float64.
    updates : buffer () int64, batches folded in (0: no threshold yet).
    """

    def __init__(self, levels: int, momentum: float) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("quantiles", torch.zeros(levels, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"levels={self.quantiles.numel()}, momentum={self.momentum}"

    @property
    def levels(self) -> Tensor:
        K = self.quantiles.numel()
        return (torch.arange(K, dtype=torch.float64) + 0.5) / K

    def _read(self) -> tuple[list[float], list[float], bool]:
        """``(levels, quantiles, updated)`` as Python numbers, read from the buffers again only when one
        changed (an update, a load, an assignment): a decoding step reads them every byte."""
        q, u = self.quantiles, self.updates
        key = (assignments(), q._version, u._version, q.data_ptr(), u.data_ptr())
        kept = self.__dict__.get("_read_cache")
        if kept is None or kept[0] != key:
            kept = (key, (self.levels.tolist(), q.tolist(), int(u) > 0))
            self.__dict__["_read_cache"] = kept
        return kept[1]

    def threshold(self, budget: float) -> float:
        """``θ(c)``: the running quantile at level ``1 − c`` (linear between levels); ``+∞`` before
        the first update (then only the controller places boundaries)."""
        lv, q, updated = self._read()
        if not updated:
            return math.inf
        a = 1.0 - budget
        if a <= lv[0]:
            return q[0] - (q[1] - q[0]) if a <= 0.0 else q[0]
        if a >= lv[-1]:
            return q[-1]
        k = int((a - lv[0]) * len(lv))
        k = min(max(k, 0), len(lv) - 2)
        w = (a - lv[k]) / (lv[k + 1] - lv[k])
        return q[k] + w * (q[k + 1] - q[k])

    def scale(self) -> float:
        """A robust spread of the score, ``(q_90 − q_10) / 4`` (≥ 1e-6): the temperature of the
        boundary probability."""
        _, q, updated = self._read()
        if not updated:
            return 1.0
        K = len(q)
        return max((q[int(0.9 * K)] - q[int(0.1 * K)]) / 4.0, 1e-6)

    @torch.no_grad()
    def update(self, score: Tensor) -> None:
        """Fold one batch of finite scores in (averaged over the ranks of a ``torch.distributed`` job)."""
        q = torch.quantile(score.detach().flatten().to(torch.float64).cpu(), self.levels)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            q = q.to(self.quantiles.device)
            torch.distributed.all_reduce(q)
            q /= torch.distributed.get_world_size()
        q = q.to(self.quantiles.device)
        if int(self.updates) == 0:
            self.quantiles.copy_(q)
        else:
            self.quantiles.lerp_(q, self.momentum)
        self.updates += 1


@dataclass(frozen=True)
class Routing:
    """What :class:`BoundaryRouter` decided for a batch.

    Attributes
    ----------
    boundary : (batch, L) bool, True where a segment starts.
    prob : (batch, L) boundary probability ``p_t`` (the router's, or ``σ((s_t − θ)/τ)`` detached for
        a scored signal, or 1 at boundaries and 0 elsewhere for uniform/space).
    layout : the :class:`~tiling.modules.chunk.SegmentLayout`, None when every byte is a boundary.
    score : (batch, L) the score (None for ``uniform``).
    ratio_loss : H-Net's ratio loss (``signal="router"`` in training), else None.
    """

    boundary: Tensor
    prob: Tensor
    layout: SegmentLayout | None
    score: Tensor | None
    ratio_loss: Tensor | None


@dataclass(frozen=True)
class BoundaryState:
    """Decoding state of :class:`BoundaryRouter`.

    Attributes
    ----------
    position : the next position ``t``.
    prev_logp : (batch, V) log-probabilities of the previous aux prediction (surprisal, Fisher–Rao).
    prev_score : (batch,) the previous raw score (monotonic rule).
    prev_space : (batch,) bool, the previous byte was space-like.
    surplus : (batch,) float64, the controller's ``D_{t−1}``.
    router : the :class:`~tiling.modules.router.RouterState` (``signal="router"``).
    tile : the :class:`~tiling.modules.router.TileRouterState` (tile form).
    """

    position: int
    prev_logp: Tensor | None
    prev_score: Tensor | None
    prev_space: Tensor
    surplus: Tensor
    router: RouterState | None
    tile: TileRouterState | None


class BoundaryRouter(nn.Module):
    """Segment starts of the hourglass from one signal and the budget controller (module docstring).

    Parameters
    ----------
    config : the :class:`~tiling.config.BoundaryConfig`.
    tiling : the main network's :class:`~tiling.config.TilingConfig` (``causal``, ``r_min`` and, in the
        tile form, the tile policy).
    d_model : width of the encoder output (the router's input).
    """

    def __init__(self, config: BoundaryConfig, tiling: TilingConfig, d_model: int, *, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.config = config
        self.tiling = tiling
        self.signal = config.signal
        self.causal = tiling.causal
        self.quantiles = ScoreQuantiles(config.levels, config.momentum)
        self.router = TokenRouter(d_model, config.router_rank, device=device, dtype=dtype) \
            if config.signal == "router" else None
        self.tile_router = TileRouter(tiling.replace(calibration="running"), device=device) \
            if config.form == "tile" and config.signal != "uniform" else None

    def extra_repr(self) -> str:
        c = self.config
        return f"signal={c.signal!r}, rule={c.rule!r}, form={c.form!r}, causal={self.causal}, slack={c.slack}"

    # ------------------------------------------------------------------ scores
    def raw_score(self, tokens: Tensor, x: Tensor, aux_logits: Tensor | None, linear: Tensor | None) -> Tensor | None:
        """``s_t`` (batch, L) of a scored signal before the rule (module docstring), detached; None for
        ``uniform`` (no score) and ``router`` (its probability is the score, read with its gradient in
        :meth:`forward`)."""
        s = self.signal
        with torch.no_grad():
            if s in ("entropy", "surprisal", "fisher_rao"):
                logp = F.log_softmax(aux_logits.detach().float(), dim=-1)
                if s == "entropy":
                    return -(logp.exp() * logp).sum(-1)
                if s == "surprisal":
                    nll = -logp[:, :-1].gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
                    return torch.cat([nll.new_zeros(nll.shape[0], 1), nll], dim=1)
                p = logp.exp()
                d = categorical_distance(p[:, :-1], p[:, 1:]) if p.shape[1] > 1 else p.new_zeros(p.shape[0], 0)
                return torch.cat([d.new_zeros(d.shape[0], 1), d], dim=1)
            if s == "linear":
                return linear.detach().float()
            if s == "space":
                sp = spacelike(tokens)
                prev = torch.cat([torch.ones_like(sp[:, :1]), sp[:, :-1]], dim=1)
                return (sp & ~prev).float()
        return None

    def _rule(self, s: Tensor) -> Tensor:
        if self.config.rule == "monotonic":
            return s - torch.cat([s[:, :1], s[:, :-1]], dim=1)
        return s

    def _prob(self, score: Tensor, threshold: float) -> Tensor:
        if not math.isfinite(threshold):
            return torch.ones_like(score)
        return torch.sigmoid((score - threshold) / self.quantiles.scale())

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: Tensor, x: Tensor, *, budget: float, aux_logits: Tensor | None = None,
                linear: Tensor | None = None) -> Routing:
        """Decide the segments of a batch.

        Parameters
        ----------
        tokens : (batch, L) int64 bytes.
        x : (batch, L, d) the encoder output.
        budget : ``c ∈ (0, 1]``.
        aux_logits : (batch, L, V) the auxiliary head's logits (aux signals).
        linear : (batch, L) the linearised density (``signal="linear"``).

        Returns
        -------
        :class:`Routing`.
        """
        batch, L = tokens.shape
        if budget >= 1.0:
            ones = torch.ones(batch, L, dtype=torch.bool, device=tokens.device)
            return Routing(ones, torch.ones(batch, L, device=x.device, dtype=x.dtype), None, None, None)
        if self.signal == "uniform":
            b = uniform_boundaries(torch.arange(L, device=tokens.device), budget).expand(batch, L)
            return Routing(b, b.to(x.dtype), layout_from_boundaries(b.contiguous()), None, None)
        p_router = self.router(x, validate=False) if self.router is not None else None
        raw = p_router.detach().float() if p_router is not None else self.raw_score(tokens, x, aux_logits, linear)
        score = self._rule(raw)
        if self.tile_router is not None:
            b = self._tile_boundaries(score, budget)
        elif self.causal:
            b, _ = causal_boundaries(score, self.quantiles.threshold(budget), budget, self.config.slack)
        else:
            b = exact_boundaries(score, budget)
        if p_router is not None:
            prob = p_router
            loss = ratio_loss(b, p_router, budget, validate=False) if self.training else None
        else:
            prob = b.to(x.dtype) if self.signal == "space" else \
                self._prob(score, self.quantiles.threshold(budget)).to(x.dtype)
            loss = None
        if self.training:
            self.quantiles.update(score)
        return Routing(b, prob, layout_from_boundaries(b), score, loss)

    def _tile_boundaries(self, score: Tensor, budget: float) -> Tensor:
        rho = score.clamp_min(0.0).double() + 1e-12  # the tile policy reads a non-negative density
        update = self.training
        plan = (self.tile_router if update else self.tile_router.plan)(rho, budget=budget)
        L, T = score.shape[1], self.tiling.tile_size
        return layout_from_counts(plan.segments.to(score.device), L, T).boundary

    # ------------------------------------------------------------------ decoding
    def allocate(self, batch: int, *, device=None) -> BoundaryState:
        """A fresh :class:`BoundaryState` for ``batch`` rows."""
        return BoundaryState(
            position=0, prev_logp=None, prev_score=None,
            prev_space=torch.ones(batch, dtype=torch.bool, device=device),
            surplus=torch.zeros(batch, dtype=torch.float64, device=device),
            router=RouterState(key=None) if self.router is not None else None,
            tile=self.tile_router.allocate(batch, device=device) if self.tile_router is not None else None)

    def step(self, token: Tensor, x: Tensor, state: BoundaryState, *, budget: float,
             aux_logits: Tensor | None = None, linear: Tensor | None = None
             ) -> tuple[Tensor, Tensor, BoundaryState]:
        """One byte: ``(starts (batch,) bool, prob (batch,), state)``, equal to :meth:`forward` position by
        position (eval mode, causal)."""
        if not self.causal:
            raise ValueError("step() needs a causal boundary router (tiling.causal=True): a non-causal rule reads "
                             "later bytes")
        t, batch = state.position, token.shape[0]
        new = {"position": t + 1}
        if budget >= 1.0:
            starts = torch.ones(batch, dtype=torch.bool, device=token.device)
            return starts, torch.ones(batch, device=x.device, dtype=x.dtype), replace(state, **new)
        if self.signal == "uniform":
            starts = uniform_boundaries(torch.full((batch,), t, device=token.device, dtype=torch.int64), budget)
            return starts, starts.to(x.dtype), replace(state, **new)
        s = self.signal
        p_router = None
        if s == "router":
            p_router, new["router"] = self.router.step(x, state.router)
            raw = p_router.float()
        elif s in ("entropy", "surprisal", "fisher_rao"):
            logp = F.log_softmax(aux_logits.float(), dim=-1)
            if s == "entropy":
                raw = -(logp.exp() * logp).sum(-1)
            elif state.prev_logp is None:
                raw = logp.new_zeros(batch)
            elif s == "surprisal":
                raw = -state.prev_logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)
            else:
                raw = categorical_distance(state.prev_logp.exp(), logp.exp())
            new["prev_logp"] = logp
        elif s == "linear":
            raw = linear.float()
        else:  # space
            sp = spacelike(token)
            raw = (sp & ~state.prev_space).float()
            new["prev_space"] = sp
        score = raw
        if self.config.rule == "monotonic":
            score = raw - (raw if state.prev_score is None else state.prev_score)
        new["prev_score"] = raw
        if self.tile_router is not None:
            rho = score.clamp_min(0.0).double() + 1e-12
            starts, new["tile"] = self.tile_router.step(rho, state.tile, budget=budget)
            starts = starts.to(token.device)
        else:
            b, new["surplus"] = causal_boundaries(score.unsqueeze(1), self.quantiles.threshold(budget), budget,
                                                  self.config.slack, surplus=state.surplus, start=t)
            starts = b[:, 0]
        if p_router is not None:
            prob = p_router
        elif s == "space":
            prob = starts.to(x.dtype)
        else:
            prob = self._prob(score, self.quantiles.threshold(budget)).to(x.dtype)
        return starts, prob, replace(state, **new)


__all__ = ["BoundaryRouter", "BoundaryState", "Routing", "ScoreQuantiles", "causal_boundaries", "exact_boundaries",
           "spacelike", "uniform_boundaries"]
