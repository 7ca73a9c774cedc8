"""The attention geometry of a pretrained model, end to end (``infogeo analyse``).

Four modules; :mod:`.report` imports none of the others:

* :mod:`.compute`: :func:`analyse`, the measurement (attention-row geometry, pulled-back metric,
  token graphs, spectra, curvature, the tiling plan of ``tiling.policy.plan_tiles``), building a report;
* :mod:`.report`: :class:`Report`, data only: the versioned JSON document (:data:`SCHEMA`,
  :data:`SCHEMA_VERSION`) with its arrays, load, summary rows and findings;
* :mod:`.render` (imports :mod:`.report`): the plain-text table, the Markdown and HTML pages and
  the figures of a report, one drawer per figure;
* :mod:`.writer` (imports both): :func:`save_report`, the report's folder, written atomically.
"""
from __future__ import annotations

from .compute import analyse
from .render import summary_table
from .report import CAUSAL_FIGURES, FIGURES, REPORT_FILES, SCHEMA, SCHEMA_VERSION, Report
from .writer import save_report
# private helpers that the tests and scripts/bench_analyse.py check against independent references
from .compute import _forward, _pullback  # noqa: F401
from .report import _token_density  # noqa: F401

__all__ = ["CAUSAL_FIGURES", "FIGURES", "REPORT_FILES", "SCHEMA", "SCHEMA_VERSION", "Report", "analyse", "save_report",
           "summary_table"]
