"""The options of a job, each defined once: its flag, help, default and check in one dataclass field.

A job's options are a frozen dataclass deriving from :class:`Options` whose fields are made by
:func:`option`. From the fields come

* the command line: :meth:`Options.add_arguments` adds one argparse argument per field and
  :meth:`Options.from_args` builds the object from the parsed namespace;
* the checks: ``__post_init__`` checks every field's form (type, range, choices) and then the
  class's :meth:`Options.check` (the relations between fields); a bad value is a
  :class:`UsageError` (a ``ValueError``) or a ``TypeError`` naming the flag when the object was
  parsed from a command line, the keyword when it was built in Python;
* the record: :meth:`Options.to_dict` (JSON values), the fingerprint a resumable run compares and
  what a report stores.

Adding an option to a job is one field here plus its use. Two error types serve every command:
:class:`UsageError` (bad input, exit code 2) and :class:`RunError` (a run the command refuses or
that failed, e.g. a folder that holds finished results or a diverging loss; exit code 2 as well).
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = ["EXIT_USAGE", "UsageError", "RunError", "Parser", "Spec", "option", "Options", "int_arg", "float_arg",
           "index_list", "threads_option", "seed_option", "MAX_THREADS", "first_line", "error_line", "run_main",
           "add_subcommand", "standalone_parser"]

#: the exit code of every refused command (bad input or a refused run)
EXIT_USAGE = 2
#: the largest ``--threads`` any command takes
MAX_THREADS = 4096


class UsageError(ValueError):
    """Bad input of a command (an option value, a file, a folder): one line ``PROG: error: ...``, exit code 2."""


class RunError(RuntimeError):
    """A run a command refuses or that failed (finished results in the way, other settings, a diverged
    loss): one line ``PROG: error: ...``, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse that raises a usage error as one :class:`UsageError` (no usage dump), for the caller to
    print as one line with exit code 2."""

    def error(self, message: str):  # noqa: D401 (argparse API)
        raise UsageError(message)


# --------------------------------------------------------------------------------------------
# command-line forms of values (argparse ``type=``)
# --------------------------------------------------------------------------------------------
def int_arg(value: str) -> int:
    """``"12"`` → 12; anything else an ``argparse.ArgumentTypeError`` saying the expected form."""
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def float_arg(value: str) -> float:
    """``"0.5"`` → 0.5 (``nan`` parses, and the range check refuses it)."""
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None


def index_list(value: str) -> list[int]:
    """``"0,2,5"`` → [0, 2, 5] (with ``action="extend"`` the flag may also be repeated)."""
    out = []
    for part in value.replace(" ", ",").split(","):
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integer indices, got {value!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one index, got {value!r}")
    return out


# --------------------------------------------------------------------------------------------
# one option
# --------------------------------------------------------------------------------------------
#: the kinds of value an option holds, with their default command-line form
_PARSE: dict[str, Callable[[str], Any] | None] = {"int": int_arg, "float": float_arg, "str": str, "bool": None,
                                                  "indices": index_list, "strs": str, "any": str,
                                                  "floats": float_arg}


#: the sequence kinds: what an element is called, whether a value is one, and its stored form
_SEQUENCES: dict[str, tuple[str, Callable[[Any], bool], Callable[[Any], Any]]] = {
    "indices": ("ints", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), int),
    "strs": ("str", lambda v: isinstance(v, str), str),
    "floats": ("numbers", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), float),
}


@dataclass(frozen=True)
class Spec:
    """What a field of an :class:`Options` says about itself (the ``metadata["option"]`` of the field).

    Parameters
    ----------
    flag : the command-line flag (``--tile-size``), or the positional argument's name.
    help : the help text.
    kind : ``"int"``, ``"float"``, ``"str"``, ``"bool"`` (a switch; with default True the flag turns it
        off, e.g. ``--no-speed``), ``"indices"`` (a list of ints, the flag repeatable and comma-separated),
        ``"strs"`` (one or more words after the flag, stored as a tuple), ``"floats"`` (one or more numbers
        after the flag, a tuple, each in the range) or ``"any"`` (only ``check`` decides).
    low, high : the range of a number (None: unbounded); ``low_open``/``high_open`` exclude that end.
    choices : the allowed values.
    optional : None is allowed (the field's default is None).
    parse : the command-line form (argparse ``type=``; default by ``kind``).
    check : a further check of a Python value, returning the value to store; raises ``ValueError`` with
        the expected form (the message is prefixed with the option's name).
    metavar : argparse's metavar.
    positional : a positional argument (``nargs="?"`` when optional).
    """

    flag: str
    help: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    optional: bool = False
    parse: Callable[[str], Any] | None = None
    check: Callable[[Any], Any] | None = None
    metavar: str | None = None
    positional: bool = False

    def checked(self, value: Any, label: str) -> Any:
        """``value`` in its stored form, or a ``TypeError``/:class:`UsageError` naming ``label``."""
        if value is None and self.optional:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise TypeError(f"{label} must be a bool, got {type(value).__name__}")
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{label} must be an int, got {type(value).__name__}")
            value = int(value)
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{label} must be a number, got {type(value).__name__}")
            value = float(value)
        elif self.kind == "str":
            if not isinstance(value, str):
                raise TypeError(f"{label} must be a str, got {type(value).__name__}")
        elif self.kind in _SEQUENCES:
            noun, ok, convert = _SEQUENCES[self.kind]
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(f"{label} must be a sequence of {noun}, got {type(value).__name__}")
            value = tuple(value)
            if not all(ok(v) for v in value):
                raise TypeError(f"{label} must be a sequence of {noun}, got {list(value)!r}")
            value = tuple(convert(v) for v in value)
        for v in value if self.kind == "floats" else (value,):  # each number of a "floats" in the range
            self._check_range(v, label)
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{label} must be one of {list(self.choices)}, got {value!r}")
        if self.check is not None:
            try:
                value = self.check(value)
            except ValueError as e:
                raise UsageError(f"{label} {e}") from None
        return value

    def _check_range(self, value: Any, label: str) -> None:
        if self.low is None and self.high is None:
            return
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        ok = ((low < value if self.low_open else low <= value)
              and (value < high if self.high_open else value <= high))  # also refuses NaN
        if ok:
            return
        if self.kind == "int" and self.high is None:
            raise UsageError(f"{label} must be >= {self.low}, got {value}")
        if self.kind == "int":
            raise UsageError(f"{label} must lie in [{self.low}, {self.high}], got {value}")
        raise UsageError(f"{label} must lie in {'(' if self.low_open else '['}{low:g}, {high:g}"
                         f"{')' if self.high_open else ']'}, got {value}")


def option(default: Any, *, help: str, kind: str, flag: str | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False, choices: tuple | None = None,
           parse: Callable[[str], Any] | None = None, check: Callable[[Any], Any] | None = None,
           metavar: str | None = None, positional: bool = False) -> Any:
    """A field of an :class:`Options` dataclass: its default and its :class:`Spec`.

    Parameters
    ----------
    default : the default value (None: the option is optional; a list default is not allowed, use a
        tuple or None).
    help, kind, low, high, low_open, high_open, choices, parse, check, metavar, positional : as :class:`Spec`.
    flag : the command-line flag (default ``--`` and the field name with ``-`` for ``_``); set by
        :class:`Options` when omitted.

    Returns
    -------
    A ``dataclasses.field``.
    """
    if kind not in _PARSE:
        raise ValueError(f"kind must be one of {sorted(_PARSE)}, got {kind!r}")
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"default must be immutable (a tuple or None), got {type(default).__name__}")
    spec = dict(flag=flag, help=help, kind=kind, low=low, high=high, low_open=low_open, high_open=high_open,
                choices=choices,
                optional=default is None, parse=parse, check=check, metavar=metavar, positional=positional)
    return dataclasses.field(default=default, metadata={"option": spec})


#: True while an :class:`Options` is built from a command line: its errors then name the flags
_BY_FLAG: contextvars.ContextVar[bool] = contextvars.ContextVar("_BY_FLAG", default=False)


@contextlib.contextmanager
def _naming_flags() -> Iterator[None]:
    token = _BY_FLAG.set(True)
    try:
        yield
    finally:
        _BY_FLAG.reset(token)


# --------------------------------------------------------------------------------------------
# a job's options
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """Base of a job's options: a frozen dataclass whose fields are made by :func:`option`.

    Subclasses add fields (and may override :meth:`check` for relations between fields). Fields
    without an :func:`option` spec are allowed: they are neither on the command line nor checked here.
    """

    def __post_init__(self) -> None:
        for name, spec in self.specs().items():
            object.__setattr__(self, name, spec.checked(getattr(self, name), self.label(name)))
        self.check()

    def check(self) -> None:
        """The relations between fields (none here); raise a :class:`UsageError` naming :meth:`label`."""

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        """Field name → :class:`Spec`, in field order (flags filled in)."""
        out = {}
        for f in dataclasses.fields(cls):
            raw = f.metadata.get("option")
            if raw is not None:
                flag = raw["flag"] or (f.name if raw["positional"] else "--" + f.name.replace("_", "-"))
                out[f.name] = Spec(**{**raw, "flag": flag})
        return out

    @classmethod
    def flags(cls) -> dict[str, str]:
        """Field name → flag (what a message about a stored setting names)."""
        return {name: spec.flag for name, spec in cls.specs().items()}

    @classmethod
    def label(cls, name: str) -> str:
        """How errors name the field ``name``: its flag while parsing a command line, else the keyword."""
        return cls.specs()[name].flag if _BY_FLAG.get() else name

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | Any) -> None:
        """Add one argument per option field to ``parser`` (or an argument group), in field order."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, spec in cls.specs().items():
            extra: dict[str, Any] = {"help": spec.help}
            if spec.metavar is not None:
                extra["metavar"] = spec.metavar
            if spec.kind == "bool":
                parser.add_argument(spec.flag, dest=name, action="store_false" if defaults[name] else "store_true",
                                    **extra)
                continue
            extra.update(type=spec.parse or _PARSE[spec.kind], default=defaults[name])
            if spec.choices is not None:
                extra["choices"] = spec.choices
            if spec.kind == "indices":
                extra["action"] = "extend"
            if spec.kind in ("strs", "floats"):  # words or numbers after one flag
                extra["nargs"] = "+"
            if spec.positional:
                parser.add_argument(name, nargs="?" if spec.optional else None, **extra)
            else:
                parser.add_argument(spec.flag, dest=name, **extra)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **others: Any):
        """The options of a parsed command line (``others``: fields that are not on it).

        Raises
        ------
        UsageError, TypeError
            A value out of its range or form; the message names the flag.
        """
        values = {name: getattr(args, name) for name in cls.specs()}
        with _naming_flags():
            return cls(**values, **others)

    @classmethod
    def relabel(cls, e: TypeError | ValueError) -> TypeError | UsageError:
        """The error of another object's check (e.g. ``TilingConfig``'s, whose messages begin with the field's
        keyword) with its leading field name as :meth:`label` names it: a ``TypeError`` stays one, a
        ``ValueError`` becomes a :class:`UsageError`."""
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        for name in sorted(cls.specs(), key=len, reverse=True):
            if text.startswith(name + " "):
                text = cls.label(name) + text[len(name):]
                break
        return TypeError(text) if isinstance(e, TypeError) else UsageError(text)

    def to_dict(self) -> dict[str, Any]:
        """Every option field as a JSON value (tuples become lists): the fingerprint and the record of a run."""
        return json.loads(json.dumps({name: getattr(self, name) for name in self.specs()}))

    def replace(self, **changes: Any):
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# the options several commands share
# --------------------------------------------------------------------------------------------
def threads_option(default: int | None, why: str) -> Any:
    """``--threads N``: torch's CPU threads, an integer in [1, :data:`MAX_THREADS`].

    Parameters
    ----------
    default : the job's default (None: the machine's physical cores, resolved when the job starts).
    why : the sentence the help gives for the default.
    """
    said = "the machine's physical cores" if default is None else str(default)
    return option(default, kind="int", low=1, high=MAX_THREADS, metavar="N",
                  help=f"torch CPU threads, an integer >= 1 (default {said}: {why})")


def seed_option(default: int = 0, high: int | None = None) -> Any:
    """``--seed N``: the seed of every random choice, an integer in [0, ``high``] (None: unbounded)."""
    return option(default, kind="int", low=0, high=high,
                  help=f"seed of every random choice (default {default})")


# --------------------------------------------------------------------------------------------
# running a command
# --------------------------------------------------------------------------------------------
def first_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def error_line(prog: str, e: BaseException, *, reads: bool = False) -> str:
    """``PROG: error: ...``, one line; with ``reads`` (a command that only reads files) an ``OSError`` says
    which file could not be read."""
    if reads and isinstance(e, OSError) and not str(e).startswith("checkpoint"):  # e.g. a folder, a device error
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        text = f"cannot read{where}: {e.strerror or first_line(e)}"
    else:
        text = first_line(e)
    return f"{prog}: error: {text}".encode("utf-8", "backslashreplace").decode("utf-8")


def run_main(prog: str, body: Callable[[], int], *, expected: tuple = (UsageError, RunError, ValueError, OSError),
             interrupted: str | None = None, reads: bool = False) -> int:
    """Run a command's ``body`` and turn its ending into an exit code.

    Parameters
    ----------
    prog : the command's name in its messages.
    body : the command (parses its arguments and runs; returns the exit code).
    expected : the errors that are bad input or a refused run: printed as one line, exit code 2.
    interrupted : what Ctrl-C prints (default ``PROG: interrupted``; exit code 130).
    reads : the command only reads files: an ``OSError`` is reported as a file that cannot be read.

    Returns
    -------
    The exit code: ``body``'s, 0 for ``--help``, :data:`EXIT_USAGE` for an expected error, 130 when
    interrupted.
    """
    import sys

    try:
        return int(body() or 0)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except expected as e:
        print(error_line(prog, e, reads=reads), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(interrupted or f"{prog}: interrupted", file=sys.stderr)
        return 130


def add_subcommand(subparsers, name: str, options: type[Options], func: Callable[[argparse.Namespace], int], *,
                   help: str, description: str | None) -> argparse.ArgumentParser:
    """Register a job as ``infogeo NAME``: its parser generated from ``options``, ``func`` its runner.

    Parameters
    ----------
    subparsers : argparse's sub-parser collection.
    name : the subcommand.
    options : the job's :class:`Options` class.
    func : runs the job on the parsed namespace; returns the exit code.
    help, description : the one-line help in the command list, and the page of ``infogeo NAME --help``.

    Returns
    -------
    The sub-parser.
    """
    p = subparsers.add_parser(name, help=help, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_arguments(p)
    p.set_defaults(func=func)
    return p


def standalone_parser(prog: str, options: type[Options], description: str | None) -> Parser:
    """The parser of a job's own entry point (``python -m ...``, an alias of its subcommand)."""
    p = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_arguments(p)
    return p
