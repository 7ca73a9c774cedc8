"""A real-text corpus for byte-level language models: the Python documentation, split by document.

Source: Debian's ``python3.11-doc`` package, which installs the reStructuredText sources of the
Python 3.11 documentation as ``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`` (497
documents, 11.0 MB of English prose with code examples; licence: the PSF License Agreement, see
``tiling/train/data/README.md``). Optionally (``corpus="code"``) the Python sources of the CPython
standard library, ``/usr/lib/python3.11/**/*.py`` (Debian's ``libpython3.11-stdlib``), without the
``test``/``tests`` packages, ``site-packages`` and ``dist-packages``.

Split: by document, never by bytes. A document is a file, named by its path relative to the
source root (POSIX separators); its split is a pure function of that name::

    u = int(SHA-256(name)[:8 bytes], big endian) / 2^64 ∈ [0, 1)
    train if u < 0.90, validation if u < 0.95, test otherwise

so adding or removing a document never moves another one, and the split does not depend on the
order in which the file system lists the files. A split's bytes are its documents concatenated
in the order of their names (bytes as they are; a newline is appended to a document that does not
end with one), and its SHA-256 is the digest of exactly those bytes (the split file). Documents
must be UTF-8 (the encoding is checked; the model reads bytes, vocabulary 256).

``python -m tiling.train.corpus --out data/corpus`` (``make corpus``) writes ``train.txt``,
``validation.txt``, ``test.txt`` and ``manifest.json`` (source, package version, per split: bytes,
documents, SHA-256; per document: name, split, bytes) atomically and prints the hashes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tiling.train.storage import atomic_write_bytes, atomic_write_json

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.90, 0.05, 0.05)


@dataclass(frozen=True)
class CorpusSource:
    """Where a corpus comes from: the root, the file pattern, the Debian package that installs it."""

    name: str
    root: Path
    pattern: str
    package: str
    exclude: tuple[str, ...] = ()


SOURCES = {
    "docs": CorpusSource("docs", Path("/usr/share/doc/python3.11/html/_sources"), "**/*.rst.txt", "python3.11-doc"),
    "code": CorpusSource("code", Path("/usr/lib/python3.11"), "**/*.py", "libpython3.11-stdlib",
                         exclude=("test", "tests", "site-packages", "dist-packages", "idlelib/idle_test")),
}


class CorpusError(RuntimeError):
    """The corpus source is missing or unusable, or a prepared corpus is absent or altered."""


def slice_root() -> Path:
    """The committed slice of the documentation (20 documents, ≈ 0.33 MB; package data)."""
    return Path(__file__).resolve().parent / "data" / "python-doc"


def split_of(name: str, fractions: tuple[float, float, float] = FRACTIONS) -> str:
    """The split of document ``name`` (its relative path): SHA-256 of the name → [0, 1) → bucket.

    Parameters
    ----------
    name : the document's relative path.
    fractions : shares of the train, validation and test splits.

    Returns
    -------
    The split's name.

    Raises
    ------
    ValueError
        ``fractions`` are negative or do not add up to 1.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be non-negative and add up to 1, got {fractions}")
    u = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


def _install_hint(source: CorpusSource) -> str:
    return f"install it with: apt-get update && apt-get install -y {source.package}"


def find_documents(root: str | Path | None = None, corpus: str = "docs") -> tuple[Path, list[str]]:
    """The corpus documents.

    Parameters
    ----------
    root : the corpus source (default: the package's install location).
    corpus : the corpus' name.

    Returns
    -------
    ``(root, sorted relative names)``.

    Raises
    ------
    ValueError
        ``corpus`` is not a known corpus.
    CorpusError
        The source does not exist or holds no document matching its pattern.
    """
    if corpus not in SOURCES:
        raise ValueError(f"corpus must be one of {sorted(SOURCES)}, got {corpus!r}")
    src = SOURCES[corpus]
    base = src.root if root is None else Path(root)
    if not base.is_dir():
        raise CorpusError(
            f"the {corpus} corpus source {base} does not exist: it is installed by the Debian package "
            f"{src.package!r}; {_install_hint(src)}" + ("" if root is None else " (or pass the right --source)"))
    names = []
    for p in base.glob(src.pattern):
        if not p.is_file():
            continue
        rel = p.relative_to(base).as_posix()
        if any(part in src.exclude for part in rel.split("/")[:-1]) or any(rel.startswith(e + "/") for e in src.exclude):
            continue
        names.append(rel)
    names.sort()
    if not names:
        raise CorpusError(f"no documents matching {src.pattern!r} under {base}; the package {src.package!r} "
                          f"seems incomplete: {_install_hint(src)}")
    return base, names


def build_splits(root: str | Path | None = None, corpus: str = "docs") -> tuple[dict[str, bytes], dict]:
    """The three splits' bytes and the manifest (no file is written).

    Parameters
    ----------
    root, corpus : as for :func:`find_documents`.

    Returns
    -------
    ``(splits, manifest)``: the bytes of each split by name, and the manifest.

    Raises
    ------
    ValueError, CorpusError
        As :func:`find_documents`; ``CorpusError`` also when a document is not UTF-8.
    """
    base, names = find_documents(root, corpus)
    parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    docs = []
    for name in names:
        data = (base / name).read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"document {base / name} is not UTF-8 (byte {e.start}: {e.reason})") from e
        if data and not data.endswith(b"\n"):
            data += b"\n"
        split = split_of(name)
        parts[split].append(data)
        docs.append({"name": name, "split": split, "bytes": len(data)})
    splits = {s: b"".join(parts[s]) for s in SPLITS}
    manifest = {
        "corpus": corpus,
        "source": str(base),
        "package": SOURCES[corpus].package,
        "package_version": _package_version(SOURCES[corpus].package) if root is None else None,
        "split_rule": "u = int(sha256(relative path)[:8], 'big') / 2**64: train u < 0.90, validation u < 0.95, test",
        "splits": {s: {"bytes": len(splits[s]), "documents": len(parts[s]),
                       "sha256": hashlib.sha256(splits[s]).hexdigest()} for s in SPLITS},
        "documents": docs,
    }
    return splits, manifest


def _package_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def prepare_corpus(out: str | Path, root: str | Path | None = None, corpus: str = "docs", *,
                   force: bool = False) -> dict:
    """Write the splits and ``manifest.json`` under ``out`` atomically.

    Parameters
    ----------
    out : the directory.
    root, corpus : as for :func:`find_documents`.
    force : replace a prepared corpus with other contents.

    Returns
    -------
    The manifest.

    Raises
    ------
    CorpusError
        ``out`` holds a prepared corpus with other contents and ``force`` is not given; or as
        :func:`build_splits`.

    Notes
    -----
    A prepared corpus already in ``out`` with other contents is not replaced unless ``force``
    (the same contents are simply rewritten).
    """
    out = Path(out)
    splits, manifest = build_splits(root, corpus)
    old = out / "manifest.json"
    if old.is_file() and not force:
        try:
            previous = json.loads(old.read_text())["splits"]
        except (ValueError, KeyError):
            previous = None
        if previous is not None and {s: previous[s]["sha256"] for s in previous} != \
                {s: manifest["splits"][s]["sha256"] for s in SPLITS}:
            raise CorpusError(f"{out} holds a prepared corpus with other contents (its manifest's hashes differ); "
                              f"pass --force to replace it or choose another --out")
    for s in SPLITS:
        atomic_write_bytes(out / f"{s}.txt", splits[s])
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def load_split(split: str, corpus_dir: str | Path = "data/corpus", *, verify: bool = True) -> bytes:
    """The bytes of a prepared split, checked against the manifest's SHA-256.

    Parameters
    ----------
    split : one of the split names.
    corpus_dir : the prepared corpus.
    verify : check the SHA-256.

    Returns
    -------
    The split's bytes.

    Raises
    ------
    ValueError
        ``split`` is not a split name.
    CorpusError
        The split or the manifest is missing, or (``verify``) the file was altered.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = Path(corpus_dir)
    path, man = d / f"{split}.txt", d / "manifest.json"
    if not path.is_file() or not man.is_file():
        raise CorpusError(f"no prepared corpus in {d} ({path.name} or manifest.json missing); run `make corpus` "
                          f"(python -m tiling.train.corpus --out {d})")
    data = path.read_bytes()
    if verify:
        want = json.loads(man.read_text())["splits"][split]["sha256"]
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise CorpusError(f"{path} has SHA-256 {got}, its manifest says {want}: the file was altered; "
                              f"run `make corpus` again")
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tiling.train.corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/corpus"), help="directory of the splits (default data/corpus)")
    p.add_argument("--corpus", choices=sorted(SOURCES), default="docs",
                   help="docs: the Python documentation (python3.11-doc); code: the standard library's sources")
    p.add_argument("--source", type=Path, default=None, help="source root (default: where the package installs it)")
    p.add_argument("--force", action="store_true", help="replace a prepared corpus with other contents")
    args = p.parse_args(argv)
    try:
        manifest = prepare_corpus(args.out, args.source, args.corpus, force=args.force)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.corpus} corpus from {manifest['source']} ({manifest['package']} "
          f"{manifest['package_version'] or ''}) -> {args.out}")
    for s in SPLITS:
        m = manifest["splits"][s]
        print(f"  {s:<10} {m['documents']:>4} documents {m['bytes']:>10} bytes  sha256 {m['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
