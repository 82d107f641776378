r"""``customgrad::layer_norm(Tensor x, int[] normalized_shape, Tensor? weight=None,
Tensor? bias=None, float eps=1e-05) -> Tensor``: layer normalisation (Ba et al., 2016), as
``F.layer_norm``.

A row is the trailing dims that ``normalized_shape`` names (``x.shape[-k:]``, N elements);
every row is normalised to mean 0 and variance 1 (the biased variance, 1/N), then scaled and
shifted per element.

Forward
-------
One row :math:`x_1 \dots x_N`; weight w and bias b, or 1 and 0:

.. math::

    \mu = \frac1N \sum_k x_k, \qquad
    \sigma^2 = \frac1N \sum_k (x_k - \mu)^2, \qquad
    r = \frac{1}{\sqrt{\sigma^2 + \varepsilon}} \\
    \hat x_j = (x_j - \mu)\, r, \qquad y_j = \hat x_j\, w_j + b_j

Backward
--------
With :math:`g = \partial L/\partial y` and :math:`u_j = w_j g_j`. The
:math:`\sum_j (x_j - \mu)\cdot(-1/N)` terms sum to 0, so:

.. math::

    \frac{\partial \mu}{\partial x_k} &= \frac1N, \qquad
    \frac{\partial \sigma^2}{\partial x_k} = \frac2N (x_k - \mu) \\
    \frac{\partial r}{\partial x_k} &= -\tfrac12 r^3 \frac{\partial \sigma^2}{\partial x_k}
        = -\frac{r^3 (x_k - \mu)}{N} = -\frac{r^2 \hat x_k}{N} \\
    \frac{\partial \hat x_j}{\partial x_k} &= r\Bigl(\delta_{jk} - \frac1N\Bigr)
        + (x_j - \mu) \frac{\partial r}{\partial x_k}
        = r\Bigl(\delta_{jk} - \frac1N - \frac{\hat x_j \hat x_k}{N}\Bigr) \\[4pt]
    \frac{\partial L}{\partial x_k} &= \sum_j u_j \frac{\partial \hat x_j}{\partial x_k}
        = r\Bigl(u_k - \frac1N \sum_j u_j - \hat x_k\, \frac1N \sum_j u_j \hat x_j\Bigr) \\
    \frac{\partial L}{\partial w_j} &= \sum_{\text{rows}} g_j \hat x_j, \qquad
    \frac{\partial L}{\partial b_j} = \sum_{\text{rows}} g_j

Per row: two means (of u and of :math:`u \hat x`) and one pass for :math:`\partial L/\partial x`;
no ``[N, N]`` Jacobian.

Saved for backward
------------------
x, weight and bias (bias only for its shape). μ and r are recomputed from x in backward, one
sweep over a row that backward reads anyway, instead of saved: the op has one output (y, as
``F.layer_norm``), and an op's setup_context sees only its outputs. Native saves x, weight, bias
and its ``[rows]`` mean and rstd; this saves less.

Double backward
---------------
The backward is the torch-op formula ``_backward_formula``, which autograd differentiates again
under ``create_graph=True``; only a plain first-order CPU backward runs the C++ kernel.

Kernels
-------
Plain CPU calls without autograd enter C++ at once through the fast path
(``opslib/csrc/cpu_fast_path.cpp``), which runs the forward below; plain CPU calls on contiguous
rows run the C++ kernels of ``opslib/csrc/layer_norm.cpp`` (one sweep per row forward and
backward, as native's own fused CPU kernels); anything else (CUDA, other layouts, compile and
export tracing) runs ``_forward_formula`` and ``_backward_formula``, the same math in torch ops
(moments in float64, as the C++ kernels accumulate them). Under torch.compile inductor computes
the forward from native's decomposition. There is no Triton kernel yet: on CUDA this op runs
torch ops.
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
    register_autocast,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import register_sharding_rule, row_normalization_rules

OP = "layer_norm"


def _check_layer_norm(
    x: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> None:
    check_normalization(OP, x, normalized_shape, {"weight": weight, "bias": bias}, eps)


def _row_size(normalized_shape: list[int]) -> int:
    return math.prod(normalized_shape)


def cpu_kernel_takes(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None
) -> bool:
    """Calls the C++ kernels compute: CPU, contiguous rows (and weight and bias), at least one
    row of at least one element, the kernels built."""
    return (
        x.is_cpu
        and len(normalized_shape) > 0
        and x.numel() > 0
        and x.is_contiguous()
        and (weight is None or weight.is_contiguous())
        and (bias is None or bias.is_contiguous())
        and cpu_kernels.is_loaded()
    )


def _moments(x: Tensor, dims: tuple[int, ...], eps: float, wide: torch.dtype):
    """A row's mean and 1/sqrt(var + eps), returned in the compute dtype. Accumulated in
    float64 when computing (a float32 variance of values near 1e19 overflows; the C++ kernel
    redoes such rows in double); in the compute dtype while torch.compile traces, where the
    forward is native's decomposition too (float32 throughout, as native's compiled code)."""
    xd = x.to(torch.float64 if only_plain_tensors((x,)) else wide)
    mean = xd.mean(dims, keepdim=True)
    var = (xd - mean).square().mean(dims, keepdim=True)
    return mean.to(wide), torch.rsqrt(var + eps).to(wide)


def _forward_formula(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """The forward in torch ops, as the C++ kernel computes it: centred, moments in float64."""
    wide = accumulation_dtype(x.dtype)
    mean, rstd = _moments(x, tuple(range(-len(normalized_shape), 0)), eps, wide)
    y = (x.to(wide) - mean) * rstd
    y = y * weight.to(wide) if weight is not None else y
    return (y + bias.to(wide) if bias is not None else y).to(x.dtype)


def _layer_norm_kernel(
    x: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    _check_layer_norm(x, normalized_shape, weight, bias, eps)
    if cpu_kernel_takes(x, normalized_shape, weight, bias):
        n = _row_size(normalized_shape)
        return torch.ops.opslib_cpu.layer_norm_forward(x, n, weight, bias, eps)  # one sweep
    return _forward_formula(x, normalized_shape, weight, bias, eps)


def _layer_norm_fake(
    x: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    _check_layer_norm(x, normalized_shape, weight, bias, eps)
    return _forward_formula(x, normalized_shape, weight, bias, eps)  # the kernel's layout


def _backward_formula(
    grad_y: Tensor,
    x: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """dL/dx, dL/dw and dL/db as derived above, in differentiable torch ops, rounded once to
    x's dtype. Computed in float64 when it computes (dL/dx is a small difference of large terms
    for short rows: float32 loses digits that native keeps, and the C++ kernel redoes such rows
    in double); in float32 (for half types) or x's dtype while torch.compile traces, as
    native's compiled code does."""
    dtype = x.dtype
    wide = accumulation_dtype(dtype)
    if only_plain_tensors((grad_y, x)):
        wide = torch.float64
    g, xw = grad_y.to(wide), x.to(wide)
    dims = tuple(range(-len(normalized_shape), 0))
    mean, rstd = _moments(x, dims, eps, wide)
    xhat = (xw - mean) * rstd
    u = g * weight.to(wide) if weight is not None else g
    mean_u = u.mean(dims, keepdim=True)
    mean_uxhat = (u * xhat).mean(dims, keepdim=True)
    grad_x = rstd * (u - mean_u - xhat * mean_uxhat)
    grad_w = (g * xhat).sum_to_size(weight.shape).to(weight.dtype) if weight is not None else None
    grad_b = g.sum_to_size(bias.shape).to(bias.dtype) if bias is not None else None
    return grad_x.to(dtype), grad_w, grad_b


def _layer_norm_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    x, normalized_shape, weight, bias, eps = (*inputs, None, None, 1e-5)[:5]
    ctx.normalized_shape, ctx.eps = list(normalized_shape), eps
    ctx.save_for_backward(x, weight, bias)  # weight and bias: O(N)


def _layer_norm_backward(ctx, grad_y: Tensor):
    x, weight, bias = ctx.saved_tensors
    needs_x, _, needs_w, needs_b = input_grad_flags(ctx, 4)
    shape, eps = ctx.normalized_shape, ctx.eps
    tensors = tuple(t for t in (grad_y, x, weight, bias) if t is not None)
    if (
        not torch.is_grad_enabled()  # create_graph=True needs the differentiable formula
        and only_plain_tensors(tensors)
        and grad_y.dtype == x.dtype
        and cpu_kernel_takes(x, shape, weight, bias)
    ):
        n = _row_size(shape)
        grad_x, grad_w, grad_b = torch.ops.opslib_cpu.layer_norm_backward(
            grad_y, x, n, weight, bias, eps
        )
    else:
        grad_x, grad_w, grad_b = _backward_formula(grad_y, x, shape, weight, bias, eps)
    return (
        grad_x if needs_x else None,
        None,
        grad_w if needs_w else None,
        grad_b if needs_b else None,
        None,
    )


_layer_norm = define_op(
    OP,
    "(Tensor x, int[] normalized_shape, Tensor? weight=None, Tensor? bias=None, "
    "float eps=1e-05) -> Tensor",
    kernel=_layer_norm_kernel,
    fake=_layer_norm_fake,
    setup_context=_layer_norm_setup_context,
    backward=_layer_norm_backward,
)


def _layer_norm_vmap(info, in_dims, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Batch dims go to the front; a batched weight [B, *shape] or bias is applied after the
    unweighted op, padded to broadcast over x's other dims."""
    x_dim, _, weight_dim, bias_dim, _ = (*in_dims, None, None, None)[:5]
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
    if weight_dim is None and bias_dim is None:
        return _layer_norm(x, normalized_shape, weight, bias, eps), 0

    def padded(t: Tensor, dim: int | None) -> Tensor:
        if dim is None:
            return t
        t = t.movedim(dim, 0)
        return t.reshape(t.shape[0], *([1] * (x.dim() - t.dim())), *t.shape[1:])

    y = _layer_norm(x, normalized_shape, None, None, eps)
    if weight is not None:
        y = y * padded(weight, weight_dim)
    if bias is not None:
        y = y + padded(bias, bias_dim)
    return y, 0


register_vmap(_layer_norm, _layer_norm_vmap)


def _layer_norm_sharding(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """DTensor: rows sharded, never the normalised dims (core/sharding.py)."""
    return row_normalization_rules(x, normalized_shape, weight, bias)


register_sharding_rule(_layer_norm, _layer_norm_sharding)
# Under torch.compile, inductor computes the forward from native's decomposition (fused loops).
register_inductor_decomposition(_layer_norm, F.layer_norm)
# Native layer_norm is on CUDA autocast's float32 list; CPU autocast leaves it in its input dtype.
register_autocast(_layer_norm, "cuda", torch.float32)


def layer_norm(
    x: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.layer_norm(x, normalized_shape, weight, bias, eps)``, with the gradient written out
    in ``opslib/ops/layer_norm.py``."""
    if not torch.jit.is_scripting():  # (scripted, normalized_shape is typed List[int])
        normalized_shape = int_list(OP, "normalized_shape", normalized_shape)
    return _layer_norm(x, list(normalized_shape), weight, bias, eps)


def layer_norm_onnx(x, normalized_shape: list[int], weight=None, bias=None, eps: float = 1e-5):
    """ONNX translation: LayerNormalization (opset 17 and later) over the last k axes. Its
    ``epsilon`` attribute is a float32, so a float64 model is normalised with eps rounded to
    float32 (1e-5 becomes 1e-5 + 2.5e-13): its parity with PyTorch is ~1e-12, not 1e-15. Weight
    and bias default to ones and zeros of the row's shape, which the operator requires."""
    import numpy as np
    from onnxscript import ir

    from opslib.onnx import opset

    k = len(normalized_shape)
    dtype = x.dtype.numpy()
    if weight is None:
        weight = opset.Constant(value=ir.tensor(np.ones(normalized_shape, dtype=dtype)))
    if bias is None:
        bias = opset.Constant(value=ir.tensor(np.zeros(normalized_shape, dtype=dtype)))
    y, _mean, _inv_std = opset.LayerNormalization(x, weight, bias, axis=-k, epsilon=eps)
    return y


register_onnx_translation(_layer_norm, layer_norm_onnx)
