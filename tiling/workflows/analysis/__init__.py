"""The attention geometry of a pretrained model, end to end (``infogeo analyse``).

Three modules, each importing only the ones after it:

* :mod:`.compute`: :func:`analyse`, the measurement (attention-row geometry, pulled-back metric,
  token graphs, spectra, curvature, the tiling plan of ``tiling.policy.plan_tiles``);
* :mod:`.report`: :class:`Report`, the versioned JSON document (:data:`SCHEMA`,
  :data:`SCHEMA_VERSION`) with its arrays, load/save, summary rows and findings;
* :mod:`.render`: the Markdown and HTML pages and the figures of a report.
"""
from __future__ import annotations

from .compute import analyse
from .report import CAUSAL_FIGURES, FIGURES, REPORT_FILES, SCHEMA, SCHEMA_VERSION, Report
# private helpers that the tests and scripts/bench_analyse.py check against independent references
from .compute import _forward, _pullback  # noqa: F401
from .report import _token_density  # noqa: F401

__all__ = ["CAUSAL_FIGURES", "FIGURES", "REPORT_FILES", "SCHEMA", "SCHEMA_VERSION", "Report", "analyse"]
