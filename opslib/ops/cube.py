r"""``customgrad::cube(Tensor x) -> Tensor``: :math:`y = x^3`, elementwise.

Forward
-------
.. math::

    y = x^3 = \operatorname{pow}(x, 3)

elementwise; y has x's shape, dtype and layout (one pass and one rounding; x·x·x is two of
each).

Backward
--------
With :math:`g = \partial L/\partial y`:

.. math::

    \frac{\partial y}{\partial x} = 3x^2
    \quad\Longrightarrow\quad
    \frac{\partial L}{\partial x} = 3x^2 g

Saved for backward
------------------
x, as native ``torch.pow(x, 3)`` saves it.

Double backward
---------------
The backward is differentiable torch code on g and x:

.. math::

    \frac{\partial}{\partial x}\frac{\partial L}{\partial x} = 6x\, g, \qquad
    \frac{\partial}{\partial g}\frac{\partial L}{\partial x} = 3x^2

Kernels
-------
(cube, code CUBE of the shared unary kernels) Plain CPU calls without autograd,
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
from opslib.ops.triton_kernels.unary_codes import CUBE


def _cube_formula(x: Tensor) -> Tensor:
    return torch.pow(x, 3)


def _cube_kernel(x: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    check_floating_input("cube", "x", x)
    if cuda_path.takes(x):  # CUDA: one Triton kernel (ops/triton_kernels/unary.py)
        return cuda_path.kernels("unary").forward(CUBE, x)
    return _cube_formula(x)


def _cube_fake(x: Tensor) -> Tensor:
    check_floating_input("cube", "x", x)
    return torch.empty_like(x)


def _cube_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    (x,) = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)


def _cube_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (x,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    if cuda_path.takes_first_order(grad_y, x):  # CUDA: one Triton kernel
        return cuda_path.kernels("unary").backward(CUBE, grad_y, x)
    # 3·g·x² in two passes over memory (g·x, then addcmul's fused "+ 3·(g·x)·x") instead of
    # three multiplies; addcmul is differentiable, so double backward is unchanged.
    return torch.addcmul(grad_y.new_zeros(()), grad_y * x, x, value=3)


_cube = define_op(
    "cube",
    "(Tensor x) -> Tensor",
    kernel=_cube_kernel,
    fake=_cube_fake,
    setup_context=_cube_setup_context,
    backward=_cube_backward,
)
register_pointwise_vmap(_cube)
register_pointwise_sharding(_cube)  # DTensor: any Shard or Replicate (core/sharding.py)
# Under torch.compile, inductor computes the forward from this formula, fused with its neighbours.
register_inductor_decomposition(_cube, _cube_formula)
# Native pow(x, 3) runs in float32 under CUDA autocast; CPU autocast casts nothing.
register_autocast(_cube, "cuda", torch.float32)


def cube(x: Tensor) -> Tensor:
    """Elementwise x³, with the gradient 3x²·g written out in ``opslib/ops/cube.py``."""
    return _cube(x)


def cube_onnx(x):
    """ONNX translation: Mul(Mul(x, x), x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Mul(opset.Mul(x, x), x)


register_onnx_translation(_cube, cube_onnx)
