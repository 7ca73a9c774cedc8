"""Gradients on the boundary of the domains (issue 27, item 1): exact zeros of the simplex, equal points.

The forward values there were always right; the backward passes gave NaN (``sqrt``'s ∞ times 0, or
``hypot``'s 0/0). Each test compares with a closed form or with finite differences (``gradcheck``,
``gradgradcheck``) in a chart that stays on the boundary: a softmax whose masked logits are −∞, so
the zeros are exact for every perturbation.
"""
import math

import pytest
import torch

from infogeo.density import categorical_sequence_density, path_length
from infogeo.fisher import (attention_row_metric, categorical_distance, diag_normal_distance,
                            linear_softmax_metric, normal_distance)

F64 = torch.float64


def _grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    fn(*xs).sum().backward()
    return [x.grad for x in xs]


def _closed_form_grad(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """∂d/∂p of d = 4 asin(c/2), c = ‖√p − √q‖, in float64 by hand (the docstring's convention:
    √(q_k/p_k) read as 0 where p_k = 0)."""
    c = float((p.sqrt() - q.sqrt()).norm())
    ratio = torch.tensor([math.sqrt(b / a) if a > 0 and b > 0 else 0.0 for a, b in zip(p.tolist(), q.tolist())],
                         dtype=F64)
    return 2.0 / math.sqrt(1.0 - c * c / 4.0) * (1.0 - ratio) / (2.0 * c)


@pytest.mark.parametrize("p,q", [
    ([0.5, 0.5, 0.0], [0.25, 0.75, 0.0]),         # a category zero in both
    ([0.2, 0.8, 0.0, 0.0], [0.1, 0.6, 0.3, 0.0]),  # zero in p only (a causal row and the next one)
    ([1.0, 0.0, 0.0], [0.0, 0.5, 0.5]),            # disjoint supports: d = π
])
def test_categorical_distance_gradient_at_exact_zeros_is_the_closed_form(p, q):
    """Was NaN wherever p_k = q_k = 0 (``p.sqrt()``'s backward at 0 is ∞, times a zero chord component)."""
    p, q = torch.tensor(p, dtype=F64), torch.tensor(q, dtype=F64)
    gp, gq = _grads(categorical_distance, p, q)
    assert torch.isfinite(gp).all() and torch.isfinite(gq).all(), (gp, gq)
    torch.testing.assert_close(gp, _closed_form_grad(p, q), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, _closed_form_grad(q, p), rtol=1e-12, atol=1e-12)


def test_categorical_distance_gradient_at_equal_points_is_the_subgradient_zero():
    p = torch.tensor([0.3, 0.7, 0.0], dtype=F64)
    gp, gq = _grads(categorical_distance, p, p)
    assert torch.equal(gp, torch.zeros(3, dtype=F64)) and torch.equal(gq, torch.zeros(3, dtype=F64))


def _causal_rows(z: torch.Tensor) -> torch.Tensor:
    """Rows of a causal softmax: row i attends keys 0..i, the others are exact zeros."""
    n = z.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(z.masked_fill(~mask, float("-inf")), -1)


def test_causal_softmax_rows_give_finite_gradients_for_the_logits():
    """The issue's probe: a loss on the densities of causal softmax rows had NaN gradients (10 of 25)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        z = torch.randn(6, 6, generator=g, dtype=F64, requires_grad=True)
        categorical_sequence_density(_causal_rows(z)).sum().backward()
        assert torch.isfinite(z.grad).all(), z.grad


def test_gradcheck_and_gradgradcheck_on_the_boundary_of_the_simplex():
    """Finite differences in the logits of causal rows (zeros in both, zeros in one) and of rows with
    disjoint supports agree with the backward, and with the double backward."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 5, generator=g, dtype=F64, requires_grad=True)

    def density(z):
        return categorical_sequence_density(_causal_rows(z))

    assert torch.autograd.gradcheck(density, (z,), eps=1e-6, atol=1e-7, rtol=1e-6)
    assert torch.autograd.gradgradcheck(density, (z,), eps=1e-6, atol=1e-6, rtol=1e-5)

    left = torch.tensor([True, True, False, False])
    a = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=F64, requires_grad=True)

    def disjoint(a, b):
        return categorical_distance(torch.softmax(a.masked_fill(~left, float("-inf")), -1),
                                    torch.softmax(b.masked_fill(left, float("-inf")), -1))

    assert float(disjoint(a, b).detach()) == pytest.approx(math.pi, abs=1e-12)
    assert torch.autograd.gradcheck(disjoint, (a, b), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(disjoint, (a, b), eps=1e-6, atol=1e-6)


def test_categorical_distance_broadcasts_its_gradient():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=F64)
    Q = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.0, 0.5]], dtype=F64)
    gp, gQ = _grads(categorical_distance, p, Q)
    assert gp.shape == p.shape and gQ.shape == Q.shape
    torch.testing.assert_close(gp, _closed_form_grad(p, Q[0]) + _closed_form_grad(p, Q[1]))


def test_normal_distances_at_equal_points_have_the_subgradient_zero():
    """Was NaN: ``torch.hypot``'s backward at (0, 0) is 0/0."""
    mu, s = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([1.0, 2.0], dtype=F64)
    for fn in (normal_distance, diag_normal_distance):
        for grad in _grads(fn, mu, s, mu, s):
            assert torch.equal(grad, torch.zeros_like(grad)), (fn.__name__, grad)
    # away from equality the gradient is unchanged: d/dμ₁ of 2√2 asinh(|Δμ|/(2√2 σ)) at σ = 1
    g_mu = _grads(normal_distance, torch.tensor(1.0, dtype=F64), torch.tensor(1.0, dtype=F64),
                  torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))[0]
    x = 1.0 / (2 * math.sqrt(2.0))
    assert float(g_mu) == pytest.approx(2 * math.sqrt(2.0) * x / math.sqrt(1 + x * x), rel=1e-12)


def test_path_length_through_a_repeated_point_has_a_finite_gradient():
    """Was NaN: ``sqrt`` of a zero step. The repeated point's segment adds the subgradient 0."""
    curve = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=F64)
    (g,) = _grads(path_length, curve)
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0], [-0.6, -0.8], [0.6, 0.8]], dtype=F64))


def test_softmax_head_metrics_with_exact_zero_probabilities_have_finite_gradients():
    """Was NaN: the centred form's √p at p = 0 (a masked key, or a softmax that underflows)."""
    g = torch.Generator().manual_seed(2)
    q, K = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    q.requires_grad_(True)
    K.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, K: attention_row_metric(q, K, mask=mask), (q, K), eps=1e-6, atol=1e-7)
    W = torch.tensor([[800.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)  # p of the last two classes underflows to 0
    h = torch.tensor([[1.0, 0.5]], dtype=F64)
    assert float(torch.softmax(h @ W.T, -1)[0, 1]) == 0.0
    for grad in _grads(linear_softmax_metric, W, h):
        assert torch.isfinite(grad).all(), grad
