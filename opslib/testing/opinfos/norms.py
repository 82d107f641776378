"""The op table's normalizations: rms_norm, layer_norm and batch_norm, each with its samples,
references, bad calls and kernels beside its entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.ops.batch_norm import batch_norm
from opslib.ops.layer_norm import layer_norm
from opslib.ops.rms_norm import rms_norm
from opslib.testing.opinfo import (
    ErrorInput,
    Sample,
)
from opslib.testing.opinfos.common import OpslibOpInfo, _leaf_view, _make, _t
from opslib.testing.opinfos.linear import _infinite_affine


def _rms_norm_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def weight(n, rg=requires_grad):
        return (torch.rand(n, device=device, dtype=dtype) + 0.5).requires_grad_(rg)

    base = torch.randn(6, 5, device=device, dtype=dtype)
    return [
        Sample("rows-weight", (make((4, 5)), [5], weight(5), None)),
        Sample("3-d-two-dims", (make((2, 4, 5)), [4, 5], weight((4, 5)), 1e-5)),
        Sample("no-weight", (make((3, 6)), [6], None, 1e-6)),
        Sample("large-eps", (make((3, 6)), [6], weight(6), 0.5)),
        Sample("vector", (make((7,)), [7], weight(7), None)),
        Sample("one-row-per-element", (make((4, 1)), [1], weight(1), None)),
        Sample("empty-batch", (make((0, 5)), [5], weight(5), None)),
        Sample("transposed", (_leaf_view(base.t(), requires_grad), [6], weight(6), None)),
        Sample("strided-slice", (_leaf_view(base[::2], requires_grad), [5], weight(5), None)),
        Sample("weight-no-grad", (make((4, 5)), [5], weight(5, rg=False), None)),
        Sample("x-no-grad", (make((4, 5), rg=False), [5], weight(5), None)),
        Sample("wide-row", (make((3, 300)), [300], weight(300), None)),  # vectors and a tail
    ]


def _rms_norm_batch(rows: int, device, dtype) -> tuple:
    width = 64
    return (
        torch.randn(rows, width, device=device, dtype=dtype) * 3,
        [width],
        torch.rand(width, device=device, dtype=dtype) + 0.5,
        1e-5,
    )


def _rms_norm_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    x = draw(tensors())
    x = x.reshape(1) if x.dim() == 0 else x
    k = draw(st.integers(1, x.dim()))
    shape = list(x.shape[x.dim() - k :])
    weight = draw(st.sampled_from([None, "weight"]))
    weight = draw(tensors(shape=shape)) if weight else None
    # eps is given: eps=None means the compute dtype's epsilon, which differs between a
    # float32 call and the float64 run the property test judges it by (the samples cover None)
    return (x, shape, weight, draw(st.sampled_from([1e-6, 1e-5, 0.25])))


def _rms_norm_error_inputs() -> list[ErrorInput]:
    x = _t(4, 5)
    label = r"customgrad\.rms_norm"
    return [
        ErrorInput(
            "normalized_shape not x's trailing dims",
            lambda: (x, [4], None, None),
            ValueError,
            label + r": normalized_shape \[4\] must be x's trailing dims, but x has shape",
        ),
        ErrorInput(
            "normalized_shape longer than x",
            lambda: (_t(5), [2, 5], None, None),
            ValueError,
            label + r": normalized_shape \[2, 5\] must be x's trailing dims",
        ),
        ErrorInput(
            "weight of the wrong shape",
            lambda: (x, [5], _t(4), None),
            ValueError,
            label + r": weight of shape \[4\] must have normalized_shape \[5\]",
        ),
        ErrorInput(
            "negative eps",
            lambda: (x, [5], None, -1.0),
            ValueError,
            label + r": eps must be finite and >= 0, got -1.0",
        ),
        *_normalized_shape_error_inputs(label, x, (None, None)),
    ]


def _normalized_shape_error_inputs(label: str, x: Tensor, rest: tuple) -> list[ErrorInput]:
    """normalized_shape [] (native refuses it: "Expected normalized_shape to be at least
    1-dimensional") and an int (native: "must be tuple of ints, not int")."""
    return [
        ErrorInput(
            "empty normalized_shape",
            lambda: (x, [], *rest),
            ValueError,
            label + r": normalized_shape must name at least one of x's trailing dims, got \[\]",
        ),
        ErrorInput(
            "int normalized_shape",
            lambda: (x, 5, *rest),
            TypeError,
            label + r": normalized_shape must be a list of ints, got 5",
        ),
    ]


def _exact_mean(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The mean over ``dims`` (kept), exactly rounded: each row summed by ``math.fsum``, not in
    float64, where ±1e30 that cancel swallow the ordinary values beside them (ulp(1e30) is
    1.4e14) and the mean is noise of either sign. The value is fsum's (rows with inf or nan:
    the plain mean), the gradient the plain mean's (1/n each): the difference is added as a
    constant."""
    plain = x.mean(dims, keepdim=True)
    rows = x.detach().double().flatten(x.dim() - len(dims))
    n = rows.shape[-1]
    if plain.numel() == 0 or n == 0:
        return plain  # no rows, or empty ones (mean nan): nothing to correct
    means = plain.detach().flatten().tolist()
    exact = [
        math.fsum(row) / n if all(map(math.isfinite, row)) else mean  # inf, nan: as they are
        for row, mean in zip(rows.reshape(-1, n).tolist(), means, strict=True)
    ]
    exact = torch.tensor(exact, dtype=x.dtype, device=x.device).reshape(plain.shape)
    return plain + (exact - plain).detach()


def _layer_norm_textbook(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    """(x - μ)/√(σ² + ε)·w + b, centred first: exact for constant rows far from zero, where
    native's x·r - μ·r cancels (a row [-1e30, -1e30] gets dL/dx = 0 from native, even in
    float64, instead of r·(g - mean(g)))."""
    dims = tuple(range(-len(normalized_shape), 0))
    centered = x - _exact_mean(x, dims)
    y = centered / torch.sqrt(centered.square().mean(dims, keepdim=True) + eps)
    y = y * weight if weight is not None else y
    return y + bias if bias is not None else y


def _layer_norm_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    """rms_norm's samples with a bias wherever there is a weight, and some without either."""
    samples = []
    for s in _rms_norm_samples(device, dtype, requires_grad):
        x, shape, weight, eps = s.args
        bias = None
        if weight is not None:
            bias = torch.randn(weight.shape, device=device, dtype=dtype)
            bias.requires_grad_(weight.requires_grad)
        # Rows of one element: x̂ = 0 exactly, but native computes it as x·r - μ·r, whose
        # rounding 1/sqrt(eps) amplifies (3e-5 at eps=1e-5): there the sample's eps is 1e-3
        # (exactness itself is tested in tests/test_norms.py).
        if s.name == "one-row-per-element":
            eps = 1e-3
        samples.append(Sample(s.name, (x, shape, weight, bias, 1e-5 if eps is None else eps)))
    x = _make((4, 5), device, dtype, requires_grad)
    samples += [
        Sample("bias-only", (x, [5], None, _make((5,), device, dtype, requires_grad), 1e-5)),
        Sample(
            # mean 30, spread 1: mean(x²) - mean(x)² would cancel ~3 digits here, more than
            # the float32 tolerance; the two-pass variance does not (mean 1000 is tested
            # against float64 in tests/test_norms.py: there native itself is off by 3e-5)
            "large-mean",
            (
                _leaf_view(30 + torch.randn(3, 8, device=device, dtype=dtype), requires_grad),
                [8],
                None,
                None,
                1e-5,
            ),
        ),
    ]
    return samples


def _layer_norm_batch(rows: int, device, dtype) -> tuple:
    x, shape, weight, _ = _rms_norm_batch(rows, device, dtype)
    return (x, shape, weight, torch.randn(shape, device=device, dtype=dtype), 1e-4)


def _layer_norm_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    x, shape, weight, _ = _rms_norm_property_inputs(draw, st, tensors)
    bias = draw(tensors(shape=shape)) if draw(st.booleans()) else None
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.25]))
    # Rows of one element: ours is exactly x̂ = 0, native's x̂ is rounding noise times
    # 1/sqrt(eps), beyond float64's tolerance at eps=1e-5 (tests/test_norms.py checks the
    # exact result); a large eps keeps native's noise within it.
    return (x, shape, weight, bias, 0.25 if math.prod(shape) == 1 else eps)


def _layer_norm_error_inputs() -> list[ErrorInput]:
    x = _t(4, 5)
    label = r"customgrad\.layer_norm"
    return [
        ErrorInput(
            "normalized_shape not x's trailing dims",
            lambda: (x, [4], None, None, 1e-5),
            ValueError,
            label + r": normalized_shape \[4\] must be x's trailing dims, but x has shape",
        ),
        ErrorInput(
            "bias of the wrong shape",
            lambda: (x, [5], None, _t(4), 1e-5),
            ValueError,
            label + r": bias of shape \[4\] must have normalized_shape \[5\]",
        ),
        ErrorInput(
            "nan eps",
            lambda: (x, [5], None, None, float("nan")),
            ValueError,
            label + r": eps must be finite and >= 0, got nan",
        ),
        *_normalized_shape_error_inputs(label, x, (None, None, 1e-5)),
    ]


def _native_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                       momentum=0.1, eps=1e-5) -> Tensor:  # fmt: skip
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _batch_norm_contiguous(x, running_mean, running_var, weight=None, bias=None,
                           training=False, momentum=0.1, eps=1e-5) -> Tensor:  # fmt: skip
    """Native's formula with its per-channel tensors made contiguous (views of them: gradients
    still reach them). ATen's CPU backward misreads strided or expanded running statistics and
    weights for inputs of spatial size 1 (denormal garbage where the gradient is r·w·g), so
    native is no reference there; the op hands ATen contiguous ones."""
    per_channel = [t.contiguous() if t is not None else None
                   for t in (running_mean, running_var, weight, bias)]  # fmt: skip
    return F.batch_norm(x, *per_channel, training, momentum, eps)


def _running_stats(c, device, dtype):
    return (
        torch.randn(c, device=device, dtype=dtype) * 0.1,
        torch.rand(c, device=device, dtype=dtype) + 0.5,
    )


def _batch_norm_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg, scale=2.0)

    def affine(c, rg=requires_grad):
        w = (torch.rand(c, device=device, dtype=dtype) + 0.5).requires_grad_(rg)
        return w, _make((c,), device, dtype, rg)

    def call(name, x, stats=True, w=True, training=True, momentum=0.1, eps=1e-5, rg=None):
        c = x.shape[1]
        rm, rv = _running_stats(c, device, dtype) if stats else (None, None)
        weight, bias = affine(c, requires_grad if rg is None else rg) if w else (None, None)
        return Sample(name, (x, rm, rv, weight, bias, training, momentum, eps))

    base = torch.randn(4, 5, device=device, dtype=dtype)
    cl = torch.randn(2, 3, 4, 5, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    return [
        call("1d-train", make((6, 4))),
        call("1d-eval", make((6, 4)), training=False),
        call("1d-sequence-train", make((4, 3, 5))),
        call("2d-train", make((2, 3, 4, 5))),
        call("2d-eval-no-affine", make((2, 3, 4, 5)), w=False, training=False),
        call("3d-train", make((2, 3, 2, 2, 2)), momentum=0.5, eps=1e-3),
        call("train-no-running-stats", make((5, 4)), stats=False),
        call("train-no-affine", make((5, 4)), w=False, momentum=0.9),
        call("one-sample-with-length", make((1, 3, 4))),  # M = 4 values per channel
        call("transposed", _leaf_view(base.t(), requires_grad)),
        call(
            "strided",
            _leaf_view(torch.randn(6, 8, device=device, dtype=dtype)[:, ::2], requires_grad),
        ),  # fmt: skip
        call("channels-last", _leaf_view(cl, requires_grad)),
        call("x-no-grad", make((6, 4), rg=False)),
        call("affine-no-grad", make((6, 4)), rg=False),
        call("wide", make((8, 300))),
        call("empty-batch-eval", make((0, 4)), training=False),
        call("empty-batch-train", make((0, 4))),  # native returns the empty y, updates nothing
    ]


def _batch_norm_batch(rows: int, device, dtype) -> tuple:
    """x [rows, 16] (BatchNorm1d) in eval mode, with running statistics, weight and bias: what
    export and ONNX take (training-mode calls are the samples' and tests/test_norms.py's)."""
    rm, rv = _running_stats(16, device, dtype)
    return (
        torch.randn(rows, 16, device=device, dtype=dtype) * 2 + 0.5,
        rm,
        rv,
        torch.rand(16, device=device, dtype=dtype) + 0.5,
        torch.randn(16, device=device, dtype=dtype),
        False,
        0.2,
        1e-4,
    )


def _batch_norm_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    channels = draw(st.integers(1, 4))
    rest = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    batch = draw(st.integers(2, 4))
    x = draw(tensors(shape=[batch, channels, *rest]))
    training = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    rm = torch.randn(channels, generator=gen, dtype=torch.float64)
    rv = torch.rand(channels, generator=gen, dtype=torch.float64) + 0.1
    stats = (rm, rv) if (not training or draw(st.booleans())) else (None, None)
    weight = draw(tensors(shape=[channels])) if draw(st.booleans()) else None
    bias = draw(tensors(shape=[channels])) if draw(st.booleans()) else None
    return (x, *stats, weight, bias, training, draw(st.sampled_from([0.1, 0.5])),
            draw(st.sampled_from([1e-5, 1e-3])))  # fmt: skip


def _batch_norm_error_inputs() -> list[ErrorInput]:
    x = _t(4, 3)
    rm, rv = torch.zeros(3), torch.ones(3)
    label = r"customgrad\.batch_norm"
    return [
        ErrorInput(
            "1-d x",
            lambda: (_t(3), rm, rv, None, None, True, 0.1, 1e-5),
            ValueError,
            label + r": x must be \[N, C\] or \[N, C, \*\] \(channels in dim 1\), got shape \[3\]",
        ),
        ErrorInput(
            "running_mean of the wrong size",
            lambda: (x, torch.zeros(4), rv, None, None, True, 0.1, 1e-5),
            ValueError,
            label + r": running_mean of shape \[4\] must be \[3\], one per channel",
        ),
        ErrorInput(
            "running_mean without running_var",
            lambda: (x, rm, None, None, None, True, 0.1, 1e-5),
            ValueError,
            label + r": running_mean and running_var go together",
        ),
        ErrorInput(
            "eval without running statistics",
            lambda: (x, None, None, None, None, False, 0.1, 1e-5),
            ValueError,
            label + r": running_mean and running_var must be given in evaluation mode",
        ),
        ErrorInput(
            "training on one value per channel",
            lambda: (_t(1, 3), rm, rv, None, None, True, 0.1, 1e-5),
            ValueError,
            label + r": training needs more than one value per channel",
        ),
        ErrorInput(
            "negative eps",
            lambda: (x, rm, rv, None, None, True, 0.1, -1.0),
            ValueError,
            label + r": eps must be finite and >= 0, got -1.0",
        ),
        ErrorInput(
            "running_mean that requires grad",
            lambda: (
                x.clone().requires_grad_(),
                torch.zeros(3, requires_grad=True),
                rv,
                None,
                None,
                True,
                0.1,
                1e-5,
            ),  # fmt: skip
            RuntimeError,
            label + r": running_mean requires grad, but running statistics get no gradient",
        ),
    ]


def _norm_fast_path(x: Tensor, normalized_shape: list[int], *affine_and_eps: object) -> bool:
    """rms_norm, layer_norm: contiguous, non-empty x over at least one dim, and a contiguous
    weight and bias (other layouts: the Python kernel)."""
    affine = [a for a in affine_and_eps if isinstance(a, Tensor)]
    return (
        x.is_contiguous()
        and x.numel() > 0
        and len(normalized_shape) > 0
        and all(a.is_contiguous() for a in affine)
    )


OPINFOS: list[OpslibOpInfo] = [
    OpslibOpInfo(
        op=torch.ops.customgrad.rms_norm,
        func=rms_norm,
        reference=F.rms_norm,
        reference_text="F.rms_norm(x, normalized_shape, weight, eps)",
        formula=(
            "y = x·r·w, r = 1/√(mean(x²)+ε) ; dL/dx = r·u - x·r³·mean(u·x) with u = w·g, "
            "dL/dw = Σ g·x·r"
        ),
        sample_inputs=_rms_norm_samples,
        batch_inputs=_rms_norm_batch,
        extreme_inputs=lambda x: (x, [x.shape[-1]], None, None),
        property_inputs=_rms_norm_property_inputs,
        inf_allowed_where_native_nan=_infinite_affine,
        error_inputs=_rms_norm_error_inputs,
        deliberate_refusals=(
            r"eps must be finite and >= 0",  # native takes a negative eps: nan or noise
        ),
        cpu_fast_path=_norm_fast_path,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.layer_norm,
        func=layer_norm,
        reference=F.layer_norm,
        reference_text="F.layer_norm(x, normalized_shape, weight, bias, eps)",
        formula=(
            "y = x̂·w + b, x̂ = (x-μ)·r, r = 1/√(σ²+ε) ; dL/dx = r·(u - mean(u) - x̂·mean(u·x̂)) "
            "with u = w·g, dL/dw = Σ g·x̂, dL/db = Σ g"
        ),
        sample_inputs=_layer_norm_samples,
        batch_inputs=_layer_norm_batch,
        extreme_inputs=lambda x: (x, [x.shape[-1]], None, None, 1e-5),
        property_inputs=_layer_norm_property_inputs,
        exact_reference=_layer_norm_textbook,
        inf_allowed_where_native_nan=_infinite_affine,
        error_inputs=_layer_norm_error_inputs,
        deliberate_refusals=(
            r"eps must be finite and >= 0",  # native takes a negative eps: nan or noise
        ),
        cpu_fast_path=_norm_fast_path,
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.batch_norm,
        func=batch_norm,
        reference=_native_batch_norm,
        reference_text="F.batch_norm(x, running_mean, running_var, weight, bias, training, ...)",
        exact_reference=_batch_norm_contiguous,
        formula=(
            "y = x̂·w + b, x̂ = (x-μ)·r per channel (training: the batch's μ, σ², running stats "
            "updated; eval: the running ones) ; training: dL/dx = r·(u - mean(u) - "
            "x̂·mean(u·x̂)), eval: r·u, u = w·g; dL/dw = Σ g·x̂, dL/db = Σ g"
        ),
        sample_inputs=_batch_norm_samples,
        batch_inputs=_batch_norm_batch,
        constant_args=(1, 2),  # the running statistics: buffers, no gradient
        extreme_inputs=lambda x: (
            x.detach().reshape(-1, 1).requires_grad_(x.requires_grad),  # one channel of 13
            None,
            None,
            None,
            None,
            True,
            0.1,
            1e-5,
        ),  # fmt: skip
        property_inputs=_batch_norm_property_inputs,
        error_inputs=_batch_norm_error_inputs,
        deliberate_refusals=(
            r"must be \[\w+\], one per channel of x",  # native reads any C elements
        ),
    ),
]
