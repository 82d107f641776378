"""The op contract, checked for every sample of every op in the op table.

Three separate checks per sample, as the PyTorch custom-op tutorials advise:
registration (opcheck), agreement with the native PyTorch reference (values and gradients), and
the math (gradcheck and gradgradcheck in float64, against finite differences).
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALL_OPCHECK_TESTS,
    DEVICES,
    assert_close_named,
    fresh_leaves,
    get_sample,
    grads_of,
    op_params,
    op_sample_params,
)

from opslib.testing import cases
from opslib.testing.families import gradcheck_args, low_precision_check


@pytest.mark.parametrize("info,index", op_sample_params())
def test_opcheck_passes_every_check(info, index):
    sample = get_sample(info, index, "cpu", torch.float32)
    result = torch.library.opcheck(info.op, sample.args, test_utils=ALL_OPCHECK_TESTS)
    assert result == dict.fromkeys(ALL_OPCHECK_TESTS, "SUCCESS"), f"{info.name}/{sample}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("info,index", op_sample_params())
def test_values_and_gradients_match_native_float32(info, index, device):
    sample = get_sample(info, index, device, torch.float32)
    args = sample.args
    ref_args = fresh_leaves(args)
    what = f"{info.name}/{sample}"
    atol, rtol = info.float32_tol

    y = info.func(*args)
    y_ref = info.reference(*ref_args)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype, what
    assert_close_named(y, y_ref, f"{what} forward", atol=atol, rtol=rtol)
    assert not any(
        y.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
        for a in args
        if isinstance(a, torch.Tensor) and a.numel() > 0
    ), f"{what}: the output aliases an input"

    if not y.requires_grad:
        return
    grad_y = torch.randn_like(y_ref)
    y.backward(grad_y)
    y_ref.backward(grad_y)
    for i, (g, g_ref) in enumerate(zip(grads_of(args), grads_of(ref_args), strict=True)):
        assert_close_named(g, g_ref, f"{what} gradient of input {i}", atol=atol, rtol=rtol)


@pytest.mark.parametrize("info,index", op_sample_params())
def test_backward_accepts_gradients_of_any_stride(info, index):
    """Gradients arriving transposed, expanded (stride 0) or sliced give the same result."""
    sample = get_sample(info, index, "cpu", torch.float64)
    y = info.func(*sample.args)
    if not y.requires_grad or y.dim() == 0:
        pytest.skip("no gradient or no layout to vary")
    dense = torch.randn(y.shape, dtype=y.dtype)
    awkward = {
        "transposed": dense.mT.contiguous().mT if y.dim() >= 2 else dense,
        "strided": torch.randn(*y.shape[:-1], 2 * y.shape[-1], dtype=y.dtype)[..., ::2],
        "expanded": torch.randn(*y.shape[:-1], 1, dtype=y.dtype).expand(y.shape),
    }
    inputs = [a for a in sample.args if isinstance(a, torch.Tensor) and a.requires_grad]
    for layout, grad_y in awkward.items():
        got = torch.autograd.grad(y, inputs, grad_y, retain_graph=True)
        want = torch.autograd.grad(y, inputs, grad_y.contiguous(), retain_graph=True)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close_named(g, w, f"{info.name}/{sample} {layout} grad_y, input {i}")


@pytest.mark.parametrize("info,index", op_sample_params())
def test_gradcheck_float64(info, index):
    sample = get_sample(info, index, "cpu", torch.float64)
    args = gradcheck_args(sample.args)
    if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        pytest.skip("sample has no input that requires grad")
    assert torch.autograd.gradcheck(info.func, args), f"{info.name}/{sample}"


@pytest.mark.parametrize("info,index", op_sample_params())
def test_gradgradcheck_float64(info, index):
    sample = get_sample(info, index, "cpu", torch.float64)
    args = gradcheck_args(sample.args)
    if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        pytest.skip("sample has no input that requires grad")
    assert torch.autograd.gradgradcheck(info.func, args), f"{info.name}/{sample}"


LOW_PRECISION_PARAMS = [
    pytest.param(p.values[0], dtype, id=f"{p.id}-{dtype}")
    for p in op_params()
    for dtype in p.values[0].dtypes
    if dtype in (torch.bfloat16, torch.float16)
]


@pytest.mark.parametrize("info,dtype", LOW_PRECISION_PARAMS)
def test_low_precision_error_at_most_twice_native(info, dtype):
    """In bfloat16/float16 the op's error against a float64 reference may be at most twice the
    error of native PyTorch in the same dtype, plus one unit of the dtype's epsilon: a bound
    that scales with what the dtype can represent (flash-attention's test style)."""
    for index in range(len(info.sample_inputs("cpu", torch.float32, True))):
        sample = get_sample(info, index, "cpu", torch.float32)
        low_precision_check(info, sample, dtype, f"{info.name}/{sample} {dtype}")


@pytest.mark.parametrize("info", [p for p in op_params() if p.values[0].extreme_inputs])
def test_extreme_values_match_native(info):
    """±1000, ±1e4, ±inf and nan give native's values and gradients: the same infinities, nan
    in the same places, and 0 (never nan) for sigmoid/silu of large negative inputs."""
    (case,) = cases(info, ["extremes"])
    case.run()


def test_sigmoid_and_silu_of_large_negative_inputs_are_zero_not_nan():
    import opslib

    x = torch.tensor([-1e4, -1000.0, -200.0], requires_grad=True)
    slope = torch.tensor([2.0], requires_grad=True)
    for y in (opslib.sigmoid(x), opslib.learned_silu(x, slope)):
        (gx, *_) = torch.autograd.grad(y.sum(), [x])
        assert torch.equal(y, torch.zeros_like(y)) and torch.equal(gx, torch.zeros_like(gx))
