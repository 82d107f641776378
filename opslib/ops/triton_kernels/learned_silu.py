"""learned_silu's Triton kernels: y = slope · x · sigmoid(x) in one pass, and both gradients in
one pass (the slope's as per-tile column sums); ``opslib/ops/learned_silu.py`` derives them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from opslib.core.cuda_path import BLOCK, cdiv, next_power_of_2


@triton.jit
def learned_silu_forward_kernel(
    x_ptr, slope_ptr, y_ptr, n, C, PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr
):
    """y = slope · x · sigmoid(x); x viewed as [n / C, C], slope one value or one per column."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if PER_CHANNEL:
        a = tl.load(slope_ptr + offs % C, mask=mask, other=0.0).to(tl.float32)
    else:
        a = tl.load(slope_ptr).to(tl.float32)
    y = a * x * tl.sigmoid(x)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def learned_silu_backward_kernel(
    g_ptr,
    x_ptr,
    slope_ptr,
    grad_x_ptr,
    partial_ptr,
    R,
    C,
    PER_CHANNEL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One pass over a [BLOCK_R, BLOCK_C] tile of x viewed as [R, C]:
    dL/dx = g · slope · s · (1 + x(1 - s)), and the tile's column sums of g · x · s (the slope
    gradient's terms) into partial[row_block, column]; the caller sums that small buffer."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    offs = rows[:, None] * C + cols[None, :]
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if PER_CHANNEL:
        a = tl.load(slope_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    else:
        a = tl.load(slope_ptr).to(tl.float32)
    s = tl.sigmoid(x)
    grad_x = g * a * s * (1.0 + x * (1.0 - s))
    tl.store(grad_x_ptr + offs, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
    terms = tl.where(mask, g * x * s, 0.0)
    tl.store(partial_ptr + tl.program_id(0) * C + cols, tl.sum(terms, axis=0), mask=cols < C)


def _channels(x: Tensor, slope: Tensor) -> int:
    """Columns of x seen as [R, C]: the slope's length for a per-channel slope, else the last
    dim (any split works for a single slope; the last dim keeps tiles inside rows)."""
    if slope.numel() != 1:
        return slope.shape[-1]
    return max(x.shape[-1], 1) if x.dim() else 1


def supports(x: Tensor, slope: Tensor) -> bool:
    """Contiguous x (channels are the last dim in memory, and the output keeps x's layout as
    the fake promises) with a single slope or one per channel; anything else uses torch ops."""
    return x.is_contiguous() and (
        slope.numel() == 1 or (x.dim() >= 1 and tuple(slope.shape) == (x.shape[-1],))
    )


def forward(x: Tensor, slope: Tensor) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        learned_silu_forward_kernel[(cdiv(n, BLOCK),)](
            x,
            slope.contiguous(),
            y,
            n,
            _channels(x, slope),
            PER_CHANNEL=slope.numel() != 1,
            BLOCK=BLOCK,
        )
    return y


def backward(grad_y: Tensor, x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    x = x.contiguous()
    grad_y = grad_y.contiguous()
    grad_x = torch.empty_like(x)
    c = _channels(x, slope)
    r = x.numel() // c if c else 0
    block_r, block_c = 32, min(128, next_power_of_2(max(c, 1)))
    partial = torch.zeros(max(cdiv(r, block_r), 1), c, device=x.device, dtype=torch.float32)
    if x.numel():
        grid = (cdiv(r, block_r), cdiv(c, block_c))
        learned_silu_backward_kernel[grid](
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
