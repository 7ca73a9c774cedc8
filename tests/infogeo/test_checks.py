"""The shared input checks name the argument and the expected form."""
import pytest
import torch

from infogeo import checks as c


def test_check_tensor_messages():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        c.check_tensor([1.0], "x")
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        c.check_tensor(torch.ones(3, dtype=torch.int64), "x")
    with pytest.raises(ValueError, match=r"x must have 2 dimensions, got shape \(3,\)"):
        c.check_tensor(torch.ones(3), "x", ndim=2)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 4\), got \(3, 5\)"):
        c.check_tensor(torch.ones(3, 5), "x", shape=(None, 4))
    with pytest.raises(ValueError, match="x contains 2 NaN/Inf"):
        c.check_tensor(torch.tensor([1.0, float("nan"), float("inf")]), "x")
    ok = torch.ones(2, 4)
    assert c.check_tensor(ok, "x", shape=(2, None)) is ok


def test_probability_positive_range_int_choice():
    with pytest.raises(ValueError, match="p must be strictly positive"):
        c.check_probability(torch.tensor([0.0, 1.0]), "p")
    with pytest.raises(ValueError, match="p must sum to 1"):
        c.check_probability(torch.tensor([0.3, 0.3]), "p")
    c.check_probability(torch.tensor([0.25, 0.75], dtype=torch.float64), "p")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        c.check_positive(torch.tensor([1.0, 0.0]), "sigma")
    c.check_positive(0.0, "eps", strict=False)
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        c.check_in_range(0.0, "budget", 0.0, 1.0, low_open=True)
    c.check_in_range(1.0, "budget", 0.0, 1.0, low_open=True)
    with pytest.raises(TypeError, match="k must be an int"):
        c.check_int(2.5, "k")
    with pytest.raises(ValueError, match="k must be >= 1"):
        c.check_int(0, "k", minimum=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        c.check_choice("x", "mode", ["a", "b"])


def test_same_device_and_dtype():
    a, b = torch.ones(2), torch.ones(2, dtype=torch.float64)
    with pytest.raises(TypeError, match="b has dtype torch.float64 but a has torch.float32"):
        c.check_same_dtype(a=a, b=b)
    assert c.check_same_device(a=a, b=b, none=None) == torch.device("cpu")
    meta = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match="m is on meta but a is on cpu"):
        c.check_same_device(a=a, m=meta)
    for check in (c.check_same_device, c.check_same_dtype):  # only None: nothing to compare against
        with pytest.raises(ValueError, match="no tensors given"):
            check(a=None)
