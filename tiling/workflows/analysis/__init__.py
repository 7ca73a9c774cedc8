"""The attention geometry of a pretrained model, end to end (``infogeo analyse``).

Three modules, in the order data flows:

* :mod:`.compute`: :func:`analyse`, the measurement (attention-row geometry, pulled-back metric,
  token graphs, spectra, curvature, the tiling plan);
* :mod:`.report`: :class:`Report`, the versioned JSON document (:data:`SCHEMA`,
  :data:`SCHEMA_VERSION`) with its arrays, load/save, summary rows and findings;
* :mod:`.render`: the Markdown and HTML pages and the figures of a report.
"""
from __future__ import annotations

from .compute import analyse
# private helpers that tests and scripts/bench_analyse.py check against independent references
from .compute import _forward, _pullback, _token_density  # noqa: F401
from .report import CAUSAL_FIGURES, FIGURES, REPORT_FILES, SCHEMA, SCHEMA_VERSION, Report

__all__ = ["CAUSAL_FIGURES", "FIGURES", "REPORT_FILES", "SCHEMA", "SCHEMA_VERSION", "Report", "analyse"]
