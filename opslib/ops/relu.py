r"""``customgrad::relu(Tensor x) -> Tensor``: :math:`y = \max(x, 0)`, elementwise.

Forward
-------
.. math::

    y = \begin{cases} x & x > 0 \\ 0 & \text{otherwise} \end{cases}

elementwise; nan stays nan (as ``torch.relu``).

Backward
--------
With :math:`g = \partial L/\partial y`:

.. math::

    \frac{\partial y}{\partial x} = \begin{cases} 1 & x > 0 \\ 0 & \text{otherwise} \end{cases}
    \quad\Longrightarrow\quad
    \frac{\partial L}{\partial x} = \operatorname{where}(y \le 0,\ 0,\ g)

:math:`y \le 0` exactly where :math:`x \le 0`, so the mask is read from the output. It is a
select, not :math:`g \cdot \text{mask}`: :math:`g \cdot 0` would turn an infinite g into nan
where native relu gives 0. At x = 0 the derivative is taken as 0, the subgradient native relu
uses. The test is written :math:`y \le 0` rather than :math:`y > 0` so that, as in native relu,
the gradient passes through where x is nan (both comparisons are false for nan).

Computed by ``aten.threshold_backward(g, y, 0)``, which is exactly where(y <= 0, 0, g) in one
pass (torch.where would first write a bool mask: 1.5x the memory traffic).

Saved for backward
------------------
The output y, as native ``torch.relu`` saves it.

Double backward
---------------
:math:`\partial L/\partial x` is linear in g (its derivative in g is the same mask); the mask
itself is piecewise constant in x, so the second derivative with respect to x is 0 wherever it
exists (threshold_backward has exactly these derivatives registered).

Kernels
-------
(relu, code RELU of the shared unary kernels) Plain CPU calls without autograd,
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
    register_inductor_decomposition,
    register_onnx_translation,
    register_pointwise_vmap,
)
from opslib.core.sharding import register_pointwise_sharding
from opslib.ops.triton_kernels.unary_codes import RELU


def _relu_kernel(x: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    check_floating_input("relu", "x", x)
    if cuda_path.takes(x):  # CUDA: one Triton kernel (ops/triton_kernels/unary.py)
        return cuda_path.kernels("unary").forward(RELU, x)
    return torch.relu(x)


def _relu_fake(x: Tensor) -> Tensor:
    check_floating_input("relu", "x", x)
    return torch.empty_like(x)


def _relu_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _relu_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    if cuda_path.takes_first_order(grad_y, y):  # CUDA: one Triton kernel
        return cuda_path.kernels("unary").backward(RELU, grad_y, y)
    return torch.ops.aten.threshold_backward(grad_y, y, 0)


_relu = define_op(
    "relu",
    "(Tensor x) -> Tensor",
    kernel=_relu_kernel,
    fake=_relu_fake,
    setup_context=_relu_setup_context,
    backward=_relu_backward,
)
register_pointwise_vmap(_relu)
register_pointwise_sharding(_relu)  # DTensor: any Shard or Replicate (core/sharding.py)
# Under torch.compile, inductor computes the forward from this formula, fused with its neighbours.
register_inductor_decomposition(_relu, torch.relu)
# relu is on neither autocast list, so no autocast rule: it runs in its input's dtype, as native.


def relu(x: Tensor) -> Tensor:
    """Elementwise max(x, 0), with the gradient written out in ``opslib/ops/relu.py``."""
    return _relu(x)


def relu_onnx(x):
    """ONNX translation: Relu(x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Relu(x)


register_onnx_translation(_relu, relu_onnx)
