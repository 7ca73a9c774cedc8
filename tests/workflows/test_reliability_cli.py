"""`infogeo analyse` never loses what the user saved, never resumes under other settings, writes its
report atomically and turns every bad input into one line and exit 2 (issue 16, findings 2–4, 6, 7)."""
import io
import json
import os
import shutil
import sys

import pytest
import torch

import tiling.workflows.analysis
from tiling.workflows.analysis import REPORT_FILES, Report, save_report
from tiling.workflows.cli import main
from infogeo.fisher import effective_dimension
from infogeo.laplacian import laplacian_spectrum
from tiling.workflows.models import default_model_path

from analyse_runs import FAST, batch_run, one_line_error, snapshot

TEXT = "Geodesics bend around dense tokens. Filler filler filler."
pytestmark = pytest.mark.usefixtures("cached_model_loading")


@pytest.fixture
def no_analysis(monkeypatch):
    """The analysis must not run: a refusal comes before the expensive part."""
    def boom(*a, **k):
        raise AssertionError("the analysis ran although the arguments were refused")

    monkeypatch.setattr(tiling.workflows.analysis, "analyse", boom)


# ---- finding 2: saved work is never erased --------------------------------------------------
def test_batch_without_resume_refuses_an_existing_results_file(capsys, tmp_path, no_analysis):
    src = tmp_path / "t.txt"
    src.write_text("one text\nanother\n")
    out = tmp_path / "b"
    out.mkdir()
    (out / "results.jsonl").write_text('{"index": 0, "sha256": "x"}\n')
    before = snapshot(out)
    one_line_error(capsys, main(["analyse", "--file", str(src), "--batch", "--out", str(out), *FAST]),
                   "already holds results.jsonl", "--resume", "--overwrite")
    assert snapshot(out) == before


def test_report_into_a_non_empty_folder_is_refused(capsys, tmp_path, no_analysis):
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    one_line_error(capsys, main(["analyse", TEXT, "--out", str(out), *FAST]), "--out", "not empty", "--overwrite")
    assert (out / "report.md").read_text() == "my own notes"


def test_overwrite_replaces_the_report_keeps_other_files_and_drops_stale_figures(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["analyse", TEXT, "--out", str(out), *FAST]) == 0
    assert (out / "density_heatmap.png").is_file()
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("1,2")
    old_json = (out / "report.json").read_bytes()
    assert main(["analyse", "A different text entirely, short.", "--out", str(out), "--no-figures", "--overwrite",
                 *FAST]) == 0
    names = set(os.listdir(out))
    assert names == {"report.json", "arrays.npz", "report.md", "report.html", "notes.txt", "mine"}
    assert (out / "notes.txt").read_text() == "keep me" and (out / "mine" / "data.csv").read_text() == "1,2"
    assert (out / "report.json").read_bytes() != old_json
    assert json.loads((out / "report.json").read_text())["text"]["n_chars"] == len("A different text entirely, short.")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_report_folder_keeps_the_umask_mode(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["analyse", TEXT, "--out", str(out), "--no-figures", *FAST]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0o700


# ---- finding 3: resumes that check their settings --------------------------------------------
@pytest.mark.parametrize("change, flag", [(["--budget", "0.5"], "--budget"), (["--layers", "1"], "--layers"),
                                          (["--model", "MODEL"], "--model"), (["--k", "3"], "--k")])
def test_resume_with_other_settings_is_refused(capsys, tmp_path, change, flag, monkeypatch):
    out, base = batch_run(tmp_path, "First text about curvature.\nSecond text here.\n", "--no-figures")
    assert main(base) == 0
    before = snapshot(out)
    change = [str(default_model_path()) if c == "MODEL" else c for c in change]
    monkeypatch.setattr(tiling.workflows.analysis, "analyse", lambda *a, **k: pytest.fail("recomputed under other settings"))
    msg = one_line_error(capsys, main(base + ["--resume"] + change), "--resume", flag, "there", "now")
    assert "results.jsonl" in msg
    assert snapshot(out) == before


def test_resume_counts_and_keeps_unparsable_lines(capsys, tmp_path):
    out, base = batch_run(tmp_path, "First text about curvature.\nSecond text here.\nThird one, a little longer.\n",
                          "--no-figures")
    assert main(base) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    torn = lines[2][:50]
    (out / "results.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n" + torn)
    capsys.readouterr()
    assert main(base + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "2 line(s)" in captured.err and "do not parse" in captured.err and "unparsable" in captured.err
    assert "1 new, 2 skipped" in captured.out
    assert (out / "results.jsonl.unparsable").read_text() == "{not json\n" + torn + "\n"
    done = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in done) == [0, 1, 2] and all("settings" in r for r in done)


def test_resume_of_an_older_file_without_settings_is_refused(capsys, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("First text about curvature.\n")
    out = tmp_path / "b"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"index": 0, "sha256": "0" * 64, "report": {}}) + "\n")
    one_line_error(capsys, main(["analyse", "--file", str(src), "--batch", "--resume", "--out", str(out), *FAST]),
                   "none recorded")


def test_overwrite_starts_the_results_file_again(capsys, tmp_path):
    out, base = batch_run(tmp_path, "First text about curvature.\n", "--no-figures")
    assert main(base) == 0
    assert main(base + ["--budget", "0.5", "--overwrite"]) == 0
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["settings"]["budget"] == 0.5
    one_line_error(capsys, main(base + ["--resume", "--overwrite"]), "not both")


def test_batch_skips_a_bad_line_and_says_so(capsys, tmp_path):
    out, base = batch_run(tmp_path, "First text about curvature.\n\x00\x01\nThird text, fine.\n",  # line 2: no token
                          "--no-figures")
    code = main(base)
    one_line_error(capsys, code, "1 of 3 texts", "line 2", "--resume")
    assert [json.loads(x)["index"] for x in (out / "results.jsonl").read_text().splitlines()] == [0, 2]


# ---- finding 4: atomic writes, --out checked first ----------------------------------------
def test_interrupted_save_leaves_the_previous_report_untouched(capsys, tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert main(["analyse", TEXT, "--out", str(out), *FAST]) == 0
    (out / "mine.txt").write_text("mine")
    before = snapshot(out)
    real = tiling.workflows.analysis.writer.draw_figures

    def interrupted(report, folder):
        real(report, folder)  # the new figures exist in the temporary folder ...
        raise KeyboardInterrupt  # ... when the user presses Ctrl-C

    monkeypatch.setattr(tiling.workflows.analysis.writer, "draw_figures", interrupted)
    assert main(["analyse", "Another text, so the files would differ.", "--out", str(out), "--overwrite", *FAST]) == 130
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # the temporary folder is gone


def test_stale_temporary_folders_of_a_killed_save_are_removed(capsys, tmp_path):
    stale = tmp_path / ".r.infogeo-tmp-abc123"
    stale.mkdir()
    (stale / "report.json").write_text("{")
    assert main(["analyse", TEXT, "--out", str(tmp_path / "r"), "--no-figures", *FAST]) == 0
    assert not stale.exists()


def test_a_folder_renamed_aside_by_a_killed_save_is_named_not_deleted(capsys, tmp_path, no_analysis):
    aside = tmp_path / ".r.infogeo-old-xyz"
    aside.mkdir()
    (aside / "notes.txt").write_text("the user's")
    one_line_error(capsys, main(["analyse", TEXT, "--out", str(tmp_path / "r"), *FAST]), "interrupted", str(aside))
    assert (aside / "notes.txt").read_text() == "the user's"


@pytest.mark.parametrize("where", ["file", "under-file", "nul"])
def test_bad_out_is_refused_before_the_analysis(capsys, tmp_path, no_analysis, where):
    f = tmp_path / "f"
    f.write_text("x")
    out = {"file": str(f), "under-file": str(f / "sub"), "nul": str(tmp_path / "a\x00b")}[where]
    one_line_error(capsys, main(["analyse", TEXT, "--out", out, *FAST]), "--out")
    assert f.read_text() == "x"


def test_report_save_api_refuses_and_overwrites(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["analyse", TEXT, "--out", str(out), "--no-figures", *FAST]) == 0
    report = Report.load(out)
    with pytest.raises(ValueError, match="out_dir .* not empty.*overwrite=True"):
        save_report(report, out, figures=False)
    assert save_report(report, out, figures=False, overwrite=True) == out.resolve() / "report.html"
    assert set(os.listdir(out)) <= set(REPORT_FILES)


# ---- finding 6: one line and exit 2 for every class of bad input ----------------------------
def test_non_utf8_stdin(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait"), encoding="utf-8"))
    one_line_error(capsys, main(["analyse", "--file", "-", "--out", str(tmp_path / "s"), *FAST]),
                   "standard input", "not valid UTF-8", "0xe9")


def test_non_utf8_text_argument(capsys, tmp_path):
    text = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    one_line_error(capsys, main(["analyse", text, "--out", str(tmp_path / "s"), *FAST]), "TEXT", "0xe9")


def test_non_utf8_file(capsys, tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"r\xe9sum\xe9 of the text")
    one_line_error(capsys, main(["analyse", "--file", str(f), "--out", str(tmp_path / "s"), *FAST]),
                   "--file", "not valid UTF-8")


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    """Copies of the bundled model's small files with broken weights: truncated, garbage, empty."""
    src = default_model_path()
    root = tmp_path_factory.mktemp("models")
    raw = (src / "model.safetensors").open("rb").read(200_000)
    out = {}
    for name, data in (("truncated", raw), ("garbage", b"\x07not a safetensors file"), ("empty", b"")):
        d = root / name
        d.mkdir()
        for f in src.iterdir():
            if f.is_file() and f.name != "model.safetensors":
                shutil.copy(f, d / f.name)
        (d / "model.safetensors").write_bytes(data)
        out[name] = d
    return out


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors(capsys, tmp_path, broken_models, kind):
    one_line_error(capsys, main(["analyse", TEXT, "--model", str(broken_models[kind]), "--out", str(tmp_path / "o"),
                                 *FAST]), "--model", "weights cannot be read")


def test_max_length_above_the_models_positions(capsys, tmp_path):
    one_line_error(capsys, main(["analyse", TEXT, "--max-length", "100000", "--out", str(tmp_path / "o"), *FAST]),
                   "--max-length 100000", "512 positions")


@pytest.fixture(scope="module")
def degenerate_model(tmp_path_factory):
    """A tiny BERT whose layer 0 has zero query and key maps: every attention row of it is uniform."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("degenerate")
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64,
                                 max_position_embeddings=64))
    with torch.no_grad():
        att = model.encoder.layer[0].attention.self
        for lin in (att.query, att.key):
            lin.weight.zero_()
            lin.bias.zero_()
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True).save_pretrained(folder)
    return folder


def test_degenerate_attention_head(capsys, tmp_path, degenerate_model):
    one_line_error(capsys, main(["analyse", TEXT, "--model", str(degenerate_model), "--out", str(tmp_path / "o"),
                                 "--layers", "0", "--k", "4", "--n-eigs", "3", "--quiet"]),
                   "layer 0 head 0", "coincident points")
    # the healthy layer of the same model is analysed
    assert main(["analyse", TEXT, "--model", str(degenerate_model), "--out", str(tmp_path / "ok"), "--layers", "1",
                 "--k", "4", "--n-eigs", "3", "--quiet", "--no-figures"]) == 0


def test_degenerate_point_cloud():
    for pts in (torch.zeros(10, 3, dtype=torch.float64), torch.ones(6, 2, dtype=torch.float64)):
        with pytest.raises(ValueError, match="points_or_graph.*coincident"):
            laplacian_spectrum(pts, n_eigs=3)
    with pytest.raises(ValueError, match="bandwidth"):
        laplacian_spectrum(torch.randn(10, 2, dtype=torch.float64), n_eigs=3, bandwidth=1e-200)


# ---- finding 7: smaller things --------------------------------------------------------------
def test_report_load_names_the_broken_file(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["analyse", TEXT, "--out", str(out), "--no-figures", *FAST]) == 0
    raw = (out / "report.json").read_bytes()
    (out / "report.json").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"report\.json.*truncated or corrupt"):
        Report.load(out)
    (out / "report.json").write_bytes(raw)
    (out / "arrays.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match=r"arrays\.npz.*cannot be read"):
        Report.load(out)
    with pytest.raises(ValueError, match="holds no report.json"):
        Report.load(tmp_path)


def test_unreadable_results_file_is_named(capsys, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("First text about curvature.\n")
    out = tmp_path / "b"
    (out / "results.jsonl").mkdir(parents=True)  # a folder where the results file should be
    one_line_error(capsys, main(["analyse", "--file", str(src), "--batch", "--resume", "--out", str(out), *FAST]),
                   "results file", "results.jsonl")


def test_effective_dimension_refuses_an_indefinite_matrix():
    G = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)  # (tr G)² / ‖G‖² = 0 would be reported
    with pytest.raises(ValueError, match="G must be positive semi-definite"):
        effective_dimension(G)
    assert float(effective_dimension(torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)))) == 2.0
    assert float(effective_dimension(G, assume_psd=True)) == 0.0  # the caller vouches: no check


def test_a_text_of_unknown_tokens_warns(tmp_path, capsys):
    code = main(["analyse", "\U0001F600\U0001F601 \U0001F602\U0001F603 \U0001F604", "--out", str(tmp_path / "u"),
                 "--no-figures", *FAST])
    err = capsys.readouterr().err
    assert code == 0 and "unknown token [UNK]" in err, err
