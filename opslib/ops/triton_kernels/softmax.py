"""softmax's and log_softmax's Triton kernels: one row per program, whole in registers
(``opslib/ops/softmax.py`` and ``log_softmax.py`` derive them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from opslib.core.cuda_path import next_power_of_2

# Rows longer than this are left to torch ops (a row lives in one program's registers).
SOFTMAX_MAX_ROW = 16384


@triton.jit
def softmax_forward_kernel(x_ptr, y_ptr, C, LOG: tl.constexpr, BLOCK_C: tl.constexpr):
    """One row of x viewed as [R, C], whole in registers: softmax (or log_softmax) over it,
    from max-shifted exponentials (opslib/ops/softmax.py derives both)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(x_ptr + row * C + cols, mask=mask, other=-float("inf")).to(tl.float32)
    shifted = x - tl.max(x, axis=0)
    e = tl.exp(shifted)  # 0 in the masked lanes
    total = tl.sum(e, axis=0)
    if LOG:
        y = shifted - tl.log(total)
    else:
        y = e / total
    tl.store(y_ptr + row * C + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_backward_kernel(g_ptr, y_ptr, dx_ptr, C, LOG: tl.constexpr, BLOCK_C: tl.constexpr):
    """One row: dL/dx = y(g - Σ g·y) for softmax, g - exp(y)·Σ g for log_softmax (y saved)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    g = tl.load(g_ptr + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * C + cols, mask=mask, other=0.0).to(tl.float32)
    if LOG:
        dx = g - tl.exp(y) * tl.sum(g, axis=0)
    else:
        dx = y * (g - tl.sum(g * y, axis=0))
    tl.store(dx_ptr + row * C + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def supports(x: Tensor, dim: int) -> bool:
    """Along the last dim of a contiguous x of at least one dim, rows up to SOFTMAX_MAX_ROW."""
    return (
        x.dim() >= 1
        and dim % x.dim() == x.dim() - 1
        and x.is_contiguous()
        and 0 < x.shape[-1] <= SOFTMAX_MAX_ROW
    )


def forward(x: Tensor, dim: int, log: bool) -> Tensor:
    y = torch.empty_like(x)
    c = x.shape[-1]
    if x.numel():
        softmax_forward_kernel[(x.numel() // c,)](x, y, c, LOG=log, BLOCK_C=next_power_of_2(c))
    return y


def backward(grad_y: Tensor, y: Tensor, dim: int, log: bool) -> Tensor:
    grad_y = grad_y.contiguous()
    grad_x = torch.empty_like(y)
    c = y.shape[-1]
    if y.numel():
        softmax_backward_kernel[(y.numel() // c,)](
            grad_y, y, grad_x, c, LOG=log, BLOCK_C=next_power_of_2(c)
        )
    return grad_x
