"""learned_silu's fused CPU path (an inductor-compiled loop for large contiguous tensors): the
same op contract as the torch-op path, checked with the size threshold lowered to 0 so that the
small samples of the op table go through it too."""

from __future__ import annotations

import importlib
import re
import warnings

import pytest
import torch
from conftest import ALL_OPCHECK_TESTS, assert_close_named, fresh_leaves

import opslib
from opslib.core.compiled_loops import FusedKernelWarning
from opslib.op_table import OPS_BY_NAME

INFO = OPS_BY_NAME["learned_silu"]
# The module, not the function opslib.ops.learned_silu that shadows it.
learned_silu_module = importlib.import_module("opslib.ops.learned_silu")


@pytest.fixture(autouse=True)
def fused_path_must_compile():
    """A fallback to torch ops would make these tests pass without testing the fused path."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedKernelWarning)
        yield


@pytest.fixture
def fused_always(monkeypatch):
    """Tiny samples (sizes 0 and 1 included) each specialise a compile: allow them all."""
    monkeypatch.setattr(learned_silu_module, "FUSED_FORWARD_MIN_NUMEL", 0)
    monkeypatch.setattr(learned_silu_module, "FUSED_BACKWARD_MIN_NUMEL", 0)
    with torch._dynamo.config.patch(recompile_limit=64):  # dynamo's own way to set its config
        yield


def _fused_samples(dtype):
    samples = INFO.sample_inputs("cpu", dtype, True)
    return [s for s in samples if learned_silu_module._fusable_layout(*s.args)]


def test_the_table_has_fusable_samples():
    names = {s.name for s in _fused_samples(torch.float32)}
    assert {"slope[1]", "slope[]", "slope[C]", "4-d-slope[C]"} <= names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("slope_shape", [(1,), (256,)], ids=["single-slope", "per-channel"])
def test_large_tensors_take_the_fused_path_and_match_native(dtype, slope_shape):
    x = torch.randn(4096, 256, dtype=dtype, requires_grad=True)  # 1M elements: both loops
    slope = (torch.rand(slope_shape, dtype=dtype) + 0.5).requires_grad_()
    assert learned_silu_module._fusable(x, slope, learned_silu_module.FUSED_FORWARD_MIN_NUMEL)
    assert learned_silu_module._fusable(x, slope, learned_silu_module.FUSED_BACKWARD_MIN_NUMEL)
    ref_x, ref_slope = fresh_leaves((x, slope))
    y, y_ref = opslib.learned_silu(x, slope), INFO.reference(ref_x, ref_slope)
    assert_close_named(y, y_ref, f"fused forward {dtype}")
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    y_ref.backward(grad_y)
    assert_close_named(x.grad, ref_x.grad, f"fused grad x {dtype}")
    assert_close_named(
        slope.grad, ref_slope.grad, f"fused grad slope {dtype}", rtol=1e-4, atol=1e-3
    )


def test_fused_backward_accepts_a_non_contiguous_gradient():
    x = torch.randn(256, 256, requires_grad=True)
    slope = torch.tensor([0.5], requires_grad=True)
    y = opslib.learned_silu(x, slope)
    grad_y = torch.randn(256, 512)[:, ::2]
    got = torch.autograd.grad(y, (x, slope), grad_y, retain_graph=True)
    want = torch.autograd.grad(y, (x, slope), grad_y.contiguous())
    for g, w in zip(got, want, strict=True):
        assert_close_named(g, w, "non-contiguous grad_y")


@pytest.mark.usefixtures("fused_always")
@pytest.mark.parametrize("index", range(len(_fused_samples(torch.float32))))
def test_opcheck_gradcheck_gradgradcheck_through_the_fused_path(index):
    torch.manual_seed(index)
    sample = _fused_samples(torch.float32)[index]
    result = torch.library.opcheck(
        INFO.op,
        sample.args,
        test_utils=ALL_OPCHECK_TESTS,
    )
    assert set(result.values()) == {"SUCCESS"}, result
    args64 = fresh_leaves(sample.args, torch.float64)
    assert torch.autograd.gradcheck(INFO.func, args64), sample
    assert torch.autograd.gradgradcheck(INFO.func, args64), sample


@pytest.mark.usefixtures("fused_always")
def test_fused_and_torch_op_paths_agree_on_the_same_inputs(monkeypatch):
    x = torch.randn(64, 32, requires_grad=True)
    slope = torch.rand(32, requires_grad=True)
    fused = [
        opslib.learned_silu(x, slope),
        *torch.autograd.grad(opslib.learned_silu(x, slope).sum(), (x, slope)),
    ]
    monkeypatch.setattr(learned_silu_module, "FUSED_FORWARD_MIN_NUMEL", 1 << 62)
    monkeypatch.setattr(learned_silu_module, "FUSED_BACKWARD_MIN_NUMEL", 1 << 62)
    plain = [
        opslib.learned_silu(x, slope),
        *torch.autograd.grad(opslib.learned_silu(x, slope).sum(), (x, slope)),
    ]
    for name, a, b in zip(["y", "grad x", "grad slope"], fused, plain, strict=True):
        assert_close_named(a, b, f"fused vs torch ops: {name}")


def test_a_failed_compile_falls_back_to_torch_ops_with_a_warning(monkeypatch):
    from opslib.core import compiled_loops as _common

    def broken(formula):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_common, "_compiled", broken)
    monkeypatch.setattr(_common, "_failed_fusions", set())
    x = torch.randn(1024, 1024, requires_grad=True)  # 1M elements: both loops would be fused
    slope = torch.tensor([0.5], requires_grad=True)
    with pytest.warns(FusedKernelWarning, match="no C\\+\\+ compiler") as caught:
        y = opslib.learned_silu(x, slope)
        grads = torch.autograd.grad(y.sum(), (x, slope))
    warned = {re.search(r"fused (\w+) kernel", str(w.message)).group(1) for w in caught}
    assert warned == {"_forward_formula", "_backward_formula"}, warned
    ref_x, ref_slope = fresh_leaves((x, slope))
    y_ref = INFO.reference(ref_x, ref_slope)
    assert_close_named(y, y_ref, "fallback forward")
    for g, g_ref in zip(grads, torch.autograd.grad(y_ref.sum(), (ref_x, ref_slope)), strict=True):
        assert_close_named(g, g_ref, "fallback gradient", rtol=1e-4, atol=1e-3)
