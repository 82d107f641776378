"""linear beyond the op table's samples: the 1-D weight that ``F.linear`` documents."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_named

import opslib


@pytest.mark.parametrize(
    "x_shape,bias_shape", [((3, 4), None), ((4,), None), ((2, 3, 4), ()), ((4,), ())], ids=str
)
def test_one_dim_weight_is_natives_vector_product(x_shape, bias_shape):
    """weight [in]: y = x @ weight (+ bias) of shape [*], as F.linear gives it (the op refused
    a 1-D weight before): values and gradients in float64, gradcheck and gradgradcheck, and the
    same under torch.compile(fullgraph=True)."""
    torch.manual_seed(0)
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = None if bias_shape is None else torch.randn(bias_shape, dtype=torch.float64)
    expected = F.linear(x, w, b)
    expected_grads = torch.autograd.grad(expected.sum(), [x, w])
    compiled = torch.compile(opslib.linear, fullgraph=True, backend="aot_eager")
    for name, fn in (("eager", opslib.linear), ("compiled", compiled)):
        y = fn(x, w, b)
        assert y.shape == expected.shape, (name, y.shape)
        assert_close_named(y, expected, f"{name} y")
        for what, got, want in zip(("x", "weight"), torch.autograd.grad(y.sum(), [x, w]),
                                   expected_grads, strict=True):  # fmt: skip
            assert_close_named(got, want, f"{name} grad {what}")
    assert torch.autograd.gradcheck(lambda x, w: opslib.linear(x, w, b), (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: opslib.linear(x, w, b), (x, w))
