"""``infogeo train``'s options defined once (issue 26, items 1 and 3): every field of
:class:`~tiling.train.trainer.TrainOptions` and :class:`~tiling.train.text_cli.TextCommand` reaches the
generated parser, its default round-trips, it reaches the record (``to_dict``) and the run's fingerprint
(``run.json``); bad values are one :class:`~tiling.options.UsageError` naming the flag (one line, exit 2
through ``infogeo``); a tiny real run through ``infogeo train`` writes a checkpoint that loads."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from tiling.options import Parser, UsageError
from tiling.train import text_cli
from tiling.train.text_cli import TextCommand
from tiling.train.textmodel import load_text_model
from tiling.train.trainer import TrainOptions
from tiling.workflows.cli import main as infogeo

JOBS = (TrainOptions, TextCommand)
TEXT = b"def f(x):\n    return x + 1\n\nfor i in range(10):\n    print(f(i))\n" * 8


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="train")
    text_cli.add_arguments(p)
    return p


def _flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {a.dest: a.option_strings for a in parser._actions if a.dest != "help"}


def test_every_field_reaches_the_parser_with_its_flag_and_default():
    flags = _flags(_parser())
    assert set(flags) == set(TrainOptions.specs()) | set(TextCommand.specs())  # one flag per field, no other
    args = _parser().parse_args([])
    for cls in JOBS:
        for name, spec in cls.specs().items():
            assert flags[name] == [spec.flag], name
        assert cls.from_args(args) == cls()  # the parser's defaults are the object's defaults
    assert TrainOptions.flags()["speed"] == "--no-speed" and TextCommand.flags()["only"] == "--only"


@pytest.mark.parametrize("cls", JOBS, ids=lambda c: c.__name__)
def test_each_default_round_trips_through_its_flag(cls):
    default = cls()
    for name, spec in cls.specs().items():
        value = getattr(default, name)
        if spec.kind == "bool" or value is None:
            continue
        text = {tuple: lambda v: ",".join(map(str, v)) or "none"}.get(type(value), str)(value)
        args = _parser().parse_args([spec.flag, text])
        assert getattr(cls.from_args(args), name) == value, name


def test_every_field_reaches_the_record():
    for cls in JOBS:
        record = cls().to_dict()
        assert set(record) == set(cls.specs())
        json.dumps(record, allow_nan=False)
    changed = TrainOptions.from_args(_parser().parse_args(["--lr", "0.01", "--no-speed", "--max-steps", "7",
                                                          "--clock", "wall", "--device", "cpu"]))
    assert changed.to_dict() == {**TrainOptions().to_dict(), "lr": 0.01, "speed": False, "max_steps": 7,
                                 "clock": "wall"}
    cmd = TextCommand.from_args(_parser().parse_args(["--sweep", "--table", "tiled", "--only", "full@1/s0",
                                                      "uniform+ends@0.35/s0", "--full-layers", "ends"]))
    assert cmd.only == ("full@1/s0", "uniform+ends@0.35/s0") and cmd.full_layers == (0, -1)
    assert cmd.to_dict()["only"] == ["full@1/s0", "uniform+ends@0.35/s0"] and cmd.to_dict()["full_layers"] == [0, -1]


@pytest.mark.parametrize("argv, flag, message", [
    (["--lr", "-1"], "--lr", "--lr must lie in (0, 10], got -1.0"),
    (["--lr", "nan"], "--lr", "--lr must lie in (0, 10], got nan"),
    (["--batch-size", "0"], "--batch-size", "--batch-size must lie in [1, 65536], got 0"),
    (["--clock", "bogus"], "--clock", "invalid choice: 'bogus'"),
    (["--threads", "0"], "--threads", "--threads must lie in [1, 4096], got 0"),
    (["--device", "bogus"], "--device", "--device must name a torch device"),
    (["--shard", "2/2"], "--shard", "--shard must be i/n with 0 <= i < n, got '2/2'"),
    (["--budget-range", "0.5,0.25"], "--budget-range", "--budget-range must satisfy 0 < LO <= HI <= 1"),
    (["--full-layers", "4"], "--full-layers", "--full-layers: layer 4 does not exist in a model of --n-layers 4"),
    (["--sweep", "--only", "nope"], "--only", "--only: no such row(s) nope"),
])
def test_bad_values_are_a_usage_error_naming_the_flag(argv, flag, message):
    with pytest.raises(UsageError) as e:
        text_cli.parse_args(argv)
    assert flag in str(e.value) and message in str(e.value)


def test_in_python_the_error_names_the_keyword():
    with pytest.raises(UsageError, match=r"^lr must lie in \(0, 10\], got -1.0$"):
        TrainOptions(lr=-1)
    with pytest.raises(UsageError, match=r"^batch_size must lie in \[1, 65536\], got 0$"):
        TrainOptions(batch_size=0)
    with pytest.raises(TypeError, match=r"^speed must be a bool"):
        TrainOptions(speed=1)
    with pytest.raises(UsageError, match=r"^full_layers: layer -5 does not exist in a model of n_layers 4$"):
        TextCommand(full_layers=(-5,))


@pytest.mark.parametrize("argv, flag", [(["--batch-size", "0"], "--batch-size"), (["--lr", "-1"], "--lr"),
                                        (["--clock", "bogus"], "--clock"), (["--threads", "0"], "--threads")])
def test_infogeo_train_refuses_bad_values_in_one_line(capsys, argv, flag):
    assert infogeo(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("infogeo: error:") and flag in err, err


def test_infogeo_train_runs_from_the_package_and_writes_a_checkpoint_that_loads(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_bytes(TEXT)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        code = infogeo(["train", "--train-file", str(text), "--max-steps", "2", "--context", "16", "--batch-size", "2",
                        "--d-model", "8", "--n-layers", "1", "--d-state", "2", "--tile-size", "4", "--val-windows",
                        "2", "--test-bytes", "64", "--no-speed", "--quiet", "--lr", "0.004", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    row = json.loads(capsys.readouterr().out)
    assert row["steps"] == 2 and row["train_bytes"] == 2 * 2 * 16 and row["stop_reason"] == "max_steps"
    model, extra = load_text_model(out / "checkpoint.safetensors")
    assert extra["context"] == 16 and extra["budget"] == 0.35 and sum(p.numel() for p in model.parameters()) > 0
    settings = json.loads((out / "run.json").read_text())["settings"]  # the run's fingerprint
    want = TrainOptions(context=16, batch_size=2, max_steps=2, val_windows=2, test_bytes=64, speed=False, lr=0.004)
    assert {k: settings[k] for k in TrainOptions.specs() if k not in ("quiet", "threads")} == {
        k: v for k, v in want.to_dict().items() if k not in ("quiet", "threads")}
    assert infogeo(["train", "--train-file", str(text), "--max-steps", "2", "--out", str(out)]) == 2
    assert "finished run" in capsys.readouterr().err  # never replaced without --overwrite
