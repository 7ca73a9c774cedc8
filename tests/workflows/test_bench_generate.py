"""``scripts/bench_generate.py`` (issue 23's goal on ``generate``): real processes of the CLI, timed per setting."""
import json

import pytest
from conftest import load_script

from tiling.train.textmodel import build_model, model_config, save_text_checkpoint


def test_bench_generate_times_every_setting_and_judges_the_default_against_the_best(tmp_path, capsys):
    bench = load_script("bench_generate")
    ckpt = save_text_checkpoint(tmp_path / "m.safetensors", build_model(model_config("full", 1.0, d_model=8, n_layers=1,
                                                                                     d_state=2)),
                                configuration="full", budget=1.0, context=64)
    out = tmp_path / "g.json"
    assert bench.main(["--checkpoints", str(ckpt), "--max-bytes", "3", "--rounds", "1", "--max-threads", "1",
                       "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [r["threads"] for r in got["rows"]] == [None, 1]
    best = min(r["seconds"] for r in got["rows"])
    for r in got["rows"]:
        assert r["seconds"] > 0 and r["over_best"] == pytest.approx(r["seconds"] / best)
    assert got["met"] == (got["rows"][0]["over_best"] <= bench.GOAL)
    assert "| default |" in capsys.readouterr().out.replace(str(ckpt), "")
    with pytest.raises(SystemExit) as e:  # a failing generate names its command and exit code
        bench.main(["--checkpoints", str(tmp_path / "missing.safetensors"), "--max-bytes", "3", "--rounds", "1",
                    "--max-threads", "1"])
    assert "missing.safetensors" in str(e.value) and "exited 2" in str(e.value)
    with pytest.raises(SystemExit) as e:  # a count below 1: argparse's error naming the flag, exit 2
        bench.main(["--rounds", "0"])
    assert e.value.code == 2 and "--rounds must be a positive integer, got 0" in capsys.readouterr().err
