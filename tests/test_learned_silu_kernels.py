"""learned_silu's C++ CPU kernels (opslib/csrc/learned_silu.cpp) and its backward op,
customgrad::learned_silu_backward.

The op table's tests already run every learned_silu sample through these kernels (opcheck,
gradcheck, gradgradcheck, native parity at the table's float32 tolerance). Here: large tensors
in every layout and slope form, the module's nn.Parameter slope, the slope gradient's accuracy
against float64 at every size, the backward op's own contract, and the torch-op fallback.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ALL_OPCHECK_TESTS, assert_close_named

import opslib
from opslib.core import cpu_kernels
from opslib.testing.opinfos import OPS_BY_NAME

INFO = OPS_BY_NAME["learned_silu"]
BACKWARD = torch.ops.customgrad.learned_silu_backward.default
needs_kernels = pytest.mark.skipif(not cpu_kernels.is_loaded(), reason="C++ kernels not built")
FLOAT32_TOL = dict(zip(("atol", "rtol"), INFO.float32_tol, strict=True))


class CpuKernelCalls:
    """Records which opslib_cpu kernels ran, in order (torch's profiler sees every call the
    dispatcher makes, without changing which path a call takes)."""

    def __enter__(self):
        self.profile = torch.autograd.profiler.profile()
        self.profile.__enter__()
        return self

    def __exit__(self, *exc):
        self.profile.__exit__(*exc)
        self.seen = [
            e.name.split("::")[1]
            for e in self.profile.function_events
            if e.name.startswith("opslib_cpu::")
        ]


def native(x, slope):
    return slope * x * torch.sigmoid(x)


def forward_and_grads(fn, x, slope, grad_y):
    x = x.detach().clone().requires_grad_()
    slope = slope.detach().clone().requires_grad_()
    y = fn(x, slope)
    return (y.detach(), *torch.autograd.grad(y, (x, slope), grad_y))


LARGE = [  # (x shape, slope shape): 1M elements, several blocks and rows of the kernels
    ((4096, 256), (1,)),
    ((4096, 256), ()),
    ((4096, 256), (256,)),
    ((1029, 917), (917,)),
    ((8, 16, 64, 32), (32,)),
]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("x_shape,slope_shape", LARGE, ids=str)
def test_large_tensors_take_the_cpp_kernels_and_match_native(x_shape, slope_shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(x_shape, dtype=dtype)
    slope = torch.rand(slope_shape, dtype=dtype) + 0.5
    grad_y = torch.randn(x_shape, dtype=dtype)
    with CpuKernelCalls() as calls:
        ours = forward_and_grads(opslib.learned_silu, x, slope, grad_y)
    assert calls.seen == ["learned_silu_forward", "learned_silu_backward"], calls.seen
    tol = FLOAT32_TOL if dtype == torch.float32 else {}
    theirs = forward_and_grads(native, x, slope, grad_y)
    for name, got, want in zip(("y", "grad x"), ours[:2], theirs[:2], strict=True):
        assert_close_named(got, want, f"{x_shape} slope {slope_shape} {dtype}: {name}", **tol)
    # The slope gradient sums up to 1M terms: native's float sum is itself off by more than
    # the table's tolerance here, so the reference is float64, held to the same tolerance.
    exact = forward_and_grads(native, x.double(), slope.double(), grad_y.double())[2]
    assert_close_named(ours[2], exact.to(dtype), f"{x_shape} {dtype}: grad slope", **tol)


@needs_kernels
def test_the_modules_parameter_slope_takes_the_same_path():
    """nn.LearnedSiLU's slope is an nn.Parameter (a Tensor subclass): the same kernels run."""
    module = opslib.nn.LearnedSiLU(init=0.8, num_parameters=256)
    x = torch.randn(512, 256, requires_grad=True)
    with CpuKernelCalls() as calls:
        module(x).sum().backward()
    assert calls.seen == ["learned_silu_forward", "learned_silu_backward"], calls.seen
    want = torch.autograd.grad(native(x, module.slope.detach().requires_grad_()).sum(), x)[0]
    assert_close_named(x.grad, want, "module grad x", **FLOAT32_TOL)


def _layouts():
    base = torch.randn(64, 48)
    return {
        "transposed": base.t(),
        "strided-slice": base[::2, 1::2],
        "channels-last": torch.randn(4, 6, 8, 10).contiguous(memory_format=torch.channels_last),
        "expanded": torch.randn(48, 1).expand(48, 64),
        "offset-slice": base[5:],
    }


@needs_kernels
@pytest.mark.parametrize("per_channel", [False, True], ids=["one-slope", "per-channel"])
@pytest.mark.parametrize("layout", list(_layouts()))
def test_every_layout_and_gradient_layout_matches_the_torch_op_formula(layout, per_channel):
    torch.manual_seed(0)
    x = _layouts()[layout]
    slope = torch.rand(x.shape[-1] if per_channel else 1) + 0.5
    y = opslib.learned_silu(x, slope)
    assert y.stride() == torch.empty_like(x).stride(), "layout differs from the fake's"
    for grad_layout, grad_y in {
        "dense": torch.randn(x.shape),
        "transposed": torch.randn(x.shape[::-1]).mT if x.dim() == 2 else torch.randn(x.shape),
        "expanded": torch.randn(*x.shape[:-1], 1).expand(x.shape),
    }.items():
        grad_x, grad_slope = BACKWARD(grad_y, x, slope)
        assert grad_x.stride() == torch.empty_like(x).stride(), grad_layout
        want = forward_and_grads(native, x, slope, grad_y)
        what = f"{layout} x, {grad_layout} grad_y"
        assert_close_named(y, want[0], f"{what}: y", **FLOAT32_TOL)
        assert_close_named(grad_x, want[1], f"{what}: grad x", **FLOAT32_TOL)
        assert_close_named(grad_slope, want[2], f"{what}: grad slope", **FLOAT32_TOL)


def _max_error(t, exact):
    return (t.double() - exact).abs().max().item() if exact.numel() else 0.0


SLOPE_GRADIENT_SIZES = [
    ((7,), ()),
    ((1 << 16,), (1,)),
    ((1 << 22,), (1,)),
    ((1029, 917), (917,)),
    ((4096, 1024), (1024,)),
    ((64, 1 << 15), (1 << 15,)),  # channels wider than a block
]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("x_shape,slope_shape", SLOPE_GRADIENT_SIZES, ids=str)
def test_slope_gradient_is_at_least_as_accurate_as_native_at_every_size(
    x_shape, slope_shape, dtype
):
    """Against float64: the kernels' error is at most native eager's plus one epsilon of the
    dtype (relative to the gradient's size), for y, dL/dx and dL/dslope."""
    torch.manual_seed(0)
    x = torch.randn(x_shape).to(dtype)
    slope = (torch.rand(slope_shape) + 0.5).to(dtype)
    grad_y = torch.randn(x_shape).to(dtype)
    ours = forward_and_grads(opslib.learned_silu, x, slope, grad_y)
    theirs = forward_and_grads(native, x, slope, grad_y)
    exact = forward_and_grads(native, x.double(), slope.double(), grad_y.double())
    eps = torch.finfo(dtype).eps
    for name, o, n, e in zip(("y", "grad x", "grad slope"), ours, theirs, exact, strict=True):
        err, native_err = _max_error(o, e), _max_error(n, e)
        scale = max(1.0, e.abs().max().item())
        assert err <= native_err + eps * scale, f"{name}: error {err:.3g}, native {native_err:.3g}"


def _backward_samples(dtype=torch.float32, requires_grad=True):
    def t(*shape):
        return torch.randn(shape, dtype=dtype).requires_grad_(requires_grad)

    def transposed(*shape):
        return torch.randn(shape[::-1], dtype=dtype).mT.requires_grad_(requires_grad)

    return {
        "one-slope": (t(4, 5), t(4, 5), t(1)),
        "0-d-slope": (t(4, 5), t(4, 5), t()),
        "per-channel": (t(3, 4, 5), t(3, 4, 5), t(5)),
        "0-d": (t(), t(), t()),
        "empty": (t(0, 5), t(0, 5), t(5)),
        "transposed": (transposed(4, 5), transposed(4, 5), t(5)),
        "slope[4,1] (torch-op path)": (t(4, 5), t(4, 5), t(4, 1)),
    }


@pytest.mark.parametrize("name", list(_backward_samples()))
def test_backward_op_passes_opcheck(name):
    args = _backward_samples()[name]
    result = torch.library.opcheck(BACKWARD, args, test_utils=ALL_OPCHECK_TESTS)
    assert result == dict.fromkeys(ALL_OPCHECK_TESTS, "SUCCESS"), name


@pytest.mark.parametrize("name", list(_backward_samples()))
def test_backward_op_gradcheck_and_gradgradcheck_float64(name):
    """The double backward of learned_silu is this op's backward: checked to second order
    against finite differences (so learned_silu's third derivatives too)."""
    args = _backward_samples(torch.float64)[name]
    assert torch.autograd.gradcheck(BACKWARD, args), name
    assert torch.autograd.gradgradcheck(BACKWARD, args), name


@pytest.mark.parametrize("name", list(_backward_samples()))
def test_backward_op_equals_native_autograds_vector_jacobian_product(name):
    grad_y, x, slope = _backward_samples(requires_grad=False)[name]
    x_ref, slope_ref = x.clone().requires_grad_(), slope.clone().requires_grad_()
    want = torch.autograd.grad(native(x_ref, slope_ref), (x_ref, slope_ref), grad_y)
    for got, w, what in zip(
        BACKWARD(grad_y, x, slope), want, ("grad x", "grad slope"), strict=True
    ):
        assert_close_named(got, w, f"{name}: {what}", **FLOAT32_TOL)


def test_create_graph_gives_a_differentiable_backward_through_the_kernels():
    x = torch.randn(256, 64, dtype=torch.float64, requires_grad=True)
    slope = torch.rand(64, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(opslib.learned_silu(x, slope).sum(), x, create_graph=True)
    gxx, gxs = torch.autograd.grad(gx.sum(), (x, slope))
    x_ref, slope_ref = x.detach().requires_grad_(), slope.detach().requires_grad_()
    (gx_ref,) = torch.autograd.grad(native(x_ref, slope_ref).sum(), x_ref, create_graph=True)
    want = torch.autograd.grad(gx_ref.sum(), (x_ref, slope_ref))
    assert_close_named(gxx, want[0], "d²/dx²")
    assert_close_named(gxs, want[1], "d²/dx dslope")


def test_without_the_cpp_kernels_the_torch_op_path_gives_the_same_results(monkeypatch):
    torch.manual_seed(0)
    x, slope, grad_y = torch.randn(300, 70), torch.rand(70) + 0.5, torch.randn(300, 70)
    with_kernels = forward_and_grads(opslib.learned_silu, x, slope, grad_y)
    monkeypatch.setattr(cpu_kernels, "_loaded", False)
    with CpuKernelCalls() as calls:
        without = forward_and_grads(opslib.learned_silu, x, slope, grad_y)
    assert calls.seen == []
    for name, a, b in zip(("y", "grad x", "grad slope"), with_kernels, without, strict=True):
        assert_close_named(a, b, f"C++ kernels vs torch ops: {name}", **FLOAT32_TOL)


def test_results_do_not_depend_on_the_number_of_threads():
    torch.manual_seed(0)
    x, slope, grad_y = torch.randn(1 << 20), torch.rand(1) + 0.5, torch.randn(1 << 20)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(forward_and_grads(opslib.learned_silu, x, slope, grad_y))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "x_shape,slope_shape", [((), (1,)), ((), (5,)), ((3, 1), (4,)), ((1,), (4,))], ids=str
)
def test_x_that_broadcasts_to_a_one_dim_slope_gives_natives_shape(x_shape, slope_shape):
    """A 0-d x with a [1] or [C] slope, or x [..., 1] with [C]: native's ``slope * F.silu(x)``
    broadcasts x, and so does the op (it refused these before): the same values, shape and
    gradients (x's summed back to its own shape), in eager mode and compiled."""
    torch.manual_seed(0)
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    slope = torch.randn(slope_shape, dtype=torch.float64, requires_grad=True)
    native = slope * torch.nn.functional.silu(x)
    expected = torch.autograd.grad(native.sum(), [x, slope])
    compiled = torch.compile(opslib.learned_silu, fullgraph=True, backend="aot_eager")
    for name, fn in (("eager", opslib.learned_silu), ("compiled", compiled)):
        y = fn(x, slope)
        assert y.shape == native.shape, (name, y.shape)
        assert_close_named(y, native, f"{name} y")
        for what, got, want in zip(("x", "slope"), torch.autograd.grad(y.sum(), [x, slope]),
                                   expected, strict=True):  # fmt: skip
            assert_close_named(got, want, f"{name} grad {what}")
