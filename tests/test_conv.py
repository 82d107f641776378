"""What conv1d and conv2d promise beyond matching native (the op table's tests): the gradients
are the formulas derived in opslib/ops/conv.py (a transposed convolution and a correlation,
computed here independently), every padding form of F.conv*d, and the modules are torch.nn's."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_named
from torch.utils._python_dispatch import TorchDispatchMode

import opslib

pytestmark = pytest.mark.ops("conv1d", "conv2d")

CASES = {
    "plain": {},
    "stride-2-padding-1": {"stride": 2, "padding": 1},
    "dilation-2-groups-2": {"dilation": 2, "groups": 2},
    "stride-3-dilation-2": {"stride": 3, "dilation": 2, "padding": 2},
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_conv2d_gradients_are_the_derived_transposed_convolution_and_correlation(kwargs):
    """dL/dx = conv_transpose2d(g, W) (output_padding restores x's size) and dL/dW = the
    correlation of x with g, per group: a convolution of x's channels by g, stride and
    dilation swapped (float64)."""
    torch.manual_seed(0)
    stride, padding = kwargs.get("stride", 1), kwargs.get("padding", 0)
    dilation, groups = kwargs.get("dilation", 1), kwargs.get("groups", 1)
    x = torch.randn(3, 4, 11, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // groups, 3, 2, dtype=torch.float64, requires_grad=True)
    y = opslib.conv2d(x, w, None, stride, padding, dilation, groups)
    g = torch.randn_like(y)
    grad_x, grad_w = torch.autograd.grad(y, (x, w), g)

    # dX: dY scattered back through W, a transposed convolution
    reach = [dilation * (k - 1) + 1 for k in w.shape[2:]]
    output_padding = [
        x.shape[2 + i] + 2 * padding - ((y.shape[2 + i] - 1) * stride + reach[i]) for i in range(2)
    ]
    want_x = F.conv_transpose2d(g, w, None, stride, padding, output_padding, groups, dilation)
    torch.testing.assert_close(grad_x, want_x, atol=1e-12, rtol=1e-12)

    # dW[o, c, κ] = Σ_n Σ_i g[n, o, i] · x_p[n, c, s·i + dil·κ], group by group
    x_p = F.pad(x, [padding] * 4)
    per_group_out, per_group_in = 6 // groups, 4 // groups
    blocks = []
    for k in range(groups):
        xs = x_p[:, k * per_group_in : (k + 1) * per_group_in].transpose(0, 1)  # [C/g, N, ...]
        gs = g[:, k * per_group_out : (k + 1) * per_group_out].transpose(0, 1)  # [O/g, N, ...]
        corr = F.conv2d(xs, gs, stride=dilation, dilation=stride)  # [C/g, O/g, ≥kh, ≥kw]
        blocks.append(corr[:, :, : w.shape[2], : w.shape[3]].transpose(0, 1))
    torch.testing.assert_close(grad_w, torch.cat(blocks), atol=1e-12, rtol=1e-12)


PADDINGS = [0, 2, (1, 0), "valid", "same"]


@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("dims", [1, 2])
def test_every_padding_form_of_native(dims, padding):
    """int, one int per dim, "valid" and "same" (also with an even kernel and dilation, where
    native pads the odd one at the end), outputs and gradients."""
    if dims == 1 and isinstance(padding, tuple):
        padding = (padding[0],)
    torch.manual_seed(0)
    spatial, kernel = ((9,), (4,)) if dims == 1 else ((9, 8), (4, 3))
    ours, native = (opslib.conv1d, F.conv1d) if dims == 1 else (opslib.conv2d, F.conv2d)
    for dilation in (1, 2):
        x = torch.randn(2, 3, *spatial, dtype=torch.float64, requires_grad=True)
        w = torch.randn(5, 3, *kernel, dtype=torch.float64, requires_grad=True)
        y = ours(x, w, None, 1, padding, dilation)
        y_ref = native(x, w, None, 1, padding, dilation)
        torch.testing.assert_close(y, y_ref)
        g = torch.randn_like(y)
        for a, b in zip(
            torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g), strict=True
        ):
            torch.testing.assert_close(a, b)


def test_same_padding_with_a_stride_is_refused_as_native_refuses_it():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"customgrad\.conv2d: padding='same' needs stride 1"):
        opslib.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"customgrad\.conv2d: padding must be .* got 'full'"):
        opslib.conv2d(x, w, padding="full")


class _OpsSeen(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func))
        return func(*args, **(kwargs or {}))


MODULE_CASES = [
    {},
    {"padding": "same"},
    {"padding": 2, "padding_mode": "reflect"},
    {"padding": 1, "padding_mode": "circular"},
    {"stride": 2, "groups": 3, "bias": False},
]


@pytest.mark.parametrize("kwargs", MODULE_CASES, ids=str)
@pytest.mark.parametrize("dims", [1, 2])
def test_conv_modules_are_torch_nn_subclasses_computed_by_the_op(dims, kwargs):
    """A torch.nn.Conv*d's state_dict loads unchanged; outputs and parameter gradients match;
    the customgrad op computes them."""
    ours_cls, native_cls = (
        (opslib.nn.Conv1d, torch.nn.Conv1d) if dims == 1 else (opslib.nn.Conv2d, torch.nn.Conv2d)
    )
    torch.manual_seed(0)
    native = native_cls(3, 6, 3, **kwargs)
    ours = ours_cls(3, 6, 3, **kwargs)
    assert isinstance(ours, native_cls)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(2, 3, *((9,) * dims))
    with _OpsSeen() as spy:
        y = ours(x)
    assert f"customgrad.conv{dims}d.default" in spy.seen, spy.seen
    y_ref = native(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(
        torch.autograd.grad(y, list(ours.parameters()), g),
        torch.autograd.grad(y_ref, list(native.parameters()), g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [opslib.conv1d, opslib.conv2d], ids=["conv1d", "conv2d"])
def test_no_input_channels_gives_the_bias_with_the_weights_output_channels(conv):
    """y = b + (an empty sum): weight's out channels, each equal to its bias; db = Σ g. ATen
    returns 0 channels here (so native is not the reference); a rank holds such an x when
    DTensor splits 2 input channels over 3 ranks (opslib/ops/conv.py's row-wise rule)."""
    dims = 1 if conv is opslib.conv1d else 2
    x = torch.randn(2, 0, *([9] * dims), dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 0, *([3] * dims), dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = conv(x, w, b)
    assert y.shape == (2, 6, *([7] * dims))
    torch.testing.assert_close(y, b.view(6, *([1] * dims)).expand_as(y))
    g = torch.randn_like(y)
    grad_x, grad_w, grad_b = torch.autograd.grad(y, (x, w, b), g)
    assert grad_x.shape == x.shape and grad_w.shape == w.shape
    torch.testing.assert_close(grad_b, g.sum([0, *range(2, g.dim())]))


# Small half-precision convolutions where native F.conv*d (oneDNN) crashed the process on CPU
# with torch 2.13 (found by random search on an AVX512 machine; the last one without padding,
# with SIGFPE, on one call in three): (dtype, x shape, channels_last, weight shape, stride,
# padding per dim, dilation, groups).
NATIVE_CRASHES = [
    ("float16", [1, 1, 4, 1], False, [2, 1, 1, 1], [1, 2], [1, 1], [2, 2], 1),
    ("float16", [2, 1, 2, 1], False, [2, 1, 3, 1], [2, 3], [2, 2], [2, 3], 1),
    ("float16", [2, 2, 1], False, [1, 2, 1], [2], [1], [3], 1),
    ("bfloat16", [2, 2, 5, 1], True, [4, 1, 2, 1], [2, 3], [1, 2], [1, 3], 2),
    ("bfloat16", [2, 4, 6, 1], True, [4, 2, 1, 1], [3, 2], [1, 1], [3, 3], 2),
    ("bfloat16", [1, 2, 8, 5], True, [2, 2, 1, 1], [2, 1], [0, 0], [3, 3], 1),
]

_HALF_PRECISION_CONVS = """
import json, sys
import torch
import torch.nn.functional as F
import opslib

for dtype, x_shape, channels_last, w_shape, stride, padding, dilation, groups in json.loads(
    sys.argv[1]
):
    torch.manual_seed(0)
    dtype = getattr(torch, dtype)
    x = torch.randn(x_shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(w_shape).to(dtype)
    x.requires_grad_(), w.requires_grad_()
    conv = opslib.conv1d if len(x_shape) == 3 else opslib.conv2d
    y = conv(x, w, None, stride, padding, dilation, groups)
    g = torch.randn(y.shape).to(dtype)
    grads = torch.autograd.grad(y, (x, w), g)
    # The reference: native in float32 on the same rounded values (float32 does not crash)
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    native = F.conv1d if len(x_shape) == 3 else F.conv2d
    y32 = native(x32, w32, None, stride, padding, dilation, groups)
    grads32 = torch.autograd.grad(y32, (x32, w32), g.float())
    tol = dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(y.float(), y32, **tol)
    for ours, reference in zip(grads, grads32, strict=True):
        torch.testing.assert_close(ours.float(), reference, **tol)
print("ran", len(json.loads(sys.argv[1])))
"""


def test_half_precision_where_native_crashes_computes_the_convolution():
    """opslib computes half-precision CPU convolutions in float32 (opslib/ops/conv.py,
    _compute_dtype): where native's oneDNN half-precision convolution crashed, the op's forward
    and backward run and match native's float32 result. In a subprocess, so that a crash fails
    this test only."""
    run = subprocess.run(
        [sys.executable, "-c", _HALF_PRECISION_CONVS, json.dumps(NATIVE_CRASHES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"exit {run.returncode}:\n{run.stdout}\n{run.stderr[-3000:]}"
    assert f"ran {len(NATIVE_CRASHES)}" in run.stdout


class _ConvolutionDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dims", [1, 2])
def test_benchmarks_time_natives_own_half_precision_kernels(dims):
    """The tests' reference computes CPU half precision in float32 (native's kernels crash);
    bench.py times what F.conv users get: native's bfloat16 kernel. Fake tensors: no kernel runs."""
    from bench_table import BENCH, bench_native

    from opslib.testing.opinfos import OPS_BY_NAME

    info = OPS_BY_NAME[f"conv{dims}d"]
    with torch._subclasses.FakeTensorMode():
        args = BENCH[info.name].inputs(8, "cpu", torch.bfloat16)
        seen = {}
        for name, fn in (("reference", info.reference), ("bench", bench_native(info))):
            with _ConvolutionDtypes() as spy:
                assert fn(*args).dtype == torch.bfloat16
            seen[name] = spy.dtypes
    assert seen == {"reference": [torch.float32], "bench": [torch.bfloat16]}, seen


def _compiled_training_matches_eager(x, weight, padding, dynamic_all: bool) -> None:
    torch._dynamo.reset()
    x.requires_grad_()
    weight.requires_grad_()
    fn = partial(opslib.conv2d, padding=padding)
    if dynamic_all:
        compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    else:
        torch._dynamo.mark_dynamic(x, 0)
        compiled = torch.compile(fn, fullgraph=True)
    y, y_ref = compiled(x, weight), fn(x, weight)
    grads = torch.autograd.grad(y.float().square().sum(), (x, weight))
    grads_ref = torch.autograd.grad(y_ref.float().square().sum(), (x, weight))
    tol = {} if x.dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    for name, a, b in zip(("y", "dx", "dW"), (y, *grads), (y_ref, *grads_ref), strict=True):
        assert_close_named(a, b, f"compiled {name}", **tol)


HARD_FOR_DYNAMIC = [  # contiguous x, with asymmetric padding or computed in float32
    pytest.param(torch.float32, (0, 1, 1, 0), id="float32-asymmetric"),
    pytest.param(torch.float32, "same", id="float32-same-even-kernel"),
    pytest.param(torch.bfloat16, 1, id="bfloat16"),
]


@pytest.mark.parametrize("dtype,padding", HARD_FOR_DYNAMIC)
def test_compiled_with_a_dynamic_batch_matches_eager(dtype, padding):
    """The contract's dynamic batch (mark_dynamic on dim 0; what automatic dynamic shapes do)."""
    x, weight = torch.randn(2, 3, 9, 8, dtype=dtype), torch.randn(4, 3, 2, 2, dtype=dtype)
    _compiled_training_matches_eager(x, weight, padding, dynamic_all=False)


@pytest.mark.xfail(
    strict=True,
    raises=torch._inductor.exc.InductorError,
    reason="inductor: with every dim symbolic (dynamic=True, the kernel's size too), lowering "
    "the backward's convolution_backward of a padded or cast contiguous x fails "
    "(LoweringException: 'Invalid ranges' / 'Exponent must be non-negative'; cf. pytorch#188323)",
)
@pytest.mark.parametrize("dtype,padding", HARD_FOR_DYNAMIC)
def test_compiled_with_every_dim_dynamic_matches_eager(dtype, padding):
    x, weight = torch.randn(2, 3, 9, 8, dtype=dtype), torch.randn(4, 3, 2, 2, dtype=dtype)
    _compiled_training_matches_eager(x, weight, padding, dynamic_all=True)
