"""Fuzzing the command line (issue 16): random argv, inputs and folder states for ``infogeo analyse``
and ``infogeo verify``, run in-process through ``tiling.workflows.cli.main``.

Every case must end with exit code 0 or 2 (never an exception out of ``main``), print no traceback,
print exactly one ``infogeo: error:`` line when it fails and none when it succeeds, and leave every
file the test placed in ``--out`` as it was, except the files of a report (or ``results.jsonl``)
when ``--overwrite`` was given. A success leaves a report that :meth:`Report.load` reads (or a
results file whose every line parses).

``infogeo verify`` runs for minutes, so its cases always carry an argument that must be refused
(a bad ``--seed``, an ``--out`` that is a file, an unknown flag): they fuzz the validation that runs
before the experiments, never the experiments.
"""
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

import tiling.workflows.models
from conftest import FUZZ_CASES, fuzz_settings
from tiling.workflows.analysis import REPORT_FILES, Report
from tiling.workflows.cli import main

LINE_SEPARATORS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
WORDS = ["Geodesics", "bend", "dense", "tokens", "filler", "curvature", "é", "日本", "\U0001F600", "the", "a"]
USER_NAMES = ["notes.txt", "report.md", "report.json", "density_heatmap.png", "results.jsonl", "data.csv", ".hidden",
              "sub/inner.txt", "arrays.npz"]
OWNED = set(REPORT_FILES)


# ---- fixtures: models and a previous report, made once ---------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Model folders in every state the fuzzer draws, and a cache so each loads once."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("fuzz-models")
    tok = AutoTokenizer.from_pretrained(tiling.workflows.models.default_model_path(), local_files_only=True)
    cfg = BertConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=32,
                     max_position_embeddings=48)
    torch.manual_seed(0)
    folders = {}
    for name, degenerate in (("tiny", False), ("degenerate", True)):
        model = BertModel(cfg)
        if degenerate:
            with torch.no_grad():
                for lin in (model.encoder.layer[0].attention.self.query, model.encoder.layer[0].attention.self.key):
                    lin.weight.zero_()
                    lin.bias.zero_()
        model.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
        folders[name] = root / name
    raw = (folders["tiny"] / "model.safetensors").read_bytes()
    for name, data in (("truncated", raw[: len(raw) // 2]), ("garbage", b"\x00\x01junk")):
        shutil.copytree(folders["tiny"], root / name)
        (root / name / "model.safetensors").write_bytes(data)
        folders[name] = root / name
    shutil.copytree(folders["tiny"], root / "bad-config")
    (root / "bad-config" / "config.json").write_text("{not json")
    folders["bad-config"] = root / "bad-config"
    shutil.copytree(folders["tiny"], root / "wrong-shapes")
    wrong = json.loads((root / "wrong-shapes" / "config.json").read_text())
    wrong["hidden_size"] = 32
    (root / "wrong-shapes" / "config.json").write_text(json.dumps(wrong))
    folders["wrong-shapes"] = root / "wrong-shapes"
    (root / "config-only").mkdir()
    shutil.copy(folders["tiny"] / "config.json", root / "config-only")
    folders["config-only"] = root / "config-only"
    (root / "empty").mkdir()
    folders["empty"] = root / "empty"
    (root / "a-file").write_text("not a model")
    folders["a-file"] = root / "a-file"
    folders["missing"] = root / "missing"
    cache, real = {}, tiling.workflows.models.load_model

    def cached(path=None, device="cpu", **kw):
        key = (str(path), str(device))
        if key not in cache:
            cache[key] = real(path, device=device, **kw)
        return cache[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(tiling.workflows.models, "load_model", cached)
    prev = root / "previous-report"
    with _quiet():
        assert main(["analyse", "Geodesics bend around dense tokens.", "--model", str(folders["tiny"]),
                     "--out", str(prev), "--quiet", "--no-figures", "--k", "3", "--n-eigs", "2"]) == 0
        batch_src = root / "batch.txt"
        batch_src.write_text("Geodesics bend here.\nFiller filler filler.\n")
        assert main(["analyse", "--file", str(batch_src), "--batch", "--model", str(folders["tiny"]),
                     "--out", str(root / "previous-batch"), "--quiet", "--k", "3", "--n-eigs", "2"]) == 0
    folders["previous-report"], folders["previous-batch"] = prev, root / "previous-batch"
    yield folders
    mp.undo()


class _quiet:
    """Swallow stdout/stderr of a setup run."""

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved


# ---- strategies --------------------------------------------------------------------------
text_chars = st.one_of(st.sampled_from(WORDS + [" "] * 4 + LINE_SEPARATORS),
                       st.characters(codec=None, exclude_categories=()))  # any code point, surrogates too
texts = st.lists(text_chars, max_size=14).map("".join)
file_bytes = st.one_of(texts.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=60),
                       st.lists(st.sampled_from(WORDS + LINE_SEPARATORS), max_size=12).map(
                           lambda w: " ".join(w).encode("utf-8")))

VALUES = {
    "--budget": ["0.35", "0.5", "1", "0", "-1", "nan", "inf", "1e-300", "x", "", "0.0625"],
    "--r-min": ["0.0625", "0.5", "0", "1.5", "nan", "y"],
    "--tile-size": ["4", "16", "1", "0", "-3", str(2 ** 40), "x", "1.5"],
    "--k": ["3", "4", "1", "0", str(2 ** 40), "x"],
    "--n-eigs": ["2", "3", "1", "0", "999999"],
    "--layers": ["0", "1", "0,1", "99", "-1", "x", "", "0,,1", "5"],
    "--heads": ["0", "1", "0,1", "99", "-1", "x", "11"],
    "--show": ["0:0", "1:1", "9:9", "x", "0:0:0", "0:1"],
    "--max-length": ["3", "8", "2", "100000", "x", "48", "49"],
    "--name": ["demo", "", ".", "..", "a/b", "x\x00y", "ü"],
    "--device": ["cpu", "cuda", "tpu"],
    "--threads": ["1", "0", "999999"],
}
SWITCHES = ["--summary", "--batch", "--resume", "--overwrite", "--no-figures", "--frobnicate"]
MODELS = ["bundled", "tiny", "tiny", "tiny", "degenerate", "truncated", "garbage", "bad-config", "wrong-shapes",
          "config-only", "empty", "a-file", "missing"]
OUTS = ["fresh", "fresh", "empty", "user-files", "a-file", "under-a-file", "previous-report", "previous-batch",
        "torn-batch", "default"]


VALID = {"--budget": ["0.35", "0.5", "1", "0.0625"], "--r-min": ["0.0625"], "--tile-size": ["4", "16", "1", str(2 ** 40)],
         "--k": ["3", "4", "1", str(2 ** 40)], "--n-eigs": ["2", "1", "999999"], "--layers": ["0", "1", "0,1"],
         "--heads": ["0", "1", "0,1"], "--show": ["0:0"], "--max-length": ["8", "48"], "--name": ["demo", "ü"],
         "--device": ["cpu"], "--threads": ["1"]}
sentences = st.lists(st.sampled_from(WORDS), min_size=3, max_size=10).map(" ".join)


@st.composite
def analyse_case(draw):
    """Half the cases are built to succeed (valid values, a text of words, a working model): the
    other half draw anything. Both can still meet a folder state that must be refused."""
    valid = draw(st.booleans())
    pool = VALID if valid else VALUES
    flags = draw(st.lists(st.sampled_from(sorted(pool)), max_size=4, unique=True))
    argv = [draw(st.sampled_from(["analyse", "analyse", "analyze"]))]
    for f in flags:
        argv += [f, draw(st.sampled_from(pool[f]) if valid else st.one_of(st.sampled_from(pool[f]), texts))]
    switches = ["--summary", "--batch", "--overwrite", "--resume"] if valid else SWITCHES
    argv += draw(st.lists(st.sampled_from(switches), max_size=2, unique=True))
    text = draw(sentences if valid else texts)
    lines = draw(st.lists(sentences, min_size=1, max_size=3))
    data = draw(st.sampled_from(LINE_SEPARATORS)).join(lines).encode() if valid else draw(file_bytes)
    source = draw(st.sampled_from(["text", "file", "stdin"] if valid else
                                  ["text", "file", "stdin", "both", "none", "missing-file"]))
    model = draw(st.sampled_from(["tiny", "tiny", "bundled"] if valid else MODELS))
    return dict(argv=argv, source=source, text=text, data=data, model=model, out=draw(st.sampled_from(OUTS)),
                user_files={n: draw(st.binary(max_size=20)) for n in draw(st.lists(st.sampled_from(USER_NAMES),
                                                                                   max_size=3, unique=True))},
                figures=draw(st.integers(0, 39)) == 0)


def _place_out(kind: str, tmp: Path, world, user_files: dict) -> tuple[Path | None, dict]:
    """Make the --out folder state; return (out path or None for the default, files the user placed)."""
    placed = {}
    if kind == "default":
        return None, placed
    out = tmp / "out"
    if kind == "a-file":
        out.write_bytes(b"a file the user owns")
        return out, {out: out.read_bytes()}
    if kind == "under-a-file":
        (tmp / "f").write_bytes(b"owned")
        return tmp / "f" / "out", {tmp / "f": b"owned"}
    if kind.startswith("previous"):
        shutil.copytree(world[kind], out)
    elif kind == "torn-batch":  # an interrupted batch: a line cut in half, and one not JSON at all
        shutil.copytree(world["previous-batch"], out)
        lines = (out / "results.jsonl").read_bytes().splitlines()
        (out / "results.jsonl").write_bytes(lines[0] + b"\n\xff{oops\n" + lines[1][:40])
    elif kind in ("empty", "user-files"):
        out.mkdir()
    if kind in ("user-files", "previous-report", "previous-batch", "torn-batch"):
        for name, data in user_files.items():
            p = out / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            placed[p] = data
    return out, placed


def _check_outcome(code: int, err: str, argv: list[str]) -> None:
    assert code in (0, 2), (code, argv, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("infogeo: error:")]
    assert len(errors) == (1 if code == 2 else 0), (argv, err)


def _assert_lines_kept(before: bytes, results: Path) -> None:
    """A resume keeps every line of the results file: in it, or (unparsable) in results.jsonl.unparsable."""
    side = results.with_name(results.name + ".unparsable")
    now = set(results.read_bytes().split(b"\n")) | (set(side.read_bytes().split(b"\n")) if side.exists() else set())
    assert all(line in now for line in before.split(b"\n") if line.strip()), (before, now)


def _run(argv, stdin_bytes=None):
    """main(argv) with stdout/stderr captured (and stdin bytes), torch's thread count restored."""
    threads = torch.get_num_threads()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin_bytes or b""), encoding="utf-8")
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        code = main(argv)
        return code, sys.stdout.getvalue(), sys.stderr.getvalue()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        torch.set_num_threads(threads)


def _analyse_property(world, case):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-cli-"))
    cwd = os.getcwd()
    try:
        os.chdir(tmp)  # the default --out lands here
        out, placed = _place_out(case["out"], tmp, world, case["user_files"])
        argv = list(case["argv"])
        if case["model"] != "bundled":
            argv += ["--model", str(world[case["model"]])]
        if out is not None:
            argv += ["--out", str(out)]
        src = tmp / "input.txt"
        src.write_bytes(case["data"])
        stdin = None
        if case["source"] in ("text", "both"):
            argv.insert(1, case["text"])
        if case["source"] in ("file", "both"):
            argv += ["--file", str(src)]
        elif case["source"] == "stdin":
            argv += ["--file", "-"]
            stdin = case["data"]
        elif case["source"] == "missing-file":
            argv += ["--file", str(tmp / "nope.txt")]
        for flag, fast in (("--layers", "0"), ("--heads", "0"), ("--k", "3"), ("--n-eigs", "2")):
            if flag not in argv:
                argv += [flag, fast]  # keep each case small: the full sizes are tested end to end elsewhere
        argv += ["--quiet"] + ([] if case["figures"] else ["--no-figures"])
        code, _, err = _run(argv, stdin)
        _check_outcome(code, err, argv)
        overwrite = "--overwrite" in argv
        for path, data in placed.items():
            if overwrite and path.parent == out and path.name in OWNED | {"results.jsonl"}:
                continue  # the user asked to replace the report
            if "--resume" in argv and path == out / "results.jsonl" and code == 0:
                _assert_lines_kept(data, path)
                continue
            assert path.exists() and path.read_bytes() == data, (path, argv, err)
        if code == 0:
            folder = out if out is not None else next((tmp / "infogeo-report").iterdir())
            if "--batch" in argv:
                for line in (folder / "results.jsonl").read_text().splitlines():
                    json.loads(line)
            elif "--help" not in argv:
                Report.load(folder)
        FUZZ_CASES["cli analyse"] += 1
        FUZZ_CASES["cli analyse, completed (exit 0)"] += code == 0
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


@fuzz_settings(60, 4_500, slow=False)
@given(case=analyse_case())
def test_fuzz_analyse(world, case):
    _analyse_property(world, case)


@pytest.mark.slow
@fuzz_settings(60, 4_500, slow=True)
@given(case=analyse_case())
def test_fuzz_analyse_large(world, case):
    _analyse_property(world, case)


# ---- infogeo verify: the validation before the experiments ----------------------------------
@st.composite
def verify_case(draw):
    bad = draw(st.sampled_from(["seed-negative", "seed-text", "out-file", "out-under-file", "unknown-flag",
                                "out-nul"]))
    argv = ["verify"] + draw(st.lists(st.sampled_from(["--quick", "--no-progress"]), unique=True))
    seed = {"seed-negative": str(draw(st.integers(max_value=-1))),
            "seed-text": draw(st.one_of(texts, st.just("1.5")).filter(lambda s: not s.strip().isdigit()))}
    if bad in seed:
        argv += ["--seed", seed[bad]]
    elif draw(st.booleans()):
        argv += ["--seed", str(draw(st.integers(0, 10)))]
    if bad == "unknown-flag":
        argv += [draw(st.sampled_from(["--frobnicate", "--out-dir", "-q", "--seed="]))]
    return dict(argv=argv, bad=bad, user=draw(st.binary(max_size=20)))


def _verify_property(case):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-verify-"))
    try:
        user = tmp / "theirs"
        user.write_bytes(case["user"])
        argv = list(case["argv"])
        out = {"out-file": user, "out-under-file": user / "sub", "out-nul": tmp / "a\x00b"}.get(case["bad"])
        argv += ["--out", str(out if out is not None else tmp / "verify-out")]
        code, _, err = _run(argv)
        _check_outcome(code, err, argv)
        assert code == 2, (argv, err)  # refused before the experiments ran
        assert user.read_bytes() == case["user"]
        assert not (tmp / "verify-out").exists() or not any((tmp / "verify-out").iterdir())
        FUZZ_CASES["cli verify"] += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@fuzz_settings(40, 500, slow=False)
@given(case=verify_case())
def test_fuzz_verify_validation(case):
    _verify_property(case)


@pytest.mark.slow
@fuzz_settings(40, 500, slow=True)
@given(case=verify_case())
def test_fuzz_verify_validation_large(case):
    _verify_property(case)
