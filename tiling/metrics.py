"""Information Flow Quality (IFQ), Compute-to-Efficiency Ratio (CER), Adaptation Efficiency (AE).

Seed 000 §3.3.1 defines, for a tile ``T``,

    IFQ(T) = α·PS(T) + β·CTF(T) + γ·EU(T) + δ·ID(T)

    PS  = 1 − ‖∂_t A_t‖_F / ‖A_t‖_F              pattern stability
    CTF = Σ_{i,j} w_ij · KL(P_i ‖ P_j)            cross-tile flow
    EU  = mean(A_edge) / mean(A_total)            edge utilisation
    ID  = ‖∇s‖²₂ / dim(s)                          information density

and claims ``0 ≤ IFQ ≤ 1`` (Theorem 3.3). The literal terms are not bounded: PS < 0 when the
pattern changes by more than its norm, CTF and ID are unbounded above, EU > 1 when the edges carry
more than the average (the tests keep concrete counterexamples). This module implements the
literal definitions (``normalised=False``) and a normalised version (``normalised=True``, the
default) in which each term is mapped into ``[0, 1]`` and the weights are non-negative and sum to
one, so that ``0 ≤ IFQ ≤ 1`` holds (a convex combination of numbers in ``[0, 1]``):

* PS:  ``1 − ‖A_t − A_{t−1}‖_F / (‖A_t‖_F + ‖A_{t−1}‖_F)`` — the triangle inequality bounds
  the ratio by one; 1 when nothing changed (and for two zero patterns).
* CTF: ``Σ_j w_ij (1 − exp(−KL(P_i‖P_j))) / Σ_j w_ij`` — a weighted mean of a monotone map of
  KL from ``[0, ∞]`` onto ``[0, 1]``; 0 when no weight is given.
* EU:  ``Σ_edge |A| / Σ |A|`` — the share of the pattern's mass on the edge entries (the
  literal ratio of means times ``|edge|/|total|``); 0 for a zero pattern.
* ID:  ``x / (x + x_ref)`` with ``x = ‖∇s‖²/dim(s)`` and a reference scale ``x_ref > 0``
  (default: the median of ``x`` over the given tiles), a monotone map of ``[0, ∞)`` onto
  ``[0, 1)``.

What the symbols are here: ``A`` is the tile's implicit attention, the semiseparable matrix of the
scan restricted to the tile, ``A[d, t, s] = ∂y_{t,d}/∂u_{s,d}`` (:func:`tile_attention`, one
matrix per channel; ``|A|`` and norms run over all channels); ``∂_t`` is the change between two
observations of the same tile (e.g. consecutive evaluations during training); ``P_i`` is the
distribution of the energy of the state after tile ``i`` over the state components,
``P_i(n) ∝ Σ_d s_{i,d,n}²`` (:func:`state_distribution`); ``w`` links consecutive tiles;
``‖∇s‖²`` is the tile's mean information density ``ρ_i`` and ``dim(s)`` its state size
``d_inner·S_i``. The edge entries of a tile's ``n × n`` pattern are its first ``edge_width``
columns (tokens that take over the state from the previous tile) and its last ``edge_width`` rows
(tokens whose state goes to the next tile).

CER (seed 000 §3.4.1) ``= IFQ / (C·M·R)``, ``C`` the scan's multiply-adds relative to full
resolution (``tiling.ops.scan_cost``), ``M`` the measured memory relative to full resolution
(:func:`saved_tensor_bytes`), ``R`` the mean resolution. AE (seed 000 §3.4.2)
``= (1/T) Σ_t ΔR_t·(1 − σ(L_t))`` over the ``T`` steps of a run, ``L_t`` the load imbalance
(:func:`load_imbalance`); normalised: ``(1/T) Σ_t |ΔR_t|/(1 − r_min) · 2(1 − σ(L_t)) ∈ [0, 1]``
for ``L_t ≥ 0``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from infogeo.checks import check_in_range, check_int, check_positive, check_probability, check_tensor
from tiling.ops import adaptive_selective_scan

Tensor = torch.Tensor

DEFAULT_WEIGHTS = (0.25, 0.25, 0.25, 0.25)


# ----------------------------------------------------------------------------- patterns
def tile_attention(
    delta: Tensor, A: Tensor, B: Tensor, C: Tensor, *, resolution: float = 1.0, state_dims: int | None = None,
) -> Tensor:
    """Implicit attention of the scan on one tile: ``A[b, d, t, s] = ∂y_{t,d} / ∂u_{s,d}``.

    Parameters
    ----------
    delta : (batch, dim, n) step sizes (already softplus-ed).
    A : (dim, N).
    B, C : (batch, N, n).
    resolution : the tile's resolution.
    state_dims : the tile's active state components (default N).

    Returns
    -------
    (batch, dim, n, n), lower triangular in (t, s).

    Raises
    ------
    TypeError, ValueError
        ``delta`` is not a 3-D floating tensor, ``B``/``C`` do not have the shapes above, or the scan
        rejects the arguments (:func:`tiling.ops.adaptive_selective_scan`).

    Notes
    -----
    The selective scan is linear in ``u`` (for fixed Δ, B, C) and diagonal over channels, so its
    matrix is recovered exactly by probing with unit impulses ``u = e_s`` (all channels at once),
    using :func:`tiling.ops.adaptive_selective_scan` itself on the tile with a zero initial state
    (the pattern *restricted to the tile*), at the tile's ``resolution`` and ``state_dims``. At
    resolution 1 it is Mamba's semiseparable matrix
    ``A[d, t, s] = Σ_n C_{t,n} exp(A_{d,n} Σ_{r=s+1}^{t} Δ_{r,d}) B_{s,n} Δ_{s,d}`` (s ≤ t).
    """
    check_tensor(delta, "delta", ndim=3)
    batch, dim, n = delta.shape
    check_tensor(B, "B", shape=(batch, None, n))
    check_tensor(C, "C", shape=(batch, B.shape[1], n))
    eye = torch.eye(n, dtype=delta.dtype, device=delta.device)
    # probe s: u[b, d, :] = e_s for every channel; the probes are a batch of size batch·n
    u = eye.view(1, n, 1, n).expand(batch, n, dim, n).reshape(batch * n, dim, n)
    rep = lambda t: t.unsqueeze(1).expand(batch, n, *t.shape[1:]).reshape(batch * n, *t.shape[1:])  # noqa: E731
    y = adaptive_selective_scan(
        u, rep(delta), A, rep(B), rep(C), tile_size=n,
        resolution=float(resolution), state_dims=state_dims,
    )
    return y.view(batch, n, dim, n).permute(0, 2, 3, 1)  # [b, d, t, s]


def state_distribution(tile_states: Tensor) -> Tensor:
    """``P_i(n) ∝ Σ_d s_{i,d,n}²``: how the state after tile ``i`` spreads over its components.

    Parameters
    ----------
    tile_states : (batch, dim, n_tiles, N) as returned by the scan.

    Returns
    -------
    (batch, n_tiles, N) strictly positive rows summing to one (a 1e-12 floor keeps KL finite for
    unused components).

    Raises
    ------
    TypeError, ValueError
        ``tile_states`` is not a finite 4-D floating tensor.
    """
    check_tensor(tile_states, "tile_states", ndim=4)
    e = tile_states.pow(2).sum(1) + 1e-12
    return e / e.sum(-1, keepdim=True)


# ----------------------------------------------------------------------------- the four terms
def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (the normalised forms' value on empty input); the division
    never sees a zero, so neither the value nor the gradient gets a NaN."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)), torch.zeros_like(den))


def pattern_stability(A_t: Tensor, A_prev: Tensor, *, pattern_dims: int = 2, normalised: bool = True) -> Tensor:
    """PS of seed 000 §3.3.1.

    Literal: ``1 − ‖A_t − A_prev‖_F / ‖A_t‖_F``. Normalised:
    ``1 − ‖A_t − A_prev‖_F / (‖A_t‖_F + ‖A_prev‖_F) ∈ [0, 1]`` (1 for two zero patterns).

    Parameters
    ----------
    A_t, A_prev : the pattern now and before, same shape; one pattern is the last ``pattern_dims``
        dims, leading dims index tiles.
    pattern_dims : 2: ``(n, n)``; 3: ``(dim, n, n)``, channels pooled.
    normalised : the normalised form (default) or the literal one.

    Returns
    -------
    One value per tile (the leading dims).

    Raises
    ------
    TypeError, ValueError
        ``A_t`` has fewer than ``pattern_dims`` dims or is not finite, or ``A_prev`` has another shape.
    """
    check_tensor(A_t, "A_t", min_ndim=pattern_dims)
    check_tensor(A_prev, "A_prev", shape=tuple(A_t.shape))
    dims = tuple(range(A_t.dim() - pattern_dims, A_t.dim()))
    diff = torch.linalg.vector_norm(A_t - A_prev, dim=dims)
    now = torch.linalg.vector_norm(A_t, dim=dims)
    if not normalised:
        return 1.0 - diff / now
    den = now + torch.linalg.vector_norm(A_prev, dim=dims)
    return 1.0 - _ratio(diff, den)  # 1 for two zero patterns


def cross_tile_flow(P: Tensor, W: Tensor, *, normalised: bool = True) -> Tensor:
    """CTF per tile ``i`` (seed 000 §3.3.1).

    Literal ``Σ_j w_ij KL(P_i‖P_j)``; normalised ``Σ_j w_ij (1 − e^{−KL(P_i‖P_j)}) / Σ_j w_ij``
    (0 for a tile without weights).

    Parameters
    ----------
    P : (n_tiles, K) strictly positive probability rows.
    W : (n_tiles, n_tiles) ≥ 0.
    normalised : the normalised form (default) or the literal one.

    Returns
    -------
    (n_tiles,).

    Raises
    ------
    TypeError, ValueError
        ``P`` is not 2-D with probability rows, or ``W`` is not (n_tiles, n_tiles) and ≥ 0.
    """
    check_tensor(P, "P", ndim=2)
    check_probability(P, "P")
    check_tensor(W, "W", shape=(P.shape[0], P.shape[0]))
    check_positive(W, "W", strict=False)
    logp = P.log()
    kl = (P.unsqueeze(1) * (logp.unsqueeze(1) - logp.unsqueeze(0))).sum(-1).clamp_min(0.0)  # KL(P_i‖P_j)
    if not normalised:
        return (W * kl).sum(-1)
    tot = W.sum(-1)
    val = (W * (1.0 - torch.exp(-kl))).sum(-1)
    return _ratio(val, tot)


def _edge_mask(n: int, edge_width: int, device) -> Tensor:
    idx = torch.arange(n, device=device)
    cols = idx.view(1, n) < edge_width
    rows = idx.view(n, 1) >= n - edge_width
    return cols | rows


def edge_utilization(A: Tensor, *, edge_width: int = 1, pattern_dims: int = 2, normalised: bool = True) -> Tensor:
    """EU of seed 000 §3.3.1.

    Literal: ``mean(|A|_edge) / mean(|A|)``; normalised: ``Σ_edge |A| / Σ |A| ∈ [0, 1]``
    (0 for a zero pattern). Edge: the first ``edge_width`` columns and last ``edge_width`` rows.

    Parameters
    ----------
    A : patterns; one pattern is the last ``pattern_dims`` dims, leading dims index tiles.
    edge_width : ``1 ≤ edge_width ≤ n``.
    pattern_dims : 2: ``(n, n)``; 3: ``(dim, n, n)``, channels pooled.
    normalised : the normalised form (default) or the literal one.

    Returns
    -------
    One value per tile (the leading dims).

    Raises
    ------
    TypeError, ValueError
        ``A`` is not a finite floating tensor with at least ``max(2, pattern_dims)`` dims or is not
        square in its last two dims, or ``edge_width`` is not an int in ``[1, n]``.
    """
    check_tensor(A, "A", min_ndim=max(2, pattern_dims))
    n = A.shape[-1]
    if A.shape[-2] != n:
        raise ValueError(f"A must be square in its last two dims, got {tuple(A.shape)}")
    w = check_int(edge_width, "edge_width", minimum=1, maximum=n)
    dims = tuple(range(A.dim() - pattern_dims, A.dim()))
    mask = _edge_mask(n, w, A.device).to(A.dtype).expand_as(A)
    absA = A.abs()
    edge_sum = (absA * mask).sum(dims)
    total = absA.sum(dims)
    if normalised:
        return _ratio(edge_sum, total)
    return (edge_sum / mask.sum(dims)) / absA.mean(dims)


def information_density(grad_sq: Tensor, state_dim: Tensor | int, *, normalised: bool = True,
                        ref: float | None = None) -> Tensor:
    """ID of seed 000 §3.3.1.

    Literal ``‖∇s‖² / dim(s)``; normalised ``x / (x + x_ref)`` with ``x`` the literal value.

    Parameters
    ----------
    grad_sq : ``‖∇s‖²`` per tile, ≥ 0.
    state_dim : ``dim(s)`` > 0, a number or a tensor broadcasting with ``grad_sq``.
    normalised : the normalised form (default) or the literal one.
    ref : the positive scale ``x_ref``; default the median of ``x`` (1 if that is 0).

    Returns
    -------
    Tensor of ``grad_sq``'s shape.

    Raises
    ------
    TypeError, ValueError
        ``grad_sq`` is not a finite floating tensor or is negative; ``state_dim`` or ``ref`` is not
        positive.
    """
    check_tensor(grad_sq, "grad_sq", min_ndim=0)
    check_positive(grad_sq, "grad_sq", strict=False)
    dim_s = torch.as_tensor(state_dim, dtype=grad_sq.dtype, device=grad_sq.device)
    check_positive(dim_s, "state_dim")
    x = grad_sq / dim_s
    if not normalised:
        return x
    if ref is None:
        med = float(x.median()) if x.numel() else 1.0
        ref = med if med > 0 else 1.0
    check_positive(ref, "ref")
    return x / (x + ref)


def ifq(ps: Tensor, ctf: Tensor, eu: Tensor, id_: Tensor, *, weights: Sequence[float] = DEFAULT_WEIGHTS,
        normalised: bool = True) -> Tensor:
    """``IFQ = α·PS + β·CTF + γ·EU + δ·ID`` (seed 000 §3.3.1).

    Parameters
    ----------
    ps, ctf, eu, id_ : the four terms (broadcast together).
    weights : ``(α, β, γ, δ)``.
    normalised : the terms must lie in ``[0, 1]`` and ``weights`` be non-negative and sum to one,
        so that ``0 ≤ IFQ ≤ 1``. Literal (False): any terms and weights, no bound.

    Returns
    -------
    The broadcast tensor of IFQ values.

    Raises
    ------
    ValueError
        ``weights`` is not four numbers; normalised: a weight is negative, the weights do not sum to
        1, or a term lies outside ``[0, 1]``.
    """
    terms = torch.broadcast_tensors(*(torch.as_tensor(t) for t in (ps, ctf, eu, id_)))
    if len(weights) != 4:
        raise ValueError(f"weights must be four numbers (α, β, γ, δ), got {len(weights)}")
    w = [float(v) for v in weights]
    if normalised:
        if min(w) < 0 or abs(sum(w) - 1.0) > 1e-9:
            raise ValueError(f"weights must be non-negative and sum to 1 for the normalised IFQ, got {w}")
        for name, t in zip(("ps", "ctf", "eu", "id_"), terms):
            check_in_range(t, name, 0.0, 1.0)
    return sum(wi * t for wi, t in zip(w, terms))


# ----------------------------------------------------------------------------- CER and AE
def saved_tensor_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn()`` runs.

    Parameters
    ----------
    fn : a function of no arguments running the forward pass.

    Returns
    -------
    int, the bytes.

    Notes
    -----
    The "measured memory" of the CER: what a forward pass keeps alive for training. Storage is
    counted once per distinct (data pointer, size) pair.
    """
    seen: dict[tuple[int, int], int] = {}

    def pack(t: Tensor):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


def cer(ifq_value: Tensor | float, compute: Tensor | float, memory: Tensor | float, resolution: Tensor | float) -> Tensor:
    """``CER = IFQ / (C·M·R)`` (seed 000 §3.4.1).

    Parameters
    ----------
    ifq_value : IFQ.
    compute, memory : ``C``, ``M``, the normalised costs, > 0.
    resolution : ``R``, the mean resolution, > 0.

    Returns
    -------
    float64 tensor.

    Raises
    ------
    TypeError, ValueError
        ``compute``, ``memory`` or ``resolution`` is not a positive real number or tensor.
    """
    for name, v in (("compute", compute), ("memory", memory), ("resolution", resolution)):
        check_positive(v, name)
    return torch.as_tensor(ifq_value, dtype=torch.float64) / (
        torch.as_tensor(compute, dtype=torch.float64) * torch.as_tensor(memory, dtype=torch.float64)
        * torch.as_tensor(resolution, dtype=torch.float64))


def load_imbalance(costs: Tensor) -> Tensor:
    """``L = max(cost) / mean(cost) − 1 ≥ 0`` over workers (last dim): 0 when perfectly balanced.

    Parameters
    ----------
    costs : (..., workers) positive costs (any real dtype).

    Returns
    -------
    float64 tensor of the leading dims.

    Raises
    ------
    TypeError, ValueError
        ``costs`` is not a tensor with at least one dim, or not finite and positive.
    """
    check_tensor(costs, "costs", min_ndim=1, floating=False)
    c = costs.to(torch.float64)
    check_positive(c, "costs")
    return c.amax(-1) / c.mean(-1) - 1.0


def adaptation_efficiency(resolution: Tensor, imbalance: Tensor, *, normalised: bool = True,
                          r_min: float = 0.0625) -> Tensor:
    """AE over a run (seed 000 §3.4.2): ``(1/T) Σ_{t=1}^{T} ΔR_t (1 − σ(L_t))``.

    Parameters
    ----------
    resolution : (T+1,) the mean resolution at steps 0..T (``ΔR_t = R_t − R_{t−1}``).
    imbalance : (T,) ``L_t`` at steps 1..T.
    normalised : ``|ΔR_t|/(1 − r_min)`` and ``2(1 − σ(L_t))`` (``L_t ≥ 0`` required), so that
        ``AE ∈ [0, 1]``; False: the literal form.
    r_min : the smallest resolution of the run (normalised form).

    Returns
    -------
    0-d tensor.

    Raises
    ------
    TypeError, ValueError
        ``resolution`` is not a finite 1-D floating tensor with at least two steps, ``imbalance`` is
        not (T,); normalised: ``resolution`` outside ``[r_min, 1]`` or ``imbalance`` negative.
    """
    check_tensor(resolution, "resolution", ndim=1)
    check_tensor(imbalance, "imbalance", shape=(resolution.shape[0] - 1,))
    if resolution.shape[0] < 2:
        raise ValueError("resolution must hold at least two steps (T + 1 >= 2)")
    dR = resolution[1:] - resolution[:-1]
    if not normalised:
        return (dR * (1.0 - torch.sigmoid(imbalance))).mean()
    check_in_range(resolution, "resolution", r_min, 1.0)
    check_positive(imbalance, "imbalance", strict=False)
    scale = (1.0 - r_min) if r_min < 1.0 else 1.0
    return (dR.abs() / scale * 2.0 * (1.0 - torch.sigmoid(imbalance))).mean()


# ----------------------------------------------------------------------------- layer convenience
@torch.no_grad()
def layer_tile_metrics(layer, x: Tensor, *, previous: Tensor | None = None, weights: Sequence[float] = DEFAULT_WEIGHTS,
                       edge_width: int = 1, budget: float | None = None) -> dict:
    """Normalised IFQ terms of every tile of a layer on one sequence, plus the CER of the whole call.

    Parameters
    ----------
    layer : a :class:`~tiling.modules.TiledMamba` of the scan scope.
    x : (1, L, d_model).
    previous : the ``"patterns"`` entry of an earlier call on the same ``x`` (e.g. the last
        evaluation) for PS; without it PS is 1 (no change observed).
    weights : the IFQ weights (:func:`ifq`).
    edge_width : :func:`edge_utilization`'s edge width.
    budget : the layer's budget for this call (None: its own).

    Returns
    -------
    dict with per-tile tensors ``ps, ctf, eu, id, ifq``, ``patterns`` (n_tiles, d_inner, T, T; the
    last tile padded with zeros), ``cer``, ``compute``, ``memory``, ``resolution``, and the ``plan``.

    Raises
    ------
    ValueError
        ``x`` does not hold one sequence (1, L, d_model), or the layer's scope is not ``"scan"``.
    TypeError
        ``x`` is not a floating tensor.
    """
    import torch.nn.functional as F

    check_tensor(x, "x", ndim=3)
    if x.shape[0] != 1:
        raise ValueError(f"x must hold one sequence, shape (1, L, d_model), got {tuple(x.shape)}")
    if getattr(layer, "scope", "scan") != "scan":
        raise ValueError(f"layer_tile_metrics measures the tiles of the scan scope (each tile's scan attention); "
                         f"got a layer with scope={layer.scope!r}")
    plan = layer.plan(x, budget=budget)
    u, z, dt_raw, B, C = layer._project(x)
    delta = F.softplus(dt_raw + layer.dt_proj.bias[:, None])
    A = -torch.exp(layer.A_log.float())
    T = layer.tile_size
    pats = []
    for i in range(plan.n_tiles):
        s, n = int(plan.start[i]), int(plan.length[i])
        a = tile_attention(delta[..., s:s + n], A, B[..., s:s + n], C[..., s:s + n],
                           resolution=float(plan.resolution[0, i]), state_dims=int(plan.state_dims[0, i]))[0]
        pats.append(F.pad(a, (0, T - n, 0, T - n)))
    patterns = torch.stack(pats)  # (n_tiles, d_inner, T, T)
    ps = pattern_stability(patterns, previous, pattern_dims=3) if previous is not None else torch.ones(plan.n_tiles, dtype=patterns.dtype)
    R = plan.resolution.to(device=x.device)
    _, _, tile_states = adaptive_selective_scan(
        u, dt_raw, A, B, C, layer.D, z, delta_bias=layer.dt_proj.bias, delta_softplus=True, tile_size=T,
        resolution=R, state_dims=plan.state_dims.to(x.device), return_tile_states=True)
    P = state_distribution(tile_states.double())[0]
    n_t = plan.n_tiles
    W = torch.zeros(n_t, n_t, dtype=torch.float64)
    if n_t > 1:
        W[torch.arange(n_t - 1), torch.arange(1, n_t)] = 1.0
    ctf = cross_tile_flow(P, W)
    eu = edge_utilization(patterns, edge_width=edge_width, pattern_dims=3)
    id_ = information_density(plan.density[0].double(), plan.state_dims[0].double() * layer.d_inner)
    q = ifq(ps.double(), ctf, eu.double(), id_, weights=weights)
    full = layer.plan(x, budget=1.0)
    compute = float(plan.total_cost()[0]) / float(full.total_cost()[0])
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        mem = saved_tensor_bytes(lambda: layer(xg, budget=budget))
        mem_full = saved_tensor_bytes(lambda: layer(xg, budget=1.0))
    memory = mem / mem_full
    r_mean = float(plan.mean_resolution()[0])
    return {
        "ps": ps, "ctf": ctf, "eu": eu, "id": id_, "ifq": q, "patterns": patterns, "plan": plan,
        "compute": compute, "memory": memory, "resolution": r_mean,
        "cer": float(cer(q.mean(), compute, memory, r_mean)),
    }


__all__ = [
    "tile_attention", "state_distribution", "pattern_stability", "cross_tile_flow", "edge_utilization",
    "information_density", "ifq", "saved_tensor_bytes", "cer", "load_imbalance", "adaptation_efficiency",
    "layer_tile_metrics", "DEFAULT_WEIGHTS",
]
