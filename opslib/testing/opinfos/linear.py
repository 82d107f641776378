"""The op table's linear: its samples, reference, bad calls and kernels beside its entry."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.ops.linear import linear
from opslib.testing.opinfo import (
    ErrorInput,
    Sample,
)
from opslib.testing.opinfos.common import OpslibOpInfo, _inference_x, _leaf_view, _make, _t


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


def _linear_batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
    in_features, out_features = 64, 32
    return (
        torch.randn(rows, in_features, device=device, dtype=dtype),
        torch.randn(out_features, in_features, device=device, dtype=dtype) / in_features**0.5,
        torch.randn(out_features, device=device, dtype=dtype),
    )


def _native_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear, except for bias forms it mishandles: for a contiguous 3-D x it flattens to a
    2-D addmm, which cannot broadcast e.g. a [1, 1, out] bias (it raises). Those get a separate
    add, which is what y = x Wᵀ + b means."""
    if bias is None or bias.dim() == 1 or x.dim() == 2:
        return F.linear(x, weight, bias)
    return F.linear(x, weight) + bias


def _linear_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    batch = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    in_f, out_f = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    x = draw(tensors(shape=[*batch, in_f]))
    w = draw(tensors(shape=[out_f, in_f]))
    bias_shape = draw(st.sampled_from([None, [out_f], [1] * len(batch) + [out_f], [*batch, out_f]]))
    return (x, w, None if bias_shape is None else draw(tensors(shape=bias_shape)))


def _infinite_affine(args: tuple) -> bool:
    """rms_norm, layer_norm with an infinite weight or bias: each dL/dx_k then has one
    infinite term (from u_j = w_j·g_j), whose limit, ±inf, the op may give where native's
    float64 expression subtracts two infinite row sums and gives nan."""
    return any(isinstance(a, Tensor) and bool(torch.isinf(a).any()) for a in args[2:4])


def _linear_error_inputs() -> list[ErrorInput]:
    x, w = _t(4, 3), _t(5, 3)
    return [
        ErrorInput(
            "1-D weight, bias, 2-D x",
            lambda: (_t(3, 4), _t(4), _t(3)),
            ValueError,
            r"customgrad\.linear: with a 1-D weight, bias of shape \[3\] must broadcast to the "
            r"output \[3\], and x may not be 2-D",
        ),
        ErrorInput(
            "in_features mismatch",
            lambda: (_t(4, 6), w),
            ValueError,
            r"customgrad\.linear: x has 6 features .* in_features=3",
        ),
        ErrorInput(
            "weight 3-D",
            lambda: (x, _t(2, 5, 3)),
            ValueError,
            r"customgrad\.linear: weight must be 2-D",
        ),
        ErrorInput(
            "0-d x",
            lambda: (_t(), w),
            ValueError,
            r"customgrad\.linear: x must have at least 1 dimension",
        ),
        ErrorInput(
            "bias wrong width",
            lambda: (x, w, _t(7)),
            ValueError,
            r"customgrad\.linear: bias of shape \[7\] does not broadcast .*\[4, 5\]",
        ),
        ErrorInput(
            "bias wrong batch",
            lambda: (x, w, _t(3, 5)),
            ValueError,
            r"customgrad\.linear: bias of shape \[3, 5\] does not broadcast",
        ),
        ErrorInput(
            "bias would enlarge output",
            lambda: (x, w, _t(2, 4, 5)),
            ValueError,
            r"customgrad\.linear: bias of shape \[2, 4, 5\] does not broadcast",
        ),
        ErrorInput(
            "inference-mode x where autograd must save it",
            _inference_x,
            RuntimeError,
            r"customgrad\.linear: x created under torch\.inference_mode\(\) cannot be saved",
            compiles=False,  # compile traces with fake tensors; the refusal happens at run time
        ),
    ]


def _linear_fast_path(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    return bias is None or bias.dim() == 1  # other bias forms: the Python kernel


OPINFOS: list[OpslibOpInfo] = [
    OpslibOpInfo(
        op=torch.ops.customgrad.linear,
        func=linear,
        reference=_native_linear,
        reference_text="F.linear(x, W, b)",
        formula="y = xWᵀ + b ; dL/dx = gW, dL/dW = Σ gᵀx, dL/db = g summed to b's shape",
        sample_inputs=_linear_samples,
        batch_inputs=_linear_batch,
        extreme_inputs=None,
        property_inputs=_linear_property_inputs,
        error_inputs=_linear_error_inputs,
        deliberate_refusals=(
            # native refuses a bias that enlarges the output too (its add is in place), but
            # lets one through for an empty x: the op refuses it whatever x holds
            r"does not broadcast to the output shape",
        ),
        cpu_fast_path=_linear_fast_path,
    ),
]
