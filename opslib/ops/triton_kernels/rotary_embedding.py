"""rotary_embedding's Triton kernel: the forward, or dL/dx (``inverse``), in one pass over rows
of the last dim (``opslib/ops/rotary_embedding.py`` derives both). x of at most 4 dims with a
contiguous last dim; cos and sin read through their broadcast to x (stride 0), never copied."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from opslib.core.cuda_path import cdiv, next_power_of_2

ROWS = 16  # rows per program


@triton.jit
def _row_offsets(rows, size1, size2, stride0, stride1, stride2):
    """Element offsets of rows (indices over the 3 leading dims of [n0, n1, n2, D])."""
    i2 = rows % size2
    i1 = (rows // size2) % size1
    i0 = rows // (size2 * size1)
    return i0 * stride0 + i1 * stride1 + i2 * stride2


@triton.jit
def rotary_embedding_kernel(
    x_ptr, cos_ptr, sin_ptr, y_ptr, R, H, size1, size2,
    xs0, xs1, xs2, cs0, cs1, cs2, ss0, ss1, ss2, ys0, ys1, ys2,
    INVERSE: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """y₁ = x₁c₁ - x₂s₁, y₂ = x₂c₂ + x₁s₂ (forward); y₁ = x₁c₁ + x₂s₂, y₂ = x₂c₂ - x₁s₁
    (inverse: dL/dx from x = grad_y)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < R) & (cols[None, :] < H)
    x_row = _row_offsets(rows, size1, size2, xs0, xs1, xs2)[:, None] + cols[None, :]
    c_row = _row_offsets(rows, size1, size2, cs0, cs1, cs2)[:, None] + cols[None, :]
    s_row = _row_offsets(rows, size1, size2, ss0, ss1, ss2)[:, None] + cols[None, :]
    y_row = _row_offsets(rows, size1, size2, ys0, ys1, ys2)[:, None] + cols[None, :]
    x1 = tl.load(x_ptr + x_row, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_row + H, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + c_row, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + c_row + H, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + s_row, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + s_row + H, mask=mask, other=0.0).to(tl.float32)
    if INVERSE:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(y_ptr + y_row, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + y_row + H, y2.to(y_ptr.dtype.element_ty), mask=mask)


def supports(x: Tensor, cos: Tensor, sin: Tensor) -> bool:
    """x of 1 to 4 dims with a contiguous last dim (cos and sin are made so if they are not)."""
    return 1 <= x.dim() <= 4 and x.stride(-1) == 1


def _leading(t: Tensor) -> list[int]:
    """The strides of t's 3 leading dims, t seen as [n0, n1, n2, D]."""
    return [0] * (4 - t.dim()) + list(t.stride()[:-1])


def _rows_of(t: Tensor, width: int) -> Tensor:
    """t with a last dim of ``width`` contiguous elements (a last dim of 1, or none, made that
    wide: it is broadcast along it)."""
    if t.dim() == 0 or t.shape[-1] != width:
        return t.expand(*t.shape[:-1], width).contiguous()
    return t if t.stride(-1) == 1 else t.contiguous()


def rotate(x: Tensor, cos: Tensor, sin: Tensor, inverse: bool) -> Tensor:
    y = torch.empty_like(x)
    x = x if x.shape[-1] <= 1 or x.stride(-1) == 1 else x.contiguous()
    cos, sin = (_rows_of(t, x.shape[-1]).expand(x.shape) for t in (cos, sin))
    out = y if y.stride(-1) == 1 else torch.empty_like(x, memory_format=torch.contiguous_format)
    sizes = [1] * (4 - x.dim()) + list(x.shape)
    h = sizes[3] // 2
    rows = x.numel() // sizes[3] if sizes[3] else 0
    if rows and h:
        rotary_embedding_kernel[(cdiv(rows, ROWS),)](
            x, cos, sin, out, rows, h, sizes[1], sizes[2],
            *_leading(x), *_leading(cos), *_leading(sin), *_leading(out),
            INVERSE=inverse, ROWS=ROWS, BLOCK_H=next_power_of_2(h),
        )  # fmt: skip
    if out is not y:
        y.copy_(out)
    return y
