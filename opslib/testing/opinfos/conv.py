"""The op table's conv1d and conv2d (one factory, d spatial dims): samples, references and bad
calls beside their entries.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from opslib.ops.conv import conv1d, conv2d, native_conv
from opslib.testing.opinfo import (
    ErrorInput,
    Sample,
    SampleFn,
)
from opslib.testing.opinfos.common import OpslibOpInfo, _leaf_view, _make, _t

# ---- conv1d, conv2d ----


def _conv_samples(dims: int) -> SampleFn:
    def samples(device, dtype, requires_grad: bool) -> list[Sample]:
        def make(shape, rg=requires_grad):
            return _make(shape, device, dtype, rg)

        def view(v, rg=requires_grad):
            return _leaf_view(v, rg)

        spatial = (9,) if dims == 1 else (7, 6)
        kernel = (3,) if dims == 1 else (3, 2)

        def call(name, x, w, b=True, stride=1, padding=0, dilation=1, groups=1, rg=None):
            bias = make((w.shape[0],), requires_grad if rg is None else rg) if b else None
            pads = [padding] * (2 * dims) if isinstance(padding, int) else list(padding)
            return Sample(name, (x, w, bias, [stride] * dims, pads, [dilation] * dims, groups))

        x, w = make((2, 4, *spatial)), make((6, 4, *kernel))
        same_even = [1, 2] if dims == 1 else [0, 1, 1, 1]  # "same" for kernel (4,) / (2, 3)
        even = (4,) if dims == 1 else (2, 3)
        samples = [
            call("plain", x, w),
            call("padding-1", make((2, 4, *spatial)), make((6, 4, *kernel)), padding=1),
            call(
                "same-even-kernel", make((2, 4, *spatial)), make((6, 4, *even)), padding=same_even
            ),  # fmt: skip
            call("stride-2", make((2, 4, *spatial)), make((6, 4, *kernel)), stride=2, padding=1),
            call("dilation-2", make((2, 4, *spatial)), make((6, 4, *kernel)), dilation=2),
            call("groups-2", make((2, 4, *spatial)), make((6, 2, *kernel)), groups=2),
            call("depthwise", make((2, 4, *spatial)), make((8, 1, *kernel)), groups=4),
            call("no-bias", make((2, 4, *spatial)), make((6, 4, *kernel)), b=False),
            call("unbatched", make((4, *spatial)), make((6, 4, *kernel)), padding=1),
            call("kernel-1", make((3, 4, *spatial)), make((5, 4, *((1,) * dims)))),
            call("empty-batch", make((0, 4, *spatial)), make((6, 4, *kernel))),
            call(
                "transposed-x",
                view(
                    torch.randn(2, *spatial[::-1], 4, device=device, dtype=dtype)
                    .movedim(-1, 1)
                    .transpose(-1, -2)
                    if dims == 2
                    else torch.randn(2, *spatial, 4, device=device, dtype=dtype).movedim(-1, 1)
                ),
                make((6, 4, *kernel)),
            ),  # fmt: skip
            call(
                "weight-only-grad",
                make((2, 4, *spatial), rg=False),
                make((6, 4, *kernel)),
                rg=False,
            ),  # fmt: skip
            call("x-only-grad", make((2, 4, *spatial)), make((6, 4, *kernel), rg=False), rg=False),
            call(
                "no-grad",
                make((2, 4, *spatial), rg=False),
                make((6, 4, *kernel), rg=False),
                rg=False,
            ),  # fmt: skip
        ]
        if dims == 2:
            samples.append(
                call(
                    "channels-last",
                    view(
                        torch.randn(2, 4, 7, 6, device=device, dtype=dtype).to(
                            memory_format=torch.channels_last
                        )
                    ),
                    make((6, 4, 3, 3)),
                    padding=1,
                )  # fmt: skip
            )
        return samples

    return samples


def _conv_batch(dims: int) -> Callable[[int, Any, torch.dtype], tuple]:
    def batch(rows: int, device, dtype) -> tuple:
        """x [rows, 6, 11(, 10)], a [10, 3, 3(, 3)] kernel in 2 groups, stride 1, asymmetric
        padding, dilation 2 (every argument away from its default but stride)."""
        spatial = (11,) if dims == 1 else (11, 10)
        return (
            torch.randn(rows, 6, *spatial, device=device, dtype=dtype),
            torch.randn(10, 3, *((3,) * dims), device=device, dtype=dtype) * 0.3,
            torch.randn(10, device=device, dtype=dtype),
            [1] * dims,
            [1, 2] * dims,
            [2] * dims,
            2,
        )

    return batch


def _conv_property_inputs(dims: int):
    def draw_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
        groups = draw(st.integers(1, 2))
        channels, out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
        kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
        stride = [draw(st.integers(1, 2)) for _ in range(dims)]
        dilation = [draw(st.integers(1, 2)) for _ in range(dims)]
        padding = [draw(st.integers(0, 2)) for _ in range(2 * dims)]
        spatial = [
            max(1, dilation[i] * (kernel[i] - 1) + 1 - padding[2 * i] - padding[2 * i + 1])
            + draw(st.integers(0, 3))
            for i in range(dims)
        ]
        batch = [draw(st.integers(0, 2))] if draw(st.booleans()) else []
        # finite extremes only: native's float32 convolution skips the zero padding where its
        # float64 one multiplies it, so 0·inf is finite in one and nan in the other
        x = draw(tensors(shape=[*batch, channels, *spatial], finite=True))
        weight = draw(tensors(shape=[out, channels // groups, *kernel], finite=True))
        bias = draw(tensors(shape=[out], finite=True)) if draw(st.booleans()) else None
        return (x, weight, bias, stride, padding, dilation, groups)

    return draw_inputs


def _conv_error_inputs(dims: int) -> Callable[[], list[ErrorInput]]:
    def cases() -> list[ErrorInput]:
        label = rf"customgrad\.conv{dims}d"
        spatial, kernel = ((9,), (3,)) if dims == 1 else ((7, 6), (3, 3))
        x, w = _t(2, 4, *spatial), _t(6, 4, *kernel)
        ones, zeros = [1] * dims, [0] * (2 * dims)

        def call(x=x, w=w, b=None, stride=ones, padding=zeros, dilation=ones, groups=1):
            return (x, w, b, stride, padding, dilation, groups)

        return [
            ErrorInput(
                "channels mismatch",
                lambda: call(x=_t(2, 5, *spatial)),
                ValueError,
                label + r": x has 5 channels and weight .* expects 4 per group x 1 groups",
            ),
            ErrorInput(
                "groups not dividing",
                lambda: call(w=_t(6, 2, *kernel), groups=3),
                ValueError,
                label + r": x has 4 channels and weight .* expects 2 per group x 3 groups = 6",
            ),
            ErrorInput(
                "weight of the wrong rank",
                lambda: call(w=_t(6, 4)),
                ValueError,
                label + rf": weight must be {dims + 2}-D",
            ),
            ErrorInput(
                "x of the wrong rank",
                lambda: call(x=_t(4)),
                ValueError,
                label + rf": x must be {dims + 2}-D",
            ),
            ErrorInput(
                "kernel larger than the input",
                lambda: call(x=_t(2, 4, *((2,) * dims))),
                ValueError,
                label + r": the padded input \(2 in spatial dim 0\) is smaller than the dilated "
                r"kernel \(3\)",
            ),
            ErrorInput(
                "stride 0",
                lambda: call(stride=[0] * dims),
                ValueError,
                label + r": stride, dilation and groups must be positive",
            ),
            ErrorInput(
                "negative padding",
                lambda: call(padding=[-1] * (2 * dims)),
                ValueError,
                label + r": .* padding non-negative",
            ),
            ErrorInput(
                "bias of the wrong shape",
                lambda: call(b=_t(5)),
                ValueError,
                label + r": bias of shape \[5\] must be \[6\]",
            ),
            ErrorInput(
                "padding of the wrong length",
                lambda: call(padding=[1] * (2 * dims + 1)),
                ValueError,
                label + rf": stride and dilation need {dims} values and padding {2 * dims}",
            ),
            ErrorInput(
                "float padding",
                lambda: call(padding=1.5),
                TypeError,
                label + r": padding must be an int or a sequence of ints, got 1\.5",
            ),
            ErrorInput(
                "float stride",
                lambda: call(stride=[1.5] * dims),
                TypeError,
                label + r": stride must be an int or a sequence of ints, got \[1\.5",
            ),
            ErrorInput(
                "no output channels",
                lambda: call(w=_t(0, 4, *kernel)),
                ValueError,
                label + r": weight of shape \[0, 4, .*\] has no output channels",
            ),
        ]

    return cases


def _conv_info(dims: int) -> OpslibOpInfo:
    """conv1d's and conv2d's entries: one op each, the same machinery with d spatial dims."""
    return OpslibOpInfo(
        op=getattr(torch.ops.customgrad, f"conv{dims}d"),
        func=conv1d if dims == 1 else conv2d,
        reference=native_conv(dims),
        reference_text=f"F.conv{dims}d(x, W, b, stride, padding, dilation, groups)",
        formula=(
            "y = b + Σ W ⋆ x (cross-correlation) ; dL/dx = conv_transpose(g, W), "
            "dL/dW = correlation of x with g, dL/db = Σ g"
        ),
        sample_inputs=_conv_samples(dims),
        batch_inputs=_conv_batch(dims),
        extreme_inputs=None,  # sums of ±inf through a convolution are order-dependent
        property_inputs=_conv_property_inputs(dims),
        error_inputs=_conv_error_inputs(dims),
        float32_tol=(3e-5, 1e-5),
        onnxruntime_missing={torch.float64: "no float64 Conv kernel"},
    )


OPINFOS: list[OpslibOpInfo] = [_conv_info(1), _conv_info(2)]
