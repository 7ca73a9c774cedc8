"""The options of the analysis (``infogeo analyse``, :func:`~tiling.workflows.analysis.analyse`), defined once.

:class:`AnalysisOptions` holds every option the numbers of a report depend on; the command line's
parser, the batch fingerprint (:func:`tiling.workflows.batch.settings_of`) and the report's
``params`` all come from its fields (:mod:`tiling.options`).
"""
from __future__ import annotations

from dataclasses import dataclass

from tiling.config import MAX_SIZE, TilingConfig
from tiling.options import Options, option

__all__ = ["AnalysisOptions"]


def _show_arg(value: str) -> tuple[int, int]:
    """``"3:7"`` → (3, 7) (the command-line form of ``show``)."""
    import argparse

    try:
        layer, head = value.split(":")
        return int(layer), int(head)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:HEAD, e.g. 3:7, got {value!r}") from None


def _pair(value) -> tuple[int, int]:
    """``show`` as a (layer, head) pair of ints."""
    try:
        layer, head = value
    except (TypeError, ValueError):
        raise ValueError(f"must be a (layer, head) pair of ints, got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (layer, head)):
        raise ValueError(f"must be a (layer, head) pair of ints, got {value!r}")
    return int(layer), int(head)


@dataclass(frozen=True)
class AnalysisOptions(Options):
    """Options of the analysis of one text (every one reaches the command line and the fingerprint).

    Parameters
    ----------
    layers, heads : the layers and heads to analyse (0-based; None: all). Checked against the model
        by :func:`~tiling.workflows.analysis.analyse`.
    budget, tile_size, r_min : the tiling plan's mean-resolution budget ``c ∈ (0, 1]``, tile length and
        resolution floor ``R_min ≤ c`` (checked by :class:`~tiling.config.TilingConfig`).
    k : kNN degree of the token graphs.
    n_eigs : number of Laplace–Beltrami eigenvalues per graph.
    curvature_alpha : Ollivier–Ricci laziness ``α ∈ [0, 1)``.
    state_dim : ``N`` of the Mamba scan whose cost is counted (its width is the model's).
    max_length : truncation length in tokens (None: the model's maximum).
    show : the (layer, head) of the geodesic-distance figure (None: the head with the largest density).

    Notes
    -----
    The defaults of the plan differ from :class:`~tiling.config.TilingConfig`'s (tile 64, budget 1):
    a layer is unchanged until asked (budget 1 is plain Mamba), while the analysis exists to show
    what a plan saves on one short text, so it plans below full resolution (0.35, the real-text
    sweep's middle budget) in tiles of 16 tokens (a 128-token text gets 8 tiles, not 2). The other jobs'
    defaults and their reasons: ``docs/cli.md``.
    """

    layers: tuple[int, ...] | None = option(None, kind="indices", metavar="I,J,...",
                                            help="layers to analyse (0-based; default all)")
    heads: tuple[int, ...] | None = option(None, kind="indices", metavar="I,J,...",
                                           help="heads to analyse (0-based; default all)")
    budget: float = option(0.35, kind="float",
                           help="mean-resolution budget of the tiling policy, in (0, 1] (default 0.35)")
    tile_size: int = option(16, kind="int", low=1, high=MAX_SIZE, help="tokens per tile (default 16)")
    r_min: float = option(0.0625, kind="float", help="resolution floor, in (0, budget] (default 0.0625)")
    k: int = option(10, kind="int", low=1, high=2 ** 20, help="neighbours per token in the token graph (default 10)")
    n_eigs: int = option(10, kind="int", low=1, high=2 ** 16,
                         help="Laplace–Beltrami eigenvalues per graph (default 10)")
    curvature_alpha: float = option(0.5, kind="float", low=0.0, high=1.0, high_open=True,
                                    help="Ollivier–Ricci laziness alpha, in [0, 1) (default 0.5)")
    state_dim: int = option(16, kind="int", low=1, high=2 ** 16,
                            help="N of the Mamba scan whose cost the plan counts (default 16)")
    max_length: int | None = option(None, kind="int", low=3, high=2 ** 20,
                                    help="truncate texts to this many tokens (default: the model's maximum)")
    show: tuple[int, int] | None = option(None, kind="any", parse=_show_arg, check=_pair, metavar="LAYER:HEAD",
                                          help="layer:head of the geodesic-distance figure (default: the head with "
                                               "the largest density)")

    def check(self) -> None:
        """The plan's options as :class:`~tiling.config.TilingConfig` checks them (errors name the option)."""
        self.plan_config()

    def plan_config(self) -> TilingConfig:
        """The configuration the analysis plans with: ``budget``, ``tile_size``, ``r_min``, non-causal, in the
        scan scope (an encoder reads the whole text and the report is made after the fact: each tile's own
        density decides and the budget is met exactly, module docstring of :mod:`tiling.policy`; the costs
        are ``tiling.ops.scan_cost``'s, whose segments are ``max(1, ⌈R_i n_i⌉)``, seed 001 §3.5.1)."""
        try:
            return TilingConfig(budget=self.budget, tile_size=self.tile_size, r_min=self.r_min, causal=False,
                                scope="scan")
        except (TypeError, ValueError) as e:
            raise self.relabel(e) from None
