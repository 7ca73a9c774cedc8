"""The synthetic-task trainer (:mod:`tiling.train.synthetic`, ``scripts/train_tiled.py``) run in-process: the
scaffolding of its writer tests (test_train_writer.py, test_reliability_train.py). Not a test module (pytest
collects ``test_*.py`` only)."""
from test_train import TINY

from tiling.train import synthetic
from tiling.train.synthetic import loop

#: two steps, no evaluation: the shortest run that writes a checkpoint
STEPS = ["--steps", "2", "--eval-every", "100"]


def script():
    """The module of the training loop (tests patch its names with ``monkeypatch``, undone after each)."""
    return loop


def run_main(capsys, argv: list[str]):
    """``main(TINY + STEPS + argv)``: its exit code and the captured output."""
    code = synthetic.main(TINY + STEPS + argv)
    return code, capsys.readouterr()


def snapshot(folder) -> dict:
    """The files directly in ``folder``, by name, with their bytes."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def one_error_line(cap, *words: str) -> str:
    """The one ``train_tiled: error:`` line of a refused run (no traceback), holding each of ``words``."""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_tiled: error:"), cap.err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in cap.err
    return lines[0]
