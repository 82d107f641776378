"""The Triton kernels of the CUDA path (opslib/ops/triton_kernels/).

Without a GPU they run on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set by
conftest.py); on a CUDA machine the same tests run on the GPU, and the op-level tests below
check that the ops really take the Triton path there. Skipped when Triton is not installed.
"""

from __future__ import annotations

import pkgutil

import pytest
import torch
from conftest import ALL_OPCHECK_TESTS, HAS_CUDA, assert_close_named, requires_cuda

from opslib.core import cuda_path
from opslib.ops import triton_kernels
from opslib.testing.opinfo import leaves
from opslib.testing.opinfos import OP_TABLE

pytestmark = pytest.mark.skipif(not cuda_path.triton_installed(), reason="Triton is not installed")

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            HAS_CUDA or not cuda_path.interpreter_enabled(), reason="interpreter runs without GPU"
        ),
        id="interpreter",
    ),
    pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda], id="cuda"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def triton_params() -> list:
    return [pytest.param(info, id=info.name) for info in OP_TABLE if info.triton is not None]


def triton_calls(info, device, dtype) -> list:
    """The op's samples (every awkward layout, 0-d, empty) and a batch of 64 rows (several
    blocks of the kernels), with the values moved to ``device`` in ``dtype``; the calls its
    kernels take (``TritonPath.supports``)."""
    calls = [(s.name, s.args) for s in info.sample_inputs("cpu", torch.float32, False)]
    calls.append(("batch-64", info.batch_inputs(64, "cpu", torch.float32)))
    moved = [
        (name, tuple(a.to(device, dtype) if isinstance(a, torch.Tensor) else a for a in args))
        for name, args in calls
    ]
    return [(name, args) for name, args in moved if info.triton.supports(*args)]


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
    return info.reference(*(a.float() if isinstance(a, torch.Tensor) else a for a in args))


def reference_gradients(info, grad_y, args, dtype=torch.float32):
    """Native autograd of the reference in ``dtype``: the gradient of every tensor argument."""
    inputs = tuple(
        a.detach().to(dtype).requires_grad_() if isinstance(a, torch.Tensor) else a for a in args
    )
    wrt = [a for a in inputs if isinstance(a, torch.Tensor)]
    return torch.autograd.grad(info.reference(*inputs), wrt, grad_y.to(dtype))


def gradient_tolerance(dtype, grad, grad_y, args):
    """Elementwise gradients: ``tolerance``. A gradient reduced over broadcast dims (a slope's)
    is a sum of many terms: its absolute tolerance grows with the size of that sum."""
    tol = tolerance(dtype)
    if grad.numel() >= grad_y.numel():
        return tol
    scale = max(1.0, (grad_y.float() * args[0].float()).abs().sum().item())
    return {"atol": scale * tol["rtol"] * 4, "rtol": tol["rtol"]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", triton_params())
def test_forward_matches_native_in_every_layout(info, dtype, device):
    for name, args in triton_calls(info, device, dtype):
        y = info.triton.forward(*args)
        assert y.shape == args[0].shape and y.dtype == dtype, name
        assert y.stride() == info.op(*args).stride(), f"{name}: layout differs from the op's"
        want = reference_in_float32(info, *args).to(dtype)
        assert_close_named(y, want, f"triton {info.name} {dtype} {name}", **tolerance(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", triton_params())
def test_backward_matches_native_autograd(info, dtype, device):
    for name, args in triton_calls(info, device, dtype):
        x = args[0]
        grad_y = (
            torch.randn(x.shape[::-1], device=device).to(dtype).mT  # a transposed gradient
            if x.dim() == 2
            else torch.randn(x.shape, device=device).to(dtype)
        )
        got = info.triton.backward(grad_y, *args)
        what = f"triton {info.name} backward {dtype} {name}"
        if dtype == torch.float32:
            want = reference_gradients(info, grad_y, args)
            for i, (g, w) in enumerate(zip(got, want, strict=True)):
                assert g.shape == w.shape and g.dtype == dtype, f"{what}, grad {i}"
                tol = gradient_tolerance(dtype, g, grad_y, args)
                assert_close_named(g, w, f"{what}, grad {i}", **tol)
            continue
        # Half types: the op saves its output rounded to the dtype, as native does, so the
        # bound is native's own error in the dtype (against float64), twice, plus one epsilon.
        exact = reference_gradients(info, grad_y, args, torch.float64)
        native = reference_gradients(info, grad_y, args, dtype)
        eps = torch.finfo(dtype).eps
        for i, (g, e, n) in enumerate(zip(got, exact, native, strict=True)):
            assert g.shape == e.shape and g.dtype == dtype, f"{what}, grad {i}"
            if not g.numel():
                continue
            err, native_err = ((t.double() - e).abs().max().item() for t in (g, n))
            scale = max(1.0, e.abs().max().item())
            assert err <= 2 * native_err + eps * scale, (
                f"{what}, grad {i}: error {err:.3g}, native {native_err:.3g}"
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
@pytest.mark.parametrize("info", [p for p in triton_params() if p.values[0].extreme_inputs])
def test_extreme_values_match_native(info, device):
    args = tuple(
        a.detach().to(device) if isinstance(a, torch.Tensor) else a
        for a in info.extreme_inputs(torch.tensor(SPECIAL))
    )
    assert_close_named(info.triton.forward(*args), info.reference(*args), f"{info.name} fwd")
    grad_y = torch.ones(len(SPECIAL), device=device)
    got = info.triton.backward(grad_y, *args)
    for i, (g, w) in enumerate(zip(got, reference_gradients(info, grad_y, args), strict=True)):
        assert_close_named(g, w, f"{info.name} backward on {SPECIAL}, grad {i}")


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("info", triton_params())
def test_ops_take_the_triton_path_on_cuda_and_keep_the_contract(info, monkeypatch):
    calls = []
    # every launcher of the CUDA path, in every kernel module: no list of ops here
    for module_info in pkgutil.iter_modules(triton_kernels.__path__):
        if module_info.name == "unary_codes":
            continue
        module = cuda_path.kernels(module_info.name)
        for fn in ("forward", "backward"):
            if hasattr(module, fn):
                original, name = getattr(module, fn), f"{module_info.name}.{fn}"
                monkeypatch.setattr(
                    module, fn, lambda *a, f=original, n=name: calls.append(n) or f(*a)
                )
    args = leaves(info.batch_inputs(64, "cuda", torch.float32), constant=info.constant_args)
    y = info.func(*args)
    y.backward(torch.ones_like(y))
    assert len(calls) == 2, calls  # one forward kernel, one backward kernel
    for sample in info.sample_inputs("cuda", torch.float32, True):
        torch.library.opcheck(
            info.op,
            sample.args,
            test_utils=ALL_OPCHECK_TESTS,
        )
