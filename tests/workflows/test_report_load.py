"""Report.load trusts no arrays.npz (issue 27, item 3): the .npy headers are read and checked against
what report.json implies before anything is decompressed."""
import io
import json
import time
import zipfile

import numpy as np
import pytest

from tiling.workflows.analysis import SCHEMA, SCHEMA_VERSION, Report

N = 3  # tokens of the little report


def _report(folder, n=N):
    folder.mkdir()
    data = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "text": {"n_tokens": n, "tokens": ["a"] * n},
            "layers": [{"layer": 0, "attention": {"heads": [{"head": 0}]}}]}  # as analyse writes them
    (folder / "report.json").write_text(json.dumps(data))
    return folder


def _member(zf, name, shape, dtype=np.float32, data: bytes | None = None, *, chunks: int = 0):
    """A .npy member whose header claims ``shape``: ``data`` after it, or ``chunks`` MiB of zeros (a bomb)."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                "shape": shape})
    with zf.open(name, "w", force_zip64=True) as f:
        f.write(head.getvalue())
        if data is not None:
            f.write(data)
        zero = bytes(2 ** 20)
        for _ in range(chunks):
            f.write(zero)


def test_a_valid_npz_loads(tmp_path):
    out = _report(tmp_path / "r")
    np.savez_compressed(out / "arrays.npz", attention_L0_H0=np.eye(N, dtype=np.float32),
                        geodesic_L0_H0=np.ones((N, N), dtype=np.float32))
    r = Report.load(out)
    assert np.array_equal(r.arrays["attention_L0_H0"], np.eye(N))


def test_a_header_claiming_terabytes_is_a_value_error(tmp_path):
    """Was: MemoryError (the docs promise a ValueError)."""
    out = _report(tmp_path / "r")
    with zipfile.ZipFile(out / "arrays.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        _member(zf, "attention_L0_H0.npy", (2 ** 21, 2 ** 20), data=bytes(16))  # 8 TiB of float32 claimed
    with pytest.raises(ValueError, match=r"attention_L0_H0 has shape \(2097152, 1048576\); the report implies \(3, 3\)"):
        Report.load(out)
    # without the report's shapes (an older JSON), the entry's size still refuses it
    (out / "report.json").write_text(json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION}))
    with pytest.raises(ValueError, match="claims 8796093022208 bytes, its entry holds 16"):
        Report.load(out)


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    """Was: a 1 MB zip that inflates to 1 GiB was loaded whole (here 256 MiB in 0.25 MB, to keep the test quick)."""
    out = _report(tmp_path / "r")
    with zipfile.ZipFile(out / "arrays.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        _member(zf, "attention_L0_H0.npy", (2 ** 13, 2 ** 13), chunks=2 ** 8)  # 256 MiB of zeros
    assert (out / "arrays.npz").stat().st_size < 2 ** 20
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"has shape \(8192, 8192\); the report implies \(3, 3\)"):
        Report.load(out)
    assert time.perf_counter() - t0 < 5.0  # nothing was inflated
    # a report that implies that size loads it only up to max_array_bytes
    big = _report(tmp_path / "big", n=2 ** 13)
    (out / "arrays.npz").rename(big / "arrays.npz")
    with pytest.raises(ValueError, match="more than max_array_bytes = 1048576 bytes"):
        Report.load(big, max_array_bytes=2 ** 20)


@pytest.mark.parametrize("spoil,match", [
    (lambda zf: _member(zf, "secret.npy", (N, N), data=bytes(36)), "does not imply"),
    (lambda zf: _member(zf, "attention_L0_H0.npy", (N, N), dtype=object, data=b""), "expected numbers"),
    (lambda zf: zf.writestr("notes.txt", b"x"), "does not imply"),
])
def test_members_the_report_does_not_imply_are_refused(tmp_path, spoil, match):
    out = _report(tmp_path / "r")
    with zipfile.ZipFile(out / "arrays.npz", "w") as zf:
        spoil(zf)
    with pytest.raises(ValueError, match=match):
        Report.load(out)
