"""`infogeo analyse` command line: bad input (exit 2, one line, no traceback), end to end on the
bundled model, batch mode with --resume."""
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tiling.workflows.analysis import SCHEMA_VERSION
from tiling.workflows.cli import main

SHORT = "Geodesics bend. Filler filler filler filler."
FAST = ["--layers", "0", "--heads", "0", "--k", "4", "--n-eigs", "3", "--tile-size", "4", "--quiet"]


pytestmark = pytest.mark.usefixtures("cached_model_loading")


def _one_line_error(capsys, code, match):
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("infogeo: error:"), err
    assert "Traceback" not in err
    assert match in err, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["analyse", ""], "empty"),
        (["analyse", "   \n\t"], "empty"),
        (["analyse"], "no text given"),
        (["analyse", "hi", "--budget", "0"], "--budget must lie in (0, 1]"),
        (["analyse", "hi", "--budget", "1.5"], "--budget must lie in (0, 1]"),
        (["analyse", "hi", "--budget", "-0.2"], "--budget must lie in (0, 1]"),
        (["analyse", "hi", "--budget", "nan"], "--budget"),
        (["analyse", "hi", "--budget", "lots"], "expected a number"),
        (["analyse", "hi", "--budget", "0.05"], "--r-min must be <= budget"),
        (["analyse", "hi", "--r-min", "0"], "--r-min must lie in (0, 1]"),
        (["analyse", "hi", "--tile-size", "0"], "--tile-size"),
        (["analyse", "hi", "--threads", "0"], "--threads"),
        (["analyse", "hi", "--layers", "x"], "integer indices"),
        (["analyse", "hi", "--resume"], "--resume needs --batch"),
        (["analyse", "hi", "--file", "x.txt"], "either TEXT or --file"),
        (["analyse", "hi", "--device", "tpu"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        ([], "no command"),
    ],
)
def test_bad_arguments(capsys, argv, match):
    _one_line_error(capsys, main(argv), match)


def test_unreadable_and_empty_files(capsys, tmp_path):
    _one_line_error(capsys, main(["analyse", "--file", str(tmp_path / "missing.txt")]), "cannot read --file")
    _one_line_error(capsys, main(["analyse", "--file", str(tmp_path)]), "cannot read --file")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    _one_line_error(capsys, main(["analyse", "--file", str(tmp_path / "bin.txt")]), "cannot read --file")
    (tmp_path / "blank.txt").write_text("  \n\n \n")
    _one_line_error(capsys, main(["analyse", "--file", str(tmp_path / "blank.txt")]), "empty")
    _one_line_error(capsys, main(["analyse", "--file", str(tmp_path / "blank.txt"), "--batch"]), "no non-empty line")


def test_bad_model_folders(capsys, tmp_path):
    _one_line_error(capsys, main(["analyse", "hi", "--model", str(tmp_path / "nope")]), "does not exist")
    (tmp_path / "config.json").write_text("{}")
    _one_line_error(capsys, main(["analyse", "hi", "--model", str(tmp_path)]), "no *.safetensors weights")
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_error(capsys, main(["analyse", "hi", "--model", str(f)]), "not a folder")


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--layers", "6"], "unknown layer index 6"),
        (["--layers", "0,-1"], "unknown layer index -1"),
        (["--heads", "12"], "unknown head index 12"),
        (["--show", "2:40"], "--show 2:40"),
    ],
)
def test_unknown_layer_or_head(capsys, flags, match, tmp_path):
    _one_line_error(capsys, main(["analyse", "hi there", "--out", str(tmp_path), *flags]), match)


def test_bad_input_via_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tiling.workflows.cli", "analyse", "   "], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["infogeo: error: the text is empty or whitespace only"]
    proc = subprocess.run([sys.executable, "-m", "tiling.workflows.cli", "analyse", "hi", "--model", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "config.json" in proc.stderr


def test_end_to_end_on_the_bundled_model(capsys, tmp_path):
    out = tmp_path / "rep"
    code = main(["analyse", SHORT, "--out", str(out), "--summary", "--layers", "0,5", "--heads", "1,7",
                 "--budget", "0.5", "--tile-size", "4", "--k", "5", "--n-eigs", "4", "--quiet"])
    assert code == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-1].startswith(f"report written to {out / 'report.html'}")
    assert stdout[0].split()[:3] == ["layer", "mean", "density"] and len(stdout) == 1 + 2 + 1
    d = json.loads((out / "report.json").read_text())
    n = d["text"]["n_tokens"]
    assert d["params"]["budget"] == 0.5 and [lr["layer"] for lr in d["layers"]] == [0, 5]
    with np.load(out / "arrays.npz") as z:
        for li in (0, 5):
            for h in (1, 7):
                P, D = z[f"attention_L{li}_H{h}"], z[f"geodesic_L{li}_H{h}"]
                assert np.isfinite(P).all() and np.isfinite(D).all()
                np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)  # attention rows sum to one
                np.testing.assert_allclose(D, D.T, atol=1e-6)  # distances symmetric
    for lr in d["layers"]:
        t = lr["tiling"]
        R = np.array(t["resolution"])
        assert ((R >= d["params"]["r_min"]) & (R <= 1)).all() and len(R) == math.ceil(n / 4)
        seg = sum(max(1, math.ceil(r * tl["length"] - 1e-9)) for r, tl in zip(R, t["tiles"]))
        assert t["cost"]["segments"] == seg  # cost matches the plan
        ops = lambda c: c["exp_total"] + c["madd_total"]
        assert t["cost_saved"] == pytest.approx(1 - ops(t["cost"]) / ops(t["cost_full"]))
        assert all(math.isfinite(v) for v in lr["pullback"]["density"] + lr["head_mean"]["edge_curvature"])
    for f in ("report.md", "report.html", "density_heatmap.png", "resolution_plan.png"):
        assert (out / f).is_file()


def test_batch_streams_and_resumes(capsys, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("First text about curvature.\n\nSecond text, rather dull dull dull.\nThird one here.\n")
    out = tmp_path / "b"
    assert main(["analyse", "--file", str(src), "--batch", "--out", str(out), "--no-figures", *FAST]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["index"] for r in recs] == [0, 2, 3]  # line numbers of the non-empty lines
    assert all(r["report"]["schema_version"] == SCHEMA_VERSION and len(r["summary"]) == 1 for r in recs)
    assert all(r["report"]["params"] == {k: v for k, v in r["settings"].items() if k != "model"} for r in recs)
    assert "3 new, 0 skipped" in capsys.readouterr().out
    # simulate an interrupted run: the last text lost, a torn half line left behind
    (out / "results.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    assert main(["analyse", "--file", str(src), "--batch", "--resume", "--out", str(out), "--no-figures", *FAST]) == 0
    assert "1 new, 2 skipped" in capsys.readouterr().out
    done = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]  # the torn line is gone
    assert [r["index"] for r in done] == [0, 2, 3]
    assert done[2]["report"]["text"]["n_chars"] == len("Third one here.")


def test_stdin_text(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Text from standard input, read whole."))
    assert main(["analyse", "--file", "-", "--out", str(tmp_path / "s"), "--no-figures", *FAST]) == 0
    d = json.loads((tmp_path / "s" / "report.json").read_text())
    assert d["name"] == "stdin" and d["text"]["n_chars"] == len("Text from standard input, read whole.")


def test_decoder_model_folder(capsys, tmp_path):
    """--model with a (tiny, random) causal decoder: attention geometry and plan, no pull-back."""
    import torch
    from transformers import AutoTokenizer, OPTConfig, OPTModel

    from tiling.workflows.models import default_model_path

    folder = tmp_path / "opt"
    torch.manual_seed(0)
    cfg = OPTConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, ffn_dim=64, vocab_size=30522,
                    max_position_embeddings=64, word_embed_proj_dim=32)
    OPTModel(cfg).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True).save_pretrained(folder)
    out = tmp_path / "r"
    assert main(["analyse", SHORT, "--model", str(folder), "--out", str(out), "--no-figures", "--quiet",
                 "--k", "4", "--n-eigs", "3", "--tile-size", "4"]) == 0
    assert "infogeo: warning: pulled-back metric skipped: the attention maps are causal" in capsys.readouterr().err
    d = json.loads((out / "report.json").read_text())
    assert (d["model"]["n_layers"], d["model"]["n_heads"]) == (2, 2)
    assert all(lr["pullback"] is None and lr["tiling"]["density_source"] == "attention" for lr in d["layers"])
    with np.load(out / "arrays.npz") as z:
        P = z["attention_L1_H1"]
        assert np.triu(P, 1).max() < 1e-30  # causal rows
        np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)
        # the plan used the mean over heads of the attention density (squared Fisher–Rao speed)
        rows = [z[f"attention_L0_H{h}"].astype(np.float64) for h in (0, 1)]
    speed2 = [(2 * np.arccos(np.clip(np.sqrt(R[1:] * R[:-1]).sum(-1) / np.sqrt(R[1:].sum(-1) * R[:-1].sum(-1)),
                                     -1, 1))) ** 2 for R in rows]
    rho = np.mean(speed2, axis=0)
    tok = np.array(d["layers"][0]["tiling"]["token_density"])
    np.testing.assert_allclose(tok[1:-1], 0.5 * (rho[:-1] + rho[1:]), rtol=1e-3, atol=1e-6)


# ---- one command: every job a subcommand (issue 26, item 3) ---------------------------------------
@pytest.mark.parametrize("command", ["analyse", "verify", "evaluate", "generate", "train", "corpus", "bench"])
def test_every_subcommand_has_help(capsys, command):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--" in out, out[:200]


def test_the_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("analyse", "verify", "evaluate", "generate", "train", "corpus", "bench"):
        assert command in out


@pytest.mark.parametrize("argv, match", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["bench", "frobnicate"], "unknown bench 'frobnicate'"),
    (["evaluate", "bundled:full"], "CHECKPOINT and --text-file are required"),
    (["evaluate", "bundled:full", "--text-file", "x", "--budget", "2"], "--budget must lie in (0, 1]"),
    (["generate", "bundled:full"], "--prompt"),
    (["generate", "bundled:full", "--prompt", "x", "--top-k", "0"], "--top-k must lie in [1, 256]"),
    (["verify", "--seed", "-1"], "--seed must be >= 0"),
    (["verify", "--seed", "x"], "expected an integer"),
    (["analyse", "hi", "--curvature-alpha", "1"], "--curvature-alpha must lie in [0, 1)"),
    (["analyse", "hi", "--state-dim", "0"], "--state-dim must lie in [1, 65536]"),
])
def test_bad_subcommands_and_values_exit_2_in_one_line(capsys, argv, match):
    _one_line_error(capsys, main(argv), match)


def test_bench_without_a_name_lists_the_benches(capsys):
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "text" in out and "scripts/bench_NAME.py" in out


def test_evaluate_list_through_infogeo(capsys):
    assert main(["evaluate", "--list"]) == 0
    assert "bundled:full" in capsys.readouterr().out
