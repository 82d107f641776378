r"""``customgrad::sigmoid(Tensor x) -> Tensor``: :math:`y = 1/(1 + e^{-x})`, elementwise.

Forward
-------
.. math::

    y = \sigma(x) = \frac{1}{1 + e^{-x}}

elementwise; in (0, 1), never nan for finite x.

Backward
--------
With :math:`g = \partial L/\partial y`:

.. math::

    \frac{\partial y}{\partial x} = \frac{e^{-x}}{(1 + e^{-x})^2} = y\,(1 - y)
    \quad\Longrightarrow\quad
    \frac{\partial L}{\partial x} = g\, y\,(1 - y)

Computed by ``aten.sigmoid_backward(g, y)``: this formula, g · (1 - y) · y, in one pass (three
torch multiplies would read and write memory three times).

Extreme values
--------------
Written in y, the gradient never overflows: for x = -1e4, :math:`e^{-x}` is inf but y is 0 and
the gradient is exactly 0 (the :math:`e^{-x}` form would give inf/inf = nan).

Saved for backward
------------------
The output y, as native ``torch.sigmoid`` saves it.

Double backward
---------------
sigmoid_backward is differentiable (its derivatives are registered), and y is the op's output,
so autograd reaches x through :math:`\partial y/\partial x = y(1 - y)`:

.. math::

    \frac{\partial}{\partial x}\frac{\partial L}{\partial x} = g\,(1 - 2y)\, y\,(1 - y), \qquad
    \frac{\partial}{\partial g}\frac{\partial L}{\partial x} = y\,(1 - y)

Kernels
-------
(sigmoid, code SIGMOID of the shared unary kernels) Plain CPU calls without autograd,
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
from opslib.ops.triton_kernels.unary_codes import SIGMOID


def _sigmoid_kernel(x: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    check_floating_input("sigmoid", "x", x)
    if cuda_path.takes(x):  # CUDA: one Triton kernel (ops/triton_kernels/unary.py)
        return cuda_path.kernels("unary").forward(SIGMOID, x)
    return torch.sigmoid(x)


def _sigmoid_fake(x: Tensor) -> Tensor:
    check_floating_input("sigmoid", "x", x)
    return torch.empty_like(x)


def _sigmoid_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _sigmoid_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    if cuda_path.takes_first_order(grad_y, y):  # CUDA: one Triton kernel
        return cuda_path.kernels("unary").backward(SIGMOID, grad_y, y)
    return torch.ops.aten.sigmoid_backward(grad_y, y)


_sigmoid = define_op(
    "sigmoid",
    "(Tensor x) -> Tensor",
    kernel=_sigmoid_kernel,
    fake=_sigmoid_fake,
    setup_context=_sigmoid_setup_context,
    backward=_sigmoid_backward,
)
register_pointwise_vmap(_sigmoid)
register_pointwise_sharding(_sigmoid)  # DTensor: any Shard or Replicate (core/sharding.py)
# Under torch.compile, inductor computes the forward from this formula, fused with its neighbours.
register_inductor_decomposition(_sigmoid, torch.sigmoid)
# sigmoid is on neither autocast list, so no autocast rule: it runs in its input's dtype.


def sigmoid(x: Tensor) -> Tensor:
    """Elementwise 1/(1+e⁻ˣ), with the gradient written out in ``opslib/ops/sigmoid.py``."""
    return _sigmoid(x)


def sigmoid_onnx(x):
    """ONNX translation: Sigmoid(x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Sigmoid(x)


register_onnx_translation(_sigmoid, sigmoid_onnx)
