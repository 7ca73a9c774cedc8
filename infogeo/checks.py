"""Input validation shared by ``infogeo`` and ``tiling``.

Every public function validates its arguments with these helpers so that bad input fails
early with a message that names the argument and the expected form (shape, dtype, range,
device), and NaN/Inf never propagate silently.
"""
from __future__ import annotations

import numbers
from typing import Iterable, Sequence

import torch

Tensor = torch.Tensor


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = True,
    finite: bool = True,
) -> Tensor:
    """Validate ``x`` as a tensor and return it.

    Parameters
    ----------
    x : the object to check.
    name : the argument's name, quoted in the error messages.
    ndim : allowed number(s) of dimensions (``None``: any).
    min_ndim : least number of dimensions (``None``: any).
    shape : the expected shape; entries that are ``None`` match any size.
    floating : require a floating dtype.
    finite : reject NaN and Inf.

    Returns
    -------
    ``x`` itself.

    Raises
    ------
    TypeError
        ``x`` is not a tensor, or not floating when ``floating``.
    ValueError
        ``x`` is on the meta device, has the wrong number of dimensions or shape, or holds NaN/Inf
        when ``finite``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on meta (the meta device holds no values); expected a CPU or CUDA tensor")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None:
        if x.dim() != len(shape) or any(s is not None and s != xs for s, xs in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if finite:
        check_finite(x, name)
    return x


def check_precise(x: Tensor, name: str) -> Tensor:
    """``x`` is float32 or float64: geometry (distances, factorisations) is not run in half precision.

    Parameters
    ----------
    x : tensor to check.
    name : the argument's name, quoted in the error message.

    Returns
    -------
    ``x`` itself.

    Raises
    ------
    TypeError
        ``x`` has another dtype.
    """
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    return x


def check_finite(x: Tensor, name: str) -> Tensor:
    """``x`` holds no NaN or Inf (integer tensors pass).

    Parameters
    ----------
    x : tensor to check.
    name : the argument's name, quoted in the error message.

    Returns
    -------
    ``x`` itself.

    Raises
    ------
    ValueError
        ``x`` holds NaN or Inf; the message counts them.
    """
    if x.is_floating_point() or x.is_complex():
        if not bool(torch.isfinite(x).all()):
            n_bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} contains {n_bad} NaN/Inf value(s); expected finite values")
    return x


def _given(tensors: dict[str, Tensor | None]) -> list[tuple[str, Tensor]]:
    """The ``(name, tensor)`` pairs of ``tensors`` whose value is not None, in order."""
    return [(k, v) for k, v in tensors.items() if v is not None]


def _common(tensors: dict[str, Tensor | None], attr: str) -> tuple[str, object, tuple[str, object] | None]:
    """The first given tensor's name and ``attr`` (``"device"``, ``"dtype"``), and the first other tensor
    whose ``attr`` differs as ``(name, value)`` (None if all agree); ValueError if no tensor is given."""
    items = _given(tensors)
    if not items:
        raise ValueError("no tensors given")
    first, value = items[0][0], getattr(items[0][1], attr)
    odd = next(((k, getattr(v, attr)) for k, v in items[1:] if getattr(v, attr) != value), None)
    return first, value, odd


def check_same_device(**tensors: Tensor | None) -> torch.device:
    """All given tensors live on one device.

    Parameters
    ----------
    **tensors : the tensors by argument name; ``None`` values are skipped.

    Returns
    -------
    The common ``torch.device``.

    Raises
    ------
    ValueError
        No tensor is given, or two live on different devices.
    """
    first, dev, odd = _common(tensors, "device")
    if odd is not None:
        raise ValueError(f"{odd[0]} is on {odd[1]} but {first} is on {dev}; expected all tensors on one device")
    return dev


def check_broadcastable(**tensors: Tensor | None) -> tuple[int, ...]:
    """The given tensors broadcast together.

    Parameters
    ----------
    **tensors : the tensors by argument name; ``None`` values are skipped.

    Returns
    -------
    The broadcast shape.

    Raises
    ------
    ValueError
        The shapes do not broadcast; the message lists them.
    """
    items = _given(tensors)
    try:
        return tuple(torch.broadcast_shapes(*(tuple(v.shape) for _, v in items)))
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in items)
        raise ValueError(f"{' and '.join(k for k, _ in items)} must have broadcastable shapes, got {shapes}") from None


def check_same_dtype(**tensors: Tensor | None) -> torch.dtype:
    """All given tensors share one dtype.

    Parameters
    ----------
    **tensors : the tensors by argument name; ``None`` values are skipped.

    Returns
    -------
    The common ``torch.dtype``.

    Raises
    ------
    ValueError
        No tensor is given.
    TypeError
        Two tensors have different dtypes.
    """
    first, dt, odd = _common(tensors, "dtype")
    if odd is not None:
        raise TypeError(f"{odd[0]} has dtype {odd[1]} but {first} has {dt}; expected one dtype")
    return dt


def check_probability(p: Tensor, name: str, *, dim: int = -1, atol: float | None = None) -> Tensor:
    """``p`` holds strictly positive probabilities summing to one along ``dim``.

    Parameters
    ----------
    p : tensor of probabilities, at least one dimension.
    name : the argument's name, quoted in the error messages.
    dim : the dimension that sums to one.
    atol : tolerance on the sum; ``None``: 1e-4 for half and single precision, 1e-9 otherwise.

    Returns
    -------
    ``p`` itself (an empty tensor passes).

    Raises
    ------
    TypeError, ValueError
        As :func:`check_tensor`.
    ValueError
        An entry is ≤ 0, or a sum deviates from one by more than ``atol``.

    Notes
    -----
    The open simplex is required because the Fisher metric of the categorical family,
    diag(1/p), is undefined on its boundary (seed §3.1.1).
    """
    check_tensor(p, name, min_ndim=1)
    if p.numel() == 0:
        return p  # an empty batch: nothing to check
    v = p.detach()  # values only (float() of a tensor that requires grad warns)
    if bool((v <= 0).any()):
        raise ValueError(f"{name} must be strictly positive (a point of the open simplex), got min {float(v.min()):.3g}")
    tol = atol if atol is not None else (1e-4 if p.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9)
    err = float((v.sum(dim) - 1).abs().max())
    if err > tol:
        raise ValueError(f"{name} must sum to 1 along dim {dim} (max deviation {err:.3g} > {tol:g})")
    return p


def _as_float64(x: object, name: str) -> Tensor:
    """``x`` (a real number or a real tensor) as float64, for range checks; TypeError otherwise."""
    if isinstance(x, torch.Tensor):
        check_tensor(x, name, floating=False, finite=False)
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be real numbers, got dtype {x.dtype}")
        return x.detach().to(torch.float64)
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return torch.as_tensor(float(x), dtype=torch.float64)


def check_positive(x: Tensor | float, name: str, *, strict: bool = True) -> None:
    """``x`` is > 0 (``strict``) or ≥ 0.

    Parameters
    ----------
    x : a real number or a real tensor (checked in float64, so huge finite values do not overflow).
    name : the argument's name, quoted in the error messages.
    strict : require > 0 rather than ≥ 0.

    Raises
    ------
    TypeError
        ``x`` is not a real number or a real tensor (bool included).
    ValueError
        ``x`` is not finite, or an entry breaks the bound.
    """
    t = _as_float64(x, name)  # float64 so huge finite values do not overflow to inf
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {x}")
    bad = (t <= 0) if strict else (t < 0)
    if bool(bad.any()):
        rel = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be {rel}, got min {float(t.min()):.6g}")


def check_in_range(
    x: Tensor | float, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """``x`` lies in the interval between ``low`` and ``high``.

    Parameters
    ----------
    x : a real number or a real tensor.
    name : the argument's name, quoted in the error messages.
    low, high : the ends of the interval.
    low_open, high_open : exclude the respective end.

    Raises
    ------
    TypeError
        ``x`` is not a real number or a real tensor (bool included).
    ValueError
        ``x`` is not finite, or an entry lies outside the interval.
    """
    t = _as_float64(x, name)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {x}")
    lo_bad = (t <= low) if low_open else (t < low)
    hi_bad = (t >= high) if high_open else (t > high)
    if bool(lo_bad.any() | hi_bad.any()):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(
            f"{name} must lie in {interval}, got values in [{float(t.min()):.6g}, {float(t.max()):.6g}]"
        )


def check_int(x: object, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``x`` is an integer within the given bounds.

    Parameters
    ----------
    x : a Python or numpy integer, or a one-element integer tensor; bool is rejected.
    name : the argument's name, quoted in the error messages.
    minimum, maximum : inclusive bounds (``None``: unbounded).

    Returns
    -------
    ``x`` as ``int``.

    Raises
    ------
    TypeError
        ``x`` is not an integer.
    ValueError
        ``x`` lies outside the bounds.
    """
    integral = isinstance(x, numbers.Integral) or (
        isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_floating_point() and x.dtype != torch.bool
    )
    if isinstance(x, bool) or not integral:
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    v = int(x)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_choice(x: object, name: str, choices: Iterable[object]) -> None:
    """``x`` is one of ``choices``.

    Parameters
    ----------
    x : the value to check.
    name : the argument's name, quoted in the error message.
    choices : the allowed values.

    Raises
    ------
    ValueError
        ``x`` is not among them; the message lists them.
    """
    options = list(choices)
    if x not in options:
        raise ValueError(f"{name} must be one of {options}, got {x!r}")
