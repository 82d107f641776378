"""``customgrad::learned_silu(Tensor x, Tensor slope) -> Tensor``: y = slope · x · sigmoid(x).

Shapes
    x      any shape
    slope  any shape that broadcasts to x without enlarging it: [] or [1] (one learned slope),
           [C] (one per channel of x's last dim), ...
    y      x's shape

Forward (s = sigmoid(x))
    y = slope · x · s

Backward (g = dL/dy)
    dy/dx     = slope · (s + x · s(1 - s))   using ds/dx = s(1 - s)
              = slope · s · (1 + x(1 - s))
    dy/dslope = x · s

    dL/dx     = g · slope · s · (1 + x(1 - s))
    dL/dslope = (g · x · s) summed over every dim slope was broadcast along
                (sum_to_size(slope.shape): all of them for a scalar slope, all but the last
                for a per-channel [C] slope)

    For large negative x (say -1e4) s is exactly 0 and both gradients are exactly 0, never nan;
    for large positive x, 1 - s is exactly 0 and dy/dx = slope. At x = ±inf itself the formula
    meets inf · 0 and gives nan, as native does.

Saved for backward: x (always) and slope (only if x needs a gradient); s is recomputed from x
in backward. Native ``slope * x * torch.sigmoid(x)`` keeps slope, x, slope·x and sigmoid(x):
three x-sized tensors where this op keeps one.

Double backward: s is recomputed with torch.sigmoid, so the backward is differentiable torch
code in g, x and slope, and autograd differentiates it again.

Fused CPU path: as torch ops, forward reads and writes memory twice (silu, then the multiply)
and backward about eight times. For large contiguous CPU tensors (a single slope, or one per
channel of the last dim) the forward and the first-order backward each run as one loop that
inductor generates from the very formulas above, compiled once per process and dtype
(``run_fused``: later processes load it from inductor's on-disk cache; if compiling fails
it warns once and the torch-op path runs instead). On CUDA the same formulas run as one Triton
kernel each (``opslib/core/triton_kernels.py``). A backward that must itself be differentiable
(``create_graph=True``) always takes the torch-op path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core.checks import (
    broadcasts_to,
    check_floating_input,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
)
from opslib.core.compiled_loops import run_fused
from opslib.core.registration import (
    define_op,
    only_plain_tensors,
    register_inductor_decomposition,
    register_vmap,
)
from opslib.core.triton_launchers import cuda_learned_silu_backward, cuda_learned_silu_forward


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


# Sizes from which each fused loop pays for its fixed cost (~25-30 µs to call a compiled
# function). The forward saves one pass over memory, which matters only once x outgrows the
# caches (measured on a 2-core AMD EPYC: fused 1.2x slower at 256K elements, 1.04x at 512K,
# 0.87x at 1M); the backward replaces about eight passes and is faster from 64K (0.61x).
FUSED_FORWARD_MIN_NUMEL = 1 << 20
FUSED_BACKWARD_MIN_NUMEL = 1 << 16
_FUSED_DTYPES = (torch.float32, torch.float64)


def _fusable(x: Tensor, slope: Tensor, min_numel: int) -> bool:
    return x.numel() >= min_numel and _fusable_layout(x, slope)


def _fusable_layout(x: Tensor, slope: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in _FUSED_DTYPES
        and x.is_contiguous()
        and (slope.numel() == 1 or tuple(slope.shape) == (x.shape[-1],))
    )


def _flat(x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    """x as [N] with a 0-d slope, or [N, C] with a [C] slope: two loop shapes cover every
    fusable call, so each dtype compiles at most twice (sizes are dynamic)."""
    if slope.numel() == 1:
        return x.reshape(-1), slope.reshape(())
    return x.reshape(-1, slope.shape[0]), slope


def _forward_formula(x: Tensor, slope: Tensor) -> Tensor:
    return slope * x * torch.sigmoid(x)


def _backward_formula(grad_y: Tensor, x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(x)
    grad_x = grad_y * slope * s * (1 + x * (1 - s))
    grad_slope = (grad_y * x * s).sum_to_size(slope.shape)
    return grad_x, grad_slope


def _learned_silu_kernel(x: Tensor, slope: Tensor) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    _check_learned_silu(x, slope)
    y = cuda_learned_silu_forward(x, slope)  # CUDA: a Triton kernel (core/triton_launchers.py)
    if y is not None:
        return y
    if _fusable(x, slope, FUSED_FORWARD_MIN_NUMEL):
        with torch.no_grad():  # one compiled graph whether or not grad mode is on
            y = run_fused(_forward_formula, *_flat(x, slope))
        if y is not None:
            return y.view(x.shape)
    return F.silu(x) * slope  # silu(x) = x · sigmoid(x), one native kernel, then the multiply


def _learned_silu_fake(x: Tensor, slope: Tensor) -> Tensor:
    _check_learned_silu(x, slope)
    return torch.empty_like(x)


def _learned_silu_setup_context(ctx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
    x, slope = inputs
    needs_x, needs_slope = input_grad_flags(ctx, 2)
    ctx.save_for_backward(x if (needs_x or needs_slope) else None, slope if needs_x else None)
    ctx.slope_shape = slope.shape


def _learned_silu_backward(ctx, grad_y: Tensor):
    x, slope = ctx.saved_tensors
    needs_x, needs_slope = input_grad_flags(ctx, 2)
    fused = cuda_learned_silu_backward(grad_y, x, slope) if needs_x else None
    if fused is not None:  # CUDA: one Triton pass, the slope terms reduced per block in it
        grad_x, grad_slope = fused
        return grad_x, grad_slope if needs_slope else None
    if (
        needs_x
        and not torch.is_grad_enabled()  # first-order backward: nothing differentiates this
        and _fusable(x, slope, FUSED_BACKWARD_MIN_NUMEL)
        and only_plain_tensors((grad_y, x, slope))  # not while compile/export traces it
    ):
        flat_x, flat_slope = _flat(x, slope)
        grads = run_fused(
            _backward_formula, grad_y.contiguous().view(flat_x.shape), flat_x, flat_slope
        )
        if grads is not None:
            grad_x, grad_slope = grads
            return grad_x.view(x.shape), grad_slope.view(ctx.slope_shape) if needs_slope else None
    # float16/bfloat16: compute in float32 and round once at the end (as native kernels do
    # internally); the formula's five roundings in half precision cost several ulps.
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        grad_y, x = grad_y.float(), x.float()
        slope = None if slope is None else slope.float()
    s = torch.sigmoid(x)
    grad_x = grad_y * slope * s * (1 + x * (1 - s)) if needs_x else None
    grad_slope = (grad_y * x * s).sum_to_size(ctx.slope_shape) if needs_slope else None
    if dtype != x.dtype:
        grad_x = None if grad_x is None else grad_x.to(dtype)
        grad_slope = None if grad_slope is None else grad_slope.to(dtype)
    return grad_x, grad_slope


_learned_silu = define_op(
    "learned_silu",
    "(Tensor x, Tensor slope) -> Tensor",
    kernel=_learned_silu_kernel,
    fake=_learned_silu_fake,
    setup_context=_learned_silu_setup_context,
    backward=_learned_silu_backward,
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
# with its neighbours (the eager fused path, by other means).
register_inductor_decomposition(_learned_silu, _forward_formula)

# No autocast rule: the native expression (mul, sigmoid) is on neither autocast list.


def learned_silu(x: Tensor, slope: Tensor) -> Tensor:
    """slope · x · sigmoid(x) with a learnable slope; gradients in ``opslib/ops/learned_silu.py``.

    slope broadcasts to x: ``[]`` or ``[1]`` for one slope, ``[C]`` per channel of the last dim.
    """
    return _learned_silu(x, slope)


def learned_silu_onnx(x, slope):
    """ONNX translation: Mul(Mul(x, Sigmoid(x)), slope), standard ONNX only; slope stays an
    input (or initializer), so a trained slope is exported as data, not baked in."""
    from opslib.onnx import opset

    return opset.Mul(opset.Mul(x, opset.Sigmoid(x)), slope)
