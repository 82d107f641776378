"""What the normalisation ops promise beyond matching native in float32 (the op table's tests):
exact results where the math is exact, and accuracy where float32 is strained."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import opslib


def test_layer_norm_of_one_element_rows_is_exactly_the_bias_with_zero_gradients():
    """x̂ = x - mean(x) = 0 for a row of one element: y = b, and dL/dx = dL/dw = 0, exactly
    (native computes x̂ as x·r - μ·r, and 1/sqrt(eps) amplifies its rounding)."""
    x = torch.randn(64, 1).mul(100).requires_grad_()
    w, b = torch.randn(1, requires_grad=True), torch.randn(1, requires_grad=True)
    y = opslib.layer_norm(x, [1], w, b, 1e-5)
    assert torch.equal(y, b.detach().expand(64, 1))
    grad_x, grad_w = torch.autograd.grad(y, (x, w), torch.randn(64, 1))
    assert torch.equal(grad_x, torch.zeros_like(x)) and torch.equal(grad_w, torch.zeros_like(w))


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("mean", [1e3, 1e5])
def test_norms_of_rows_far_from_zero_are_as_accurate_as_native(op, mean):
    """Rows with mean ≫ spread, against float64: the forward and dL/dx at most native's error
    plus one float32 epsilon of the result's scale."""
    torch.manual_seed(0)
    x = mean + torch.randn(32, 512, dtype=torch.float64)
    g = torch.randn(32, 512, dtype=torch.float64)
    ours_fn, native_fn = getattr(opslib, op), getattr(F, op)

    def run(fn, dtype):
        xt = x.to(dtype).requires_grad_()
        y = fn(xt, [512])
        (grad,) = torch.autograd.grad(y, xt, g.to(dtype))
        return y.double(), grad.double()

    exact = run(native_fn, torch.float64)
    for i, (o, n, e) in enumerate(
        zip(run(ours_fn, torch.float32), run(native_fn, torch.float32), exact, strict=True)
    ):
        ours_error, native_error = (o - e).abs().max().item(), (n - e).abs().max().item()
        eps = torch.finfo(torch.float32).eps * e.abs().max().item()
        assert ours_error <= native_error + eps, (i, ours_error, native_error)
