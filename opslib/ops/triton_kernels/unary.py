"""The one-input ops' Triton kernels (square, cube, exp, relu, sigmoid, tanh): one forward
and one backward kernel shared by all six, the formula picked by a code of ``unary_codes.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from opslib.core.cuda_path import BLOCK, cdiv, dense, in_layout_of
from opslib.ops.triton_kernels import unary_codes as codes

# Jitted code may read only constexpr globals: the op codes, wrapped.
SQUARE = tl.constexpr(codes.SQUARE)
CUBE = tl.constexpr(codes.CUBE)
EXP = tl.constexpr(codes.EXP)
RELU = tl.constexpr(codes.RELU)
SIGMOID = tl.constexpr(codes.SIGMOID)


@triton.jit
def _tanh(x):
    """tanh in float32 from float64 exp: (1 - e^-2|x|) / (1 + e^-2|x|), and its Taylor series
    for |x| < 1e-3 where 1 - e^-2|x| would cancel. Saturates to ±1; nan stays nan."""
    ax = tl.abs(x).to(tl.float64)
    t = tl.exp(-2.0 * ax)
    ratio = (1.0 - t) / (1.0 + t)
    series = ax * (1.0 - ax * ax / 3.0 + 2.0 * ax * ax * ax * ax / 15.0)
    r = tl.where(ax < 1e-3, series, ratio).to(tl.float32)
    return tl.where(x < 0, -r, r)


@triton.jit
def unary_forward_kernel(x_ptr, y_ptr, n, OP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if OP == SQUARE:
        y = x * x
    elif OP == CUBE:
        y = x * x * x
    elif OP == EXP:
        y = tl.exp(x)
    elif OP == RELU:
        y = tl.where(x < 0, 0.0, x)  # "x < 0", not "x > 0": nan stays nan, as torch.relu
    elif OP == SIGMOID:
        y = tl.sigmoid(x)
    else:
        y = _tanh(x)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def unary_backward_kernel(g_ptr, saved_ptr, out_ptr, n, OP: tl.constexpr, BLOCK: tl.constexpr):
    """dL/dx from g and the saved tensor: x for square and cube, y for the others."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(saved_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if OP == SQUARE:
        d = g * 2.0 * s
    elif OP == CUBE:
        d = g * 3.0 * s * s
    elif OP == EXP:
        d = g * s
    elif OP == RELU:
        d = tl.where(s <= 0, 0.0, g)
    elif OP == SIGMOID:
        d = g * s * (1.0 - s)
    else:
        d = g * (1.0 - s * s)
    tl.store(out_ptr + offs, d.to(out_ptr.dtype.element_ty), mask=mask)


def forward(op: int, x: Tensor) -> Tensor:
    x = dense(x)
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        unary_forward_kernel[(cdiv(n, BLOCK),)](x, y, n, OP=op, BLOCK=BLOCK)
    return y


def backward(op: int, grad_y: Tensor, saved: Tensor) -> Tensor:
    saved = dense(saved)
    grad_y = in_layout_of(grad_y, saved)
    out = torch.empty_like(saved)
    n = saved.numel()
    if n:
        unary_backward_kernel[(cdiv(n, BLOCK),)](grad_y, saved, out, n, OP=op, BLOCK=BLOCK)
    return out
