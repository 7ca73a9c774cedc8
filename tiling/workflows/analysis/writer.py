"""Writing an ``infogeo analyse`` report into its folder: the JSON, the arrays, the figures and the pages.

:func:`save_report` is where a :class:`~.report.Report` (data) meets :mod:`.render` (its pages and
figures) and the folder's atomic swap (:func:`tiling.train.storage.write_folder`). The imports
run one way: this module → :mod:`.render` → :mod:`.report`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tiling.train.storage import write_folder
from .render import draw_figures, html, markdown
from .report import REPORT_FILES, Report

__all__ = ["save_report"]


def save_report(report: Report, out_dir: str | Path, *, figures: bool = True, overwrite: bool = False) -> Path:
    """Write report.json, arrays.npz, the figures, report.md and report.html into ``out_dir``.

    Parameters
    ----------
    report : the :class:`~tiling.workflows.analysis.report.Report`.
    out_dir : the folder.
    figures : draw the figures (:func:`~.render.draw_figures`).
    overwrite : replace a previous report in a non-empty ``out_dir``.

    Returns
    -------
    The path of report.html.

    Raises
    ------
    TypeError, ValueError
        ``out_dir`` cannot receive the report (:func:`tiling.train.storage.check_out_dir`): a
        non-empty ``out_dir`` is refused (``ValueError``) unless ``overwrite``.

    Notes
    -----
    The files are written into a temporary folder beside ``out_dir`` and renamed into place
    (:func:`tiling.train.storage.write_folder`): an interrupted save leaves ``out_dir`` as it was.
    With ``overwrite`` the previous report's files (:data:`~.report.REPORT_FILES`, e.g. old figures)
    are replaced or removed and every other entry is kept.
    """

    def fill(tmp: Path) -> None:
        report.to_json(tmp / "report.json")
        if report.arrays:
            np.savez_compressed(tmp / "arrays.npz", **report.arrays)
        figs = draw_figures(report, tmp) if figures else {}
        (tmp / "report.md").write_text(markdown(report, figs), encoding="utf-8")
        (tmp / "report.html").write_text(html(report, figs), encoding="utf-8")

    out = write_folder(out_dir, fill, REPORT_FILES, overwrite=overwrite, name="out_dir")
    return out / "report.html"
