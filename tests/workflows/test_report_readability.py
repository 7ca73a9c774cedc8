"""A report a researcher reads without the source (issue 28): captions, definitions, columns that vary.

The page is checked as a reader meets it: the HTML parsed (every figure has a caption, every image
decodes as a PNG; rendered in headless Chromium where it is installed, every image loads), the
table's columns against the numbers of ``report.json``, the definitions' links against the
headings of ``docs/analysis.md``.
"""
from __future__ import annotations

import base64
import html.parser
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tiling.workflows.analysis import analyse, save_report, summary_table
from tiling.workflows.analysis.render import COLUMNS, DOCS, SECTIONS, _slug, captions, table, table_notes
from tiling.workflows.analysis.report import CAUSAL_FIGURES, FIGURES
from tiling.workflows.models import load_model

ROOT = Path(__file__).resolve().parents[2]
TEXT = ("Entropy measures surprise. The the the the the cat sat on the mat. Then a storm broke over the "
        "quiet harbour, and every boat strained at its rope.")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, tok = load_model()
    report = analyse(model, tok, TEXT, layers=[0, 2, 5], heads=[0, 4, 11], budget=0.35, tile_size=4, k=5, n_eigs=5,
                     progress=False)
    out = tmp_path_factory.mktemp("report") / "r"
    save_report(report, out)
    return report, out


class _Page(html.parser.HTMLParser):
    """The figures (image source, caption), the table's cells, and the definitions of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict] = []
        self.imgs: list[str] = []
        self.rows: list[list[str]] = []
        self.terms: list[str] = []
        self.links: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures.append({"id": a.get("id"), "caption": "", "img": None})
        elif tag == "img":
            self.imgs.append(a["src"])
            if self.figures:
                self.figures[-1]["img"] = a["src"]
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th", "figcaption", "dt"):
            self._in = tag
            if tag in ("td", "th"):
                self.rows[-1].append("")
            elif tag == "dt":
                self.terms.append("")
        elif tag == "a":
            self.links.append(a.get("href", ""))

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in in ("td", "th"):
            self.rows[-1][-1] += data
        elif self._in == "figcaption":
            self.figures[-1]["caption"] += data
        elif self._in == "dt":
            self.terms[-1] += data


def _page(out: Path) -> _Page:
    p = _Page()
    p.feed((out / "report.html").read_text(encoding="utf-8"))
    return p


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def test_every_figure_has_a_caption_of_one_or_two_sentences(saved):
    report, out = saved
    caps = captions(report)
    assert set(FIGURES + CAUSAL_FIGURES) <= set(caps)  # causal LMs' figures too
    assert all(1 <= _sentences(c) <= 2 for c in caps.values()), {k: _sentences(c) for k, c in caps.items()}
    page = _page(out)
    assert [f["id"] for f in page.figures] == list(FIGURES)
    for f in page.figures:
        assert f["caption"].strip() != f["id"] and len(f["caption"]) > 60 and 1 <= _sentences(f["caption"]) <= 2, f
    md = (out / "report.md").read_text(encoding="utf-8")
    for key in FIGURES:  # the Markdown page: the image, then its caption in italics
        assert re.search(rf"!\[[^\]]+\]\({key}\.png\)\n\n\*[^*]+\*", md), key


def test_every_column_varies_or_is_explained(saved):
    report, out = saved
    d = report.data
    headers, rows = table(report)
    assert len(rows) == 3
    for i, h in enumerate(headers[1:], 1):
        assert len({r[i] for r in rows}) > 1, f"column {h!r} is the same in every layer"
    # the mean resolution is the budget in every layer by construction: not a column, and the page says why
    assert [lr["tiling"]["mean_resolution"] for lr in d["layers"]] == pytest.approx([0.35] * 3, abs=1e-6)
    assert not any("mean resolution" in h for h in headers)
    notes = table_notes(report)
    assert "mean resolution R̄ is the budget 0.35 by construction" in notes[0]
    # the page says why the counted saving differs from 1 − budget, with the report's own numbers
    saved_mean = np.mean([lr["tiling"]["cost_saved"] for lr in d["layers"]])
    rec_mean = np.mean([lr["tiling"]["cost_saved_recurrence"] for lr in d["layers"]])
    assert f"FLOPs saved ({saved_mean:.0%} on average) fall short of 1 − budget = 65%" in notes[1]
    assert f"({rec_mean:.0%} saved)" in notes[1]
    # the table's numbers are those of report.json
    R = np.asarray(d["layers"][1]["tiling"]["resolution"])
    assert rows[1][headers.index("Rᵢ range (σ)")] == f"{R.min():.2f}–{R.max():.2f} (σ {R.std():.2f})"
    assert rows[2][headers.index("FLOPs saved")] == f"{d['layers'][2]['tiling']['cost_saved']:.1%}"
    page = _page(out)
    assert page.rows[0] == headers and page.rows[1:] == rows
    assert summary_table(report).splitlines()[0].split()[:3] == ["layer", "mean", "density"]


def test_every_quantity_is_defined_once_with_a_link_to_its_docs_section(saved):
    report, out = saved
    page = _page(out)
    headers = [c.header for c in COLUMNS if c.definition]
    assert page.terms == headers  # each column once
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", (ROOT / DOCS).read_text(encoding="utf-8"), re.M)}
    assert {_slug(h) for h, _ in SECTIONS.values()} <= anchors, "a definition links to a heading docs/analysis.md lacks"
    docs_links = [href for href in page.links if "analysis.md#" in href]
    assert len(docs_links) == len(headers)
    assert all(href.split("#", 1)[1] in anchors for href in docs_links)


def test_every_image_the_pages_reference_exists_and_decodes(saved):
    import matplotlib.image as mpimg

    report, out = saved
    page = _page(out)
    assert len(page.imgs) == len(FIGURES)
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        img = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img.std()) > 0  # a picture, not a blank
    md = (out / "report.md").read_text(encoding="utf-8")
    files = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(files) == len(FIGURES) and all((out / f).is_file() for f in files)


def test_every_image_loads_in_headless_chromium(saved, tmp_path):
    """The page rendered by Debian's chromium: a script marks each image with whether it loaded."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    _, out = saved
    probe = ("<script>window.addEventListener('load', () => { for (const i of document.images) "
             "i.setAttribute('data-loaded', String(i.complete && i.naturalWidth > 0)); "
             "document.body.setAttribute('data-done', '1'); });</script></body>")
    page = tmp_path / "report.html"
    page.write_text((out / "report.html").read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-done="1"' in dom, dom[-2000:]
    loaded = re.findall(r'<img[^>]*data-loaded="(true|false)"', dom)
    assert loaded == ["true"] * len(FIGURES)


def test_every_figure_has_one_drawer_in_the_pages_order():
    """``render.DRAWERS`` draws exactly the report's figure names, in the order the pages show them."""
    from tiling.workflows.analysis.render import DRAWERS

    assert tuple(DRAWERS) == FIGURES + CAUSAL_FIGURES
