"""Shared pieces of opslib's op table: the project's OpInfo (the kit's, with the fields only
opslib's own tests, fuzzer and op table use) and the sample helpers every family of ops uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from opslib.testing.opinfo import OpInfo, Sample


@dataclass(frozen=True)
class TritonPath:
    """What an op launches on CUDA, called directly so that the tests can run it anywhere (on
    CPU tensors under the Triton interpreter)."""

    forward: Callable[..., Tensor]  # (*args) -> y
    backward: Callable[..., tuple[Tensor, ...]]  # (grad_y, *args) -> gradient of each tensor
    supports: Callable[..., bool] = lambda *args: True  # calls the kernels take


def _unary_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    return (draw(tensors()),)


def _never(args: tuple) -> bool:
    return False


@dataclass(frozen=True)
class OpslibOpInfo(OpInfo):
    """The kit's ``OpInfo`` with what only opslib's own suite, fuzzer and op table use."""

    # Property tests and the fuzzer (tests/fuzz.py): the op's arguments, drawn with
    # hypothesis's ``draw`` from its strategies module ``st`` and the fuzzer's
    # ``tensors(shape=None)`` strategy (random shape, layout and extreme values). The caller
    # passes both in: the package does not depend on hypothesis.
    property_inputs: Callable[[Callable, ModuleType, Callable], tuple] = _unary_property_inputs
    # Property tests: the true value, evaluated in float64 (with autograd for gradients); None:
    # the reference. For ops whose native algorithm loses digits even in float64 (layer_norm's
    # x·r - μ·r for rows far from zero), a textbook formula that does not.
    exact_reference: Callable[..., Tensor] | None = None
    # Property tests: calls where the op may give ±inf where native's float64 expression gives
    # nan (the op computes the limit; see learned_silu).
    inf_allowed_where_native_nan: Callable[[tuple], bool] = _never
    # Calls native answers that the op refuses on purpose, by the op's error message (regexes),
    # each for a stated reason: the fuzzer counts such a refusal as deliberate, and any other
    # refusal of a call native answers as a failure.
    deliberate_refusals: tuple[str, ...] = ()
    # The CUDA path's Triton kernels, or None if the op has none.
    triton: TritonPath | None = None
    # Which valid calls without autograd the C++ CPU fast path (opslib/csrc) computes itself;
    # None if the op has no C++ kernel. Every other call must reach the Python kernel.
    cpu_fast_path: Callable[..., bool] | None = None
    # Bytes saved for backward may be at most this fraction of native's (a fused op's claim).
    saved_fraction_of_native: float = 1.0
    # For the op table (README, docs): how the reference reads, and forward and gradient in a line.
    reference_text: str = ""
    formula: str = ""


def _make(shape, device, dtype, requires_grad: bool, *, scale: float = 1.0) -> Tensor:
    return (torch.randn(shape, device=device, dtype=dtype) * scale).requires_grad_(requires_grad)


def _leaf_view(view: Tensor, requires_grad: bool) -> Tensor:
    """A view of a tensor that does not require grad is itself a leaf: it keeps its strides
    and can require grad, so gradients flow to the awkward layout itself."""
    return view.detach().requires_grad_(requires_grad)


def unary_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    """The samples of an op of one tensor: every awkward shape and layout."""

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


def _unary_batch(width: int) -> Callable[[int, Any, torch.dtype], tuple[Tensor, ...]]:
    def batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
        return (torch.randn(rows, width, device=device, dtype=dtype),)

    return batch


def _t(*shape: int) -> Tensor:
    return torch.randn(shape)


def _inference_x() -> tuple:
    with torch.inference_mode():
        x = _t(4, 3)
    return (x, _t(5, 3).requires_grad_())


def _every_call(*args: object) -> bool:
    return True
