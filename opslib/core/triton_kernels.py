"""Triton kernels for the CUDA path: one pass over memory per forward and per backward.

Imported only through ``opslib.core.triton_launchers`` (lazily: opslib works without
Triton). The same kernels run on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``), which is how CI tests them without a GPU. Every kernel loads its
inputs, computes in float32 (so float16 and bfloat16 round once, at the store) and stores in the
output's dtype.

The formulas are the ones derived in each op's file (``opslib/ops/<name>.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from opslib.core import unary_codes as codes

# Jitted code may read only constexpr globals: the op codes of triton_launchers.py, wrapped.
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
