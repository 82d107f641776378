"""The Triton kernels of the CUDA path (opslib/core/triton_kernels.py).

Without a GPU they run on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set by
conftest.py); on a CUDA machine the same tests run on the GPU, and the op-level tests below
check that the ops really take the Triton path there. Skipped when Triton is not installed.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ALL_OPCHECK_TESTS, HAS_CUDA, assert_close_named, requires_cuda

from opslib.core import triton_launchers as _triton
from opslib.op_table import OPS_BY_NAME

pytestmark = pytest.mark.skipif(_triton.kernels() is None, reason="Triton is not installed")

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            HAS_CUDA or not _triton.interpreter_enabled(), reason="interpreter runs without GPU"
        ),
        id="interpreter",
    ),
    pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda], id="cuda"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
UNARY = {
    "square": _triton.SQUARE,
    "cube": _triton.CUBE,
    "exp": _triton.EXP,
    "relu": _triton.RELU,
    "sigmoid": _triton.SIGMOID,
    "tanh": _triton.TANH,
}
SAVES_OUTPUT = {"exp", "relu", "sigmoid", "tanh"}  # the others save x


def layouts(device, dtype):
    base = torch.randn(33, 40, device=device).to(dtype)
    return {
        "contiguous": torch.randn(3000, device=device).to(dtype),
        "transposed": base.t(),
        "strided-slice": base[::2, 1::3],
        "expanded": torch.randn(33, 1, device=device).to(dtype).expand(33, 40),
        "channels-last": torch.randn(2, 3, 4, 5, device=device)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last),
        "0-d": torch.randn((), device=device).to(dtype),
        "empty": torch.randn(0, 7, device=device).to(dtype),
    }


def tolerance(dtype):
    # float32: a couple of ulps (exp/sigmoid implementations differ in the last bit);
    # half types: the kernels round once from float32, native rounds once too: 1 ulp.
    return (
        {"atol": 1e-6, "rtol": 2e-6}
        if dtype == torch.float32
        else {
            "atol": 1e-3 if dtype == torch.float16 else 8e-3,
            "rtol": torch.finfo(dtype).eps,
        }
    )


def reference_in_float32(info, *args):
    return info.reference(*(a.float() for a in args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", UNARY)
def test_unary_forward_matches_native_in_every_layout(name, dtype, device):
    info = OPS_BY_NAME[name]
    for layout, x in layouts(device, dtype).items():
        y = _triton.unary_forward(UNARY[name], x)
        assert y.shape == x.shape and y.dtype == dtype
        assert y.stride() == torch.empty_like(x).stride(), f"{layout}: layout differs from fake"
        want = reference_in_float32(info, x).to(dtype)
        assert_close_named(y, want, f"triton {name} {dtype} {layout}", **tolerance(dtype))


BACKWARD_FORMULA = {  # dL/dx from g and the saved tensor, as each op's file derives it
    "square": lambda g, x: g * 2 * x,
    "cube": lambda g, x: 3 * g * x * x,
    "exp": lambda g, y: g * y,
    "relu": lambda g, y: torch.where(y <= 0, 0.0, g),
    "sigmoid": lambda g, y: g * y * (1 - y),
    "tanh": lambda g, y: g * (1 - y * y),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", UNARY)
def test_unary_backward_matches_the_documented_formula(name, dtype, device):
    info = OPS_BY_NAME[name]
    for layout, x in layouts(device, dtype).items():
        # what the op saves, in the op's dtype: x, or y = op(x)
        saved = info.reference(x.float()).to(dtype) if name in SAVES_OUTPUT else x
        grad_y = (
            torch.randn(x.shape[::-1], device=device).to(dtype).mT  # a transposed gradient
            if x.dim() == 2
            else torch.randn(x.shape, device=device).to(dtype)
        )
        want = BACKWARD_FORMULA[name](grad_y.float(), saved.float()).to(dtype)
        got = _triton.unary_backward(UNARY[name], grad_y, saved)
        assert_close_named(
            got, want, f"triton {name} backward {dtype} {layout}", **tolerance(dtype)
        )


SPECIAL = [
    float("-inf"),
    -1e4,
    -100.0,
    -1.0,
    -0.0,
    0.0,
    1e-30,
    1e-4,
    1.0,
    20.0,
    100.0,
    1e4,
    float("inf"),
    float("nan"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", UNARY)
def test_unary_extreme_values_match_native(name, device):
    info = OPS_BY_NAME[name]
    x = torch.tensor(SPECIAL, device=device)
    assert_close_named(_triton.unary_forward(UNARY[name], x), info.reference(x), f"{name} fwd")
    x_ref = x.clone().requires_grad_()
    y_ref = info.reference(x_ref)
    (want,) = torch.autograd.grad(y_ref, x_ref, torch.ones_like(x))
    saved = y_ref.detach() if name in SAVES_OUTPUT else x
    got = _triton.unary_backward(UNARY[name], torch.ones_like(x), saved)
    assert_close_named(got, want, f"{name} backward on {SPECIAL}")


SILU_SHAPES = [
    ((3000,), (1,)),
    ((37, 200), (200,)),
    ((5, 7, 9), (9,)),
    ((5, 7, 9), ()),
    ((0, 4), (4,)),
    ((), ()),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_shape,slope_shape", SILU_SHAPES, ids=str)
def test_learned_silu_forward_and_fused_backward(x_shape, slope_shape, dtype, device):
    info = OPS_BY_NAME["learned_silu"]
    x = torch.randn(x_shape, device=device).to(dtype)
    slope = (torch.rand(slope_shape, device=device) + 0.5).to(dtype)
    assert _triton.learned_silu_supported(x, slope)
    y = _triton.learned_silu_forward(x, slope)
    want = reference_in_float32(info, x, slope)
    assert_close_named(y, want.to(dtype), f"learned_silu {dtype} {x_shape}", **tolerance(dtype))

    x32, s32 = x.float().requires_grad_(), slope.float().requires_grad_()
    grad_y = torch.randn(x_shape, device=device).to(dtype)
    want_x, want_slope = torch.autograd.grad(info.reference(x32, s32), (x32, s32), grad_y.float())
    grad_x, grad_slope = _triton.learned_silu_backward(grad_y, x, slope)
    assert grad_slope.shape == slope.shape and grad_slope.dtype == dtype
    assert_close_named(grad_x, want_x.to(dtype), f"grad x {dtype} {x_shape}", **tolerance(dtype))
    # the slope gradient is a sum over many terms: relative to its size, in the output dtype
    scale = max(1.0, (grad_y.float() * x32.detach()).abs().sum().item())
    assert_close_named(
        grad_slope,
        want_slope.to(dtype),
        f"grad slope {dtype} {x_shape}",
        atol=scale * tolerance(dtype)["rtol"] * 4,
        rtol=tolerance(dtype)["rtol"],
    )


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", [*UNARY, "learned_silu"])
def test_ops_take_the_triton_path_on_cuda_and_keep_the_contract(name, monkeypatch):
    info = OPS_BY_NAME[name]
    calls = []
    for fn in ("unary_forward", "unary_backward", "learned_silu_forward", "learned_silu_backward"):
        original = getattr(_triton, fn)
        monkeypatch.setattr(_triton, fn, lambda *a, f=original, n=fn: calls.append(n) or f(*a))
    args = [a.requires_grad_() for a in info.batch_inputs(64, "cuda", torch.float32)]
    y = info.func(*args)
    y.backward(torch.ones_like(y))
    assert len(calls) == 2, calls  # one forward kernel, one backward kernel
    for sample in info.sample_inputs("cuda", torch.float32, True):
        torch.library.opcheck(
            info.op,
            sample.args,
            test_utils=ALL_OPCHECK_TESTS,
        )
