r"""``customgrad::swiglu(Tensor gate, Tensor up) -> Tensor``:
:math:`y = \operatorname{silu}(\text{gate}) \cdot \text{up}`, the gated activation of a
Llama-family MLP, ``down_proj(silu(gate_proj(x)) * up_proj(x))``.

Shapes
------
- ``gate``, ``up``: one shape (the public function ``swiglu`` broadcasts them first, as native's
  ``F.silu(gate) * up`` does, and expand's backward sums the gradients back).
- ``y``: that shape.

Forward
-------
With :math:`s = \sigma(\text{gate})`:

.. math::

    y = \text{gate}\cdot s \cdot \text{up}

Backward
--------
With :math:`g = \partial L/\partial y`, and :math:`\mathrm{d}s/\mathrm{d}z = s(1 - s)`:

.. math::

    \operatorname{silu}(z) &= z\, s(z) \\
    \operatorname{silu}'(z) &= s + z\, s(1 - s) = s\,\bigl(1 + z(1 - s)\bigr) \\[4pt]
    \frac{\partial L}{\partial\,\text{up}} &= g \operatorname{silu}(\text{gate})
        = g\cdot\text{gate}\cdot s \\
    \frac{\partial L}{\partial\,\text{gate}}
        &= g\cdot\text{up}\cdot\operatorname{silu}'(\text{gate})
        = g\cdot\text{up}\cdot s\,\bigl(1 + \text{gate}\,(1 - s)\bigr)

The first-order backward is an op of its own, ``customgrad::swiglu_backward(grad_y, gate, up)
-> (grad_gate, grad_up)``, so that compile and export see the kernel it runs.

Extreme values
--------------
For large negative gate (-1e4) s is exactly 0 and both gradients are exactly 0, never nan; for
large positive gate, :math:`1 - s` is exactly 0 and :math:`\operatorname{silu}'(\text{gate}) = 1`.
At gate = ±inf the formula meets inf · 0 and gives nan, as native does.

Double backward
---------------
The backward of swiglu_backward. With :math:`a = \partial L/\partial(\text{grad\_gate})`,
:math:`b = \partial L/\partial(\text{grad\_up})`, :math:`h = \operatorname{silu}'(\text{gate})`
and its derivative :math:`h' = s(1 - s)\,(2 + z(1 - 2s))` (derived in learned_silu, whose
``silu_derivatives`` computes both):

.. math::

    \frac{\partial L}{\partial g} &= a\cdot\text{up}\cdot h + b\cdot\text{gate}\cdot s \\
    \frac{\partial L}{\partial\,\text{gate}} &= a\, g\cdot\text{up}\cdot h' + b\, g\, h
        \qquad \Bigl(\frac{\mathrm{d}(\text{gate}\cdot s)}{\mathrm{d}\,\text{gate}} = h\Bigr) \\
    \frac{\partial L}{\partial\,\text{up}} &= a\, g\, h

All torch ops, so autograd differentiates them again (third order and up).

Saved for backward
------------------
gate and up (s is recomputed from gate). Native ``F.silu(gate) * up`` keeps gate, up and
silu(gate): three tensors of y's size where this op keeps two.

A GELU-gated variant?
---------------------
GEGLU, :math:`\operatorname{gelu}(\text{gate})\cdot\text{up}`, does not belong in this op: its
derivative is gelu's (erf or tanh form, an ``approximate`` argument), a different formula and
kernel; it would be an op of its own, ``geglu(gate, up, approximate)``. No Llama-family model
uses it, so it is not built.

Kernels
-------
- CPU, float32 and float64: the forward and the backward each one vectorized, multi-threaded
  pass over memory (``opslib/csrc/swiglu.cpp``; native eager makes two passes forward and four
  backward). float16/bfloat16 and machines where the C++ kernels are not built use the torch-op
  formulas below (half precision computed in float32, rounded once).
- CUDA: one Triton kernel forward and one backward (``opslib/ops/triton_kernels/swiglu.py``) for
  contiguous float32/float16/bfloat16 tensors; others, the torch-op formulas.
- torch.compile with inductor: the forward and backward formulas, fused by inductor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core import cpu_kernels, cuda_path
from opslib.core.checks import (
    check_floating_input,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
)
from opslib.core.precision import HALF_DTYPES
from opslib.core.registration import (
    define_op,
    in_layout_of,
    only_plain_tensors,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import register_sharding_rule
from opslib.ops.learned_silu import silu_derivatives

CPU_KERNEL_DTYPES = (torch.float32, torch.float64)


def _check_swiglu(gate: Tensor, up: Tensor) -> None:
    check_floating_input("swiglu", "gate", gate)
    check_floating_input("swiglu", "up", up)
    check_same_dtype_and_device("swiglu", {"gate": gate, "up": up})
    if gate.shape != up.shape:
        raise ValueError(
            f"customgrad.swiglu: gate of shape {fmt_shape(gate.shape)} and up of shape "
            f"{fmt_shape(up.shape)} must have the same shape (opslib.swiglu broadcasts them)"
        )


def _check_swiglu_backward(grad_y: Tensor, gate: Tensor, up: Tensor) -> None:
    _check_swiglu(gate, up)
    check_floating_input("swiglu_backward", "grad_y", grad_y)
    check_same_dtype_and_device("swiglu_backward", {"gate": gate, "grad_y": grad_y})
    if grad_y.shape != gate.shape:
        raise ValueError(
            f"customgrad.swiglu_backward: grad_y of shape {fmt_shape(grad_y.shape)} must have "
            f"gate's shape {fmt_shape(gate.shape)}"
        )


def cpu_kernel_takes(gate: Tensor) -> bool:
    """Calls the C++ kernels compute: CPU, float32 or float64, the kernels built (any layout:
    the kernels copy what is not laid out alike)."""
    return gate.is_cpu and gate.dtype in CPU_KERNEL_DTYPES and cpu_kernels.is_loaded()


def _triton_takes(gate: Tensor, up: Tensor, *others: Tensor) -> bool:
    return cuda_path.takes(gate, up, *others) and gate.is_contiguous() and up.is_contiguous()


def _forward_formula(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


def _swiglu_kernel(gate: Tensor, up: Tensor) -> Tensor:
    _check_swiglu(gate, up)
    if _triton_takes(gate, up):
        return cuda_path.kernels("swiglu").forward(gate, up)  # CUDA: one Triton pass
    if cpu_kernel_takes(gate):
        return torch.ops.opslib_cpu.swiglu_forward(gate, up)  # one pass (csrc/swiglu.cpp)
    if gate.dtype in HALF_DTYPES:
        return in_layout_of(_forward_formula(gate.float(), up.float()).to(gate.dtype), gate)
    return in_layout_of(_forward_formula(gate, up), gate)


def _swiglu_fake(gate: Tensor, up: Tensor) -> Tensor:
    _check_swiglu(gate, up)
    return torch.empty_like(gate)


def _backward_formula(grad_y: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """dL/dgate and dL/dup in torch ops (float16/bfloat16 computed in float32, rounded once)."""
    dtype = gate.dtype
    if dtype in HALF_DTYPES:
        grad_y, gate, up = grad_y.float(), gate.float(), up.float()
    s = torch.sigmoid(gate)
    grad_gate = grad_y * up * s * (1 + gate * (1 - s))
    grad_up = grad_y * gate * s
    return grad_gate.to(dtype), grad_up.to(dtype)


def _swiglu_backward_kernel(grad_y: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    _check_swiglu_backward(grad_y, gate, up)
    if _triton_takes(gate, up, grad_y):
        # CUDA: one Triton pass. This is the kernel of an op with its own autograd formula: a
        # double backward differentiates that formula, not this kernel.
        return cuda_path.kernels("swiglu").backward(grad_y, gate, up)
    if cpu_kernel_takes(gate):
        return torch.ops.opslib_cpu.swiglu_backward(grad_y, gate, up)  # one pass (csrc/)
    grad_gate, grad_up = _backward_formula(grad_y, gate, up)
    return in_layout_of(grad_gate, gate), in_layout_of(grad_up, up)


def _swiglu_backward_fake(grad_y: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    _check_swiglu_backward(grad_y, gate, up)
    return torch.empty_like(gate), torch.empty_like(up)


def _swiglu_backward_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _swiglu_double_backward(ctx, grad_grad_gate: Tensor, grad_grad_up: Tensor):
    """The derivation is in the module docstring (a = grad_grad_gate, b = grad_grad_up)."""
    grad_y, gate, up = ctx.saved_tensors
    needs_g, needs_gate, needs_up = input_grad_flags(ctx, 3)
    a, b = grad_grad_gate, grad_grad_up
    s, h, dh = silu_derivatives(gate)
    dg = a * up * h + b * gate * s if needs_g else None
    dgate = a * grad_y * up * dh + b * grad_y * h if needs_gate else None
    dup = a * grad_y * h if needs_up else None
    return dg, dgate, dup


_swiglu_backward = define_op(
    "swiglu_backward",
    "(Tensor grad_y, Tensor gate, Tensor up) -> (Tensor, Tensor)",
    kernel=_swiglu_backward_kernel,
    fake=_swiglu_backward_fake,
    setup_context=_swiglu_backward_setup_context,
    backward=_swiglu_double_backward,
)
register_inductor_decomposition(_swiglu_backward, _backward_formula)


def _swiglu_setup_context(ctx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
    needs_gate, needs_up = input_grad_flags(ctx, 2)
    gate, up = inputs
    # dL/dup needs gate alone; dL/dgate needs both
    ctx.save_for_backward(gate if (needs_gate or needs_up) else None, up if needs_gate else None)


def _swiglu_autograd_backward(ctx, grad_y: Tensor):
    gate, up = ctx.saved_tensors
    needs_gate, needs_up = input_grad_flags(ctx, 2)
    if not needs_gate:
        # Only up: dL/dup = g · silu(gate), one native kernel and a product (no dL/dgate).
        return None, grad_y * F.silu(gate)
    if torch.is_grad_enabled() or not only_plain_tensors((grad_y, gate, up)):
        # create_graph=True (its own backward is recorded), or compile/export tracing: the op
        grad_gate, grad_up = _swiglu_backward(grad_y, gate, up)
    else:
        # A plain first-order backward: the kernel the op would run, without the op's dispatch
        # (~30 µs a call: the forward validated these tensors).
        grad_gate, grad_up = _swiglu_backward_kernel(grad_y, gate, up)
    return grad_gate, grad_up if needs_up else None


_swiglu = define_op(
    "swiglu",
    "(Tensor gate, Tensor up) -> Tensor",
    kernel=_swiglu_kernel,
    fake=_swiglu_fake,
    setup_context=_swiglu_setup_context,
    backward=_swiglu_autograd_backward,
)


def _swiglu_vmap(info, in_dims, gate: Tensor, up: Tensor):
    """Batch dims to the front; an unbatched operand is expanded to the batch (the op takes
    one shape)."""

    def batched(t: Tensor, dim: int | None) -> Tensor:
        return t.movedim(dim, 0) if dim is not None else t.expand(info.batch_size, *t.shape)

    return _swiglu(batched(gate, in_dims[0]), batched(up, in_dims[1])), 0


register_vmap(_swiglu, _swiglu_vmap)
# Under torch.compile, inductor computes the forward from the formula above, in one loop fused
# with its neighbours (and the backward from _backward_formula).
register_inductor_decomposition(_swiglu, _forward_formula)


# DTensor (core/sharding.py): elementwise in two operands of one shape, so both sharded alike
# along any dim, or both replicated; never Partial.
def _swiglu_sharding(gate, up):
    from torch.distributed.tensor import Replicate, Shard

    rules = [([Replicate()], [Replicate(), Replicate()])]
    rules += [([Shard(d)], [Shard(d), Shard(d)]) for d in range(gate.ndim)]
    return rules


def _swiglu_backward_sharding(grad_y, gate, up):
    from torch.distributed.tensor import Replicate, Shard

    rules = [([Replicate(), Replicate()], [Replicate()] * 3)]
    rules += [([Shard(d), Shard(d)], [Shard(d)] * 3) for d in range(gate.ndim)]
    return rules


register_sharding_rule(_swiglu, _swiglu_sharding)
register_sharding_rule(_swiglu_backward, _swiglu_backward_sharding)

# No autocast rule: the native expression (silu, mul) is on neither autocast list.


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) · up, as native's ``F.silu(gate) * up``; gradients in ``opslib/ops/swiglu.py``.

    gate and up broadcast against each other as native's product does (the op itself takes one
    shape: the public function expands them, and expand's backward sums the gradients back).
    """
    if not torch.jit.is_scripting():
        gate, up = _broadcast(gate, up)
    return _swiglu(gate, up)


@torch.jit.unused  # TorchScript compiles swiglu() without this (the operands as given)
def _broadcast(gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """gate and up expanded to their broadcast shape where they differ; shapes that do not
    broadcast are refused here, naming the op."""
    if not (isinstance(gate, Tensor) and isinstance(up, Tensor)) or gate.shape == up.shape:
        return gate, up
    shape = _broadcast_shape(gate.shape, up.shape)
    if shape is None:
        raise ValueError(
            f"customgrad.swiglu: gate of shape {fmt_shape(gate.shape)} and up of shape "
            f"{fmt_shape(up.shape)} do not broadcast"
        )
    return gate.expand(shape), up.expand(shape)


def _broadcast_shape(a: torch.Size, b: torch.Size) -> list[int] | None:
    """The broadcast shape of a and b, or None (plain Python: compile traces it as it is)."""
    a, b = [1] * (len(b) - len(a)) + list(a), [1] * (len(a) - len(b)) + list(b)
    if any(m != n and m != 1 and n != 1 for m, n in zip(a, b, strict=True)):
        return None
    return [n if m == 1 else m for m, n in zip(a, b, strict=True)]


def swiglu_onnx(gate, up):
    """ONNX translation: Mul(Mul(gate, Sigmoid(gate)), up), standard ONNX only."""
    from opslib.onnx import opset

    return opset.Mul(opset.Mul(gate, opset.Sigmoid(gate)), up)


register_onnx_translation(_swiglu, swiglu_onnx)
