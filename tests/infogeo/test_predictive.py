"""The predictive Fisher–Rao density and the surprisal (infogeo.predictive).

References: the Bhattacharyya form of the Fisher–Rao distance, 2·arccos Σ√(p q) (seed 000
§3.1.2 on the simplex), cross-entropy from torch, numpy's correlation coefficient.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infogeo.predictive import predictive_density, predictive_section, surprisal


def _logits(n, V, seed, scale=3.0):
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def test_density_is_the_squared_fisher_rao_step():
    z = _logits(12, 50, seed=0)
    p = torch.softmax(z, -1)
    ref = (2 * torch.arccos((p[1:] * p[:-1]).sqrt().sum(-1).clamp(max=1.0))) ** 2
    assert torch.allclose(predictive_density(z), ref, rtol=1e-10)


def test_surprisal_is_the_cross_entropy_of_the_next_token():
    z = _logits(9, 30, seed=1)
    ids = torch.randint(0, 30, (9,), generator=torch.Generator().manual_seed(2))
    ref = torch.nn.functional.cross_entropy(z[:-1], ids[1:], reduction="none")
    assert torch.allclose(surprisal(z, ids), ref, rtol=1e-12)


@settings(max_examples=30)
@given(n=st.integers(2, 12), V=st.integers(2, 40), seed=st.integers(0, 2**16), shift=st.floats(-50, 50))
def test_density_invariants(n, V, seed, shift):
    z = _logits(n, V, seed)
    rho = predictive_density(z)
    assert rho.shape == (n - 1,)
    assert bool((rho >= 0).all()) and bool((rho <= math.pi**2 + 1e-12).all())  # the sphere of radius 2: d ≤ π
    # the logits' per-row offset is not a distribution: it moves nothing
    offsets = torch.linspace(-1, 1, n, dtype=torch.float64)[:, None] * shift
    assert torch.allclose(predictive_density(z + offsets), rho, atol=1e-9)
    # a repeated distribution has zero density
    assert float(predictive_density(torch.cat([z[:1], z[:1]]))[0]) == pytest.approx(0.0, abs=1e-12)


def test_section_reports_the_correlations():
    z = _logits(40, 20, seed=3)
    ids = torch.randint(0, 20, (40,), generator=torch.Generator().manual_seed(4))
    sec = predictive_section(z, ids)
    a, b = np.array(sec["density"]), np.array(sec["surprisal"])
    assert sec["pearson"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-10)
    ranks = lambda x: np.argsort(np.argsort(x))
    assert sec["spearman"] == pytest.approx(np.corrcoef(ranks(a), ranks(b))[0, 1], rel=1e-10)
    assert sec["bits_per_token"] == pytest.approx(b.mean() / math.log(2))
    flat = predictive_section(torch.zeros(5, 4, dtype=torch.float64), [0, 1, 2, 3, 0])
    assert flat["pearson"] is None and flat["density_mean"] == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2 positions"):
        predictive_density(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="vocabulary"):
        surprisal(torch.zeros(3, 5), [0, 1, 5])
    with pytest.raises(ValueError, match="one entry per position"):
        surprisal(torch.zeros(3, 5), [0, 1])
    bad = torch.zeros(3, 5)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="logits"):
        predictive_density(bad)
