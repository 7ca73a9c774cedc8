"""tiling.train.synthetic (scripts/train_tiled.py) and tiling.train: task, checkpoints (atomic, verified), resume,
DDP, sweep."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiling.config import MambaConfig, TiledLMConfig, TilingConfig
from tiling.train import BurstCopyDataset, BurstRepeatDataset, CheckpointError, TiledLM, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_tiled.py"
TINY = ["--context-len", "48", "--n-bursts", "2", "--burst-len", "3", "--n-symbols", "4", "--d-model", "8",
        "--d-state", "4", "--tile-size", "8", "--batch-size", "4", "--train-size", "64", "--eval-size", "8",
        "--eval-every", "3", "--log-every", "1", "--lr", "1e-2", "--warmup", "2", "--no-ifq", "--quiet",
        "--threads", "1"]


def load_script():
    """The synthetic-task trainer, :mod:`tiling.train.synthetic` (``SCRIPT`` is its alias)."""
    from tiling.train import synthetic

    return synthetic


def test_burst_copy_dataset_structure():
    ds = BurstCopyDataset(10, context_len=1024, n_bursts=3, burst_len=5, n_symbols=6, seed=3)
    assert ds.seq_len == 1024 + 15 and ds.vocab_size == 8
    for i in range(10):
        x, y, m = ds[i]
        assert x.shape == y.shape == m.shape == (ds.seq_len,)
        assert torch.equal(x[1:], y[:-1])
        ctx = x[:1024]
        content = ctx[ctx != ds.filler]
        assert content.numel() == 15 and bool((content < 6).all())
        pos = torch.nonzero(ctx != ds.filler).flatten()
        runs = torch.split(pos, 5)
        assert all(bool((r.diff() == 1).all()) for r in runs)  # bursts of consecutive symbols
        assert int(x[1024]) == ds.sep
        assert torch.equal(y[m], content)  # the answer is the content in order
        assert int(m.sum()) == 15 and bool(m[-15:].all())
    a, b = ds[4], BurstCopyDataset(10, context_len=1024, n_bursts=3, burst_len=5, n_symbols=6, seed=3)[4]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="fit"):
        BurstCopyDataset(4, context_len=10, n_bursts=3, burst_len=5)
    near = BurstCopyDataset(20, context_len=1024, n_bursts=2, burst_len=3, burst_window=10, seed=1)
    for i in range(20):
        ctx = near[i][0][:1024]
        pos = torch.nonzero(ctx != near.filler).flatten()
        assert pos.numel() == 6 and int(pos.min()) >= 1024 - 10  # bursts in the last W tokens
    with pytest.raises(ValueError, match="burst_window"):
        BurstCopyDataset(4, context_len=10, burst_window=11, n_bursts=1, burst_len=2)
    with pytest.raises(IndexError):
        ds[10]


def _model_opt(seed=0):
    torch.manual_seed(seed)
    model = TiledLM(6, d_model=8, n_layers=2, d_state=4, tiling=TilingConfig(tile_size=8, budget=0.5))
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    x = torch.randint(0, 6, (2, 20))
    for _ in range(2):
        model(x).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_burst_repeat_dataset_answers_are_recoverable_at_the_lag():
    ds = BurstRepeatDataset(12, context_len=1024, n_bursts=3, burst_len=40, period=7, n_symbols=5, seed=2)
    assert ds.seq_len == 1024 and ds.vocab_size == 7
    for i in range(12):
        x, y, m = ds[i]
        assert x.shape == y.shape == m.shape == (1024,)
        assert torch.equal(x[1:], y[:-1])
        full = torch.cat([x, y[-1:]])
        starts = torch.nonzero(full == ds.marker).flatten()
        assert starts.numel() == 3
        for s in starts.tolist():
            burst = full[s + 1:s + 41]
            assert bool((burst < 5).all())  # 40 content symbols after each marker
            assert torch.equal(burst[7:], burst[:-7])  # period 7
        content = (full < 5).sum()
        assert int(content) == 120 and int((full == ds.filler).sum()) == 1025 - 123
        # every answer equals the input `period` positions before its target, i.e. x[t − period + 1]
        t = torch.nonzero(m).flatten()
        assert t.numel() == 3 * (40 - 7)
        assert torch.equal(y[t], x[t - 7 + 1])
        assert bool((x[t - 7 + 1] < 5).all())  # the recalled token is content of the same burst
        # target_index: the target of position p is content symbol p − s of the burst at marker s
        k = ds.target_index(x)
        for s in starts.tolist():
            span = torch.arange(s, min(s + 40, 1024))
            assert torch.equal(k[span], span - s)
        assert bool((k[m] >= 7).all()) and int((k >= 0).sum()) == sum(min(40, 1024 - s) for s in starts.tolist())
    a, b = ds[5], BurstRepeatDataset(12, context_len=1024, n_bursts=3, burst_len=40, period=7, n_symbols=5, seed=2)[5]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="period"):
        BurstRepeatDataset(4, context_len=100, burst_len=8, period=8)
    with pytest.raises(ValueError, match="fit"):
        BurstRepeatDataset(4, context_len=20, n_bursts=2, burst_len=10, period=3)
    with pytest.raises(IndexError):
        ds[12]


def test_tiling_keywords_are_deprecated_and_build_the_same_model():
    torch.manual_seed(0)
    new = TiledLM(6, d_model=8, n_layers=1, d_state=4, tiling=TilingConfig(tile_size=8, budget=0.5))
    torch.manual_seed(0)
    with pytest.deprecated_call(match="TilingConfig"):
        old = TiledLM(6, d_model=8, n_layers=1, d_state=4, tile_size=8, budget=0.5)
    assert old.tiling == new.tiling and old.config == new.config
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    with pytest.raises(TypeError, match="not both"):
        TiledLM(6, d_model=8, n_layers=1, tiling=TilingConfig(), budget=0.5)


def test_the_keyword_form_builds_the_model_of_its_nested_configuration():
    """Issue 26: TiledLM's keywords make a TiledLMConfig (no flat layer_kwargs); expand is Mamba's 2 there."""
    tiling = TilingConfig(tile_size=8, budget=0.5)
    torch.manual_seed(0)
    kw = TiledLM(6, d_model=8, n_layers=3, d_state=4, dt_min=0.01, dt_rank="auto", tiling=tiling,
                 full_resolution_layers=(-1,))
    cfg = TiledLMConfig(MambaConfig(d_model=8, d_state=4, expand=2, dt_min=0.01), n_layers=3, tiling=tiling,
                        vocab_size=6, full_resolution_layers=(2,))
    torch.manual_seed(0)
    nested = TiledLM(config=cfg)
    assert kw.config == cfg and kw.tiling is cfg.tiling and kw.full_resolution_layers == (2,)
    assert all(torch.equal(a, b) for a, b in zip(kw.state_dict().values(), nested.state_dict().values()))
    assert kw.layers[0].expand == 2 and kw.layers[0].dt_rank == 1 and kw.layers[2].tiling.budget == 1.0
    with pytest.raises(TypeError, match="config=TiledLMConfig.* or the model's arguments, not both"):
        TiledLM(6, config=cfg)
    with pytest.raises(TypeError, match="config must be a tiling.config.TiledLMConfig, got dict"):
        TiledLM(config=cfg.to_dict())
    with pytest.raises(TypeError, match=r"unknown TiledLM arguments \['d_sate'\]"):
        TiledLM(6, d_sate=4)
    with pytest.raises(TypeError, match="needs vocab_size"):
        TiledLM(d_model=8)
    with pytest.raises(ValueError, match="dt_min must be <= dt_max"):
        TiledLM(6, dt_min=0.5, dt_max=0.1)


def test_shared_density_feeds_the_first_layers_tile_density_to_every_layer():
    torch.manual_seed(0)
    kw = dict(d_model=8, n_layers=3, d_state=4,
              tiling=TilingConfig(tile_size=8, budget=0.35, r_min=0.125, policy="adaptive"))
    shared = TiledLM(7, shared_density=True, **kw)
    plain = TiledLM(7, **kw)
    plain.load_state_dict(shared.state_dict())
    x = torch.randint(0, 7, (2, 44))  # 44: a partial last tile
    with torch.no_grad():
        _, ps = shared(x, return_plans=True)
        _, pp = plain(x, return_plans=True)
        # at budget 1 the density is irrelevant: the same function
        assert torch.equal(shared(x, budget=1.0), plain(x, budget=1.0))
    assert torch.allclose(ps[0].density, pp[0].density, rtol=1e-12, atol=0)  # layer 0 unchanged
    for k in (1, 2):
        assert torch.allclose(ps[k].density, pp[0].density, rtol=1e-6, atol=0)  # layer 0's ρ_i everywhere
        assert not torch.allclose(pp[k].density, pp[0].density, rtol=1e-3)  # which differs from their own
    # still causal: perturbing token t moves no earlier logit
    t = 29
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % 7
    with torch.no_grad():
        a, b = shared(x), shared(y)
    assert torch.equal(a[:, :t], b[:, :t]) and not torch.equal(a[:, t:], b[:, t:])


def test_checkpoint_round_trip(tmp_path):
    model, opt, sched = _model_opt()
    path = save_checkpoint(tmp_path / "ck.safetensors", model=model, optimizer=opt, scheduler=sched, step=7,
                           extra={"note": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temporary left behind
    torch.manual_seed(123)
    expected_rng = torch.get_rng_state()
    save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, step=7, extra={"note": "x"})  # replaces atomically
    torch.rand(5)
    m2, o2, s2 = _model_opt(seed=1)
    info = load_checkpoint(path, model=m2, optimizer=o2, scheduler=s2)
    assert info == {"step": 7, "extra": {"note": "x"}}
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for (k, a), b in zip(model.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert m2.head.weight.data_ptr() == m2.embedding.weight.data_ptr()  # still tied
    sa, sb = opt.state_dict(), o2.state_dict()
    for pid in sa["state"]:
        for k, v in sa["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][pid][k]))
    assert sa["param_groups"] == sb["param_groups"]
    assert s2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]


def test_corrupt_or_truncated_checkpoint_is_a_clear_error(tmp_path):
    model, opt, sched = _model_opt()
    path = save_checkpoint(tmp_path / "ck.safetensors", model=model, optimizer=opt, scheduler=sched, step=1)
    raw = path.read_bytes()
    m2, o2, s2 = _model_opt(1)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(trunc, model=m2, optimizer=o2, scheduler=s2)
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF  # inside the tensor data: only the hash can tell
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(bad, model=m2, optimizer=o2, scheduler=s2)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk, model=m2)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors", model=m2)
    other = TiledLM(6, d_model=12, n_layers=1, d_state=4, tiling=TilingConfig(tile_size=8))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(path, model=other)


def test_resume_is_bit_identical(tmp_path):
    mod = load_script()
    # the running calibration adds buffers (quantiles, update count) that must survive the resume
    opts = TINY + ["--budget", "0.5", "--calibration", "running", "--predictor-tail", "4"]
    full = mod.parse_args(opts + ["--steps", "6", "--out", str(tmp_path / "full")])
    mod.train(full)
    first = mod.parse_args(opts + ["--steps", "6", "--stop-at", "3", "--out", str(tmp_path / "part")])
    mod.train(first)
    torch.manual_seed(999)  # a resumed process starts from an unrelated global RNG state
    second = mod.parse_args(opts + ["--steps", "6", "--out", str(tmp_path / "part"),
                                    "--resume", str(tmp_path / "part" / "checkpoint.safetensors")])
    mod.train(second)
    a = load_file(str(tmp_path / "full" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    assert int(a["model.layers.0.tile_router.calibrator.updates"]) == 6
    for k in a:
        assert torch.equal(a[k], b[k]), k
    evals = [json.loads(s) for s in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if e["kind"] == "eval"] == [3, 6]


def test_distributed_two_cpu_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
           *TINY, "--steps", "8", "--eval-every", "100", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0 = load_file(str(tmp_path / "params_rank0.safetensors"))
    p1 = load_file(str(tmp_path / "params_rank1.safetensors"))
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    losses = [json.loads(s)["loss"] for s in (tmp_path / "log.jsonl").read_text().splitlines()
              if json.loads(s)["kind"] == "train"]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_sweep_writes_table_logs_and_figure(tmp_path):
    mod = load_script()
    fig = tmp_path / "fig.png"
    # history calibration: a running reference (the script's default) cannot follow weights that a
    # 4-step run at lr 1e-2 changes completely; it is exercised by the resume and repeat tests
    args = mod.parse_args(TINY + ["--steps", "2", "--base-steps", "2", "--sweep", "--budgets", "0.5",
                                  "--calibration", "history", "--out", str(tmp_path / "s"), "--figure", str(fig)])
    rows = mod.sweep(args)
    assert [r["name"] for r in rows] == ["full", "uniform@0.5", "binary@0.5", "adaptive@0.5"]
    assert rows[0]["recurrence_cost"] == pytest.approx(1.0) and rows[0]["resolution"] == 1.0
    for r in rows[1:]:
        assert r["recurrence_cost"] < 0.75 and abs(r["resolution"] - 0.5) < 0.3
    assert fig.stat().st_size > 1000
    assert "| adaptive@0.5 |" in (tmp_path / "s" / "summary.md").read_text()
    assert (tmp_path / "s" / "adaptive_0.5" / "log.jsonl").exists()
    assert (tmp_path / "s" / "base" / "checkpoint.safetensors").exists()  # every run started from the base model


def test_script_builds_the_repeat_task_and_policy_options():
    mod = load_script()
    args = mod.parse_args(TINY + ["--task", "repeat", "--period", "2", "--burst-len", "12", "--exponent", "2",
                                  "--slack", "8", "--shared-density", "--budget", "0.5", "--policy", "binary",
                                  "--calibration", "running", "--predictor-tail", "3", "--predictor-reduce", "max"])
    train_ds, eval_ds, model, _, _ = mod.build(args, torch.device("cpu"))
    assert isinstance(train_ds, BurstRepeatDataset) and train_ds.period == 2 and eval_ds.seed != train_ds.seed
    assert model.shared_density
    assert all(layer.tiling.exponent == 2.0 and layer.tiling.slack == 8.0 and layer.policy == "binary" and layer.tiling.predictor_tail == 3
               and layer.tiling.predictor_reduce == "max" and layer.tiling.calibration == "running" for layer in model.layers)
    x, y, m = train_ds[0]
    assert torch.equal(y[m], x[torch.nonzero(m).flatten() - 1])  # period 2: the answer is the input one before
    # accuracy by position in the burst: answers at k = 2..11; early = the first tile (8) of them
    metrics, _ = mod.evaluate(model, eval_ds, args, torch.device("cpu"))
    by_k = metrics["accuracy_by_index"]
    assert len(by_k) == 12 and by_k[:2] == [None, None] and all(v is not None for v in by_k[2:])
    n_early, n_late = 8 * 2 * 8, 2 * 2 * 8  # per index: 8 sequences × 2 bursts
    mixed = (metrics["accuracy_early"] * n_early + metrics["accuracy_late"] * n_late) / (n_early + n_late)
    assert metrics["accuracy"] == pytest.approx(mixed)
    assert metrics["accuracy_early"] == pytest.approx(sum(by_k[2:10]) / 8, abs=1e-3)


def test_bad_arguments():
    from tiling.options import UsageError

    mod = load_script()
    with pytest.raises(UsageError, match=r"--budget must lie in \[9.53674e-07, 1\], got 1.5"):
        mod.parse_args(["--budget", "1.5"])
    with pytest.raises(ValueError, match="int64"):
        TiledLM(6, d_model=8, n_layers=1, d_state=4)(torch.randn(1, 4))
