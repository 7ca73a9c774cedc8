"""The values stay what they were: outputs of small seeded models against the fixture stored at
commit b3fc2f5, before the speed work of issue 23 (``data/make_values_fixture.py`` made it).

Every configuration of the block and scan scopes at budgets 1, 0.5, 0.35 and 0.25 (eval mode),
a training-mode forward with the running calibration's update, gradients, the layer with an
external density and curvature, the scan scope's state-dimension policy, and the bundled
checkpoints of then (``bundled:adaptive`` while the installed file is that one; the first ``bundled:full``,
4 × 256, is kept beside the fixture)."""
import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tiling.config import TilingConfig
from tiling.modules import TiledMamba

DATA = Path(__file__).with_name("data")
spec = importlib.util.spec_from_file_location("make_values_fixture", DATA / "make_values_fixture.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)
FIX = load_file(str(DATA / "values_fixture.safetensors"))
RTOL = 1e-6


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    """Equal to ``rtol`` relative to the tensor's largest value (float32 noise of a reordered sum)."""
    scale = float(want.abs().max()) or 1.0
    err = float((got.double() - want.double()).abs().max())
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} × {scale:.3g}"


def model_of(name: str):
    model = make.build(name)
    base = {k[len("base/"):]: v for k, v in FIX.items() if k.startswith("base/")}
    pre = f"extra/{name}/"
    extra = {k[len(pre):]: v for k, v in FIX.items() if k.startswith(pre)}
    sd = {**{k: v for k, v in base.items()}, **extra}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if k != "head.weight"], (missing, unexpected)
    return model


@pytest.mark.parametrize("name", list(make.CONFIGS))
def test_logits_equal_the_fixture(name):
    model = model_of(name).eval()
    with torch.no_grad():
        for b in make.BUDGETS:
            assert_same(model(FIX["tokens"], budget=b), FIX[f"logits/{name}/{b:g}"], f"{name} at budget {b}")
    model.train()
    with torch.no_grad():
        assert_same(model(FIX["tokens"]), FIX[f"train/{name}/logits"], f"{name} in training mode")
    for k, v in model.state_dict().items():
        if "calibrator" in k:
            assert torch.equal(v, FIX[f"train/{name}/{k}"]) or (
                v.is_floating_point() and torch.allclose(v, FIX[f"train/{name}/{k}"], rtol=RTOL, atol=0)), k


@pytest.mark.parametrize("name", make.GRAD_CONFIGS)
def test_gradients_equal_the_fixture(name):
    model = model_of(name).train()
    loss = (model(FIX["tokens"], budget=0.25) * FIX["grad_weight"]).sum()
    rl = model.ratio_loss()
    if rl is not None:
        assert_same(rl.detach().reshape(1), FIX[f"grad/{name}/ratio_loss"], "ratio loss")
        loss = loss + rl
    loss.backward()
    pre = f"grad/{name}/"
    names = {k[len(pre):] for k in FIX if k.startswith(pre) and k != pre + "ratio_loss"}
    got = {k for k, p in model.named_parameters() if p.grad is not None}
    assert got == names
    for k, p in model.named_parameters():
        if p.grad is not None:
            assert_same(p.grad, FIX[pre + k], f"{name}: grad of {k}", rtol=1e-5)


@pytest.mark.parametrize("name", ["block", "scan"])
def test_layer_with_density_curvature_and_state_dims_equals_the_fixture(name):
    tiling = dict(block=TilingConfig(tile_size=make.T, budget=0.35, policy="adaptive", curvature_weight=0.7),
                  scan=TilingConfig(tile_size=make.T, budget=0.35, scope="scan", policy="adaptive", state_k=3.0,
                                    s_min=2))[name]
    layer = TiledMamba(make.D, **make.MAMBA, tiling=tiling)
    pre = f"layer/{name}/weights/"
    layer.load_state_dict({k[len(pre):]: v for k, v in FIX.items() if k.startswith(pre)})
    with torch.no_grad():
        for tag, kw in (("own", {}), ("external", {"density": FIX["layer/density"],
                                                   "curvature": FIX["layer/curvature"]})):
            y, plan = layer(FIX["layer/x"], return_plan=True, **kw)
            assert_same(y, FIX[f"layer/{name}/{tag}/y"], f"{name}/{tag}")
            assert torch.equal(plan.segments, FIX[f"layer/{name}/{tag}/segments"])
            if f"layer/{name}/{tag}/state_dims" in FIX:
                assert torch.equal(plan.state_dims, FIX[f"layer/{name}/{tag}/state_dims"])


@pytest.mark.parametrize("name", list(make.BUNDLED_BUDGETS))
def test_bundled_checkpoints_equal_the_fixture(name):
    from tiling.train.textmodel import load_text_model

    path = make.checkpoint_path(name)
    if not path.is_file():
        pytest.skip(f"{path} is not installed")
    if hashlib.sha256(path.read_bytes()).digest() != bytes(FIX[f"bundled/{name}/sha256"].tolist()):
        pytest.skip(f"{path} is not the checkpoint the fixture was made from (the sweep installed a new one)")
    model, _ = load_text_model(path)
    text = FIX["bundled/text"]
    with torch.no_grad():
        for b in make.BUNDLED_BUDGETS[name]:
            logits = model(text, budget=b)
            logp = F.log_softmax(logits.double(), -1)[0, :-1].gather(-1, text[0, 1:, None])[:, 0]
            assert_same(logp, FIX[f"bundled/{name}/{b:g}/logp"], f"bundled:{name} at {b}", rtol=1e-5)
            assert_same(logits[0, -1], FIX[f"bundled/{name}/{b:g}/last"], f"bundled:{name} at {b}")
