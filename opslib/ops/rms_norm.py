r"""``customgrad::rms_norm(Tensor x, int[] normalized_shape, Tensor? weight=None, float? eps=None)
-> Tensor``: root-mean-square normalisation (Zhang & Sennrich, 2019), as ``F.rms_norm``.

A row is the trailing dims that ``normalized_shape`` names (``x.shape[-k:]``, N elements);
every row is normalised by its own root mean square. ``eps=None`` means the epsilon of the
dtype the row is computed in (float32 for float16/bfloat16 x, as native).

Forward
-------
One row :math:`x_1 \dots x_N`, weight :math:`w_1 \dots w_N` (or all 1):

.. math::

    m = \frac{1}{N} \sum_k x_k^2, \qquad
    r = \frac{1}{\sqrt{m + \varepsilon}}, \qquad
    y_j = x_j\, r\, w_j

Backward
--------
With :math:`g = \partial L/\partial y` and :math:`u_j = w_j g_j`:

.. math::

    \frac{\partial r}{\partial x_k} &= -\tfrac12 (m + \varepsilon)^{-3/2}\,\frac{2 x_k}{N}
        = -\frac{r^3 x_k}{N} \\
    \frac{\partial y_j}{\partial x_k}
        &= w_j\Bigl(\delta_{jk}\, r + x_j \frac{\partial r}{\partial x_k}\Bigr)
        = w_j\Bigl(\delta_{jk}\, r - \frac{r^3 x_j x_k}{N}\Bigr) \\[4pt]
    \frac{\partial L}{\partial x_k} &= \sum_j g_j \frac{\partial y_j}{\partial x_k}
        = r\, u_k - \frac{r^3}{N}\, x_k \sum_j u_j x_j \\
    \frac{\partial L}{\partial w_j} &= \sum_{\text{rows}} g_j\, x_j\, r

Per row: two sums (:math:`\sum x^2`, :math:`\sum u x`) and one pass for
:math:`\partial L/\partial x`; no ``[N, N]`` Jacobian. r is recomputed from x (one sum per row,
over data that backward reads anyway) instead of saved.

Saved for backward
------------------
x and weight. Native saves more: its composite forward keeps x, r and x·r for its own backward.

Double backward
---------------
The backward is the torch-op formula ``_backward_formula`` (sums, products, rsqrt), which
autograd differentiates again under ``create_graph=True``; only a plain first-order CPU backward
runs the C++ kernel.

Kernels
-------
Plain CPU calls without autograd enter C++ at once through the fast path
(``opslib/csrc/cpu_fast_path.cpp``), which runs the forward below; plain CPU calls on contiguous
rows run the C++ kernels of ``opslib/csrc/rms_norm.cpp`` (one pass per row forward and backward;
native eager makes about five passes forward and ten backward); anything else (CUDA, other
layouts, compile and export tracing) runs ``_forward_formula`` and ``_backward_formula``, the
same math in torch ops (mean(x²) in float64, as the C++ kernels accumulate it). Under
torch.compile inductor computes the forward from native's composite. There is no Triton kernel
yet: on CUDA this op runs torch ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core import cpu_kernels
from opslib.core.checks import (
    check_normalization,
    input_grad_flags,
    int_list,
)
from opslib.core.precision import accumulation_dtype
from opslib.core.registration import (
    define_op,
    only_plain_tensors,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import register_sharding_rule, row_normalization_rules

OP = "rms_norm"


def _check_rms_norm(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None, eps: float | None
) -> None:
    check_normalization(OP, x, normalized_shape, {"weight": weight}, eps)


def _eps(x: Tensor, eps: float | None) -> float:
    """native's default: the epsilon of the compute dtype (float32 for float16/bfloat16)."""
    if eps is not None:
        return eps
    return torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps


def _row_size(normalized_shape: list[int]) -> int:
    return math.prod(normalized_shape)


def cpu_kernel_takes(x: Tensor, normalized_shape: list[int], weight: Tensor | None) -> bool:
    """Calls the C++ kernels compute: CPU, contiguous rows (and weight), at least one row of at
    least one element, the kernels built."""
    return (
        x.is_cpu
        and len(normalized_shape) > 0
        and x.numel() > 0
        and x.is_contiguous()
        and (weight is None or weight.is_contiguous())
        and cpu_kernels.is_loaded()
    )


def _forward_formula(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None, eps: float | None
) -> Tensor:
    """The forward in torch ops, with mean(x²) accumulated in float64 as the C++ kernel does:
    native's float32 mean of squares overflows from |x| ~ 2e19 (and then gives 0 or nan)."""
    dims = tuple(range(-len(normalized_shape), 0))
    mean_square = x.to(torch.float64).square().mean(dims, keepdim=True)
    wide = accumulation_dtype(x.dtype)
    rstd = torch.rsqrt(mean_square + _eps(x, eps)).to(wide)
    y = x.to(wide) * rstd
    return (y * weight.to(wide) if weight is not None else y).to(x.dtype)


def _rms_norm_kernel(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    _check_rms_norm(x, normalized_shape, weight, eps)
    if cpu_kernel_takes(x, normalized_shape, weight):
        n = _row_size(normalized_shape)
        return torch.ops.opslib_cpu.rms_norm_forward(x, n, weight, _eps(x, eps))  # one pass
    return _forward_formula(x, normalized_shape, weight, eps)


def _rms_norm_fake(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    _check_rms_norm(x, normalized_shape, weight, eps)
    return _forward_formula(x, normalized_shape, weight, eps)  # the kernel's layout


def _backward_formula(
    grad_y: Tensor, x: Tensor, normalized_shape: list[int], weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor | None]:
    """dL/dx and dL/dw as derived above, in differentiable torch ops, rounded once to x's
    dtype. Computed in float64 when it computes (no overflow of x², no underflow of r³, and no
    cancellation in r·u - x·r³·mean(u·x) for short rows: the C++ kernel's double paths); in
    float32 (for half types) or x's dtype while torch.compile traces, as native's compiled
    code does."""
    dtype = x.dtype
    wide = accumulation_dtype(dtype)
    if only_plain_tensors((grad_y, x)):
        wide = torch.float64
    g, xw = grad_y.to(wide), x.to(wide)
    dims = tuple(range(-len(normalized_shape), 0))
    rstd = torch.rsqrt(xw.square().mean(dims, keepdim=True) + eps)
    u = g * weight.to(wide) if weight is not None else g
    grad_x = rstd * u - xw * (rstd.pow(3) * (u * xw).mean(dims, keepdim=True))
    grad_w = None
    if weight is not None:
        grad_w = (g * xw * rstd).sum_to_size(weight.shape).to(weight.dtype)
    return grad_x.to(dtype), grad_w


def _rms_norm_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    x, normalized_shape, weight, eps = (*inputs, None, None)[:4]
    ctx.normalized_shape, ctx.eps = list(normalized_shape), _eps(x, eps)
    ctx.save_for_backward(x, weight)  # weight: O(N), needed for dL/dx and for its own gradient


def _rms_norm_backward(ctx, grad_y: Tensor):
    x, weight = ctx.saved_tensors
    needs_x, _, needs_w = input_grad_flags(ctx, 3)[:3]
    shape, eps = ctx.normalized_shape, ctx.eps
    if (
        not torch.is_grad_enabled()  # create_graph=True needs the differentiable formula
        and only_plain_tensors((grad_y, x) if weight is None else (grad_y, x, weight))
        and grad_y.dtype == x.dtype
        and cpu_kernel_takes(x, shape, weight)
    ):
        n = _row_size(shape)
        grad_x, grad_w = torch.ops.opslib_cpu.rms_norm_backward(grad_y, x, n, weight, eps)
    else:
        grad_x, grad_w = _backward_formula(grad_y, x, shape, weight, eps)
    return (grad_x if needs_x else None), None, (grad_w if needs_w else None), None


_rms_norm = define_op(
    OP,
    "(Tensor x, int[] normalized_shape, Tensor? weight=None, float? eps=None) -> Tensor",
    kernel=_rms_norm_kernel,
    fake=_rms_norm_fake,
    setup_context=_rms_norm_setup_context,
    backward=_rms_norm_backward,
)


def _rms_norm_vmap(info, in_dims, x, normalized_shape, weight=None, eps=None):
    """Batch dims go to the front; a batched weight [B, *shape] multiplies the unweighted
    result, padded to broadcast over x's other dims (y = (x·r)·w, the kernels' order)."""
    x_dim, _, weight_dim, _ = (*in_dims, None, None)[:4]
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
    if weight_dim is None:
        return _rms_norm(x, normalized_shape, weight, eps), 0
    weight = weight.movedim(weight_dim, 0)
    weight = weight.reshape(weight.shape[0], *([1] * (x.dim() - weight.dim())), *weight.shape[1:])
    return _rms_norm(x, normalized_shape, None, eps) * weight, 0


register_vmap(_rms_norm, _rms_norm_vmap)


def _rms_norm_sharding(x, normalized_shape, weight=None, eps=None):
    """DTensor: rows sharded, never the normalised dims (core/sharding.py)."""
    return row_normalization_rules(x, normalized_shape, weight)


register_sharding_rule(_rms_norm, _rms_norm_sharding)
# Under torch.compile, inductor computes the forward from native's composite (fused loops).
register_inductor_decomposition(_rms_norm, F.rms_norm)


def rms_norm(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    """``F.rms_norm(x, normalized_shape, weight, eps)``, with the gradient written out in
    ``opslib/ops/rms_norm.py``."""
    if not torch.jit.is_scripting():  # (scripted, normalized_shape is typed List[int])
        normalized_shape = int_list(OP, "normalized_shape", normalized_shape)
    return _rms_norm(x, list(normalized_shape), weight, eps)


def rms_norm_onnx(x, normalized_shape: list[int], weight=None, eps: float | None = None):
    """ONNX translation, standard operators at the default opset (20; ONNX's own
    RMSNormalization needs opset 23, which onnxruntime 1.32 runs, but the rest of the model
    would have to move to 23 with it): y = x / sqrt(ReduceMean(x·x) + eps) · w, eps a constant
    in x's dtype (so float64 keeps it exactly, where an ONNX float attribute is float32)."""
    import numpy as np
    from onnxscript import ir

    from opslib.onnx import constant, opset

    k = len(normalized_shape)
    axes = opset.Constant(value=ir.tensor(np.arange(-k, 0, dtype=np.int64)))
    wide_dtype = np.float64 if x.dtype.numpy() == np.float64 else np.float32
    eps_value = eps if eps is not None else float(np.finfo(wide_dtype).eps)
    mean_square = opset.ReduceMean(opset.Mul(x, x), axes, keepdims=1)
    y = opset.Div(x, opset.Sqrt(opset.Add(mean_square, constant(eps_value, x))))
    return opset.Mul(y, weight) if weight is not None else y


register_onnx_translation(_rms_norm, rms_norm_onnx)
