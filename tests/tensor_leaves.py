"""The tensors inside a public function's output (tuples, lists, dicts, dataclasses, nested): what the API
fuzzer checks for NaN and the gradient sweep differentiates."""
from dataclasses import fields, is_dataclass

import torch


def leaves(out):
    """Every tensor in ``out``, depth first."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from leaves(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from leaves(o)
    elif is_dataclass(out):
        for f in fields(out):
            yield from leaves(getattr(out, f.name))
