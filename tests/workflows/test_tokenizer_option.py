"""``infogeo analyse --tokenizer bytes|PATH`` and the folder without a tokenizer (issue 28).

transformers returns an empty tokenizer for a Mamba folder without tokenizer files (a 2-entry
``GPTNeoXTokenizer``) and says nothing; the analysis then failed with "text has 0 tokens after
tokenisation". The references here: the text's own UTF-8 bytes, its whitespace words for a
word-level tokenizer, and the CLI's exit code and single error line.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from tiling.workflows.cli import main
from tiling.workflows.models import TokenizerError, default_model_path, load_model

transformers = pytest.importorskip("transformers")
TEXT = "The for statement iterates over the items of any sequence in order"


def _mamba(folder: Path, vocab: int = 300) -> Path:
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=16, state_size=4, num_hidden_layers=2,
                                   time_step_rank=2, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.MambaForCausalLM(cfg).save_pretrained(folder)
    return folder


def _word_tokenizer(folder: Path, words: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mamba(tmp_path_factory) -> Path:
    return _mamba(tmp_path_factory.mktemp("mamba"))


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["analyse", *map(str, argv), "--quiet", "--no-figures", "--n-eigs", "3", "--k", "4"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_folder_without_tokenizer_files_is_a_clear_error(mamba, tmp_path, capsys):
    rc, _, err = _run(capsys, TEXT, "--model", mamba, "--out", tmp_path / "r")
    lines = [ln for ln in err.splitlines() if ln.startswith("infogeo: error:")]
    assert rc == 2 and len(lines) == 1
    assert f"model folder '{mamba}' has no tokenizer" in lines[0] and "--tokenizer bytes" in lines[0]
    assert "0 tokens" not in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_bytes_reads_the_text_as_its_utf8_bytes(mamba, tmp_path, capsys):
    text = TEXT + " — naïve"
    rc, out, err = _run(capsys, text, "--model", mamba, "--tokenizer", "bytes", "--out", tmp_path / "r")
    assert rc == 0, err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["text"]["n_tokens"] == len(text.encode("utf-8"))  # one token per byte, multi-byte characters too
    assert data["text"]["tokens"][:3] == ["T", "h", "e"]


def test_a_tokenizer_folder_is_used(mamba, tmp_path, capsys):
    tok = _word_tokenizer(tmp_path / "tok", TEXT.split())
    rc, _, err = _run(capsys, TEXT, "--model", mamba, "--tokenizer", tok, "--out", tmp_path / "r")
    assert rc == 0, err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["text"]["tokens"] == TEXT.split()


def test_an_empty_or_broken_tokenizer_is_refused(mamba, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    # a tokenizer_config.json and no vocabulary: transformers builds a 2-entry tokenizer without a word
    (empty / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPTNeoXTokenizer"}))
    with pytest.raises(TokenizerError, match=r"tokenizer folder .*empty.* has an empty tokenizer \(2 entries: it turns "
                                             r"text into no tokens\); pass --tokenizer bytes"):
        load_model(mamba, tokenizer=empty)
    broken = _word_tokenizer(tmp_path / "broken", TEXT.split())
    spec = json.loads((broken / "tokenizer.json").read_text())
    spec["model"]["unk_token"] = None  # the tokenizers binding raises a bare Exception for this file
    (broken / "tokenizer.json").write_text(json.dumps(spec))
    rc, _, err = _run(capsys, TEXT, "--model", mamba, "--tokenizer", broken, "--out", tmp_path / "r")
    assert rc == 2 and "the tokenizer cannot be loaded" in err and "--tokenizer bytes" in err


@pytest.mark.parametrize("value, message", [
    ("nope", r"--tokenizer 'nope' is neither 'bytes' nor a folder"),
    ("BYTES", r"--tokenizer 'BYTES' is neither 'bytes' nor a folder"),
])
def test_an_unknown_tokenizer_is_exit_code_2(mamba, tmp_path, capsys, value, message):
    rc, _, err = _run(capsys, TEXT, "--model", mamba, "--tokenizer", value, "--out", tmp_path / "r")
    assert rc == 2
    assert re.search(message, err.splitlines()[-1])


def test_a_tokenizer_that_does_not_fit_the_vocabulary_is_refused(tmp_path, capsys):
    small = _mamba(tmp_path / "small", vocab=100)
    rc, _, err = _run(capsys, TEXT, "--model", small, "--tokenizer", "bytes", "--out", tmp_path / "r")
    assert rc == 2 and "--tokenizer 'bytes' has 256 token ids, more than the model's vocabulary of 100" in err
    rc, _, err = _run(capsys, TEXT, "--model", small, "--tokenizer", default_model_path(), "--out", tmp_path / "r")
    assert rc == 2 and "has 30522 token ids, more than the model's vocabulary of 100" in err


def test_a_tiled_lm_checkpoint_reads_bytes_only(tmp_path, capsys):
    tok = _word_tokenizer(tmp_path / "tok", TEXT.split())
    with pytest.raises(TokenizerError, match="a TiledLM checkpoint reads UTF-8 bytes"):
        load_model("bundled:full", tokenizer=tok)


def test_the_default_model_keeps_its_own_tokenizer():
    _, tok = load_model(tokenizer=None)
    assert type(tok).__name__.startswith("Bert") and len(tok) == 30522


def test_batch_settings_record_the_tokenizer(mamba, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text(TEXT + "\n" + TEXT[::-1] + "\n")
    rc, _, err = _run(capsys, "--file", texts, "--batch", "--model", mamba, "--tokenizer", "bytes",
                      "--out", tmp_path / "b")
    assert rc == 0, err
    lines = [json.loads(ln) for ln in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert [ln["settings"]["tokenizer"] for ln in lines] == ["bytes", "bytes"]
    tok = _word_tokenizer(tmp_path / "tok", TEXT.split())
    rc, _, err = _run(capsys, "--file", texts, "--batch", "--resume", "--model", mamba, "--tokenizer", tok,
                      "--out", tmp_path / "b")
    assert rc == 2 and "tokenizer" in err.splitlines()[-1]  # results of another tokenizer are not mixed in
