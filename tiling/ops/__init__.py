"""Functional resolution-adaptive selective scan (seed 001 §3.2–3.4) and its cost (seed 000 §3.5.1).

* :func:`adaptive_selective_scan` — the op (C++/CUDA kernels, autograd).
* :func:`adaptive_selective_scan_ref` — readable float64 reference defining the semantics.
* :func:`scan_cost` — exact counts of exponentials and multiply-adds.
* :func:`layer_cost`, :func:`block_unit_costs` — multiply-adds of the whole block (both scopes).
* :func:`segment_counts`, :func:`tile_lengths` — the tiling of a sequence into segments.
* :func:`kernel_available` — whether the op runs a compiled kernel on a device (else the reference).
"""
from tiling._build import kernel_available
from tiling.ops.cost import block_unit_costs, layer_cost, scan_cost, segment_counts, tile_lengths
from tiling.ops.reference import adaptive_selective_scan_ref
from tiling.ops.scan import adaptive_selective_scan

__all__ = [
    "adaptive_selective_scan", "adaptive_selective_scan_ref", "block_unit_costs", "kernel_available", "layer_cost",
    "scan_cost", "segment_counts", "tile_lengths",
]
