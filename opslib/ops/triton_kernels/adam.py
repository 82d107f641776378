"""adam_step_'s Triton kernel: one Adam/AdamW update of a parameter and its moments in one
pass (``opslib/ops/adam.py`` derives it).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from opslib.core.cuda_path import BLOCK, TRITON_DTYPES, cdiv


@triton.jit
def adam_step_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    vmax_ptr,
    n,
    decay,
    l2,
    lerp_weight,
    beta2,
    sq_weight,
    bc2_sqrt,
    eps,
    neg_step_size,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    L2: tl.constexpr,
    AMSGRAD: tl.constexpr,
    SMALL_WEIGHT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One Adam/AdamW update of a flat parameter and its moments (opslib/ops/adam.py derives
    it); the scalar coefficients come from the launcher, computed in double."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if MAXIMIZE:
        g = -g
    if DECOUPLED:
        p = p * decay
    if L2:
        g = g + l2 * p
    if SMALL_WEIGHT:  # torch.lerp's two forms, as the C++ kernel
        m = m + lerp_weight * (g - m)
    else:
        m = g - (g - m) * (1.0 - lerp_weight)
    v = v * beta2
    v = v + sq_weight * g * g
    largest = v
    if AMSGRAD:
        vmax = tl.load(vmax_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        largest = tl.maximum(vmax, v)
        tl.store(vmax_ptr + offs, largest.to(vmax_ptr.dtype.element_ty), mask=mask)
    denom = tl.sqrt(largest) / bc2_sqrt + eps
    p = p + neg_step_size * m / denom
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


def update(
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
        adam_step_kernel[(cdiv(n, BLOCK),)](
            p, g, m, v, vmax, n,
            1 - lr * weight_decay, weight_decay, 1 - beta1, beta2, 1 - beta2,
            math.sqrt(1 - beta2**t), eps, -(lr / (1 - beta1**t)),
            MAXIMIZE=maximize, DECOUPLED=decoupled and weight_decay != 0,
            L2=not decoupled and weight_decay != 0, AMSGRAD=amsgrad,
            SMALL_WEIGHT=abs(1 - beta1) < 0.5, BLOCK=BLOCK,
        )  # fmt: skip


def update_with_op_arguments(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2,
    weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    """The op's CUDA path on every parameter, called with the op's arguments (the tests run it
    on CPU tensors under the Triton interpreter)."""
    scalars = [float(h.item()) for h in (lr, beta1, beta2, weight_decay, eps)]
    for i, p in enumerate(params):
        tensors = [p, grads[i], exp_avgs[i], exp_avg_sqs[i]]
        tensors += [max_exp_avg_sqs[i]] if amsgrad else []
        update(tensors, steps[i], scalars, (amsgrad, maximize, decoupled_weight_decay))


def supports(tensors: list[Tensor]) -> bool:
    return all(t.is_contiguous() and t.dtype in TRITON_DTYPES for t in tensors)
