"""infogeo: the information geometry of token manifolds (seed §3.1, §3.2.2, §3.3).

Fisher metrics (:mod:`infogeo.fisher`), information density and path length
(:mod:`infogeo.density`), the graph discretisation of the token manifold
(:mod:`infogeo.graph`, :mod:`infogeo.geodesic`, :mod:`infogeo.laplacian`,
:mod:`infogeo.curvature`), the resolution-field flow (:mod:`infogeo.flow`), pretrained-model
analysis (:mod:`tiling.workflows.analysis`) and the theorem experiments (:mod:`tiling.workflows.verify`).
"""
__version__ = "0.1.0"
