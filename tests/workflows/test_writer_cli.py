"""``infogeo analyse`` and ``infogeo verify`` under the writer discipline (issue 27, items 2 and 4): one
run per folder (two real processes), settings checked before any work, --overwrite that keeps the old
results until the first new one, verify never overwriting a report in place, size bounds first."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tiling.workflows.analysis
import tiling.workflows.verify as V
from tiling.workflows.cli import main

from analyse_runs import FAST, batch_run, one_line_error, snapshot

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("cached_model_loading")


def test_two_batch_runs_into_one_out_the_second_is_refused_at_once(capsys, tmp_path):
    """The issue's case: two --batch runs with other settings into one --out both exited 0 and the first
    one's results were gone. Now the second (another process) is refused naming the first."""
    out, argv = batch_run(tmp_path, "First text about curvature.\nSecond text here.\n", "--no-figures")
    code = textwrap.dedent(f"""
        import sys, tiling.workflows.analysis as A
        from tiling.workflows.cli import main
        def held(*a, **k):  # the first run is busy analysing: it waits until the test lets it go
            print("analysing", flush=True)
            sys.stdin.read()
            raise KeyboardInterrupt
        A.analyse = held
        sys.exit(main({argv!r}))
    """)
    first = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert first.stdout.readline().strip() == "analysing", first.stderr.read()
        t0 = time.time()
        msg = one_line_error(capsys, main(argv + ["--budget", "0.5"]), "--out", "in use by another run",
                             f"pid {first.pid}")
        assert "started" in msg and time.time() - t0 < 60
    finally:
        _, err = first.communicate("", timeout=120)
    assert first.returncode == 130, err  # Ctrl-C: exit 130


def test_batch_resume_checks_the_recorded_settings_before_the_model_loads(capsys, tmp_path, monkeypatch):
    """A run killed before its first text left an empty results file: a resume under other settings was
    accepted (no line to compare). run.json records them: refused before the model loads."""
    out, base = batch_run(tmp_path, "First text about curvature.\n", "--no-figures")
    with monkeypatch.context() as m:
        m.setattr(tiling.workflows.analysis, "analyse", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert main(base) == 130
    capsys.readouterr()
    assert json.loads((out / "run.json").read_text())["settings"]["budget"] == 0.35
    import tiling.workflows.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    one_line_error(capsys, main(base + ["--resume", "--budget", "0.5"]), "--resume", "--budget 0.35 there, 0.5 now")


def test_batch_overwrite_keeps_the_old_results_until_the_first_new_line(capsys, tmp_path, monkeypatch):
    out, base = batch_run(tmp_path, "First text about curvature.\nSecond text here.\n", "--no-figures")
    assert main(base) == 0
    before = snapshot(out)
    monkeypatch.setattr(tiling.workflows.analysis, "analyse", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(base + ["--overwrite", "--budget", "0.5"]) == 130  # Ctrl-C before any new result
    assert snapshot(out) == before and not list(tmp_path.glob(".b.run-old-*"))


@pytest.mark.parametrize("argv,flag", [(["--tile-size", str(2 ** 63)], "--tile-size"), (["--k", str(2 ** 40)], "--k"),
                                       (["--n-eigs", str(2 ** 40)], "--n-eigs"),
                                       (["--max-length", str(2 ** 40)], "--max-length")])
def test_size_options_have_an_upper_bound_checked_first(capsys, tmp_path, monkeypatch, argv, flag):
    """Was: --tile-size 2**63 failed only after the whole computation."""
    monkeypatch.setattr(tiling.workflows.analysis, "analyse", lambda *a, **k: pytest.fail("the analysis ran"))
    argv = ["analyse", "Some text here.", "--out", str(tmp_path / "r"), *FAST, "--no-figures", *argv]
    one_line_error(capsys, main(argv), flag, "must lie in")


# ---- infogeo verify ---------------------------------------------------------------------------------
def test_verify_refuses_to_overwrite_a_report_in_place(capsys, tmp_path, monkeypatch):
    """Was: theorems.md/theorems.json overwritten in place, not atomically, never refused."""
    out = tmp_path / "docs"
    (out / "figures" / "theorems").mkdir(parents=True)
    (out / "theorems.md").write_text("the previous report")
    (out / "theorems.json").write_text("{}")
    (out / "figures" / "theorems" / "a.png").write_bytes(b"png")
    (out / "analysis.md").write_text("another page")
    before = snapshot(out)
    monkeypatch.setattr(V, "_measure_all", lambda *a, **k: pytest.fail("the experiments ran"))
    one_line_error(capsys, main(["verify", "--quick", "--out", str(out)]), "--out", "already holds a report",
                   "theorems.json", "--overwrite")
    assert snapshot(out) == before


def test_verify_overwrite_puts_the_old_report_back_when_the_run_fails(capsys, tmp_path, monkeypatch):
    out = tmp_path / "docs"
    (out / "figures" / "theorems").mkdir(parents=True)
    (out / "theorems.md").write_text("the previous report")
    (out / "figures" / "theorems" / "a.png").write_bytes(b"png")
    (out / "figures" / "mine.png").write_bytes(b"the user's")
    before = snapshot(out)

    def failing(folder, **k):
        (folder / "figures" / "theorems").mkdir(parents=True, exist_ok=True)
        (folder / "figures" / "theorems" / "half.png").write_bytes(b"half")
        assert not (folder / "theorems.md").exists()  # the old report is aside meanwhile
        raise KeyboardInterrupt

    monkeypatch.setattr(V, "_measure_all", failing)
    assert main(["verify", "--quick", "--out", str(out), "--overwrite"]) == 130
    assert snapshot(out) == before


def test_verify_writes_into_its_own_folder_by_default():
    """Was ./docs, relative to wherever it ran."""
    import argparse

    p = argparse.ArgumentParser()
    V.VerifyOptions.add_arguments(p)
    assert p.parse_args([]).out == "infogeo-verify"
