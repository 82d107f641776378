"""The op table's softmax and log_softmax (ops along one dim): samples, references, bad calls
and kernels beside their entries.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from opslib.core import cuda_path
from opslib.ops.log_softmax import log_softmax
from opslib.ops.softmax import softmax
from opslib.testing.opinfo import (
    ErrorInput,
    Sample,
)
from opslib.testing.opinfos.common import (
    OpslibOpInfo,
    TritonPath,
    _every_call,
    _make,
    _t,
    unary_samples,
)

# The dim each of unary_samples' calls is taken along, for ops (x, dim): every sign and position.
_SAMPLE_DIMS = {
    "0-d": 0,
    "empty": -1,
    "empty-2d": 1,
    "vector": 0,
    "matrix": -1,
    "4-d": 2,
    "no-grad": 0,
    "transposed": 1,
    "offset-slice": -2,
    "strided-slice": 1,
    "expanded": 1,
    "channels-last": 1,
}


def along_dim_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    """The samples of an op (x, dim) that works along one dim: unary_samples, each along a dim
    of its own, and rows of one element, a reduction over the batch dim and dim -4."""
    samples = [
        Sample(f"{s.name}-dim{_SAMPLE_DIMS[s.name]}", (*s.args, _SAMPLE_DIMS[s.name]))
        for s in unary_samples(device, dtype, requires_grad)
    ]
    make = lambda shape: _make(shape, device, dtype, requires_grad)  # noqa: E731
    samples += [
        Sample("rows-of-one", (make((4, 1)), 1)),
        Sample("matrix-dim0", (make((4, 5)), 0)),
        Sample("4-d-dim-4", (make((2, 3, 4, 5)), -4)),
        Sample("0-d-dim-1", (make(()), -1)),
    ]
    return samples


def _along_dim_batch(dim: int) -> Callable[[int, Any, torch.dtype], tuple]:
    def batch(rows: int, device, dtype) -> tuple:
        return (torch.randn(rows, 64, device=device, dtype=dtype) * 4, dim)

    return batch


def _along_dim_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    x = draw(tensors())
    rank = max(x.dim(), 1)
    return (x, draw(st.integers(-rank, rank - 1)))


def _along_dim_error_inputs(op: str) -> Callable[[], list[ErrorInput]]:
    def cases() -> list[ErrorInput]:
        x = _t(4, 5)
        return [
            ErrorInput(
                "dim past the last",
                lambda: (x, 2),
                IndexError,
                rf"customgrad\.{op}: dim 2 is out of range for x of 2 dimensions "
                rf"\(expected -2 to 1\)",
            ),
            ErrorInput(
                "dim before the first",
                lambda: (x, -3),
                IndexError,
                rf"customgrad\.{op}: dim -3 is out of range",
            ),
            ErrorInput(
                "dim 1 of a 0-d x",
                lambda: (_t(), 1),
                IndexError,
                rf"customgrad\.{op}: dim 1 is out of range for x of 0 dimensions",
            ),
            ErrorInput(
                "dim a float",
                lambda: (x, 1.0),
                RuntimeError,
                rf"customgrad::{op}\(\) Expected a value of type 'int' for argument 'dim'",
                compiles=False,
            ),
        ]

    return cases


def _softmax_triton(log: bool) -> TritonPath:
    return TritonPath(
        forward=lambda x, dim: cuda_path.kernels("softmax").forward(x, dim, log),
        backward=lambda g, x, dim: (
            cuda_path.kernels("softmax").backward(
                g, cuda_path.kernels("softmax").forward(x, dim, log), dim, log
            ),
        ),
        supports=lambda x, dim: cuda_path.kernels("softmax").supports(x, dim),
    )


OPINFOS: list[OpslibOpInfo] = [
    OpslibOpInfo(
        op=torch.ops.customgrad.softmax,
        func=softmax,
        reference=torch.softmax,
        reference_text="torch.softmax(x, dim)",
        formula="y = eˣ / Σ eˣ along dim ; dL/dx = y(g - Σ g·y)",
        sample_inputs=along_dim_samples,
        batch_inputs=_along_dim_batch(1),
        extreme_inputs=lambda x: (x, 0),
        property_inputs=_along_dim_property_inputs,
        error_inputs=_along_dim_error_inputs("softmax"),
        triton=_softmax_triton(log=False),
        cpu_fast_path=_every_call,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.log_softmax,
        func=log_softmax,
        reference=torch.log_softmax,
        reference_text="torch.log_softmax(x, dim)",
        formula="y = x - log Σ eˣ along dim ; dL/dx = g - eʸ·Σ g",
        sample_inputs=along_dim_samples,
        batch_inputs=_along_dim_batch(-1),
        extreme_inputs=lambda x: (x, 0),
        property_inputs=_along_dim_property_inputs,
        error_inputs=_along_dim_error_inputs("log_softmax"),
        triton=_softmax_triton(log=True),
        cpu_fast_path=_every_call,
    ),
]
