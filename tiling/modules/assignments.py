"""A count of the parameter, buffer and submodule assignments made anywhere in ``torch.nn``, through
torch's global registration hooks: a cache of weights derived from modules (the decoding step's
contiguous weights and ``A = −exp(A_log)``, the whole-model step's plan) keys on it, so that a
parameter assigned anew (``layer.out_proj.weight = nn.Parameter(...)``, ``load_state_dict(assign=True)``)
invalidates it in one integer comparison instead of one attribute lookup per parameter per step.

In-place updates (an optimiser step) change a tensor's version, and ``.to()`` its storage; the caches
check those themselves.
"""
from __future__ import annotations

from torch.nn.modules import module as _module

_count = [0]


def _assigned(*_args) -> None:
    """A registration hook: counts, changes nothing (returns None)."""
    _count[0] += 1


_module.register_module_parameter_registration_hook(_assigned)
_module.register_module_buffer_registration_hook(_assigned)
_module.register_module_module_registration_hook(_assigned)


def assignments() -> int:
    """How many parameters, buffers and submodules have been assigned so far, in any module."""
    return _count[0]


__all__ = ["assignments"]
