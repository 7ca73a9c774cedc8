"""scripts/train_tiled.py never replaces a saved run, never resumes under other settings, cleans up
after a killed checkpoint write and writes checkpoints readable by others (issue 16, findings 2–4, 7)."""
import json
import os
import subprocess
import sys

from test_train import ROOT, SCRIPT, TINY
from train_tiled_runs import STEPS, one_error_line, run_main, snapshot


def test_a_new_run_into_an_existing_run_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out)])[0] == 0
    before = snapshot(out)
    code, cap = run_main(capsys, ["--out", str(out), "--lr", "5e-3"])
    assert code == 2
    one_error_line(cap, "holds a run", "--resume", "--overwrite")
    assert snapshot(out) == before


def test_overwrite_replaces_the_run_and_starts_a_new_log(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out)])[0] == 0
    assert run_main(capsys, ["--out", str(out), "--overwrite", "--steps", "3"])[0] == 0
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == [0, 1, 2]  # one run's log, not two mixed


def test_resume_with_another_learning_rate_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out), "--steps", "4", "--stop-at", "2"])[0] == 0
    ck = out / "checkpoint.safetensors"
    before = ck.read_bytes()
    code, cap = run_main(capsys, ["--out", str(out), "--steps", "4", "--resume", str(ck), "--lr", "5e-3",
                                       "--seed", "3"])
    assert code == 2
    assert "--lr 0.01 there, 0.005 now" in cap.err and "--seed 0 there, 3 now" in cap.err, cap.err
    assert ck.read_bytes() == before
    # the same settings (run-control flags may change) continue the run
    assert run_main(capsys, ["--out", str(out), "--steps", "4", "--resume", str(ck), "--log-every", "2"])[0] == 0


def test_periodic_checkpoints_record_the_settings_too(capsys, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "run"
    assert run_main(capsys, ["--out", str(out), "--steps", "4", "--stop-at", "3", "--ckpt-every", "2"])[0] == 0
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        recorded = json.loads(f.metadata()["meta"])["extra"]["args"]
    assert recorded["lr"] == "0.01" and "out" not in recorded and "resume" not in recorded


def test_stale_temporaries_of_a_killed_checkpoint_write_are_removed(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.safetensors.k2j3h4.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = out / ".my.tmp"
    mine.write_text("not the script's")
    code, cap = run_main(capsys, ["--out", str(out)])
    assert code == 0 and not stale.exists() and mine.read_text() == "not the script's"
    assert "removed 1 temporary file" in cap.err


def test_checkpoint_mode_follows_the_umask(capsys, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert run_main(capsys, ["--out", str(out)])[0] == 0
    finally:
        os.umask(old)
    assert (out / "checkpoint.safetensors").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_sweep_refuses_before_training_when_a_run_directory_is_taken(capsys, tmp_path):
    taken = tmp_path / "s" / "binary_0.5"
    taken.mkdir(parents=True)
    (taken / "log.jsonl").write_text('{"kind": "train"}\n')
    code, cap = run_main(capsys, ["--sweep", "--budgets", "0.5", "--out", str(tmp_path / "s")])
    assert code == 2 and "binary_0.5" in cap.err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["binary_0.5"]  # nothing trained


def test_refusal_via_the_command_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"the user's")
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, *STEPS, "--out", str(out)], capture_output=True,
                          text=True, timeout=240, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("train_tiled: error:")
    assert (out / "checkpoint.safetensors").read_bytes() == b"the user's"
