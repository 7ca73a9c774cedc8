"""Checkpoints are not trusted (issue 27, item 3): the metadata and the header are checked before the
model is built or a tensor read, memory stays at the model's size, and a tied head must equal the
embedding it is tied to."""
import json
import weakref

import pytest
import torch
from safetensors.torch import save_file

import tiling.train.checkpoint as ckpt
import tiling.train.textmodel as textmodel
from tiling.train.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from tiling.train.textmodel import (KIND, TextModelError, build_model, load_text_model, model_config,
                                    read_text_meta)

TINY = dict(d_model=16, n_layers=2, d_state=4, tile_size=8)


def _text_checkpoint(tmp_path, name="ok.safetensors"):
    torch.manual_seed(0)
    cfg = model_config("adaptive", 0.5, **TINY)
    model = build_model(cfg)
    extra = {"kind": KIND, "model": cfg, "configuration": "adaptive", "budget": 0.5, "context": 64}
    return save_checkpoint(tmp_path / name, model=model, extra=extra), model, extra


def _rewrite(path, out, *, meta=None, tensors=None):
    """A copy of checkpoint ``path`` with its meta JSON (or tensors) replaced, the digest kept consistent."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        ts = {k: f.get_tensor(k) for k in f.keys()}
    if tensors is not None:
        ts = tensors(ts)
    md = {"meta": json.dumps(meta(json.loads(md["meta"]))) if meta else md["meta"], "sha256": ckpt._digest(ts)}
    save_file(ts, str(out), metadata=md)
    return out


@pytest.mark.parametrize("spoil,match", [
    (lambda m: [m], "expected an object"),                                          # meta a list
    (lambda m: {**m, "extra": "text"}, "'extra' is a str"),                         # extra a string
    (lambda m: {**m, "extra": {k: v for k, v in m["extra"].items() if k != "context"}}, "context must be an int"),
    (lambda m: {**m, "extra": {**m["extra"], "context": "64"}}, "context must be an int"),
    (lambda m: {**m, "extra": {**m["extra"], "context": 1.5}}, "context must be an int"),
    (lambda m: {**m, "extra": {**m["extra"], "budget": "half"}}, "budget must be a number"),
    (lambda m: {**m, "extra": {**m["extra"], "model": [1, 2]}}, "model configuration is a list"),
    (lambda m: {**m, "extra": {**m["extra"], "model": {**m["extra"]["model"], "n_layers": "2"}}}, "n_layers must be an int"),
    (lambda m: {**m, "extra": {**m["extra"], "model": {**m["extra"]["model"], "layer_kwargs": "x"}}}, "layer_kwargs is a str"),
    (lambda m: {**m, "extra": {**m["extra"], "model": {**m["extra"]["model"], "layer_kwargs": {
        **m["extra"]["model"]["layer_kwargs"], "device": "cuda"}}}}, "device or dtype"),
    (lambda m: {**m, "step": -1}, "step -1 is not a non-negative int"),
])
def test_malformed_metadata_is_a_clear_error_not_a_traceback(tmp_path, spoil, match):
    """Was a TypeError/KeyError traceback from evaluate and generate."""
    path, _, _ = _text_checkpoint(tmp_path)
    bad = _rewrite(path, tmp_path / "bad.safetensors", meta=spoil)
    with pytest.raises((TextModelError, CheckpointError), match=match):
        read_text_meta(bad)


def test_a_huge_d_model_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    """Was: d_model 200000 built the model first and tried to allocate 320 GB."""
    path, _, _ = _text_checkpoint(tmp_path)
    bad = _rewrite(path, tmp_path / "huge.safetensors",
                   meta=lambda m: {**m, "extra": {**m["extra"], "model": {**m["extra"]["model"], "d_model": 200_000}}})
    monkeypatch.setattr(textmodel, "build_model", lambda cfg: pytest.fail("the model was built"))
    with pytest.raises(TextModelError, match=r"d_model = 200000 is outside \[1, 16384\].*limits"):
        load_text_model(bad)
    # within the limit, but more than the file holds: the metadata does not describe the file
    lie = _rewrite(path, tmp_path / "lie.safetensors",
                   meta=lambda m: {**m, "extra": {**m["extra"], "model": {**m["extra"]["model"], "d_model": 4096}}})
    with pytest.raises(TextModelError, match="implies at least .* but the file holds"):
        load_text_model(lie)
    with pytest.raises(TextModelError, match="above the limit of 1,000"):
        read_text_meta(path, limits={"parameters": 1000})


def test_the_header_is_checked_before_any_tensor_is_read(tmp_path, monkeypatch):
    path, _, _ = _text_checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    huge = tmp_path / "header.safetensors"
    huge.write_bytes((2 ** 62).to_bytes(8, "little") + bytes(raw[8:]))
    with pytest.raises(CheckpointError, match="its header claims"):
        read_header(huge)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(bytes(raw[8:8 + n]))
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, 10 ** 12]
    text = json.dumps(header).encode()
    out = tmp_path / "range.safetensors"
    out.write_bytes(len(text).to_bytes(8, "little") + text + bytes(raw[8 + n:]))
    with pytest.raises(CheckpointError, match="is not inside the"):
        read_header(out)

    reads = []
    real = ckpt.safe_open

    class Counting:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *e):
            return self.f.__exit__(*e)

        def get_tensor(self, k):
            reads.append(k)
            return self.inner.get_tensor(k)

    monkeypatch.setattr(ckpt, "safe_open", Counting)
    other = build_model(model_config("adaptive", 0.5, **{**TINY, "d_model": 8}))
    with pytest.raises(CheckpointError, match="tensor\\(s\\) of another shape"):
        load_checkpoint(path, model=other, restore_rng=False)
    assert reads == []


def test_tensors_are_read_one_at_a_time(tmp_path, monkeypatch):
    """Was: every tensor held at once (about twice the file's size at the peak)."""
    path, model, _ = _text_checkpoint(tmp_path)
    alive, peak = [], [0]
    real = ckpt.safe_open

    class Tracking:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *e):
            return self.f.__exit__(*e)

        def get_tensor(self, k):
            t = self.inner.get_tensor(k)
            alive.append(weakref.ref(t))
            peak[0] = max(peak[0], sum(r() is not None for r in alive))
            return t

    monkeypatch.setattr(ckpt, "safe_open", Tracking)
    fresh = build_model(model_config("adaptive", 0.5, **TINY))
    load_checkpoint(path, model=fresh, restore_rng=False)
    assert len(alive) >= 40 and peak[0] <= 3, (len(alive), peak[0])  # of 30 tensors, each read twice
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_tied_head_that_differs_from_the_embedding_is_refused(tmp_path):
    """Was: loaded silently (the head's tensor overwrote the embedding, or the other way round)."""
    path, _, _ = _text_checkpoint(tmp_path)

    def spoil(ts):
        ts = dict(ts)
        ts["model.head.weight"] = ts["model.head.weight"] + 0.5
        return ts

    bad = _rewrite(path, tmp_path / "tied.safetensors", tensors=spoil)
    with pytest.raises(TextModelError, match="head.weight is tied to embedding.weight .* differs from it"):
        load_text_model(bad)
    model, _ = load_text_model(path)  # the file as written loads
    assert model.head.weight is model.embedding.weight


def test_bundled_checkpoints_still_load():
    for name in ("full", "adaptive"):
        p = textmodel.BUNDLED_DIR / textmodel.BUNDLED[name]
        if p.is_file():
            model, extra = load_text_model(p)
            assert extra["kind"] == KIND and not model.training
