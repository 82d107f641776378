r"""``customgrad::softmax(Tensor x, int dim) -> Tensor``:
:math:`y = e^{x} / \sum e^{x}` along ``dim``.

The same call and result as ``torch.softmax(x, dim)`` (any dim, negative too; a 0-d x takes
dim 0 or -1 and gives 1).

Forward
-------
Along dim; the other dims are independent rows. With :math:`m = \max_j x_j`:

.. math::

    y_i = \frac{e^{x_i}}{\sum_j e^{x_j}} = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}}

Subtracting the row's maximum changes nothing mathematically (the factor :math:`e^{-m}`
cancels) and keeps every exponential in (0, 1]: no overflow, and the sum is at least 1.

Backward
--------
With :math:`g = \partial L/\partial y`; the softmax Jacobian is
:math:`\operatorname{diag}(y) - y y^\top`:

.. math::

    \frac{\partial y_i}{\partial x_k} &= y_i\,(\delta_{ik} - y_k) \\
    \frac{\partial L}{\partial x_k} &= \sum_i g_i \frac{\partial y_i}{\partial x_k}
        = y_k g_k - y_k \sum_i g_i y_i
        = y_k \Bigl(g_k - \sum_i g_i y_i\Bigr)

So backward needs only the output and one sum per row: the ``[C, C]`` Jacobian is never formed.
Computed by ``aten._softmax_backward_data(g, y, dim, dtype)``, which is exactly this formula in
one pass (the CUDA path: one Triton kernel per row).

Saved for backward
------------------
The output y, as native ``torch.softmax`` saves it.

Double backward
---------------
:math:`\partial L/\partial x` is bilinear in g and y, and y is the op's output (differentiable
through this op again); ``_softmax_backward_data`` has both derivatives registered in ATen.

Kernels
-------
A plain CPU call without autograd is computed in C++ by the fast path
(``opslib/csrc/cpu_fast_path.cpp``: native's kernel, as the Python kernel calls it, without the
trip into Python); a CUDA call in float32, float16 or bfloat16 runs one Triton kernel per row
forward and backward (``opslib/ops/triton_kernels/softmax.py``); every other call runs the
torch ops of this file.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opslib.core import cuda_path
from opslib.core.checks import check_floating_input, label
from opslib.core.registration import (
    define_op,
    register_autocast,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap_along_dim,
)
from opslib.core.sharding import elementwise_rules, other_dims, register_sharding_rule


def check_dim(op: str, x: Tensor, dim: int) -> None:
    """``dim`` indexes x, as native counts: a 0-d x has the one dim 0 (or -1)."""
    rank = max(x.dim(), 1)
    if not -rank <= dim < rank:
        raise IndexError(
            f"{label(op)}: dim {dim} is out of range for x of {x.dim()} dimensions "
            f"(expected {-rank} to {rank - 1})"
        )


def _check_softmax(x: Tensor, dim: int) -> None:
    check_floating_input("softmax", "x", x)
    check_dim("softmax", x, dim)


def _softmax_kernel(x: Tensor, dim: int) -> Tensor:
    _check_softmax(x, dim)
    if cuda_path.takes(x) and cuda_path.kernels("softmax").supports(x, dim):
        return cuda_path.kernels("softmax").forward(x, dim, log=False)  # CUDA: a row per program
    return torch.softmax(x, dim)


def _softmax_fake(x: Tensor, dim: int) -> Tensor:
    _check_softmax(x, dim)
    return torch.softmax(x, dim)  # native's layout, whatever x's


def _softmax_setup_context(ctx, inputs: tuple[Tensor, int], output: Tensor) -> None:
    ctx.dim = inputs[1]
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _softmax_backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, None]:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None
    if cuda_path.takes_first_order(grad_y, y) and cuda_path.kernels("softmax").supports(y, ctx.dim):
        return cuda_path.kernels("softmax").backward(grad_y, y, ctx.dim, log=False), None
    return torch.ops.aten._softmax_backward_data(grad_y, y, ctx.dim, y.dtype), None


_softmax = define_op(
    "softmax",
    "(Tensor x, int dim) -> Tensor",
    kernel=_softmax_kernel,
    fake=_softmax_fake,
    setup_context=_softmax_setup_context,
    backward=_softmax_backward,
)
register_vmap_along_dim(_softmax)
# DTensor (core/sharding.py): sharded along any dim but the one normalised over (each row's
# sum must be whole); a sharded `dim` is gathered by DTensor first.
register_sharding_rule(
    _softmax, lambda x, dim: elementwise_rules(x, free_dims=other_dims(x.ndim, dim))
)
register_inductor_decomposition(_softmax, torch.softmax)
# Native softmax is on CUDA autocast's float32 list; on CPU autocast leaves it alone.
register_autocast(_softmax, "cuda", torch.float32)


def softmax(x: Tensor, dim: int) -> Tensor:
    """``torch.softmax(x, dim)``, with the gradient written out in ``opslib/ops/softmax.py``."""
    return _softmax(x, dim)


def softmax_onnx(x, dim: int):
    """ONNX translation: Softmax(x, axis=dim) (opset 13 and later: along that one axis)."""
    from opslib.onnx import opset

    return opset.Softmax(x, axis=dim)


register_onnx_translation(_softmax, softmax_onnx)
