"""The op table: every customgrad op, its plain-PyTorch reference, and its sample inputs.

Tests, benchmarks and the ONNX export scripts all loop over ``OP_TABLE``; a new op gets all of
them by adding one ``OpInfo`` here (and its translation next to its code).

Samples are deliberately awkward (the PyTorch custom-op tutorials' advice): 0-d and empty tensors,
transposed views, offset and strided slices, expanded (stride-0) views, extra leading dims, every
bias form, and inputs with and without ``requires_grad``. Arguments that are not tensors (floats,
ints, bools, lists, None) are passed as they are, in samples and batches alike, with values
other than their defaults where the op has them.

What differs from op to op is declared here, in its ``OpInfo``, and nowhere else: the tests,
benchmarks, export scripts and examples loop over ``OP_TABLE`` and name no op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core import triton_launchers as triton
from opslib.ops.adam import adam_step_
from opslib.ops.batch_norm import batch_norm
from opslib.ops.conv import conv1d, conv2d, conv_flops, native_conv
from opslib.ops.cross_entropy import cross_entropy
from opslib.ops.cube import cube
from opslib.ops.exp import exp
from opslib.ops.layer_norm import layer_norm
from opslib.ops.learned_silu import cpu_kernel_takes as learned_silu_cpu_kernel_takes
from opslib.ops.learned_silu import learned_silu
from opslib.ops.linear import linear
from opslib.ops.linear_cross_entropy import (
    linear_cross_entropy,
    native_linear_cross_entropy,
)
from opslib.ops.log_softmax import log_softmax
from opslib.ops.relu import relu
from opslib.ops.rms_norm import rms_norm
from opslib.ops.scaled_dot_product_attention import (
    scaled_dot_product_attention,
)
from opslib.ops.sigmoid import sigmoid
from opslib.ops.softmax import softmax
from opslib.ops.square import square
from opslib.ops.tanh import tanh

ALL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(arg: Any) -> str:
    """How an argument reads in test ids and failure messages: a tensor by its shape ("(nc)" if
    not contiguous), a list of tensors by its length, anything else by its repr."""
    if isinstance(arg, Tensor):
        return f"{list(arg.shape)}{'' if arg.is_contiguous() else '(nc)'}"
    if isinstance(arg, (list, tuple)) and any(isinstance(a, Tensor) for a in arg):
        return f"{len(arg)} tensors"  # a list argument (Tensor[] in the schema)
    return repr(arg)


@dataclass(frozen=True)
class Sample:
    """One call of an op: its positional arguments, and a name that says what is awkward."""

    name: str
    args: tuple[Any, ...]

    def __repr__(self) -> str:  # shows up in pytest ids and failure messages
        return f"{self.name}({', '.join(describe(a) for a in self.args)})"


def leaves(
    args: tuple,
    requires_grad: bool | None = True,
    dtype: torch.dtype | None = None,
    constant: tuple[int, ...] = (),
) -> tuple:
    """Fresh copies of the floating-point tensors of ``args`` (detached, optionally cast, each
    requiring grad if asked, or as the original did for ``requires_grad=None``; an
    ``nn.Parameter`` stays one); every other argument (integer tensors, floats, None...) as is.
    The tensors at the positions ``constant`` (an OpInfo's ``constant_args``) never require
    grad."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.is_floating_point():
            wants = a.requires_grad if requires_grad is None else requires_grad
            wants = wants and i not in constant
            copy = a.detach().to(dtype) if dtype is not None else a.detach().clone()
            if isinstance(a, torch.nn.Parameter):
                copy = torch.nn.Parameter(copy, requires_grad=wants)
            a = copy.requires_grad_(wants)
        out.append(a)
    return tuple(out)


def among_tensors(args: tuple, positions: tuple[int, ...]) -> tuple[int, ...]:
    """``positions`` in ``args`` as positions among its tensors alone: where they are in the
    tensor tuple that ``bind_constants`` (tests/conftest.py) passes on."""
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    return tuple(k for k, i in enumerate(tensor_positions) if i in positions)


def requiring_grad(args: tuple) -> list[Tensor]:
    """The tensors of ``args`` that require grad, in order: what a gradient is taken for."""
    return [a for a in args if isinstance(a, Tensor) and a.requires_grad]


@dataclass(frozen=True)
class ErrorInput:
    """A bad call of one op and the error it must raise, in eager mode and compiled."""

    name: str
    args: Callable[[], tuple]  # built when the test runs (some need inference mode, meta...)
    error: type[Exception]
    message: str  # regex that must appear: the op's name and the problem
    compiles: bool = True  # dynamo cannot trace some inputs at all (sparse tensors, lists)


@dataclass(frozen=True)
class TritonPath:
    """What an op launches on CUDA (``opslib/core/triton_launchers.py``), called directly so that
    the tests can run it anywhere (on CPU tensors under the Triton interpreter)."""

    forward: Callable[..., Tensor]  # (*args) -> y
    backward: Callable[..., tuple[Tensor, ...]]  # (grad_y, *args) -> gradient of each tensor
    supports: Callable[..., bool] = lambda *args: True  # calls the kernels take


SampleFn = Callable[[torch.device | str, torch.dtype, bool], list[Sample]]


def elements_label(size: int) -> str:
    """16, 4K, 256K, 4M: a benchmark size as the tables print it."""
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def _unary_extremes(x: Tensor) -> tuple:
    return (x,)


def _unary_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    return (draw(tensors()),)


def _never(args: tuple) -> bool:
    return False


@dataclass(frozen=True)
class OpInfo:
    """Everything the test, benchmark and export machinery needs to know about one op."""

    name: str
    func: Callable[..., Tensor]  # the public opslib function
    reference: Callable[..., Tensor]  # the native PyTorch equivalent (also the benchmark baseline)
    reference_text: str  # how the reference reads, for reports
    formula: str  # forward and gradient, one line each, for the README
    sample_inputs: SampleFn
    # Arguments for compile, export, ONNX, vmap, memory and autocast tests: a batch of `rows` rows
    # (dim 0 of the first tensor is the batch), non-tensor arguments at non-default values.
    batch_inputs: Callable[[int, torch.device | str, torch.dtype], tuple]
    # Benchmarks: sizes from per-call overhead (16 elements) to large, inputs for one size, and
    # the hardware limit the op is judged against ("bandwidth" or "matmul").
    bench_sizes: tuple[int, ...]
    bench_inputs: Callable[[int, torch.device | str, torch.dtype], tuple]
    roofline: str = "bandwidth"
    # More inputs to time, by name: benchmarks report each as its own row, "<op>[<name>]".
    bench_variants: dict[str, Callable[[int, torch.device | str, torch.dtype], tuple]] = field(
        default_factory=dict
    )
    # roofline "matmul": floating-point operations of one forward call at a benchmark size
    bench_forward_flops: Callable[[int], float] | None = None
    bench_size_unit: str = "elements"  # what a benchmark size counts, for plot axes
    bench_size_label: Callable[[int], str] = elements_label
    # Bytes saved for backward may be at most this fraction of native's (a fused op's claim).
    saved_fraction_of_native: float = 1.0
    # What the benchmarks time the op against, where that is not `reference` (conv: native's
    # own half-precision kernels, which the tests' reference does not call).
    bench_reference: Callable[..., Any] | None = None
    # Also time the eager op against torch.compile of its reference: for ops whose eager path is
    # itself fused, the question is whether that is as good as what the compiler makes.
    bench_against_compiled: bool = False
    # benchmarks/peak_memory.py: the bench size at which the peak memory of one forward +
    # backward is compared with native's (ops whose point is memory); None: not measured.
    bench_peak_memory_size: int | None = None
    # ... and the sizes at which it also draws the curve of peak memory and time (attention)
    bench_memory_curve: tuple[int, ...] = ()
    # Other implementations peak_memory.py measures besides native, by name (attention's
    # textbook composite, whose memory the op's blocks are there to avoid).
    bench_baselines: dict[str, Callable[..., Tensor]] = field(default_factory=dict)
    # Positions of batch_inputs' arguments whose dim 0 is the batch: the first, and any other
    # that goes with it (cross_entropy's targets). Export marks their dim 0 dynamic, and ONNX
    # parity models take them as inputs (the other tensors are parameters).
    batch_args: tuple[int, ...] = (0,)
    # Positions of floating-point tensor arguments that take no gradient (cross_entropy's class
    # weights): the tests and benchmarks never make them require grad (``leaves(constant=)``).
    constant_args: tuple[int, ...] = ()
    dtypes: tuple[torch.dtype, ...] = ALL_FLOAT_DTYPES
    # dtypes that onnxruntime's CPU provider has no kernel for in this op's translation, with
    # what is missing: the export scripts do not run parity in them, and say so.
    onnxruntime_missing: dict[torch.dtype, str] = field(default_factory=dict)
    # (atol, rtol) against the reference in float32 (values and gradients). float16/bfloat16 are
    # judged against a float64 reference relative to native's own error (see tests).
    float32_tol: tuple[float, float] = (1e-5, 1.3e-6)
    # The op's arguments around a 1-D tensor of extreme values (±inf, nan, ±1e4...), for the
    # comparison with native; None: not run (linear: its sums of ±inf are order-dependent).
    extreme_inputs: Callable[[Tensor], tuple] | None = _unary_extremes
    # Property tests: the op's arguments, drawn with hypothesis's ``draw`` from its strategies
    # module ``st`` and the test's ``tensors(shape=None)`` strategy (random shape, layout and
    # extreme values). The test passes both in: the package does not depend on hypothesis.
    property_inputs: Callable[[Callable, ModuleType, Callable], tuple] = _unary_property_inputs
    # Property tests: the true value, evaluated in float64 (with autograd for gradients); None:
    # the reference. For ops whose native algorithm loses digits even in float64 (layer_norm's
    # x·r - μ·r for rows far from zero), a textbook formula that does not.
    exact_reference: Callable[..., Tensor] | None = None
    # Property tests: calls where the op may give ±inf where native's float64 expression gives
    # nan (the op computes the limit; see learned_silu).
    inf_allowed_where_native_nan: Callable[[tuple], bool] = _never
    # Bad calls particular to this op (the tests add those every op shares: wrong dtypes,
    # layouts and devices, non-tensors).
    error_inputs: Callable[[], list[ErrorInput]] = list
    # Calls native answers that the op refuses on purpose, by the op's error message (regexes),
    # each for a stated reason: the fuzzer (tests/fuzz.py) counts such a refusal as deliberate,
    # and any other refusal of a call native answers as a failure.
    deliberate_refusals: tuple[str, ...] = ()
    # The ONNX translation of an op from outside opslib (a user's, the tests' own); opslib's ops
    # register theirs in their own files (register_onnx_translation), read by opslib.onnx.
    onnx_translation: Callable[..., Any] | None = None
    # The CUDA path's Triton kernels, or None if the op has none.
    triton: TritonPath | None = None
    # Which valid calls without autograd the C++ CPU fast path (opslib/csrc) computes itself;
    # None if the op has no C++ kernel. Every other call must reach the Python kernel.
    cpu_fast_path: Callable[..., bool] | None = None
    namespace: str = "customgrad"

    @property
    def op(self) -> torch._ops.OpOverload:
        return getattr(getattr(torch.ops, self.namespace), self.name).default

    @property
    def label(self) -> str:
        """How the op's error messages name it, e.g. ``customgrad.linear``."""
        return f"{self.namespace}.{self.name}"

    @property
    def bench_native(self) -> Callable[..., Any]:
        """The native function the benchmarks time the op against."""
        return self.bench_reference or self.reference


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


def _rows_bench(numel: int, device, dtype) -> tuple:
    """x as rows of 4096 (16M elements: [4096, 4096]), along the last dim."""
    width = min(numel, 4096)
    return (torch.randn(numel // width, width, device=device, dtype=dtype) * 4, -1)


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


def _rms_norm_bench(numel: int, device, dtype) -> tuple:
    """Rows of 4096 (16M elements: [4096, 4096]) with a weight, as a transformer's norm."""
    width = min(numel, 4096)
    return (
        torch.randn(numel // width, width, device=device, dtype=dtype),
        [width],
        torch.rand(width, device=device, dtype=dtype) + 0.5,
        None,
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


def _layer_norm_bench(numel: int, device, dtype) -> tuple:
    x, shape, weight, _ = _rms_norm_bench(numel, device, dtype)
    return (x, shape, weight, torch.randn(shape, device=device, dtype=dtype), 1e-5)


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


def _native_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0) -> Tensor:  # fmt: skip
    return F.cross_entropy(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing,
    )  # fmt: skip


def _ignored_rows_zeroed(input, target, *rest) -> Tensor:
    """cross_entropy's exact value for the property tests: native's, with the logits of ignored
    targets set to 0. They contribute nothing to the loss, so their gradient is exactly 0;
    native's log_softmax backward turns an inf or nan logit there into a nan gradient."""
    ignore_index = rest[1] if len(rest) > 1 else -100
    valid = target != ignore_index
    mask = valid.unsqueeze(1) if input.dim() >= 2 else valid
    return _native_cross_entropy(input.where(mask, 0), target, *rest)


def _ignored_tokens_dropped(x, weight, target, bias=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0) -> Tensor:  # fmt: skip
    """linear_cross_entropy's exact value for the property tests: the composite's over the
    tokens whose targets count (ignored ones contribute nothing, so their gradient is exactly 0,
    where the composite's can be 0·inf = nan), 0 for the others under reduction "none"."""
    if target.dim() == 0:  # one token: as a batch of one
        one = _ignored_tokens_dropped(x.unsqueeze(0), weight, target.unsqueeze(0), bias,
                                      ignore_index, reduction, label_smoothing)  # fmt: skip
        return one.reshape(())
    counted = target != ignore_index
    kept = native_linear_cross_entropy(
        x[counted], weight, target[counted], bias, ignore_index,
        "none" if reduction == "none" else reduction, label_smoothing,
    )  # fmt: skip
    if reduction != "none":
        return kept
    return torch.zeros(target.shape, dtype=kept.dtype).index_put((counted,), kept)


def _targets(shape, classes: int, device, ignore_index: int | None = None) -> Tensor:
    """Class indices in [0, classes); with ``ignore_index``, the first target is that."""
    t = torch.randint(0, classes, shape, device=device)
    if ignore_index is not None and t.numel():
        t.view(-1)[0] = ignore_index
    return t


def _cross_entropy_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg, scale=2.0)

    def weight(c):
        return torch.rand(c, device=device, dtype=dtype) + 0.5  # class weights: no gradient

    def t(shape, classes=5, ignore=None):
        return _targets(shape, classes, device, ignore)

    wide = 300  # a row of vectors and a tail in the C++ kernels
    return [
        Sample("rows", (make((4, 5)), t((4,)), None, -100, "mean", 0.0)),
        Sample("weighted-mean", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "mean", 0.0)),
        Sample("sum", (make((6, 5)), t((6,), ignore=-100), None, -100, "sum", 0.0)),
        Sample("none", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "none", 0.0)),
        Sample("smoothing", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "mean", 0.1)),
        Sample("smoothing-none", (make((6, 5)), t((6,)), None, -100, "none", 0.3)),
        Sample("smoothing-sum", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "sum", 1.0)),
        Sample("one-sample", (make((5,)), t(()), None, -100, "mean", 0.0)),
        Sample("one-sample-none", (make((5,)), t(()), weight(5), -100, "none", 0.2)),
        Sample(
            "spatial",
            (make((2, 5, 3, 4)), t((2, 3, 4), ignore=-100), weight(5), -100, "mean", 0.1),
        ),
        Sample("spatial-none", (make((2, 5, 3)), t((2, 3)), None, -100, "none", 0.0)),
        Sample("ignore-index-2", (make((8, 5)), t((8,), ignore=2), None, 2, "mean", 0.05)),
        Sample(
            "all-ignored-sum",
            (make((3, 5)), torch.full((3,), -1, device=device), None, -1, "sum", 0.1),
        ),  # fmt: skip
        Sample("empty-batch", (make((0, 5)), t((0,)), None, -100, "sum", 0.0)),
        Sample("one-class", (make((4, 1)), t((4,), classes=1), None, -100, "mean", 0.0)),
        Sample(
            "transposed",
            (
                _leaf_view(torch.randn(5, 4, device=device, dtype=dtype).t(), requires_grad),
                t((4,)),
                weight(5),
                -100,
                "mean",
                0.1,
            ),
        ),  # fmt: skip
        Sample("no-grad", (make((4, 5), rg=False), t((4,)), None, -100, "mean", 0.0)),
        Sample("wide-row", (make((3, wide)), t((3,), wide), weight(wide), -100, "mean", 0.1)),
    ]


CROSS_ENTROPY_CLASSES = 11  # batch_inputs: no batch size the tests use is 11


def _cross_entropy_batch(rows: int, device, dtype) -> tuple:
    """Logits [rows, 11], their targets (the batch, too), class weights, ignore_index 1 (a class
    index, so some targets are ignored; never the first, so that every batch has a mean: one of
    only ignored targets has none, nan), label smoothing."""
    classes = CROSS_ENTROPY_CLASSES
    target = _targets((rows,), classes, device)
    if rows:
        target[0] = 2
    return (
        torch.randn(rows, classes, device=device, dtype=dtype) * 2,
        target,
        torch.rand(classes, device=device, dtype=dtype) + 0.5,
        1,
        "mean",
        0.1,
    )


CROSS_ENTROPY_BENCH_CLASSES = 32768  # a vocabulary: [8192, 32768] logits at 256M elements


def _cross_entropy_bench(numel: int, device, dtype) -> tuple:
    classes = min(numel, CROSS_ENTROPY_BENCH_CLASSES)
    rows = numel // classes
    # logits of a trained model's scale: standard normal (FACTS: large ones go denormal)
    return (
        torch.randn(rows, classes, device=device, dtype=dtype),
        _targets((rows,), classes, device),
        None,
        -100,
        "mean",
        0.0,
    )


def _cross_entropy_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    classes = draw(st.integers(1, 4))
    form = draw(st.sampled_from(["rows", "one-sample", "spatial"]))
    batch = draw(st.integers(0, 4))
    if form == "rows":
        shape, target_shape = [batch, classes], [batch]
    elif form == "one-sample":
        shape, target_shape = [classes], []
    else:
        spatial = draw(st.integers(1, 3))
        shape, target_shape = [batch, classes, spatial], [batch, spatial]
    x = draw(tensors(shape=shape))
    ignore_index = draw(st.sampled_from([-100, 0]))
    n = 1
    for d in target_shape:
        n *= d
    values = draw(st.lists(st.integers(-1, classes - 1), min_size=n, max_size=n))
    target = torch.tensor([ignore_index if v < 0 else v for v in values], dtype=torch.long)
    weight = None
    if draw(st.booleans()):  # class weights are positive and finite in practice
        seed = draw(st.integers(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        weight = torch.rand(classes, generator=gen, dtype=torch.float64) * 2 + 0.1
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return (x, target.reshape(target_shape), weight, ignore_index, reduction,
            draw(st.sampled_from([0.0, 0.1, 1.0])))  # fmt: skip


def _cross_entropy_error_inputs() -> list[ErrorInput]:
    x = _t(4, 5)
    t = torch.tensor([0, 1, 2, 3])
    label = r"customgrad\.cross_entropy"

    def weight_requiring_grad() -> tuple:
        return (x.clone().requires_grad_(), t, torch.rand(5).requires_grad_(), -100, "mean", 0.0)

    return [
        ErrorInput(
            "target past the last class",
            lambda: (x, torch.tensor([0, 1, 7, 3]), None, -100, "mean", 0.0),
            IndexError,
            label + r": target 7 is out of range for 5 classes \(expected 0 to 4, or "
            r"ignore_index -100\)",
        ),
        ErrorInput(
            "negative target that is not ignore_index",
            lambda: (x, torch.tensor([0, -1, 2, 3]), None, -100, "sum", 0.0),
            IndexError,
            label + r": target -1 is out of range for 5 classes",
        ),
        ErrorInput(
            "target out of range with spatial dims",
            lambda: (_t(2, 5, 3), torch.tensor([[0, 1, 2], [3, 4, 5]]), None, -100, "none", 0.0),
            IndexError,
            label + r": target 5 is out of range for 5 classes",
        ),
        ErrorInput(
            "probability targets",
            lambda: (x, torch.softmax(_t(4, 5), -1), None, -100, "mean", 0.0),
            TypeError,
            label + r": target must be an integer tensor of class indices, got torch\.float32",
        ),
        ErrorInput(
            "target of the wrong shape",
            lambda: (x, torch.tensor([0, 1, 2]), None, -100, "mean", 0.0),
            ValueError,
            label + r": target of shape \[3\] must have shape \[4\] \(one class index per "
            r"sample\) for input of shape \[4, 5\]",
        ),
        ErrorInput(
            "weight of the wrong shape",
            lambda: (x, t, torch.rand(4), -100, "mean", 0.0),
            ValueError,
            label + r": weight of shape \[4\] must have one value per class, \[5\]",
        ),
        ErrorInput(
            "unknown reduction",
            lambda: (x, t, None, -100, "avg", 0.0),
            ValueError,
            label + r": reduction must be 'none', 'mean' or 'sum', got 'avg'",
        ),
        ErrorInput(
            "label_smoothing above 1",
            lambda: (x, t, None, -100, "mean", 1.5),
            ValueError,
            label + r": label_smoothing must be in \[0, 1\], got 1.5",
        ),
        ErrorInput(
            "0-d input",
            lambda: (_t(), torch.tensor(0), None, -100, "mean", 0.0),
            ValueError,
            label + r": input must have a class dim, got a 0-d tensor",
        ),
        ErrorInput(
            "weight that requires grad",
            weight_requiring_grad,
            RuntimeError,
            label + r": weight requires grad, but class weights get no gradient",
        ),
    ]


def _linear_cross_entropy_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    hidden, classes = 8, 13

    def make(shape, rg=requires_grad, scale=1.0):
        return _make(shape, device, dtype, rg, scale=scale)

    def w(rg=requires_grad):
        return make((classes, hidden), rg, scale=0.4)

    def t(shape, ignore=None):
        return _targets(shape, classes, device, ignore)

    def call(name, x, target, bias=True, reduction="mean", smoothing=0.0, ignore=-100, **kw):
        b = make((classes,), kw.get("bias_rg", requires_grad)) if bias else None
        return Sample(name, (x, kw.get("weight", w()), target, b, ignore, reduction, smoothing))

    return [
        call("rows", make((6, hidden)), t((6,))),
        call("ignored-mean", make((6, hidden)), t((6,), ignore=-100)),
        call("sum", make((6, hidden)), t((6,), ignore=-100), reduction="sum"),
        call("none", make((6, hidden)), t((6,), ignore=-100), reduction="none"),
        call("smoothing", make((6, hidden)), t((6,), ignore=-100), smoothing=0.1),
        call("smoothing-none-no-bias", make((5, hidden)), t((5,)), False, "none", 0.3),
        call("no-bias", make((6, hidden)), t((6,)), bias=False),
        call("3-d-x", make((2, 3, hidden)), t((2, 3), ignore=-100), smoothing=0.05),
        call("3-d-x-none", make((2, 3, hidden)), t((2, 3)), reduction="none"),
        call("one-token", make((hidden,)), t(()), reduction="sum"),
        call("ignore-index-4", make((8, hidden)), t((8,), ignore=4), ignore=4),
        call("empty-batch", make((0, hidden)), t((0,)), reduction="sum"),
        call(
            "transposed-weight",
            make((4, hidden)),
            t((4,)),
            weight=_leaf_view(
                torch.randn(hidden, classes, device=device, dtype=dtype).t() * 0.4, requires_grad
            ),  # fmt: skip
        ),
        call("weight-only-grad", make((4, hidden), rg=False), t((4,)), bias_rg=False),
        call("x-only-grad", make((4, hidden)), t((4,)), weight=w(rg=False), bias_rg=False),
        call("no-grad", make((4, hidden), rg=False), t((4,)), weight=w(rg=False), bias_rg=False),
    ]


LINEAR_CROSS_ENTROPY_CLASSES = 97  # batch_inputs: no batch size the tests use is 97


def _linear_cross_entropy_batch(rows: int, device, dtype) -> tuple:
    """Hidden states [rows, 16], a [97, 16] projection and bias, targets (the batch, too) with
    ignore_index 1 (never the first: every batch has a mean), label smoothing."""
    hidden, classes = 16, LINEAR_CROSS_ENTROPY_CLASSES
    target = _targets((rows,), classes, device)
    if rows:
        target[0] = 2
    return (
        torch.randn(rows, hidden, device=device, dtype=dtype),
        torch.randn(classes, hidden, device=device, dtype=dtype) * 0.5,
        target,
        torch.randn(classes, device=device, dtype=dtype) * 0.1,
        1,
        "mean",
        0.1,
    )


LCE_BENCH_HIDDEN, LCE_BENCH_CLASSES = 1024, 32768  # the issue's: hidden 1024, vocabulary 32K


def _linear_cross_entropy_bench(tokens: int, device, dtype) -> tuple:
    """Hidden states [tokens, 1024] of a trained model's scale, a [32768, 1024] output
    projection initialised as nn.Linear's (logits of std ~0.6: FACTS, no denormals)."""
    hidden, classes = (4, 4) if tokens == 1 else (LCE_BENCH_HIDDEN, LCE_BENCH_CLASSES)
    return (
        torch.randn(tokens, hidden, device=device, dtype=dtype),
        torch.empty(classes, hidden, device=device, dtype=dtype).uniform_(-1, 1) / hidden**0.5,
        _targets((tokens,), classes, device),
        None,
        -100,
        "mean",
        0.0,
    )


def _linear_cross_entropy_flops(tokens: int) -> float:
    hidden, classes = (4, 4) if tokens == 1 else (LCE_BENCH_HIDDEN, LCE_BENCH_CLASSES)
    return 2 * tokens * hidden * classes


def _linear_cross_entropy_property_inputs(
    draw: Callable, st: ModuleType, tensors: Callable
) -> tuple:
    hidden, classes = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    x = draw(tensors(shape=[*batch, hidden]))
    weight = draw(tensors(shape=[classes, hidden]))
    bias = draw(tensors(shape=[classes])) if draw(st.booleans()) else None
    ignore_index = draw(st.sampled_from([-100, 0]))
    n = math.prod(batch)
    values = draw(st.lists(st.integers(-1, classes - 1), min_size=n, max_size=n))
    target = torch.tensor([ignore_index if v < 0 else v for v in values], dtype=torch.long)
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return (x, weight, target.reshape(batch), bias, ignore_index, reduction,
            draw(st.sampled_from([0.0, 0.1])))  # fmt: skip


def _linear_cross_entropy_error_inputs() -> list[ErrorInput]:
    x, w, t = _t(4, 3), _t(5, 3), torch.tensor([0, 1, 2, 3])
    label = r"customgrad\.linear_cross_entropy"
    return [
        ErrorInput(
            "target past the last class",
            lambda: (x, w, torch.tensor([0, 1, 5, 3]), None, -100, "mean", 0.0),
            IndexError,
            label + r": target 5 is out of range for 5 classes",
        ),
        ErrorInput(
            "hidden size mismatch",
            lambda: (_t(4, 6), w, t, None, -100, "mean", 0.0),
            ValueError,
            label + r": x of shape \[4, 6\] must end in weight's hidden size 3",
        ),
        ErrorInput(
            "weight 1-D",
            lambda: (x, _t(3), t, None, -100, "mean", 0.0),
            ValueError,
            label + r": weight must be 2-D \[classes, hidden\], got shape \[3\]",
        ),
        ErrorInput(
            "target of the wrong shape",
            lambda: (x, w, torch.tensor([0, 1]), None, -100, "mean", 0.0),
            ValueError,
            label + r": target of shape \[2\] must have shape \[4\]",
        ),
        ErrorInput(
            "bias of the wrong shape",
            lambda: (x, w, t, _t(4), -100, "mean", 0.0),
            ValueError,
            label + r": bias of shape \[4\] must be \[5\], one per class",
        ),
        ErrorInput(
            "unknown reduction",
            lambda: (x, w, t, None, -100, "max", 0.0),
            ValueError,
            label + r": reduction must be 'none', 'mean' or 'sum', got 'max'",
        ),
        ErrorInput(
            "probability targets",
            lambda: (x, w, torch.rand(4, 5), None, -100, "mean", 0.0),
            TypeError,
            label + r": target must be an integer tensor of class indices",
        ),
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


def _batch_norm_bench(numel: int, device, dtype) -> tuple:
    """Training, BatchNorm1d on [rows, channels]: [4096, 4096] at 16M elements."""
    channels = min(max(numel // 4, 1), 4096)
    rm, rv = _running_stats(channels, device, dtype)
    return (
        torch.randn(numel // channels, channels, device=device, dtype=dtype),
        rm,
        rv,
        torch.rand(channels, device=device, dtype=dtype) + 0.5,
        torch.randn(channels, device=device, dtype=dtype),
        True,
        0.1,
        1e-5,
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


def _softmax_triton(log: bool) -> TritonPath:
    return TritonPath(
        forward=lambda x, dim: triton.softmax_forward(x, dim, log),
        backward=lambda g, x, dim: (
            triton.softmax_backward(g, triton.softmax_forward(x, dim, log), dim, log),
        ),
        supports=triton.softmax_supported,
    )


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


def _linear_bench_flops(rows: int) -> float:
    m, k, n = linear_bench_shape(rows)
    return 2 * m * k * n


def _linear_bench_label(rows: int) -> str:
    m, k, n = linear_bench_shape(rows)
    return f"[{m},{k}]x[{k},{n}]"


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


def _learned_silu_bench_parameter(numel: int, device, dtype) -> tuple[Tensor, ...]:
    """The slope an nn.Parameter, as opslib.nn.LearnedSiLU passes it."""
    x, slope = _learned_silu_bench(numel, device, dtype)
    return x, torch.nn.Parameter(slope)


def _learned_silu_bench_per_channel(numel: int, device, dtype) -> tuple[Tensor, ...]:
    """One slope per channel of x's last dim, as opslib.nn.LearnedSiLU(num_parameters=C)."""
    channels = min(numel, 1024)
    return (
        torch.randn(numel // channels, channels, device=device, dtype=dtype),
        torch.nn.Parameter(torch.rand(channels, device=device, dtype=dtype) + 0.5),
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


def _linear_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    batch = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    in_f, out_f = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    x = draw(tensors(shape=[*batch, in_f]))
    w = draw(tensors(shape=[out_f, in_f]))
    bias_shape = draw(st.sampled_from([None, [out_f], [1] * len(batch) + [out_f], [*batch, out_f]]))
    return (x, w, None if bias_shape is None else draw(tensors(shape=bias_shape)))


def _learned_silu_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    x = draw(tensors())
    # slope must broadcast to x without enlarging it: [] always; [1] and [C] need a dim
    slope_shape = draw(st.sampled_from([[], [1], list(x.shape[-1:])] if x.dim() else [[]]))
    return (x, draw(tensors(shape=slope_shape)))


def _learned_silu_extremes(x: Tensor) -> tuple:
    return (x, torch.tensor([0.75], requires_grad=x.requires_grad))


def _infinite_affine(args: tuple) -> bool:
    """rms_norm, layer_norm with an infinite weight or bias: each dL/dx_k then has one
    infinite term (from u_j = w_j·g_j), whose limit, ±inf, the op may give where native's
    float64 expression subtracts two infinite row sums and gives nan."""
    return any(isinstance(a, Tensor) and bool(torch.isinf(a).any()) for a in args[2:4])


def _learned_silu_infinite_slope(args: tuple) -> bool:
    """With an infinite slope, native computes dL/dx = slope·s + (slope·x)·s(1-s) as inf + inf·0
    = nan where sigmoid(x) rounds to 1; the op's slope·s·(1 + x(1-s)) gives the limit, ±inf."""
    return bool(torch.isinf(args[1]).any())


def _t(*shape: int) -> Tensor:
    return torch.randn(shape)


def _inference_x() -> tuple:
    with torch.inference_mode():
        x = _t(4, 3)
    return (x, _t(5, 3).requires_grad_())


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
        forward=lambda x: triton.unary_forward(kernel, x),
        backward=lambda g, x: (triton.unary_backward(kernel, g, x if saved is None else saved(x)),),
    )


_LEARNED_SILU_TRITON = TritonPath(
    forward=triton.learned_silu_forward,
    backward=lambda g, x, slope: triton.learned_silu_backward(g, x, slope),
    supports=triton.learned_silu_supported,
)


def _every_call(*args: object) -> bool:
    return True


def _linear_fast_path(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    return bias is None or bias.dim() == 1  # other bias forms: the Python kernel


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


def _learned_silu_fast_path(x: Tensor, slope: Tensor) -> bool:
    return learned_silu_cpu_kernel_takes(x, slope)  # other slope forms: the Python kernel


def _conv_info(dims: int) -> OpInfo:
    """conv1d's and conv2d's entries: one op each, the same machinery with d spatial dims."""
    shape, side = ("[N, C, L]", ",56") if dims == 1 else ("[N, C, H, W]", ",56,56")
    tiny = "[1,1,4]" if dims == 1 else "[1,1,4,4]"
    return OpInfo(
        name=f"conv{dims}d",
        func=conv1d if dims == 1 else conv2d,
        reference=native_conv(dims),
        bench_reference=native_conv(dims, half_in_float32=False),
        reference_text=f"F.conv{dims}d(x, W, b, stride, padding, dilation, groups)",
        formula=(
            "y = b + Σ W ⋆ x (cross-correlation) ; dL/dx = conv_transpose(g, W), "
            "dL/dW = correlation of x with g, dL/db = Σ g"
        ),
        sample_inputs=_conv_samples(dims),
        batch_inputs=_conv_batch(dims),
        bench_sizes=(1, 8, 32),
        bench_inputs=_conv_bench(dims),
        roofline="matmul",
        bench_forward_flops=_conv_bench_flops(dims),
        bench_size_unit=f"batch of {shape} (64 channels, 56 wide, 3-wide kernel)",
        bench_size_label=lambda n: tiny if n == 1 else f"[{n},64{side}]",
        extreme_inputs=None,  # sums of ±inf through a convolution are order-dependent
        property_inputs=_conv_property_inputs(dims),
        error_inputs=_conv_error_inputs(dims),
        float32_tol=(3e-5, 1e-5),
        onnxruntime_missing={torch.float64: "no float64 Conv kernel"},
    )


# ---- scaled_dot_product_attention ----


def _native_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      enable_gqa=False) -> Tensor:  # fmt: skip
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
    )


def math_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False) -> Tensor:  # fmt: skip
    """Attention as the textbook writes it in torch ops, softmax(q kᵀ·scale + m) v: autograd
    saves its [L, S] scores and probabilities (the benchmarks' "math" baseline)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if enable_gqa:
        groups = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
    s = (q * scale) @ k.transpose(-2, -1)
    if is_causal:
        above = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1)
        s = s.masked_fill(above, -math.inf)
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        s = s.masked_fill(~attn_mask, -math.inf)
    elif attn_mask is not None:
        s = s + attn_mask
    return torch.softmax(s, -1) @ v


def _attention_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def qkv(lead, rows, keys, e=4, ev=3, kv_lead=None, rg=requires_grad):
        kv_lead = lead if kv_lead is None else kv_lead
        return (
            make((*lead, rows, e), rg),
            make((*kv_lead, keys, e), rg),
            make((*kv_lead, keys, ev), rg),
        )

    def call(name, q, k, v, mask=None, causal=False, scale=None, gqa=False) -> Sample:
        return Sample(name, (q, k, v, mask, 0.0, causal, scale, gqa))

    bool_mask = torch.rand(5, 7, device=device) > 0.4
    bool_mask[:, 0] = True
    bool_mask[2] = False  # a fully masked row: output and gradients 0, as native
    base = torch.randn(2, 5, 3, 4, device=device, dtype=dtype)  # [batch, L, heads, E]
    return [
        call("heads", *qkv((2, 3), 5, 7)),
        call("causal-L<S", *qkv((2, 2), 4, 6), causal=True),
        call("causal-L>S", *qkv((2, 2), 6, 4), causal=True),
        call("bool-mask[L,S]", *qkv((2, 3), 5, 7), mask=bool_mask),
        call("float-mask[H,1,S]", *qkv((2, 3), 5, 7), mask=make((3, 1, 7))),
        call("float-mask[B,H,L,S]", *qkv((2, 3), 5, 7), mask=make((2, 3, 5, 7))),
        call("float-mask-no-grad", *qkv((2,), 5, 7), mask=make((5, 7), rg=False)),
        call("scale", *qkv((2, 3), 5, 7), scale=0.3),
        call("gqa", *qkv((2, 4), 5, 7, kv_lead=(2, 2)), gqa=True),
        call("gqa-causal", *qkv((1, 6), 5, 3, kv_lead=(1, 2)), causal=True, gqa=True),
        call("3-d", *qkv((3,), 5, 7)),
        call("2-d", *qkv((), 5, 7)),
        call("broadcast-batch", make((3, 5, 4)), make((2, 3, 7, 4)), make((2, 3, 7, 3))),
        call("one-query", *qkv((2, 3), 1, 7)),
        call("one-key", *qkv((2, 3), 5, 1)),
        call("no-queries", *qkv((2, 3), 0, 7)),
        call(
            "transposed-[B,L,H,E]",
            _leaf_view(base.transpose(1, 2), requires_grad),
            _leaf_view(base.transpose(1, 2).clone(), requires_grad),
            _leaf_view(base.transpose(1, 2).clone(), requires_grad),
        ),
        call("k-only-grad", *(a if i == 1 else a.detach() for i, a in enumerate(qkv((2,), 5, 7)))),
        call("no-grad", *qkv((2, 3), 5, 7, rg=False)),
    ]


def _attention_batch(rows: int, device, dtype) -> tuple:
    """q [rows, 10, 7, 12], k [rows, 5, 9, 12], v [rows, 5, 9, 11] (grouped-query: two query
    heads per key head), a [7, 9] float mask, scale 0.25: no dim equals a batch size the tests
    use."""
    return (
        torch.randn(rows, 10, 7, 12, device=device, dtype=dtype),
        torch.randn(rows, 5, 9, 12, device=device, dtype=dtype),
        torch.randn(rows, 5, 9, 11, device=device, dtype=dtype),
        torch.randn(7, 9, device=device, dtype=dtype),
        0,  # dropout_p: an int, so that the tests that vary every float argument leave it 0
        False,
        0.25,
        True,
    )


ATTENTION_BENCH_HEADS, ATTENTION_BENCH_HEAD_DIM = 8, 64  # the issue's: batch 1, 8 heads, dim 64


def _attention_bench(length: int, device, dtype) -> tuple:
    """Self-attention of batch 1, 8 heads of dim 64, L = S = length, causal off, no mask."""
    q, k, v = (
        torch.randn(
            1, ATTENTION_BENCH_HEADS, length, ATTENTION_BENCH_HEAD_DIM, device=device, dtype=dtype
        )  # fmt: skip
        for _ in range(3)
    )
    return (q, k, v, None, 0.0, False, None, False)


def _attention_bench_causal(length: int, device, dtype) -> tuple:
    return (*_attention_bench(length, device, dtype)[:5], True, None, False)


def _attention_flops(length: int) -> float:
    """Forward: Q Kᵀ and P V, 2·L·S·E each, per head."""
    return 2 * 2 * ATTENTION_BENCH_HEADS * length * length * ATTENTION_BENCH_HEAD_DIM


def _attention_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    rows, keys, e, ev = (draw(st.integers(0 if i == 0 else 1, 4)) for i in range(4))
    heads_kv = draw(st.integers(1, 2))
    gqa = draw(st.booleans())
    heads_q = heads_kv * (draw(st.integers(1, 2)) if gqa else 1)
    # finite extremes only: on inf and nan, native's own float32 and float64 kernels disagree
    # (nan against inf where a p that underflows meets an infinite value), so there is no one
    # native answer to match; the samples cover fully masked rows
    q = draw(tensors(shape=[heads_q, rows, e], finite=True))
    k = draw(tensors(shape=[heads_kv, keys, e], finite=True))
    v = draw(tensors(shape=[heads_kv, keys, ev], finite=True))
    form = draw(st.sampled_from(["none", "causal", "bool", "float"]))
    mask = None
    if form == "bool":
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=rows * keys,
                                          max_size=rows * keys))).reshape(rows, keys)  # fmt: skip
    elif form == "float":
        mask = draw(tensors(shape=[rows, keys], finite=True))
    scale = draw(st.sampled_from([None, 0.5]))
    return (q, k, v, mask, 0.0, form == "causal", scale, gqa)


def _attention_error_inputs() -> list[ErrorInput]:
    q, k, v = _t(2, 5, 4), _t(2, 7, 4), _t(2, 7, 3)
    label = r"customgrad\.scaled_dot_product_attention"

    def call(q=q, k=k, v=v, mask=None, dropout=0.0, causal=False, scale=None, gqa=False):
        return (q, k, v, mask, dropout, causal, scale, gqa)

    return [
        ErrorInput(
            "1-D mask",
            lambda: call(mask=_t(7)),
            ValueError,
            label + r": attn_mask must have at least 2 dims \(\[\.\.\., L, S\]\), got shape \[7\]",
        ),
        ErrorInput(
            "nan scale",
            lambda: call(scale=float("nan")),
            ValueError,
            label + r": scale must be finite \(or None for 1/sqrt\(E\)\), got nan",
        ),
        ErrorInput(
            "dropout",
            lambda: call(dropout=0.1),
            NotImplementedError,
            label + r": dropout_p=0.1 is not supported",
        ),
        ErrorInput(
            "feature sizes differ",
            lambda: call(k=_t(2, 7, 5)),
            ValueError,
            label + r": q and k must have the same feature size E",
        ),
        ErrorInput(
            "key counts differ",
            lambda: call(v=_t(2, 6, 3)),
            ValueError,
            label + r": k and v must have the same number of keys S",
        ),
        ErrorInput(
            "1-d q",
            lambda: call(q=_t(4)),
            ValueError,
            label + r": q must have at least 2 dims",
        ),
        ErrorInput(
            "heads differ without enable_gqa",
            lambda: call(q=_t(4, 5, 4)),
            ValueError,
            label + r": the leading dims of q \[4, 5, 4\].* do not broadcast .*enable_gqa",
        ),
        ErrorInput(
            "gqa heads not a multiple",
            lambda: call(q=_t(3, 5, 4), gqa=True),
            ValueError,
            label + r": enable_gqa needs q's heads \(3\) to be a multiple of k's \(2\)",
        ),
        ErrorInput(
            "mask and causal",
            lambda: call(mask=torch.ones(5, 7, dtype=torch.bool), causal=True),
            ValueError,
            label + r": attn_mask and is_causal=True were both given",
        ),
        ErrorInput(
            "mask of the wrong shape",
            lambda: call(mask=_t(4, 7)),
            ValueError,
            label + r": attn_mask of shape \[4, 7\] does not broadcast to the scores' shape "
            r"\[2, 5, 7\]",
        ),
        ErrorInput(
            "integer mask",
            lambda: call(mask=torch.ones(5, 7, dtype=torch.int64)),
            TypeError,
            label + r": attn_mask must be a floating-point tensor of q's dtype .* or a bool "
            r"tensor .*, got torch.int64",
        ),
        ErrorInput(
            "float64 mask for float32 q",
            lambda: call(mask=torch.zeros(5, 7, dtype=torch.float64)),
            TypeError,
            label + r": q and attn_mask must have the same dtype \(or attn_mask bool\), got q "
            r"torch.float32 and attn_mask torch.float64",
        ),
    ]


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


CONV_BENCH_CHANNELS, CONV_BENCH_SPATIAL = 64, 56  # the issue's [32, 64, 56, 56], 3x3, 64 -> 64


def _conv_bench(dims: int) -> Callable[[int, Any, torch.dtype], tuple]:
    def bench(batch: int, device, dtype) -> tuple:
        """batch 1: [1, 1, 4(, 4)] (overhead); else [batch, 64, 56(, 56)] with a 3(x3) kernel to
        64 channels, padding 1 (a ResNet stage)."""
        tiny = batch == 1
        c = 1 if tiny else CONV_BENCH_CHANNELS
        side = 4 if tiny else CONV_BENCH_SPATIAL
        fan_in = c * 3**dims
        return (
            torch.randn(batch, c, *((side,) * dims), device=device, dtype=dtype),
            torch.randn(c, c, *((3,) * dims), device=device, dtype=dtype) / fan_in**0.5,
            torch.zeros(c, device=device, dtype=dtype),
            [1] * dims,
            [1] * (2 * dims),
            [1] * dims,
            1,
        )

    return bench


def _conv_bench_flops(dims: int) -> Callable[[int], float]:
    def flops(batch: int) -> float:
        c, side = (1, 4) if batch == 1 else (CONV_BENCH_CHANNELS, CONV_BENCH_SPATIAL)
        return conv_flops(batch, c, c, (side,) * dims, (3,) * dims)

    return flops


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


OP_TABLE: list[OpInfo] = [
    OpInfo(
        name="square",
        func=square,
        reference=torch.square,
        reference_text="torch.square(x)",
        formula="y = x² ; dL/dx = 2x·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
        triton=_unary_triton(triton.SQUARE),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="cube",
        func=cube,
        reference=_native_cube,
        reference_text="torch.pow(x, 3)",
        formula="y = x³ ; dL/dx = 3x²·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
        triton=_unary_triton(triton.CUBE),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="exp",
        func=exp,
        reference=torch.exp,
        reference_text="torch.exp(x)",
        formula="y = eˣ ; dL/dx = y·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
        triton=_unary_triton(triton.EXP, torch.exp),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="relu",
        func=relu,
        reference=torch.relu,
        reference_text="torch.relu(x)",
        formula="y = max(x, 0) ; dL/dx = 0 where y ≤ 0, else g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
        triton=_unary_triton(triton.RELU, torch.relu),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="sigmoid",
        func=sigmoid,
        reference=torch.sigmoid,
        reference_text="torch.sigmoid(x)",
        formula="y = 1/(1+e⁻ˣ) ; dL/dx = y(1-y)·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
        triton=_unary_triton(triton.SIGMOID, torch.sigmoid),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="tanh",
        func=tanh,
        reference=torch.tanh,
        reference_text="torch.tanh(x)",
        formula="y = tanh(x) ; dL/dx = (1-y²)·g",
        sample_inputs=unary_samples,
        batch_inputs=_unary_batch(64),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_unary_bench,
        triton=_unary_triton(triton.TANH, torch.tanh),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="linear",
        func=linear,
        reference=_native_linear,
        reference_text="F.linear(x, W, b)",
        formula="y = xWᵀ + b ; dL/dx = gW, dL/dW = Σ gᵀx, dL/db = g summed to b's shape",
        sample_inputs=_linear_samples,
        batch_inputs=_linear_batch,
        extreme_inputs=None,
        bench_sizes=LINEAR_BENCH_ROWS,
        bench_inputs=_linear_bench,
        roofline="matmul",
        bench_forward_flops=_linear_bench_flops,
        bench_size_unit="rows of x",
        bench_size_label=_linear_bench_label,
        property_inputs=_linear_property_inputs,
        error_inputs=_linear_error_inputs,
        deliberate_refusals=(
            # native refuses a bias that enlarges the output too (its add is in place), but
            # lets one through for an empty x: the op refuses it whatever x holds
            r"does not broadcast to the output shape",
        ),
        cpu_fast_path=_linear_fast_path,
    ),
    OpInfo(
        name="learned_silu",
        func=learned_silu,
        reference=_native_learned_silu,
        reference_text="slope * x * torch.sigmoid(x)",
        formula="y = a·x·s, s = sigmoid(x) ; dL/dx = a·s·(1 + x(1-s))·g, dL/da = Σ x·s·g",
        sample_inputs=_learned_silu_samples,
        batch_inputs=_learned_silu_batch,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_learned_silu_bench,
        bench_against_compiled=True,
        bench_variants={
            "nn.Parameter slope": _learned_silu_bench_parameter,
            "per-channel": _learned_silu_bench_per_channel,
        },
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
    OpInfo(
        name="softmax",
        func=softmax,
        reference=torch.softmax,
        reference_text="torch.softmax(x, dim)",
        formula="y = eˣ / Σ eˣ along dim ; dL/dx = y(g - Σ g·y)",
        sample_inputs=along_dim_samples,
        batch_inputs=_along_dim_batch(1),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_rows_bench,
        bench_size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
        extreme_inputs=lambda x: (x, 0),
        property_inputs=_along_dim_property_inputs,
        error_inputs=_along_dim_error_inputs("softmax"),
        triton=_softmax_triton(log=False),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="log_softmax",
        func=log_softmax,
        reference=torch.log_softmax,
        reference_text="torch.log_softmax(x, dim)",
        formula="y = x - log Σ eˣ along dim ; dL/dx = g - eʸ·Σ g",
        sample_inputs=along_dim_samples,
        batch_inputs=_along_dim_batch(-1),
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_rows_bench,
        bench_size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
        extreme_inputs=lambda x: (x, 0),
        property_inputs=_along_dim_property_inputs,
        error_inputs=_along_dim_error_inputs("log_softmax"),
        triton=_softmax_triton(log=True),
        cpu_fast_path=_every_call,
    ),
    OpInfo(
        name="rms_norm",
        func=rms_norm,
        reference=F.rms_norm,
        reference_text="F.rms_norm(x, normalized_shape, weight, eps)",
        formula=(
            "y = x·r·w, r = 1/√(mean(x²)+ε) ; dL/dx = r·u - x·r³·mean(u·x) with u = w·g, "
            "dL/dw = Σ g·x·r"
        ),
        sample_inputs=_rms_norm_samples,
        batch_inputs=_rms_norm_batch,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_rms_norm_bench,
        bench_size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
        bench_against_compiled=True,
        extreme_inputs=lambda x: (x, [x.shape[-1]], None, None),
        property_inputs=_rms_norm_property_inputs,
        inf_allowed_where_native_nan=_infinite_affine,
        error_inputs=_rms_norm_error_inputs,
        deliberate_refusals=(
            r"eps must be finite and >= 0",  # native takes a negative eps: nan or noise
        ),
        cpu_fast_path=_norm_fast_path,
    ),
    OpInfo(
        name="layer_norm",
        func=layer_norm,
        reference=F.layer_norm,
        reference_text="F.layer_norm(x, normalized_shape, weight, bias, eps)",
        formula=(
            "y = x̂·w + b, x̂ = (x-μ)·r, r = 1/√(σ²+ε) ; dL/dx = r·(u - mean(u) - x̂·mean(u·x̂)) "
            "with u = w·g, dL/dw = Σ g·x̂, dL/db = Σ g"
        ),
        sample_inputs=_layer_norm_samples,
        batch_inputs=_layer_norm_batch,
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_layer_norm_bench,
        bench_size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
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
    OpInfo(
        name="batch_norm",
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
        bench_sizes=POINTWISE_BENCH_SIZES,
        bench_inputs=_batch_norm_bench,
        bench_size_label=lambda n: (
            f"[{n // min(max(n // 4, 1), 4096)},{min(max(n // 4, 1), 4096)}]"
        ),
        bench_against_compiled=True,
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
    OpInfo(
        name="cross_entropy",
        func=cross_entropy,
        reference=_native_cross_entropy,
        reference_text="F.cross_entropy(input, target, weight, ignore_index=..., reduction=..., "
        "label_smoothing=...)",
        formula=(
            "ℓ = (1-ε)·w_t·(lse - x_t) + (ε/C)·Σ_c w_c·(lse - x_c), mean: Σℓ / Σw_t ; "
            "dL/dx = s·((1-ε)·w_t·(p - onehot(t)) + (ε/C)·(Σw·p - w)), p = softmax(x)"
        ),
        sample_inputs=_cross_entropy_samples,
        batch_inputs=_cross_entropy_batch,
        batch_args=(0, 1),  # the logits and their targets
        constant_args=(2,),  # weight: native refuses one that requires grad, and so does the op
        bench_sizes=(16, 262_144, 16_777_216, 268_435_456),
        bench_inputs=_cross_entropy_bench,
        bench_size_label=lambda n: f"[{n // min(n, 32768)},{min(n, 32768)}]",
        bench_against_compiled=True,
        bench_peak_memory_size=268_435_456,  # [8192, 32768] logits
        extreme_inputs=lambda x: (x, torch.tensor(3), None, -100, "mean", 0.0),
        property_inputs=_cross_entropy_property_inputs,
        exact_reference=_ignored_rows_zeroed,
        error_inputs=_cross_entropy_error_inputs,
        deliberate_refusals=(
            r"label_smoothing must be in \[0, 1\]",  # native: outside, no distribution
            r"target of shape .* must have shape",  # native: [1] for one sample, too
            r"must have one value per class",  # a [1, C] class weight: native reads C values
        ),
    ),
    OpInfo(
        name="linear_cross_entropy",
        func=linear_cross_entropy,
        reference=native_linear_cross_entropy,
        reference_text="F.cross_entropy(F.linear(x, weight, bias), target, ...)",
        formula=(
            "per chunk of rows: z = x·Wᵀ + b, ℓ as cross_entropy ; dz = s·dℓ/dz, "
            "dL/dx = dz·W, dL/dW = Σ dzᵀ·x, dL/db = Σ dz (computed in the forward)"
        ),
        sample_inputs=_linear_cross_entropy_samples,
        batch_inputs=_linear_cross_entropy_batch,
        batch_args=(0, 2),  # the hidden states and their targets
        bench_sizes=(1, 16, 1024, 4096),
        bench_inputs=_linear_cross_entropy_bench,
        roofline="matmul",
        bench_forward_flops=_linear_cross_entropy_flops,
        bench_size_unit="tokens",
        bench_peak_memory_size=4096,  # 4096 tokens, hidden 1024, vocabulary 32768
        bench_size_label=lambda n: "[1,4]x[4,4]" if n == 1 else f"[{n},1024]x[1024,32768]",
        extreme_inputs=None,  # sums of ±inf through a matmul are order-dependent (as linear)
        property_inputs=_linear_cross_entropy_property_inputs,
        exact_reference=_ignored_tokens_dropped,
        error_inputs=_linear_cross_entropy_error_inputs,
        deliberate_refusals=(
            r"label_smoothing must be in \[0, 1\]",
            r"target of shape .* must have shape",  # the composite reshapes it
            r"bias of shape .* must be \[\w+\], one per class",  # not broadcast
            # a 1-D weight makes logits with no class dim: the composite reads rows as classes
            r"weight must be 2-D \[classes, hidden\]",
        ),
    ),
    _conv_info(1),
    _conv_info(2),
    OpInfo(
        name="scaled_dot_product_attention",
        func=scaled_dot_product_attention,
        reference=_native_attention,
        reference_text="F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, "
        "scale, enable_gqa=...)",
        formula=(
            "o = P V, P = softmax(scale·q kᵀ + m) by tiles (C++) or blocks of rows, lse saved ; "
            "dV = Pᵀ dO, "
            "dS = P ⊙ (dO Vᵀ - rowsum(dO ⊙ O)), dQ = scale·dS K, dK = scale·dSᵀ Q (P recomputed)"
        ),
        sample_inputs=_attention_samples,
        batch_inputs=_attention_batch,
        batch_args=(0, 1, 2),  # q, k and v carry the batch; the mask broadcasts over it
        bench_sizes=(16, 512, 1024, 4096),
        bench_inputs=_attention_bench,
        bench_variants={"causal": _attention_bench_causal},
        roofline="matmul",
        bench_forward_flops=_attention_flops,
        bench_size_unit="sequence length L = S (batch 1, 8 heads, dim 64)",
        bench_size_label=lambda n: f"L={n}",
        bench_peak_memory_size=4096,
        bench_memory_curve=(512, 1024, 2048, 4096, 8192),
        bench_baselines={"math": math_attention},
        extreme_inputs=None,  # sums of ±inf through matmuls are order-dependent (as linear)
        property_inputs=_attention_property_inputs,
        error_inputs=_attention_error_inputs,
        deliberate_refusals=(
            r"dropout_p=.* is not supported",  # see the op's docstring
            r"enable_gqa needs a head dim",  # heads must be explicit
            r"enable_gqa needs q's heads .* which must be equal",  # k and v: one head count
        ),
        float32_tol=(2e-5, 1e-5),
    ),
]

OPS_BY_NAME: dict[str, OpInfo] = {info.name: info for info in OP_TABLE}


# ---- ops that update their arguments in place (optimizer steps) ----


@dataclass(frozen=True)
class UpdateOpInfo:
    """An op that updates some of its arguments in place and returns nothing: an optimizer step.

    It is not a function of its inputs, so the families of the op contract that are about
    gradients and inference graphs do not apply: no gradcheck (no autograd: the update runs
    under no_grad), no vmap rule, no ONNX (an inference graph holds no training update). The
    tests run every other family over ``UPDATE_OP_TABLE``: opcheck's five checks, each kernel
    (C++, Triton, torch ops) against the native reference in every dtype, torch.compile
    (fullgraph, dynamic shapes, no recompiles), torch.export, TorchScript, version counters, and
    bad calls refused with nothing changed.
    """

    name: str
    func: Callable[..., None]  # the public opslib function (keyword hyperparameters)
    # The native update, called with the op's own arguments; it updates them in place.
    reference: Callable[..., None]
    reference_text: str
    formula: str
    # Calls of the op: its positional arguments, as the schema lists them (every call may
    # update its tensors: the tests copy a sample before each use).
    sample_inputs: Callable[[torch.device | str, torch.dtype], list[Sample]]
    # (atol, rtol) of the updated tensors against the reference, float32 and float64; float16
    # and bfloat16 are judged against a float64 run of the reference, relative to its own error.
    tolerances: dict[torch.dtype, tuple[float, float]]
    error_inputs: Callable[[], list[ErrorInput]] = list
    # The CUDA path's kernel, run directly on one sample (CPU tensors under the interpreter).
    triton: Callable[..., None] | None = None
    dtypes: tuple[torch.dtype, ...] = ALL_FLOAT_DTYPES
    namespace: str = "customgrad"
    # benchmarks/optimizer_step.py: the optimizers to time on the same parameters, by name,
    # opslib's first; and the parameter-sized tensors one step must read or write at least.
    bench_optimizers: Callable[[list[Tensor]], dict[str, torch.optim.Optimizer]] | None = None
    bench_traffic: int = 0

    @property
    def op(self) -> torch._ops.OpOverload:
        return getattr(getattr(torch.ops, self.namespace), self.name).default

    @property
    def label(self) -> str:
        return f"{self.namespace}.{self.name}"


def _hyperparameters(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8) -> tuple:
    return tuple(
        torch.tensor(h, dtype=torch.float64) for h in (lr, beta1, beta2, weight_decay, eps)
    )


def _adam_state(shapes, device, dtype, *, amsgrad: bool, step: float = 0.0, layout=None) -> tuple:
    """params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps for tensors of ``shapes``,
    with moments as after some steps (v > 0, vmax >= v)."""

    def make(shape, fill):
        t = fill(shape)
        return layout(t) if layout is not None and t.dim() == 4 else t

    rand = lambda shape: torch.randn(shape, device=device, dtype=dtype)  # noqa: E731
    params = [make(sh, rand) for sh in shapes]
    grads = [make(sh, rand) for sh in shapes]
    exp_avgs = [make(sh, lambda sh: 0.1 * rand(sh)) for sh in shapes]
    exp_avg_sqs = [make(sh, lambda sh: 0.01 * rand(sh).abs()) for sh in shapes]
    max_sqs = [v + 0.01 * rand(v.shape).abs() for v in exp_avg_sqs] if amsgrad else []
    steps = [torch.tensor(step) for _ in shapes]
    return params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps


def _adam_samples(device, dtype) -> list[Sample]:
    shapes = [(), (0,), (7,), (4, 5), (2, 3, 4, 5), (1 << 15) + 37]  # the last: threads + tail

    def call(name, *, amsgrad=False, maximize=False, decoupled=False, step=0.0, layout=None,
             shape_list=shapes, **hyper) -> Sample:  # fmt: skip
        state = _adam_state(shape_list, device, dtype, amsgrad=amsgrad, step=step, layout=layout)
        return Sample(name, (*state, *_hyperparameters(**hyper), amsgrad, maximize, decoupled))

    transposed = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    return [
        call("first-step"),
        call("step-10", step=10.0),
        call("amsgrad", amsgrad=True, step=3.0),
        call("l2-weight-decay", weight_decay=0.1, step=2.0),
        call("adamw", decoupled=True, weight_decay=0.1, step=2.0),
        call("maximize", maximize=True, weight_decay=0.01, step=1.0),
        call("beta1-below-half", beta1=0.3, beta2=0.9, step=4.0),  # lerp's other form
        call("big-eps-lr", lr=0.5, eps=1e-3),
        call("channels-last", layout=lambda t: t.contiguous(memory_format=torch.channels_last)),
        call("transposed-views", layout=transposed, amsgrad=True),
        call("no-parameters", shape_list=[]),
    ]


def _native_adam_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2,
    weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    from torch.optim.adam import adam

    adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, foreach=True,
        amsgrad=amsgrad, beta1=beta1.item(), beta2=beta2.item(), lr=lr.item(),
        weight_decay=weight_decay.item(), eps=eps.item(), maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
    )  # fmt: skip


def _adam_error_inputs() -> list[ErrorInput]:
    def state(*shapes, dtype=torch.float32, amsgrad=False):
        return _adam_state(shapes or [(3, 4)], "cpu", dtype, amsgrad=amsgrad)

    def call(params, grads, m, v, vmax, steps, amsgrad=False, **hyper) -> tuple:
        return (params, grads, m, v, vmax, steps, *_hyperparameters(**hyper), amsgrad, False, False)

    def with_(index: int, k: int, value: Tensor, amsgrad=False) -> tuple:
        lists = [list(x) for x in state((3, 4), (5,), amsgrad=amsgrad)]
        lists[index][k] = value
        return call(*lists, amsgrad=amsgrad)

    def sparse_grad() -> tuple:
        return with_(1, 1, torch.randn(5).to_sparse())

    def int_params() -> tuple:
        p, g, m, v, vmax, steps = state((3, 4), (5,))
        p[1] = torch.arange(5)
        g[1], m[1], v[1] = (torch.zeros(5, dtype=torch.int64) for _ in range(3))
        return call(p, g, m, v, vmax, steps)

    def bad_lr() -> tuple:
        args = list(call(*state()))
        args[6] = torch.tensor([1e-3, 1e-3])
        return tuple(args)

    def missing_max() -> tuple:
        return call(*state(), amsgrad=True)

    def fewer_grads() -> tuple:
        p, g, m, v, vmax, steps = state((3, 4), (5,))
        return call(p, g[:1], m, v, vmax, steps)

    def twice() -> tuple:
        p, g, m, v, vmax, steps = state((3, 4), (5,))
        return call([p[0], p[0]], g, m, v, vmax, steps)

    label = r"customgrad\.adam_step_"
    return [
        ErrorInput(
            "grad shape differs",
            lambda: with_(1, 1, torch.randn(6)),
            ValueError,
            label
            + r": grads\[1\] is a torch.float32 tensor of shape \[6\] .* params\[1\] is "
            + r".* shape \[5\]",
        ),
        ErrorInput(
            "state dtype differs",
            lambda: with_(3, 0, torch.rand(3, 4, dtype=torch.float64)),
            ValueError,
            label + r": exp_avg_sqs\[0\] is a torch.float64 tensor",
        ),
        ErrorInput(
            "max state shape differs",
            lambda: with_(4, 1, torch.rand(4), amsgrad=True),
            ValueError,
            label + r": max_exp_avg_sqs\[1\] is a torch.float32 tensor of shape \[4\]",
        ),
        ErrorInput(
            "sparse gradient",
            sparse_grad,
            ValueError,
            label + r": grads\[1\] is torch.sparse_coo; dense tensors only .*SparseAdam",
            compiles=False,
        ),
        ErrorInput(
            "integer parameter",
            int_params,
            ValueError,
            label + r": params\[1\] has dtype torch.int64; Adam updates floating-point",
        ),
        ErrorInput(
            "list lengths differ", fewer_grads, ValueError, label + r": got 2 params but 1 grads"
        ),
        ErrorInput(
            "amsgrad without max_exp_avg_sqs",
            missing_max,
            ValueError,
            label + r": amsgrad=True needs 1 max_exp_avg_sqs",
        ),
        ErrorInput(
            "lr of two elements",
            bad_lr,
            ValueError,
            label + r": lr must be a real tensor of one element",
        ),
        ErrorInput(
            "integer step",
            lambda: with_(5, 0, torch.tensor(3)),
            ValueError,
            label + r": steps\[0\] must be a floating-point tensor of one element",
        ),
        ErrorInput(
            "parameter twice", twice, ValueError, label + r": a parameter appears twice in params"
        ),
    ]


def _adam_bench_optimizers(params: list[Tensor]) -> dict[str, torch.optim.Optimizer]:
    from opslib.optim import Adam

    return {
        "opslib.optim.Adam": Adam(params, lr=1e-3),
        "torch Adam(foreach=True)": torch.optim.Adam(params, lr=1e-3, foreach=True),
        "torch Adam(fused=True)": torch.optim.Adam(params, lr=1e-3, fused=True),
    }


UPDATE_OP_TABLE: list[UpdateOpInfo] = [
    UpdateOpInfo(
        name="adam_step_",
        func=adam_step_,
        reference=_native_adam_step,
        reference_text="torch.optim.adam.adam(..., foreach=True)",
        formula=(
            "m ← lerp(m, g, 1-β1), v ← β2·v + (1-β2)·g², "
            "θ ← θ - lr/(1-β1ᵗ) · m/(√v/√(1-β2ᵗ) + ε) (AdamW: θ ← θ(1-lr·wd) first)"
        ),
        sample_inputs=_adam_samples,
        tolerances={torch.float32: (2e-7, 2e-6), torch.float64: (1e-15, 1e-13)},
        error_inputs=_adam_error_inputs,
        triton=triton.adam_step_call,
        bench_optimizers=_adam_bench_optimizers,
        bench_traffic=7,  # read p, g, m, v; write p, m, v
    ),
]


def markdown_table() -> str:
    """The README's op table, generated from OP_TABLE (a test keeps the README in sync)."""
    rows = [
        "| op | schema | forward ; gradient | native reference |",
        "|---|---|---|---|",
    ]
    for info in [*OP_TABLE, *UPDATE_OP_TABLE]:
        rows.append(
            f"| `{info.name}` | `{info.op._schema}` | {info.formula} | `{info.reference_text}` |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
