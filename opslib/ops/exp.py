"""``customgrad::exp(Tensor x) -> Tensor``: y = eˣ.

Forward
    y = exp(x)                                  elementwise; y has x's shape, dtype and layout

Backward (g = dL/dy)
    dy/dx = eˣ = y                  =>  dL/dx = g · y

Saved for backward: the output y, not x, exactly as native ``torch.exp`` does: the gradient is
the output itself, so backward costs one multiply and no second exp.

Double backward: y is the op's own output, so autograd reaches x through it (dy/dx = y again):
d(dL/dx)/dx = g · y and d(dL/dx)/dg = y.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opslib.ops._common import check_floating_input, register_pointwise_vmap


@torch.library.custom_op("customgrad::exp", mutates_args=())
def _exp(x: Tensor) -> Tensor:
    check_floating_input("exp", "x", x)
    return torch.exp(x)


@_exp.register_fake
def _exp_fake(x: Tensor) -> Tensor:
    check_floating_input("exp", "x", x)
    return torch.empty_like(x)


def _exp_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _exp_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    return grad_y * y


_exp.register_autograd(_exp_backward, setup_context=_exp_setup_context)
register_pointwise_vmap(_exp)
# Native exp is on CUDA autocast's float32 list; CPU autocast casts nothing.
torch.library.register_autocast(_exp, "cuda", torch.float32)


def exp(x: Tensor) -> Tensor:
    """Elementwise eˣ, with the gradient y·g written out in ``opslib/ops/exp.py``."""
    return torch.ops.customgrad.exp(x)


def exp_onnx(x):
    """ONNX translation: Exp(x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Exp(x)
