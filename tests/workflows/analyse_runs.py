"""``infogeo analyse`` run in-process: the scaffolding of its writer tests (test_writer_cli.py,
test_reliability_cli.py). Not a test module (pytest collects ``test_*.py`` only)."""
from pathlib import Path

#: the smallest analysis of the bundled model (one layer, one head, few neighbours and eigenpairs)
FAST = ["--layers", "0", "--heads", "0", "--k", "4", "--n-eigs", "3", "--tile-size", "4", "--quiet"]


def one_line_error(capsys, code: int, *needles: str) -> str:
    """The one ``infogeo: error:`` line of a refused run (exit 2, no traceback; warnings aside), holding
    each of ``needles``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [e for e in err if not e.startswith("infogeo: warning:")]
    assert len(errors) == 1 and errors[0].startswith("infogeo: error:") and "Traceback" not in "".join(err), err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def batch_run(tmp_path: Path, texts: str, *extra: str) -> tuple[Path, list[str]]:
    """A batch source ``tmp_path/t.txt`` holding ``texts`` (one per line): the batch's ``--out``
    (``tmp_path/b``, not made) and the argv of a batch into it (``FAST`` and ``extra`` added)."""
    src = tmp_path / "t.txt"
    src.write_text(texts)
    out = tmp_path / "b"
    return out, ["analyse", "--file", str(src), "--batch", "--out", str(out), *extra, *FAST]
