"""Resolution and state-dimension policies: information density → tile configuration.

Seed 001 §3.2.2 asks for ``R_i = f(ρ_i, d_i, c_i)``: the resolution of tile ``i`` as a function of
its information density ``ρ_i``, its temporal distance ``d_i`` to the current position and the
compute budget ``c``, "analogous to geometric Level of Detail systems". Seed 001 §3.4 step 3 sets
the state dimension ``S_i = max(min(kρ_i, S_max), S_min)``; seed 000 §3.6 / seed 001 §3.6 name the
special cases this module also provides for comparison: a constant field ``R = c`` ("linear
attention", ``mode="uniform"``) and a binary field ``R ∈ {R_min, 1}`` ("sparse attention",
``mode="binary"``).

The level-of-detail map
-----------------------
Every mode starts from an *importance* per tile (:func:`tile_importance`)::

    q_i = ρ_i^γ · exp(−η κ_i) / (1 + d_i / d_0)

(``γ`` = ``exponent``, ``κ_i`` an optional curvature with weight ``η``, ``d_i`` the number of
tiles between tile ``i`` and the last tile, ``d_0`` = ``distance_scale``), and assigns

    R_i = clip(s · q_i, r_min, 1),

monotone non-decreasing in ``ρ_i`` and in closeness to the current position, with one scale
``s`` chosen to meet the budget.

Causality
---------
The adaptive scan cuts tile ``i`` into ``⌈R_i n_i⌉`` segments, and that segmentation changes the
outputs of every token of tile ``i`` (even the first one: at full resolution it reads the state
that includes itself, at coarse resolution the state before the tile). If ``R_i`` were computed
from the tokens of tile ``i`` (or later ones), the output at position ``t`` would depend on tokens
after ``t``: a language model would see the future. In the default causal mode ``R_i`` therefore
depends only on tiles ``j < i``:

* the density of tile ``i`` is *predicted* by the recent past,
  ``p_i = max_{i−w ≤ j < i} q_j`` (``w`` = ``lookback``; temporal coherence of density, the
  level-of-detail habit of using the last frame's importance);
* the scale ``s_i`` is calibrated on the history: it solves
  ``mean_{1≤j≤i} clip(s_i p_j, r_min, 1) = c`` (a bisection over predictors already known at tile
  ``i``), so that the resolutions follow the density *distribution* seen so far;
* a budget controller keeps the running surplus ``b_i = Σ_{j<i} (c − R_j)`` inside
  ``[−D, D]`` (``D`` = ``slack``, in tiles) by clamping ``R_i`` to ``[c + b_i − D, c + b_i + D]``.
  Hence ``|mean_i R_i − c| ≤ D / n_tiles`` for every sequence: the budget is met on average,
  with savings from quiet stretches spent on busy ones. The interval always meets
  ``[r_min, 1]`` because ``r_min ≤ c ≤ 1``. Inside it, an integral feedback multiplies the
  calibrated value by ``exp(b_i / D)`` (adaptive mode), so that a non-stationary history (a
  burst that inflates the calibration) does not leave the budget unspent.

Every factor of ``R_i`` (history, surplus, predictor) depends on tiles ``< i`` only, and for a
fixed history ``R_i`` is non-decreasing in the predictor ``p_i``.

Two refinements address what the history calibration gets wrong on bursty sequences (measured in
docs/benchmarks.md, training run 3): while the history is short a burst is a large share of it,
so the calibration pushes the burst's own tiles below 1, and filler seen before any burst gets
``c`` itself (nothing is saved for later).

* ``predictor_density``: the density from which tile ``i`` is predicted need not be tile
  ``i − 1``'s mean. :func:`tile_tail_density` gives the mean (or maximum) over the *last* tokens
  of each tile, the part nearest to tile ``i`` (the level-of-detail habit taken one step further:
  the most recent frame). A burst that starts in the middle of tile ``i − 1`` then raises ``p_i`` fully
  instead of in proportion to its share of the tile, and a burst that ends early in tile
  ``i − 1`` no longer spends a full-resolution tile on the filler after it.
* ``reference``: a population sample of predictor importances (in the layer: running quantiles
  over training batches, :class:`~tiling.modules.TiledMamba` ``calibration="running"``). The
  scale then solves ``mean_k clip(s·r_k, r_min, 1) = c`` over the reference instead of over the
  history, ``R_i = clip(s p_i, r_min, 1)``: a fixed level-of-detail map for the whole sequence,
  so filler is coarse from the first tile and a burst gets full resolution wherever it falls.
  The budget is met on average over the population the reference describes; the controller's
  clamp (without the integral feedback, which would spend the savings on filler) still bounds
  every sequence, ``|mean_i R_i − c| ≤ D / n_tiles``. The reference holds no information about
  the current sequence, so causality is unchanged. The binary mode ignores the reference and
  keeps its history quantile: its threshold, the reference's ``1 − (c − r_min)/(1 − r_min)``
  quantile, falls inside the atom of near-identical filler tiles, so the slight drift of a
  running reference behind the weights flips all of them to ``R = 1`` (measured: mean ``R`` 0.37
  and 40 % accuracy at ``c = 0.25``, docs/benchmarks.md run 5), while the continuous map
  ``s·p`` moves by as little as the drift.

Tile 0 has no history and gets ``R_0 = c`` (binary: the value nearer to ``c``, then the
controller). The distance term ``d_i`` (distance to the *end* of the sequence) is only defined in
the non-causal mode: in a causal model the current position of every tile is the tile itself.

The non-causal mode (``causal=False``: encoders, analysis) uses the tile's own importance and
meets the budget exactly per sequence, ``mean_i R_i = c`` (to the bisection tolerance; the scan
realises ``⌈R_i n_i⌉`` segments, so the realised mean exceeds ``c`` by less than one segment per
tile), by bisection on ``log s``.

Where the code lives: the per-tile statistics and closed-form maps (tile means, tail densities,
importance, causal predictor, state dimensions) are :mod:`tiling.tile_stats`, re-exported here; this
module holds the resolution map, its causal controller, the error-diffused segment counts and the
plans (:func:`plan_tiles`, :func:`block_counts`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from infogeo.checks import check_int, check_positive, check_tensor
from tiling.config import TilingConfig
from tiling.ops.cost import segment_counts, tile_lengths
from tiling.ops.scan import policy_kernels
from tiling.tile import TilePlan
# the per-tile statistics and maps (re-exported: they are the policy's first steps)
from tiling.tile_stats import _importance, _tile_mean, _tile_tail, causal_predictor, state_dims_policy, tile_density, \
    tile_importance, tile_mean, tile_tail_density

Tensor = torch.Tensor

_BISECTION_STEPS = 50


def _bisect_scale(q: Tensor, mask: Tensor, budget: float, r_min: float) -> Tensor:
    """Scale ``s`` with ``Σ_j mask_j clip(s q_j, r_min, 1) = budget · Σ_j mask_j`` along the last dim.

    ``q``: (..., n) positive float64, ``mask``: (..., n) float64 0/1 with at least one 1. The
    map ``s ↦ mean clip(s q, r_min, 1)`` is continuous and non-decreasing, equal to ``r_min`` at
    ``s = r_min / max q`` and to 1 at ``s = 1 / min q``; bisection on ``log s`` between them.
    """
    ext = policy_kernels()
    if ext is not None:  # the C++ loop (the same steps); one float64 row per scale
        n = q.shape[-1]
        flat = lambda t: t.detach().to(device="cpu", dtype=torch.float64).reshape(-1, n).contiguous()  # noqa: E731
        s = ext.bisect_scale(flat(q), flat(mask), float(budget), float(r_min))
        return s.view(q.shape[:-1]).to(device=q.device, dtype=q.dtype)
    # the reference, numpy on the host: the arrays are (batch, n_tiles[, n_tiles]) and the 50 steps
    # are dominated by per-operation overhead, about 5x lower in numpy than in torch
    qn = q.detach().cpu().numpy()
    mn = mask.detach().cpu().numpy() > 0
    big = np.where(mn, qn, -np.inf).max(-1)
    small = np.where(mn, qn, np.inf).min(-1)
    lo = math.log(r_min) - np.log(big)
    hi = -np.log(small)
    count = mn.sum(-1)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        mean = np.where(mn, np.minimum(np.maximum(np.exp(mid)[..., None] * qn, r_min), 1.0), 0.0).sum(-1) / count
        above = mean > budget
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return torch.from_numpy(np.asarray(np.exp(0.5 * (lo + hi)))).to(device=q.device, dtype=q.dtype)


def _binary_count(n: int, budget: float, r_min: float) -> int:
    """Tiles at full resolution so that ``(k + (n − k) r_min)/n ≤ c`` with the largest such ``k``."""
    if r_min >= 1.0:
        return n
    return min(n, int(math.floor(n * (budget - r_min) / (1.0 - r_min) + 1e-9)))


#: the keyword options of the deprecated form of :func:`resolution_policy` (``mode`` is ``policy``)
_KEYWORD_OPTIONS = ("budget", "r_min", "mode", "causal", "curvature_weight", "distance_scale", "exponent",
                    "lookback", "slack")


def _keyword_config(options: dict) -> TilingConfig:
    """The :class:`TilingConfig` of the deprecated keyword form of :func:`resolution_policy`."""
    unknown = sorted(set(options) - set(_KEYWORD_OPTIONS))
    if unknown:
        raise TypeError(f"resolution_policy() got unexpected keyword arguments {unknown}")
    if "budget" not in options:
        raise TypeError("resolution_policy() needs a TilingConfig (or, deprecated, the keyword budget=)")
    warnings.warn("resolution_policy(tile_density, budget=..., mode=..., ...) is deprecated: pass a "
                  "tiling.config.TilingConfig, resolution_policy(tile_density, TilingConfig(budget=..., "
                  "policy=...)); the keyword form will be removed in the next release",
                  DeprecationWarning, stacklevel=3)
    options = dict(options)
    return TilingConfig(policy=options.pop("mode", "adaptive"), **options)


def resolution_policy(
    tile_density: Tensor,
    config: TilingConfig | None = None,
    *,
    curvature: Tensor | None = None,
    predictor_density: Tensor | None = None,
    reference: Tensor | None = None,
    **options,
) -> Tensor:
    """Resolution per tile, ``R_i = f(ρ_i, d_i, c) ∈ [r_min, 1]`` (seed 001 §3.2.2, seed 000 §3.6).

    Parameters
    ----------
    tile_density : (batch, n_tiles) non-negative tile densities (:func:`tile_density`).
    config : the options, checked once by :class:`~tiling.config.TilingConfig`; this function reads
        ``budget`` (target mean resolution ``c``), ``r_min``, ``policy`` (``"adaptive"``: the
        level-of-detail map of the module docstring; ``"uniform"``: ``R_i = c``, seed 000 §3.6
        "linear attention"; ``"binary"``: ``R_i ∈ {r_min, 1}``, "sparse attention", the most
        important tiles at 1), ``causal``, ``exponent``, ``curvature_weight``, ``distance_scale``
        (:func:`tile_importance`), ``lookback`` (:func:`causal_predictor`) and ``slack`` (the
        causal controller's bound ``D``). With ``causal`` ``R_i`` depends only on tiles ``< i`` and
        the budget is met on average (``|mean R − c| ≤ slack / n_tiles`` per sequence); without,
        ``R_i`` uses tile ``i``'s own density and the budget is met exactly per sequence
        (adaptive: to the bisection tolerance; binary: ``⌊n (c − r_min)/(1 − r_min)⌋`` tiles at 1,
        i.e. within one tile).
    curvature : (batch, n_tiles) per-tile curvature ``κ_i`` (:func:`tile_importance`).
    predictor_density : causal mode: (batch, n_tiles) per-tile density from which the *next*
        tile is predicted (default ``tile_density``; e.g. :func:`tile_tail_density`). Its
        importance (same exponent and curvature) replaces ``q_j`` in ``p_i = max_{i−w≤j<i} q_j``.
    reference : causal adaptive mode: 1-D positive sample of predictor importances ``p`` from
        the population (e.g. running quantiles over training batches). Calibrates the scale on it
        instead of on the sequence's own history; see the module docstring. Ignored by the
        non-causal, uniform and binary modes.
    **options : deprecated (removed in the next release, with a ``DeprecationWarning``): the
        former keyword options ``budget, r_min, mode, causal, curvature_weight, distance_scale,
        exponent, lookback, slack`` instead of ``config`` (``mode`` is the config's ``policy``).

    Returns
    -------
    (batch, n_tiles) tensor of ``tile_density``'s dtype and device, deterministic, computed
    independently for each batch row.

    Raises
    ------
    TypeError
        ``config`` is not a :class:`~tiling.config.TilingConfig` (or is given together with the
        keyword options), an unknown keyword option is given, or the keyword form lacks
        ``budget``; a tensor argument is not a floating tensor.
    ValueError
        ``tile_density`` is not 2-D, not finite or negative; ``curvature`` or
        ``predictor_density`` does not have ``tile_density``'s shape (or is not finite, or
        negative); ``reference`` is not a non-empty 1-D tensor of positive values; a keyword
        option is out of range (:class:`~tiling.config.TilingConfig`).

    Warns
    -----
    DeprecationWarning
        The keyword options are given instead of ``config``.

    Notes
    -----
    Why a config rather than keywords: the layer, :func:`plan_tiles` and the analysis job pass the
    same options, which are then written and checked in one place (``TilingConfig``) instead of
    once per caller, and a new option reaches every caller without a new parameter here.
    """
    if options:
        if config is not None:
            raise TypeError("resolution_policy() takes a TilingConfig or the deprecated keyword options, not both")
        config = _keyword_config(options)
    elif not isinstance(config, TilingConfig):
        raise TypeError(f"config must be a tiling.config.TilingConfig, got {type(config).__name__}")
    check_tensor(tile_density, "tile_density", ndim=2)
    if bool((tile_density < 0).any()):
        raise ValueError(f"tile_density must be non-negative, got min {float(tile_density.min()):.6g}")
    batch, n = tile_density.shape
    if config.policy == "uniform" or config.budget >= 1.0:
        return torch.full((batch, n), float(config.budget), dtype=tile_density.dtype, device=tile_density.device)
    _check_policy_inputs(config, (batch, n), curvature, predictor_density, reference)
    return _resolution(tile_density, config, curvature=curvature, predictor_density=predictor_density,
                       reference=reference)


def _check_policy_inputs(config: TilingConfig, shape: tuple[int, int], curvature: Tensor | None,
                         predictor_density: Tensor | None, reference: Tensor | None) -> None:
    """The checks of :func:`resolution_policy` on its optional tensors and importance options."""
    if curvature is not None:
        check_tensor(curvature, "curvature", shape=shape)
    check_positive(config.exponent, "exponent")
    check_positive(config.curvature_weight, "curvature_weight", strict=False)
    if config.distance_scale is not None:
        check_positive(config.distance_scale, "distance_scale")
    if predictor_density is not None:
        check_tensor(predictor_density, "predictor_density", shape=shape)
        if bool((predictor_density < 0).any()):
            raise ValueError(f"predictor_density must be non-negative, got min {float(predictor_density.min()):.6g}")
    if reference is not None:
        check_tensor(reference, "reference", ndim=1)
        if reference.numel() < 1 or bool((reference <= 0).any()):
            raise ValueError(f"reference must be a non-empty 1-D tensor of positive importances, got "
                             f"{reference.numel()} values")


def _resolution(tile_density: Tensor, config: TilingConfig, *, curvature: Tensor | None = None,
                predictor_density: Tensor | None = None, reference: Tensor | None = None) -> Tensor:
    """:func:`resolution_policy` on checked arguments (the layer checks once, at its boundary)."""
    budget, r_min, mode, causal = config.budget, config.r_min, config.policy, config.causal
    batch, n = tile_density.shape
    out_dtype, device = tile_density.dtype, tile_density.device
    if mode == "uniform" or budget >= 1.0:
        return torch.full((batch, n), float(budget), dtype=out_dtype, device=device)
    q = _importance(tile_density, config.exponent, curvature, config.curvature_weight, config.distance_scale)
    if not causal:
        if mode == "adaptive":
            s = _bisect_scale(q, torch.ones_like(q), budget, r_min)
            R = torch.clamp(s.unsqueeze(-1) * q, r_min, 1.0)
        else:
            k = _binary_count(n, budget, r_min)
            # stable descending sort: ties go to the earlier tile, so the result is deterministic
            order = torch.sort(q, dim=-1, descending=True, stable=True).indices
            R = torch.full_like(q, r_min)
            R.scatter_(-1, order[:, :k], 1.0)
        return R.to(out_dtype)
    if predictor_density is not None:
        q = _importance(predictor_density, config.exponent, curvature, config.curvature_weight, None)
    ref = None if reference is None else reference.detach().to(device=q.device, dtype=torch.float64)
    return _causal_resolution(q, budget=budget, r_min=r_min, mode=mode, lookback=config.lookback,
                              slack=config.slack, reference=ref).to(out_dtype)


def _causal_resolution(q: Tensor, *, budget: float, r_min: float, mode: str, lookback: int, slack: float,
                       reference: Tensor | None = None) -> Tensor:
    """The causal controller of the module docstring on float64 importances ``q`` (batch, n)
    (``q_j``: importance of the density that predicts tile ``j + 1``).

    With the compiled kernel the whole of it is one C++ loop (``causal_resolution``: the same
    operations; tested against this torch/numpy reference, which runs without a kernel)."""
    ext = policy_kernels()
    if ext is not None:
        return causal_step(q, budget=budget, r_min=r_min, mode=mode, lookback=lookback, slack=slack,
                           reference=reference, first_tile=0, ext=ext)[0]
    batch, n = q.shape
    p = causal_predictor(q, lookback)
    if reference is not None and mode == "adaptive":
        s = _bisect_scale(reference, torch.ones_like(reference), budget, r_min)
        desired = torch.clamp(s * p, r_min, 1.0)
        desired[:, 0] = budget
        return _controlled(desired, budget=budget, r_min=r_min, mode=mode, slack=slack, feedback=False)
    # history of tile i: predictors p_j with 1 <= j <= i (all known before tile i starts)
    idx = torch.arange(n, device=q.device)
    hist = ((idx.view(1, n) <= idx.view(n, 1)) & (idx.view(1, n) >= 1)).to(torch.float64)
    pj = torch.nan_to_num(p, nan=1.0).unsqueeze(1).expand(batch, n, n)
    mask = hist.unsqueeze(0).expand(batch, n, n).clone()
    mask[:, 0, 0] = 1.0  # tile 0 has no history: a dummy entry; its value is replaced below
    if mode == "adaptive":
        s = _bisect_scale(pj, mask, budget, r_min)
        desired = torch.clamp(s * torch.nan_to_num(p, nan=1.0), r_min, 1.0)
        desired[:, 0] = budget
    else:
        frac = (budget - r_min) / (1.0 - r_min)
        # mid-rank quantile of p_i among its history: the top `frac` of tiles go to full resolution
        greater = ((pj > p.unsqueeze(-1)).to(torch.float64) * hist).sum(-1)
        equal = ((pj == p.unsqueeze(-1)).to(torch.float64) * hist).sum(-1)
        top = (greater + 0.5 * equal) < frac * hist.sum(-1).clamp_min(1.0)
        desired = torch.where(top, torch.ones_like(q), torch.full_like(q, r_min))
        desired[:, 0] = 1.0 if frac > 0.5 else r_min
    return _controlled(desired, budget=budget, r_min=r_min, mode=mode, slack=slack, feedback=mode == "adaptive")


def causal_step(q: Tensor, *, budget: float, r_min: float, mode: str, lookback: int, slack: float,
                reference: Tensor | None = None, first_tile: int = 0, surplus: Tensor | None = None, ext=None
                ) -> tuple[Tensor, Tensor]:
    """The causal policy's resolutions of the tiles ``first_tile …`` given the importances of every
    tile before them: the plan of a whole sequence (``first_tile = 0``) or a decoding step's tile.

    Parameters
    ----------
    q : (batch, n) float64 importances ``q_j`` of the predictor's densities of tiles ``0 … n − 1``
        (column ``n − 1`` may be a placeholder: tile ``i`` reads ``q_j``, ``j < i``, only).
    budget, r_min, mode, lookback, slack : the policy's options (:class:`~tiling.config.TilingConfig`).
    reference : the running reference, or None (calibration on the history).
    first_tile : the first tile whose resolution is wanted.
    surplus : (batch,) float64, the controller's surplus entering ``first_tile`` (default 0, which is
        the surplus entering tile 0).
    ext : the compiled kernels (default :func:`~tiling.ops.scan.policy_kernels`).

    Returns
    -------
    ``(R, surplus)``: ``R`` (batch, n − first_tile) float64 on ``q``'s device, and the surplus after
    tile ``n − 1`` (on the CPU). Equal, column by column, to :func:`_causal_resolution` of all ``n``
    tiles (the decoding step relies on it: tested).
    """
    batch, n = q.shape
    s0 = torch.zeros(batch, dtype=torch.float64) if surplus is None else surplus.to("cpu", torch.float64)
    ext = policy_kernels() if ext is None else ext
    if ext is None:  # the reference: every tile from the start, surplus recomputed from the resolutions
        R = _causal_resolution(q, budget=budget, r_min=r_min, mode=mode, lookback=lookback, slack=slack,
                               reference=reference)
        Rc, s1 = R.detach().cpu(), torch.zeros(batch, dtype=torch.float64)
        for j in range(n):  # the controller's own accumulation, in its order
            s1 = s1 + budget - Rc[:, j]
        return R[:, first_tile:], s1
    ref = torch.empty(0, dtype=torch.float64) if reference is None or mode != "adaptive" else \
        reference.detach().to("cpu", torch.float64).contiguous()
    R, s1 = ext.causal_resolution(q.detach().to("cpu", torch.float64).contiguous(), float(budget), float(r_min),
                                  mode == "adaptive", int(lookback), float(slack), ref, int(first_tile),
                                  s0.contiguous())
    return R.to(device=q.device), s1


def _controlled(desired: Tensor, *, budget: float, r_min: float, mode: str, slack: float, feedback: bool,
                surplus: Tensor | None = None, first: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """Budget controller: the running surplus ``b_i = Σ_{j<i} (c − R_j)`` kept in ``[−D, D]``.

    ``surplus`` (batch,) float64: the surplus entering column 0 (a decoding step's state; then
    ``(R, surplus after the last column)`` is returned); ``first``: column 0 is the sequence's first
    tile (no integral feedback there)."""
    batch, n = desired.shape
    s0 = torch.zeros(batch, dtype=torch.float64) if surplus is None else surplus.detach().to("cpu", torch.float64)
    ext = policy_kernels()
    if ext is not None:  # the C++ loop: the same operations in the same order
        d = desired.detach().to(device="cpu", dtype=torch.float64).contiguous()
        R, s1 = ext.budget_controller(d, float(budget), float(r_min), mode == "adaptive", float(slack), bool(feedback),
                                      s0.contiguous(), bool(first))
        R = R.to(device=desired.device, dtype=desired.dtype)
        return R if surplus is None else (R, s1)
    d = desired.detach().cpu().numpy().astype(np.float64)  # numpy: a sequential loop of tiny steps
    R = np.empty_like(d)
    surplus_in = surplus
    surplus = s0.numpy().copy()
    for i in range(n):
        lo = budget + surplus - slack
        hi = budget + surplus + slack
        if mode == "adaptive":
            # integral feedback: a surplus raises the scale, a deficit lowers it (past tiles only)
            want = np.minimum(np.maximum(d[:, i] * np.exp(surplus / slack), r_min), 1.0) \
                if feedback and (i > 0 or not first) else d[:, i]
            r = np.minimum(np.maximum(np.minimum(np.maximum(want, lo), hi), r_min), 1.0)
        else:
            want = d[:, i]
            r = np.where(want > hi, r_min, want)
            r = np.where(r < lo, 1.0, r)
        R[:, i] = r
        surplus = surplus + budget - r
    R = torch.from_numpy(R).to(device=desired.device, dtype=desired.dtype)
    return R if surplus_in is None else (R, torch.from_numpy(surplus))


def dithered_counts(resolution: Tensor, tile_size: int, carry: Tensor | None = None, *,
                    validate: bool = True) -> tuple[Tensor, Tensor]:
    """Segments per tile with error diffusion.

    ``m_i = clamp(⌊R_i·T + e_{i−1} + ½⌋, 1, T)``, ``e_i = R_i·T + e_{i−1} − m_i``, ``e_{−1}`` =
    ``carry`` (default 0).

    Parameters
    ----------
    resolution : (batch, n_tiles) resolutions ``R_i``.
    tile_size : tile length ``T``.
    carry : (batch,) rounding error carried in from an earlier call, optional (default 0).
    validate : check the arguments (False: the caller's are checked, e.g. a decoding step's).

    Returns
    -------
    ``(m, carry)``: ``m`` (batch, n_tiles) int64 on the CPU, and ``carry`` (batch,) float64, the
    error ``e`` after the last tile.

    Raises
    ------
    TypeError
        ``resolution`` is not a floating tensor or ``tile_size`` not an int.
    ValueError
        ``resolution`` is not 2-D or not finite, or ``tile_size < 1``.

    Notes
    -----
    Departure from the scan scope's ``m_i = ⌈R_i·n_i⌉`` (``docs/tiling.md``, "Segments"): rounding
    every tile up spends up to one segment per tile more than the budget (+6 % at ``T = 16``,
    ``c = 0.35``); carrying the rounding error to the next tile keeps ``|Σ_i m_i − T·Σ_i R_i| ≤ ½``
    while no tile is clamped, so the mixer's tokens match the budget. ``m_i`` depends on ``R_j``,
    ``j ≤ i``, only (causal), and ``R ≡ 1`` gives ``m ≡ T``.
    """
    if validate:
        check_tensor(resolution, "resolution", ndim=2)
        tile_size = check_int(tile_size, "tile_size", minimum=1)
    return _dither(resolution, tile_size, carry)


def _dither(resolution: Tensor, T: int, carry: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`dithered_counts` without its checks (the C++ loop, or the numpy reference)."""
    ext = policy_kernels()
    if ext is not None:
        R = resolution.detach().to(device="cpu", dtype=torch.float64).contiguous()
        e = torch.zeros(R.shape[0], dtype=torch.float64) if carry is None else \
            carry.detach().to(device="cpu", dtype=torch.float64).contiguous()
        return tuple(ext.dither_counts(R, T, e))
    R = resolution.detach().cpu().numpy().astype(np.float64)
    e = np.zeros(R.shape[0]) if carry is None else carry.detach().cpu().numpy().astype(np.float64).copy()
    m = np.empty(R.shape, dtype=np.int64)
    for i in range(R.shape[1]):  # numpy: a sequential loop over tiles of tiny vector steps
        want = R[:, i] * T + e
        m[:, i] = np.clip(np.floor(want + 0.5), 1, T)
        e = want - m[:, i]
    return torch.from_numpy(m), torch.from_numpy(e)


def plan_densities(density: Tensor, config: TilingConfig, *, validate: bool = True) -> tuple[Tensor, Tensor]:
    """Tile densities and the causal predictor's densities of a per-token density.

    Parameters
    ----------
    density : (batch, L) per-token density.
    config : the tiling options (``tile_size``, ``predictor_tail``, ``predictor_reduce``).
    validate : check ``density`` (False: the caller's is checked, e.g. a decoding step's signal).

    Returns
    -------
    ``(rho_tile, predictor)``, both float64 (batch, n_tiles): the tile densities ``ρ_i``
    (seed 001 §3.4 step 1) and the causal predictor's densities (:func:`tile_tail_density` of
    ``config.predictor_tail`` tokens, or ``ρ_i`` itself).

    Raises
    ------
    TypeError, ValueError
        ``density`` is invalid (:func:`tile_density`, :func:`tile_tail_density`).
    """
    rho = density.to(torch.float64)
    T, tail = config.tile_size, config.predictor_tail
    rho_tile = tile_density(rho, T) if validate else _tile_mean(rho, T)
    if tail is None:
        return rho_tile, rho_tile
    if not validate:
        return rho_tile, _tile_tail(rho, T, tail, config.predictor_reduce)
    return rho_tile, tile_tail_density(rho, T, tail, config.predictor_reduce)


def tile_policy(rho_tile: Tensor, predictor_density: Tensor, config: TilingConfig, *,
                curvature: Tensor | None = None, reference: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Resolution and state dimensions of tiles from their densities.

    Parameters
    ----------
    rho_tile : (batch, n_tiles) tile densities ``ρ_i``.
    predictor_density : (batch, n_tiles) densities of the causal predictor (ignored when not causal).
    config : the tiling options.
    curvature : (batch, n_tiles) per-tile curvature, optional.
    reference : the running reference of predictor importances, optional.

    Returns
    -------
    ``(R, S)``: ``R`` float32 (batch, n_tiles) is :func:`resolution_policy` (seed 001 §3.2.2) of
    ``rho_tile`` with the causal predictor ``predictor_density``, the per-tile ``curvature`` and the
    running ``reference``. ``S`` int64 is the state-dimension policy
    ``S_i = max(min(⌈kρ_i⌉, S_max), S_min)`` (seed 001 §3.4 step 3, :func:`state_dims_policy`) on
    the causal predictor ``max_{i−w≤j<i} ρ_j`` (tile 0, without history: ``S_max``) or, not
    causal, on ``ρ_i``; None when ``config.state_k`` is None (every tile at the full state).

    Raises
    ------
    ValueError
        ``config.state_k`` is set without ``config.s_max``; or invalid densities (:func:`resolution_policy`).

    Notes
    -----
    Runs without gradient: the policy is piecewise constant in its inputs.
    """
    with torch.no_grad():
        R = resolution_policy(rho_tile, config, curvature=curvature,
                              predictor_density=predictor_density if config.causal else None,
                              reference=reference).to(torch.float32)
        if config.state_k is None:
            return R, None
        if config.s_max is None:
            raise ValueError("state_k needs s_max (the layer sets it to its d_state)")
        if not config.causal:
            return R, state_dims_policy(rho_tile, k=config.state_k, s_min=config.s_min, s_max=config.s_max)
        pred = causal_predictor(predictor_density, config.lookback)
        S = state_dims_policy(torch.nan_to_num(pred, nan=0.0), k=config.state_k, s_min=config.s_min,
                              s_max=config.s_max)
        S[:, 0] = config.s_max  # no history: full state for the first tile
        return R, S


def block_counts(density: Tensor, config: TilingConfig, *, curvature: Tensor | None = None,
                 reference: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The block scope's segments per tile from a per-token density, without checks.

    What :func:`plan_tiles` computes for the block scope (steps 1–4: tile densities, the causal
    predictor's densities, ``R_i = f(ρ_i, d_i, c)`` of seed 001 §3.2.2, the error-diffused counts
    ``m_i``), on arguments the caller has checked (the layer checks at its boundary), with no
    :class:`~tiling.tile.TilePlan` around it: the layer's forward runs this on every call.

    Parameters
    ----------
    density : (batch, L) non-negative finite per-token density.
    config : the tiling options (``boundaries="tile"``).
    curvature : (batch, L) per-token curvature, optional.
    reference : the running reference (:meth:`RunningCalibration.reference
        <tiling.modules.router.RunningCalibration.reference>`), optional.

    Returns
    -------
    ``(R, m, rho_tile, predictor, kappa)``: ``R`` float32 (batch, n_tiles) on the CPU, ``m`` int64
    (batch, n_tiles) on the CPU (:func:`dithered_counts` of ``R``, on the nominal tile grid), the
    float64 tile densities ``ρ_i`` and the causal predictor's densities on ``density``'s device, and
    the tiles' curvature (float64, or None).

    Raises
    ------
    ValueError
        The tile densities are not finite (a finite but huge signal that overflowed).
    """
    T = config.tile_size
    rho = density.detach().to(torch.float64)
    rho_tile = _tile_mean(rho, T)
    pred = rho_tile if config.predictor_tail is None else _tile_tail(rho, T, config.predictor_tail,
                                                                      config.predictor_reduce)
    if not bool(torch.isfinite(rho_tile).all()) or (pred is not rho_tile and not bool(torch.isfinite(pred).all())):
        raise ValueError("the resolution signal (density) contains NaN/Inf")
    kappa = None if curvature is None else _tile_mean(curvature.detach().to(device=rho.device, dtype=torch.float64), T)
    R = _resolution(rho_tile, config, curvature=kappa, predictor_density=pred if config.causal else None,
                    reference=reference).to(device="cpu", dtype=torch.float32)
    m, _ = _dither(R, T)
    return R, m, rho_tile, pred, kappa


def plan_tiles(density: Tensor, config: TilingConfig, *, curvature: Tensor | None = None,
               reference: Tensor | None = None) -> TilePlan:
    """The tile plan of a per-token density: density → tiles → resolution → segments.

    The path :class:`~tiling.modules.TiledMamba` runs before its scan, and the analysis job's plan:

    1. tile densities ``ρ_i = mean_{t ∈ tile i} ρ_t`` (seed 001 §3.4 step 1) and the causal
       predictor's densities (:func:`plan_densities`);
    2. the per-tile curvature ``κ_i``, the signed tile mean of ``curvature`` (:func:`tile_mean`);
    3. ``R_i = f(ρ_i, d_i, c)`` (seed 001 §3.2.2, :func:`resolution_policy`) and the state
       dimensions ``S_i`` (seed 001 §3.4 step 3) (:func:`tile_policy`);
    4. the segments per tile: scan scope ``m_i = max(1, ⌈R_i n_i⌉)`` (seed 001 §3.5.1,
       :func:`~tiling.ops.segment_counts`); block scope the error-diffused
       ``m_i = clamp(⌊R_i T + e_{i−1} + ½⌋, 1, T)`` of :func:`dithered_counts` on the nominal tile
       grid, of which a short last tile of ``n_i`` tokens keeps the segment starts
       ``⌊j T/m_i⌋ < n_i``, i.e. ``min(m_i, ⌈n_i m_i / T⌉)``
       (:func:`~tiling.modules.chunk.segment_boundaries`): the segments the block-scope layer runs.

    Parameters
    ----------
    density : (batch, L) non-negative per-token density (e.g. ``infogeo.density.ssm_density``).
    config : the tiling options; ``boundaries="token"`` has no density plan (H-Net's router reads
        the hidden states) and is a ``ValueError``.
    curvature : (batch, L) per-token curvature, optional (weighted by ``config.curvature_weight``).
    reference : 1-D running reference of predictor importances
        (:class:`~tiling.modules.router.RunningCalibration`), for ``calibration="running"``.

    Returns
    -------
    :class:`~tiling.tile.TilePlan` on the CPU: ``resolution`` float32, ``segments`` and ``state_dims``
    int64 (``state_dims`` None when the state is not planned: ``state_k`` and ``s_max`` None),
    ``density`` the float64 ``ρ_i``, ``token_density`` the input, ``cost`` and ``exp_cost`` None
    (they depend on the model's width and state size, which the layer knows:
    :meth:`~tiling.modules.TiledMamba.plan`).

    Raises
    ------
    TypeError
        ``config`` is not a :class:`~tiling.config.TilingConfig`, or ``density``/``curvature`` is
        not a floating tensor.
    ValueError
        ``config.boundaries`` is not ``"tile"``; ``density`` is not 2-D with at least one
        position, not finite or negative; ``curvature`` is not (batch, L) or not finite;
        ``config.state_k`` without ``config.s_max``.
    """
    if not isinstance(config, TilingConfig):
        raise TypeError(f"config must be a tiling.config.TilingConfig, got {type(config).__name__}")
    if config.boundaries != "tile":
        raise ValueError("plan_tiles needs boundaries='tile': the token router's boundaries come from the hidden "
                         "states, not from a density")
    check_tensor(density, "density", ndim=2)
    if density.shape[1] < 1:
        raise ValueError(f"density must have at least one position, got shape {tuple(density.shape)}")
    batch, L = density.shape
    T = config.tile_size
    rho_tile, pred_tile = plan_densities(density, config)
    kappa = None
    if curvature is not None:
        check_tensor(curvature, "curvature", shape=(batch, L))
        kappa = tile_mean(curvature.detach().to(device=density.device, dtype=torch.float64), T)
    R, S = tile_policy(rho_tile, pred_tile, config, curvature=kappa, reference=reference)
    R = R.cpu()
    lengths = tile_lengths(L, T)
    if config.scope == "scan":
        segments = segment_counts(R, lengths)
    else:
        m, _ = dithered_counts(R, T)
        segments = torch.minimum(m, -(-(lengths * m) // T))
    if S is not None:
        S = S.cpu()
    elif config.s_max is not None:
        S = torch.full(R.shape, config.s_max, dtype=torch.int64)
    return TilePlan(
        start=torch.arange(lengths.numel(), dtype=torch.int64) * T, length=lengths, resolution=R,
        segments=segments, state_dims=S, density=rho_tile.detach().cpu(), cost=None, exp_cost=None,
        budget=config.budget, mode=config.policy, causal=config.causal, token_density=density.detach(),
        meta={"scope": config.scope},
    )


__all__ = [
    "tile_density",
    "tile_tail_density",
    "tile_importance",
    "causal_predictor",
    "resolution_policy",
    "state_dims_policy",
    "dithered_counts",
    "tile_mean",
    "plan_densities",
    "tile_policy",
    "plan_tiles",
    "block_counts",
    "causal_step",
]
