"""scripts/train_tiled.py under the writer discipline (issue 27, items 2 and 5): one run per folder at a
time, no run replaced by a resume of another folder, --overwrite that costs nothing on a typo, the log
cut back to the checkpoint on resume, every expected error one line naming the option with exit 2,
Ctrl-C exit 130."""
import errno
import json
import os
import subprocess
import sys
import time

import pytest

from test_train import ROOT, SCRIPT, TINY
from train_tiled_runs import one_error_line, run_main, script, snapshot


def test_a_second_run_into_the_same_out_is_refused_at_once(capsys, tmp_path):
    """Two real processes: the first trains, the second is refused naming the first's pid (was: no lock,
    and the second run replaced the first's files)."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, "--steps", "100000", "--eval-every", "100000",
                              "--log-every", "1000", "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not (tmp_path / ".run.lock").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()
        t0 = time.time()
        code, cap = run_main(capsys, ["--out", str(out), "--overwrite"])
        assert code == 2 and time.time() - t0 < 30
        one_error_line(cap, "--out", "in use by another run", f"pid {first.pid}", "started")
    finally:
        first.terminate()
        first.wait(timeout=60)


def test_resume_of_another_folder_never_replaces_a_finished_run(capsys, tmp_path):
    """Was: --resume runB/checkpoint --out runA replaced runA's finished checkpoint without --overwrite."""
    a, b = tmp_path / "A", tmp_path / "B"
    assert run_main(capsys, ["--out", str(a)])[0] == 0
    assert run_main(capsys, ["--out", str(b), "--steps", "4", "--stop-at", "2"])[0] == 0
    before = snapshot(a)
    code, cap = run_main(capsys, ["--out", str(a), "--steps", "4", "--resume", str(b / "checkpoint.safetensors")])
    assert code == 2
    one_error_line(cap, "--out", "holds a run", "another folder's checkpoint")
    assert snapshot(a) == before
    # into an empty folder it is a fork of B's run
    assert run_main(capsys, ["--out", str(tmp_path / "C"), "--steps", "4",
                                  "--resume", str(b / "checkpoint.safetensors")])[0] == 0


@pytest.mark.parametrize("typo", [["--tile-size", "0"], ["--exponent", "-1"], ["--dt-min", "0.5", "--dt-max", "0.1"],
                                  ["--train-size", "2", "--batch-size", "4"]])
def test_overwrite_checks_the_new_run_first_and_keeps_the_old_one_until_its_first_checkpoint(capsys, tmp_path,
                                                                                             typo):
    """Was: --overwrite deleted the old checkpoint before checking the new settings. The last case fails
    only when training starts (too few examples for a batch): the old run is put back."""
    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out)])[0] == 0
    (out / "notes.txt").write_text("the user's")
    before = snapshot(out)
    code, cap = run_main(capsys, ["--out", str(out), "--overwrite", *typo])
    assert code == 2 and "train_tiled: error:" in cap.err and "Traceback" not in cap.err
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".run.run-old-*"))


def test_stop_at_below_the_checkpoints_step_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out), "--steps", "6", "--stop-at", "4"])[0] == 0
    code, cap = run_main(capsys, ["--out", str(out), "--steps", "6", "--stop-at", "2",
                                       "--resume", str(out / "checkpoint.safetensors")])
    assert code == 2
    one_error_line(cap, "--stop-at 2 is below the step", "(4)")


def test_resume_cuts_the_log_back_to_the_checkpoints_step(capsys, tmp_path):
    """A run killed after its checkpoint at step 2 had logged steps 2 and 3: a resume logs them again, once."""
    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out), "--steps", "4", "--stop-at", "2"])[0] == 0
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 2, "loss": 9.0}) + "\n" + '{"kind": "train", "st')
    assert run_main(capsys, ["--out", str(out), "--steps", "4", "--resume",
                                  str(out / "checkpoint.safetensors")])[0] == 0
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [0, 1, 2, 3]
    assert all(r.get("loss") != 9.0 for r in records)


@pytest.mark.parametrize("argv,flag", [
    (["--threads", "-1"], "--threads"), (["--eval-every", "0"], "--eval-every"), (["--log-every", "0"], "--log-every"),
    (["--batch-size", "0"], "--batch-size"), (["--device", "bogus"], "--device"), (["--lr", "nan"], "--lr"),
    (["--tile-size", str(2 ** 62)], "--tile-size"), (["--context-len", str(2 ** 40)], "--context-len"),
    (["--budgets", "0"], "--budgets"), (["--steps", "x"], "--steps"), (["--budget", "inf"], "--budget"),
])
def test_bad_options_are_one_line_naming_the_option(capsys, tmp_path, argv, flag):
    """Was: ZeroDivisionError, RuntimeError or argparse's usage dump."""
    code, cap = run_main(capsys, ["--out", str(tmp_path / "run"), *argv])
    assert code == 2
    one_error_line(cap, flag)
    assert not (tmp_path / "run").exists()


def test_a_read_only_out_and_a_full_disk_are_one_line(capsys, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "checkpoint.safetensors"))

    with monkeypatch.context() as m:
        m.setattr(script(), "save_checkpoint", full)
        code, cap = run_main(capsys, ["--out", str(tmp_path / "run")])
    assert code == 2
    one_error_line(cap, "No space left on device", "checkpoint.safetensors")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anywhere: the folder refuses as a read-only one would
        import tiling.train.storage.folder as folder

        def denied(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(folder.tempfile, "mkdtemp", denied)
    try:
        code, cap = run_main(capsys, ["--out", str(ro / "run")])
    finally:
        monkeypatch.undo()
        ro.chmod(0o755)
    assert code == 2
    one_error_line(cap, "--out", "cannot write in", "Permission denied")


def test_ctrl_c_exits_130_and_keeps_the_previous_run(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out)])[0] == 0
    before = snapshot(out)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(script(), "batch_for_step", interrupted)
    code, cap = run_main(capsys, ["--out", str(out), "--overwrite"])
    assert code == 130 and "interrupted" in cap.err and "Traceback" not in cap.err
    assert snapshot(out) == before  # no checkpoint yet: the old run was put back
