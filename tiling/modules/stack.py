"""A stage of plain Mamba layers at full resolution (:class:`MambaStack`: the hourglass' encoder, main
network and decoder, :mod:`tiling.modules.hourglass`) and its decoding state.

Each layer is ``x ← x + Mamba(RMSNorm(x))`` (Gu & Dao 2023's residual block, as
:class:`~tiling.train.model.TiledLM`'s), a :class:`~tiling.modules.TiledMamba` at budget 1 (the block
scope's full resolution is exact: every token is a segment, Δ × 1).

Decoding a stage on the CPU is one call of the kernel (``StackDecoder``, ``kernels_cuda/stack_step.h``)
over its layers' weights, checked and converted once per model, count of assignments and dtype; elsewhere
(another device or dtype, a ``torch.func`` transform or dispatch mode) each layer's step runs in torch's
ops (``TiledMamba._mixer_step``), the reference the kernel is tested against.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from tiling.config import StageConfig, TilingConfig
from tiling.modules.step_weights import KernelCacheOwner, kernel_weights
from tiling.modules.tiled_mamba import TiledMamba
from tiling.ops.scan import cpu_kernels, rms_norm

Tensor = torch.Tensor

#: a plain Mamba layer: the block scope at budget 1 is exact (no policy, no pooling parameters)
PLAIN = TilingConfig(budget=1.0, policy="uniform", pool=False, tile_size=16)
#: ``StackDecoder.step``'s statuses: done, and a weight moved or updated in place since it was made
_OK, _STALE = 0, 2


class StackState(NamedTuple):
    """Decoding state of a :class:`MambaStack`, each field stacked over its layers.

    Attributes
    ----------
    conv : (layers, batch, d_inner, d_conv) the convolution windows.
    ssm : (layers, batch, d_inner, d_state) the scan states.
    """

    conv: Tensor
    ssm: Tensor


class MambaStack(KernelCacheOwner, nn.Module):
    """``n`` residual layers ``x ← x + Mamba(RMSNorm(x))`` of one shape (an hourglass stage).

    Parameters
    ----------
    stage : the :class:`~tiling.config.StageConfig`.
    """

    _kernel_caches = ("_stack_decoder",)

    def __init__(self, stage: StageConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        m = stage.mamba
        #: (layers, d_inner, d_conv, d_state): the decoding state's shape, known without a layer (a stage may have none)
        self.state_shape = (stage.n_layers, m.expand * m.d_model, m.d_conv, m.d_state)
        self.d_model = m.d_model
        self.norms = nn.ModuleList(nn.RMSNorm(m.d_model, eps=1e-5, device=device, dtype=dtype)
                                   for _ in range(stage.n_layers))
        self.layers = nn.ModuleList(TiledMamba(m.d_model, **m.layer_kwargs(), tiling=PLAIN, device=device,
                                               dtype=dtype) for _ in range(stage.n_layers))
        if not stage.n_layers:  # the dtype and device of an empty stage's state, following .to() (not saved)
            self.register_buffer("_empty", torch.zeros(0, device=device, dtype=dtype), persistent=False)

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, d_model={self.d_model}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(output, the last layer's normed input or None)``: (batch, L, d) → (batch, L, d).

        No layer checks its input: :class:`~tiling.modules.hourglass.HourglassLM` checks its tokens and
        its logits once per call (issue 23), as :class:`~tiling.train.model.TiledLM` does; the norm is
        the one-pass kernel."""
        last = None
        for norm, layer in zip(self.norms, self.layers):
            last = rms_norm(x, norm.weight, norm.eps)
            x = x + layer(last, budget=1.0, check=False)
        return x, last

    # ------------------------------------------------------------------ decoding
    def allocate(self, batch: int) -> StackState:
        """A zero :class:`StackState` for ``batch`` rows (each layer's conv and scan state, stacked)."""
        if not self.layers:  # a stage of no layers (the identity): an empty state of the stage's shape
            n, E, K, N = self.state_shape
            w = self._state_like()
            return StackState(w.new_zeros(0, batch, E, K), w.new_zeros(0, batch, E, N))
        states = [layer.allocate_inference_state(batch) for layer in self.layers]
        return StackState(torch.stack([s.conv for s in states]), torch.stack([s.ssm for s in states]))

    def _state_like(self) -> Tensor:
        """A tensor of the state's dtype and device: a layer's parameter, or a buffer of the stage's own."""
        p = next(self.parameters(), None)
        return p if p is not None else self._empty

    def check_state(self, state: StackState, batch: int) -> None:
        """Refuse a state of another batch size or of another stage (its layers' count or shapes).

        Raises
        ------
        TypeError
            ``state`` is not a :class:`StackState`.
        ValueError
            Naming what differs: the batch size, or the layers' count and shapes.
        """
        if not isinstance(state, StackState):
            raise TypeError(f"state must be a StackState (allocate), got {type(state).__name__}")
        want = self.state_shape
        got = (*state.conv.shape[:1], *state.conv.shape[2:], *state.ssm.shape[-1:])
        if state.conv.dim() != 4 or state.ssm.dim() != 4 or got != want or state.ssm.shape[:3] != state.conv.shape[:3]:
            raise ValueError(f"state was allocated by another layer: (layers, d_inner, d_conv, d_state) = {got}, "
                             f"this stage has {want}")
        if state.conv.shape[1] != batch:
            raise ValueError(f"state was allocated for batch {state.conv.shape[1]}, got input batch {batch}")

    def step(self, x: Tensor, state: StackState) -> tuple[Tensor, StackState, Tensor]:
        """One position of a checked state (:meth:`check_state`): ``(output (batch, d), state, the last
        layer's normed input)`` (a stage of no layers: ``(x, state, x)``). Values are not checked: the model
        checks its logits once per step."""
        if not self.layers:  # the identity
            return x, state, x
        ext = cpu_kernels(x, state.ssm) if x.dtype == state.ssm.dtype == state.conv.dtype else None
        if ext is not None:
            status, out = self._decoder(ext, x.dtype).step(x.contiguous(), state.conv, state.ssm)
            if status == _STALE:  # a weight was moved or updated in place since the decoder was made
                status, out = self._decoder(ext, x.dtype, stale=True).step(x.contiguous(), state.conv, state.ssm)
            if status == _OK:
                return out[0], StackState(out[2], out[3]), out[1]
        convs, ssms, last = [], [], x
        for k, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            last = rms_norm(x, norm.weight, norm.eps)
            out, conv, ssm, _ = layer._mixer_step(last, state.conv[k], state.ssm[k])
            x = x + out
            convs.append(conv)
            ssms.append(ssm)
        return x, StackState(torch.stack(convs), torch.stack(ssms)), last

    def _decoder(self, ext, dtype: torch.dtype, *, stale: bool = False):
        """The kernel's ``StackDecoder`` over the layers' weights in ``dtype``, kept per count of
        assignments (a parameter assigned anew anywhere makes another) and dtype; ``stale``: the kept
        one refused a step (a weight moved or updated in place), make it again."""
        def make():
            weights, sources, copied = kernel_weights(self.layers, dtype)
            return ext.StackDecoder([n.weight.detach().contiguous() for n in self.norms],
                                    [float(n.eps) for n in self.norms], weights,
                                    [n.weight for n in self.norms] + sources, copied)

        return self._kernel_object("_stack_decoder", dtype, make, stale=stale)


__all__ = ["MambaStack", "PLAIN", "StackState"]
