r"""``customgrad::log_softmax(Tensor x, int dim) -> Tensor``:
:math:`y = x - \log \sum e^{x}` along ``dim``.

The same call and result as ``torch.log_softmax(x, dim)`` (any dim, negative too).

Forward
-------
Along dim, with :math:`m = \max_j x_j`:

.. math::

    y_i = \log \frac{e^{x_i}}{\sum_j e^{x_j}} = (x_i - m) - \log \sum_j e^{x_j - m}

The log of the softmax, computed without forming it: softmax underflows to 0 for :math:`x_i`
far below the maximum, where log_softmax is still a finite, accurate number
(:math:`x_i - m - \dots`).

Backward
--------
With :math:`g = \partial L/\partial y`, and :math:`\operatorname{softmax}(x)_k = e^{y_k}`:

.. math::

    \frac{\partial y_i}{\partial x_k} &= \delta_{ik} - \operatorname{softmax}(x)_k
        = \delta_{ik} - e^{y_k} \\
    \frac{\partial L}{\partial x_k} &= \sum_i g_i\,(\delta_{ik} - e^{y_k})
        = g_k - e^{y_k} \sum_i g_i

One sum of g per row and the saved output. Computed by
``aten._log_softmax_backward_data(g, y, dim, dtype)``, exactly this formula in one pass (the
CUDA path: one Triton kernel per row).

Saved for backward
------------------
The output y, as native ``torch.log_softmax`` saves it.

Double backward
---------------
:math:`\partial L/\partial x` is linear in g, and :math:`e^y` is differentiable through y (this
op's output); ``_log_softmax_backward_data`` has its derivatives registered in ATen.

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
from opslib.core.checks import check_floating_input
from opslib.core.registration import (
    define_op,
    register_autocast,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap_along_dim,
)
from opslib.core.sharding import elementwise_rules, other_dims, register_sharding_rule
from opslib.ops.softmax import check_dim


def _check_log_softmax(x: Tensor, dim: int) -> None:
    check_floating_input("log_softmax", "x", x)
    check_dim("log_softmax", x, dim)


def _log_softmax_kernel(x: Tensor, dim: int) -> Tensor:
    _check_log_softmax(x, dim)
    if cuda_path.takes(x) and cuda_path.kernels("softmax").supports(x, dim):
        return cuda_path.kernels("softmax").forward(x, dim, log=True)  # CUDA: a row per program
    return torch.log_softmax(x, dim)


def _log_softmax_fake(x: Tensor, dim: int) -> Tensor:
    _check_log_softmax(x, dim)
    return torch.log_softmax(x, dim)  # native's layout, whatever x's


def _log_softmax_setup_context(ctx, inputs: tuple[Tensor, int], output: Tensor) -> None:
    ctx.dim = inputs[1]
    ctx.save_for_backward(output if ctx.needs_input_grad[0] else None)


def _log_softmax_backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, None]:
    (y,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None
    if cuda_path.takes_first_order(grad_y, y) and cuda_path.kernels("softmax").supports(y, ctx.dim):
        return cuda_path.kernels("softmax").backward(grad_y, y, ctx.dim, log=True), None
    return torch.ops.aten._log_softmax_backward_data(grad_y, y, ctx.dim, y.dtype), None


_log_softmax = define_op(
    "log_softmax",
    "(Tensor x, int dim) -> Tensor",
    kernel=_log_softmax_kernel,
    fake=_log_softmax_fake,
    setup_context=_log_softmax_setup_context,
    backward=_log_softmax_backward,
)
register_vmap_along_dim(_log_softmax)
# DTensor (core/sharding.py): sharded along any dim but the one normalised over (each row's
# sum must be whole); a sharded `dim` is gathered by DTensor first.
register_sharding_rule(
    _log_softmax, lambda x, dim: elementwise_rules(x, free_dims=other_dims(x.ndim, dim))
)
register_inductor_decomposition(_log_softmax, torch.log_softmax)
# Native log_softmax is on CUDA autocast's float32 list; on CPU autocast leaves it alone.
register_autocast(_log_softmax, "cuda", torch.float32)


def log_softmax(x: Tensor, dim: int) -> Tensor:
    """``torch.log_softmax(x, dim)``, with the gradient written out in
    ``opslib/ops/log_softmax.py``."""
    return _log_softmax(x, dim)


def log_softmax_onnx(x, dim: int):
    """ONNX translation: LogSoftmax(x, axis=dim) (opset 13 and later: along that one axis)."""
    from opslib.onnx import opset

    return opset.LogSoftmax(x, axis=dim)


register_onnx_translation(_log_softmax, log_softmax_onnx)
