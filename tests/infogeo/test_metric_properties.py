"""A shared case library of metric properties, run with hypothesis over every distance of ``infogeo``.

A :class:`Case` is one distance ``d(x, y)`` between points (1-D float64 tensors: coordinates, or a
node index for graph distances), the sampler of its points, the properties that hold and the
reparametrisations (:class:`Chart`) under which it is invariant. The properties:

* ``symmetry``: ``d(x, y) = d(y, x)``;
* ``identity``: ``d(x, x) = 0``;
* ``separation``: ``d(x, y) > 0`` for ``x ≠ y``;
* ``triangle``: ``d(x, z) ≤ d(x, y) + d(y, z)``;
* ``invariance``: ``d'(φ(x), φ(y)) = d(x, y)`` for every chart ``φ`` drawn, ``d'`` the distance
  in the new chart (for a metric given in coordinates, the pulled-back one; for a closed form that
  is invariant by itself, ``d`` again). Examples: permuting the categories of a categorical
  distribution, the affine data map ``x → ax + b`` acting on normals as ``(μ, σ) → (aμ + b, |a|σ)``,
  rigid motions of Euclidean points, relabelling the nodes of a token graph.

A new distance function is one more line in :data:`CASES`; :func:`test_every_distance_has_a_case`
fails while a public ``*distance*``/``*length*`` function of ``infogeo`` has none. Each property
check is shown to fail on a deliberately broken distance (:data:`BROKEN`).
"""
from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import Phase, assume, example, given, settings
from hypothesis import strategies as st

import infogeo
from infogeo.density import categorical_sequence_density, path_length, sequence_density
from infogeo.fisher import categorical_distance, diag_normal_distance, normal_distance
from infogeo.geodesic import geodesic_distances, geodesic_path
from infogeo.geodesic import path_length as graph_path_length
from infogeo.graph import TokenGraph, knn

Tensor = torch.Tensor
Distance = Callable[[Tensor, Tensor], float]
F64 = torch.float64


@dataclasses.dataclass(frozen=True)
class Chart:
    """A reparametrisation: points move by ``map``, distances are measured by ``distance`` there."""

    map: Callable[[Tensor], Tensor]
    distance: Distance


@dataclasses.dataclass(frozen=True)
class Case:
    """One distance under test (see the module docstring)."""

    name: str
    function: Callable  # the infogeo function exercised, for the coverage test
    distance: Distance
    points: st.SearchStrategy[Tensor]
    holds: frozenset[str]
    charts: st.SearchStrategy[Chart] | None = None
    atol: float = 1e-9
    rtol: float = 1e-9
    counterexample: tuple | None = None  # arguments of one property that must fail (broken cases)

    def close(self, a: float, b: float) -> bool:
        return abs(a - b) <= self.atol + self.rtol * max(abs(a), abs(b))


METRIC = frozenset({"symmetry", "identity", "separation", "triangle"})
EXAMPLES = 25  # per case and property: about a hundred checks in well under 30 s

# ----------------------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------------------


def _vectors(d: int, lo: float = -5.0, hi: float = 5.0) -> st.SearchStrategy[Tensor]:
    return st.lists(st.floats(lo, hi), min_size=d, max_size=d).map(lambda v: torch.tensor(v, dtype=F64))


def _simplex(k: int) -> st.SearchStrategy[Tensor]:
    """Points of the closed simplex (exact zeros included)."""
    weights = st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1.0)), min_size=k, max_size=k)
    return weights.filter(lambda w: sum(w) > 0.1).map(lambda w: torch.tensor(w, dtype=F64) / sum(w))


def _normals(d: int) -> st.SearchStrategy[Tensor]:
    """``[μ_1..μ_d, σ_1..σ_d]`` with σ > 0."""
    return st.tuples(_vectors(d, -3.0, 3.0), _vectors(d, 0.2, 4.0)).map(lambda ms: torch.cat(ms))


def _nodes(n: int) -> st.SearchStrategy[Tensor]:
    return st.integers(0, n - 1).map(lambda i: torch.tensor([float(i)], dtype=F64))


# ----------------------------------------------------------------------------------------------
# Charts
# ----------------------------------------------------------------------------------------------

_seeds = st.integers(0, 2**32 - 1)


def _orthogonal(rng: np.random.Generator, d: int) -> Tensor:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return torch.tensor(q * np.sign(np.diag(r)), dtype=F64)  # Haar; det ±1 (reflections included)


def _affine(rng: np.random.Generator, d: int) -> tuple[Tensor, Tensor]:
    """A well-conditioned invertible ``A`` (singular values in [0.5, 2]) and a shift ``b``."""
    scales = torch.tensor(rng.uniform(0.5, 2.0, d), dtype=F64)
    return _orthogonal(rng, d) @ torch.diag(scales) @ _orthogonal(rng, d), torch.tensor(rng.uniform(-1, 1, d), dtype=F64)


def _same(distance: Distance, maps: st.SearchStrategy[Callable[[Tensor], Tensor]]) -> st.SearchStrategy[Chart]:
    """Charts under which ``distance`` itself is invariant."""
    return maps.map(lambda m: Chart(m, distance))


def _rigid_maps(d: int) -> st.SearchStrategy[Callable[[Tensor], Tensor]]:
    def make(seed: int) -> Callable[[Tensor], Tensor]:
        rng = np.random.default_rng(seed)
        q, b = _orthogonal(rng, d), torch.tensor(rng.uniform(-3, 3, d), dtype=F64)
        return lambda x: q @ x + b
    return _seeds.map(make)


def _category_permutations(k: int) -> st.SearchStrategy[Callable[[Tensor], Tensor]]:
    return st.permutations(range(k)).map(lambda perm: (lambda p: p[list(perm)]))


def _normal_data_maps(d: int) -> st.SearchStrategy[Callable[[Tensor], Tensor]]:
    """x → a ⊙ x_π + b on the data: (μ, σ) → (a μ_π + b, |a| σ_π), π a permutation of the coordinates."""
    scale = st.one_of(st.floats(0.1, 10.0), st.floats(-10.0, -0.1))
    coeffs = st.tuples(st.lists(scale, min_size=d, max_size=d), st.lists(st.floats(-5, 5), min_size=d, max_size=d),
                       st.permutations(range(d)))

    def make(c: tuple[list[float], list[float], list[int]]) -> Callable[[Tensor], Tensor]:
        a, b, perm = torch.tensor(c[0], dtype=F64), torch.tensor(c[1], dtype=F64), list(c[2])
        return lambda x: torch.cat([a * x[:d][perm] + b, a.abs() * x[d:][perm]])
    return coeffs.map(make)


def _pulled_back(make_distance: Callable[[Tensor, Tensor], Distance], d: int) -> st.SearchStrategy[Chart]:
    """Affine charts ``x' = A x + b`` with the distance ``make_distance(A, b)`` of the pulled-back metric."""
    def make(seed: int) -> Chart:
        A, b = _affine(np.random.default_rng(seed), d)
        return Chart(lambda x: A @ x + b, make_distance(A, b))
    return _seeds.map(make)


# ----------------------------------------------------------------------------------------------
# The distances of infogeo, each as d(x, y)
# ----------------------------------------------------------------------------------------------

D = 3  # dimension of Euclidean points
K = 4  # categories
G_CONST = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=F64)  # positive definite
W_LOGITS = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.9], [0.4, -1.2, 0.5], [0.0, 0.6, 0.3]],
                        dtype=F64)  # 5 logits of 3 coordinates; the all-ones logit direction is not in its range


def _conformal(points: Tensor) -> Tensor:
    """A non-constant metric field g(x) = (1 + |x|²) I on (..., m, d) points."""
    eye = torch.eye(points.shape[-1], dtype=points.dtype)
    return (1.0 + (points * points).sum(-1))[..., None, None] * eye


def _logits(h: Tensor) -> Tensor:
    return W_LOGITS @ torch.tanh(h)


def _pullback_field(field: Callable[[Tensor], Tensor], A: Tensor, b: Tensor) -> Callable[[Tensor], Tensor]:
    """g'(x') = A^{-T} g(A^{-1}(x' − b)) A^{-1}: the field in the chart x' = A x + b."""
    A_inv = torch.linalg.inv(A)
    return lambda pts: A_inv.T @ field((pts - b) @ A_inv.T) @ A_inv


def _pair(x: Tensor, y: Tensor) -> Tensor:
    return torch.stack([x, y])


def _normal(x: Tensor, y: Tensor) -> float:
    return float(normal_distance(x[0], x[1], y[0], y[1]))


def _diag_normal(x: Tensor, y: Tensor) -> float:
    h = x.numel() // 2
    return float(diag_normal_distance(x[:h], x[h:], y[:h], y[h:]))


def _euclidean_path(x: Tensor, y: Tensor) -> float:
    return float(path_length(_pair(x, y)))


def _tensor_path(g: Tensor) -> Distance:
    return lambda x, y: float(path_length(_pair(x, y), g.expand(2, *g.shape)))


def _field_path(field: Callable[[Tensor], Tensor]) -> Distance:
    return lambda x, y: float(path_length(_pair(x, y), field))


def _speed(metrics: Tensor | Callable[[Tensor], Tensor] | None) -> Distance:
    """√ρ of the two-state sequence (x, y): the step length in the metric at x."""
    def distance(x: Tensor, y: Tensor) -> float:
        g = metrics.expand(2, *metrics.shape) if isinstance(metrics, Tensor) else metrics
        return math.sqrt(float(sequence_density(_pair(x, y), g)))
    return distance


def _categorical_speed(p: Tensor, q: Tensor) -> float:
    return math.sqrt(float(categorical_sequence_density(_pair(p, q))))


def _edge(kind: str) -> Distance:
    """Length of the edge of the two-point token graph {x, y} (``kind`` "euclidean" or "fisher_rao")."""
    return lambda x, y: float(TokenGraph.from_points(_pair(x, y), k=1, kind=kind).edge_lengths()[0])


def _edge_per_point(field: Callable[[Tensor], Tensor]) -> Distance:
    """Edge length with per-point metric tensors g(x), g(y) (midpoint rule on their mean)."""
    return lambda x, y: float(TokenGraph.from_points(_pair(x, y), k=1, metric=field(_pair(x, y))).edge_lengths()[0])


def _edge_pullback(fn: Callable[[Tensor], Tensor]) -> Distance:
    """Edge length under the softmax pull-back metric of ``fn`` (one JVP at the midpoint)."""
    return lambda x, y: float(TokenGraph.from_points(_pair(x, y), k=1, metric=fn).edge_lengths()[0])


def _pullback_fn(A: Tensor, b: Tensor) -> Callable[[Tensor], Tensor]:
    A_inv = torch.linalg.inv(A)
    return lambda h: _logits(A_inv @ (h - b))


def _knn(method: str) -> Distance:
    return lambda x, y: float(knn(_pair(x, y), 1, method=method)[1][0, 0])


# Graph distances on fixed clouds; charts relabel the nodes (and move the cloud rigidly or permute categories).
N_GRAPH = 12
_CLOUD = torch.randn(N_GRAPH, D, generator=torch.Generator().manual_seed(0), dtype=F64)
_ROWS = torch.softmax(2.0 * torch.randn(N_GRAPH, K, generator=torch.Generator().manual_seed(1), dtype=F64), dim=1)


def _graph(points: Tensor, kind: str) -> TokenGraph:
    graph = TokenGraph.from_points(points, k=4, kind=kind, sequence_edges=False)  # no edges that follow the order
    graph.check_connected()
    return graph


def _geodesic(graph: TokenGraph) -> Distance:
    return lambda i, j: float(geodesic_distances(graph, int(i))[int(j)])


def _geodesic_path_length(graph: TokenGraph) -> Distance:
    return lambda i, j: graph_path_length(graph, geodesic_path(graph, int(i), int(j)))


def _relabelled(points: Tensor, kind: str, measure: Callable[[TokenGraph], Distance],
                move: st.SearchStrategy[Callable[[Tensor], Tensor]]) -> st.SearchStrategy[Chart]:
    """Node i becomes node π(i) of the graph of the moved points."""
    def make(perm: list[int], m: Callable[[Tensor], Tensor]) -> Chart:
        moved = torch.stack([m(p) for p in points])
        new = torch.empty_like(moved)
        new[perm] = moved
        return Chart(lambda i: torch.tensor([float(perm[int(i)])], dtype=F64), measure(_graph(new, kind)))
    return st.builds(make, st.permutations(range(len(points))), move)


_EUCLIDEAN_GRAPH = _graph(_CLOUD, "euclidean")
_FISHER_GRAPH = _graph(_ROWS, "fisher_rao")

CASES: list[Case] = [
    Case("categorical_distance", categorical_distance, lambda p, q: float(categorical_distance(p, q)), _simplex(K),
         METRIC | {"invariance"}, _same(lambda p, q: float(categorical_distance(p, q)), _category_permutations(K))),
    Case("normal_distance", normal_distance, _normal, _normals(1), METRIC | {"invariance"},
         _same(_normal, _normal_data_maps(1))),
    Case("diag_normal_distance", diag_normal_distance, _diag_normal, _normals(2), METRIC | {"invariance"},
         _same(_diag_normal, _normal_data_maps(2))),
    Case("categorical_sequence_density", categorical_sequence_density, _categorical_speed, _simplex(K),
         METRIC | {"invariance"}, _same(_categorical_speed, _category_permutations(K))),
    Case("sequence_density euclidean", sequence_density, _speed(None), _vectors(D), METRIC | {"invariance"},
         _same(_speed(None), _rigid_maps(D))),
    Case("sequence_density constant metric", sequence_density, _speed(G_CONST), _vectors(D), METRIC | {"invariance"},
         _pulled_back(lambda A, b: _speed(torch.linalg.inv(A).T @ G_CONST @ torch.linalg.inv(A)), D)),
    # the metric at the step's start: a step's length depends on its direction, so neither symmetric nor a metric
    Case("sequence_density field", sequence_density, _speed(_conformal), _vectors(D),
         frozenset({"identity", "separation", "invariance"}),
         _pulled_back(lambda A, b: _speed(_pullback_field(_conformal, A, b)), D)),
    Case("path_length euclidean", path_length, _euclidean_path, _vectors(D), METRIC | {"invariance"},
         _same(_euclidean_path, _rigid_maps(D))),
    Case("path_length constant metric", path_length, _tensor_path(G_CONST), _vectors(D), METRIC | {"invariance"},
         _pulled_back(lambda A, b: _tensor_path(torch.linalg.inv(A).T @ G_CONST @ torch.linalg.inv(A)), D)),
    # one midpoint-rule segment under a non-constant field: symmetric, but no triangle inequality
    Case("path_length field", path_length, _field_path(_conformal), _vectors(D),
         frozenset({"symmetry", "identity", "separation", "invariance"}),
         _pulled_back(lambda A, b: _field_path(_pullback_field(_conformal, A, b)), D)),
    Case("knn dense", knn, _knn("dense"), _vectors(D), METRIC | {"invariance"}, _same(_knn("dense"), _rigid_maps(D))),
    Case("knn kdtree", knn, _knn("kdtree"), _vectors(D), METRIC | {"invariance"},
         _same(_knn("kdtree"), _rigid_maps(D))),
    Case("knn blocked", knn, _knn("blocked"), _vectors(D), METRIC | {"invariance"},
         _same(_knn("blocked"), _rigid_maps(D))),
    Case("edge_lengths euclidean", TokenGraph.edge_lengths, _edge("euclidean"), _vectors(D), METRIC | {"invariance"},
         _same(_edge("euclidean"), _rigid_maps(D))),
    Case("edge_lengths fisher_rao", TokenGraph.edge_lengths, _edge("fisher_rao"), _simplex(K),
         METRIC | {"invariance"}, _same(_edge("fisher_rao"), _category_permutations(K))),
    Case("edge_lengths metric tensors", TokenGraph.edge_lengths, _edge_per_point(_conformal), _vectors(D),
         frozenset({"symmetry", "identity", "separation", "invariance"}),
         _pulled_back(lambda A, b: _edge_per_point(_pullback_field(_conformal, A, b)), D)),
    Case("edge_lengths pull-back", TokenGraph.edge_lengths, _edge_pullback(_logits), _vectors(D),
         frozenset({"symmetry", "identity", "separation", "invariance"}),
         _pulled_back(lambda A, b: _edge_pullback(_pullback_fn(A, b)), D)),
    Case("geodesic_distances euclidean", geodesic_distances, _geodesic(_EUCLIDEAN_GRAPH), _nodes(N_GRAPH),
         METRIC | {"invariance"}, _relabelled(_CLOUD, "euclidean", _geodesic, _rigid_maps(D))),
    Case("geodesic_distances fisher_rao", geodesic_distances, _geodesic(_FISHER_GRAPH), _nodes(N_GRAPH),
         METRIC | {"invariance"}, _relabelled(_ROWS, "fisher_rao", _geodesic, _category_permutations(K))),
    Case("geodesic path_length", graph_path_length, _geodesic_path_length(_EUCLIDEAN_GRAPH), _nodes(N_GRAPH),
         METRIC | {"invariance"}, _relabelled(_CLOUD, "euclidean", _geodesic_path_length, _rigid_maps(D))),
]

# ----------------------------------------------------------------------------------------------
# The properties
# ----------------------------------------------------------------------------------------------


def _distinct(x: Tensor, y: Tensor) -> bool:
    return bool((x - y).abs().max() > 1e-6)


def _symmetry(case: Case, x: Tensor, y: Tensor) -> None:
    a, b = case.distance(x, y), case.distance(y, x)
    assert case.close(a, b), f"{case.name}: d(x, y) = {a!r} but d(y, x) = {b!r}"


def _identity(case: Case, x: Tensor) -> None:
    a = case.distance(x, x)
    assert abs(a) <= case.atol, f"{case.name}: d(x, x) = {a!r}"


def _separation(case: Case, x: Tensor, y: Tensor) -> None:
    assume(_distinct(x, y))
    a = case.distance(x, y)
    assert a > 0, f"{case.name}: d(x, y) = {a!r} for x ≠ y"


def _triangle(case: Case, x: Tensor, y: Tensor, z: Tensor) -> None:
    xz, xy, yz = case.distance(x, z), case.distance(x, y), case.distance(y, z)
    assert xz <= xy + yz + case.atol + case.rtol * (xy + yz), \
        f"{case.name}: d(x, z) = {xz!r} > d(x, y) + d(y, z) = {xy!r} + {yz!r}"


def _invariance(case: Case, x: Tensor, y: Tensor, chart: Chart) -> None:
    a, b = case.distance(x, y), chart.distance(chart.map(x), chart.map(y))
    assert case.close(a, b), f"{case.name}: d(x, y) = {a!r} but {b!r} after the reparametrisation"


def check(case: Case, prop: str, *, shrink: bool = True, explicit_only: bool = False) -> None:
    """Run one property of one case under hypothesis; raises AssertionError with the falsifying example
    (the smallest one found when ``shrink``; only the case's own counterexample when ``explicit_only``)."""
    p = case.points
    drawn = {"symmetry": (_symmetry, (p, p)), "identity": (_identity, (p,)), "separation": (_separation, (p, p)),
             "triangle": (_triangle, (p, p, p)), "invariance": (_invariance, (p, p, case.charts))}
    prop_fn, strategies = drawn[prop]

    phases = (Phase.explicit,) if explicit_only else tuple(Phase) if shrink else (Phase.explicit, Phase.generate)

    @settings(database=None, deadline=None, report_multiple_bugs=False, max_examples=EXAMPLES, phases=phases)
    @given(st.tuples(*strategies))
    def run(args: tuple) -> None:
        prop_fn(case, *args)

    if case.counterexample is not None:  # tried first (Phase.explicit): a broken case fails by construction
        run = example(args=case.counterexample)(run)
    run()


@pytest.mark.parametrize("case,prop", [pytest.param(c, p, id=f"{c.name}-{p}") for c in CASES for p in sorted(c.holds)])
def test_metric_property(case: Case, prop: str) -> None:
    check(case, prop)


def test_cases_are_well_formed() -> None:
    properties = {"symmetry", "identity", "separation", "triangle", "invariance"}
    for case in CASES:
        assert case.holds <= properties, case.name
        assert ("invariance" in case.holds) == (case.charts is not None), case.name


def _public_distances() -> set[str]:
    """``module.qualname`` of every public function or method of infogeo named as a distance or a length."""
    found: set[str] = set()
    root = Path(infogeo.__file__).parent
    for path in sorted(root.rglob("*.py")):  # subpackages too (infogeo.fisher.normal, ...)
        parts = ("infogeo",) + path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            members: list[tuple[str, ast.stmt]] = [(getattr(node, "name", ""), node)]
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                members = [(f"{node.name}.{getattr(f, 'name', '')}", f) for f in node.body]
            found |= {f"{module}.{name}" for name, f in members
                      if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")
                      and ("distance" in f.name or "length" in f.name)}
    return found


def test_every_distance_has_a_case() -> None:
    covered = {f"{case.function.__module__}.{case.function.__qualname__}" for case in CASES}
    missing = _public_distances() - covered
    assert not missing, f"distance functions without a case: {sorted(missing)}"
    assert "infogeo.graph.TokenGraph.edge_lengths" in covered and "infogeo.fisher.normal.normal_distance" in covered


# ----------------------------------------------------------------------------------------------
# Each check can fail: one broken distance per property
# ----------------------------------------------------------------------------------------------


def _euclid(x: Tensor, y: Tensor) -> float:
    return float((x - y).norm())


_on_an_axis = st.tuples(st.just(0.0), st.floats(-5, 5)).map(lambda v: torch.tensor(v, dtype=F64))


def _v(*xs: float) -> Tensor:
    return torch.tensor(xs, dtype=F64)


_QUARTER_TURN = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=F64) / math.sqrt(2.0)  # rotation by 45°
_l1 = lambda x, y: float((x - y).abs().sum())  # noqa: E731

# Each broken case carries an explicit counterexample, so "the check can fail" never rests on the luck
# of a random draw (issue 27: the squared distance's triangle case once drew no counterexample).
BROKEN: list[tuple[str, Case]] = [
    ("symmetry", Case("asymmetric", _euclid, lambda x, y: _euclid(x, y) + max(float(x[0] - y[0]), 0.0),
                      _vectors(2), frozenset(), counterexample=(_v(1, 0), _v(0, 0)))),
    ("identity", Case("offset", _euclid, lambda x, y: _euclid(x, y) + 1.0, _vectors(2), frozenset(),
                      counterexample=(_v(0, 0),))),
    ("separation", Case("first coordinate only", _euclid, lambda x, y: abs(float(x[0] - y[0])), _on_an_axis,
                        frozenset(), counterexample=(_v(0, 0), _v(0, 1)))),
    ("triangle", Case("squared", _euclid, lambda x, y: _euclid(x, y) ** 2, _vectors(2), frozenset(),
                      counterexample=(_v(0, 0), _v(1, 0), _v(2, 0)))),
    ("invariance", Case("l1 under rotations", _euclid, _l1, _vectors(2), frozenset(), _same(_l1, _rigid_maps(2)),
                        counterexample=(_v(0, 0), _v(1, 1), Chart(lambda x: _QUARTER_TURN @ x, _l1)))),
]


@pytest.mark.parametrize("prop,case", [pytest.param(p, c, id=p) for p, c in BROKEN])
def test_property_check_can_fail(prop: str, case: Case) -> None:
    with pytest.raises(AssertionError, match=case.name):
        check(case, prop, shrink=False)


@pytest.mark.parametrize("prop,case", [pytest.param(p, c, id=p) for p, c in BROKEN])
def test_each_broken_case_fails_on_its_own_counterexample(prop: str, case: Case) -> None:
    """No random draw at all (the explicit phase only): the counterexample alone breaks the property."""
    with pytest.raises(AssertionError, match=case.name):
        check(case, prop, explicit_only=True)
