"""evaluate and generate (issue 27, items 5 and 6): every expected error one line naming the option with
exit 2, Ctrl-C exit 130, generate streams and caps --max-bytes, and budgets are honest (the realised
mean resolution beside the requested budget, a warning when the checkpoint was not trained for it or
its router ignores it)."""
import json

import pytest
import torch

from tiling.train import evaluate, generate
from tiling.train.textmodel import build_model, model_config, save_text_checkpoint

TINY = dict(d_model=16, n_layers=2, d_state=4, tile_size=8)
TEXT = ("The for statement in Python differs a bit from what you may be used to in C or Pascal. " * 3).encode()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny untrained checkpoints: an adaptive one at 0.5, a router one at 0.5 (causal: p >= 1/2), a full one."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for config in ("adaptive", "router", "full"):
        torch.manual_seed(0)
        model = build_model(model_config(config, 0.5, **TINY))
        if config == "router":
            with torch.no_grad():
                for layer in model.layers:
                    layer.router.k_proj.weight.normal_(0, 0.3)
        out[config] = str(save_text_checkpoint(root / f"{config}.safetensors", model, configuration=config,
                                               budget=1.0 if config == "full" else 0.5, context=64))
    (root / "text.txt").write_bytes(TEXT)
    out["text"] = str(root / "text.txt")
    return out


def _run(main, argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error(err: str, prog: str, *words):
    lines = [x for x in err.strip().splitlines() if not x.startswith(f"{prog}: warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("argv,flag", [
    (["--threads", "-1"], "--threads"), (["--batch-size", "0"], "--batch-size"), (["--budget", "nan"], "--budget"),
    (["--max-bytes", "1"], "--max-bytes"), (["--context", "0"], "--context"), (["--stride", "-3"], "--stride"),
    (["--batch-size", "x"], "--batch-size"), (["--bogus"], "--bogus"),
])
def test_evaluate_bad_options_are_one_line(ckpts, capsys, argv, flag):
    """Was: a traceback (torch.set_num_threads(-1), argparse's usage dump)."""
    rc, _, err = _run(evaluate.main, [ckpts["adaptive"], "--text-file", ckpts["text"], *argv], capsys)
    assert rc == 2
    _one_error(err, "evaluate", flag)


@pytest.mark.parametrize("argv,flag", [
    (["--threads", "-1"], "--threads"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "1e-300"], "--temperature"), (["--max-bytes", str(10 ** 9)], "--max-bytes"),
    (["--seed", "-1"], "--seed"), (["--top-k", "0"], "--top-k"), (["--budget", "inf"], "--budget"),
    (["--prompt", "\udcff"], "--prompt"), (["--prompt", "a\ud800b"], "--prompt"),
])
def test_generate_bad_options_are_one_line(ckpts, capsys, argv, flag):
    """Was: a traceback for a prompt with a lone surrogate, --temperature nan, --threads -1."""
    rc, _, err = _run(generate.main, [ckpts["adaptive"], "--prompt", "x", *argv], capsys)
    assert rc == 2
    _one_error(err, "generate", flag)


def test_a_checkpoint_that_is_a_folder_is_one_line(tmp_path, capsys):
    rc, _, err = _run(evaluate.main, [str(tmp_path), "--text-file", str(tmp_path)], capsys)
    assert rc == 2
    _one_error(err, "evaluate", "checkpoint")


def test_generate_streams_its_output_and_ctrl_c_keeps_it(ckpts, capsys, monkeypatch):
    seen = []
    res = generate.generate(build_model(model_config("adaptive", 0.5, **TINY)), b"ab", max_bytes=7,
                            on_byte=seen.append)
    assert bytes(seen) == res["generated"] and len(seen) == 7
    real = generate.generate

    def interrupted(*a, on_byte=None, **k):  # five bytes are sampled and printed, then Ctrl-C
        calls = []

        def count(b):
            on_byte(b)
            calls.append(b)
            if len(calls) == 5:
                raise KeyboardInterrupt

        return real(*a, on_byte=count, **k)

    monkeypatch.setattr(generate, "generate", interrupted)
    rc, out, err = _run(generate.main, [ckpts["adaptive"], "--prompt", "Hi", "--max-bytes", "50"], capsys)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert out.startswith("Hi") and len(out.encode()) >= 2 + 5 - 3  # the streamed bytes stay (some may be one char)


def test_evaluate_and_generate_state_the_realised_resolution_beside_the_budget(ckpts, capsys):
    rc, out, err = _run(evaluate.main, [ckpts["adaptive"], "--text-file", ckpts["text"], "--json"], capsys)
    res = json.loads(out)
    assert rc == 0 and res["requested_budget"] is None and res["budget"] == 0.5 and 0 < res["mean_resolution"] < 1
    rc, out, err = _run(evaluate.main, [ckpts["adaptive"], "--text-file", ckpts["text"], "--budget", "0.5"], capsys)
    assert rc == 0 and "evaluated at budget 0.5: realised mean resolution" in out
    rc, out, err = _run(generate.main, [ckpts["adaptive"], "--prompt", "The for", "--max-bytes", "20"], capsys)
    assert rc == 0 and "budget 0.5 (as trained), realised mean resolution" in out


def test_a_router_that_ignores_the_budget_is_named(ckpts, capsys):
    """Was: bundled:adaptive (a learned router) at --budget 0.25 printed "budget 0.25" while it realised
    R = 0.42, and gave the same bpb and text as at 0.5."""
    outs = {}
    for c in ("0.25", "0.5"):
        rc, out, err = _run(evaluate.main, [ckpts["router"], "--text-file", ckpts["text"], "--budget", c, "--json"],
                            capsys)
        outs[c] = json.loads(out)
        assert rc == 0 and "learned router" in err and "does not steer it" in err
        assert any("learned router" in w for w in outs[c]["warnings"])
    assert outs["0.25"]["bpb"] == outs["0.5"]["bpb"]  # what the warning says
    assert "trained at budget 0.5 only" in " ".join(outs["0.25"]["warnings"])
    rc, out, err = _run(generate.main, [ckpts["router"], "--prompt", "The for", "--max-bytes", "10",
                                        "--budget", "0.25"], capsys)
    assert rc == 0 and "generate: warning:" in err and "learned router" in err


def test_a_full_resolution_checkpoint_below_budget_1_warns(ckpts, capsys):
    """Was: bundled:full below budget 1 gave 5-7 bpb with no warning."""
    rc, out, err = _run(evaluate.main, [ckpts["full"], "--text-file", ckpts["text"], "--budget", "0.25"], capsys)
    assert rc == 0 and "evaluate: warning: this checkpoint was trained at budget 1 only" in err
    rc, out, err = _run(evaluate.main, [ckpts["full"], "--text-file", ckpts["text"]], capsys)
    assert rc == 0 and "warning" not in err
