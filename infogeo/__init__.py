"""infogeo: the information geometry of token manifolds (seed §3.1, §3.2.2, §3.3).

Fisher metrics (:mod:`infogeo.fisher`), information density and path length
(:mod:`infogeo.density`), the graph discretisation of the token manifold
(:mod:`infogeo.graph`, :mod:`infogeo.geodesic`, :mod:`infogeo.laplacian`,
:mod:`infogeo.curvature`), the resolution-field flow (:mod:`infogeo.flow`), the implicit
attention of a selective scan (:mod:`infogeo.implicit_attention`) and the predictive density of a
causal LM (:mod:`infogeo.predictive`); argument checks shared by every package
(:mod:`infogeo.checks`). The bottom of the stack: nothing here imports ``tiling``
(docs/architecture.md); the jobs that use both live in :mod:`tiling.workflows`.
"""
__version__ = "0.1.0"
