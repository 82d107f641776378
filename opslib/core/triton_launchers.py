"""The CUDA path: launch the Triton kernels of ``triton_kernels.py`` from the op kernels.

Triton is imported lazily, on the first CUDA call: opslib imports and works on machines without
Triton or CUDA, where these functions answer None and the op computes with torch ops.

Layouts: an elementwise op can run over any non-overlapping dense tensor (contiguous,
transposed, channels-last) as a flat array, writing into ``empty_like(x)``, which has the same
strides; that is also what the fake implementation promises. Other layouts (strided slices,
expanded views) are made contiguous first, and gradients are brought to the saved tensor's
layout. float64 stays on the torch-op path (the kernels compute in float32).

``*_forward`` / ``*_backward`` launch the kernels on whatever device the tensors are on (CPU
tensors run under the Triton interpreter, for tests); the ``cuda_*`` gates decide when the
CUDA path applies and return None when it does not.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from types import ModuleType

import torch
from torch import Tensor

from opslib.core.registration import only_plain_tensors
from opslib.core.unary_codes import CUBE, EXP, RELU, SIGMOID, SQUARE, TANH  # noqa: F401  (the ops')

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 1024


@functools.cache
def kernels() -> ModuleType | None:
    """The kernels module, or None where Triton is not installed. Only a missing Triton means
    None: an error in opslib's own kernels module is raised, not mistaken for it."""
    if importlib.util.find_spec("triton") is None:
        return None
    from opslib.core import triton_kernels

    return triton_kernels


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _is_non_overlapping_and_dense(t: Tensor) -> bool:
    """Its elements fill one block of memory exactly (any dim order): contiguous, transposed,
    channels-last; not a strided slice or an expanded view."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda p: p[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def _dense(t: Tensor) -> Tensor:
    return t if _is_non_overlapping_and_dense(t) else t.contiguous()


def _in_layout_of(t: Tensor, ref: Tensor) -> Tensor:
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def unary_forward(op: int, x: Tensor) -> Tensor:
    x = _dense(x)
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        kernels().unary_forward_kernel[(triton_cdiv(n, BLOCK),)](x, y, n, OP=op, BLOCK=BLOCK)
    return y


def unary_backward(op: int, grad_y: Tensor, saved: Tensor) -> Tensor:
    saved = _dense(saved)
    grad_y = _in_layout_of(grad_y, saved)
    out = torch.empty_like(saved)
    n = saved.numel()
    if n:
        kernels().unary_backward_kernel[(triton_cdiv(n, BLOCK),)](
            grad_y, saved, out, n, OP=op, BLOCK=BLOCK
        )
    return out


def _channels(x: Tensor, slope: Tensor) -> int:
    """Columns of x seen as [R, C]: the slope's length for a per-channel slope, else the last
    dim (any split works for a single slope; the last dim keeps tiles inside rows)."""
    if slope.numel() != 1:
        return slope.shape[-1]
    return max(x.shape[-1], 1) if x.dim() else 1


def learned_silu_supported(x: Tensor, slope: Tensor) -> bool:
    """Contiguous x (channels are the last dim in memory, and the output keeps x's layout as
    the fake promises) with a single slope or one per channel; anything else uses torch ops."""
    return x.is_contiguous() and (
        slope.numel() == 1 or (x.dim() >= 1 and tuple(slope.shape) == (x.shape[-1],))
    )


def learned_silu_forward(x: Tensor, slope: Tensor) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        kernels().learned_silu_forward_kernel[(triton_cdiv(n, BLOCK),)](
            x,
            slope.contiguous(),
            y,
            n,
            _channels(x, slope),
            PER_CHANNEL=slope.numel() != 1,
            BLOCK=BLOCK,
        )
    return y


def learned_silu_backward(grad_y: Tensor, x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    grad_x = torch.empty_like(x)
    c = _channels(x, slope)
    r = x.numel() // c if c else 0
    block_r, block_c = 32, min(128, triton_next_power_of_2(max(c, 1)))
    partial = torch.zeros(max(triton_cdiv(r, block_r), 1), c, device=x.device, dtype=torch.float32)
    if x.numel():
        grid = (triton_cdiv(r, block_r), triton_cdiv(c, block_c))
        kernels().learned_silu_backward_kernel[grid](
            grad_y,
            x,
            slope.contiguous(),
            grad_x,
            partial,
            r,
            c,
            PER_CHANNEL=slope.numel() != 1,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
        )
    per_column = partial.sum(0)
    grad_slope = per_column if slope.numel() != 1 else per_column.sum()
    return grad_x, grad_slope.reshape(slope.shape).to(slope.dtype)


def adam_step(
    tensors: list[Tensor], step: Tensor, scalars: list[float], flags: tuple[bool, bool, bool]
) -> None:
    """One Adam update of a contiguous parameter (p, g, m, v[, vmax] in ``tensors``) in place;
    the step is incremented and the coefficients computed here, in double, as the C++ kernel
    does (see opslib/ops/adam.py)."""
    lr, beta1, beta2, weight_decay, eps = scalars
    amsgrad, maximize, decoupled = flags
    step.add_(1)
    t = step.item()
    p, g, m, v = tensors[:4]
    vmax = tensors[4] if amsgrad else p  # a placeholder pointer the kernel never reads
    n = p.numel()
    if n:
        kernels().adam_step_kernel[(triton_cdiv(n, BLOCK),)](
            p, g, m, v, vmax, n,
            1 - lr * weight_decay, weight_decay, 1 - beta1, beta2, 1 - beta2,
            math.sqrt(1 - beta2**t), eps, -(lr / (1 - beta1**t)),
            MAXIMIZE=maximize, DECOUPLED=decoupled and weight_decay != 0,
            L2=not decoupled and weight_decay != 0, AMSGRAD=amsgrad,
            SMALL_WEIGHT=abs(1 - beta1) < 0.5, BLOCK=BLOCK,
        )  # fmt: skip


def adam_step_call(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2,
    weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    """The op's CUDA path on every parameter, called with the op's arguments (the tests run it
    on CPU tensors under the Triton interpreter)."""
    scalars = [float(h.item()) for h in (lr, beta1, beta2, weight_decay, eps)]
    for i, p in enumerate(params):
        tensors = [p, grads[i], exp_avgs[i], exp_avg_sqs[i]]
        tensors += [max_exp_avg_sqs[i]] if amsgrad else []
        adam_step(tensors, steps[i], scalars, (amsgrad, maximize, decoupled_weight_decay))


def adam_step_supported(tensors: list[Tensor]) -> bool:
    return all(t.is_contiguous() and t.dtype in TRITON_DTYPES for t in tensors)


# Rows longer than this are left to torch ops (a row lives in one program's registers).
SOFTMAX_MAX_ROW = 16384


def softmax_supported(x: Tensor, dim: int) -> bool:
    """Along the last dim of a contiguous x of at least one dim, rows up to SOFTMAX_MAX_ROW."""
    return (
        x.dim() >= 1
        and dim % x.dim() == x.dim() - 1
        and x.is_contiguous()
        and 0 < x.shape[-1] <= SOFTMAX_MAX_ROW
    )


def softmax_forward(x: Tensor, dim: int, log: bool) -> Tensor:
    y = torch.empty_like(x)
    c = x.shape[-1]
    if x.numel():
        kernels().softmax_forward_kernel[(x.numel() // c,)](
            x, y, c, LOG=log, BLOCK_C=triton_next_power_of_2(c)
        )
    return y


def softmax_backward(grad_y: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    grad_y = grad_y.contiguous()
    grad_x = torch.empty_like(y)
    c = y.shape[-1]
    if y.numel():
        kernels().softmax_backward_kernel[(y.numel() // c,)](
            grad_y, y, grad_x, c, LOG=log, BLOCK_C=triton_next_power_of_2(c)
        )
    return grad_x


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def triton_next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


# The gates: when the CUDA path applies.


def _cuda_path(*tensors: Tensor) -> bool:
    first = tensors[0]
    return (
        first.is_cuda  # first: on CPU this is the only check a call pays
        and first.dtype in TRITON_DTYPES
        and kernels() is not None
        and only_plain_tensors(tensors)  # never on fake tensors while compile traces
    )


def cuda_unary_forward(op: int, x: Tensor) -> Tensor | None:
    return unary_forward(op, x) if _cuda_path(x) else None


def cuda_unary_backward(op: int, grad_y: Tensor, saved: Tensor) -> Tensor | None:
    """Only a first-order backward: under create_graph the torch-op formula must run, so that
    autograd can differentiate it again."""
    if not _cuda_path(grad_y, saved) or torch.is_grad_enabled():
        return None
    return unary_backward(op, grad_y, saved)


def cuda_learned_silu_forward(x: Tensor, slope: Tensor) -> Tensor | None:
    if not (_cuda_path(x, slope) and learned_silu_supported(x, slope)):
        return None
    return learned_silu_forward(x, slope)


def cuda_learned_silu_backward(grad_y: Tensor, x: Tensor, slope: Tensor):
    """Called by the kernel of customgrad::learned_silu_backward, an op with its own autograd
    formula: a double backward differentiates that formula, not this kernel."""
    if not (_cuda_path(grad_y, x, slope) and learned_silu_supported(x, slope)):
        return None
    return learned_silu_backward(grad_y, x, slope)


def cuda_adam_step(
    tensors: list[Tensor], step: Tensor, scalars: list[float], flags: tuple[bool, bool, bool]
) -> bool:
    """Run the Triton update if this parameter takes it; False (nothing done) if not."""
    if not (_cuda_path(*tensors) and adam_step_supported(tensors)):
        return False
    adam_step(tensors, step, scalars, flags)
    return True


def cuda_softmax_forward(x: Tensor, dim: int, log: bool) -> Tensor | None:
    if not (_cuda_path(x) and softmax_supported(x, dim)):
        return None
    return softmax_forward(x, dim, log)


def cuda_softmax_backward(grad_y: Tensor, y: Tensor, dim: int, log: bool) -> Tensor | None:
    """Only a first-order backward: under create_graph the torch-op formula must run."""
    if not (_cuda_path(grad_y, y) and softmax_supported(y, dim)) or torch.is_grad_enabled():
        return None
    return softmax_backward(grad_y, y, dim, log)
