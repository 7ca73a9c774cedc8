"""tiling: resolution-adaptive Mamba scans (seed §3.2–3.5).

``tiling.ops`` holds the functional adaptive selective scan and its cost model,
``tiling.policy`` turns information density into per-tile resolution,
``tiling.modules`` the trainable :class:`~tiling.modules.TiledMamba` layer.
"""
__version__ = "0.1.0"
