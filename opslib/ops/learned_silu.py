r"""``customgrad::learned_silu(Tensor x, Tensor slope) -> Tensor``:
:math:`y = a \cdot x \cdot \sigma(x)`, a SiLU with a learned slope :math:`a`.

Shapes
------
- ``x``: any shape.
- ``slope`` (:math:`a`): any shape that broadcasts to x without enlarging it: ``[]`` or ``[1]``
  (one learned slope), ``[C]`` (one per channel of x's last dim), ...
- ``y``: x's shape.

Forward
-------
With :math:`s = \sigma(x) = 1/(1 + e^{-x})`:

.. math::

    y = a\, x\, s

Backward
--------
With :math:`g = \partial L/\partial y`, and :math:`\mathrm{d}s/\mathrm{d}x = s(1 - s)`:

.. math::

    \frac{\partial y}{\partial x} &= a\,\bigl(s + x\, s(1 - s)\bigr)
        = a\, s\,\bigl(1 + x(1 - s)\bigr) \\
    \frac{\partial y}{\partial a} &= x\, s \\[4pt]
    \frac{\partial L}{\partial x} &= g\, a\, s\,\bigl(1 + x(1 - s)\bigr) \\
    \frac{\partial L}{\partial a} &= \textstyle\sum g\, x\, s
        \quad\text{over every dim the slope was broadcast along}

The sum is ``sum_to_size(slope.shape)``: all dims for a scalar slope, all but the last for a
per-channel ``[C]`` slope.

The first-order backward is an op of its own, ``customgrad::learned_silu_backward(grad_y, x,
slope) -> (grad_x, grad_slope)``, so that compile and export see the kernel it runs.

Extreme values
--------------
For large negative x (say -1e4) s is exactly 0 and both gradients are exactly 0, never nan; for
large positive x, :math:`1 - s` is exactly 0 and :math:`\partial y/\partial x = a`. At
x = ±inf itself the formula meets inf · 0 and gives nan, as native does.

Double backward
---------------
The backward of learned_silu_backward. With :math:`u = \partial L/\partial(\text{grad\_x})`
and :math:`v = \partial L/\partial(\text{grad\_slope})` broadcast to x, and
:math:`h = s\,(1 + x(1 - s)) = (\partial y/\partial x)/a`:

.. math::

    h' = \frac{\mathrm{d}h}{\mathrm{d}x} &= s(1 - s)\,\bigl(1 + x(1 - s)\bigr)
          + s\,\bigl((1 - s) - x\, s(1 - s)\bigr)
        = s(1 - s)\,\bigl(2 + x(1 - 2s)\bigr) \\[4pt]
    \frac{\partial L}{\partial g} &= u\, a\, h + v\, x\, s \\
    \frac{\partial L}{\partial x} &= u\, g\, a\, h' + v\, g\, h
        \qquad \Bigl(\frac{\mathrm{d}(x s)}{\mathrm{d}x} = h\Bigr) \\
    \frac{\partial L}{\partial a} &= \textstyle\sum u\, g\, h
        \quad\text{summed to the slope's shape}

All torch ops, so autograd differentiates them again (third order and up). ``silu_derivatives``
below computes :math:`s`, :math:`h` and :math:`h'` (swiglu's double backward uses it too).

Saved for backward
------------------
x (whenever a gradient is needed) and slope (only if x needs one); s is recomputed from x in
backward. Native ``slope * x * torch.sigmoid(x)`` keeps slope, x, slope·x and sigmoid(x): three
x-sized tensors where this op keeps one.

Kernels
-------
- CPU: the forward and the backward each run as one vectorized, multi-threaded pass over memory
  (``opslib/csrc/learned_silu.cpp``; native eager makes three passes forward and about eight
  backward), for a single slope or one per channel of the last dim, in every float dtype
  (float16/bfloat16 computed in float32, rounded once). The slope gradient is summed in double:
  more accurate than native's float sum. Other slope forms, and machines where the C++ kernels
  are not built, use the torch-op formulas below.
- CUDA: one Triton kernel each (``opslib/ops/triton_kernels/learned_silu.py``).
- Plain CPU calls without autograd enter the forward's C++ kernel at once through the fast path
  (``opslib/csrc/cpu_fast_path.cpp``), without the trip into Python.
- torch.compile with inductor: the forward and backward formulas, fused by inductor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core import cpu_kernels, cuda_path
from opslib.core.checks import (
    broadcasts_to,
    check_floating_input,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
)
from opslib.core.precision import HALF_DTYPES, accumulation_dtype
from opslib.core.registration import (
    define_op,
    in_layout_of,
    only_plain_tensors,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import broadcast_placement, register_sharding_rule


def _check_learned_silu(x: Tensor, slope: Tensor) -> None:
    check_floating_input("learned_silu", "x", x)
    check_floating_input("learned_silu", "slope", slope)
    check_same_dtype_and_device("learned_silu", {"x": x, "slope": slope})
    if not broadcasts_to(slope.shape, x.shape):
        raise ValueError(
            f"customgrad.learned_silu: slope of shape {fmt_shape(slope.shape)} does not "
            f"broadcast to x's shape {fmt_shape(x.shape)} (use [], [1] or [C] with "
            f"C = x.shape[-1])"
        )


def _check_learned_silu_backward(grad_y: Tensor, x: Tensor, slope: Tensor) -> None:
    _check_learned_silu(x, slope)
    check_floating_input("learned_silu_backward", "grad_y", grad_y)
    check_same_dtype_and_device("learned_silu_backward", {"x": x, "grad_y": grad_y})
    if grad_y.shape != x.shape:
        raise ValueError(
            f"customgrad.learned_silu_backward: grad_y of shape {fmt_shape(grad_y.shape)} "
            f"must have x's shape {fmt_shape(x.shape)}"
        )


def cpu_kernel_takes(x: Tensor, slope: Tensor) -> bool:
    """Calls the C++ kernels compute (the C++ fast path's ``learned_silu_cpu_supports`` too):
    CPU, a single slope or one per channel of the last dim, the kernels built."""
    return (
        x.is_cpu
        and (
            slope.numel() == 1
            or (slope.dim() == 1 and x.dim() >= 1 and slope.shape[0] == x.shape[-1])
        )
        and cpu_kernels.is_loaded()
    )


def _forward_formula(x: Tensor, slope: Tensor) -> Tensor:
    return slope * x * torch.sigmoid(x)


def _learned_silu_kernel(x: Tensor, slope: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    _check_learned_silu(x, slope)
    if cuda_path.takes(x, slope) and cuda_path.kernels("learned_silu").supports(x, slope):
        return cuda_path.kernels("learned_silu").forward(x, slope)  # CUDA: one Triton pass
    if cpu_kernel_takes(x, slope):
        return torch.ops.opslib_cpu.learned_silu_forward(x, slope)  # one pass (csrc/)
    return F.silu(x) * slope  # silu(x) = x · sigmoid(x), one native kernel, then the multiply


def _learned_silu_fake(x: Tensor, slope: Tensor) -> Tensor:
    _check_learned_silu(x, slope)
    return torch.empty_like(x)


def _backward_formula(grad_y: Tensor, x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    """dL/dx and dL/dslope in torch ops (float16/bfloat16 computed in float32 and rounded once:
    the formula's five roundings in half precision cost several ulps)."""
    dtype = x.dtype
    if dtype in HALF_DTYPES:
        grad_y, x, slope = grad_y.float(), x.float(), slope.float()
    s = torch.sigmoid(x)
    grad_x = grad_y * slope * s * (1 + x * (1 - s))
    grad_slope = (grad_y * x * s).sum_to_size(slope.shape)
    return grad_x.to(dtype), grad_slope.to(dtype)


def _learned_silu_backward_kernel(grad_y: Tensor, x: Tensor, slope: Tensor):
    _check_learned_silu_backward(grad_y, x, slope)
    fused = None
    # CUDA: one Triton pass. This is the kernel of an op with its own autograd formula: a double
    # backward differentiates that formula, not this kernel.
    if cuda_path.takes(grad_y, x, slope) and cuda_path.kernels("learned_silu").supports(x, slope):
        fused = cuda_path.kernels("learned_silu").backward(grad_y, x, slope)
    elif cpu_kernel_takes(x, slope):
        fused = torch.ops.opslib_cpu.learned_silu_backward(grad_y, x, slope)  # one pass (csrc/)
    grad_x, grad_slope = fused if fused is not None else _backward_formula(grad_y, x, slope)
    # Laid out as the fake promises: grad_x like x (the C++ kernel already is), grad_slope like
    # slope.
    if fused is None or not x.is_cpu:
        grad_x = in_layout_of(grad_x, x)
    return grad_x, grad_slope.reshape(slope.shape).contiguous()


def _learned_silu_backward_fake(grad_y: Tensor, x: Tensor, slope: Tensor):
    _check_learned_silu_backward(grad_y, x, slope)
    return torch.empty_like(x), torch.empty_like(slope, memory_format=torch.contiguous_format)


def _learned_silu_backward_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def silu_derivatives(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """s = sigmoid(x), h = silu'(x) = s(1 + x(1 - s)) and dh/dx = silu''(x) =
    s(1 - s)(2 + x(1 - 2s)), derived in the module docstring; in torch ops, so differentiable
    (swiglu's double backward uses them too)."""
    s = torch.sigmoid(x)
    return s, s * (1 + x * (1 - s)), s * (1 - s) * (2 + x * (1 - 2 * s))


def _learned_silu_double_backward(ctx, grad_grad_x: Tensor, grad_grad_slope: Tensor):
    """The derivation is in the module docstring (u = grad_grad_x, v = grad_grad_slope)."""
    grad_y, x, slope = ctx.saved_tensors
    needs_g, needs_x, needs_slope = input_grad_flags(ctx, 3)
    u, v = grad_grad_x, grad_grad_slope
    s, h, dh = silu_derivatives(x)
    dg = u * slope * h + v * x * s if needs_g else None
    dx = u * grad_y * slope * dh + v * grad_y * h if needs_x else None
    dslope = (u * grad_y * h).sum_to_size(slope.shape) if needs_slope else None
    return dg, dx, dslope


_learned_silu_backward = define_op(
    "learned_silu_backward",
    "(Tensor grad_y, Tensor x, Tensor slope) -> (Tensor, Tensor)",
    kernel=_learned_silu_backward_kernel,
    fake=_learned_silu_backward_fake,
    setup_context=_learned_silu_backward_setup_context,
    backward=_learned_silu_double_backward,
)
register_inductor_decomposition(_learned_silu_backward, _backward_formula)


def _learned_silu_setup_context(ctx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
    x, slope = inputs
    needs_x, needs_slope = input_grad_flags(ctx, 2)
    ctx.save_for_backward(x if (needs_x or needs_slope) else None, slope if needs_x else None)
    ctx.slope_shape = slope.shape


def _learned_silu_autograd_backward(ctx, grad_y: Tensor):
    x, slope = ctx.saved_tensors
    needs_x, needs_slope = input_grad_flags(ctx, 2)
    if needs_x:
        if torch.is_grad_enabled() or not only_plain_tensors((grad_y, x, slope)):
            # create_graph=True (its own backward is recorded), or compile/export tracing: the op
            grad_x, grad_slope = _learned_silu_backward(grad_y, x, slope)
        elif cpu_kernel_takes(x, slope):
            # A plain first-order backward on CPU: the C++ kernel the op would run, without the
            # op's dispatch and checks (~30 µs a call: the forward validated these tensors).
            grad_x, grad_slope = torch.ops.opslib_cpu.learned_silu_backward(grad_y, x, slope)
        else:
            grad_x, grad_slope = _learned_silu_backward_kernel(grad_y, x, slope)
        return grad_x, grad_slope if needs_slope else None
    # Only the slope: dL/dslope = Σ g · x · s, one product and one reduction (no dL/dx).
    dtype = x.dtype
    wide = accumulation_dtype(dtype)
    grad_slope = (grad_y.to(wide) * F.silu(x.to(wide))).sum_to_size(ctx.slope_shape)
    return None, grad_slope.to(dtype)


_learned_silu = define_op(
    "learned_silu",
    "(Tensor x, Tensor slope) -> Tensor",
    kernel=_learned_silu_kernel,
    fake=_learned_silu_fake,
    setup_context=_learned_silu_setup_context,
    backward=_learned_silu_autograd_backward,
)


def _learned_silu_vmap(info, in_dims, x: Tensor, slope: Tensor):
    """Batch dims go to the front; slope [B, *s] is padded to [B, 1, ..., *s] so that it
    broadcasts against x [B, *x] exactly as the unbatched slope did against x."""
    x_dim, slope_dim = in_dims
    batch = info.batch_size
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(batch, *x.shape)
    if slope_dim is not None:
        slope = slope.movedim(slope_dim, 0)
        slope = slope.reshape(batch, *([1] * (x.dim() - slope.dim())), *slope.shape[1:])
    return _learned_silu(x, slope), 0


register_vmap(_learned_silu, _learned_silu_vmap)
# Under torch.compile, inductor computes the forward from the formula above, in one loop fused
# with its neighbours (and the backward from _backward_formula).
register_inductor_decomposition(_learned_silu, _forward_formula)


# DTensor (core/sharding.py): x sharded along any dim d, the slope sharded alike where it has
# that dim at full size, else replicated (each slice of x reads it whole). In the backward,
# grad_slope sums g·x·s over the dims the slope was broadcast along: when d is one of them, each
# rank's sum covers its slice only, so grad_slope is Partial (summed over ranks).
def _learned_silu_sharding(x, slope):
    from torch.distributed.tensor import Replicate, Shard

    rules = [([Replicate()], [Replicate(), Replicate()])]
    for d in range(x.ndim):
        rules.append(([Shard(d)], [Shard(d), broadcast_placement(slope, x.ndim, d)]))
    return rules


def _learned_silu_backward_sharding(grad_y, x, slope):
    from torch.distributed.tensor import Partial, Replicate, Shard

    rules = [([Replicate(), Replicate()], [Replicate()] * 3)]
    for d in range(x.ndim):
        slope_placement = broadcast_placement(slope, x.ndim, d)
        grad_slope = slope_placement if isinstance(slope_placement, Shard) else Partial()
        rules.append(([Shard(d), grad_slope], [Shard(d), Shard(d), slope_placement]))
    return rules


register_sharding_rule(_learned_silu, _learned_silu_sharding)
register_sharding_rule(_learned_silu_backward, _learned_silu_backward_sharding)

# No autocast rule: the native expression (mul, sigmoid) is on neither autocast list.


def learned_silu(x: Tensor, slope: Tensor) -> Tensor:
    """slope · x · sigmoid(x) with a learnable slope; gradients in ``opslib/ops/learned_silu.py``.

    slope broadcasts to x: ``[]`` or ``[1]`` for one slope, ``[C]`` per channel of the last dim.
    Where a 1-D slope does not broadcast to x but x broadcasts to it (a 0-d x, or x [..., 1]
    with a [C] slope), x is expanded first, as native's ``slope * F.silu(x)`` broadcasts: the
    result has the broadcast shape, and x's gradient is summed back to x's shape by the expand.
    A slope of more than one dim is refused, though native would broadcast it: it is not one
    slope nor one per channel, which is what this op's slope is.
    """
    if not torch.jit.is_scripting():
        x = _broadcast_to_slope(x, slope)
    return _learned_silu(x, slope)


@torch.jit.unused  # TorchScript compiles learned_silu() without this (x as it is given)
def _broadcast_to_slope(x: Tensor, slope: Tensor) -> Tensor:
    """x expanded where it broadcasts to a 1-D slope that does not broadcast to it (anything
    else as it is: the op says what is wrong with it)."""
    if not (isinstance(x, Tensor) and isinstance(slope, Tensor) and slope.dim() == 1):
        return x
    if x.dim() == 0:
        return x.expand(slope.shape)
    if x.shape[-1] == 1 and slope.shape[0] != 1:
        return x.expand(*x.shape[:-1], slope.shape[0])
    return x


def learned_silu_onnx(x, slope):
    """ONNX translation: Mul(Mul(x, Sigmoid(x)), slope), standard ONNX only; slope stays an
    input (or initializer), so a trained slope is exported as data, not baked in."""
    from opslib.onnx import opset

    return opset.Mul(opset.Mul(x, opset.Sigmoid(x)), slope)


register_onnx_translation(_learned_silu, learned_silu_onnx)
