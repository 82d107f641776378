r"""``customgrad::square(Tensor x) -> Tensor``: :math:`y = x^2`, elementwise.

Forward
-------
.. math::

    y = x \cdot x

elementwise; y has x's shape, dtype and layout.

Backward
--------
With :math:`g = \partial L/\partial y` (same shape as y):

.. math::

    \frac{\partial y}{\partial x} = 2x
    \quad\Longrightarrow\quad
    \frac{\partial L}{\partial x} = 2x\, g

Saved for backward
------------------
x, as native ``torch.square`` saves it (y alone cannot give the sign of x).

Double backward
---------------
The backward is ordinary differentiable torch code on g and the saved x, so autograd
differentiates it again:

.. math::

    \frac{\partial}{\partial x}\frac{\partial L}{\partial x} = 2g, \qquad
    \frac{\partial}{\partial g}\frac{\partial L}{\partial x} = 2x

Kernels
-------
(square, code SQUARE of the shared unary kernels) Plain CPU calls without autograd,
``opslib/csrc/cpu_fast_path.cpp``; CUDA calls in float32/float16/bfloat16, a Triton kernel
(``opslib/ops/triton_kernels/unary.py``); others, the torch ops below (``opslib/ops/__init__.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from opslib.core import cuda_path
from opslib.core.checks import check_floating_input
from opslib.core.registration import (
    define_op,
    register_autocast,
    register_inductor_decomposition,
    register_onnx_translation,
    register_pointwise_vmap,
)
from opslib.core.sharding import register_pointwise_sharding
from opslib.ops.triton_kernels.unary_codes import SQUARE


def _square_kernel(x: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    check_floating_input("square", "x", x)
    if cuda_path.takes(x):  # CUDA: one Triton kernel (ops/triton_kernels/unary.py)
        return cuda_path.kernels("unary").forward(SQUARE, x)
    return x * x


def _square_fake(x: Tensor) -> Tensor:
    check_floating_input("square", "x", x)
    return torch.empty_like(x)


def _square_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    (x,) = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)


def _square_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (x,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    if cuda_path.takes_first_order(grad_y, x):  # CUDA: one Triton kernel
        return cuda_path.kernels("unary").backward(SQUARE, grad_y, x)
    return grad_y * 2 * x


_square = define_op(
    "square",
    "(Tensor x) -> Tensor",
    kernel=_square_kernel,
    fake=_square_fake,
    setup_context=_square_setup_context,
    backward=_square_backward,
)
register_pointwise_vmap(_square)
register_pointwise_sharding(_square)  # DTensor: any Shard or Replicate (core/sharding.py)
# Under torch.compile, inductor computes the forward from this formula, fused with its neighbours.
register_inductor_decomposition(_square, torch.square)  # = x * x, one multiply
# Native torch.square is pow(x, 2), which CUDA autocast runs in float32; CPU autocast casts nothing.
register_autocast(_square, "cuda", torch.float32)


def square(x: Tensor) -> Tensor:
    """Elementwise x², with the gradient 2x·g written out in ``opslib/ops/square.py``."""
    return _square(x)


def square_onnx(x):
    """ONNX translation: Mul(x, x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Mul(x, x)


register_onnx_translation(_square, square_onnx)
