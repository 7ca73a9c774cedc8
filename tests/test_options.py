"""Options defined once (issue 26, item 1): every field of each job's options object reaches its parser
and its fingerprint; its check names the flag on a command line and the keyword in Python; the shared
--threads refuses 0, negative and non-integer values in every subcommand."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiling.options import MAX_THREADS, Options, Parser, RunError, UsageError, option
from tiling.train.evaluate import EvaluateOptions
from tiling.train.generate import GenerateOptions
from tiling.workflows.analysis.options import AnalysisOptions
from tiling.workflows.batch import FLAGS, read_done, settings_of, text_key
from tiling.workflows.cli import AnalyseCommand, main
from tiling.workflows.verify import VerifyOptions

JOBS = [AnalysisOptions, AnalyseCommand, EvaluateOptions, GenerateOptions, VerifyOptions]
#: a command line each job needs besides the option under test (its required arguments)
NEEDS = {AnalysisOptions: [], AnalyseCommand: [], EvaluateOptions: ["ck", "--text-file", "f"],
         GenerateOptions: ["ck", "--prompt", "p"], VerifyOptions: []}


def _parser(cls) -> argparse.ArgumentParser:
    p = Parser(prog=cls.__name__)
    cls.add_arguments(p)
    return p


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("cls", JOBS, ids=lambda c: c.__name__)
def test_every_field_reaches_the_parser_and_the_record(cls):
    names = set(cls.specs())
    assert names and _dests(_parser(cls)) == names
    opts = cls.from_args(_parser(cls).parse_args(NEEDS[cls]))
    assert set(opts.to_dict()) == names
    json.dumps(opts.to_dict(), allow_nan=False)  # a JSON record


@dataclasses.dataclass(frozen=True)
class _MoreAnalysis(AnalysisOptions):
    """The analysis with one more option, as a new engineer would add it: one field."""

    new_knob: int = option(3, kind="int", low=1, high=9, help="a new knob")


def test_a_new_analysis_field_reaches_parser_fingerprint_and_flags():
    args = _parser(_MoreAnalysis).parse_args(["--new-knob", "5", "--budget", "0.5"])
    opts = _MoreAnalysis.from_args(args)
    assert opts.new_knob == 5 and opts.budget == 0.5
    settings = settings_of(None, opts)
    assert settings["new_knob"] == 5 and settings["budget"] == 0.5
    assert _MoreAnalysis.flags()["new_knob"] == "--new-knob"
    with pytest.raises(UsageError, match=r"^--new-knob must lie in \[1, 9\], got 10$"):
        _MoreAnalysis.from_args(_parser(_MoreAnalysis).parse_args(["--new-knob", "10"]))
    with pytest.raises(UsageError, match=r"^new_knob must lie in \[1, 9\], got 0$"):
        _MoreAnalysis(new_knob=0)


def test_the_batch_fingerprint_holds_every_analysis_option_and_its_flag():
    opts = AnalysisOptions(layers=(3, 1, 3), curvature_alpha=0.25, state_dim=8, show=(1, 2))
    settings = settings_of("bundled:full", opts)
    assert settings == {"model": "bundled:full", **opts.to_dict()}  # the report's params, and the model
    assert settings["layers"] == [3, 1, 3] and settings["heads"] is None and settings["show"] == [1, 2]
    assert settings["curvature_alpha"] == 0.25 and settings["state_dim"] == 8  # were missing (issue 26)
    assert all(name in FLAGS for name in settings)


def test_a_resume_compares_layers_and_heads_as_sets_and_reads_the_older_form(tmp_path):
    """The order of --layers does not change the numbers; older lines wrote sorted lists and "all" for None."""
    keys = {text_key(0, "a")}
    now = settings_of(None, AnalysisOptions(layers=(3, 1)))
    for there in ({**now, "layers": [1, 3, 3]}, {**now, "layers": [1, 3], "heads": "all"}):
        assert read_done(_results(tmp_path, there), now, keys) == keys
    with pytest.raises(ValueError, match=r"--layers \[1, 3\] there, \[3\] now"):
        read_done(_results(tmp_path, {**now, "layers": [1, 3]}), settings_of(None, AnalysisOptions(layers=(3,))), keys)
    with pytest.raises(ValueError, match=r"--heads \[0\] there, null now"):
        read_done(_results(tmp_path, {**now, "heads": [0]}), now, keys)


def _results(tmp_path, settings: dict):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"index": 0, "sha256": text_key(0, "a")[1], "settings": settings}) + "\n")
    return path


def test_results_written_before_curvature_alpha_was_recorded_resume_only_at_its_default(tmp_path):
    old = settings_of(None, AnalysisOptions())
    del old["curvature_alpha"], old["state_dim"]  # what an older infogeo wrote
    path = _results(tmp_path, old)
    assert read_done(path, settings_of(None, AnalysisOptions()), {text_key(0, "a")}) == {text_key(0, "a")}
    with pytest.raises(ValueError, match=r"--curvature-alpha \(none recorded|--curvature-alpha 0.5 there, 0.25 now"):
        read_done(path, settings_of(None, AnalysisOptions(curvature_alpha=0.25)), {text_key(0, "a")})


@pytest.mark.parametrize("cls,name", [(c, n) for c in JOBS for n, s in c.specs().items() if s.kind == "int"],
                         ids=str)
def test_integer_options_refuse_bool_and_float_naming_the_keyword(cls, name):
    base = dict(zip(["checkpoint", "text_file"], ["ck", "f"])) if cls is EvaluateOptions else (
        {"checkpoint": "ck", "prompt": "p"} if cls is GenerateOptions else {})
    base.pop(name, None)
    for bad in (True, 1.5, "3"):
        with pytest.raises(TypeError, match=rf"^{name} must be an int"):
            cls(**base, **{name: bad})


@given(st.integers(-2 ** 70, 2 ** 70))
def test_threads_accepts_exactly_1_to_max_and_names_the_flag(n):
    parser = _parser(EvaluateOptions)
    args = parser.parse_args(["ck", "--text-file", "f", "--threads", str(n)])
    if 1 <= n <= MAX_THREADS:
        assert EvaluateOptions.from_args(args).threads == n
    else:
        with pytest.raises(UsageError, match=rf"^--threads must lie in \[1, {MAX_THREADS}\], got {n}$"):
            EvaluateOptions.from_args(args)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_curvature_alpha_is_checked_in_its_half_open_interval(alpha):
    if 0.0 <= alpha < 1.0:
        assert AnalysisOptions(curvature_alpha=alpha).curvature_alpha == alpha
    else:  # NaN included
        with pytest.raises(UsageError, match=r"^curvature_alpha must lie in \[0, 1\)"):
            AnalysisOptions(curvature_alpha=alpha)


def test_the_plan_options_are_checked_by_tiling_config_naming_the_flag():
    parser = _parser(AnalysisOptions)
    with pytest.raises(UsageError, match=r"^--r-min must be <= budget"):
        AnalysisOptions.from_args(parser.parse_args(["--budget", "0.05"]))
    with pytest.raises(UsageError, match=r"^r_min must be <= budget"):
        AnalysisOptions(budget=0.05)
    with pytest.raises(UsageError, match=r"^--budget must lie in \(0, 1\]"):
        AnalysisOptions.from_args(parser.parse_args(["--budget", "1.5"]))
    plan = AnalysisOptions(budget=0.5, tile_size=8).plan_config()
    assert (plan.budget, plan.tile_size, plan.r_min, plan.causal, plan.scope) == (0.5, 8, 0.0625, False, "scan")


def test_analyse_takes_options_or_keywords_not_both():
    from tiling.config import TilingConfig
    from tiling.workflows.analysis import analyse

    with pytest.raises(TypeError, match="not both"):
        analyse(None, None, "some text", AnalysisOptions(), k=3)
    with pytest.raises(TypeError, match="not both"):
        analyse(None, None, "some text", tiling=TilingConfig(), budget=0.5)
    with pytest.raises(TypeError, match="options must be an AnalysisOptions"):
        analyse(None, None, "some text", {"k": 3})


def test_one_error_type_each():
    from tiling.train import evaluate, trainer
    from tiling.train.synthetic import command as train_tiled
    from tiling.workflows import cli

    assert cli.UsageError is evaluate.UsageError is UsageError and issubclass(UsageError, ValueError)
    assert trainer.RunError is train_tiled.RunError is RunError


@pytest.mark.parametrize("command", [["analyse", "some text"], ["evaluate", "bundled:full", "--text-file", "x"],
                                     ["generate", "bundled:full", "--prompt", "x"]])
@pytest.mark.parametrize("value", ["0", "-1", "1.5", "x", ""])
def test_every_subcommand_refuses_bad_threads_in_one_line(capsys, command, value):
    assert main([*command, "--threads", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("infogeo: error:") and "--threads" in err, err


def test_options_refuse_a_mutable_default_and_an_unknown_kind():
    with pytest.raises(TypeError, match="immutable"):
        option([1], kind="indices", help="x")
    with pytest.raises(ValueError, match="kind must be one of"):
        option(1, kind="integer", help="x")


def test_options_without_a_spec_are_neither_flags_nor_recorded():
    @dataclasses.dataclass(frozen=True)
    class Job(Options):
        size: int = option(2, kind="int", low=1, help="a size")
        note: str = "internal"

    assert Job.flags() == {"size": "--size"} and Job(note="x").to_dict() == {"size": 2}


def test_no_job_clamps_r_min_to_the_budget():
    """Was: min(r_min, budget) in textmodel.model_config and train_tiled.py silently lowered the floor."""
    from tiling.train.synthetic import parse_args
    from tiling.train.textmodel import model_config

    with pytest.raises(ValueError, match=r"r_min must be <= budget"):
        model_config("adaptive", 0.05, r_min=0.0625)
    assert model_config("adaptive", 0.05, r_min=0.05).tiling.r_min == 0.05  # stated, it is used as given
    with pytest.raises(UsageError, match=r"^--r-min must be <= budget"):
        parse_args(["--budget", "0.05"])


def test_curvature_alpha_and_state_dim_reach_the_analysis_from_the_command_line(monkeypatch, tmp_path):
    """Were: options of analyse() that no flag set."""
    import tiling.workflows.analysis

    seen = {}

    def record(model, tokenizer, text, options, **kw):
        seen["options"] = options
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(tiling.workflows.analysis, "analyse", record)
    argv = ["analyse", "A short text to analyse here.", "--out", str(tmp_path / "r"), "--quiet",
            "--curvature-alpha", "0.25", "--state-dim", "8", "--layers", "0"]
    assert main(argv) == 130
    assert seen["options"] == AnalysisOptions(layers=(0,), curvature_alpha=0.25, state_dim=8)
