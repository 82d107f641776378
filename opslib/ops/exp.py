r"""``customgrad::exp(Tensor x) -> Tensor``: :math:`y = e^x`, elementwise.

Forward
-------
.. math::

    y = \exp(x)

elementwise; y has x's shape, dtype and layout.

Backward
--------
With :math:`g = \partial L/\partial y`:

.. math::

    \frac{\partial y}{\partial x} = e^x = y
    \quad\Longrightarrow\quad
    \frac{\partial L}{\partial x} = g\, y

Saved for backward
------------------
The output y, not x, exactly as native ``torch.exp`` does: the gradient is the output itself, so
backward costs one multiply and no second exp.

Double backward
---------------
y is the op's own output, so autograd reaches x through it (:math:`\partial y/\partial x = y`
again):

.. math::

    \frac{\partial}{\partial x}\frac{\partial L}{\partial x} = g\, y, \qquad
    \frac{\partial}{\partial g}\frac{\partial L}{\partial x} = y

Kernels
-------
(exp, code EXP of the shared unary kernels) Plain CPU calls without autograd,
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
from opslib.ops.triton_kernels.unary_codes import EXP


def _exp_kernel(x: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    check_floating_input("exp", "x", x)
    if cuda_path.takes(x):  # CUDA: one Triton kernel (ops/triton_kernels/unary.py)
        return cuda_path.kernels("unary").forward(EXP, x)
    return torch.exp(x)


def _exp_fake(x: Tensor) -> Tensor:
    check_floating_input("exp", "x", x)
    return torch.empty_like(x)


def _exp_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _exp_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    if cuda_path.takes_first_order(grad_y, y):  # CUDA: one Triton kernel
        return cuda_path.kernels("unary").backward(EXP, grad_y, y)
    return grad_y * y


_exp = define_op(
    "exp",
    "(Tensor x) -> Tensor",
    kernel=_exp_kernel,
    fake=_exp_fake,
    setup_context=_exp_setup_context,
    backward=_exp_backward,
)
register_pointwise_vmap(_exp)
register_pointwise_sharding(_exp)  # DTensor: any Shard or Replicate (core/sharding.py)
# Under torch.compile, inductor computes the forward from this formula, fused with its neighbours.
register_inductor_decomposition(_exp, torch.exp)
# Native exp is on CUDA autocast's float32 list; CPU autocast casts nothing.
register_autocast(_exp, "cuda", torch.float32)


def exp(x: Tensor) -> Tensor:
    """Elementwise eˣ, with the gradient y·g written out in ``opslib/ops/exp.py``."""
    return _exp(x)


def exp_onnx(x):
    """ONNX translation: Exp(x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Exp(x)


register_onnx_translation(_exp, exp_onnx)
