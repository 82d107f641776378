"""swiglu's Triton kernels: y = silu(gate) · up in one pass, and both gradients in one pass
(``opslib/ops/swiglu.py`` derives them). Contiguous gate and up (the op's gate); grad_y in any
layout."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from opslib.core.cuda_path import BLOCK, cdiv


@triton.jit
def swiglu_forward_kernel(gate_ptr, up_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = z * tl.sigmoid(z) * u
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_backward_kernel(
    g_ptr, gate_ptr, up_ptr, grad_gate_ptr, grad_up_ptr, n, BLOCK: tl.constexpr
):
    """dL/dgate = g · up · s · (1 + gate(1 - s)), dL/dup = g · gate · s."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(z)
    grad_gate = g * u * s * (1.0 + z * (1.0 - s))
    tl.store(grad_gate_ptr + offs, grad_gate.to(grad_gate_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_up_ptr + offs, (g * z * s).to(grad_up_ptr.dtype.element_ty), mask=mask)


def forward(gate: Tensor, up: Tensor) -> Tensor:
    y = torch.empty_like(gate)
    n = gate.numel()
    if n:
        swiglu_forward_kernel[(cdiv(n, BLOCK),)](gate, up, y, n, BLOCK=BLOCK)
    return y


def backward(grad_y: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    grad_y = grad_y.contiguous()
    grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    if n:
        swiglu_backward_kernel[(cdiv(n, BLOCK),)](
            grad_y, gate, up, grad_gate, grad_up, n, BLOCK=BLOCK
        )
    return grad_gate, grad_up
