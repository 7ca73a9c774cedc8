"""The one training loop (tiling/train/trainer.py) and the hourglass sweep (tiling/train/sweep.py): the
writer discipline (a held folder is refused naming its holder, --overwrite keeps the finished run until
the new checkpoint exists, an interrupted attempt is replaced with its log kept), a resumed sweep under
other settings is refused naming them, and a sweep's table and goals."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tiling.config import hourglass_config
from tiling.modules.hourglass import HourglassLM
from tiling.train import sweep as sw
from tiling.train.storage import StorageError
from tiling.train.trainer import RunError, TrainOptions, train_run

torch.set_num_threads(1)
TEXT = b"def f(x):\n    return x + 1\n\nfor i in range(10):\n    print(f(i))\n" * 40


def data():
    t = torch.tensor(list(TEXT), dtype=torch.uint8)
    return {"train": t, "validation": t, "test": t}


def tiny():
    torch.manual_seed(0)
    return HourglassLM(hourglass_config(d_outer=8, d_main=16, main_layers=1, d_state=2, signal="uniform", budget=0.5))


OPTS = TrainOptions(context=32, batch_size=2, max_steps=2, val_windows=2, test_bytes=200, speed=False, quiet=True)


def test_a_held_folder_is_refused_naming_its_holder(tmp_path):
    import subprocess
    import sys
    import time
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tiling.train.storage import RunLock\n"
                               f"lock = RunLock({str(out)!r}, name='--out').acquire()\nprint('held', flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # a second, real process holds the folder
        with pytest.raises(StorageError, match=str(holder.pid)):
            train_run(tiny(), data(), OPTS, out, name="r", configuration="hourglass", budget=0.5)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.2)
    row = train_run(tiny(), data(), OPTS, out, name="r", configuration="hourglass", budget=0.5)
    rec = json.loads((out / "run.json").read_text())
    assert rec["settings"]["row"] == "r" and rec["settings"]["model"]["layout"] == "hourglass"
    assert row["steps"] == 2


def test_overwrite_keeps_the_finished_run_until_the_new_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = train_run(tiny(), data(), OPTS, out, name="r", configuration="hourglass", budget=0.5)
    with pytest.raises(RunError, match="finished run"):
        train_run(tiny(), data(), OPTS, out, name="r", configuration="hourglass", budget=0.5)
    import tiling.train.trainer as tr

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_text_checkpoint", boom)  # interrupted before the new run's first result
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="put back"):
        train_run(tiny(), data(), OPTS, out, name="r", configuration="hourglass", budget=0.5, overwrite=True)
    assert json.loads((out / "row.json").read_text())["test_bpb"] == first["test_bpb"]  # the old run is back
    monkeypatch.undo()
    again = train_run(tiny(), data(), OPTS.__class__(**{**OPTS.__dict__, "max_steps": 3}), out, name="r",
                      configuration="hourglass", budget=0.5, overwrite=True)
    assert again["steps"] == 3 and not list(tmp_path.glob(".run.run-old-*"))


def test_an_interrupted_attempt_is_replaced_and_its_log_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"kind": "config"}\n')
    train_run(tiny(), data(), OPTS, out, name="r", configuration="hourglass", budget=0.5)
    assert (out / "log.1.jsonl").read_text() == '{"kind": "config"}\n' and (out / "row.json").exists()


def test_a_resumed_sweep_under_other_settings_is_refused(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(TEXT)
    base = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json"), "--figures", str(tmp_path / "f"),
            "--train-file", str(text), "--context", "32", "--batch-size", "2", "--max-steps", "1", "--val-windows", "2",
            "--test-bytes", "100", "--no-speed", "--quiet", "--only", "hg-uniform@0.25/s0"]
    args = sw.parse_args(base + ["--resume"])
    sw.check_settings(args)  # records the settings (the rows themselves are too big for this test)
    assert json.loads((tmp_path / "runs" / "sweep.json").read_text())["settings"]["context"] == 32
    sw.check_settings(sw.parse_args(base + ["--resume"]))  # the same settings: accepted
    with pytest.raises(RunError, match="context"):
        sw.check_settings(sw.parse_args(base[:-2] + ["--context", "64", "--resume"]))
    assert sw.main(base[:12] + ["--context", "64", "--resume"] + base[12:]) == 2


def test_goals_on_rows():
    """Goals (a)–(e) computed on hand-made rows (numbers checked by hand)."""
    def row(name, bpb):
        r = {"row": name, "test_bpb": bpb, "prefill_bytes_per_s": 100.0, "decode_bytes_per_s": 10.0}
        if name.startswith("hg-"):  # as train_run records them
            signal = name.split("@")[0].removeprefix("hg-").removeprefix("elastic-").split("-")[0]
            r.update(signal=signal, dechunk="ema" if "-ema" in name or signal == "router" else "hold")
        return r

    rows = [row("mamba-d256/s0", 2.0), row("mamba-d128/s0", 2.3), row("hg-entropy@0.25/s0", 1.9),
            row("hg-uniform@0.25/s0", 1.96), row("hg-elastic-entropy@0.25/s0", 1.95),
            row("hg-elastic-entropy@1/s0", 1.88), row("hg-entropy@0.35/s0", 2.05),
            row("hg-elastic-entropy@0.35/s0", 2.06)]
    g = sw.goals(rows)
    assert g["best_information_hourglass"] == "hg-entropy@0.25"
    assert g["a_quality_per_flop"]["met"] is True
    assert g["b_information_matters"]["gain"] == pytest.approx(1 - 1.9 / 1.96) and g["b_information_matters"]["met"] is True
    c = g["c_quality_per_time"]  # the best hourglass row is the elastic checkpoint at budget 1
    assert c["hourglass"] == "hg-elastic-entropy@1" and c["margins"]["mamba-d256"] == pytest.approx(1 - 1.88 / 2.0)
    d = g["d_elastic"]
    assert d["vs_dedicated"]["0.25"]["met"] is False and d["vs_dedicated"]["0.35"]["met"] is True  # 1.95 > 1.02·1.9 = 1.938
    assert d["vs_own_budget_1"]["met"] is True  # 1.95 <= 1.04·1.88 = 1.955
    assert g["e_deployment_equal_bpb"] is None  # no hourglass within 1 % of a plain Mamba's bpb
    rows.append(row("mamba-d176/s0", 1.91))
    e = sw.goals(rows)["e_deployment_equal_bpb"]
    assert e["timed_by"] == "scripts/bench_equal_bpb.py" and len(e["pairs"]) == 1
    pair = e["pairs"][0]  # the pair and its bpb; no ratio of rates the two rows measured at other times
    assert pair == {"hourglass": "hg-entropy@0.25", "mamba": "mamba-d176", "bpb": [1.9, 1.91], "flops_ratio": None}
    costed = [dict(r, flops_per_byte=3e6 if r["row"].startswith("hg-") else 1.5e6) for r in rows]
    assert sw.goals(costed)["e_deployment_equal_bpb"]["pairs"][0]["flops_ratio"] == 2.0
    # (b) compares signals only: a wider entropy row against the wider uniform row, never the default-stage
    # uniform (the sweep's first table said "met" for entropy-wide 1.879 against default uniform 1.999)
    wide = rows + [row("hg-entropy-wide@0.25/s0", 1.879), row("hg-uniform-wide@0.25/s0", 1.892)]
    b = sw.goals(wide)["b_information_matters"]
    assert b["uniform"] == 1.892 and b["gain"] == pytest.approx(1 - 1.879 / 1.892) and b["met"] is False
    # (a)'s reference: the best plain row of d256's FLOPs per byte (±5 %), whatever its width and depth
    flops = [dict(r, flops_per_byte=f) for r, f in zip(rows[:3], (2.0e6, 0.6e6, 2.0e6))]
    deep, far = dict(row("mamba-d180x8/s0", 1.85), flops_per_byte=2.04e6), dict(row("mamba-d176/s0", 1.8),
                                                                                  flops_per_byte=1.0e6)
    a = sw.goals(flops + [deep, far])["a_quality_per_flop"]
    assert a["reference"] == "mamba-d180x8" and a["mamba-d256"] == 1.85 and a["met"] is False  # 1.9 > 1.85
    assert sw.goals(flops + [far])["a_quality_per_flop"]["reference"] == "mamba-d256"  # d176: half the FLOPs
    # the router's default EMA: its twin is the uniform row with the EMA
    routed = rows[:2] + [row("hg-router@0.25/s0", 1.8), row("hg-uniform-ema@0.25/s0", 1.9), row("hg-uniform@0.25/s0", 1.7)]
    assert sw.goals(routed)["b_information_matters"]["uniform"] == 1.9
    # no uniform row with the EMA: uniform boundaries make the EMA the hold, so the hold row is the twin
    ema = rows[:2] + [row("hg-surprisal-ema@0.25/s0", 1.8), row("hg-uniform@0.25/s0", 1.9)]
    assert sw.goals(ema)["b_information_matters"]["uniform"] == 1.9
    # several elastic checkpoints: (d) reports the one of the smallest worst ratio to its dedicated rows, and lists every one
    skewed = rows + [row("hg-elastic-entropy-skew3@0.25/s0", 1.92), row("hg-elastic-entropy-skew3@0.35/s0", 2.07),
                     row("hg-elastic-entropy-skew3@1/s0", 1.95)]
    d = sw.goals(skewed)["d_elastic"]
    assert d["row"] == "hg-elastic-entropy-skew3" and set(d["all"]) == {"hg-elastic-entropy", "hg-elastic-entropy-skew3"}
    assert d["vs_dedicated"]["0.25"]["ratio"] == pytest.approx(1.92 / 1.9) and d["vs_own_budget_1"]["met"] is True
    assert d["all"]["hg-elastic-entropy"]["vs_dedicated"]["0.25"]["elastic"] == 1.95
    # a checkpoint better at 0.25 but further behind at 0.35 is not the one reported
    worse = skewed + [row("hg-elastic-entropy-skew6@0.25/s0", 1.91), row("hg-elastic-entropy-skew6@0.35/s0", 2.2)]
    assert sw.goals(worse)["d_elastic"]["row"] == "hg-elastic-entropy-skew3"
    # an elastic checkpoint of other stages and dechunk is compared with the dedicated rows of its own
    wide = rows + [row("hg-elastic-surprisal-ema-wide-skew6@0.25/s0", 1.87), row("hg-surprisal-ema-wide@0.25/s0", 1.86),
                   row("hg-elastic-surprisal-ema-wide-skew6@1/s0", 1.9)]
    w = sw.goals(wide)["d_elastic"]["all"]["hg-elastic-surprisal-ema-wide-skew6"]
    assert w["vs_dedicated"]["0.25"]["alone"] == 1.86 and w["vs_dedicated"]["0.25"]["met"] is True  # 1.87 <= 1.02·1.86
    assert set(w["vs_dedicated"]) == {"0.25"} and w["vs_own_budget_1"]["met"] is True
    # a budget-conditioned elastic row is named so, and compared with the same dedicated rows
    deep = sw.hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="deep", skip=True, lr=3e-3)
    assert deep["name"] == "hg-surprisal-ema-deep-skip-lr0.003@0.35/s1"
    assert deep["stages"] == {**sw.WIDE, "main_layers": 8} and sw.WIDE["main_layers"] == 4
    assert sw.plain_row(180, 0, lr=3e-3, n_layers=8)["name"] == "mamba-d180x8-lr0.003/s0"
    assert sw.plain_row(256, 1)["name"] == "mamba-d256/s1" and sw.plain_row(256, 1)["n_layers"] == 4
    spec = sw.hourglass_row("surprisal", 0.25, 0, elastic=True, dechunk="ema", stages="wide", skew=6.0, cond=True)
    assert spec["name"] == "hg-elastic-surprisal-ema-wide-cond-skew6@0.25/s0" and spec["cond"] is True
    cond = wide + [row("hg-elastic-surprisal-ema-wide-cond-skew6@0.25/s0", 1.861)]
    c = sw.goals(cond)["d_elastic"]
    # compared at 0.25 alone (1.0005), it is not reported over hg-elastic-entropy, compared at 0.25 and 0.35 (1.026)
    assert c["row"] == "hg-elastic-entropy" and c["without_dedicated_row"] == []
    c = c["all"]["hg-elastic-surprisal-ema-wide-cond-skew6"]
    assert c["vs_dedicated"]["0.25"]["alone"] == 1.86 and c["vs_dedicated"]["0.25"]["ratio"] == pytest.approx(1.861 / 1.86)
    # scored at 0.35 where no dedicated row of its stages exists: listed, never silently left out
    scored = cond + [row("hg-elastic-surprisal-ema-wide-cond-skew6@0.35/s0", 1.87)]
    assert sw.goals(scored)["d_elastic"]["all"]["hg-elastic-surprisal-ema-wide-cond-skew6"]["without_dedicated_row"] == ["0.35"]
    alone = [r for r in scored if not r["row"].startswith("hg-elastic-entropy")]  # equal coverage: the smaller ratio
    assert sw.goals(alone)["d_elastic"]["row"] == "hg-elastic-surprisal-ema-wide-cond-skew6"
    # a row naming boundary fields (rule, form, the head's weight) is compared with the uniform row of its
    # stages and dechunk: uniform boundaries read none of those
    for fields in ({"rule": "monotonic"}, {"form": "tile"}, {"aux_weight": 0.3}, {"slack": 128.0}):
        spec = sw.hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", **fields)
        named = rows[:2] + [row(spec["name"], 1.8), row("hg-uniform-wide@0.35/s0", 1.9)]
        assert sw.goals(named)["b_information_matters"]["uniform"] == 1.9, spec["name"]
    assert sw.hourglass_row("surprisal", 0.35, 0, rule="monotonic", form="tile")["name"] == \
        "hg-surprisal-monotonic-tile@0.35/s0"
    with pytest.raises(ValueError, match="boundary fields"):
        sw.hourglass_row("surprisal", 0.35, 0, momentum=0.1)


def test_device_is_checked():
    with pytest.raises(ValueError, match="device"):
        TrainOptions(device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            TrainOptions(device="cuda")


def test_bundle_installs_the_elastic_hourglass_and_a_better_plain_mamba(tmp_path, monkeypatch):
    from tiling.train import textmodel
    from tiling.train.textmodel import build_model, load_text_model, model_config, save_text_checkpoint
    monkeypatch.setattr(textmodel, "BUNDLED_DIR", tmp_path / "bundled")
    hg = HourglassLM(hourglass_config(d_outer=8, d_main=16, main_layers=1, d_state=2, budget=0.25,
                                      budget_range=(0.25, 1.0)))
    save_text_checkpoint(tmp_path / "hg.safetensors", hg, configuration="hourglass", budget=0.25, context=32,
                         info={"budget_range": [0.25, 1.0]})
    plain = build_model(model_config("full", 1.0, d_model=8, n_layers=1, d_state=2))
    save_text_checkpoint(tmp_path / "p.safetensors", plain, configuration="full", budget=1.0, context=32)
    done = {"hg-elastic-entropy@0.25/s0": {"row": "hg-elastic-entropy@0.25/s0", "kind": "trained", "test_bpb": 2.0,
                                           "checkpoint": str(tmp_path / "hg.safetensors")},
            "mamba-d8/s0": {"row": "mamba-d8/s0", "kind": "trained", "test_bpb": 2.5,
                            "checkpoint": str(tmp_path / "p.safetensors")}}
    assert set(sw.bundle(done)) == {"hourglass", "full"}  # nothing installed yet: any plain model is better
    listed = {b["name"]: b for b in textmodel.bundled_checkpoints()}
    assert listed["hourglass"]["layout"] == "hourglass" and listed["hourglass"]["trained_budgets"] == [0.25, 1.0]
    assert listed["full"]["trained_budgets"] == [1.0, 1.0] and listed["full"]["test_bpb"] == 2.5
    assert (listed["full"]["shape"], listed["full"]["row"]) == ("1 × 8", "mamba-d8/s0")  # what --list says
    e, d = hg.config.encoder.n_layers, hg.config.decoder.n_layers
    assert listed["hourglass"]["shape"] == f"{e} × 8 | 1 × 16 | {d} × 8"
    model, _ = load_text_model(textmodel.resolve_checkpoint("bundled:hourglass"))
    assert isinstance(model, HourglassLM)
    done["mamba-d8/s0"]["test_bpb"] = 2.6  # worse than the installed one: kept
    assert set(sw.bundle(done)) == {"hourglass"}
    # of several elastic checkpoints the best at its trained budget; an evaluated row of another is not one
    done["hg-elastic-entropy-skew3@0.25/s0"] = {**done["hg-elastic-entropy@0.25/s0"], "test_bpb": 1.9,
                                                "row": "hg-elastic-entropy-skew3@0.25/s0"}
    done["hg-elastic-entropy@1/s0"] = {**done["hg-elastic-entropy@0.25/s0"], "test_bpb": 1.5, "kind": "evaluated",
                                       "row": "hg-elastic-entropy@1/s0"}
    assert sw.bundle(done)["hourglass"]["row"] == "hg-elastic-entropy-skew3@0.25/s0"
    # the best over every budget it serves: skew3 scored 3.0 at budget 1, so its mean (2.45) loses to 2.0
    done["hg-elastic-entropy-skew3@1/s0"] = {**done["hg-elastic-entropy-skew3@0.25/s0"], "test_bpb": 3.0,
                                             "kind": "evaluated", "row": "hg-elastic-entropy-skew3@1/s0",
                                             "source_row": "hg-elastic-entropy-skew3@0.25/s0"}
    assert sw.bundle(done)["hourglass"]["row"] == "hg-elastic-entropy@0.25/s0"
    # a row whose checkpoint is gone (a table rebuilt from row.json files) is no candidate, not an error
    done["mamba-d16/s0"] = {"row": "mamba-d16/s0", "kind": "trained", "test_bpb": 1.0,
                            "checkpoint": str(tmp_path / "gone.safetensors")}
    done["hg-elastic-entropy-skew6@0.25/s0"] = {**done["hg-elastic-entropy@0.25/s0"], "test_bpb": 1.0,
                                                "row": "hg-elastic-entropy-skew6@0.25/s0",
                                                "checkpoint": str(tmp_path / "gone.safetensors")}
    assert {k: r["row"] for k, r in sw.bundle(done).items()} == {"hourglass": "hg-elastic-entropy@0.25/s0"}


@pytest.mark.slow  # a full-size FLOP-matched hourglass (2.9 M parameters) and its figures: about a minute
def test_the_sweep_runs_a_row_and_draws_its_figures(tmp_path):
    """One real row of the table (the full-size FLOP-matched hourglass, two steps), then --figures-only."""
    text = tmp_path / "t.txt"
    text.write_bytes(TEXT * 3)
    base = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json"), "--figures", str(tmp_path / "f"),
            "--train-file", str(text), "--context", "64", "--batch-size", "1", "--max-steps", "2", "--val-windows", "2",
            "--test-bytes", "300", "--no-speed", "--quiet", "--only", "hg-space@0.25/s0"]
    assert sw.main(base) == 0
    table = json.loads((tmp_path / "r.json").read_text())
    (row,) = table["rows"]
    assert row["row"] == "hg-space@0.25/s0" and row["family"] == "hourglass"
    assert abs(row["flop_match"]["relative_error"]) <= 0.05 and row["hourglass"]["encoder"]["n_layers"] == 2
    for name in ("hourglass_bpb_vs_flops.png", "hourglass_bpb_vs_time.png", "hourglass_boundaries.png"):
        assert (tmp_path / "f" / name).stat().st_size > 0
    (tmp_path / "f" / "hourglass_boundaries.png").unlink()
    assert sw.main(base + ["--resume", "--figures-only"]) == 0
    assert (tmp_path / "f" / "hourglass_boundaries.png").stat().st_size > 0


def test_stage_lr_scales_the_main_networks_rate_only(tmp_path):
    """H-Net's learning-rate modulation: the main network's groups carry √(c·d_outer/d_main), and one AdamW
    step (no warm-up) moves its weights by that factor times the step at one rate, the outer stages alike."""
    model = tiny()
    scale = model.main_lr_scale()
    assert scale == pytest.approx(math.sqrt(0.5 * 8 / 16))
    groups = model.param_groups(0.1, stage_lr=True)
    main = {id(p) for m in (model.main_in, model.main, model.main_out) for p in m.parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter once
    for g in groups:
        assert {id(p) in main for p in g["params"]} == {g["lr_scale"] != 1.0}
        assert g["lr_scale"] in (1.0, scale)
    plain = model.param_groups(0.1)
    assert all(g["lr_scale"] == 1.0 for g in plain) and len(plain) == 2
    opts = TrainOptions(context=32, batch_size=2, max_steps=1, val_windows=2, test_bytes=200, speed=False, quiet=True,
                        warmup=0, grad_clip=0.0)
    before = {k: v.clone() for k, v in tiny().state_dict().items()}
    moved = {}
    for flag in (False, True):
        m = tiny()
        train_run(m, data(), replace(opts, stage_lr=flag), tmp_path / str(flag),
                  name="r", configuration="hourglass", budget=0.5)
        moved[flag] = {k: v - before[k] for k, v in m.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    main_names = {names[i] for i in main}
    for k, d in moved[False].items():
        if k in main_names and d.abs().max() > 0:
            torch.testing.assert_close(moved[True][k], scale * d, rtol=1e-3, atol=1e-6)  # float32 parameters
        elif k in names.values():
            torch.testing.assert_close(moved[True][k], d, rtol=0, atol=0)
    assert any(moved[False][k].abs().max() > 0 for k in main_names)


def test_stage_lr_is_refused_for_a_model_without_stages(tmp_path):
    from tiling.options import UsageError
    from tiling.train.textmodel import build_model, model_config
    opts = replace(OPTS, stage_lr=True)
    with pytest.raises(UsageError, match="--stage-lr"):
        train_run(build_model(model_config("full", 1.0, d_model=16, n_layers=1)), data(), opts, tmp_path / "r",
                  name="r", configuration="full", budget=1.0)
    assert not (tmp_path / "r").exists()


def test_a_stage_lr_row_is_named_and_trained_with_it():
    row = sw.hourglass_row("surprisal", 0.35, 1, dechunk="ema", stages="wide", stage_lr=True)
    assert row["name"] == "hg-surprisal-ema-wide-stagelr@0.35/s1" and row["stage_lr"] is True
    assert "stagelr" not in sw.hourglass_row("surprisal", 0.35, 1)["name"]
    assert row["name"] in {r["name"] for r in sw.rows()}
    skip = sw.hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide", skip=True)
    assert skip["name"] == "hg-surprisal-ema-wide-skip@0.35/s0" and skip["name"] in {r["name"] for r in sw.rows()}
    model, _, info = sw.build(skip, 64)
    assert model.config.residual_init == "identity" and info["hourglass"]["residual_init"] == "identity"


def test_a_row_of_its_own_learning_rate_is_named_and_trained_with_it_and_goal_a_takes_the_best_rate(monkeypatch):
    plain, hg = sw.plain_row(256, 1, lr=3e-3), sw.hourglass_row("surprisal", 0.35, 0, dechunk="ema", stages="wide",
                                                                skip=True, lr=3e-3)
    assert plain["name"] == "mamba-d256-lr0.003/s1" and hg["name"] == "hg-surprisal-ema-wide-skip-lr0.003@0.35/s0"
    assert sw.plain_row(256, 1)["name"] == "mamba-d256/s1" and {plain["name"], hg["name"]} <= {r["name"] for r in sw.rows()}
    seen = {}
    monkeypatch.setattr(sw, "train_run", lambda model, data, opts, out, **kw: seen.setdefault("lr", opts.lr))
    sw.run_spec(sw.plain_row(16, 0, lr=3e-3), {}, TrainOptions(context=16), Path("/nonexistent"), {})
    assert seen["lr"] == 3e-3
    seen.clear()
    sw.run_spec(sw.plain_row(16, 0), {}, TrainOptions(context=16, lr=1e-3), Path("/nonexistent"), {})
    assert seen["lr"] == 1e-3
    row = lambda name, bpb: {"row": name, "test_bpb": bpb, "signal": "surprisal", "dechunk": "ema"}  # noqa: E731
    g = sw.goals([row("mamba-d256/s0", 1.80), row("mamba-d256-lr0.003/s0", 1.75),
                  row("hg-surprisal-ema-wide-skip@0.35/s0", 1.78)])
    assert g["a_quality_per_flop"]["mamba-d256"] == 1.75 and g["a_quality_per_flop"]["met"] is False
