"""A stage of plain Mamba layers (tiling/modules/stack.py) and its decoding kernel (kernels_cuda/stack_step.h):
the kernel's step against torch's ops layer by layer (float64 and float32) and against the stage's forward,
a weight updated in place or assigned anew, and states of another batch or stage refused by name."""
from __future__ import annotations

import pytest
import torch

import tiling.modules.stack as stack_module
from tiling.config import MambaConfig, StageConfig
from tiling.modules.stack import MambaStack, StackState
from tiling.ops.scan import cpu_kernels

torch.set_num_threads(1)
needs_kernel = pytest.mark.skipif(cpu_kernels(torch.zeros(1)) is None, reason="the C++ kernel did not build")


def stage(n_layers: int = 3, d: int = 24, dtype=torch.float32, seed: int = 0) -> MambaStack:
    torch.manual_seed(seed)
    s = MambaStack(StageConfig(n_layers, MambaConfig(d_model=d, d_state=4, expand=2)), dtype=dtype).eval()
    with torch.no_grad():  # away from the initialisation's ones and zeros, so every weight matters
        for p in s.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return s


def run(s: MambaStack, x: torch.Tensor, *, reference: bool, monkeypatch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs (batch, L, d), last normed inputs)`` of ``s.step`` over ``x`` (batch, L, d)."""
    if reference:
        monkeypatch.setattr(stack_module, "cpu_kernels", lambda *t: None)
    state, ys, lasts = s.allocate(x.shape[0]), [], []
    with torch.no_grad():
        for t in range(x.shape[1]):
            s.check_state(state, x.shape[0])
            y, state, last = s.step(x[:, t], state)
            ys.append(y)
            lasts.append(last)
    if reference:
        monkeypatch.undo()
    return torch.stack(ys, 1), torch.stack(lasts, 1)


@needs_kernel
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_kernel_step_equals_torch_ops_and_forward(dtype, tol, monkeypatch):
    s = stage(dtype=dtype)
    x = torch.randn(3, 20, 24, dtype=dtype)
    y, last = run(s, x, reference=False)
    y_ref, last_ref = run(s, x, reference=True, monkeypatch=monkeypatch)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(last, last_ref, rtol=tol, atol=tol)
    with torch.no_grad():
        full, full_last = s(x)
    torch.testing.assert_close(y, full, rtol=10 * tol, atol=10 * tol)
    torch.testing.assert_close(last, full_last, rtol=10 * tol, atol=10 * tol)
    assert float((y - x).abs().max()) > 0.1  # the layers do something


@needs_kernel
@pytest.mark.parametrize("change", ["in place", "A_log in place", "assigned", "norm in place"])
def test_a_changed_weight_is_read_by_the_next_step(change, monkeypatch):
    """The kernel's decoder holds the weights (A = −exp(A_log) as a copy): a weight updated in place or
    assigned anew after a step is what the next step reads."""
    s = stage(dtype=torch.float64)
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    run(s, x, reference=False)  # the decoder is made and kept
    with torch.no_grad():
        if change == "in place":
            s.layers[1].in_proj.weight.mul_(1.5)
        elif change == "A_log in place":
            s.layers[2].A_log.add_(0.3)
        elif change == "norm in place":
            s.norms[0].weight.mul_(2.0)
        else:
            s.layers[0].out_proj.weight = torch.nn.Parameter(2.0 * s.layers[0].out_proj.weight)
    y, _ = run(s, x, reference=False)
    y_ref, _ = run(s, x, reference=True, monkeypatch=monkeypatch)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


def test_states_of_another_batch_or_stage_are_refused_by_name():
    s = stage()
    with pytest.raises(ValueError, match="batch 2, got input batch 3"):
        s.check_state(s.allocate(2), 3)
    with pytest.raises(ValueError, match="another layer"):
        s.check_state(stage(n_layers=2).allocate(1), 1)
    with pytest.raises(ValueError, match="another layer"):
        s.check_state(stage(d=16).allocate(1), 1)
    with pytest.raises(TypeError, match="StackState"):
        s.check_state([st for st in s.allocate(1)], 1)
    assert isinstance(s.allocate(1), StackState)


@needs_kernel
def test_a_stage_that_decoded_can_be_copied_and_saved():
    """The stage keeps the kernel's decoder, which cannot be pickled: a copy and a save leave it out, and
    the copy decodes as the original does."""
    import copy
    import pickle
    s = stage()
    x = torch.randn(2, 5, 24)
    first, _ = run(s, x, reference=False)
    assert "_stack_decoder" in s.__dict__
    twin = copy.deepcopy(s)
    assert "_stack_decoder" not in twin.__dict__
    torch.testing.assert_close(run(twin, x, reference=False)[0], first, rtol=0, atol=0)
    torch.testing.assert_close(run(pickle.loads(pickle.dumps(s)), x, reference=False)[0], first, rtol=0, atol=0)


def test_a_stage_of_no_layers_is_the_identity_with_an_empty_state():
    """``n_layers = 0`` is a valid stage (StageConfig): its forward and step return their input, its state is
    empty with the stage's shape and follows ``.to()`` (before stop 42 ``allocate`` failed on it), and a state of
    a stage with layers is refused by name."""
    s = stage(0, d=8)
    x = torch.randn(2, 5, 8)
    state = s.allocate(2)
    assert tuple(state.conv.shape) == (0, 2, 16, 4) and tuple(state.ssm.shape) == (0, 2, 16, 4)
    with torch.no_grad():
        assert torch.equal(s(x)[0], x) and s(x)[1] is None
        y, new, last = s.step(x[:, 0], state)
    assert torch.equal(y, x[:, 0]) and torch.equal(last, x[:, 0]) and new is state
    assert s.double().allocate(1).ssm.dtype == torch.float64
    assert "_empty" not in s.state_dict()  # nothing saved for it
    with pytest.raises(ValueError, match="another layer"):
        s.check_state(stage(1, d=8).allocate(2), 2)
