"""Hugging Face interop (issue 28): HF ``MambaForCausalLM`` ↔ ``TiledLM``, ``TiledMambaForCausalLM``.

References are independent of the code under test: HF transformers' own ``MambaForCausalLM`` (its
logits and its ``generate``) for the conversion, ``TiledLM.step`` run by hand for ``generate()``,
and the model before ``save_pretrained`` for ``from_pretrained``.
"""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, MambaConfig, MambaForCausalLM  # noqa: E402

from tiling.config import TilingConfig  # noqa: E402
from tiling.train import TiledLM  # noqa: E402
from tiling.train.hf import TiledMambaConfig, TiledMambaForCausalLM, from_hf, to_hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 61


@pytest.fixture(autouse=True)
def _one_thread_no_network(monkeypatch):
    """One torch thread (a shared 2-core machine), and any attempt to reach the network fails the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the network was contacted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    torch.set_num_threads(threads)


def mamba_folder(folder: Path, seed: int = 0, **overrides) -> tuple[MambaForCausalLM, Path]:
    """A random HF Mamba model, its weights moved off the initialisation, saved with ``save_pretrained``."""
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, hidden_size=24, state_size=6, num_hidden_layers=2, conv_kernel=4, expand=2,
              time_step_rank=3, layer_norm_epsilon=1e-6, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    model = MambaForCausalLM(MambaConfig(**{**kw, **overrides})).eval()
    with torch.no_grad():  # every weight matters: norms away from 1, and the mixers' outputs large against the
        for name, p in model.named_parameters():  # embedding, so that greedy decoding does not just repeat the
            if "A_log" not in name:  # input token (the head is the embedding)
                p.add_(0.2 * torch.randn_like(p))
        for block in model.backbone.layers:
            block.mixer.out_proj.weight.mul_(5.0)
    model.save_pretrained(folder)
    return model, folder


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------------------------
# HF → tiled → HF
# ---------------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None)
@given(hidden=st.sampled_from([8, 16, 24]), state=st.integers(1, 8), layers=st.integers(1, 3),
       conv=st.integers(2, 4), expand=st.integers(1, 2), bias=st.booleans(), conv_bias=st.booleans(),
       eps=st.sampled_from([1e-6, 1e-5, 1e-3]), L=st.integers(1, 40), seed=st.integers(0, 2 ** 16))
def test_round_trip_logits_at_budget_one(tmp_path_factory, hidden, state, layers, conv, expand, bias, conv_bias,
                                         eps, L, seed):
    """Random small HF Mamba models saved with save_pretrained: the tiled model at budget 1 gives the HF
    logits to 1e-5 relative, and converting back gives the HF model's tensors exactly."""
    folder = tmp_path_factory.mktemp("mamba")
    hf, _ = mamba_folder(folder, seed, hidden_size=hidden, state_size=state, num_hidden_layers=layers,
                         conv_kernel=conv, expand=expand, use_bias=bias, use_conv_bias=conv_bias,
                         layer_norm_epsilon=eps, time_step_rank=max(1, hidden // 8))
    lm = TiledLM.from_hf(folder, tiling=TilingConfig(tile_size=8, budget=0.5))
    ids = torch.randint(0, VOCAB, (2, L), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf(ids).logits
        assert rel_err(lm(ids, budget=1.0), ref) < 1e-5
        back = lm.to_hf()
        assert rel_err(back(ids).logits, ref) < 1e-5
    sd, sd_back = hf.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)
    assert back.config.layer_norm_epsilon == eps
    assert all(n.eps == eps for n in [*lm.norms, lm.norm_f])


def test_round_trip_through_the_hf_class_and_a_model_object(tmp_path):
    hf, folder = mamba_folder(tmp_path / "m", 3, eos_token_id=5, bos_token_id=4)
    ids = torch.randint(0, VOCAB, (3, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
        for src in (folder, str(folder), hf):  # a folder (Path or str) or the model itself
            model = from_hf(src, tiling=TilingConfig(tile_size=4, budget=0.35))
            assert isinstance(model, TiledMambaForCausalLM)
            assert rel_err(model(ids, budget=1.0).logits, ref) < 1e-5
            back = to_hf(model)
            assert rel_err(back(ids).logits, ref) < 1e-5
            assert (back.config.eos_token_id, back.config.bos_token_id) == (5, 4)
            # below budget 1 the tiled layers run coarser: the logits move (the budget is not ignored)
            assert rel_err(model(ids).logits, ref) > 1e-3


# ---------------------------------------------------------------------------------------------
# generate() = step decoding
# ---------------------------------------------------------------------------------------------
def step_decode(lm: TiledLM, prompt: torch.Tensor, n: int, budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with ``TiledLM.step`` by hand: the tokens and the logits of each new token."""
    state = lm.allocate_inference_state(prompt.shape[0])
    for t in range(prompt.shape[1]):
        logits, state = lm.step(prompt[:, t], state, budget=budget)
    tokens, scores = [prompt], []
    for _ in range(n):
        scores.append(logits)
        nxt = logits.argmax(-1)
        tokens.append(nxt[:, None])
        logits, state = lm.step(nxt, state, budget=budget)
    return torch.cat(tokens, 1), torch.stack(scores, 1)


@pytest.mark.parametrize("budget", [1.0, 0.5, 0.25])
def test_generate_equals_step_decoding(tmp_path, budget):
    _, folder = mamba_folder(tmp_path / "m", 1)
    model = from_hf(folder, tiling=TilingConfig(tile_size=4, budget=budget))
    prompt = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=12, do_sample=False, budget=budget, output_logits=True,
                             return_dict_in_generate=True)
        want_tokens, want_logits = step_decode(model.tiled, prompt, 12, budget)
        no_cache = model.generate(prompt, max_new_tokens=12, do_sample=False, budget=budget, use_cache=False)
    assert torch.equal(out.sequences, want_tokens)
    torch.testing.assert_close(torch.stack(out.logits, 1), want_logits, rtol=1e-5, atol=1e-5)
    assert len(set(want_tokens[0, 9:].tolist())) > 1  # the decoded text is not one repeated token
    assert torch.equal(no_cache, want_tokens)  # forward on the whole prefix: equal to step (block scope)


def test_generate_at_budget_one_equals_hf_generate(tmp_path):
    hf, folder = mamba_folder(tmp_path / "m", 2)
    model = from_hf(folder, tiling=TilingConfig(tile_size=4, budget=0.35))
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=15, do_sample=False, output_logits=True,
                          return_dict_in_generate=True)
        got = model.generate(prompt, max_new_tokens=15, do_sample=False, budget=1.0, output_logits=True,
                             return_dict_in_generate=True)
    assert torch.equal(got.sequences, ref.sequences)
    assert rel_err(torch.stack(got.logits, 1), torch.stack(ref.logits, 1)) < 1e-5


# ---------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# ---------------------------------------------------------------------------------------------
def trained_model(folder: Path) -> TiledMambaForCausalLM:
    """A converted model whose calibration buffers and weights moved (a few AdamW steps in training mode)."""
    model = from_hf(folder, tiling=TilingConfig(tile_size=4, budget=0.35, calibration="running"),
                    full_resolution_layers=(0,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_from_pretrained_of_save_pretrained_equals_the_model(tmp_path):
    _, folder = mamba_folder(tmp_path / "m", 4)
    model = trained_model(folder)
    layer = model.tiled.layers[1]
    assert int(layer.tile_router.calibrator.updates) > 0  # the buffers a reload must restore
    model.save_pretrained(tmp_path / "tiled")
    assert json.loads((tmp_path / "tiled" / "config.json").read_text())["model_type"] == "tiled_mamba"
    for again in (TiledMambaForCausalLM.from_pretrained(tmp_path / "tiled"),
                  AutoModelForCausalLM.from_pretrained(str(tmp_path / "tiled"))):
        assert type(again) is TiledMambaForCausalLM and not again.training
        assert again.tiled.head.weight is again.tiled.embedding.weight  # still tied
        sd, sd_again = model.state_dict(), again.state_dict()
        assert sd.keys() == sd_again.keys() and all(torch.equal(sd[k], sd_again[k]) for k in sd)
        ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            for budget in (1.0, 0.5, 0.35, 0.25):
                assert torch.equal(again(ids, budget=budget).logits, model(ids, budget=budget).logits), budget
        assert again.config.tiling_config == model.config.tiling_config
        assert again.tiled.full_resolution_layers == (0,)


def test_save_pretrained_keeps_other_files_and_survives_an_interrupted_save(tmp_path, monkeypatch):
    _, folder = mamba_folder(tmp_path / "m", 5)
    model = from_hf(folder, tiling=TilingConfig(tile_size=4, budget=0.5))
    out = tmp_path / "tiled"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    model.save_pretrained(out)
    before = (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.tiled.embedding.weight.add_(1.0)

    def interrupted(self, save_directory, *args, **kwargs):
        Path(save_directory, "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(out)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before  # the previous save is whole
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiled.")]  # no temporary folder left
    TiledMambaForCausalLM.from_pretrained(out)
    with pytest.raises(NotADirectoryError, match="save_directory"):
        model.save_pretrained(out / "notes.txt")


def test_trainer_runs_a_few_steps(tmp_path):
    pytest.importorskip("accelerate")  # transformers' Trainer needs it; it is not a dependency of this project
    from torch.utils.data import Dataset

    _, folder = mamba_folder(tmp_path / "m", 6)
    model = from_hf(folder, tiling=TilingConfig(tile_size=4, budget=0.5))

    class Windows(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                                          logging_steps=1)
    before = model.tiled.layers[0].in_proj.weight.detach().clone()
    result = transformers.Trainer(model=model, args=args, train_dataset=Windows()).train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(model.tiled.layers[0].in_proj.weight, before)


# ---------------------------------------------------------------------------------------------
# the documented example
# ---------------------------------------------------------------------------------------------
def word_tokenizer(folder: Path, words: list[str]) -> None:
    """A word-level tokenizer of ``words`` saved into ``folder`` (the tiny model has no real one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(folder)


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "interop.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len([ln for ln in code.splitlines() if ln.strip() and not ln.startswith(("import", "from"))]) <= 12
    _, folder = mamba_folder(tmp_path / "mamba-130m-hf", 7)
    word_tokenizer(folder, re.findall(r"\w+|[^\w\s]", "The for statement iterates over the items of any "
                                                       "sequence, in order."))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "docs/interop.md", "exec"), ns)
    printed = capsys.readouterr().out
    assert re.search(r"budget 1\.0: \d+\.\d{3} nats/token", printed) and "budget 0.35:" in printed
    model, again, ids = ns["model"], ns["again"], ns["ids"]
    assert int((ids != 0).sum()) == ids.numel()  # every word known: the tokenizer was used
    with torch.no_grad():
        for budget in (1.0, 0.35):
            assert torch.equal(again(ids, budget=budget).logits, model(ids, budget=budget).logits)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_mamba_model_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"model_or_folder .*empty.* has no config\.json"):
        from_hf(empty)
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)) \
        .save_pretrained(gpt2)
    with pytest.raises(ValueError, match=r"model_or_folder .*gpt2.* is not a Mamba model: .*model_type 'gpt2'"):
        TiledLM.from_hf(gpt2)
    _, folder = mamba_folder(tmp_path / "m", 8)
    from_hf(folder).save_pretrained(tmp_path / "tiled")
    with pytest.raises(ValueError, match="TiledMambaForCausalLM.from_pretrained"):
        from_hf(tmp_path / "tiled")  # a tiled folder: the error says how to load it
    with pytest.raises(ValueError, match=r"holds a 'mamba' model \(an HF Mamba folder: convert it"):
        TiledMambaForCausalLM.from_pretrained(folder)
    with pytest.raises(TypeError, match="model_or_folder must be"):
        from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model_or_folder must be"):
        from_hf(3)
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        from_hf(folder / "config.json")


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path):
    _, folder = mamba_folder(tmp_path / "m", 9)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_size": 32, "intermediate_size": 64}))
    with pytest.raises(ValueError, match="does not fit its config.json"):
        from_hf(folder)
    _, folder = mamba_folder(tmp_path / "t", 9)
    from_hf(folder).save_pretrained(tmp_path / "tiled")
    cfg = json.loads((tmp_path / "tiled" / "config.json").read_text())
    (tmp_path / "tiled" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"do not fit its config.json: missing tensors \['tiled.layers.2"):
        TiledMambaForCausalLM.from_pretrained(tmp_path / "tiled")


def test_shapes_that_do_not_fit_the_tiling_are_refused(tmp_path):
    _, folder = mamba_folder(tmp_path / "m", 10, state_size=6, hidden_size=24)
    with pytest.raises(ValueError, match=r"tiling does not fit the Mamba model \(hidden_size=24, state_size=6.*s_max"):
        TiledLM.from_hf(folder, tiling=TilingConfig(scope="scan", s_max=8))
    with pytest.raises(ValueError, match=r"tiling does not fit the Mamba model .*router_rank"):
        from_hf(folder, tiling=TilingConfig(boundaries="token", router_rank=32))


def test_an_untied_head_or_another_activation_is_refused(tmp_path):
    hf, _ = mamba_folder(tmp_path / "m", 11)
    hf.config.tie_word_embeddings = False
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1.0)
    with pytest.raises(ValueError, match="lm_head is not tied"):
        TiledLM.from_hf(hf)
    hf2, _ = mamba_folder(tmp_path / "m2", 11, hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        TiledLM.from_hf(hf2)


def test_a_hub_name_is_refused_offline_without_touching_the_network(tmp_path):
    for load in (from_hf, TiledLM.from_hf, TiledMambaForCausalLM.from_pretrained):
        with pytest.raises(FileNotFoundError, match=r"'tiling-tests/no-such-model' is not a local folder, and it is "
                                                    r"not in the local Hugging Face cache.*huggingface-cli download"):
            load("tiling-tests/no-such-model")


def test_models_that_are_not_mamba_at_budget_one_are_not_exported(tmp_path):
    _, folder = mamba_folder(tmp_path / "m", 12)
    routed = TiledLM.from_hf(folder, tiling=TilingConfig(scope="scan", tile_size=4))
    routed.to_hf()  # routing at its zero initialisation adds nothing: exportable
    with torch.no_grad():
        routed.layers[1].route_gate.fill_(0.5)
    with pytest.raises(ValueError, match="layer 1 has trained cross-tile routing"):
        routed.to_hf()
    with pytest.raises(ValueError, match="state-dimension policy"):
        TiledLM.from_hf(folder, tiling=TilingConfig(scope="scan", state_k=1.0)).to_hf()
    with pytest.raises(TypeError, match="model must be a TiledLM"):
        to_hf(torch.nn.Linear(2, 2))


def test_forward_and_generate_refuse_what_a_tiled_model_cannot_do(tmp_path):
    _, folder = mamba_folder(tmp_path / "m", 13)
    model = from_hf(folder, tiling=TilingConfig(tile_size=4, budget=0.5))
    ids = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(ValueError, match="attention_mask masks positions"):
        model(ids, attention_mask=torch.tensor([[0] + [1] * 7, [1] * 8]))
    model(ids, attention_mask=torch.ones_like(ids))  # all ones is fine
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        model(inputs_embeds=torch.zeros(2, 8, 24))
    with pytest.raises(ValueError, match="num_beams=2: beam search with the cache"):
        model.generate(ids, max_new_tokens=2, num_beams=2)
    beams = model.generate(ids, max_new_tokens=2, num_beams=2, use_cache=False)
    assert beams.shape == (2, 10)
    with pytest.raises(ValueError, match="budget"):
        model(ids, budget=1.5)
    with pytest.raises(TypeError, match="tiling must be"):
        TiledMambaConfig(tiling="fast")
    with pytest.raises(ValueError, match="mamba holds \\['d_sate'\\]"):
        TiledMambaConfig(mamba={"d_sate": 4})
    with pytest.raises(TypeError, match="unsupported|takes a folder"):
        TiledMambaForCausalLM.from_pretrained(folder, device_map="auto")
