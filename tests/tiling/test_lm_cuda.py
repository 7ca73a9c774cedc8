"""The byte-level ``TiledLM`` (tiling/train/model.py) on a GPU.

In every real-text configuration (``tiling.train.textmodel.CONFIGURATIONS``, and the sweep's best, the
router with its outer layers at full resolution) at budgets 1 and 0.25:

* the same model on the CPU and on CUDA agrees: the plans (tile resolutions, realised segment
  counts), the logits to 1e-4 and the gradients of the byte loss to 1e-3 (relative Frobenius norms;
  float32 on both, TF32 off), once in training mode (the running calibrations update alike) and
  once in evaluation mode;
* the CUDA model is autoregressive: changing byte ``t`` changes no logit before ``t``, and does change
  the logits from ``t`` on.

The CPU model is the reference: its kernels are checked against the float64 reference elsewhere
(tests/kernels/test_scan_cpu.py, tests/tiling/test_text.py). Every test here needs an NVIDIA GPU
(skipped otherwise, as tests/kernels/test_scan_cuda.py); ``scripts/gpu_check.sh`` runs them.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from test_text import CONFIGS, tiny_model
from tiling.train import TiledLM

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
BUDGETS = (1.0, 0.25)
#: case -> (configuration, extra model arguments): every configuration, and the sweep's best
CASES = {**{c: (c, {}) for c in CONFIGS},
         "router+ends": ("router", {"n_layers": 3, "full_resolution_layers": (0, -1)})}
LOGIT_TOL, GRAD_TOL = 1e-4, 1e-3


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 on the GPU while a test runs (cuDNN's convolutions use it by default, ~1e-3 relative):
    the comparison is of float32 arithmetic on both devices."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def model_for(case: str, budget: float) -> TiledLM:
    config, extra = CASES[case]
    return tiny_model(config, budget, seed=3, **extra)  # pool gates and routers opened, so they matter


def byte_tokens(batch: int, length: int, seed: int, device: str = "cpu") -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed)).to(device)


def rel_err(fast: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """‖fast − ref‖ / max(‖ref‖, floor), in float64 on the CPU; non-finite values fail."""
    fast, ref = fast.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(fast).all(), "non-finite values on the GPU"
    return float((fast - ref).norm() / max(float(ref.norm()), floor, 1e-30))


def loss_and_plans(model: TiledLM, x: torch.Tensor, budget: float):
    logits, plans = model(x[:, :-1], budget=budget, return_plans=True)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    return logits, plans, loss


def assert_same_plans(plans_gpu, plans_cpu, what: str) -> None:
    """The same tile resolutions and realised segment counts (a flipped threshold would show here first)."""
    assert len(plans_gpu) == len(plans_cpu)
    for k, (pg, pc) in enumerate(zip(plans_gpu, plans_cpu)):
        for name in ("resolution", "effective_resolution"):
            a, b = getattr(pg, name), getattr(pc, name)
            a, b = (a() if callable(a) else a), (b() if callable(b) else b)
            torch.testing.assert_close(a.double().cpu(), b.double().cpu(), rtol=0, atol=1e-6,
                                       msg=lambda m: f"{what}: layer {k} plan {name} differs: {m}")


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_model_agrees_with_the_cpu_model(case, budget):
    cpu = model_for(case, budget)
    gpu = copy.deepcopy(cpu).to(DEVICE)
    x = byte_tokens(3, 97, seed=5)
    for mode in ("train", "eval"):
        cpu.train(mode == "train")
        gpu.train(mode == "train")
        cpu.zero_grad()
        gpu.zero_grad()
        logits_c, plans_c, loss_c = loss_and_plans(cpu, x, budget)
        logits_g, plans_g, loss_g = loss_and_plans(gpu, x.to(DEVICE), budget)
        what = f"{case} at budget {budget} ({mode})"
        assert_same_plans(plans_g, plans_c, what)
        err = rel_err(logits_g, logits_c)
        assert err <= LOGIT_TOL, f"{what}: logits differ by {err:.2e} > {LOGIT_TOL:.0e}"
        loss_c.backward()
        loss_g.backward()
        grads_c = {n: p.grad for n, p in cpu.named_parameters() if p.grad is not None}
        grads_g = {n: p.grad for n, p in gpu.named_parameters() if p.grad is not None}
        assert set(grads_g) == set(grads_c) and grads_c, what
        scale = max(float(g.norm()) for g in grads_c.values())
        for n, g in grads_c.items():  # relative to the parameter's gradient, or to 1e-3 of the largest one
            err = rel_err(grads_g[n], g, floor=1e-3 * scale)
            assert err <= GRAD_TOL, f"{what}: gradient of {n} differs by {err:.2e} > {GRAD_TOL:.0e}"
    for (n, b_c), b_g in zip(cpu.named_buffers(), gpu.buffers()):  # the running calibrations updated alike
        if b_c.is_floating_point():
            assert rel_err(b_g, b_c) <= LOGIT_TOL, f"{case} at budget {budget}: buffer {n} differs"
        else:
            assert torch.equal(b_g.cpu(), b_c), f"{case} at budget {budget}: buffer {n} differs"


def leaks(model: TiledLM, x: torch.Tensor, budget: float, positions) -> list[int]:
    """Positions ``t`` where changing byte ``t`` changes a logit before ``t``; asserts it changes one from ``t`` on."""
    found = []
    with torch.no_grad():
        base = model(x, budget=budget)
        for t in positions:
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1 + torch.arange(x.shape[0], device=x.device)) % 256
            out = model(x2, budget=budget)
            if not torch.allclose(out[:, :t], base[:, :t], atol=1e-5, rtol=0):
                found.append(t)
            assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-5, rtol=0), f"byte {t} changes nothing"
    return found


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_model_is_autoregressive(case, budget):
    model = model_for(case, budget).to(DEVICE)
    with torch.no_grad():  # a training-mode forward first, so the running calibrations are in use
        model(byte_tokens(4, 64, seed=9, device=DEVICE), budget=budget)
    model.eval()
    x = byte_tokens(3, 64, seed=1, device=DEVICE)
    assert leaks(model, x, budget, [1, 7, 8, 13, 24, 40, 63]) == [], (case, budget)
    if budget < 1 and case != "full":  # really coarse on the GPU
        plans = model(x, budget=budget, return_plans=True)[1]
        tiled = [plans[k] for k in model.tiled_layers]
        assert tiled and all(float(p.effective_resolution().mean()) < 1.0 for p in tiled)
