"""Fuzzing the command line (issue 16; issue 27 added evaluate, generate and train_tiled): random argv,
inputs and folder states for ``infogeo analyse`` and ``infogeo verify``, run in-process through
``tiling.workflows.cli.main``, and for ``python -m tiling.train.evaluate``, ``python -m tiling.train.generate``
(tiny text checkpoints, and corrupt, truncated, foreign, missing ones) and ``scripts/train_tiled.py``
(tiny runs into fresh folders, folders holding a run or the user's files, files, resumes).

Every case must end with exit code 0 or 2 (never an exception out of ``main``), print no traceback,
print exactly one ``infogeo: error:`` line when it fails and none when it succeeds, and leave every
file the test placed in ``--out`` as it was, except the files of a report (or ``results.jsonl``)
when ``--overwrite`` was given. A success leaves a report that :meth:`Report.load` reads (or a
results file whose every line parses).

``infogeo verify`` runs for minutes, so its cases always carry an argument that must be refused
(a bad ``--seed``, an ``--out`` that is a file, an unknown flag): they fuzz the validation that runs
before the experiments, never the experiments.
"""
import contextlib
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


VALID = {"--budget": ["0.35", "0.5", "1", "0.0625"], "--r-min": ["0.0625"], "--tile-size": ["4", "16", "1", str(2 ** 20)],
         "--k": ["3", "4", "1", str(2 ** 20)], "--n-eigs": ["2", "1", "65536"], "--layers": ["0", "1", "0,1"],
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


@contextlib.contextmanager
def _scratch(prefix: str, *, chdir: bool = False):
    """A temporary folder for one case (with ``chdir``, the working folder while the case runs: defaults
    such as ``--out`` land there), removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    cwd = os.getcwd()
    try:
        if chdir:
            os.chdir(tmp)
        yield tmp
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


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
    with _scratch("fuzz-cli-", chdir=True) as tmp:  # the default --out lands here
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
    with _scratch("fuzz-verify-") as tmp:
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


@fuzz_settings(40, 500, slow=False)
@given(case=verify_case())
def test_fuzz_verify_validation(case):
    _verify_property(case)


@pytest.mark.slow
@fuzz_settings(40, 500, slow=True)
@given(case=verify_case())
def test_fuzz_verify_validation_large(case):
    _verify_property(case)


# ---- evaluate, generate, train_tiled (issue 27): the other command-line programs -----------------
def _run_program(main_fn, argv):
    """A program's main(argv) with stdout/stderr captured and torch's thread count restored."""
    threads = torch.get_num_threads()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        code = main_fn(argv)
        return code, sys.stdout.getvalue(), sys.stderr.getvalue()
    finally:
        sys.stdout, sys.stderr = saved
        torch.set_num_threads(threads)


def _check_program(prog: str, code: int, err: str, argv: list) -> None:
    """Exit 0 or 2, no traceback, exactly one ``PROG: error:`` line on failure, none on success."""
    assert code in (0, 2), (code, argv, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == (1 if code == 2 else 0), (argv, err)


@pytest.fixture(scope="module")
def text_world(tmp_path_factory):
    """Text checkpoints in every state the fuzzers draw, and input files."""
    from tiling.train import TiledLM, save_checkpoint
    from tiling.config import TilingConfig
    from tiling.train.textmodel import build_model, model_config, save_text_checkpoint

    root = tmp_path_factory.mktemp("fuzz-text")
    files = {}
    for config in ("adaptive", "router", "full", "scan-adaptive"):
        torch.manual_seed(0)
        model = build_model(model_config(config, 0.5, d_model=8, n_layers=2, d_state=2, tile_size=4))
        files[config] = save_text_checkpoint(root / f"{config}.safetensors", model, configuration=config,
                                             budget=1.0 if config == "full" else 0.5, context=32)
    raw = files["adaptive"].read_bytes()
    for name, data in (("truncated", raw[: len(raw) // 2]), ("garbage", b"\x00\x01junk"), ("empty", b""),
                       ("huge-header", (2 ** 62).to_bytes(8, "little") + raw[8:])):
        (root / f"{name}.safetensors").write_bytes(data)
        files[name] = root / f"{name}.safetensors"
    files["burst"] = save_checkpoint(root / "burst.safetensors", model=TiledLM(6, d_model=8, n_layers=1, d_state=2,
                                                                                tiling=TilingConfig(tile_size=4)))
    files["missing"], files["folder"] = root / "missing.safetensors", root
    files["bundled:huge"] = "bundled:huge"
    return files


TEXT_CHECKPOINTS = ["adaptive", "adaptive", "router", "full", "scan-adaptive", "truncated", "garbage", "empty",
                    "huge-header", "burst", "missing", "folder", "bundled:huge"]
EVALUATE_VALUES = {"--budget": ["0.5", "1", "0.25", "0", "nan", "inf", "-1", "x", "0.01"],
                   "--context": ["8", "32", "33", "0", "-1", str(2 ** 40), "x"],
                   "--stride": ["4", "32", "0", "100", "x"], "--batch-size": ["1", "4", "0", "-2", str(2 ** 40)],
                   "--max-bytes": ["2", "40", "1", "0", str(2 ** 62)], "--threads": ["1", "0", "-1", str(2 ** 40)]}
GENERATE_VALUES = {"--budget": ["0.5", "1", "0.25", "0", "nan", "inf", "x"],
                   "--max-bytes": ["0", "3", "10", "-1", str(2 ** 40), "x"], "--seed": ["0", "7", "-1", str(2 ** 64)],
                   "--temperature": ["1", "0.5", "0", "-1", "nan", "inf", "1e-300", "1e300"],
                   "--top-k": ["1", "5", "256", "0", "257"], "--threads": ["1", "0", "-1"]}


@st.composite
def evaluate_case(draw):
    argv = [draw(st.sampled_from(TEXT_CHECKPOINTS))]
    for flag in draw(st.lists(st.sampled_from(sorted(EVALUATE_VALUES)), max_size=3, unique=True)):
        argv += [flag, draw(st.one_of(st.sampled_from(EVALUATE_VALUES[flag]), texts))]
    argv += draw(st.lists(st.sampled_from(["--json", "--json", "--list", "--frobnicate"]), max_size=1))
    return dict(argv=argv, text=draw(file_bytes), file=draw(st.sampled_from(["file", "file", "file", "missing",
                                                                             "folder", "none"])))


def _evaluate_property(text_world, case):
    from tiling.train import evaluate

    with _scratch("fuzz-eval-") as tmp:
        argv = [str(text_world.get(a, a)) if i == 0 else a for i, a in enumerate(case["argv"])]
        src = tmp / "input.txt"
        src.write_bytes(case["text"])
        where = {"file": src, "missing": tmp / "nope.txt", "folder": tmp}.get(case["file"])
        if where is not None:
            argv += ["--text-file", str(where)]
        code, out, err = _run_program(evaluate.main, argv)
        _check_program("evaluate", code, err, argv)
        if code == 0 and "--json" in argv:
            json.loads(out)
        FUZZ_CASES["cli evaluate"] += 1


@fuzz_settings(40, 2_000, slow=False)
@given(case=evaluate_case())
def test_fuzz_evaluate(text_world, case):
    _evaluate_property(text_world, case)


@pytest.mark.slow
@fuzz_settings(40, 2_000, slow=True)
@given(case=evaluate_case())
def test_fuzz_evaluate_large(text_world, case):
    _evaluate_property(text_world, case)


@st.composite
def generate_case(draw):
    argv = [draw(st.sampled_from(TEXT_CHECKPOINTS)), "--prompt", draw(st.one_of(texts, sentences))]
    if "--max-bytes" not in argv:
        argv += ["--max-bytes", draw(st.sampled_from(["0", "3", "8"]))]  # small unless drawn below
    for flag in draw(st.lists(st.sampled_from(sorted(GENERATE_VALUES)), max_size=3, unique=True)):
        argv += [flag, draw(st.one_of(st.sampled_from(GENERATE_VALUES[flag]), texts))]
    argv += draw(st.lists(st.sampled_from(["--json", "--json", "--frobnicate"]), max_size=1))
    return dict(argv=argv)


def _generate_property(text_world, case):
    from tiling.train import generate

    argv = [str(text_world.get(a, a)) if i == 0 else a for i, a in enumerate(case["argv"])]
    code, out, err = _run_program(generate.main, argv)
    _check_program("generate", code, err, argv)
    if code == 0 and "--json" in argv:
        json.loads(out)
    FUZZ_CASES["cli generate"] += 1


@fuzz_settings(40, 2_000, slow=False)
@given(case=generate_case())
def test_fuzz_generate(text_world, case):
    _generate_property(text_world, case)


@pytest.mark.slow
@fuzz_settings(40, 2_000, slow=True)
@given(case=generate_case())
def test_fuzz_generate_large(text_world, case):
    _generate_property(text_world, case)


TRAIN_TINY = ["--context-len", "16", "--n-bursts", "1", "--burst-len", "2", "--n-symbols", "4", "--d-model", "4",
              "--d-state", "2", "--tile-size", "4", "--batch-size", "2", "--train-size", "8", "--eval-size", "2",
              "--warmup", "1", "--no-ifq", "--quiet", "--threads", "1"]
TRAIN_VALUES = {"--steps": ["1", "2", "0", "-1", str(2 ** 62), "x"], "--stop-at": ["1", "0", "5"],
                "--eval-every": ["1", "0", "-3"], "--log-every": ["1", "0"], "--batch-size": ["2", "0", "64"],
                "--lr": ["0.01", "0", "nan", "-1", "inf"], "--budget": ["0.5", "1", "0", "2", "nan"],
                "--tile-size": ["4", "0", str(2 ** 62)], "--r-min": ["0.25", "0", "2"],
                "--device": ["cpu", "bogus", "cuda:99"], "--exponent": ["0.5", "-1", "0"],
                "--dt-min": ["0.001", "0.5", "0"], "--ckpt-every": ["1", "0", "-1"], "--threads": ["1", "0", "-5"]}
TRAIN_OUTS = ["fresh", "fresh", "holds-run", "user-files", "a-file", "under-a-file"]


@st.composite
def train_case(draw):
    argv = []
    for flag in draw(st.lists(st.sampled_from(sorted(TRAIN_VALUES)), max_size=3, unique=True)):
        argv += [flag, draw(st.one_of(st.sampled_from(TRAIN_VALUES[flag]), texts))]
    if "--steps" not in argv:
        argv += ["--steps", "1"]
    argv += draw(st.lists(st.sampled_from(["--overwrite", "--resume-here", "--resume-other", "--resume-missing",
                                           "--frobnicate"]), max_size=1))
    return dict(argv=argv, out=draw(st.sampled_from(TRAIN_OUTS)), user=draw(st.binary(max_size=20)))


@pytest.fixture(scope="module")
def train_world(tmp_path_factory):
    """The program (tiling.train.synthetic, scripts/train_tiled.py) and a finished run to copy into --out or to
    resume from."""
    from tiling.train import synthetic as mod

    run = tmp_path_factory.mktemp("fuzz-train") / "run"
    with _quiet():
        assert mod.main(TRAIN_TINY + ["--steps", "2", "--stop-at", "1", "--out", str(run)]) == 0
    return mod, run


def _place_run_out(kind: str, tmp: Path, finished: Path, user: bytes) -> tuple[Path, dict]:
    """``--out`` of a training program in the state ``kind``: fresh, a copy of a ``finished`` run or a
    folder of the user's (both with the user's ``notes.txt``), a file, or a path under a file. Returns
    the folder and the files placed, with their bytes."""
    out = tmp / "out"
    if kind in ("holds-run", "user-files"):
        shutil.copytree(finished, out) if kind == "holds-run" else out.mkdir()
        (out / "notes.txt").write_bytes(user)
        return out, {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    if kind == "a-file":
        out.write_bytes(user)
        return out, {out: user}
    if kind == "under-a-file":
        (tmp / "f").write_bytes(user)
        return tmp / "f" / "out", {tmp / "f": user}
    return out, {}


def _assert_run_out_kept(placed: dict, out: Path, argv: list, replaced: bool, run_files: tuple) -> None:
    """Every file placed is as it was, but the run's own files in ``out`` when the user asked to replace or
    continue the run."""
    for path, data in placed.items():
        if replaced and path.parent == out and path.name in run_files:
            continue
        assert path.exists() and path.read_bytes() == data, (path, argv)


def _train_property(train_world, case):
    mod, finished = train_world
    with _scratch("fuzz-train-") as tmp:
        out, placed = _place_run_out(case["out"], tmp, finished, case["user"])
        argv = TRAIN_TINY + [a for a in case["argv"] if not a.startswith("--resume-")] + ["--out", str(out)]
        resume = next((a for a in case["argv"] if a.startswith("--resume-")), None)
        if resume is not None:
            argv += ["--resume", str({"--resume-here": out / "checkpoint.safetensors",
                                      "--resume-other": finished / "checkpoint.safetensors",
                                      "--resume-missing": tmp / "nope.safetensors"}[resume])]
        code, _, err = _run_program(mod.main, argv)
        _check_program("train_tiled", code, err, argv)
        _assert_run_out_kept(placed, out, argv, "--overwrite" in argv or resume == "--resume-here",
                             ("checkpoint.safetensors", "log.jsonl", "run.json"))
        FUZZ_CASES["cli train_tiled"] += 1


@fuzz_settings(20, 1_000, slow=False)
@given(case=train_case())
def test_fuzz_train_tiled(train_world, case):
    _train_property(train_world, case)


@pytest.mark.slow
@fuzz_settings(20, 1_000, slow=True)
@given(case=train_case())
def test_fuzz_train_tiled_large(train_world, case):
    _train_property(train_world, case)


# ---- train_text (issue 27 item 5): the real-text training script ----------------------------------
TEXT_TRAIN_TINY = ["--context", "16", "--batch-size", "2", "--d-model", "8", "--n-layers", "1", "--d-state", "2",
                   "--tile-size", "4", "--d-outer", "8", "--d-main", "16", "--main-layers", "1", "--max-steps", "1",
                   "--max-minutes", "0.05", "--eval-every-steps", "1", "--val-windows", "2", "--test-bytes", "64",
                   "--decode-bytes", "4", "--no-speed", "--quiet", "--threads", "1"]
# sizes are either small or far beyond their bound: a drawn value never allocates much (shared machine)
TEXT_TRAIN_VALUES = {
    "--config": ["adaptive", "full", "uniform", "router", "scan-adaptive", "hourglass", "bogus"],
    "--budget": ["0.5", "1", "0", "-1", "nan", "inf", "2"], "--seed": ["0", "-1", str(2 ** 64)],
    "--context": ["8", "0", "-1", str(2 ** 40), "4096"], "--batch-size": ["1", "0", str(2 ** 40)],
    "--d-model": ["4", "0", str(2 ** 40)], "--n-layers": ["2", "0", str(2 ** 40)], "--d-state": ["1", "0", str(2 ** 40)],
    "--expand": ["2", "0", "-1", str(2 ** 40)], "--tile-size": ["1", "0", str(2 ** 62)],
    "--r-min": ["0.25", "0", "2", "nan"], "--full-layers": ["none", "ends", "0", "5", "x", "0,,1", "-1"],
    "--ratio-weight": ["0.5", "-1", "nan", "inf"], "--signal": ["entropy", "space", "bogus"],
    "--dechunk": ["hold", "bogus"], "--budget-range": ["0.25,1", "0,1", "1,0.5", "x", "0.5"],
    "--d-outer": ["4", "32", "0", str(2 ** 40)], "--d-main": ["8", "0", str(2 ** 40)],
    "--encoder-layers": ["0", "-1"], "--main-layers": ["2", "0"], "--decoder-layers": ["0", str(2 ** 40)],
    "--lr": ["0.01", "0", "nan", "-1", "inf"], "--weight-decay": ["0", "-1", "nan"], "--warmup": ["0", "-1"],
    "--grad-clip": ["0", "-1", "nan"], "--max-minutes": ["0", "-1", "nan", "inf", "1e300"],
    "--clock": ["wall", "bogus"], "--max-bytes": ["64", "0", "-1"], "--max-steps": ["2", "0", "-1", str(2 ** 62)],
    "--eval-every-s": ["1e-9", "0", "nan"], "--eval-every-steps": ["0", "-2"],
    "--val-windows": ["1", "0", str(2 ** 40)], "--test-bytes": ["1", "0", "-1"], "--decode-bytes": ["0", str(2 ** 40)],
    "--threads": ["0", "-1", str(2 ** 40)], "--device": ["cpu", "bogus", "cuda:99"], "--shard": ["0/1", "1/1", "x"],
    "--measure": ["1", "0", "-1", str(2 ** 40)], "--corpus-dir": ["missing"],
}
TEXT_TRAIN_VALID = {
    "--config": ["adaptive", "full", "uniform", "router", "scan-adaptive", "hourglass"], "--budget": ["0.5", "0.25"],
    "--seed": ["7"], "--context": ["8"], "--batch-size": ["1"], "--d-model": ["4"], "--n-layers": ["2"],
    "--d-state": ["1"], "--expand": ["2"], "--tile-size": ["1"], "--r-min": ["0.25"], "--full-layers": ["ends", "-1"],
    "--ratio-weight": ["0.5"], "--signal": ["space"], "--dechunk": ["hold"], "--budget-range": ["0.25,1"],
    "--lr": ["0.01"], "--weight-decay": ["0"], "--warmup": ["0"], "--grad-clip": ["0"], "--clock": ["wall"],
    "--max-steps": ["2"], "--eval-every-s": ["1e-9"], "--val-windows": ["1"], "--device": ["cpu"], "--measure": ["1"],
}
TEXT_FILES = ["text", "text", "text", "missing", "folder", "empty", "short", "latin-1"]
TEXT_OUTS = ["fresh", "fresh", "holds-run", "user-files", "a-file", "under-a-file"]


@st.composite
def text_train_case(draw):
    """Half the cases are built to succeed (valid values, a text, --overwrite where a run is): the other
    half draw anything."""
    valid = draw(st.booleans())
    pool = TEXT_TRAIN_VALID if valid else TEXT_TRAIN_VALUES
    argv = []
    for flag in draw(st.lists(st.sampled_from(sorted(pool)), max_size=3, unique=True)):
        argv += [flag, draw(st.sampled_from(pool[flag]) if valid else
                            st.one_of(st.sampled_from(pool[flag]), texts))]
    out = draw(st.sampled_from(TEXT_OUTS[:4] if valid else TEXT_OUTS))
    argv += ["--overwrite"] if valid and out == "holds-run" else draw(
        st.lists(st.sampled_from(["--overwrite", "--sweep", "--frobnicate"]), max_size=1))
    return dict(argv=argv, train="text" if valid else draw(st.sampled_from(TEXT_FILES + ["none"])),
                val=draw(st.sampled_from(["none", "text"] if valid else TEXT_FILES[:2] + TEXT_FILES + ["none"] * 6)),
                out=out, user=draw(st.binary(max_size=20)))


@pytest.fixture(scope="module")
def text_train_world(tmp_path_factory):
    """The program (tiling.train.text_cli); text files in every state the fuzzer draws; a finished run to copy."""
    from tiling.train import text_cli as mod

    root = tmp_path_factory.mktemp("fuzz-text-train")
    files = {"missing": root / "missing.txt", "folder": root}
    for name, data in (("text", b"def f(x):\n    return x + 1\n\nfor i in range(10):\n    print(f(i))\n" * 8),
                       ("empty", b""), ("short", b"ab"), ("latin-1", "caf\u00e9 cr\u00e8me\n".encode("latin-1") * 20)):
        files[name] = root / f"{name}.txt"
        files[name].write_bytes(data)
    run = root / "run"
    with _quiet():
        assert mod.main(TEXT_TRAIN_TINY + ["--train-file", str(files["text"]), "--out", str(run)]) == 0
    return mod, files, run


def _text_train_property(world, case):
    mod, files, finished = world
    with _scratch("fuzz-text-train-", chdir=True) as tmp:  # the default --corpus-dir, --results, ... land here
        out, placed = _place_run_out(case["out"], tmp, finished, case["user"])
        argv = TEXT_TRAIN_TINY + [str(tmp / a) if a == "missing" else a for a in case["argv"]] + ["--out", str(out)]
        if "--sweep" in argv:
            argv += ["--only", "no-such-row"]  # a sweep trains many rows: its cases fuzz the checks before them
        for flag, which in (("--train-file", case["train"]), ("--val-file", case["val"])):
            if which != "none":
                argv += [flag, str(files[which])]
        code, stdout, err = _run_program(mod.main, argv)
        _check_program("train_text", code, err, argv)
        _assert_run_out_kept(placed, out, argv, "--overwrite" in argv,
                             ("checkpoint.safetensors", "log.jsonl", "row.json", "run.json"))
        if code == 0 and "--measure" not in argv:
            assert json.loads((out / "row.json").read_text())["test_bpb"] > 0, argv
        FUZZ_CASES["cli train_text"] += 1
        FUZZ_CASES["cli train_text, completed (exit 0)"] += code == 0


@fuzz_settings(30, 1_500, slow=False)
@given(case=text_train_case())
def test_fuzz_train_text(text_train_world, case):
    _text_train_property(text_train_world, case)


@pytest.mark.slow
@fuzz_settings(30, 1_500, slow=True)
@given(case=text_train_case())
def test_fuzz_train_text_large(text_train_world, case):
    _text_train_property(text_train_world, case)


@pytest.mark.parametrize("argv,flag", [
    (["--budget", "nan"], "--budget"), (["--signal", "bogus"], "--signal"),  # were argparse's usage dump
    (["--full-layers", "0,1,2"], "--full-layers"), (["--eval-every-steps", "0"], "--eval-every-steps"),
    (["--device", "bogus"], "--device"), (["--clock", "x"], "--clock"),  # were named by their field (eval_every_steps)
    (["--d-model", str(2 ** 20)], "--d-model"), (["--batch-size", str(2 ** 30)], "--batch-size"),  # were the allocator's
    (["--val-windows", str(10 ** 6)], "--val-windows"), (["--measure", str(10 ** 9)], "--measure"),  # ran for hours
    (["--weight-decay", "nan"], "--weight-decay"), (["--grad-clip", "-1"], "--grad-clip"),  # were not checked
    (["--train-file", "MISSING"], "--train-file"), (["--val-file", "FOLDER"], "--val-file"),  # named the file only
])
def test_train_text_bad_options_are_one_line_naming_the_option(text_train_world, tmp_path, argv, flag):
    """Found by the fuzzer (issue 27 item 5): each was a traceback, a usage dump, a message naming an internal
    field, or hours of work, before one line ``train_text: error: ...`` naming the option with exit code 2."""
    mod, files, _ = text_train_world
    argv = [str({"MISSING": files["missing"], "FOLDER": files["folder"]}.get(a, a)) for a in argv]
    code, _, err = _run_program(mod.main, TEXT_TRAIN_TINY + ["--train-file", str(files["text"]), *argv,
                                                             "--out", str(tmp_path / "out")])
    _check_program("train_text", code, err, argv)
    assert code == 2 and flag in err.strip().splitlines()[-1], err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_train_text_out_of_memory_and_ctrl_c(text_train_world, tmp_path, monkeypatch):
    """The allocator's RuntimeError is one line naming the sizes to lower (was a traceback); Ctrl-C exits 130."""
    mod, files, _ = text_train_world
    argv = TEXT_TRAIN_TINY + ["--train-file", str(files["text"]), "--out", str(tmp_path / "out")]

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 17179869184 bytes")

    from tiling.train import text_run

    monkeypatch.setattr(text_run, "build_model", no_memory)
    code, _, err = _run_program(mod.main, argv)
    _check_program("train_text", code, err, argv)
    assert code == 2 and "out of memory" in err and "--d-model" in err
    monkeypatch.setattr(text_run, "build_model", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, _, err = _run_program(mod.main, argv)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
