"""``customgrad::relu(Tensor x) -> Tensor``: y = max(x, 0).

Forward
    y = x where x > 0, else 0                   elementwise; nan stays nan (as torch.relu)

Backward (g = dL/dy)
    dy/dx = 1 where x > 0, else 0   =>  dL/dx = where(y <= 0, 0, g)

    y <= 0 exactly where x <= 0, so the mask is read from the output. It is a select, not
    g · mask: g · 0 would turn an infinite g into nan where native relu gives 0. At x = 0 the
    derivative is taken as 0, the subgradient native relu uses. The test is written "y <= 0"
    rather than "y > 0" so that, as in native relu, the gradient passes through where x is nan
    (both comparisons are false for nan).

Saved for backward: the output y, as native ``torch.relu`` saves it.

Double backward: dL/dx is linear in g (d/dg = the same mask); the mask itself is piecewise
constant in x, so the second derivative with respect to x is 0 wherever it exists.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opslib.ops._common import check_floating_input, register_pointwise_vmap


@torch.library.custom_op("customgrad::relu", mutates_args=())
def _relu(x: Tensor) -> Tensor:
    check_floating_input("relu", "x", x)
    return torch.relu(x)


@_relu.register_fake
def _relu_fake(x: Tensor) -> Tensor:
    check_floating_input("relu", "x", x)
    return torch.empty_like(x)


def _relu_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _relu_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    return torch.where(y <= 0, 0, grad_y)


_relu.register_autograd(_relu_backward, setup_context=_relu_setup_context)
register_pointwise_vmap(_relu)
# relu is on neither autocast list, so no autocast rule: it runs in its input's dtype, as native.


def relu(x: Tensor) -> Tensor:
    """Elementwise max(x, 0), with the gradient written out in ``opslib/ops/relu.py``."""
    return torch.ops.customgrad.relu(x)


def relu_onnx(x):
    """ONNX translation: Relu(x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Relu(x)
