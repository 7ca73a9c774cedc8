r"""Fisher metric tensors: closed forms, sample estimates, and metrics pulled back to hidden states.

The information metric of seed 000 §3.1.1 is the Fisher information

.. math::  g_{ij}(\theta) = \mathbb{E}_{x\sim f(\cdot|\theta)}[\partial_i \log f(x|\theta)\,\partial_j \log f(x|\theta)].

The package is split by concern, as geomstats' ``information_geometry`` is (one module per
distribution family, the generic metric apart):

* :mod:`~infogeo.fisher.categorical` and :mod:`~infogeo.fisher.normal` — closed forms for the
  categorical family (the open simplex; isometric to the positive orthant of the sphere of radius
  2 through p ↦ 2√p), the univariate normal family in (μ, σ) (a hyperbolic plane of curvature
  −1/2) and the diagonal multivariate normal family (a product of such planes), with their
  Fisher–Rao distances (seed 000 §3.1.2);
* :mod:`~infogeo.fisher.estimators` — estimators of g from samples for any differentiable torch
  log-density ``log_f(x, theta)``: :func:`empirical_fisher` (scores at given observations) and
  :func:`monte_carlo_fisher` (scores at samples drawn from the model itself, which estimates the
  true Fisher);
* :mod:`~infogeo.fisher.pullback` — the metric a network induces on its hidden states, "the
  information metric of a token": for h ↦ p(h) = softmax(logits(h)), the Fisher metric of the
  categorical family pulled back by the logit map, G(h) = J(h)ᵀ(diag p − p pᵀ)J(h)
  (:func:`pullback_metric`), a JVP-only quadratic form, and exact fast paths for a linear-softmax
  head and an attention row;
* :mod:`~infogeo.fisher.metric` — the regularisation G + εI used for inverses and
  log-determinants of these (generally singular) metrics, and their effective dimension.

Every public name is re-exported here: ``from infogeo.fisher import categorical_distance`` is the
import to use. All functions are pure, follow the dtype and device of their inputs and validate
arguments with :mod:`infogeo.checks`.
"""
from infogeo.fisher.categorical import categorical_distance, categorical_metric
from infogeo.fisher.estimators import empirical_fisher, monte_carlo_fisher
from infogeo.fisher.metric import effective_dimension, metric_inverse, metric_logdet, regularized
from infogeo.fisher.normal import diag_normal_distance, diag_normal_metric, normal_distance, normal_metric
from infogeo.fisher.pullback import (
    FN_RAISED,
    attention_row_metric,
    linear_softmax_metric,
    pullback_metric,
    pullback_quadratic_form,
)

__all__ = [
    # closed forms of the families
    "categorical_metric", "categorical_distance",
    "normal_metric", "normal_distance", "diag_normal_metric", "diag_normal_distance",
    # estimators from samples
    "empirical_fisher", "monte_carlo_fisher",
    # pull-backs to hidden states
    "pullback_metric", "pullback_quadratic_form", "linear_softmax_metric", "attention_row_metric", "FN_RAISED",
    # algebra of (singular) metrics
    "regularized", "metric_inverse", "metric_logdet", "effective_dimension",
]
