"""The Mamba mixer's weights as the decoding kernels read them (``layer_step`` and the whole model's
``lm_step``, ``kernels_cuda/scan_cpu.cpp`` and ``lm_step.h``): contiguous, ``A = −exp(A_log)`` and
``D`` in the state's dtype (Mamba's parameterisation of the state matrix, Gu & Dao 2023: the seeds
name the state transition, seed 001 §3.3.1, but not ``A``; the kernels take it precomputed), made once
and kept while no parameter changes."""
from __future__ import annotations

import torch

from tiling.modules.assignments import assignments

Tensor = torch.Tensor


def step_params(layer) -> tuple:
    """The mixer's parameters the step reads, in the order of :func:`step_weights` (biases may be None)."""
    return (layer.in_proj.weight, layer.in_proj.bias, layer.conv1d.weight, layer.conv1d.bias, layer.x_proj.weight,
            layer.dt_proj.weight, layer.dt_proj.bias, layer.A_log, layer.D, layer.out_proj.weight,
            layer.out_proj.bias)


def step_weights(layer, dtype: torch.dtype) -> list:
    """``[W_in, b_in, conv w (d_inner, d_conv), conv b, W_x, W_dt, b_dt, A, D, W_out, b_out]`` of a
    :class:`~tiling.modules.TiledMamba` (None for an absent bias), made again only when a parameter
    changes: one assigned anew (anywhere: :func:`~tiling.modules.assignments.assignments`), an in-place
    update (its version) or another storage (a ``.to()``)."""
    cached = layer.__dict__.get("_step_cache")
    if cached is not None:
        params, key = cached[0], cached[1]
        if key == (assignments(), dtype, params[0].data_ptr(), [p._version for p in params if p is not None]):
            return cached[2]
    params = step_params(layer)
    key = (assignments(), dtype, params[0].data_ptr(), [p._version for p in params if p is not None])
    with torch.no_grad():
        w_in, b_in, cw, cb, wx, wdt, bdt, a_log, D, w_out, b_out = params
        weights = [w_in, b_in, cw.reshape(layer.d_inner, layer.d_conv), cb, wx, wdt, bdt, -torch.exp(a_log.to(dtype)),
                   D.to(dtype), w_out, b_out]
        weights = [None if t is None else t.detach().contiguous() for t in weights]
    layer.__dict__["_step_cache"] = (params, key, weights)
    return weights


def kernel_weights(layers, dtype: torch.dtype) -> tuple[list, list, list]:
    """What a decoding kernel over ``layers`` holds (``LmDecoder``, ``StackDecoder``): ``(weights, sources,
    copied)``, the 11 :func:`step_weights` of each layer in order, the parameters they are made from
    (whose storage the kernel watches: a ``.to()`` moves it), and those of them :func:`step_weights`
    copies (``A = −exp(A_log)`` and ``D`` in the state's dtype: whose version the kernel watches, an
    in-place update)."""
    weights = [w for layer in layers for w in step_weights(layer, dtype)]
    sources = [p for layer in layers for p in step_params(layer) if p is not None]
    copied = [p for layer in layers for p in (layer.A_log, layer.D)]
    return weights, sources, copied


class KernelCacheOwner:
    """A module that keeps the decoding kernels' objects over its weights in its ``__dict__`` (named in
    ``_kernel_caches``): they are made again on demand and cannot be pickled, so a copy
    (``copy.deepcopy``) or a save (``torch.save``) of the module leaves them out."""

    _kernel_caches: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in self._kernel_caches:
            state.pop(name, None)
        return state

    def _kernel_object(self, name: str, dtype: torch.dtype, make, *, stale: bool = False):
        """The kernel's object ``name`` (one of ``_kernel_caches``) in ``dtype``, kept per count of assignments (a
        parameter assigned anew anywhere makes another) and dtype; ``make()`` makes it; ``stale``: the kept one
        refused a step (a weight moved or updated in place), make it again."""
        key = (assignments(), dtype)
        kept = self.__dict__.get(name)
        if kept is not None and kept[0] == key and not stale:
            return kept[1]
        made = make()
        self.__dict__[name] = (key, made)
        return made


__all__ = ["KernelCacheOwner", "kernel_weights", "step_params", "step_weights"]
