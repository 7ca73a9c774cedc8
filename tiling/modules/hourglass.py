"""A byte-level hourglass LM: thin full-resolution byte stages around a wide main network that runs
on ``≈ c·L`` tokens, with segment boundaries placed by information density (``docs/tiling.md``,
"The hourglass"; ``../shared/DESIGN.md``).

The flow (one forward of ``tokens (batch, L)``)::

    x   = embed(tokens)                                   (batch, L, d_outer)
    h   = Encoder(x)                                      E Mamba layers, full resolution
    aux = W_aux · RMSNorm(h)                              next-byte head (signals a, b; its own loss)
    b, p = BoundaryRouter(tokens, h, aux; c)              segment starts, boundary probability
    x̃   = Chunk(h; b)                                     (batch, L_c, d_outer), causal downsample
    z   = W_out · Main(W_in · x̃)                          M Mamba layers of width d_main ≥ d_outer
    z̄_S = p_S z_S + (1 − p_S) z̄_{S−1}                     H-Net's EMA ("ema"; "hold": z̄ = z)
    y_t = z̄_{S(t)} · (1 + c_t − sg(c_t)) + W_res · h_t    dechunk with the confidence STE, residual
    logits = head(RMSNorm(Decoder(y)))                    D Mamba layers, full resolution, tied head

Seed 000 §3.5.1 says each tile processes ``O(R_i·n_i)`` tokens; for a whole model that is the main
network's cost, ``∝ c·L·d_main²``, while the outer stages cost ``O(L·d_outer²)``
(:meth:`HourglassLM.cost`). Seed 000 §3.2.1's tile ``(M, S, R, Φ)``: ``M`` the main network on the
segment, ``S`` its state, ``R = 1/span`` the segment's resolution, ``Φ`` the Mamba recurrence across
segments.

Causality: ``y_t`` reads the main network's output of the segment holding ``t``, which saw the
representatives ``a_{S'} ≤ a_{S(t)} ≤ t``, the residual of ``h_t`` and the decoder's past; the
boundary decisions read bytes ``≤ t`` (:mod:`tiling.modules.boundary`). So logits ``t`` read bytes
``≤ t`` only, at every budget and for every signal (tested by changing one byte).

Exactness at ``R = 1``: every byte is a segment, ``Chunk`` and the hold are the identity, ``p ≡ 1``
(no smoothing), and with ``d_main = d_outer`` the maps ``W_in``, ``W_out`` are the identity; with
``W_res = 0`` (its default initialisation, as H-Net's residual projection) the model *is* a stack of
``E + M + D`` plain Mamba layers (tested against :class:`~tiling.train.TiledLM`).
``residual_init="identity"`` starts ``W_res = I`` instead, the Hourglass transformer's skip
connection (Nawrot et al. 2022), so a byte inside a segment reaches the decoder from the first step.

Departures, and why:
- The main network's Mamba layers do not rescale Δ by the segment's length (the block scope of
  :class:`~tiling.modules.TiledMamba` does): as in H-Net, the main network learns its own time scale.
- The EMA runs after ``W_out`` (in ``d_outer`` channels rather than ``d_main``): the two orders are
  equal because ``W_out`` is linear, and this one is cheaper.
- The EMA is computed by the project's selective scan op with one state per channel:
  ``δ_S = −log(1 − p_S)``, ``A = −1``, ``B_S = p_S / δ_S``, ``C = 1`` give
  ``h_S = (1 − p_S) h_{S−1} + p_S z_S`` (``p`` clamped to ``[10⁻⁴, 1 − 10⁻⁶]``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from infogeo.checks import check_in_range, check_int
from tiling.config import AUX_SIGNALS, HourglassConfig, StageConfig
from tiling.modules.boundary import BoundaryRouter, BoundaryState, Routing
from tiling.modules.chunk import Chunk, ChunkState, Dechunk
from tiling.modules.hourglass_step import fast_step
from tiling.modules.stack import MambaStack, StackState
from tiling.modules.step_weights import KernelCacheOwner
from tiling.ops import adaptive_selective_scan
from tiling.ops.scan import rms_norm
from tiling.ops.cost import layer_cost, signal_cost_per_token

Tensor = torch.Tensor

_P_MIN, _P_MAX = 1e-4, 1.0 - 1e-6


def ema_compact(z: Tensor, p: Tensor) -> Tensor:
    """H-Net's smoothing of the compact outputs, ``z̄_S = p_S z_S + (1 − p_S) z̄_{S−1}`` (``z̄_{−1} = 0``).

    Parameters
    ----------
    z : (batch, L_c, d).
    p : (batch, L_c) boundary probabilities at the segment starts, clamped to ``[1e-4, 1 − 1e-6]``.

    Returns
    -------
    (batch, L_c, d), differentiable in ``z`` and ``p`` (module docstring: the selective scan op).
    """
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    pc = p.to(acc).clamp(_P_MIN, _P_MAX)
    delta = -torch.log1p(-pc)  # (b, Lc)
    batch, Lc, d = z.shape
    u = z.transpose(1, 2)
    dl = delta.unsqueeze(1).expand(batch, d, Lc).to(z.dtype)
    A = -torch.ones(d, 1, dtype=acc, device=z.device)
    B = (pc / delta).unsqueeze(1).to(z.dtype)
    C = torch.ones_like(B)
    y = adaptive_selective_scan(u, dl, A, B, C, tile_size=max(1, Lc))
    return y.transpose(1, 2)


@dataclass(frozen=True)
class HourglassState:
    """Decoding state of :class:`HourglassLM`.

    Attributes
    ----------
    encoder, main, decoder : the stages' :class:`~tiling.modules.stack.StackState`.
    boundary : the :class:`~tiling.modules.boundary.BoundaryState`.
    chunk : the :class:`~tiling.modules.chunk.ChunkState` (the pool of the current segment).
    held : (batch, d_outer) the smoothed main output of the current segment.
    batch : rows.
    starts : (batch,) bool, whether the last byte started a segment (None before the first byte).
    """

    encoder: StackState
    main: StackState
    decoder: StackState
    boundary: BoundaryState
    chunk: ChunkState
    held: Tensor
    batch: int
    starts: Tensor | None = None


@dataclass(frozen=True)
class HourglassOutput:
    """What one forward produced, besides the logits.

    Attributes
    ----------
    routing : the :class:`~tiling.modules.boundary.Routing` (boundaries, probabilities, score).
    aux_logits : (batch, L, V) of the auxiliary head, or None.
    lengths : (batch,) segments per row (``L_c`` of each row).
    budget : the budget of the call.
    """

    routing: Routing
    aux_logits: Tensor | None
    lengths: Tensor
    budget: float

    @property
    def mean_resolution(self) -> float:
        """The realised ``R̄ = Σ_b L_c(b) / (batch·L)``."""
        return float(self.lengths.sum()) / self.routing.boundary.numel()


class HourglassLM(KernelCacheOwner, nn.Module):
    """Byte-level hourglass LM (module docstring): ``tokens (batch, L) int64 → logits (batch, L, V)``.

    Parameters
    ----------
    config : the :class:`~tiling.config.HourglassConfig`.
    device, dtype : of the parameters.

    Attributes
    ----------
    config : the configuration (stored nested in checkpoints, :meth:`HourglassConfig.to_dict`).
    """

    _kernel_caches = ("_hourglass_decoder",)  # the decoding kernel's object (tiling.modules.hourglass_step)

    def __init__(self, config: HourglassConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(config, HourglassConfig):
            raise TypeError(f"config must be a tiling.config.HourglassConfig, got {type(config).__name__}")
        if config.boundary.signal == "linear" and config.encoder.n_layers < 1:
            raise ValueError("boundary.signal='linear' reads the encoder's last layer: encoder.n_layers must be >= 1")
        self.config = config
        f = {"device": device, "dtype": dtype}
        d, dm, V = config.d_outer, config.d_main, config.vocab_size
        self.embedding = nn.Embedding(V, d, **f)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.encoder = MambaStack(config.encoder, **f)
        if config.boundary.uses_aux:
            self.aux_norm = nn.RMSNorm(d, eps=1e-5, **f)
            self.aux_head = nn.Linear(d, V, bias=False, **f)
        else:
            self.aux_norm = self.aux_head = None
        self.boundary = BoundaryRouter(config.boundary, config.tiling, d, **f)
        self.chunk = Chunk(d, pool=config.tiling.pool, **f)
        self.main_in = nn.Identity() if dm == d else nn.Linear(d, dm, bias=False, **f)
        self.main = MambaStack(config.main, **f)
        self.main_out = nn.Identity() if dm == d else nn.Linear(dm, d, bias=False, **f)
        if config.budget_conditioning:  # e(c) = (c − 1)·u + (log c)·v, rows (u, v); zero: the unconditioned model
            self.budget_main = nn.Parameter(torch.zeros(2, dm, **f))
            self.budget_outer = nn.Parameter(torch.zeros(2, d, **f))
        else:
            self.budget_main = self.budget_outer = None
        self.dechunk = Dechunk()
        self.residual = nn.Linear(d, d, bias=False, **f)
        if config.residual_init == "identity":  # the Hourglass transformer's skip: each byte's own state goes on
            nn.init.eye_(self.residual.weight)
        else:  # H-Net: the decoder starts from the main network's output
            nn.init.zeros_(self.residual.weight)
        self.decoder = MambaStack(config.decoder, **f)
        self.norm_f = nn.RMSNorm(d, eps=1e-5, **f)
        self.head = nn.Linear(d, V, bias=False, **f)
        self.head.weight = self.embedding.weight  # tied
        #: extra losses of the last training forward (aux cross-entropy, ratio loss), weighted
        self.last_output: HourglassOutput | None = None

    def extra_repr(self) -> str:
        c = self.config
        return (f"d_outer={c.d_outer}, d_main={c.d_main}, E={c.encoder.n_layers}, M={c.main.n_layers}, "
                f"D={c.decoder.n_layers}, signal={c.boundary.signal!r}, dechunk={c.dechunk!r}, "
                f"budget={c.tiling.budget}, budget_range={c.budget_range}"
                + (f", budget_skew={c.budget_skew:g}" if c.budget_skew != 1.0 else "")
                + (", budget_conditioning=True" if c.budget_conditioning else "")
                + (f", residual_init={c.residual_init!r}" if c.residual_init != "zero" else ""))

    def _told(self, x: Tensor, which: Tensor | None, budget: float) -> Tensor:
        """``x + e(c)`` with ``e(c) = (c − 1)·u + (log c)·v`` the rows of ``which`` (``config.budget_conditioning``);
        ``x`` itself without it or at ``c = 1``, where ``e`` vanishes. ``c`` is seed 001 §3.2.2's budget in
        ``R_i = f(ρ_i, d_i, c)``; feeding it to the network is our departure (the seeds only plan with it),
        for an elastic checkpoint whose stages see other statistics at other budgets."""
        if which is None or budget == 1.0:
            return x
        return x + ((budget - 1.0) * which[0] + math.log(budget) * which[1])

    # ------------------------------------------------------------------ budgets
    @property
    def budget(self) -> float:
        """The default budget (``config.tiling.budget``)."""
        return self.config.tiling.budget

    def check_budget(self, budget: float | None) -> float:
        """The budget of a call, checked (None: the default).

        Raises
        ------
        TypeError, ValueError
            Not a number in ``(0, 1]``, or below ``tiling.r_min``.
        """
        if budget is None:
            return self.budget
        if type(budget) is float and 0.0 < budget <= 1.0:  # the common case, cheaply (NaN fails it)
            return budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(f"budget must be a float in (0, 1], got {type(budget).__name__}")
        c = float(budget)
        check_in_range(c, "budget", 0.0, 1.0, low_open=True)
        return c

    def sample_budget(self, rng: random.Random | None = None) -> float:
        """A training budget: ``low + (high − low)·u^γ`` on ``budget_range`` with ``γ = budget_skew``
        (elastic; γ = 1 is uniform), else the default. The seeds choose the level of detail at run time
        (seed 001 §3.2.2's budget ``c`` in ``R_i = f(ρ_i, d_i, c)``) and say nothing of training for
        several; the per-step draw follows Hourglass (Nawrot et al. 2022), and the skew is ours: a
        step's cost grows with its budget, so under a fixed training time the uniform draw starves the
        cheap budgets of steps."""
        r = self.config.budget_range
        if r is None:
            return self.budget
        return r[0] + (r[1] - r[0]) * (rng or random).random() ** self.config.budget_skew

    def trained_for(self, budget: float) -> bool:
        """Whether ``budget`` lies in the range the model was trained for (a point without a range)."""
        r = self.config.budget_range
        return abs(budget - self.budget) < 1e-9 if r is None else r[0] - 1e-9 <= budget <= r[1] + 1e-9

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: Tensor, *, budget: float | None = None, return_output: bool = False):
        """``tokens (batch, L) → logits (batch, L, V)`` (module docstring).

        Parameters
        ----------
        tokens : (batch ≥ 1, L ≥ 1) int64 bytes in ``[0, V)``.
        budget : the main network's budget ``c ∈ (0, 1]`` (None: ``config.tiling.budget``).
        return_output : also return the :class:`HourglassOutput`.

        Returns
        -------
        logits, or ``(logits, HourglassOutput)``.

        Raises
        ------
        TypeError, ValueError
            ``tokens`` not int64 (batch, L) in range; ``budget`` not in (0, 1]; NaN/Inf produced
            inside (named at the output).
        """
        self._check_tokens(tokens)
        c = self.check_budget(budget)
        x = self.embedding(tokens)
        h, last_in = self.encoder(x)
        aux = self.aux_head(rms_norm(h, self.aux_norm.weight, self.aux_norm.eps)) if self._needs_aux(c) else None
        linear = None
        if self.config.boundary.signal == "linear" and c < 1.0:
            linear = self.encoder.layers[-1]._signal(last_in)
        routing = self.boundary(tokens, h, budget=c, aux_logits=aux, linear=linear)
        layout = routing.layout
        xc = h if layout is None else self.chunk(h, layout, validate=False)
        z, _ = self.main(self._told(self.main_in(xc), self.budget_main, c))
        z = self.main_out(z)
        conf = None
        if layout is not None:
            p_start = routing.prob.gather(1, layout.start)
            if self.config.dechunk == "ema":
                z = ema_compact(z, p_start)
            if routing.prob.requires_grad:  # the router's straight-through confidence
                conf = torch.where(routing.boundary, routing.prob, 1.0 - routing.prob)
            y = self.dechunk(z, layout, conf, validate=False)
        else:
            y = z
        y = self._told(y + self.residual(h), self.budget_outer, c)
        y, _ = self.decoder(y)
        logits = self.head(rms_norm(y, self.norm_f.weight, self.norm_f.eps))
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("the model's logits contain NaN/Inf (a weight or an activation overflowed)")
        lengths = routing.boundary.sum(1)
        out = HourglassOutput(routing=routing, aux_logits=aux, lengths=lengths, budget=c)
        self.last_output = out if self.training else None
        return (logits, out) if return_output else logits

    def _needs_aux(self, budget: float) -> bool:
        """The auxiliary head runs in training (its loss) and where the signal reads it below budget 1."""
        if self.aux_head is None:
            return False
        return self.training or (budget < 1.0 and self.config.boundary.signal in AUX_SIGNALS)

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2:
            raise ValueError(f"tokens must be an int64 tensor of shape (batch, L), got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have at least one row and one position, got shape {tuple(tokens.shape)}")
        if bool(((tokens < 0) | (tokens >= self.config.vocab_size)).any()):
            raise ValueError(f"tokens must lie in [0, {self.config.vocab_size}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def extra_loss(self, tokens: Tensor, targets: Tensor) -> Tensor | None:
        """The weighted auxiliary losses of the last training forward on ``tokens``: the aux head's
        next-byte cross-entropy (``boundary.aux_weight``) and the router's ratio loss
        (``boundary.ratio_weight``); None when there are none."""
        out, cfg, total = self.last_output, self.config.boundary, None
        if out is None:
            return None
        if out.aux_logits is not None:
            total = cfg.aux_weight * F.cross_entropy(out.aux_logits.reshape(-1, out.aux_logits.shape[-1]),
                                                     targets.reshape(-1))
        if out.routing.ratio_loss is not None:
            r = cfg.ratio_weight * out.routing.ratio_loss
            total = r if total is None else total + r
        return total

    # ------------------------------------------------------------------ decoding
    def allocate_inference_state(self, batch: int) -> HourglassState:
        """A fresh :class:`HourglassState` for ``batch`` rows."""
        batch = check_int(batch, "batch", minimum=1)
        w = self.embedding.weight
        return HourglassState(encoder=self.encoder.allocate(batch), main=self.main.allocate(batch),
                              decoder=self.decoder.allocate(batch),
                              boundary=self.boundary.allocate(batch, device=w.device),
                              chunk=self.chunk.allocate(batch, w), held=w.new_zeros(batch, self.config.d_outer),
                              batch=batch)

    @torch.no_grad()
    def step(self, tokens: Tensor, state: HourglassState, *, budget: float | None = None
             ) -> tuple[Tensor, HourglassState]:
        """One byte per row: ``tokens (batch,) → (logits (batch, V), state)``.

        The main network takes a step only at a segment start (rows that start one); elsewhere a byte
        costs the outer stages, the signal and ``O(d_outer)``. Equals :meth:`forward` position by
        position (eval mode, causal).

        Raises
        ------
        TypeError, ValueError
            ``state`` is not an :class:`HourglassState` of this batch size, ``tokens`` not (batch,)
            int64 in range, or the budget is invalid.
        """
        if not isinstance(state, HourglassState):
            raise TypeError(f"state must be an HourglassState (allocate_inference_state), got {type(state).__name__}")
        if tokens.dim() != 1 or tokens.shape[0] != state.batch:
            raise ValueError(f"tokens must have shape (batch={state.batch},) of the state, got {tuple(tokens.shape)}")
        c = self.check_budget(budget)
        for name in ("encoder", "main", "decoder"):
            getattr(self, name).check_state(getattr(state, name), state.batch)
        fast = fast_step(self, tokens, state, c) if tokens.dtype == torch.int64 else None  # one kernel call
        if fast is not None:
            return fast
        self._check_tokens(tokens.view(-1, 1))  # the kernel declines a token out of range: named here
        x = self.embedding(tokens)
        h, enc, last_in = self.encoder.step(x, state.encoder)
        aux = self.aux_head(rms_norm(h, self.aux_norm.weight, self.aux_norm.eps)) if self._needs_aux(c) else None
        linear = None
        if self.config.boundary.signal == "linear" and c < 1.0:
            linear = self.encoder.layers[-1]._signal(last_in.unsqueeze(1))[:, 0]
        starts, prob, bstate = self.boundary.step(tokens, h, state.boundary, budget=c, aux_logits=aux, linear=linear)
        rep, cstate = self.chunk.step(h, starts, state.chunk)
        held, main = state.held, state.main
        every = bool(starts.all())
        if every or bool(starts.any()):
            z, main_new, _ = self.main.step(self._told(self.main_in(rep), self.budget_main, c), state.main)
            z = self.main_out(z)
            if self.config.dechunk == "ema" and c < 1.0:
                p = prob.to(torch.float32).clamp(_P_MIN, _P_MAX).unsqueeze(-1).to(z.dtype)
                z = p * z + (1.0 - p) * held
            held = z if every else torch.where(starts.unsqueeze(-1), z, held)
            main = main_new if every else _where_state(starts, main_new, state.main)
        y = self._told(held + self.residual(h), self.budget_outer, c)
        y, dec, _ = self.decoder.step(y, state.decoder)
        logits = self.head(rms_norm(y, self.norm_f.weight, self.norm_f.eps))
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("the step's logits contain NaN/Inf")
        return logits, replace(state, encoder=enc, main=main, decoder=dec, boundary=bstate, chunk=cstate, held=held,
                               starts=starts)

    # ------------------------------------------------------------------ cost
    def cost(self, L: int, lengths: Tensor | list[int] | int, *, inference: bool = True) -> dict[str, float]:
        """Multiply-adds of one forward over rows of ``L`` bytes, per row, by part (seed 000 §3.5.1).

        Parameters
        ----------
        L : bytes per row.
        lengths : segments per row (``L_c``; an int for every row).
        inference : count the auxiliary head only when the signal reads it (True), or whenever the
            model has one (training).

        Returns
        -------
        dict: ``encoder``, ``aux_head``, ``signal``, ``chunk``, ``main_in``, ``main``, ``main_out``,
        ``ema``, ``residual``, ``decoder``, ``head`` (means over rows), ``total``, ``per_byte``, and
        ``matmul`` (the matrix-product part, what ``FlopCounterMode`` counts at 2 FLOPs each).

        Notes
        -----
        Each Mamba layer costs :func:`tiling.ops.layer_cost` at budget 1 on the tokens it runs on
        (``L`` for the outer stages, ``L_c`` for the main network); the maps ``W_in``/``W_out``
        ``d_outer·d_main`` per compact token; the pool ``d`` per byte and ``2d`` per segment; the EMA
        ``3·d_outer`` per segment; the residual ``d_outer²`` and the head ``d_outer·V`` per byte; the
        signals their arithmetic per byte (entropy/surprisal/Fisher–Rao ``≈ 3V``, linear and router
        :func:`~tiling.ops.cost.signal_cost_per_token`); with ``budget_conditioning``, ``e(c)``'s additions,
        ``d_main`` per segment and ``d_outer`` per byte where the row is shortened (at ``c = 1`` none run).
        """
        L = check_int(L, "L", minimum=1)
        cfg = self.config
        if isinstance(lengths, int):
            lengths = [lengths]
        lengths = [int(v) for v in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
        d, dm, V = cfg.d_outer, cfg.d_main, cfg.vocab_size
        parts = dict.fromkeys(("encoder", "aux_head", "signal", "chunk", "main_in", "main", "main_out", "ema",
                               "residual", "decoder", "head"), 0.0)
        mm = dict.fromkeys(parts, 0.0)

        def stage(st: StageConfig, n: int) -> tuple[int, int]:
            m = st.mamba
            c = layer_cost(n, d_model=m.d_model, d_state=m.d_state, d_inner=m.d_inner, dt_rank=m.rank,
                           d_conv=m.d_conv, signal="none")
            return st.n_layers * c["total"], st.n_layers * c["matmul"]  # norms uncounted, as in TiledLM's count

        parts["encoder"], mm["encoder"] = stage(cfg.encoder, L)
        parts["decoder"], mm["decoder"] = stage(cfg.decoder, L)
        signal = cfg.boundary.signal
        with_aux = self.aux_head is not None and (not inference or (signal in AUX_SIGNALS
                                                                     and any(Lc < L for Lc in lengths)))
        if with_aux:
            parts["aux_head"] = mm["aux_head"] = L * d * V
        parts["residual"] = mm["residual"] = L * d * d
        parts["head"] = mm["head"] = L * d * V
        rows = []
        for Lc in lengths:
            r = dict.fromkeys(("signal", "chunk", "main_in", "main", "main_out", "ema"), 0.0)
            rm = dict.fromkeys(r, 0.0)
            if Lc < L:
                if signal in ("entropy", "surprisal", "fisher_rao"):
                    r["signal"] = 3 * L * V
                elif signal == "linear":
                    m = cfg.encoder.mamba
                    k = int(self.encoder.layers[-1].signal_index.numel())  # min(signal_channels, d_inner)
                    r["signal"], rm["signal"] = (L * v for v in signal_cost_per_token(
                        "linear", d_model=m.d_model, d_state=m.d_state, dt_rank=m.rank, signal_channels=k))
                elif signal == "router":
                    rank = self.boundary.router.rank
                    r["signal"], rm["signal"] = ((L - 1) * v for v in signal_cost_per_token(
                        "token", d_model=d, d_state=1, dt_rank=1, router_rank=rank))
                r["chunk"] = (L * d + 2 * Lc * d) if cfg.tiling.pool else 0
                if cfg.dechunk == "ema":
                    r["ema"] = 3 * Lc * d
            if dm != d:
                r["main_in"] = rm["main_in"] = Lc * d * dm
                r["main_out"] = rm["main_out"] = Lc * dm * d
            if self.budget_main is not None and Lc < L:  # e(c) added at every segment and every byte
                r["main_in"] += Lc * dm
                parts["decoder"] += L * d / len(lengths)
            r["main"], rm["main"] = stage(cfg.main, Lc)
            rows.append((r, rm))
        for key in ("signal", "chunk", "main_in", "main", "main_out", "ema"):
            parts[key] = sum(r[key] for r, _ in rows) / len(rows)
            mm[key] = sum(rm[key] for _, rm in rows) / len(rows)
        total = sum(parts.values())
        return {**parts, "total": total, "per_byte": total / L, "matmul": sum(mm.values())}

    def score_forward(self, tokens: Tensor, *, budget: float | None = None) -> tuple[Tensor, dict]:
        """A forward with its cost, for :func:`tiling.train.text.score_windows`.

        Returns
        -------
        ``(logits, info)``: ``segments`` (Σ over rows of ``L_c``), ``madds`` (mean per row, without
        the head), ``head`` (per row), ``parts`` (:meth:`cost`).
        """
        logits, out = self(tokens, budget=budget, return_output=True)
        cost = self.cost(tokens.shape[1], out.lengths)
        return logits, {"segments": float(out.lengths.sum()), "madds": cost["total"] - cost["head"],
                        "head": cost["head"], "parts": cost}

    def parameter_count(self) -> int:
        """Distinct parameters (the tied head counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def main_lr_scale(self) -> float:
        """H-Net's learning-rate modulation of the main network against the outer stages.

        H-Net (Hwang, Wang, Gu 2025, "learning rate modulation") sets stage ``s``'s rate to
        ``λ^s ∝ √(f^s · D^S / D^s)``, from two heuristics: the rate grows as the square root of the
        tokens a stage sees per batch (the fraction ``f^s`` of the bytes: 1 for the outer stages,
        the budget ``c`` for the main network) and falls as the square root of its width ``D^s``.
        Normalised so that the outer stages keep the configured rate (a plain Mamba of their width
        sees every byte, as they do), the main network's rate is

        ``λ_main / λ_outer = √(c · d_outer / d_main)``

        at the configured budget ``c`` (``tiling.budget``; an elastic checkpoint's draws vary, and the
        configured budget is the one the row is named and FLOP-matched at).
        """
        c = self.config.tiling.budget
        return math.sqrt(c * self.config.d_outer / self.config.d_main)

    def param_groups(self, weight_decay: float, *, stage_lr: bool = False) -> list[dict]:
        """AdamW groups: decay on weight matrices only (not on A_log, D, norms, biases, gates).

        ``stage_lr``: the main network (its maps in and out, its layers, its budget vectors) in groups of
        their own whose ``lr_scale`` is :meth:`main_lr_scale` (the trainer multiplies the scheduled rate
        by each group's ``lr_scale``); else every group's scale is 1."""
        main = {id(p) for m in (self.main_in, self.main, self.main_out) for p in m.parameters()}
        if self.budget_main is not None:
            main.add(id(self.budget_main))
        scale = self.main_lr_scale() if stage_lr else 1.0
        groups = {(outer, decay): [] for outer in (True, False) for decay in (True, False)}
        for name, p in self.named_parameters():
            skip = getattr(p, "_no_weight_decay", False) or p.dim() < 2 or "norm" in name
            groups[(not (stage_lr and id(p) in main), not skip)].append(p)
        return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": 1.0 if outer else scale}
                for (outer, decay), ps in groups.items() if ps]


def _where_state(mask: Tensor, new: StackState, old: StackState) -> StackState:
    """Rows of ``new`` where ``mask``, of ``old`` elsewhere (the main network steps only at segment starts)."""
    m = mask.view(1, -1, 1, 1)
    return StackState(torch.where(m, new.conv, old.conv), torch.where(m, new.ssm, old.ssm))


def match_main_width(config: HourglassConfig, target_per_byte: float, *, budget: float | None = None, L: int = 1024,
                     tolerance: float = 0.05, multiple: int = 8) -> tuple[HourglassConfig, dict]:
    """The ``d_main`` whose hourglass at ``budget`` costs ``target_per_byte`` multiply-adds per byte (±tolerance).

    Parameters
    ----------
    config : the configuration whose ``main.mamba.d_model`` is chosen (the rest is kept).
    target_per_byte : the reference's multiply-adds per byte (e.g. a plain Mamba's
        ``TiledLM`` layers plus head, ``tiling.train.text.forward_madds``).
    budget : the budget the match is made at (None: ``config.tiling.budget``); the compact length is
        ``⌈c·L⌉``, the expected number of segments.
    L : bytes per row.
    tolerance : the accepted relative error.
    multiple : ``d_main`` is a multiple of this.

    Returns
    -------
    ``(config, info)``: info holds ``d_main``, ``per_byte``, ``target_per_byte``, ``relative_error``,
    ``params``.

    Raises
    ------
    ValueError
        No ``d_main ≥ d_outer`` (a multiple of ``multiple``) meets the target within ``tolerance``:
        the outer stages alone cost more, or the nearest widths miss it (names ``d_main``).
    """
    c = config.tiling.budget if budget is None else float(budget)
    check_in_range(c, "budget", 0.0, 1.0, low_open=True)
    Lc = max(1, math.ceil(c * L - 1e-9))

    def per_byte(dm: int) -> float:
        cfg = config.replace(main=StageConfig(config.main.n_layers, replace(config.main.mamba, d_model=dm)))
        return _config_cost(cfg, L, Lc), cfg

    lo = max(multiple, -(-config.d_outer // multiple) * multiple)
    if per_byte(lo)[0] > target_per_byte * (1 + tolerance):
        raise ValueError(f"d_main: even d_main = {lo} costs {per_byte(lo)[0]:.4g} multiply-adds per byte at budget {c}, "
                         f"above the target {target_per_byte:.4g} (+{tolerance:.0%}): shrink the outer stages or "
                         f"raise the budget")
    best = None
    dm = lo
    while dm <= 65536:
        pb, cfg = per_byte(dm)
        err = pb / target_per_byte - 1.0
        if best is None or abs(err) < abs(best[0]):
            best = (err, dm, pb, cfg)
        if pb > target_per_byte:
            break
        dm += multiple
    err, dm, pb, cfg = best
    if abs(err) > tolerance:
        raise ValueError(f"d_main: no width (multiple of {multiple}) matches {target_per_byte:.4g} multiply-adds per byte "
                         f"within {tolerance:.0%} at budget {c} (nearest: d_main = {dm}, {err:+.1%})")
    params = sum(p.numel() for p in {id(p): p for p in HourglassLM(cfg, device="meta").parameters()}.values())
    return cfg, {"d_main": dm, "per_byte": pb, "target_per_byte": target_per_byte, "relative_error": err,
                 "params": params, "budget": c, "L": L}


def _config_cost(config: HourglassConfig, L: int, Lc: int) -> float:
    """Multiply-adds per byte of ``config`` at ``Lc`` segments, without building the weights."""
    model = HourglassLM(config, device="meta")
    return model.cost(L, [Lc])["per_byte"]


__all__ = ["HourglassLM", "HourglassOutput", "HourglassState", "ema_compact", "match_main_width"]
