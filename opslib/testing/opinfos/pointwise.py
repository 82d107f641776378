"""The op table's pointwise ops: square, cube, exp, relu, sigmoid, tanh, learned_silu and
swiglu, each with its samples, reference, bad calls and kernels beside its entry.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core import cuda_path
from opslib.ops.cube import cube
from opslib.ops.exp import exp
from opslib.ops.learned_silu import cpu_kernel_takes as learned_silu_cpu_kernel_takes
from opslib.ops.learned_silu import learned_silu
from opslib.ops.relu import relu
from opslib.ops.sigmoid import sigmoid
from opslib.ops.square import square
from opslib.ops.swiglu import swiglu
from opslib.ops.tanh import tanh
from opslib.ops.triton_kernels import unary_codes
from opslib.testing.opinfo import (
    ErrorInput,
    Sample,
    unary_extremes,
)
from opslib.testing.opinfos.common import (
    OpslibOpInfo,
    TritonPath,
    _every_call,
    _leaf_view,
    _make,
    _t,
    _unary_batch,
    unary_samples,
)


def _learned_silu_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def view(v, rg=requires_grad):
        return _leaf_view(v, rg)

    base = torch.randn(6, 5, device=device, dtype=dtype)
    return [
        Sample("slope[1]", (make((4, 5)), make((1,)))),
        Sample("slope[]", (make((4, 5)), make(()))),
        Sample("slope[C]", (make((4, 5)), make((5,)))),
        Sample("0-d", (make(()), make(()))),
        Sample("empty", (make((0, 5)), make((5,)))),
        Sample("4-d-slope[C]", (make((2, 3, 4, 5)), make((5,)))),
        Sample("transposed", (view(base.t()), make((6,)))),
        Sample("offset-slice", (view(base[1:]), make((5,)))),
        Sample("strided-slice", (view(base[::2, 1::2]), make((1,)))),
        Sample(
            "expanded",
            (view(torch.randn(3, 1, device=device, dtype=dtype).expand(3, 4)), make((1,))),
        ),
        Sample("slope-no-grad", (make((4, 5)), make((1,), rg=False))),
        Sample("x-no-grad", (make((4, 5), rg=False), make((5,)))),
    ]


def _learned_silu_batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
    width = 64
    return (
        torch.randn(rows, width, device=device, dtype=dtype),
        torch.rand(width, device=device, dtype=dtype) + 0.5,
    )


def _native_cube(x: Tensor) -> Tensor:
    return torch.pow(x, 3)


def _native_learned_silu(x: Tensor, slope: Tensor) -> Tensor:
    return slope * x * torch.sigmoid(x)


def _learned_silu_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    x = draw(tensors())
    # slope must broadcast to x without enlarging it: [] always; [1] and [C] need a dim
    slope_shape = draw(st.sampled_from([[], [1], list(x.shape[-1:])] if x.dim() else [[]]))
    return (x, draw(tensors(shape=slope_shape)))


def _learned_silu_extremes(x: Tensor) -> tuple:
    return (x, torch.tensor([0.75], requires_grad=x.requires_grad))


def _learned_silu_infinite_slope(args: tuple) -> bool:
    """With an infinite slope, native computes dL/dx = slope·s + (slope·x)·s(1-s) as inf + inf·0
    = nan where sigmoid(x) rounds to 1; the op's slope·s·(1 + x(1-s)) gives the limit, ±inf."""
    return bool(torch.isinf(args[1]).any())


def _learned_silu_error_inputs() -> list[ErrorInput]:
    return [
        ErrorInput(
            "slope wrong width",
            lambda: (_t(4, 5), _t(3)),
            ValueError,
            r"customgrad\.learned_silu: slope of shape \[3\] does not broadcast",
        ),
        ErrorInput(
            "slope higher rank",
            lambda: (_t(4, 5), _t(2, 4, 5)),
            ValueError,
            r"customgrad\.learned_silu: slope of shape \[2, 4, 5\] does not broadcast",
        ),
        ErrorInput(
            "slope [2, 1] for a 0-d x",
            lambda: (_t(), _t(2, 1)),
            ValueError,
            r"customgrad\.learned_silu: slope of shape \[2, 1\] does not broadcast to x's "
            r"shape \[\]",
        ),
    ]


def _unary_triton(kernel: int, saved: Callable[[Tensor], Tensor] | None = None) -> TritonPath:
    """The one-input kernels: ``saved`` is what the op keeps for backward, computed from x (y for
    exp/relu/sigmoid/tanh; x itself when None)."""
    return TritonPath(
        forward=lambda x: cuda_path.kernels("unary").forward(kernel, x),
        backward=lambda g, x: (
            cuda_path.kernels("unary").backward(kernel, g, x if saved is None else saved(x)),
        ),
    )


_LEARNED_SILU_TRITON = TritonPath(
    forward=lambda x, slope: cuda_path.kernels("learned_silu").forward(x, slope),
    backward=lambda g, x, slope: cuda_path.kernels("learned_silu").backward(g, x, slope),
    supports=lambda x, slope: cuda_path.kernels("learned_silu").supports(x, slope),
)


def _learned_silu_fast_path(x: Tensor, slope: Tensor) -> bool:
    return learned_silu_cpu_kernel_takes(x, slope)  # other slope forms: the Python kernel


def _swiglu_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    """gate and up of one shape (the op's own; broadcasting is the public function's, tested
    in tests/test_decoder_ops.py), alike and differently laid out."""

    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def view(v, rg=requires_grad):
        return _leaf_view(v, rg)

    def base():
        return torch.randn(6, 5, device=device, dtype=dtype)

    def channels_last():
        x = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
        return view(x.to(memory_format=torch.channels_last))

    return [
        Sample("matrix", (make((4, 5)), make((4, 5)))),
        Sample("0-d", (make(()), make(()))),
        Sample("empty", (make((0, 5)), make((0, 5)))),
        Sample("4-d", (make((2, 3, 4, 5)), make((2, 3, 4, 5)))),
        Sample("both-transposed", (view(base().t()), view(base().t()))),
        Sample("gate-transposed", (view(base().t()), make((5, 6)))),
        Sample("strided-slice", (view(base()[::2, 1::2]), view(base()[::2, 1::2]))),
        Sample(
            "up-expanded",
            (make((3, 4)), view(torch.randn(3, 1, device=device, dtype=dtype).expand(3, 4))),
        ),
        Sample("channels-last", (channels_last(), channels_last())),
        Sample("up-no-grad", (make((4, 5)), make((4, 5), rg=False))),
        Sample("gate-no-grad", (make((4, 5), rg=False), make((4, 5)))),
    ]


def _swiglu_batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
    return (
        torch.randn(rows, 64, device=device, dtype=dtype),
        torch.randn(rows, 64, device=device, dtype=dtype),
    )


def _native_swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


def _swiglu_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    gate = draw(tensors())
    return (gate, draw(tensors(shape=list(gate.shape))))


def _swiglu_extremes(gate: Tensor) -> tuple:
    """The extreme values in gate (silu's argument), a plain up."""
    return (gate, torch.full_like(gate, 0.75).requires_grad_(gate.requires_grad))


def _swiglu_error_inputs() -> list[ErrorInput]:
    return [
        ErrorInput(
            "shapes that do not broadcast",
            lambda: (_t(4, 5), _t(3)),
            ValueError,
            r"customgrad\.swiglu: gate of shape \[4, 5\] and up of shape \[3\] do not broadcast",
        ),
        ErrorInput(
            "up of another dtype",
            lambda: (_t(4, 5), _t(4, 5).double()),
            TypeError,
            r"customgrad\.swiglu: gate and up must have the same dtype",
        ),
    ]


_SWIGLU_TRITON = TritonPath(
    forward=lambda gate, up: cuda_path.kernels("swiglu").forward(gate, up),
    backward=lambda g, gate, up: cuda_path.kernels("swiglu").backward(g, gate, up),
    supports=lambda gate, up: gate.is_contiguous() and up.is_contiguous(),
)


OPINFOS: list[OpslibOpInfo] = [
    OpslibOpInfo(
        op=torch.ops.customgrad.square,
        func=square,
        reference=torch.square,
        reference_text="torch.square(x)",
        formula="y = x² ; dL/dx = 2x·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        triton=_unary_triton(unary_codes.SQUARE),
        cpu_fast_path=_every_call,
        extreme_inputs=unary_extremes,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.cube,
        func=cube,
        reference=_native_cube,
        reference_text="torch.pow(x, 3)",
        formula="y = x³ ; dL/dx = 3x²·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        triton=_unary_triton(unary_codes.CUBE),
        cpu_fast_path=_every_call,
        extreme_inputs=unary_extremes,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.exp,
        func=exp,
        reference=torch.exp,
        reference_text="torch.exp(x)",
        formula="y = eˣ ; dL/dx = y·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        triton=_unary_triton(unary_codes.EXP, torch.exp),
        cpu_fast_path=_every_call,
        extreme_inputs=unary_extremes,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.relu,
        func=relu,
        reference=torch.relu,
        reference_text="torch.relu(x)",
        formula="y = max(x, 0) ; dL/dx = 0 where y ≤ 0, else g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        triton=_unary_triton(unary_codes.RELU, torch.relu),
        cpu_fast_path=_every_call,
        extreme_inputs=unary_extremes,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.sigmoid,
        func=sigmoid,
        reference=torch.sigmoid,
        reference_text="torch.sigmoid(x)",
        formula="y = 1/(1+e⁻ˣ) ; dL/dx = y(1-y)·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        triton=_unary_triton(unary_codes.SIGMOID, torch.sigmoid),
        cpu_fast_path=_every_call,
        extreme_inputs=unary_extremes,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.tanh,
        func=tanh,
        reference=torch.tanh,
        reference_text="torch.tanh(x)",
        formula="y = tanh(x) ; dL/dx = (1-y²)·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        triton=_unary_triton(unary_codes.TANH, torch.tanh),
        cpu_fast_path=_every_call,
        extreme_inputs=unary_extremes,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.learned_silu,
        func=learned_silu,
        reference=_native_learned_silu,
        reference_text="slope * x * torch.sigmoid(x)",
        formula="y = a·x·s, s = sigmoid(x) ; dL/dx = a·s·(1 + x(1-s))·g, dL/da = Σ x·s·g",
        sample_inputs=_learned_silu_samples,
        batch_inputs=_learned_silu_batch,
        saved_fraction_of_native=0.5,  # x alone, where native keeps three x-sized tensors
        extreme_inputs=_learned_silu_extremes,
        property_inputs=_learned_silu_property_inputs,
        inf_allowed_where_native_nan=_learned_silu_infinite_slope,
        error_inputs=_learned_silu_error_inputs,
        deliberate_refusals=(
            r"does not broadcast to x's shape",  # a slope of 2+ dims: not per channel
        ),
        triton=_LEARNED_SILU_TRITON,
        cpu_fast_path=_learned_silu_fast_path,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.swiglu,
        func=swiglu,
        reference=_native_swiglu,
        reference_text="F.silu(gate) * up",
        formula=(
            "y = silu(gate)·up, s = sigmoid(gate) ; dL/dgate = up·s·(1 + gate(1-s))·g, "
            "dL/dup = silu(gate)·g"
        ),
        sample_inputs=_swiglu_samples,
        batch_inputs=_swiglu_batch,
        batch_args=(0, 1),
        saved_fraction_of_native=0.67,  # gate and up, where native also keeps silu(gate)
        extreme_inputs=_swiglu_extremes,
        property_inputs=_swiglu_property_inputs,
        error_inputs=_swiglu_error_inputs,
        triton=_SWIGLU_TRITON,
    ),
]
