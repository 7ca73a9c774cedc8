"""Upper bounds of TilingConfig's sizes (issue 27, item 4): checked when the configuration is made,
naming the field, before any computation (was: plan_tiles at tile_size 2**62 returned segment counts
of 0 or -2**63 without a word)."""
import pytest
import torch

from tiling.config import MAX_SIZE, MIN_RESOLUTION, TilingConfig
from tiling.policy import plan_tiles


@pytest.mark.parametrize("field,value", [("tile_size", 2 ** 62), ("tile_size", 2 ** 63), ("tile_size", MAX_SIZE + 1),
                                         ("lookback", 2 ** 62), ("calibration_levels", 2 ** 40),
                                         ("signal_channels", 2 ** 40), ("router_rank", 2 ** 40), ("s_max", 2 ** 40)])
def test_sizes_have_an_upper_bound_that_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be <= \d+, got {value}$"):
        TilingConfig(**{field: value})


def test_the_largest_tile_plans_exact_counts():
    T = MAX_SIZE
    plan = plan_tiles(torch.rand(1, 8, dtype=torch.float64), TilingConfig(tile_size=T, budget=0.5, r_min=0.25,
                                                                            causal=False))
    assert plan.segments.min() >= 1 and plan.segments.max() <= 8  # one tile of 8 tokens: no overflow


@pytest.mark.parametrize("field", ["budget", "r_min"])
@pytest.mark.parametrize("value", [1e-300, 1e-45, 2.0 ** -21])
def test_resolutions_have_a_lower_bound_so_nothing_underflows(field, value):
    """Was: a scan-scope layer at budget 1e-300 failed with 'resolution must lie in (0, 1], got values in
    [0, 0]', naming an internal tensor (float32 underflow)."""
    kw = {"budget": value, "r_min": value} if field == "budget" else {"r_min": value}
    with pytest.raises(ValueError, match=rf"^{field} must be >= 9.53674e-07"):
        TilingConfig(**kw)
    TilingConfig(budget=MIN_RESOLUTION, r_min=MIN_RESOLUTION)
