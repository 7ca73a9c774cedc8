"""Regressions of the API fuzzer's findings (issue 16): each call once raised a torch-internal
error, an IndexError/ZeroDivisionError/OverflowError, or returned NaN/Inf; now it returns a finite
value or raises ValueError/TypeError naming the argument."""
import math

import numpy as np
import pytest
import torch

from infogeo import curvature, fisher, graph, laplacian
from tiling import metrics, modules, ops
from tiling.config import TilingConfig

F64 = torch.float64
x5 = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: graph.knn(x5.to("meta"), 2), ValueError, "x is on meta"),
    (lambda: graph.knn(x5.half(), 2), TypeError, "x must be float32 or float64"),
    (lambda: graph.knn(x5[:, :0], 2), ValueError, "x must have at least one coordinate"),
    (lambda: graph.knn(x5 * 1e300, 2), ValueError, "x has coordinates up to"),
    (lambda: laplacian.laplacian_spectrum([[0.0]], n_eigs=1), TypeError, "lap_or_points must be"),
    (lambda: laplacian.default_bandwidth(graph.TokenGraph.from_points(x5, k=2), k=2 ** 62), None, None),
    (lambda: fisher.normal_metric(torch.ones(4, dtype=F64), torch.ones(0, dtype=F64)), ValueError,
     "mu and sigma must have broadcastable shapes"),
    (lambda: fisher.diag_normal_metric(torch.zeros(1, 2, dtype=F64), torch.full((1, 2), 1e-310, dtype=F64)),
     ValueError, "sigma must be >="),
    (lambda: fisher.metric_inverse(torch.eye(2, dtype=torch.float16), 1e-3), TypeError, "G must be float32"),
    (lambda: fisher.metric_inverse(torch.full((1, 1, 1), 1e-310, dtype=F64), 0), ValueError,
     "inverse of G \\+ eps·I overflows float64 for eps = 0"),  # found by test_fuzz_api_large: a silent inf
    (lambda: fisher.categorical_metric(torch.ones(0, 3, dtype=F64)), None, None),
    (lambda: fisher.monte_carlo_fisher(lambda x, t: x.sum() * t.sum(), lambda t, n, g: torch.zeros(n),
                                       torch.zeros(0, dtype=F64), 2), ValueError, "theta must hold"),
    *[(lambda mask=mask: fisher.attention_row_metric(torch.tensor([[1e300, -0.5], [0.7, -0.9]], dtype=F64),
                                                      torch.tensor([[0.4, 0.8], [1e300, 0.4], [0.6, -0.9]], dtype=F64),
                                                      scale=0.5, mask=mask),
       ValueError, r"K \(times scale 0.5\) and q are too large")  # found by test_fuzz_api_large: named no argument
      for mask in (None, torch.tensor([[True, True, False], [True, True, True]]))],
    (lambda: laplacian.laplacian(x5, bandwidth="x"), TypeError, "bandwidth must be a real number"),  # fuzz: torch's message
    (lambda: metrics.information_density(torch.rand(4, dtype=F64), 2, ref="x"), TypeError, "ref must be a real number"),
    *[(lambda th=th: fisher.empirical_fisher(lambda x, t: -0.5 * (x - t[0]) ** 2, torch.ones(4, dtype=F64), th),
       ValueError, "theta must hold at least one parameter")  # found by test_fuzz_api_large: an IndexError
      for th in (torch.zeros(0, dtype=F64), torch.zeros(0, 2, dtype=F64), torch.zeros(3, 0, dtype=F64))],
    (lambda: fisher.monte_carlo_fisher(lambda x, t: -0.5 * ((x - t[0]) / t[1]) ** 2 - t[1].log(),
                                       lambda t, n, g: t[0] + t[1] ** 2 * torch.randn(n, generator=g, dtype=F64),
                                       torch.tensor([0.0, 1e300], dtype=F64), 4, generator=torch.Generator().manual_seed(0)),
     ValueError, "sampler returned NaN/Inf samples"),
    (lambda: fisher.pullback_metric(lambda h: h @ torch.ones(5, 3, dtype=F64).T, torch.ones(2, 4, dtype=F64)),
     ValueError, r"fn must accept one token of h, a tensor of shape \(d,\) = \(4,\)"),
    (lambda: modules.ratio_loss(torch.ones(1, 3, dtype=torch.bool), torch.full((1, 3), 0.5), 0.0), ValueError,
     "budget must lie in"),
    (lambda: modules.ratio_loss(torch.ones(1, 0, dtype=torch.bool), torch.ones(1, 0), 0.5), ValueError,
     "non-empty"),
    (lambda: modules.linear_density(torch.ones(1, 2, 3), torch.ones(3, 3, dtype=F64), torch.ones(2, 1),
                                    torch.ones(2), 1.0), TypeError, "dtype"),
    (lambda: modules.linear_density(torch.ones(1, 1, 1), torch.ones(3, 1), torch.ones(2, 0), torch.ones(2), 1.0),
     ValueError, "dt_weight must have shape"),  # a fuzz case: an empty dimension of dt_weight
    (lambda: modules.TokenRouter(4)(torch.full((1, 3, 4), float("nan"))), ValueError, "x contains"),
    (lambda: modules.TokenRouter(4, rank=5), ValueError, "rank must be <= 4"),
    (lambda: modules.TiledMamba(4, tiling=TilingConfig(boundaries="token", router_rank=8)), ValueError,
     "router_rank must be <= 4"),
    (lambda: modules.layout_from_boundaries(torch.ones(0, 3, dtype=torch.bool)), ValueError, "boundary must have"),
    (lambda: ops.tile_lengths(2 ** 62, 1), ValueError, "tiles"),
    (lambda: ops.scan_cost(8, 4, None, float("inf"), 4, 2), TypeError, "state_dims must be an int"),
    (lambda: ops.segment_counts([0.5], torch.tensor([4])), TypeError, "resolution must be a torch.Tensor"),
    (lambda: ops.block_unit_costs(d_model=4, d_state=4, d_inner=8, dt_rank=None), TypeError, "dt_rank"),
    (lambda: curvature.node_curvature("x", graph.TokenGraph.from_points(x5, k=2)), TypeError, "edge_curv"),
    (lambda: modules.TiledMamba(4, d_state=2 ** 62), ValueError, "d_state"),
])
def test_fuzzer_findings(call, exc, match):
    if exc is None:
        out = call()
        assert np.isfinite(np.asarray(out if not isinstance(out, torch.Tensor) else out.numpy())).all()
        return
    with pytest.raises(exc, match=match):
        call()


def test_values_that_overflowed_inside_are_exact_now():
    G = 1e300 * torch.eye(3, dtype=F64)
    assert float(fisher.effective_dimension(G)) == pytest.approx(3.0)  # (Σλ)²/Σλ² is scale-free
    d = fisher.normal_distance(torch.tensor([1e300], dtype=F64), torch.ones(1, dtype=F64),
                               torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))
    # 2√2·asinh(|Δμ|/(2√2)) for equal σ = 1: finite, ≈ 2√2·log(|Δμ|/√2)
    assert float(d) == pytest.approx(2 * math.sqrt(2) * (math.log(1e300 / math.sqrt(2))), rel=1e-12)


def test_tiled_mamba_names_its_input():
    layer = modules.TiledMamba(4, d_state=2, tiling=TilingConfig(tile_size=2, budget=0.5, scope="block")).double()
    x = torch.randn(1, 6, 4, dtype=F64)
    x[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="hidden_states contains 1 NaN"):
        layer(x)
    with pytest.raises(ValueError, match="hidden_states .* made the block overflow"):
        layer(torch.full((1, 6, 4), 1e300, dtype=F64))
    state = layer.eval().allocate_inference_state(1)
    with pytest.raises(ValueError, match="hidden_states contains"):
        layer.step(torch.full((1, 4), float("inf"), dtype=F64), state)
    with pytest.raises(TypeError, match="budget must be a float"):
        layer(torch.randn(1, 6, 4, dtype=F64), budget="x")
