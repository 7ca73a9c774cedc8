"""The plan a ``TiledLM``'s layers chose on a text, against the plans ``tiling`` makes from the geometry.

For a ``TiledLM`` checkpoint (issue 17, item 4) three plans at the same budget ``c`` are compared,
tile by tile and layer by layer, and the text's bits per byte is measured under each:

* ``chosen``: what every tiled layer chose itself when the model ran at ``c`` (its own signal:
  the linearised density, a learned router, or the uniform policy);
* ``predictive``: the plan of the predictive density ``ρ_t = d_FR(π_{t−1}, π_t)²`` of the model's
  own next-byte distributions at full resolution (seed 000 §3.1.1; :mod:`infogeo.predictive`),
  the same density for every layer;
* ``implicit``: per layer, the plan of the density of the rows of that layer's implicit attention,
  ``ρ_t = d_FR(P_{t−1}, P_t)²`` averaged over channel groups (seed 000 §3.1.1–3.1.2 on the rows of
  Ali, Zimerman & Wolf's M; :mod:`infogeo.implicit_attention`).

Both densities are transition densities: the value at position ``t`` compares the distributions at
``t − 1`` and ``t``, so it is known once token ``t`` is read, and position 0 gets 0. A causal plan
made from them (tile ``i`` reads tiles ``< i`` only) therefore leaks nothing from the future.
(The analysis report's per-token density of an encoder averages the transitions into *and out of*
a token; that one would read one token ahead, so it is not used here.)

A density plan is run by a twin of the model, with the same weights, whose tiled layers read an
external density: tile boundaries (``boundaries="tile"``), the adaptive policy, causal, calibrated on
the sequence's own history (``calibration="history"``: a running calibration learnt on the layers'
own signal has another scale). For layers trained with a learned router or the uniform policy the
twin thus runs a policy they were not trained with, and its bpb says how well the trained weights
tolerate that plan, not how good the plan would be after training. Full-resolution layers
(``full_resolution_layers``) stay at ``R = 1`` in every plan.

Bits per byte are ``−mean_t log₂ p(x_t | x_<t)`` over ``t = 1..n−1`` from one forward of bytes
``0..n−2`` (the plans cover those ``n − 1`` positions), which for a text no longer than the model's context is what :func:`tiling.train.text.evaluate_bytes`
returns (``tests/workflows/test_plans.py`` checks the two agree).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infogeo.checks import check_finite, check_in_range, check_tensor
from tiling.train.model import TiledLM
from tiling.train.textmodel import build_model

Tensor = torch.Tensor

__all__ = ["compare_plans", "causal_token_density", "bits_per_byte"]

#: the options a density plan's twin layers run with (module docstring)
DENSITY_POLICY = {"policy": "adaptive", "boundaries": "tile", "causal": True, "calibration": "history"}


def causal_token_density(transitions: Tensor, name: str) -> Tensor:
    """Per-token density ``(n,)`` from the ``n − 1`` transition densities ``ρ_t = d(p_{t−1}, p_t)²``.

    Position ``t`` (``t = 1..n−1``) gets the transition into it, position 0 gets 0.

    Parameters
    ----------
    transitions : (n − 1,) non-negative, finite.
    name : the argument's name, for errors.

    Returns
    -------
    (n,) float64.

    Raises
    ------
    TypeError, ValueError
        ``transitions`` is not a 1-D floating tensor, not finite, or negative.
    """
    check_tensor(transitions, name, ndim=1)
    check_finite(transitions, name)
    if bool((transitions < 0).any()):
        raise ValueError(f"{name} must be non-negative, got min {float(transitions.min()):.6g}")
    return torch.cat([transitions.new_zeros(1), transitions]).to(torch.float64)


def bits_per_byte(logits: Tensor, ids: Tensor) -> float:
    """``−mean_{t≥1} log₂ p(x_t | x_<t)`` of one sequence.

    Parameters
    ----------
    logits : (1, n − 1, V) of the inputs ``ids[:, :-1]``.
    ids : (1, n).

    Returns
    -------
    float, bits per byte.
    """
    logp = F.log_softmax(logits[0].double(), dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(-logp.mean()) / math.log(2.0)


def _twin(lm: TiledLM) -> TiledLM:
    """The model with its tiled layers reading an external density (:data:`DENSITY_POLICY`), same weights."""
    twin = build_model(lm.config.replace(tiling=lm.tiling.replace(**DENSITY_POLICY)))
    missing, unexpected = twin.load_state_dict(lm.state_dict(), strict=False)
    # the twin drops what only the trained policy had (a router's q/k, running quantiles) and adds nothing
    if missing:
        raise RuntimeError(f"the density-plan twin lacks weights {missing} of the model")
    return twin.to(lm.embedding.weight.device).eval()


def _resolutions(plans: list, layers: list[int]) -> dict[int, list[float]]:
    """Realised resolution per tile, segments / tile length, of each layer in ``layers``."""
    return {k: (plans[k].segments[0].double() / plans[k].length.double()).tolist() for k in layers}


def compare_plans(lm: TiledLM, ids: Tensor, *, predictive: Tensor, implicit: dict[int, Tensor],
                  budget: float | None = None) -> dict:
    """The ``layer_plans`` section of an analysis report (module docstring).

    Parameters
    ----------
    lm : the ``TiledLM`` whose layers' choice is compared.
    ids : (1, n) int64 bytes of the text, ``n ≥ 2``.
    predictive : (n − 1,) predictive transition densities of the text (``predictive_section``'s ``density``).
    implicit : layer index → (n − 1,) transition densities of that layer's implicit-attention rows,
        for every tiled layer.
    budget : the budget ``c ∈ (0, 1]`` of all three plans; None: the budget the model was built with.

    Returns
    -------
    dict with ``budget``, ``tile_size``, ``tiled_layers``, ``density_policy`` and, for each of
    ``chosen``, ``predictive``, ``implicit``: ``resolution`` (layer → resolution per tile),
    ``mean_resolution`` (segments per token over the tiled layers) and ``bpb``.
    """
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.dim() != 2 or ids.shape[0] != 1 \
            or ids.shape[1] < 2:
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"ids must be an int64 tensor of shape (1, n) with n >= 2, got {got}")
    n = ids.shape[1]
    tiled = lm.tiled_layers
    if not tiled:
        raise ValueError("the model has no tiled layer: every layer runs at full resolution, there is no plan to compare")
    if budget is None:
        budget = lm.layers[tiled[0]].tiling.budget
    check_in_range(float(budget), "budget", 0.0, 1.0, low_open=True)
    if predictive.shape != (n - 1,):
        raise ValueError(f"predictive must have shape (n - 1,) = ({n - 1},), got {tuple(predictive.shape)}")
    absent = [k for k in tiled if k not in implicit]
    if absent:
        raise ValueError(f"implicit must hold the densities of every tiled layer {tiled}; missing {absent}")
    device = lm.embedding.weight.device
    # the model reads bytes 0..n-2 and predicts 1..n-1, as tiling.train.evaluate scores a text
    inputs, L = ids[:, :-1].to(device), n - 1
    rho_pred = causal_token_density(predictive, "predictive")[None, :L].to(device)
    rho_impl = {k: causal_token_density(implicit[k], f"implicit[{k}]")[None, :L].to(device) for k in tiled}
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            runs = {"chosen": lm(inputs, budget=budget, return_plans=True)}
            twin = _twin(lm)
            runs["predictive"] = twin(inputs, budget=budget, return_plans=True,
                                      density=[rho_pred if k in tiled else None for k in range(len(lm.layers))])
            runs["implicit"] = twin(inputs, budget=budget, return_plans=True,
                                    density=[rho_impl.get(k) for k in range(len(lm.layers))])
    finally:
        lm.train(was_training)
    out: dict = {
        "budget": float(budget), "tile_size": lm.layers[tiled[0]].tiling.tile_size, "tiled_layers": tiled,
        "density_policy": dict(DENSITY_POLICY),
        "definition": "chosen: the layers' own plan; predictive / implicit: the plan tiling makes from "
                      "rho_t = d_FR(p_{t-1}, p_t)^2 of the next-byte distributions / of each layer's "
                      "implicit-attention rows (position 0: 0), run by the same weights",
    }
    for key, (logits, plans) in runs.items():
        res = _resolutions(plans, tiled)
        out[key] = {"resolution": {str(k): v for k, v in res.items()},
                    "mean_resolution": float(sum(int(plans[k].segments.sum()) for k in tiled)) / (len(tiled) * L),
                    "bpb": bits_per_byte(logits, ids.to(device))}
    return out
