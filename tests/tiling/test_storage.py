"""The writer discipline of every output folder (issue 27, item 2): the package tiling/train/storage/.

Concurrency is tested with two real processes: a child takes the lock, the test's process is refused.
"""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from tiling.train.storage import (RunDirectory, RunLock, StorageError, atomic_write_bytes, cut_log,
                                  differing_settings, fingerprint)

ROOT = Path(__file__).resolve().parents[2]
#: the child processes load the module alone (stdlib only): no torch import, so they start in milliseconds
LOAD = f"import sys; sys.path.append({str(ROOT / 'tiling' / 'train')!r}); import storage"


def _holder(folder: Path, *extra: str):
    """A second process that takes the lock of ``folder`` and waits (stdin) until the test lets it go."""
    code = textwrap.dedent(f"""
        import sys
        {LOAD}
        lock = storage.RunLock({str(folder)!r}, name="--out").acquire()
        print("held", flush=True)
        sys.stdin.read()
        {"lock.release()" if "release" in extra else "import os; os._exit(0)"}
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    child = _holder(out, "release")
    try:
        with pytest.raises(StorageError, match=rf"--out .* is in use by another run \(pid {child.pid} on .*, started "
                                               r"\d{4}-\d\d-\d\dT"):
            RunLock(out, name="--out").acquire()
    finally:
        child.communicate("")
    with RunLock(out, name="--out"):  # released: taken without a word
        pass
    assert not (tmp_path / ".run.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_reported_and_taken(tmp_path):
    out = tmp_path / "run"
    child = _holder(out)  # exits without releasing: the lock file stays, naming a dead pid
    child.communicate("")
    assert json.loads((tmp_path / ".run.lock").read_text())["pid"] == child.pid
    with pytest.warns(UserWarning, match=rf"stale lock of pid {child.pid} .* taken over"):
        lock = RunLock(out, name="--out").acquire()
    assert json.loads((tmp_path / ".run.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_the_lock_nests_in_one_process(tmp_path):
    a, b = RunLock(tmp_path / "x"), RunLock(tmp_path / "x")
    with a, b:
        assert (tmp_path / ".x.lock").exists()
    assert not (tmp_path / ".x.lock").exists()


def test_writes_never_go_through_a_link_that_leaves_the_folder(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    (run / "figures").symlink_to(elsewhere, target_is_directory=True)
    (run / "log.jsonl").symlink_to(elsewhere / "precious.txt")
    with pytest.raises(StorageError, match="its folder is a link to"):
        atomic_write_bytes(run / "figures" / "precious.txt", b"x", root=run)
    with pytest.raises(StorageError, match="is a symbolic link to .*outside"):
        atomic_write_bytes(run / "log.jsonl", b"x")
    assert (elsewhere / "precious.txt").read_text() == "mine" and (run / "log.jsonl").is_symlink()
    (run / "inside").symlink_to(run / "real.txt")  # a link within the folder is replaced, not followed
    atomic_write_bytes(run / "inside", b"new", root=run)
    assert (run / "inside").read_bytes() == b"new" and not (run / "inside").is_symlink()


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    with RunDirectory(tmp_path / "r", settings={"lr": 0.1}, owned=("ck.bin",), name="--out") as run:
        run.write_bytes("ck.bin", b"1")
    (tmp_path / "r" / "notes.txt").write_text("user")
    with pytest.raises(StorageError, match=r"--out .* holds a run \(ck.bin, run.json\); pass --resume"):
        RunDirectory(tmp_path / "r", settings={"lr": 0.1}, owned=("ck.bin",), name="--out").__enter__()
    with pytest.raises(StorageError, match="not both"):
        RunDirectory(tmp_path / "r", resume=True, overwrite=True).__enter__()
    assert not (tmp_path / ".r.lock").exists()  # a refusal releases the lock


def test_resume_checks_the_settings_fingerprint_before_any_work(tmp_path):
    with RunDirectory(tmp_path / "r", settings={"lr": 0.1, "d_model": 32, "name": "a"}, owned=("ck.bin",)) as run:
        run.write_bytes("ck.bin", b"1")
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["fingerprint"] == fingerprint({"name": "a", "d_model": 32, "lr": 0.1})  # key order is irrelevant
    with pytest.raises(StorageError, match=r"other settings \(--d-model 32 there, 64 now; --lr 0.1 there, 0.2 now\)"):
        with RunDirectory(tmp_path / "r", settings={"lr": 0.2, "d_model": 64, "name": "a"}, resume=True,
                          owned=("ck.bin",)):
            pytest.fail("entered")
    with RunDirectory(tmp_path / "r", settings={"lr": 0.1, "d_model": 32, "name": "a"}, resume=True,
                      owned=("ck.bin",)) as run:
        assert run.resumed and run.previous["settings"]["lr"] == 0.1
    assert differing_settings({"a": 1}, {"b": 2}, flags={"b": "-b"}) == ["-b (not recorded) there, 2 now",
                                                                         "--a 1 there, (not recorded) now"]


def _run_with(tmp_path, value: bytes, *, fail_before_result=False, interrupt=False):
    with RunDirectory(tmp_path / "r", settings={"v": value.decode()}, overwrite=True, owned=("ck.bin", "log"),
                      name="--out") as run:
        assert not (tmp_path / "r" / "ck.bin").exists()  # the old one is aside, not here
        run.write_bytes("log", b"partial")
        if interrupt:
            raise KeyboardInterrupt
        if fail_before_result:
            raise ValueError("a typo found late")
        run.write_bytes("ck.bin", value)
        run.result_written()


def test_overwrite_keeps_the_old_run_aside_until_the_first_result(tmp_path):
    """Was: --overwrite deleted the old run before checking anything, so a failure cost it."""
    with RunDirectory(tmp_path / "r", settings={"v": "old"}, owned=("ck.bin", "log")) as run:
        run.write_bytes("ck.bin", b"old")
    (tmp_path / "r" / "mine.txt").write_text("the user's")
    for kind in ("fail_before_result", "interrupt"):
        with warnings.catch_warnings(record=True) as w, pytest.raises((ValueError, KeyboardInterrupt)):
            warnings.simplefilter("always")
            _run_with(tmp_path, b"new", **{kind: True})
        assert "put back" in str(w[-1].message)
        assert (tmp_path / "r" / "ck.bin").read_bytes() == b"old" and not (tmp_path / "r" / "log").exists()
        assert json.loads((tmp_path / "r" / "run.json").read_text())["settings"] == {"v": "old"}
    _run_with(tmp_path, b"new")
    assert (tmp_path / "r" / "ck.bin").read_bytes() == b"new" and (tmp_path / "r" / "mine.txt").exists()
    assert not list(tmp_path.glob(".r.run-old-*")) and not (tmp_path / ".r.lock").exists()


def test_a_killed_overwrite_leaves_the_old_run_aside_and_is_named(tmp_path):
    with RunDirectory(tmp_path / "r", owned=("ck.bin",)) as run:
        run.write_bytes("ck.bin", b"old")
    code = textwrap.dedent(f"""
        import os
        {LOAD}
        run = storage.RunDirectory({str(tmp_path / 'r')!r}, overwrite=True, owned=("ck.bin",)).__enter__()
        os._exit(9)  # killed before the first result
    """)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False)
    aside = list(tmp_path.glob(".r.run-old-*"))
    assert len(aside) == 1 and (aside[0] / "ck.bin").read_bytes() == b"old"
    with pytest.raises(StorageError, match="interrupted and left the previous run in"):
        RunDirectory(tmp_path / "r", overwrite=True, owned=("ck.bin",)).__enter__()


def test_owned_patterns_reach_into_sub_folders_and_spare_the_rest(tmp_path):
    docs = tmp_path / "docs"
    (docs / "figures" / "theorems").mkdir(parents=True)
    (docs / "figures" / "training").mkdir()
    (docs / "figures" / "theorems" / "a.png").write_bytes(b"old")
    (docs / "figures" / "training" / "b.png").write_bytes(b"user")
    (docs / "theorems.md").write_text("old")
    owned = ("theorems.md", "theorems.json", "figures/theorems")
    with pytest.raises(ValueError):
        with RunDirectory(docs, overwrite=True, owned=owned):
            assert not (docs / "theorems.md").exists() and (docs / "figures" / "training" / "b.png").exists()
            raise ValueError("stop")
    assert (docs / "figures" / "theorems" / "a.png").read_bytes() == b"old" and (docs / "theorems.md").exists()


def test_cut_log_drops_records_after_the_checkpoint_and_torn_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(json.dumps({"step": s}).encode() + b"\n" for s in range(6)) + b'{"step": 6, "lo')
    assert cut_log(log, lambda r: r["step"] < 4) == 3
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2, 3]
    assert cut_log(tmp_path / "missing.jsonl", lambda r: True) == 0


def test_storage_is_the_one_home_of_atomic_writes():
    """Issue 26: atomic writing was written three times (train/atomic.py, checkpoint.py, workflows/outdir.py)
    and hf.py swapped folders its own way. Only the storage package renames, makes temporary files or
    folders for a write, or fsyncs; the old homes are gone."""
    import importlib.util
    import re

    assert importlib.util.find_spec("tiling.train.atomic") is None
    pattern = re.compile(r"os\.replace\(|\bmkstemp\(|\bmkdtemp\(|NamedTemporaryFile|os\.fsync\(")
    home = ROOT / "tiling" / "train" / "storage"
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in ("tiling", "infogeo", "scripts")
             for p in sorted((ROOT / folder).rglob("*.py")) if home not in p.parents
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_write_folder_swaps_the_folder_whole_keeps_the_users_entries_and_owns_what_it_writes(tmp_path):
    """write_folder (the report writer's swap, and save_pretrained's since issue 26): owned entries are glob
    patterns, and an entry the writer wrote is its own even when no pattern names it (before, the old
    config.json, named by no pattern, was carried over onto the new one)."""
    from tiling.train.storage import write_folder

    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"an old shard")
    (out / "config.json").write_text("old")

    def fill(folder):
        (folder / "config.json").write_text("new")
        (folder / "model.safetensors").write_bytes(b"weights")

    with pytest.raises(StorageError, match="not empty"):
        write_folder(out, fill, ["model*"], name="save_directory")
    assert (out / "config.json").read_text() == "old"
    write_folder(out, fill, ["model*"], overwrite=True, name="save_directory")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "notes.txt"]
    assert (out / "config.json").read_text() == "new" and (out / "notes.txt").read_text() == "mine"

    def interrupted(folder):
        (folder / "config.json").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder(out, interrupted, ["model*"], overwrite=True, name="save_directory")
    assert (out / "config.json").read_text() == "new" and not list(tmp_path.glob(".m.*"))
