"""Checkpoints are not trusted (issue 27, item 3): the metadata and the header are checked before the
model is built or a tensor read, memory stays at the model's size, and a tied head must equal the
embedding it is tied to."""
import json
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import KEPT_FULL_4X256
from safetensors.torch import save_file

import tiling.train.checkpoint as ckpt
import tiling.train.textmodel as textmodel
from tiling.train.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from tiling.config import MambaConfig, TiledLMConfig, TilingConfig
from tiling.train.model import TiledLM
from tiling.train.textmodel import (KIND, TextModelError, build_model, config_from_dict, load_text_model, model_config,
                                    model_dict, read_text_meta, save_text_checkpoint)

TINY = dict(d_model=16, n_layers=2, d_state=4, tile_size=8)
#: the two forms of a TiledLM's stored configuration: nested (model_dict) and the flat one of earlier checkpoints
FORMS = ("nested", "flat")


def flat_config(cfg) -> dict:
    """The flat configuration ``TiledLM.config`` was before the nested form (an independent writer of the old
    format: model_config's Mamba arguments and every tiling field in ``layer_kwargs``)."""
    return {"vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "shared_density": cfg.shared_density, "full_resolution_layers": list(cfg.full_resolution_layers),
            "layer_kwargs": {"d_state": cfg.mamba.d_state, "expand": cfg.mamba.expand, **cfg.tiling.to_dict()}}


def _text_checkpoint(tmp_path, name="ok.safetensors", form="nested"):
    torch.manual_seed(0)
    cfg = model_config("adaptive", 0.5, **TINY)
    model = build_model(cfg)
    stored = model_dict(model) if form == "nested" else flat_config(cfg)
    extra = {"kind": KIND, "model": stored, "configuration": "adaptive", "budget": 0.5, "context": 64}
    return save_checkpoint(tmp_path / name, model=model, extra=extra), model, extra


def _with_model(m, change):
    """Checkpoint metadata ``m`` with its model configuration changed by ``change(model dict)``."""
    return {**m, "extra": {**m["extra"], "model": change(dict(m["extra"]["model"]))}}


def _set_d_model(model: dict, value) -> dict:
    """``d_model`` set in either form (the nested form keeps it in ``mamba``)."""
    if "layer_kwargs" in model:
        return {**model, "d_model": value}
    return {**model, "mamba": {**model["mamba"], "d_model": value}}


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
    (lambda m: _with_model(m, lambda c: {**c, "vocab_size": 255}), "has vocabulary 255"),
    (lambda m: _with_model(m, lambda c: {**c, "full_resolution_layers": [2]}), "layer 2 does not exist"),
    (lambda m: _with_model(m, lambda c: {**c, "shared_density": "yes"}), "shared_density must be a bool"),
    (lambda m: _with_model(m, lambda c: _set_d_model(c, "16")), "d_model must be an int"),
    (lambda m: {**m, "step": -1}, "step -1 is not a non-negative int"),
])
@pytest.mark.parametrize("form", FORMS)
def test_malformed_metadata_is_a_clear_error_not_a_traceback(tmp_path, spoil, match, form):
    """Was a TypeError/KeyError traceback from evaluate and generate."""
    path, _, _ = _text_checkpoint(tmp_path, form=form)
    bad = _rewrite(path, tmp_path / "bad.safetensors", meta=spoil)
    with pytest.raises((TextModelError, CheckpointError), match=match):
        read_text_meta(bad)


@pytest.mark.parametrize("spoil,match", [
    (lambda c: {**c, "layer_kwargs": "x"}, "layer_kwargs is a str"),
    (lambda c: {**c, "layer_kwargs": {**c["layer_kwargs"], "device": "cuda"}}, "device or dtype"),
    (lambda c: {**c, "layer_kwargs": {**c["layer_kwargs"], "d_sate": 4}}, r"unknown layer arguments \['d_sate'\]"),
    (lambda c: {**c, "layer_kwargs": {**c["layer_kwargs"], "budget": 1.5}}, "tiling: budget must lie in"),
    (lambda c: {**c, "layer_kwargs": {**c["layer_kwargs"], "expand": 0}}, "mamba: expand must be >= 1"),
])
def test_a_malformed_flat_configuration_is_refused_naming_the_field(tmp_path, spoil, match):
    path, _, _ = _text_checkpoint(tmp_path, form="flat")
    bad = _rewrite(path, tmp_path / "bad.safetensors", meta=lambda m: _with_model(m, spoil))
    with pytest.raises(TextModelError, match=match):
        read_text_meta(bad)


@pytest.mark.parametrize("spoil,match", [
    (lambda c: {**c, "mamba": "x"}, "mamba must be a MambaConfig or a dict of its fields, got str"),
    (lambda c: {**c, "mamba": {**c["mamba"], "d_state": "4"}}, "mamba: d_state must be an int"),
    (lambda c: {**c, "mamba": {**c["mamba"], "dt_min": 0.5}}, "mamba: dt_min must be <= dt_max"),
    (lambda c: {**c, "mamba": {**c["mamba"], "d_sate": 4}}, r"mamba: unknown MambaConfig fields \['d_sate'\]"),
    (lambda c: {k: v for k, v in c.items() if k != "mamba"}, "needs its mamba"),
    (lambda c: {**c, "tiling": {**c["tiling"], "policy": "fancy"}}, "tiling: policy must be one of"),
    (lambda c: {**c, "tiling": {**c["tiling"], "r_min": 0.9}}, "tiling: r_min must be <= budget"),
    (lambda c: {**c, "tiling": [1]}, "tiling must be a TilingConfig or a dict of its fields, got list"),
    (lambda c: {**c, "n_layer": 2}, r"unknown TiledLMConfig fields \['n_layer'\]"),
    (lambda c: {**c, "layout": "tiled"}, "layout must be 'tiledlm' or 'hourglass', got 'tiled'"),
    (lambda c: {**c, "layout": "hourglass"}, "the hourglass encoder stage is not an object"),
])
def test_a_malformed_nested_configuration_is_refused_naming_the_field(tmp_path, spoil, match):
    path, _, _ = _text_checkpoint(tmp_path)
    bad = _rewrite(path, tmp_path / "bad.safetensors", meta=lambda m: _with_model(m, spoil))
    for read in (read_text_meta, load_text_model):
        with pytest.raises(TextModelError, match=match):
            read(bad)


@pytest.mark.parametrize("form", FORMS)
def test_a_huge_d_model_is_refused_before_the_model_is_built(tmp_path, monkeypatch, form):
    """Was: d_model 200000 built the model first and tried to allocate 320 GB."""
    path, _, _ = _text_checkpoint(tmp_path, form=form)
    bad = _rewrite(path, tmp_path / "huge.safetensors", meta=lambda m: _with_model(m, lambda c: _set_d_model(c, 200_000)))
    monkeypatch.setattr(textmodel, "build_model", lambda cfg: pytest.fail("the model was built"))
    with pytest.raises(TextModelError, match=r"d_model = 200000 is outside \[1, 16384\].*limits"):
        load_text_model(bad)
    # within the limit, but more than the file holds: the metadata does not describe the file
    lie = _rewrite(path, tmp_path / "lie.safetensors", meta=lambda m: _with_model(m, lambda c: _set_d_model(c, 4096)))
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
    _watch_reads(monkeypatch, lambda k, t: reads.append(k))
    other = build_model(model_config("adaptive", 0.5, **{**TINY, "d_model": 8}))
    with pytest.raises(CheckpointError, match="tensor\\(s\\) of another shape"):
        load_checkpoint(path, model=other, restore_rng=False)
    assert reads == []


def _watch_reads(monkeypatch, seen) -> None:
    """Make the checkpoint reader's ``safe_open`` call ``seen(name, tensor)`` on every tensor it reads."""
    real = ckpt.safe_open

    class Watched:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *e):
            return self.f.__exit__(*e)

        def get_tensor(self, k):
            t = self.inner.get_tensor(k)
            seen(k, t)
            return t

    monkeypatch.setattr(ckpt, "safe_open", Watched)


def test_tensors_are_read_one_at_a_time(tmp_path, monkeypatch):
    """Was: every tensor held at once (about twice the file's size at the peak)."""
    path, model, _ = _text_checkpoint(tmp_path)
    alive, peak = [], [0]

    def track(_k, t):
        alive.append(weakref.ref(t))
        peak[0] = max(peak[0], sum(r() is not None for r in alive))

    _watch_reads(monkeypatch, track)
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


# ---- the stored configuration (issue 26): nested TiledLMConfig, the flat form of earlier checkpoints ----------
@st.composite
def lm_configs(draw, small: bool = False) -> TiledLMConfig:
    """Valid TiledLMConfigs (the layer's own bounds kept: router_rank ≤ d_model, s_max ≤ d_state); ``small``:
    sizes a test can build and run."""
    d = draw(st.integers(1, 8 if small else 4096))
    d_state = draw(st.integers(1, 4 if small else 256))
    dt_min = draw(st.floats(1e-4, 0.1))
    expand = draw(st.integers(1, 2))
    mamba = MambaConfig(d_model=d, d_state=d_state, d_conv=draw(st.integers(1, 4)), expand=expand,
                        dt_rank=draw(st.none() | st.integers(1, min(8, d * expand))), dt_min=dt_min,
                        dt_max=draw(st.floats(dt_min, 1.0)), dt_init=draw(st.sampled_from(["random", "constant"])),
                        dt_scale=draw(st.floats(0.1, 4.0)), dt_init_floor=draw(st.floats(1e-6, 1e-3)),
                        conv_bias=draw(st.booleans()), bias=draw(st.booleans()))
    T = draw(st.integers(1, 8 if small else 2 ** 12))
    budget = draw(st.floats(2 ** -10, 1.0))
    scope = draw(st.sampled_from(["block", "scan"]))
    causal = draw(st.booleans())
    token = scope == "block" and draw(st.booleans())
    s_max = draw(st.none() | st.integers(1, d_state))
    tiling = TilingConfig(
        tile_size=T, budget=budget, r_min=budget * draw(st.floats(2 ** -10, 1.0)),
        policy=draw(st.sampled_from(["adaptive", "uniform", "binary"])), causal=causal,
        exponent=draw(st.floats(0.1, 2.0)), lookback=draw(st.integers(1, 4)), slack=draw(st.floats(0.5, 8.0)),
        distance_scale=None if causal else draw(st.none() | st.floats(0.5, 64.0)),
        predictor_tail=draw(st.none() | st.integers(1, T)), predictor_reduce=draw(st.sampled_from(["mean", "max"])),
        calibration=draw(st.sampled_from(["history", "running"])), calibration_momentum=draw(st.floats(0.01, 1.0)),
        calibration_levels=draw(st.integers(2, 64)),
        state_k=draw(st.none() | st.floats(0.0, 8.0)) if scope == "scan" else None,
        s_min=draw(st.integers(1, s_max or d_state)), s_max=s_max,
        routing=draw(st.none() | st.booleans()) if scope == "scan" else draw(st.sampled_from([None, False])),
        scope=scope, boundaries="token" if token else "tile", signal_channels=draw(st.integers(1, 16)),
        router_rank=draw(st.none() | st.integers(1, d)) if token else None, pool=draw(st.booleans()))
    n = draw(st.integers(1, 2 if small else 64))
    return TiledLMConfig(mamba, n_layers=n, tiling=tiling, vocab_size=256, shared_density=draw(st.booleans()),
                         full_resolution_layers=tuple(draw(st.lists(st.integers(-n, n - 1), max_size=3))))


@settings(max_examples=200)
@given(lm_configs())
def test_the_nested_configuration_round_trips_through_json(cfg):
    stored = json.loads(json.dumps({"layout": "tiledlm", **cfg.to_dict()}))  # model_dict's form, not built
    assert config_from_dict(stored) == cfg
    assert TiledLMConfig.from_dict(cfg.to_dict()) == cfg


@settings(max_examples=200)
@given(lm_configs())
def test_the_flat_form_of_earlier_checkpoints_reads_as_the_nested_one(cfg):
    m = cfg.mamba
    flat = {"vocab_size": cfg.vocab_size, "d_model": m.d_model, "n_layers": cfg.n_layers,
            "shared_density": cfg.shared_density, "full_resolution_layers": list(cfg.full_resolution_layers),
            "layer_kwargs": {"d_state": m.d_state, "d_conv": m.d_conv, "expand": m.expand,
                             "dt_rank": "auto" if m.dt_rank is None else m.dt_rank, "dt_min": m.dt_min,
                             "dt_max": m.dt_max, "dt_init": m.dt_init, "dt_scale": m.dt_scale,
                             "dt_init_floor": m.dt_init_floor, "conv_bias": m.conv_bias, "bias": m.bias,
                             **cfg.tiling.to_dict()}}
    assert config_from_dict(json.loads(json.dumps(flat))) == cfg
    # the flat form stored only the Mamba arguments given: a missing one is TiledMamba's default (expand: 2)
    bare = {**flat, "layer_kwargs": cfg.tiling.to_dict()}
    assert config_from_dict(bare).mamba == MambaConfig(d_model=m.d_model, expand=2)


@settings(max_examples=12)
@given(lm_configs(small=True), st.integers(0, 2 ** 31 - 1))
def test_config_to_checkpoint_to_config_is_the_identity(tmp_path_factory, cfg, seed):
    """Config → TiledLM → text checkpoint → config and model: the same configuration, weights and logits."""
    torch.manual_seed(seed)
    model = TiledLM(config=cfg).eval()
    path = save_text_checkpoint(tmp_path_factory.mktemp("rt") / "m.safetensors", model, configuration="adaptive",
                                budget=cfg.tiling.budget, context=64)
    extra = read_text_meta(path)
    assert extra["model"]["layout"] == "tiledlm" and "layer_kwargs" not in extra["model"]
    assert config_from_dict(extra["model"]) == cfg
    loaded, _ = load_text_model(path)
    assert loaded.config == cfg
    x = torch.randint(0, 256, (1, 3 * cfg.tiling.tile_size + 1), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name,budget,full_layers,boundaries", [("full", 1.0, (), "tile"),
                                                                ("adaptive", 0.35, (0, 3), "token")])
def test_the_bundled_flat_checkpoints_load_and_compute_as_stored_nested(tmp_path, name, budget, full_layers,
                                                                        boundaries):
    """The first bundled files hold the flat form; read through the one reader, re-saved nested, the same model.
    (That their logits are those of before is tests/tiling/test_values_fixture.py's bundled test.) The first
    ``bundled:full`` is kept in tests/tiling/data since the hourglass sweep bundled 8 × 180 in its place."""
    p = KEPT_FULL_4X256 if name == "full" else textmodel.BUNDLED_DIR / textmodel.BUNDLED[name]
    if not p.is_file():
        pytest.skip(f"{p} is not installed")
    model, extra = load_text_model(p)
    assert "layer_kwargs" in extra["model"] and "layout" not in extra["model"]  # the flat form
    assert textmodel.shape_summary(extra["model"]) == "4 × 256" and textmodel.shape_summary({}) is None
    c = model.config
    assert (c.d_model, c.n_layers, c.mamba.d_state, c.mamba.expand, c.tiling.tile_size) == (256, 4, 16, 1, 16)
    assert (c.tiling.budget, c.full_resolution_layers, c.tiling.boundaries) == (budget, full_layers, boundaries)
    again = save_text_checkpoint(tmp_path / "nested.safetensors", model, configuration=extra["configuration"],
                                 budget=extra["budget"], context=extra["context"])
    nested, _ = load_text_model(again)
    assert nested.config == c and read_text_meta(again)["model"]["layout"] == "tiledlm"
    x = torch.tensor([list(b"A nested configuration computes what the flat one did.")])
    with torch.no_grad():
        assert torch.equal(nested(x, budget=0.25), model(x, budget=0.25))


def test_a_dt_rank_above_d_inner_is_refused_when_made_not_when_loaded():
    """Was: MambaConfig took dt_rank 2 at d_inner 1, and the checkpoint it saved was refused on load."""
    with pytest.raises(ValueError, match="dt_rank"):
        MambaConfig(d_model=1, expand=1, dt_rank=2)
    assert MambaConfig(d_model=1, expand=2, dt_rank=2).dt_rank == 2
