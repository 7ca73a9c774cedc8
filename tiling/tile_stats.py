"""Per-tile statistics of a per-token signal and the closed-form maps of one tile.

The first steps of the resolution policy (:mod:`tiling.policy`), which need no history and no budget:

* tile means (:func:`tile_density`, seed 001 §3.4 step 1: ``ρ_i = (1/n_i) Σ_{t ∈ tile i} ρ_t``;
  :func:`tile_mean`, a signed signal such as the curvature ``κ_i``) and the tail densities of the
  causal predictor (:func:`tile_tail_density`);
* the level-of-detail importance ``q_i = ρ_i^γ · exp(−η κ_i) / (1 + d_i / d_0)`` (seed 001 §3.2.2,
  :func:`tile_importance`) and its causal prediction ``p_i = max_{i−w ≤ j < i} q_j``
  (:func:`causal_predictor`);
* the state dimension ``S_i = max(min(⌈k ρ_i⌉, S_max), S_min)`` (seed 001 §3.4 step 3,
  :func:`state_dims_policy`).

:mod:`tiling.policy` re-exports every public name, so ``from tiling.policy import tile_density``
keeps working.
"""
from __future__ import annotations

import math

import torch

from infogeo.checks import check_choice, check_int, check_positive, check_tensor

Tensor = torch.Tensor

_TINY = 1e-30  # floor of importances (float64) so that zero-density tiles stay on the log scale


def tile_density(density: Tensor, tile_size: int) -> Tensor:
    """Mean density of each tile: ``ρ_i = (1/n_i) Σ_{t ∈ tile i} ρ_t`` (seed 001 §3.4 step 1).

    Parameters
    ----------
    density : (batch, L) per-token density (non-negative, finite).
    tile_size : tile length ``T``; tile ``i`` covers ``[i·T, min((i+1)·T, L))`` (the last tile may
        be shorter and is averaged over its own length).

    Returns
    -------
    (batch, ⌈L/T⌉) tensor of the input's dtype and device.

    Raises
    ------
    TypeError
        ``density`` is not a floating tensor or ``tile_size`` not an int.
    ValueError
        ``density`` is not 2-D, holds NaN/Inf or negative values, or ``tile_size < 1``.
    """
    _check_density(density)
    return tile_mean(density, tile_size)


def _check_density(density: Tensor) -> None:
    """``density`` is a finite (batch, L) floating tensor with no negative entry (ValueError/TypeError)."""
    check_tensor(density, "density", ndim=2)
    if bool((density < 0).any()):
        raise ValueError(f"density must be non-negative, got min {float(density.min()):.6g}")


def tile_mean(x: Tensor, tile_size: int) -> Tensor:
    """Signed mean of a per-token signal over each tile, ``(1/n_i) Σ_{t ∈ tile i} x_t``.

    E.g. the curvature ``κ_i`` of tile ``i`` (seed 001 §3.2.2); :func:`tile_density` is its
    non-negative case.

    Parameters
    ----------
    x : (batch, L) per-token signal (finite).
    tile_size : tile length ``T``; a tile longer than the sequence is the whole sequence.

    Returns
    -------
    (batch, ⌈L/T⌉) tensor of the input's dtype and device.

    Raises
    ------
    TypeError
        ``x`` is not a floating tensor or ``tile_size`` is not an int.
    ValueError
        ``x`` is not 2-D or holds NaN/Inf, or ``tile_size < 1``.
    """
    check_tensor(x, "x", ndim=2)
    return _tile_mean(x, check_int(tile_size, "tile_size", minimum=1))


def _tile_mean(x: Tensor, T: int) -> Tensor:
    """:func:`tile_mean` without its checks (the layer checks once, at its boundary)."""
    batch, L = x.shape
    T = min(T, L)  # a tile longer than the sequence is the sequence: never pad by more than L
    n_tiles = -(-L // T)
    pad = n_tiles * T - L
    if pad == 0:  # whole tiles (a decoding step's tile at its end): the same sums, divided by the same T
        return x.reshape(batch, n_tiles, T).sum(-1) / T
    padded = torch.nn.functional.pad(x, (0, pad))
    sums = padded.view(batch, n_tiles, T).sum(-1)
    lengths = torch.full((n_tiles,), T, dtype=x.dtype, device=x.device)
    lengths[-1] = L - (n_tiles - 1) * T
    return sums / lengths


def tile_tail_density(density: Tensor, tile_size: int, tail: int, reduce: str = "mean") -> Tensor:
    """Density of the last ``tail`` tokens of each tile (a causal predictor of the next tile).

    ``τ_i = reduce_{e_i − w_i < t ≤ e_i} ρ_t`` with ``e_i`` the last position of tile ``i``,
    ``w_i = min(tail, n_i)`` and ``reduce`` the mean or the maximum.

    Parameters
    ----------
    density : (batch, L) per-token density (non-negative, finite).
    tile_size : tile length ``T``.
    tail : number of tokens ``1 ≤ tail ≤ tile_size``.
    reduce : ``"mean"`` or ``"max"``.

    Returns
    -------
    (batch, ⌈L/T⌉) tensor of the input's dtype and device.

    Raises
    ------
    TypeError
        ``density`` is not a floating tensor, or ``tile_size``/``tail`` is not an int.
    ValueError
        ``density`` is not 2-D, holds NaN/Inf or negative values; ``tile_size < 1``; ``tail``
        outside ``[1, tile_size]``; ``reduce`` not ``"mean"`` or ``"max"``.

    Notes
    -----
    Departure from seed 001 §3.4 step 1 (which averages over the whole tile): the tokens nearest to
    tile ``i + 1`` predict its density best when density changes abruptly (a burst starting or
    ending inside tile ``i``), and the maximum responds to a single dense token (a marker
    announcing a burst) that a mean would dilute. ``tail = tile_size`` with the mean gives
    :func:`tile_density` back.
    """
    _check_density(density)
    T = check_int(tile_size, "tile_size", minimum=1)
    w = check_int(tail, "tail", minimum=1, maximum=T)
    check_choice(reduce, "reduce", ["mean", "max"])
    return _tile_tail(density, T, w, reduce)


def _tile_tail(density: Tensor, T: int, w: int, reduce: str) -> Tensor:
    """:func:`tile_tail_density` without its checks."""
    L = density.shape[1]
    n_tiles = -(-L // T)
    dev = density.device
    starts = torch.arange(n_tiles, device=dev) * T
    last = torch.clamp(starts + T, max=L) - 1  # last position of each tile
    idx = last.unsqueeze(1) - torch.arange(min(w, L), device=dev).unsqueeze(0)  # (n_tiles, w), newest first
    inside = idx >= starts.unsqueeze(1)  # a short last tile has fewer than w tokens
    values = density[:, idx.clamp_min(0)] * inside.to(density.dtype)  # zeros outside: density >= 0
    if reduce == "max":
        return values.amax(-1)
    return values.sum(-1) / inside.sum(-1).to(density.dtype)


def tile_importance(
    tile_density: Tensor,
    *,
    exponent: float = 0.5,
    curvature: Tensor | None = None,
    curvature_weight: float = 1.0,
    distance_scale: float | None = None,
    validate: bool = True,
) -> Tensor:
    """Level-of-detail importance ``q_i = ρ_i^γ · exp(−η κ_i) / (1 + d_i/d_0)`` (seed 001 §3.2.2).

    Parameters
    ----------
    tile_density : (batch, n_tiles) tile densities ``ρ_i`` (negative values count as 0).
    exponent : ``γ > 0``; ``ρ_i^γ`` makes ``q`` monotone in density; a power below one spreads
        resolution over more tiles than a proportional rule.
    curvature : (batch, n_tiles) optional per-tile curvature ``κ_i`` (e.g. the Ollivier–Ricci node
        curvature of ``infogeo.curvature``): negatively curved, bottleneck-like regions get more
        detail for ``η > 0``.
    curvature_weight : ``η ≥ 0``.
    distance_scale : ``d_0 > 0``, or None (no falloff). ``d_i = n_tiles − 1 − i`` is the temporal
        distance (in tiles) to the current, last position; the importance falls like a
        level-of-detail distance falloff ``1/(1 + d/d_0)``.
    validate : check the arguments (False: the caller's are checked, e.g. a decoding step's history).

    Returns
    -------
    float64 (batch, n_tiles) importances ``≥ 1e-30``.

    Raises
    ------
    TypeError
        ``tile_density`` or ``curvature`` is not a floating tensor, or a number is not a real number.
    ValueError
        ``tile_density`` is not 2-D or not finite; ``curvature`` has another shape or is not finite;
        ``exponent`` or ``distance_scale`` is not positive, ``curvature_weight`` is negative.
    """
    if not validate:
        return _importance(tile_density, exponent, curvature, curvature_weight, distance_scale)
    check_tensor(tile_density, "tile_density", ndim=2)
    check_positive(exponent, "exponent")
    if curvature is not None:
        check_tensor(curvature, "curvature", shape=tuple(tile_density.shape))
        check_positive(curvature_weight, "curvature_weight", strict=False)
    if distance_scale is not None:
        check_positive(distance_scale, "distance_scale")
    return _importance(tile_density, exponent, curvature, curvature_weight, distance_scale)


def _importance(tile_density: Tensor, exponent: float, curvature: Tensor | None, curvature_weight: float,
                distance_scale: float | None) -> Tensor:
    """:func:`tile_importance` without its checks."""
    q = tile_density.detach().to(torch.float64).clamp_min(0.0).pow(exponent)
    if curvature is not None:
        q = q * torch.exp(-curvature_weight * curvature.detach().to(device=q.device, dtype=torch.float64))
    if distance_scale is not None:
        n = tile_density.shape[1]
        d = torch.arange(n - 1, -1, -1, dtype=torch.float64, device=q.device)
        q = q / (1.0 + d / distance_scale)
    return q.clamp_min(_TINY)


def causal_predictor(importance: Tensor, lookback: int = 1) -> Tensor:
    """Causal prediction of each tile's importance from earlier tiles: ``p_i = max_{i−w≤j<i} q_j``.

    Parameters
    ----------
    importance : (batch, n_tiles) importances ``q``.
    lookback : window ``w ≥ 1`` in tiles.

    Returns
    -------
    (batch, n_tiles) predictions; ``p_0`` (no history) is NaN. Only tiles ``j < i`` enter ``p_i``
    (:mod:`tiling.policy`, "Causality").

    Raises
    ------
    TypeError, ValueError
        ``lookback`` is not an int ≥ 1.
    """
    w = check_int(lookback, "lookback", minimum=1)
    batch, n = importance.shape
    p = torch.full_like(importance, float("nan"))
    if n > 1:
        past = torch.nn.functional.pad(importance[:, :-1], (w - 1, 0), value=-math.inf)
        p[:, 1:] = past.unfold(1, w, 1).amax(-1)
    return p


def state_dims_policy(tile_density: Tensor, *, k: float, s_min: int, s_max: int) -> Tensor:
    """State dimension per tile, ``S_i = max(min(⌈k ρ_i⌉, S_max), S_min)`` (seed 001 §3.4 step 3).

    Parameters
    ----------
    tile_density : (batch, n_tiles) tile densities ``ρ_i`` (negative values count as 0).
    k : ``k ≥ 0``.
    s_min, s_max : ``1 ≤ S_min ≤ S_max``.

    Returns
    -------
    int64 (batch, n_tiles) on the device of ``tile_density``.

    Raises
    ------
    TypeError
        ``tile_density`` is not a floating tensor, ``k`` not a real number, ``s_min``/``s_max`` not ints.
    ValueError
        ``tile_density`` is not 2-D or not finite, ``k < 0``, ``s_min`` or ``s_max < 1``, or
        ``s_min > s_max``.

    Notes
    -----
    Departure from the text: the seed's ``k ρ_i`` is real; a state dimension is an integer, so
    ``k ρ_i`` is rounded *up* (never fewer components than the formula asks for).
    """
    check_tensor(tile_density, "tile_density", ndim=2)
    check_positive(k, "k", strict=False)
    s_min = check_int(s_min, "s_min", minimum=1)
    s_max = check_int(s_max, "s_max", minimum=1)
    if s_min > s_max:
        raise ValueError(f"s_min must be <= s_max, got s_min={s_min} > s_max={s_max}")
    x = torch.ceil(k * tile_density.detach().to(torch.float64).clamp_min(0.0))
    return x.clamp(min=s_min, max=s_max).to(torch.int64)


__all__ = ["causal_predictor", "state_dims_policy", "tile_density", "tile_importance", "tile_mean", "tile_tail_density"]
