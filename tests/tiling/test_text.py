"""Real-text training: corpus, windows, the autoregressive property of every configuration,
evaluation = step-by-step reference, checkpoints, a tiny training run, the CLIs and their bad input."""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_script

from tiling.config import TilingConfig
from tiling.train import CheckpointError, TiledLM, save_checkpoint
from tiling.train import corpus as corpus_mod
from tiling.options import RunError
from tiling.train import evaluate as evaluate_cli
from tiling.train import generate as generate_cli
from tiling.train import text_cli, text_run, text_sweep, textmodel
from tiling.train.corpus import CorpusError, find_documents, load_split, prepare_corpus, slice_root, split_of
from tiling.train.text import (
    TextInputError, TextWindows, eval_windows, evaluate_bytes, forward_madds, read_text_file, spaced_windows,
)
from tiling.train.textmodel import (
    KIND, TextModelError, build_model, load_text_model, model_config, parameter_count, save_text_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
SLICE = slice_root()
# SHA-256 of the splits of the committed slice (tiling/train/data/python-doc): a change of the split
# rule, of the concatenation or of the slice changes them
SLICE_HASHES = {
    "train": "fc44a4c9ea6f5e9da90fc0cb5ed314a42e117d330e5215cd73fe0c19ef1656e7",
    "validation": "021e08030a4a261d55415c50b0570f0959bf3a22fa1f8ace56b1992058242b14",
    "test": "8c3ec7f7c83a95245931741ee2c29fd0d477a3cd274de6f41e25f3d9e49cd3c8",
}
TINY = dict(d_model=16, n_layers=2, d_state=4, tile_size=8)
CONFIGS = ("full", "uniform", "adaptive", "router", "scan-adaptive")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these models are tiny, and a second OpenMP thread on a busy core makes
    every small op wait (a 10x slower file on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(config: str, budget: float = 0.5, seed: int = 0, **kw) -> TiledLM:
    torch.manual_seed(seed)
    model = build_model(model_config(config, budget, **{**TINY, **kw}))
    with torch.no_grad():  # make the pool gates and routers matter (they start at 0 / identity)
        for layer in model.layers:
            if hasattr(layer, "chunk"):
                layer.chunk.pool_gate.normal_(0, 0.5)
            if getattr(layer, "router", None) is not None:
                layer.router.k_proj.weight.normal_(0, 0.3)
    return model


def warm_calibration(model: TiledLM, budget: float) -> None:
    """One training-mode forward, so a running calibration is in use (not its history fallback)."""
    model.train()
    with torch.no_grad():
        model(torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(9)), budget=budget)
    model.eval()


def slice_bytes(name: str) -> bytes:
    return (SLICE / name).read_bytes()


# ----------------------------------------------------------------------------- corpus
def test_split_rule_is_a_function_of_the_name():
    assert split_of("tutorial/classes.rst.txt") == "train"
    assert split_of("howto/sockets.rst.txt") == "validation"
    assert split_of("faq/general.rst.txt") == "test"
    names = [f"doc{i}.rst.txt" for i in range(4000)]
    counts = {s: sum(split_of(n) == s for n in names) for s in ("train", "validation", "test")}
    assert 0.87 < counts["train"] / 4000 < 0.93 and 0.03 < counts["validation"] / 4000 < 0.07
    with pytest.raises(ValueError, match="add up to 1"):
        split_of("a", (0.5, 0.2, 0.2))


def test_corpus_preparation_is_deterministic_on_the_committed_slice(tmp_path):
    a = prepare_corpus(tmp_path / "a", SLICE)
    b = prepare_corpus(tmp_path / "b", SLICE)
    assert {s: a["splits"][s]["sha256"] for s in SLICE_HASHES} == SLICE_HASHES
    assert a["splits"] == b["splits"] and a["documents"] == b["documents"]
    for s, h in SLICE_HASHES.items():
        data = (tmp_path / "a" / f"{s}.txt").read_bytes()
        assert hashlib.sha256(data).hexdigest() == h and load_split(s, tmp_path / "a") == data
    assert sum(d["bytes"] for d in a["documents"]) == sum(a["splits"][s]["bytes"] for s in SLICE_HASHES)
    assert [d["name"] for d in a["documents"]] == sorted(d["name"] for d in a["documents"])
    assert {d["name"]: d["split"] for d in a["documents"]}["faq/general.rst.txt"] == "test"
    assert sum(p.stat().st_size for p in SLICE.rglob("*") if p.is_file()) <= 1_000_000
    prepare_corpus(tmp_path / "a", SLICE)  # the same contents again: allowed
    (tmp_path / "a" / "test.txt").write_bytes(b"altered")
    with pytest.raises(CorpusError, match="altered"):
        load_split("test", tmp_path / "a")
    other = tmp_path / "src"
    (other / "x").mkdir(parents=True)
    (other / "x" / "one.rst.txt").write_text("another corpus\n")
    with pytest.raises(CorpusError, match="other contents"):
        prepare_corpus(tmp_path / "a", other)  # never replaces a prepared corpus silently
    prepare_corpus(tmp_path / "a", other, force=True)
    with pytest.raises(CorpusError, match="make corpus"):
        load_split("train", tmp_path / "nothing")


def test_missing_corpus_package_names_it(tmp_path, monkeypatch, capsys):
    src = corpus_mod.SOURCES["docs"]
    monkeypatch.setitem(corpus_mod.SOURCES, "docs", corpus_mod.CorpusSource(
        "docs", tmp_path / "not-installed", src.pattern, src.package))
    with pytest.raises(CorpusError, match=r"python3\.11-doc.*apt-get update && apt-get install -y python3\.11-doc"):
        find_documents()
    assert corpus_mod.main(["--out", str(tmp_path / "out")]) == 2
    assert "apt-get install -y python3.11-doc" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no documents"):
        find_documents(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b.rst.txt").write_bytes(b"ok \xff\n")
    with pytest.raises(CorpusError, match="not UTF-8"):
        prepare_corpus(tmp_path / "o", bad)


# ----------------------------------------------------------------------------- data
def test_text_windows_are_contiguous_and_deterministic():
    data = slice_bytes("tutorial/controlflow.rst.txt")
    ds = TextWindows(data, 1024, seed=3)
    x, y = ds.batch(5, 4)
    assert x.shape == y.shape == (4, 1024) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for j in range(4):
        s = ds.start(5 * 4 + j)
        assert bytes(x[j].tolist()) == data[s:s + 1024] and int(y[j, -1]) == data[s + 1024]
    x2, _ = TextWindows(data, 1024, seed=3).batch(5, 4)
    x3, _ = TextWindows(data, 1024, seed=4).batch(5, 4)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    with pytest.raises(ValueError, match="needs 1025 bytes"):
        TextWindows(b"x" * 1024, 1024)


@pytest.mark.parametrize("n,L,S", [(2, 5, None), (10, 4, None), (11, 4, None), (100, 16, 5), (37, 8, 8), (9, 8, 1)])
def test_eval_windows_score_every_target_once(n, L, S):
    hits = []
    for start, length, first in eval_windows(n, L, S):
        assert length <= L and start + length <= n - 1
        hits += [start + j + 1 for j in range(first, length)]
        if first > 0:
            assert first >= L - (S or L)  # an overlapping window's scored targets see >= L - S bytes
    assert sorted(hits) == list(range(1, n))
    ws = spaced_windows(n + L + 5, L, 4)
    assert all(s + L + 1 <= n + L + 5 for s, _, _ in ws) and ws[0][0] == 0


# ----------------------------------------------------------------------------- the autoregressive property
def _leaks(model: TiledLM, x: torch.Tensor, budget: float, positions) -> list[int]:
    """Positions t where changing byte t changes a logit at a position < t."""
    leaks = []
    with torch.no_grad():
        base = model(x, budget=budget)
        for t in positions:
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1 + torch.arange(x.shape[0])) % 256
            out = model(x2, budget=budget)
            if not torch.allclose(out[:, :t], base[:, :t], atol=1e-5, rtol=0):
                leaks.append(t)
            assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-5, rtol=0)  # byte t matters from t on
    return leaks


@pytest.mark.parametrize("config", CONFIGS)
def test_every_configuration_is_autoregressive_at_every_budget(config):
    x = torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(1))
    positions = [1, 7, 8, 13, 24, 40, 63]
    for budget in (0.25, 0.5, 1.0):
        model = tiny_model(config, budget)
        warm_calibration(model, budget)
        assert _leaks(model, x, budget, positions) == [], (config, budget)
        if budget < 1 and config != "full":
            plans = model(x, budget=budget, return_plans=True)[1]
            assert all(float(p.effective_resolution().mean()) < 1.0 for p in plans)  # really coarse
    pinned = tiny_model(config, 0.25, full_resolution_layers=(0,))
    warm_calibration(pinned, 0.25)
    assert _leaks(pinned, x, 0.25, positions) == []


def test_the_leak_detector_sees_a_leak():
    """Negative control: a non-causal policy (encoder mode) leaks the segmentation of later tiles."""
    x = torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(1))
    model = tiny_model("adaptive", 0.35, causal=False)
    assert _leaks(model, x, 0.35, [8, 13, 24, 40, 63]) != []


# ----------------------------------------------------------------------------- evaluation = step()
def _reference_bpb(model, data: bytes, L: int, budget, stride=None) -> float:
    """Independent reference: per target t its window start (non-overlapping, or the last window
    that scores it), −log2 p by step() from a fresh state."""
    n, S = len(data), stride or L
    total, count = 0.0, 0
    scored_to, s = 0, 0
    while scored_to < n - 1:
        w = torch.tensor(list(data[s:min(s + L + 1, n)]), dtype=torch.int64)
        state = model.allocate_inference_state(1)
        with torch.no_grad():
            for j in range(len(w) - 1):
                logits, state = model.step(w[j:j + 1], state, budget=budget)
                t = s + j + 1
                if t > scored_to:
                    total -= float(F.log_softmax(logits.double(), -1)[0, w[j + 1]]) / math.log(2.0)
                    count += 1
        scored_to = s + len(w) - 1
        s += S
    assert count == n - 1
    return total / count


@pytest.mark.parametrize("config,budget", [("full", 1.0), ("adaptive", 0.35), ("uniform", 0.5), ("router", 0.5),
                                           ("scan-adaptive", 1.0)])
def test_evaluation_equals_step_by_step_reference(config, budget):
    data = slice_bytes("tutorial/appetite.rst.txt")[:150]
    model = tiny_model(config, budget)
    warm_calibration(model, budget)
    res = evaluate_bytes(model, data, context=48, budget=budget, batch_size=3)
    ref = _reference_bpb(model, data, 48, budget)
    assert res["bytes"] == 150 and res["scored_bytes"] == 149 and res["windows"] == 4
    assert res["bpb"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
    if config == "adaptive":
        over = evaluate_bytes(model, data, context=48, budget=budget, stride=20)
        assert over["bpb"] == pytest.approx(_reference_bpb(model, data, 48, budget, stride=20), rel=1e-5)
        assert over["bpb"] != pytest.approx(res["bpb"], rel=1e-6)


def test_flops_per_byte_follow_layer_cost():
    model = tiny_model("uniform", 0.25).eval()
    x = torch.randint(0, 256, (2, 64))
    L = 64
    full = forward_madds(model, model(x, budget=1.0, return_plans=True)[1], L, 1.0)
    per_tok = [layer.cost(L, signal=False)["total"] / L for layer in model.layers]
    assert full["per_byte"] == pytest.approx(sum(per_tok) + 16 * 256)
    quarter = forward_madds(model, model(x, budget=0.25, return_plans=True)[1], L, 0.25)
    assert quarter["head"] == full["head"] == 16 * 256 * L
    assert sum(quarter["layers"]) < 0.5 * sum(full["layers"])
    lay = model.layers[0]
    plan = lay.plan(model.norms[0](model.embedding(x)), budget=0.25)
    Lc = int(plan.segments[0].sum())
    assert Lc == 16  # ⌈0.25·8⌉ = 2 segments per tile of 8
    # the uniform policy places its segments without the signal: none is counted
    assert not lay.computes_signal(0.25)
    assert quarter["layers"][0] == pytest.approx(lay.cost(L, compact_length=Lc, signal=False)["total"])
    # the adaptive policy reads it: counted per byte, less the once-per-call composite map
    ada = tiny_model("adaptive", 0.25).eval()
    plans = ada(x, budget=0.25, return_plans=True)[1]
    got = forward_madds(ada, plans, L, 0.25)["layers"][0]
    rows = [ada.layers[0].cost(L, compact_length=int(plans[0].segments[b].sum()), signal=True) for b in range(2)]
    assert rows[0]["signal"] > 0 and got == pytest.approx(sum(c["total"] - c["signal_maps"] for c in rows) / 2)


# ----------------------------------------------------------------------------- TiledLM additions
def test_full_resolution_layers_and_step():
    model = tiny_model("adaptive", 0.25, n_layers=3, full_resolution_layers=(0, -1)).eval()
    assert model.full_resolution_layers == (0, 2) and model.tiled_layers == [1]
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        logits, plans = model(x, budget=0.25, return_plans=True)
        assert [float(p.effective_resolution().mean()) == 1.0 for p in plans] == [True, False, True]
        state = model.allocate_inference_state(2)
        steps = []
        for t in range(40):
            out, state = model.step(x[:, t], state)
            steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), logits, atol=1e-5)
    with pytest.raises(ValueError, match="does not exist"):
        TiledLM(256, d_model=8, n_layers=2, full_resolution_layers=(2,))
    with pytest.raises(TypeError, match="ints"):
        TiledLM(256, d_model=8, n_layers=2, full_resolution_layers=("0",))
    scan = tiny_model("scan-adaptive", 0.5)
    with pytest.raises(ValueError, match="scan-scope"):
        scan.step(x[:, 0], scan.allocate_inference_state(2))
    with pytest.raises(ValueError, match="int64"):
        model.step(x[:, :2], model.allocate_inference_state(2))
    counts = {c: parameter_count(build_model(model_config(c, 0.35))) for c in CONFIGS}  # the sweep's size
    assert counts["full"] == counts["uniform"] == counts["adaptive"] == 943_360
    assert max(counts.values()) / min(counts.values()) < 1.08  # the same model up to the mode's few parameters


# ----------------------------------------------------------------------------- checkpoints
def test_text_checkpoint_round_trip_and_wrong_shapes(tmp_path):
    model = tiny_model("router", 0.35)
    path = save_text_checkpoint(tmp_path / "c.safetensors", model, configuration="router", budget=0.35, context=48,
                                info={"test_bpb": 5.0})
    loaded, extra = load_text_model(path)
    assert extra["configuration"] == "router" and extra["context"] == 48 and extra["kind"] == KIND
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randint(0, 256, (2, 32))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # tensors of another shape than the configuration recorded beside them
    cfg = model_config("router", 0.35, **{**TINY, "d_model": 24})
    save_checkpoint(tmp_path / "shape.safetensors", model=model, extra={"kind": KIND, "model": cfg.to_dict(),
                                                                         "configuration": "router", "budget": 0.35,
                                                                         "context": 48})
    with pytest.raises(TextModelError, match="does not match the shape"):
        load_text_model(tmp_path / "shape.safetensors")
    save_checkpoint(tmp_path / "burst.safetensors",
                    model=TiledLM(6, d_model=8, n_layers=1, d_state=4, tiling=TilingConfig(tile_size=8)))
    with pytest.raises(TextModelError, match="not a byte-level text LM"):
        load_text_model(tmp_path / "burst.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_text_model(tmp_path / "junk.safetensors")


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training run on the slice (module-scoped: the CLI tests reuse its checkpoint)."""
    out = tmp_path_factory.mktemp("run")
    args = text_cli.parse_args([
        "--config", "adaptive", "--budget", "0.5", "--train-file", str(SLICE / "tutorial/controlflow.rst.txt"),
        "--val-file", str(SLICE / "howto/sockets.rst.txt"), "--test-file", str(SLICE / "faq/general.rst.txt"),
        "--context", "64", "--batch-size", "8", "--d-model", "32", "--n-layers", "2", "--d-state", "8",
        "--tile-size", "8", "--lr", "3e-3", "--warmup", "5", "--max-steps", "40", "--eval-every-steps", "20",
        "--val-windows", "16", "--test-bytes", "1500", "--decode-bytes", "32", "--out", str(out), "--quiet"])
    return text_run, args, text_run.train(args)


def test_tiny_training_run_lowers_the_loss(trained):
    mod, args, row = trained
    curve = row["validation_curve"]
    assert [c["step"] for c in curve] == [0, 20, 40]
    assert curve[-1]["bpb"] < curve[0]["bpb"] - 1.0  # from ≈ 8 bits (uniform) towards the text's statistics
    assert row["last_loss"] < row["first_loss"] - 0.5
    assert row["train_bytes"] == 40 * 8 * 64 and row["stop_reason"] == "max_steps"
    assert 0.4 < row["test_mean_resolution"] < 0.65 and row["flops_per_byte"] > 0
    assert row["prefill_bytes_per_s"] > 0 and row["decode_bytes_per_s"] > 0
    saved = json.loads((args.out / "row.json").read_text())
    assert saved["test_bpb"] == row["test_bpb"]
    logs = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in logs} == {"config", "train", "eval", "summary"}
    model, extra = load_text_model(args.out / "checkpoint.safetensors")
    assert extra["train_bytes"] == row["train_bytes"] and extra["budget"] == 0.5
    again = evaluate_bytes(model, slice_bytes("faq/general.rst.txt")[:1500], context=64, budget=0.5)
    assert again["bpb"] == pytest.approx(row["test_bpb"], rel=1e-9)
    with pytest.raises(RunError, match="finished run"):
        mod.train(args)  # a finished run is never replaced without --overwrite


# ----------------------------------------------------------------------------- CLIs
def _cli(main, argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_evaluate_cli(trained, tmp_path, capsys):
    ckpt = str(trained[1].out / "checkpoint.safetensors")
    text = SLICE / "tutorial/whatnow.rst.txt"
    rc, out, _ = _cli(evaluate_cli.main, [ckpt, "--text-file", str(text), "--json"], capsys)
    res = json.loads(out)
    assert rc == 0 and {"bpb", "bytes", "bytes_per_s", "mean_resolution"} <= res.keys()
    assert res["bytes"] == text.stat().st_size and res["budget"] == 0.5 and 0 < res["bpb"] < 8
    rc, out, _ = _cli(evaluate_cli.main, [ckpt, "--text-file", str(text), "--budget", "1"], capsys)
    assert rc == 0 and "bits per byte" in out and "evaluated at budget 1" in out
    cases = {
        "does not exist": [ckpt, "--text-file", str(tmp_path / "missing.txt")],
        "empty (0 bytes read)": [ckpt, "--text-file", str(_write(tmp_path / "empty.txt", b""))],
        "read 7 bytes, decoding failed at byte offset 3 (line 2, column 1": [
            ckpt, "--text-file", str(_write(tmp_path / "latin1.txt", b"ab\n\xe9t\xe9\n"))],
        "at least 2 are needed": [ckpt, "--text-file", str(_write(tmp_path / "one.txt", b"a"))],
        "must lie in (0, 1], got 0.0": [ckpt, "--text-file", str(text), "--budget", "0"],
        "must lie in (0, 1], got 1.5": [ckpt, "--text-file", str(text), "--budget", "1.5"],
        "below the checkpoint's smallest resolution": [ckpt, "--text-file", str(text), "--budget", "0.01"],
        "longer than the checkpoint was trained for (64 bytes)": [ckpt, "--text-file", str(text), "--context", "65"],
        "--stride must lie in": [ckpt, "--text-file", str(text), "--stride", "100"],
        "checkpoint": [str(tmp_path / "nope.safetensors"), "--text-file", str(text)],
        "unknown bundled checkpoint": ["bundled:huge", "--text-file", str(text)],
    }
    for msg, argv in cases.items():
        rc, _, err = _cli(evaluate_cli.main, argv, capsys)
        assert rc == 2 and msg in err, (msg, err)
    save_checkpoint(tmp_path / "burst.safetensors",
                    model=TiledLM(6, d_model=8, n_layers=1, d_state=4, tiling=TilingConfig(tile_size=8)))
    rc, _, err = _cli(evaluate_cli.main, [str(tmp_path / "burst.safetensors"), "--text-file", str(text)], capsys)
    assert rc == 2 and "not a byte-level text LM" in err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bundled_checkpoints(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(textmodel, "BUNDLED_DIR", tmp_path / "bundled")
    rc, out, _ = _cli(evaluate_cli.main, ["--list"], capsys)
    assert rc == 0 and [r["installed"] for r in json.loads(out)] == [False] * len(textmodel.BUNDLED)
    rc, _, err = _cli(evaluate_cli.main, ["bundled:adaptive", "--text-file", str(SLICE / "tutorial/index.rst.txt")],
                      capsys)
    assert rc == 2 and "not installed" in err
    path = textmodel.export_bundled(trained[1].out / "checkpoint.safetensors", "adaptive", info={"test_bpb": 2.5})
    assert path.stat().st_size < 25 * 2 ** 20
    rc, out, _ = _cli(evaluate_cli.main, ["--list"], capsys)
    listed = {r["name"]: r for r in json.loads(out)}
    assert listed["adaptive"]["installed"] and listed["adaptive"]["configuration"] == "adaptive"
    assert listed["adaptive"]["test_bpb"] == 2.5 and listed["full"]["test_bpb"] is None
    assert listed["adaptive"]["budget"] == 0.5 and listed["adaptive"]["path"] == str(path)
    rc, out, _ = _cli(evaluate_cli.main, ["bundled:adaptive", "--text-file", str(SLICE / "tutorial/index.rst.txt"),
                                          "--json"], capsys)
    assert rc == 0 and json.loads(out)["bytes"] == (SLICE / "tutorial/index.rst.txt").stat().st_size


def test_generate_cli(trained, tmp_path, capsys):
    ckpt = str(trained[1].out / "checkpoint.safetensors")
    argv = [ckpt, "--prompt", "The for statement", "--max-bytes", "30", "--seed", "4", "--json"]
    rc, out, _ = _cli(generate_cli.main, argv, capsys)
    a = json.loads(out)
    rc2, out2, _ = _cli(generate_cli.main, argv, capsys)
    assert rc == rc2 == 0 and json.loads(out2) == a  # seeded
    n = len(b"The for statement") + 30
    for layer in a["layers"]:
        assert layer["segments"].replace("|", "").startswith("The for statement") and layer["segments"][0] == "|"
        assert len(layer["tile_resolution"]) == math.ceil(n / 8)
        assert all(1 / 8 <= r <= 1 for r in layer["tile_resolution"]) and 0 < layer["mean_resolution"] < 1
    assert generate_cli.segments_view(b"abcd", [True, False, True, False]) == "|ab|cd"
    assert generate_cli.tile_resolutions([True, False, True, True, True], 4) == [0.75, 1.0]
    rc, out, _ = _cli(generate_cli.main, [ckpt, "--prompt", "x", "--max-bytes", "5", "--budget", "1"], capsys)
    assert rc == 0 and "segments" in out
    rc, _, err = _cli(generate_cli.main, [ckpt, "--prompt", ""], capsys)
    assert rc == 2 and "must not be empty" in err
    rc, _, err = _cli(generate_cli.main, [ckpt, "--prompt", "x", "--budget", "2"], capsys)
    assert rc == 2 and "(0, 1]" in err
    scan = tiny_model("scan-adaptive", 0.5)
    save_text_checkpoint(tmp_path / "scan.safetensors", scan, configuration="scan-adaptive", budget=0.5, context=48)
    rc, _, err = _cli(generate_cli.main, [str(tmp_path / "scan.safetensors"), "--prompt", "x"], capsys)
    assert rc == 2 and "scan-scope" in err


def test_evaluate_runs_as_a_module(trained):
    """``python -m tiling.train.evaluate`` exits with the code main() returns (2 on bad input)."""
    ckpt = str(trained[1].out / "checkpoint.safetensors")
    bad = subprocess.run([sys.executable, "-m", "tiling.train.evaluate", ckpt, "--text-file", "/nonexistent"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_read_text_file_messages(tmp_path):
    p = _write(tmp_path / "x.txt", "héllo\n".encode() + b"\xc3(")
    with pytest.raises(TextInputError, match=r"read 9 bytes, decoding failed at byte offset 7 \(line 2, column 1"):
        read_text_file(p)
    assert read_text_file(_write(tmp_path / "ok.txt", "ok ✓".encode())) == "ok ✓".encode()


# ----------------------------------------------------------------------------- the sweep
def test_sweep_resume_and_table(tmp_path, capsys):
    mod = text_cli
    base = ["--sweep", "--table", "tiled", "--train-file", str(SLICE / "tutorial/controlflow.rst.txt"),
            "--val-file", str(SLICE / "howto/sockets.rst.txt"), "--test-file", str(SLICE / "faq/general.rst.txt"),
            "--context", "32", "--batch-size", "2", "--d-model", "8", "--n-layers", "1", "--d-state", "4",
            "--tile-size", "8", "--max-steps", "2", "--val-windows", "2", "--test-bytes", "200", "--no-speed",
            "--quiet", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "text_lm.json"),
            "--figures", str(tmp_path / "fig")]
    assert mod.main(base + ["--only", "full@1/s0", "uniform@0.35/s0"]) == 0
    table = json.loads((tmp_path / "text_lm.json").read_text())
    assert [r["row"] for r in table["rows"]] == ["full@1/s0", "uniform@0.35/s0"]
    first = table["rows"][0]
    for key in ("configuration", "budget", "seed", "test_bpb", "validation_curve", "train_bytes", "train_seconds",
                "flops_per_byte", "prefill_bytes_per_s", "decode_bytes_per_s"):
        assert key in first
    assert (tmp_path / "fig" / "text_lm_bpb_vs_flops.png").stat().st_size > 0
    assert (tmp_path / "fig" / "text_lm_bpb_vs_time.png").stat().st_size > 0
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "text_lm.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    assert mod.main(base) == 2  # finished rows are never overwritten silently
    assert "pass --resume" in capsys.readouterr().err
    stamp = (tmp_path / "runs" / "full_b1_s0" / "row.json").stat().st_mtime_ns
    assert mod.main(base + ["--resume"]) == 0  # all rows: skips the two finished ones
    out = capsys.readouterr().out
    assert "full@1/s0: finished, skipped" in out
    assert (tmp_path / "runs" / "full_b1_s0" / "row.json").stat().st_mtime_ns == stamp
    table = json.loads((tmp_path / "text_lm.json").read_text())
    names = [r["row"] for r in table["rows"]]
    assert len(names) == 16 and len(set(names)) == 16
    best = table["goals"]["best_adaptive"]
    assert best in ("adaptive", "router", "scan-adaptive")
    assert {f"{best}@0.25/s0", "uniform@0.5/s0", "full@0.25/s0"} <= set(names)
    evald = next(r for r in table["rows"] if r["row"] == "full@0.25/s0")
    assert evald["kind"] == "evaluated" and evald["trained_budget"] == 1.0 and evald["test_mean_resolution"] < 0.5
    # the speed of every trained row, in one run (scripts/bench_text.py)
    bench = load_script("bench_text")
    trained = sum(r["kind"] == "trained" for r in table["rows"])
    assert bench.main(["--runs", str(tmp_path / "runs"), "--test-file", str(SLICE / "faq/general.rst.txt"),
                       "--context", "32", "--decode-bytes", "4", "--rounds", "1",
                       "--json", str(tmp_path / "speed.json")]) == 0
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert len(speed["rows"]) == trained + 3 and speed["rows"][0]["case"] == "full@1/s0"
    assert speed["rows"][0]["prefill_x_full"] == 1.0 and speed["rows"][0]["decode_x_full"] == 1.0
    for r in speed["rows"]:
        assert r["prefill_bytes_per_s"] > 0 and (r["decode_bytes_per_s"] is None) == r["configuration"].startswith("scan")
    at_quarter = [g for g in speed["goals"] if g["case"].startswith(("full@0.25", f"{best}@0.25", "uniform@0.25"))]
    assert {g["goal"].split()[0] for g in at_quarter} == {"prefill", "decode"}
    assert all(g["met"] == (g["ratio"] >= float(g["goal"].split("≥ ")[1].split("×")[0])) for g in speed["goals"])
    # a lost checkpoint: uniform (a plan free of the weights) is timed on fresh weights, the router is not timed
    (tmp_path / "runs" / "uniform_b0.35_s0" / "checkpoint.safetensors").unlink()
    (tmp_path / "runs" / "router_b0.35_s0" / "checkpoint.safetensors").unlink()
    capsys.readouterr()
    assert bench.main(["--runs", str(tmp_path / "runs"), "--test-file", str(SLICE / "faq/general.rst.txt"),
                       "--context", "32", "--decode-bytes", "4", "--rounds", "1",
                       "--json", str(tmp_path / "speed.json")]) == 0
    err = capsys.readouterr().err
    assert "uniform@0.35/s0: checkpoint" in err and "fresh weights" in err and "router@0.35/s0: checkpoint" in err
    cases = [r["case"] for r in json.loads((tmp_path / "speed.json").read_text())["rows"]]
    assert "uniform@0.35/s0 (fresh weights)" in cases and not any(c.startswith("router@0.35/s0") for c in cases)
    assert len(cases) == trained + 3 - 1


def test_sweep_row_names_and_outer_layers():
    """``--full-layers`` applies to the block-scope configurations only: full resolution and the scan
    scope keep token-level outputs in every layer, so one row serves both choices."""
    mod = text_sweep
    assert mod.row_name("full", 1.0, 0, (0, -1)) == "full@1/s0"
    assert mod.row_name("scan-adaptive", 0.35, 1, (0, -1)) == "scan-adaptive@0.35/s1"
    assert mod.row_name("uniform", 0.35, 0, (0, -1)) == "uniform+ends@0.35/s0"
    assert mod.row_name("router", 0.25, 0, (1,)) == "router+fl1@0.25/s0"
    args = argparse.Namespace(full_layers=(0, -1), ablation=False)
    layers = {mod.spec_name(s): tuple(s["full_layers"]) for s in mod.phase1_rows(args) + mod.phase2_rows("adaptive", args)}
    assert layers["full@1/s1"] == () and layers["adaptive+ends@0.35/s1"] == (0, -1)
    assert layers["full@0.25/s0"] == () and layers["uniform+ends@0.25/s0"] == (0, -1)


def test_goals_over_rows_with_full_resolution_ends():
    """The goals read the rows of the sweep's --full-layers choice: rows store resolved indices ([0, 3]
    in 4 layers) while ``--full-layers ends`` is (0, -1); an all-tiled row of the same configuration is
    left out. Numbers checked by hand: the router curve at full's 1000 training bytes interpolates to
    2.05 (s0) and 2.2 (s1)."""
    mod = text_sweep

    def row(config, budget, seed, layers, bpb, curve, train_bytes, prefill=100.0, decode=10.0):
        return {"row": f"{config}@{budget:g}/s{seed}", "configuration": config, "budget": budget, "seed": seed,
                "kind": "trained", "full_resolution_layers": layers, "n_layers": 4, "test_bpb": bpb,
                "validation_curve": [{"bytes": b, "bpb": v} for b, v in curve], "train_bytes": train_bytes,
                "prefill_bytes_per_s": prefill, "decode_bytes_per_s": decode}

    rows = [row("full", 1.0, 0, [], 2.0, [(0, 8.0), (1000, 2.0)], 1000),
            row("full", 1.0, 1, [], 2.2, [(0, 8.0), (1000, 2.2)], 1000),
            row("router", 0.35, 0, [0, 3], 1.9, [(0, 8.0), (500, 2.1), (1500, 2.0)], 1500),
            row("router", 0.35, 1, [0, 3], 2.1, [(0, 8.0), (500, 2.3), (1500, 2.1)], 1500),
            row("router", 0.35, 0, [], 9.0, [(0, 9.0), (1500, 9.0)], 1500),  # all tiled: not this sweep's choice
            row("uniform", 0.35, 0, [0, 3], 2.05, [(0, 8.0), (1500, 2.05)], 1500),
            row("uniform", 0.35, 1, [0, 3], 2.05, [(0, 8.0), (1500, 2.05)], 1500),
            row("router", 0.25, 0, [0, 3], 2.2, [(0, 8.0), (1500, 2.2)], 1500, prefill=180.0, decode=30.0)]
    g = mod.goals(rows, "router", (0, -1))
    assert g["equal_bytes_val_bpb"] == pytest.approx({"adaptive": 2.125, "full": 2.1})
    assert g["within_3pct_of_full_at_equal_bytes"] is True
    assert g["test_bpb_at_0.35"] == pytest.approx({"full": 2.1, "router": 2.0, "uniform": 2.05})
    assert g["2pct_better_than_uniform"] is True  # 2.0 <= 0.98 * 2.05 = 2.009
    assert g["beats_full_at_equal_wall_time"] is True
    # the rows' own rates (180 against 100 B/s) are never divided: the bench times the pair in one run
    assert not any("speedup" in k for k in g) and g["speed"]["timed_by"] == mod.SPEED_BENCH
    rows[3]["test_bpb"] = 2.2  # router mean 2.05 = uniform's: not 2 % better
    assert mod.goals(rows, "router", (0, -1))["2pct_better_than_uniform"] is False
