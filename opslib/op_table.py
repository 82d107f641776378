"""The op table: every customgrad op, its plain-PyTorch reference, and its sample inputs.

Tests, benchmarks and the ONNX export scripts all loop over ``OP_TABLE``; a new op gets all of
them by adding one ``OpInfo`` here (and its translation next to its code).

Samples are deliberately awkward (the PyTorch custom-op tutorials' advice): 0-d and empty tensors,
transposed views, offset and strided slices, expanded (stride-0) views, extra leading dims, every
bias form, and inputs with and without ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.ops.cube import cube, cube_onnx
from opslib.ops.exp import exp, exp_onnx
from opslib.ops.learned_silu import learned_silu, learned_silu_onnx
from opslib.ops.linear import linear, linear_onnx
from opslib.ops.relu import relu, relu_onnx
from opslib.ops.sigmoid import sigmoid, sigmoid_onnx
from opslib.ops.square import square, square_onnx
from opslib.ops.tanh import tanh, tanh_onnx

ALL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Sample:
    """One call of an op: its positional arguments, and a name that says what is awkward."""

    name: str
    args: tuple[Any, ...]

    def __repr__(self) -> str:  # shows up in pytest ids and failure messages
        shapes = ", ".join(
            "None" if a is None else f"{list(a.shape)}{'' if a.is_contiguous() else '(nc)'}"
            for a in self.args
        )
        return f"{self.name}({shapes})"


SampleFn = Callable[[torch.device | str, torch.dtype, bool], list[Sample]]


@dataclass(frozen=True)
class OpInfo:
    """Everything the test, benchmark and export machinery needs to know about one op."""

    name: str
    func: Callable[..., Tensor]  # the public opslib function
    reference: Callable[..., Tensor]  # the native PyTorch equivalent (also the benchmark baseline)
    reference_text: str  # how the reference reads, for reports
    formula: str  # forward and gradient, one line each, for the README
    sample_inputs: SampleFn
    # Inputs for benchmarks and ONNX export: a batch of `rows` rows at the op's benchmark width.
    batch_inputs: Callable[[int, torch.device | str, torch.dtype], tuple[Tensor, ...]]
    onnx_translation: Callable[..., Any]
    # Benchmarks: sizes from per-call overhead (16 elements) to large, inputs for one size, and
    # the hardware limit the op is judged against ("bandwidth" or "matmul").
    bench_sizes: tuple[int, ...]
    bench_inputs: Callable[[int, torch.device | str, torch.dtype], tuple[Tensor, ...]]
    roofline: str = "bandwidth"
    # Also time the eager op against torch.compile of its reference: for ops whose eager path is
    # itself fused, the question is whether that is as good as what the compiler makes.
    bench_against_compiled: bool = False
    dtypes: tuple[torch.dtype, ...] = ALL_FLOAT_DTYPES
    # (atol, rtol) against the reference in float32 (values and gradients). float16/bfloat16 are
    # judged against a float64 reference relative to native's own error (see tests).
    float32_tol: tuple[float, float] = (1e-5, 1.3e-6)
    extremes: bool = True  # run the ±inf/nan/±1000 comparison

    @property
    def op(self) -> torch._ops.OpOverload:
        return getattr(torch.ops.customgrad, self.name).default


def _make(shape, device, dtype, requires_grad: bool, *, scale: float = 1.0) -> Tensor:
    return (torch.randn(shape, device=device, dtype=dtype) * scale).requires_grad_(requires_grad)


def _leaf_view(view: Tensor, requires_grad: bool) -> Tensor:
    """A view of a tensor that does not require grad is itself a leaf: it keeps its strides
    and can require grad, so gradients flow to the awkward layout itself."""
    return view.detach().requires_grad_(requires_grad)


def _unary_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def view(v, rg=requires_grad):
        return _leaf_view(v, rg)

    base = torch.randn(6, 5, device=device, dtype=dtype)
    return [
        Sample("0-d", (make(()),)),
        Sample("empty", (make((0,)),)),
        Sample("empty-2d", (make((0, 3)),)),
        Sample("vector", (make((7,)),)),
        Sample("matrix", (make((4, 5)),)),
        Sample("4-d", (make((2, 3, 4, 5)),)),
        Sample("no-grad", (make((3, 4), rg=False),)),
        Sample("transposed", (view(base.t()),)),
        Sample("offset-slice", (view(base[1:]),)),
        Sample("strided-slice", (view(base[::2, 1::2]),)),
        Sample("expanded", (view(torch.randn(3, 1, device=device, dtype=dtype).expand(3, 4)),)),
        Sample(
            "channels-last",
            (
                view(
                    torch.randn(2, 3, 4, 5, device=device, dtype=dtype).to(
                        memory_format=torch.channels_last
                    )
                ),
            ),
        ),
    ]


def _linear_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def view(v, rg=requires_grad):
        return _leaf_view(v, rg)

    return [
        Sample("bias[out]", (make((4, 3)), make((5, 3)), make((5,)))),
        Sample("bias[1,out]", (make((4, 3)), make((5, 3)), make((1, 5)))),
        Sample("bias[batch,out]", (make((4, 3)), make((5, 3)), make((4, 5)))),
        Sample("no-bias", (make((4, 3)), make((5, 3)), None)),
        Sample("vector-x", (make((3,)), make((5, 3)), make((5,)))),
        Sample("3-d-x", (make((2, 4, 3)), make((5, 3)), make((5,)))),
        Sample("3-d-x-bias[seq,out]", (make((2, 4, 3)), make((5, 3)), make((4, 5)))),
        Sample("3-d-x-bias[1,1,out]", (make((1, 4, 3)), make((5, 3)), make((1, 1, 5)))),
        Sample("3-d-x-bias[batch,seq,out]", (make((2, 4, 3)), make((5, 3)), make((2, 4, 5)))),
        Sample("empty-batch", (make((0, 3)), make((5, 3)), make((5,)))),
        Sample("zero-in-features", (make((4, 0)), make((5, 0)), make((5,)))),
        Sample(
            "transposed-x-and-weight",
            (
                view(torch.randn(3, 4, device=device, dtype=dtype).t()),
                view(torch.randn(3, 5, device=device, dtype=dtype).t()),
                make((5,)),
            ),
        ),
        Sample(
            "offset-slice-x",
            (view(torch.randn(6, 3, device=device, dtype=dtype)[2:]), make((5, 3)), make((5,))),
        ),
        Sample(
            "expanded-x",
            (
                view(torch.randn(1, 3, device=device, dtype=dtype).expand(4, 3)),
                make((5, 3)),
                make((5,)),
            ),
        ),
        Sample("weight-only-grad", (make((4, 3), rg=False), make((5, 3)), make((5,), rg=False))),
        Sample("no-grad", (make((4, 3), rg=False), make((5, 3), rg=False), None)),
    ]


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


def _unary_batch(width: int) -> Callable[[int, Any, torch.dtype], tuple[Tensor, ...]]:
    def batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
        return (torch.randn(rows, width, device=device, dtype=dtype),)

    return batch


def _linear_batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
    in_features, out_features = 64, 32
    return (
        torch.randn(rows, in_features, device=device, dtype=dtype),
        torch.randn(out_features, in_features, device=device, dtype=dtype) / in_features**0.5,
        torch.randn(out_features, device=device, dtype=dtype),
    )


def _learned_silu_batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
    width = 64
    return (
        torch.randn(rows, width, device=device, dtype=dtype),
        torch.rand(width, device=device, dtype=dtype) + 0.5,
    )


POINTWISE_BENCH_SIZES = (16, 4096, 262_144, 4_194_304, 16_777_216)  # elements of x
LINEAR_BENCH_ROWS = (1, 64, 1024, 4096, 8192)  # x [rows, 1024] @ W [1024, 1024]ᵀ; rows 1: tiny


def _unary_bench(numel: int, device, dtype) -> tuple[Tensor, ...]:
    return (torch.randn(numel, device=device, dtype=dtype),)


def linear_bench_shape(rows: int) -> tuple[int, int, int]:
    """(rows, in, out): 1 row is the per-call-overhead case, [1, 4] x [4, 4] (16 elements)."""
    return (1, 4, 4) if rows == 1 else (rows, 1024, 1024)


def _linear_bench(rows: int, device, dtype) -> tuple[Tensor, ...]:
    m, k, n = linear_bench_shape(rows)
    return (
        torch.randn(m, k, device=device, dtype=dtype),
        torch.randn(n, k, device=device, dtype=dtype) / k**0.5,
        torch.randn(n, device=device, dtype=dtype),
    )


def _learned_silu_bench(numel: int, device, dtype) -> tuple[Tensor, ...]:
    return (
        torch.randn(numel, device=device, dtype=dtype),
        torch.tensor([0.75], device=device, dtype=dtype),
    )


def _native_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear, except for bias forms it mishandles: for a contiguous 3-D x it flattens to a
    2-D addmm, which cannot broadcast e.g. a [1, 1, out] bias (it raises). Those get a separate
    add, which is what y = x Wᵀ + b means."""
    if bias is None or bias.dim() == 1 or x.dim() == 2:
        return F.linear(x, weight, bias)
    return F.linear(x, weight) + bias


def _native_cube(x: Tensor) -> Tensor:
    return torch.pow(x, 3)


def _native_learned_silu(x: Tensor, slope: Tensor) -> Tensor:
    return slope * x * torch.sigmoid(x)


OP_TABLE: list[OpInfo] = [
    OpInfo(
        name="square",
        func=square,
        reference=torch.square,
        reference_text="torch.square(x)",
        formula="y = x² ; dL/dx = 2x·g",
        sample_inputs=_unary_samples,
        batch_inputs=_unary_batch(64),
        onnx_translation=square_onnx,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
    ),
    OpInfo(
        name="cube",
        func=cube,
        reference=_native_cube,
        reference_text="torch.pow(x, 3)",
        formula="y = x³ ; dL/dx = 3x²·g",
        sample_inputs=_unary_samples,
        batch_inputs=_unary_batch(64),
        onnx_translation=cube_onnx,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
    ),
    OpInfo(
        name="exp",
        func=exp,
        reference=torch.exp,
        reference_text="torch.exp(x)",
        formula="y = eˣ ; dL/dx = y·g",
        sample_inputs=_unary_samples,
        batch_inputs=_unary_batch(64),
        onnx_translation=exp_onnx,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
    ),
    OpInfo(
        name="relu",
        func=relu,
        reference=torch.relu,
        reference_text="torch.relu(x)",
        formula="y = max(x, 0) ; dL/dx = 0 where y ≤ 0, else g",
        sample_inputs=_unary_samples,
        batch_inputs=_unary_batch(64),
        onnx_translation=relu_onnx,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
    ),
    OpInfo(
        name="sigmoid",
        func=sigmoid,
        reference=torch.sigmoid,
        reference_text="torch.sigmoid(x)",
        formula="y = 1/(1+e⁻ˣ) ; dL/dx = y(1-y)·g",
        sample_inputs=_unary_samples,
        batch_inputs=_unary_batch(64),
        onnx_translation=sigmoid_onnx,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
    ),
    OpInfo(
        name="tanh",
        func=tanh,
        reference=torch.tanh,
        reference_text="torch.tanh(x)",
        formula="y = tanh(x) ; dL/dx = (1-y²)·g",
        sample_inputs=_unary_samples,
        batch_inputs=_unary_batch(64),
        onnx_translation=tanh_onnx,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
    ),
    OpInfo(
        name="linear",
        func=linear,
        reference=_native_linear,
        reference_text="F.linear(x, W, b)",
        formula="y = xWᵀ + b ; dL/dx = gW, dL/dW = Σ gᵀx, dL/db = g summed to b's shape",
        sample_inputs=_linear_samples,
        batch_inputs=_linear_batch,
        onnx_translation=linear_onnx,
        extremes=False,
        bench_sizes=LINEAR_BENCH_ROWS,
        bench_inputs=_linear_bench,
        roofline="matmul",
    ),
    OpInfo(
        name="learned_silu",
        func=learned_silu,
        reference=_native_learned_silu,
        reference_text="slope * x * torch.sigmoid(x)",
        formula="y = a·x·s, s = sigmoid(x) ; dL/dx = a·s·(1 + x(1-s))·g, dL/da = Σ x·s·g",
        sample_inputs=_learned_silu_samples,
        batch_inputs=_learned_silu_batch,
        onnx_translation=learned_silu_onnx,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_learned_silu_bench,
        bench_against_compiled=True,
    ),
]

OPS_BY_NAME: dict[str, OpInfo] = {info.name: info for info in OP_TABLE}


def markdown_table() -> str:
    """The README's op table, generated from OP_TABLE (a test keeps the README in sync)."""
    rows = [
        "| op | schema | forward ; gradient | native reference |",
        "|---|---|---|---|",
    ]
    for info in OP_TABLE:
        rows.append(
            f"| `{info.name}` | `{info.op._schema}` | {info.formula} | `{info.reference_text}` |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
