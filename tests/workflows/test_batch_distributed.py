"""``infogeo analyse --batch`` under torchrun (issue 17, item 5): 2 CPU ranks give the merged
results of 1 process; rank files of an interrupted run are merged by --resume and refused otherwise.

Reference: the same command in one process (in-process ``main``). Lines are compared whole,
except the two fields that record when and how fast a report was made (``created``, ``timings``).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import tiling.workflows.analysis
from tiling.workflows.batch import merge_results, rank_file, rank_files
from tiling.workflows.cli import main
from tiling.workflows.distributed import Ranks
from tiling.train.textmodel import build_model, model_config, save_text_checkpoint

TEXTS = ["Alpha beta gamma delta.", "The second text is here.", "\x00\x01", "Third: curvature of tokens.",
         "Fourth line, a little longer than the rest."]  # line 3 (two bytes) is too short: it fails on rank 0
FAST = ["--k", "4", "--n-eigs", "3", "--tile-size", "4", "--quiet", "--no-figures"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-layer d16 TiledLM checkpoint, the texts, and the one-process results."""
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    ckpt = root / "tiny.safetensors"
    save_text_checkpoint(ckpt, build_model(model_config("full", d_model=16, n_layers=2, tile_size=4)),
                         configuration="full", budget=1.0, context=64)
    src = root / "texts.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    base = ["analyse", "--file", str(src), "--batch", "--model", str(ckpt), *FAST]
    assert main(base + ["--out", str(root / "one")]) == 2  # line 3 fails, the others are written
    return root, base, (root / "one" / "results.jsonl").read_text().splitlines()


def _comparable(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        rec = json.loads(line)
        rec["report"].pop("created")
        rec["report"].pop("timings")
        out.append(rec)
    return out


def _torchrun(argv: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tiling.workflows.cli", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_merge_to_the_one_process_results(setup):
    root, base, one = setup
    out = root / "two"
    run = _torchrun(base + ["--out", str(out)], root)
    assert run.returncode != 0  # line 3 failed: rank 0 exits 2, torchrun reports the failure
    errors = [e for e in run.stderr.splitlines() if e.startswith("infogeo: error:")]
    assert errors == ["infogeo: error: 1 of 5 texts could not be analysed (line 3 of --file; see the warnings); "
                      "fix or remove them and run again with --resume"], run.stderr
    assert run.stdout.count("results written to") == 1 and "(4 new, 0 skipped as already done, 1 failed; 2 ranks)" \
        in run.stdout, run.stdout
    two = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in two] == [0, 1, 3, 4]
    assert _comparable(two) == _comparable(one)
    assert rank_files(out / "results.jsonl") == []


def test_two_ranks_resume_merges_an_interrupted_runs_rank_files(setup):
    """An interrupted 2-rank run: text 0 merged, texts 1 and 3 left in rank files (one torn line);
    a 2-rank --resume computes only text 4, and the merged file holds every text once, in order."""
    root, base, one = setup
    out = root / "resumed"
    out.mkdir()
    results = out / "results.jsonl"
    results.write_text(one[0] + "\n")
    rank_file(results, 1).write_text(one[1] + "\n" + one[3][:40])  # text 1, and text 4 torn mid-line
    rank_file(results, 0).write_text(one[2] + "\n")  # text 3
    run = _torchrun(base + ["--out", str(out), "--resume"], root)
    assert "3 result line(s) in 2 rank file(s) of an interrupted run merged" in run.stderr, run.stderr
    assert "1 line(s)" in run.stderr and "do not parse" in run.stderr
    assert "(1 new, 3 skipped as already done, 1 failed; 2 ranks)" in run.stdout, run.stdout
    got = results.read_text().splitlines()
    assert [json.loads(x)["index"] for x in got] == [0, 1, 3, 4]
    assert _comparable(got) == _comparable(one)
    assert (out / "results.jsonl.unparsable").read_text() == one[3][:40] + "\n"
    assert rank_files(results) == []


def test_rank_files_of_an_interrupted_run_refuse_a_plain_run(setup, capsys, monkeypatch):
    root, base, one = setup
    out = root / "left"
    out.mkdir()
    rank_file(out / "results.jsonl", 1).write_text(one[1] + "\n")
    monkeypatch.setattr(tiling.workflows.analysis, "analyse", lambda *a, **k: pytest.fail("the analysis ran"))
    assert main(base + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds results.rank1.jsonl (a rank file of an interrupted torchrun run)" in err, err
    assert "--resume" in err and "--overwrite" in err


def test_one_process_resume_and_overwrite_handle_rank_files(setup, capsys, monkeypatch):
    root, base, one = setup
    out = root / "single"
    out.mkdir()
    results = out / "results.jsonl"
    rank_file(results, 0).write_text(one[0] + "\n" + one[2] + "\n")
    rank_file(results, 1).write_text(one[1] + "\n" + one[3] + "\n")
    monkeypatch.setattr(tiling.workflows.analysis, "analyse", lambda *a, **k: (_ for _ in ()).throw(ValueError("too short")))
    assert main(base + ["--out", str(out), "--resume"]) == 2  # only line 3 is left, and it fails again
    assert "(0 new, 4 skipped as already done, 1 failed)" in capsys.readouterr().out
    assert results.read_text().splitlines() == [one[0], one[1], one[2], one[3]]
    stale = rank_file(results, 1)
    stale.write_text(one[1] + "\n")
    before = results.read_text()
    assert main(base + ["--out", str(out), "--overwrite"]) == 2  # every text fails under the stub
    # no new result was written: the previous results, kept aside meanwhile, are put back (issue 27)
    assert stale.read_text() == one[1] + "\n" and results.read_text() == before


def test_merge_orders_by_index_after_the_kept_lines(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_bytes(b'{"index": 7}\n{"index": 2, "tor')  # kept first, as they are; the torn line stays one
    a, b = rank_file(results, 0), rank_file(results, 1)
    a.write_bytes(b'{"index": 4}\n{"index": 0}\nnot json\n')
    b.write_bytes(b'{"index": 1}\n\n{"index": 4, "again": 1}\n')
    assert rank_files(results) == [a, b]
    assert merge_results(results, [a, b]) == 5
    assert results.read_bytes() == (b'{"index": 7}\n{"index": 2, "tor\n{"index": 0}\n{"index": 1}\n{"index": 4}\n'
                                    b'{"index": 4, "again": 1}\nnot json\n')
    assert not a.exists() and not b.exists()


def test_ranks_from_the_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    solo = Ranks.from_env()
    assert (solo.rank, solo.world, solo.is_root) == (0, 1, True)
    assert solo.shard(list(range(5))) == [0, 1, 2, 3, 4] and solo.share(3) == 3 and solo.gather(3) == [3]
    assert Ranks(1, 3).shard(list(range(8))) == [1, 4, 7]
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        Ranks.from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK must lie in 0\.\.1"):
        Ranks.from_env()


def test_a_single_text_under_torchrun_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["analyse", "some text", "--out", "unused"]) == 2
    assert "only --batch shards its texts" in capsys.readouterr().err
