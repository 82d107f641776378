"""What the normalisation ops promise beyond matching native in float32 (the op table's tests):
exact results where the math is exact, and accuracy where float32 is strained."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import opslib


def test_layer_norm_of_one_element_rows_is_exactly_the_bias_with_zero_gradients():
    """x̂ = x - mean(x) = 0 for a row of one element: y = b, and dL/dx = dL/dw = 0, exactly
    (native computes x̂ as x·r - μ·r, and 1/sqrt(eps) amplifies its rounding)."""
    x = torch.randn(64, 1).mul(100).requires_grad_()
    w, b = torch.randn(1, requires_grad=True), torch.randn(1, requires_grad=True)
    y = opslib.layer_norm(x, [1], w, b, 1e-5)
    assert torch.equal(y, b.detach().expand(64, 1))
    grad_x, grad_w = torch.autograd.grad(y, (x, w), torch.randn(64, 1))
    assert torch.equal(grad_x, torch.zeros_like(x)) and torch.equal(grad_w, torch.zeros_like(w))


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("mean", [1e3, 1e5])
def test_norms_of_rows_far_from_zero_are_as_accurate_as_native(op, mean):
    """Rows with mean ≫ spread, against float64: the forward and dL/dx at most native's error
    plus one float32 epsilon of the result's scale."""
    torch.manual_seed(0)
    x = mean + torch.randn(32, 512, dtype=torch.float64)
    g = torch.randn(32, 512, dtype=torch.float64)
    ours_fn, native_fn = getattr(opslib, op), getattr(F, op)

    def run(fn, dtype):
        xt = x.to(dtype).requires_grad_()
        y = fn(xt, [512])
        (grad,) = torch.autograd.grad(y, xt, g.to(dtype))
        return y.double(), grad.double()

    exact = run(native_fn, torch.float64)
    for i, (o, n, e) in enumerate(
        zip(run(ours_fn, torch.float32), run(native_fn, torch.float32), exact, strict=True)
    ):
        ours_error, native_error = (o - e).abs().max().item(), (n - e).abs().max().item()
        eps = torch.finfo(torch.float32).eps * e.abs().max().item()
        assert ours_error <= native_error + eps, (i, ours_error, native_error)


# ---- batch_norm: the running statistics, the update op, the modules ----

BATCH_NORM_SHAPES = [(8, 4), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2)]


@pytest.mark.parametrize("shape", BATCH_NORM_SHAPES, ids=str)
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_batch_norm_updates_running_statistics_as_native(shape, momentum):
    """Three training steps: native's running mean and unbiased running variance, each step,
    and the same y."""
    torch.manual_seed(0)
    c = shape[1]
    ours = [torch.randn(c) * 0.1, torch.rand(c) + 0.5]
    native = [t.clone() for t in ours]
    for _ in range(3):
        x = torch.randn(shape) * 3 + 1
        y = opslib.batch_norm(x, *ours, None, None, True, momentum, 1e-5)
        y_ref = F.batch_norm(x, *native, None, None, True, momentum, 1e-5)
        torch.testing.assert_close(y, y_ref)
        for got, want in zip(ours, native, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_batch_norm_update_op_passes_opcheck():
    update = torch.ops.customgrad.batch_norm_update_
    args = (torch.zeros(4), torch.ones(4), torch.randn(4), torch.rand(4) + 0.5, 0.1)
    tests = (
        "test_schema",
        "test_autograd_registration",
        "test_faketensor",
        "test_aot_dispatch_static",
        "test_aot_dispatch_dynamic",
    )
    result = torch.library.opcheck(update, args, test_utils=tests)
    assert result == dict.fromkeys(tests, "SUCCESS")


def test_batch_norm_update_refusal_changes_nothing():
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError, match=r"customgrad\.batch_norm_update_: momentum must be"):
        torch.ops.customgrad.batch_norm_update_(
            running_mean, running_var, torch.randn(4), torch.rand(4), math.nan
        )
    with pytest.raises(ValueError, match=r"customgrad\.batch_norm_update_: var of shape \[3\]"):
        torch.ops.customgrad.batch_norm_update_(
            running_mean, running_var, torch.randn(4), torch.rand(3), 0.1
        )
    assert torch.equal(running_mean, torch.zeros(4)) and torch.equal(running_var, torch.ones(4))


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 1), (3, 3, 1, 1), (1, 17)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_batch_norm_eval_gradients_with_strided_running_statistics(shape, dtype):
    """Eval mode, running statistics (and weight) that are strided views, x of spatial size 1:
    the gradients are r·w·g and Σ g·x̂ (written out in float64). ATen's CPU backward misreads
    strided statistics there (gradients of 1e2 to 1e34, different on every run, native's too);
    the op hands it contiguous ones."""
    torch.manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    mean, var = torch.randn(3 * c, dtype=dtype)[::3], (torch.rand(3 * c, dtype=dtype) + 0.5)[::3]
    weight = torch.randn(2 * c, dtype=dtype)[::2].requires_grad_()
    y = opslib.batch_norm(x, mean, var, weight, None, False, 0.1, 1e-5)
    grad_y = torch.randn_like(y)
    grad_x, grad_w = torch.autograd.grad(y, [x, weight], grad_y)
    per_channel = [1, c] + [1] * (x.dim() - 2)
    r = (var.double() + 1e-5).rsqrt().reshape(per_channel)
    x_hat = (x.double() - mean.double().reshape(per_channel)) * r
    dims = [0, *range(2, x.dim())]
    expected_x = grad_y.double() * weight.double().reshape(per_channel) * r
    expected_w = (grad_y.double() * x_hat).sum(dims)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(grad_x.double(), expected_x, **tol)
    torch.testing.assert_close(grad_w.double(), expected_w, **tol)


@pytest.mark.parametrize("variance", [1e-10, 1e-8, 0.0])
def test_batch_norm_running_variance_of_a_nearly_constant_channel_is_natives(variance):
    """Training on channels whose batch variance is far below eps: the running variance is the
    batch's unbiased variance as native computes it (float32 within 1e-7 relative; an exactly
    constant channel, float32 or float16, gives exactly 0). Derived from invstd⁻² - eps, it
    cancelled: 0.4% off at 1.4e-10 (measured before the fix)."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        x = torch.full((8, 2, 3), 0.5, dtype=dtype)
        x[:, 1] += (torch.randn(8, 3) * variance**0.5).to(dtype)
        ours = [torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype)]
        native = [t.clone() for t in ours]
        opslib.batch_norm(x, *ours, None, None, True, 0.5, 1e-5)
        F.batch_norm(x, *native, None, None, True, 0.5, 1e-5)
        torch.testing.assert_close(ours[1], native[1], atol=0, rtol=1e-7)
        assert ours[1][0] == 0.5  # the constant channel: (1 - momentum)·1 + momentum·0


@pytest.mark.parametrize("module", ["BatchNorm1d", "BatchNorm2d"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_modules_train_and_evaluate_as_torch_nn(module, momentum):
    torch.manual_seed(0)
    ours = getattr(opslib.nn, module)(3, momentum=momentum)
    native = getattr(torch.nn, module)(3, momentum=momentum)
    assert isinstance(ours, getattr(torch.nn, module))
    ours.load_state_dict(native.state_dict())
    shape = (6, 3, 5) if module == "BatchNorm1d" else (2, 3, 4, 4)
    for _ in range(3):
        x = torch.randn(shape).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = ours(x), native(x_ref)
        torch.testing.assert_close(y, y_ref)
        g = torch.randn_like(y)
        torch.testing.assert_close(
            torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x_ref, g)[0]
        )
    for (name, a), b in zip(ours.state_dict().items(), native.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)
    ours.eval(), native.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), native(x))


def test_batch_norm_training_compiles_fullgraph_with_buffer_updates_and_no_recompiles():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    ours, native = opslib.nn.BatchNorm1d(16), torch.nn.BatchNorm1d(16)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(ours, backend=counter, fullgraph=True, dynamic=True)
    for rows in (5, 9, 33):
        x = torch.randn(rows, 16) * 2 + 1
        y = compiled(x.requires_grad_())
        y.sum().backward()
        torch.testing.assert_close(y, native(x))
    torch.testing.assert_close(ours.running_mean, native.running_mean)
    torch.testing.assert_close(ours.running_var, native.running_var)
    assert int(ours.num_batches_tracked) == 3
    assert counter.frame_count <= 2  # eps and momentum: dynamo's one restart (test_compile_export)
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled(torch.randn(70, 16).requires_grad_())


def test_batch_norm_exports_in_training_mode_with_its_buffer_update_and_refuses_onnx(tmp_path):
    """The exported program keeps the update and runs it (the same running statistics as the
    eager model after the same batch); ONNX, an inference format, refuses training mode."""
    import copy

    from opslib import onnx as opslib_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(opslib.nn.Linear(4, 3), opslib.nn.BatchNorm1d(3)).train()
    eager = copy.deepcopy(model)
    program = torch.export.export(model, (torch.randn(8, 4),))
    exported, x = program.module(), torch.randn(8, 4)
    torch.testing.assert_close(exported(x), eager(x))
    for name in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(exported.state_dict()[name], eager.state_dict()[name])
    with pytest.raises(Exception, match=r"customgrad\.batch_norm: ONNX export needs evaluation"):
        opslib_onnx.export(model, (torch.randn(8, 4),), tmp_path / "train.onnx")


def test_batch_norm_under_vmap_refuses_to_update_running_statistics():
    x = torch.randn(5, 6, 3)
    with pytest.raises(RuntimeError, match=r"customgrad\.batch_norm: vmap cannot update"):
        torch.vmap(lambda x: opslib.batch_norm(x, torch.zeros(3), torch.ones(3), training=True))(x)
    per_sample = torch.vmap(lambda x: opslib.batch_norm(x, None, None, training=True))(x)
    torch.testing.assert_close(
        per_sample, torch.stack([F.batch_norm(s, None, None, training=True) for s in x])
    )


def test_layer_norm_row_of_cancelling_huge_values_has_the_exact_mean():
    """A float32 row whose ±1e30 cancel beside ordinary values (found by tests/fuzz.py): its
    float32 moments overflow, so the C++ kernel redoes the row in double, where a plain sum
    loses the ordinary values next to 1e30 (ulp 1.4e14) and the mean came out as noise: x̂
    of the wrong sign (-inf after an infinite weight, where the exact value is +inf; native
    gives nan in float32 and the wrong sign in float64). The compensated sum gets the mean:
    x̂ within 1e-2 relative of the exact value, with its sign, for every ordinary element."""
    row = torch.tensor([1e30, 1e4, -1e30, -1e4, 1000.0, -4.1, 20.0, 7.5] * 8).reshape(1, 64)
    row[0, 7::8] = -1e4  # the ordinary values sum to -8e4: a mean of -1250, far from 0
    with torch.no_grad():
        y = opslib.layer_norm(row, [64], None, None, 1e-4).double()
    exact_row = [float(v) for v in row[0].double()]
    mean = math.fsum(exact_row) / 64
    var = math.fsum((v - mean) ** 2 for v in exact_row) / 64
    exact = (row.double() - mean) / math.sqrt(var + 1e-4)
    ordinary = row.abs() < 1e20
    assert torch.equal(torch.sign(y[ordinary]), torch.sign(exact[ordinary]))
    torch.testing.assert_close(y[ordinary], exact[ordinary], rtol=1e-2, atol=0)
