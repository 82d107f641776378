r"""``customgrad::tanh(Tensor x) -> Tensor``: :math:`y = \tanh(x)`, elementwise.

Forward
-------
.. math::

    y = \frac{e^x - e^{-x}}{e^x + e^{-x}}

elementwise; in (-1, 1), saturates to ±1.

Backward
--------
With :math:`g = \partial L/\partial y`:

.. math::

    \frac{\partial y}{\partial x} = 1 - \tanh^2(x) = 1 - y^2
    \quad\Longrightarrow\quad
    \frac{\partial L}{\partial x} = g\,(1 - y^2)

Computed by ``aten.tanh_backward(g, y)``: this formula in one pass.

Extreme values
--------------
In saturation (:math:`|x| >` ~20 in float32) y is exactly ±1 and the gradient exactly 0, as
native.

Saved for backward
------------------
The output y, as native ``torch.tanh`` saves it.

Double backward
---------------
tanh_backward is differentiable (its derivatives are registered), and y is the op's output, so
autograd reaches x through :math:`\partial y/\partial x = 1 - y^2`:

.. math::

    \frac{\partial}{\partial x}\frac{\partial L}{\partial x} = -2y\,(1 - y^2)\, g, \qquad
    \frac{\partial}{\partial g}\frac{\partial L}{\partial x} = 1 - y^2

Kernels
-------
(tanh, code TANH of the shared unary kernels) Plain CPU calls without autograd,
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
from opslib.ops.triton_kernels.unary_codes import TANH


def _tanh_kernel(x: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    check_floating_input("tanh", "x", x)
    if cuda_path.takes(x):  # CUDA: one Triton kernel (ops/triton_kernels/unary.py)
        return cuda_path.kernels("unary").forward(TANH, x)
    return torch.tanh(x)


def _tanh_fake(x: Tensor) -> Tensor:
    check_floating_input("tanh", "x", x)
    return torch.empty_like(x)


def _tanh_setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _tanh_backward(ctx, grad_y: Tensor) -> Tensor | None:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None
    if cuda_path.takes_first_order(grad_y, y):  # CUDA: one Triton kernel
        return cuda_path.kernels("unary").backward(TANH, grad_y, y)
    return torch.ops.aten.tanh_backward(grad_y, y)


_tanh = define_op(
    "tanh",
    "(Tensor x) -> Tensor",
    kernel=_tanh_kernel,
    fake=_tanh_fake,
    setup_context=_tanh_setup_context,
    backward=_tanh_backward,
)
register_pointwise_vmap(_tanh)
register_pointwise_sharding(_tanh)  # DTensor: any Shard or Replicate (core/sharding.py)
# Under torch.compile, inductor computes the forward from this formula, fused with its neighbours.
register_inductor_decomposition(_tanh, torch.tanh)
# tanh is on neither autocast list, so no autocast rule: it runs in its input's dtype.


def tanh(x: Tensor) -> Tensor:
    """Elementwise tanh(x), with the gradient (1 - y²)·g written out in ``opslib/ops/tanh.py``."""
    return _tanh(x)


def tanh_onnx(x):
    """ONNX translation: Tanh(x), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Tanh(x)


register_onnx_translation(_tanh, tanh_onnx)
