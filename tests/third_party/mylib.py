"""A third-party op written with plain ``torch.library`` (no opslib): ``mylib::scaled_tanh``.

``tests/test_testing_kit.py`` copies this file and ``test_my_op.py`` (the tutorial's example of
``opslib.testing``) out of the repository and runs the kit on the op there.

Forward (t = tanh(x)): y = alpha · t. Backward (g = dL/dy): dL/dx = g · alpha · (1 - t²), in
torch ops, so that it is itself differentiable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def check_inputs(x: Tensor, alpha: float) -> None:
    if not x.is_floating_point():
        raise TypeError(f"mylib.scaled_tanh: x must be floating point, got {x.dtype}")
    if not math.isfinite(alpha):
        raise ValueError(f"mylib.scaled_tanh: alpha must be finite, got {alpha}")


@torch.library.custom_op("mylib::scaled_tanh", mutates_args=())
def scaled_tanh(x: Tensor, alpha: float = 1.0) -> Tensor:
    check_inputs(x, alpha)
    return torch.tanh(x) * alpha  # keeps x's layout (TensorIterator)


@scaled_tanh.register_fake
def _(x: Tensor, alpha: float = 1.0) -> Tensor:
    check_inputs(x, alpha)
    return torch.empty_like(x)  # the kernel's layout


def setup_context(ctx, inputs: tuple[Tensor, float], output: Tensor) -> None:
    x, alpha = inputs
    ctx.save_for_backward(x)
    ctx.alpha = alpha


def backward(ctx, grad_y: Tensor) -> tuple[Tensor, None]:
    (x,) = ctx.saved_tensors
    t = torch.tanh(x)
    return grad_y * ctx.alpha * (1 - t * t), None


scaled_tanh.register_autograd(backward, setup_context=setup_context)


@scaled_tanh.register_vmap
def _(info, in_dims: tuple, x: Tensor, alpha: float) -> tuple[Tensor, int | None]:
    return scaled_tanh(x, alpha), in_dims[0]  # pointwise: the batch dim stays where it is


def scaled_tanh_onnx(x, alpha: float = 1.0):
    """Mul(Tanh(x), alpha), alpha a constant of x's dtype (a bare Python float would be a
    float32 constant, which a float64 model refuses)."""
    from onnxscript import ir
    from onnxscript import opset20 as op

    alpha_const = op.Constant(value=ir.tensor(np.array(alpha, dtype=x.dtype.numpy())))
    return op.Mul(op.Tanh(x), alpha_const)
