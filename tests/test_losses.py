"""cross_entropy and linear_cross_entropy beyond the op table's families: the chunked loop over
many chunks, the forward-computed gradients under opcheck, the logits never held, the modules,
targets out of range under inductor, and native's edge cases (all targets ignored, int32)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_OPCHECK_TESTS, LargestTensor, assert_close_named

import opslib
from opslib.core import cpu_kernels
from opslib.ops.linear_cross_entropy import native_linear_cross_entropy
from opslib.testing.opinfos import OPS_BY_NAME

pytestmark = pytest.mark.ops("cross_entropy", "linear_cross_entropy")

LCE = sys.modules["opslib.ops.linear_cross_entropy"]


def _leaf(*shape, scale=1.0, dtype=torch.float64):
    return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_()


def _lce_case(rows=37, hidden=6, classes=11, bias=True, dtype=torch.float64):
    x, w = _leaf(rows, hidden, dtype=dtype), _leaf(classes, hidden, scale=0.5, dtype=dtype)
    b = _leaf(classes, dtype=dtype) if bias else None
    target = torch.randint(0, classes, (rows,))
    target[::5] = -100
    return x, w, target, b


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows (33 logits of 11 classes): 37 rows make 13 chunks, the last partial."""
    monkeypatch.setattr(LCE, "CHUNK_ELEMENTS", 33)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("bias", [True, False])
def test_many_chunks_give_native_loss_and_gradients(small_chunks, reduction, smoothing, bias):
    x, w, target, b = _lce_case(bias=bias)
    args = (x, w, target, b, -100, reduction, smoothing)
    ref = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and
           a.is_floating_point() else a for a in args]  # fmt: skip
    y, y_ref = opslib.linear_cross_entropy(*args), native_linear_cross_entropy(*ref)
    assert_close_named(y, y_ref, f"loss {reduction}", atol=1e-12, rtol=1e-12)
    g = torch.randn_like(y_ref)
    wrt = [a for a in (x, w, b) if a is not None]
    wrt_ref = [a for a in (ref[0], ref[1], ref[3]) if a is not None]
    for got, want in zip(torch.autograd.grad(y, wrt, g), torch.autograd.grad(y_ref, wrt_ref, g),
                         strict=True):  # fmt: skip
        assert_close_named(got, want, f"gradient {reduction}", atol=1e-12, rtol=1e-10)


def test_many_chunks_gradcheck_and_gradgradcheck(small_chunks):
    x, w, target, b = _lce_case(rows=8)
    for reduction in ("mean", "none"):

        def f(x, w, b, reduction=reduction):
            return opslib.linear_cross_entropy(x, w, target, b, -100, reduction, 0.1)

        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("sample", ["rows", "smoothing", "3-d-x", "no-bias", "x-only-grad"])
def test_opcheck_with_the_gradients_computed_in_the_forward(sample):
    """The op table's samples call the op without ``grad_*_in_forward`` (the backward then
    recomputes); here the fused path, every check."""
    info = OPS_BY_NAME["linear_cross_entropy"]
    samples = {s.name: s for s in info.sample_inputs("cpu", torch.float32, True)}
    args = samples[sample].args
    wants = [isinstance(a, torch.Tensor) and a.requires_grad for a in (args[0], args[1], args[3])]
    result = torch.library.opcheck(info.op, (*args, *wants), test_utils=ALL_OPCHECK_TESTS)
    assert result == dict.fromkeys(ALL_OPCHECK_TESTS, "SUCCESS")


def _transposed_head(bias: bool):
    """A weight that is the transpose of a [H, V] tensor (a tied or transposed LM head)."""
    torch.manual_seed(0)
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(16, 37).t().requires_grad_()
    b = torch.randn(74)[::2].requires_grad_() if bias else None
    return x, w, torch.randint(0, 37, (8,)), b


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "strided-bias"])
def test_transposed_weight_fake_matches_the_kernel(bias):
    """The forward's weight and bias gradients are contiguous in the kernel and in the fake
    (the fake kept a transposed weight's strides: opcheck's test_faketensor and torch.compile
    failed, "incorrect fake (aka meta) kernel"); compiled gradients equal eager ones."""
    x, w, target, b = _transposed_head(bias)
    wants = (True, True, bias)
    result = torch.library.opcheck(
        torch.ops.customgrad.linear_cross_entropy.default,
        (x, w, target, b, -100, "mean", 0.0, *wants),
        test_utils=ALL_OPCHECK_TESTS,
    )
    assert result == dict.fromkeys(ALL_OPCHECK_TESTS, "SUCCESS")
    params = [t for t in (x, w, b) if t is not None]
    eager = torch.autograd.grad(opslib.linear_cross_entropy(x, w, target, b), params)
    compiled_fn = torch.compile(opslib.linear_cross_entropy, fullgraph=True, backend="aot_eager")
    compiled = torch.autograd.grad(compiled_fn(x, w, target, b), params)
    for name, got, want in zip(["x", "weight", "bias"], compiled, eager, strict=False):
        assert_close_named(got, want, f"grad {name}")


def test_jit_trace_of_a_model_with_linear_cross_entropy():
    """torch.jit.trace records the op (its schema has no ``bool[]``, which tracing refuses) and
    the traced model gives eager's loss and gradients, with and without grad mode (the tracer
    re-runs the model to check it: no grad-mode choice is baked into the graph)."""

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(37, 16))

        def forward(self, x, target):
            return opslib.linear_cross_entropy(x, self.weight, target)

    x, _, target, _ = _transposed_head(False)
    model = Head()
    traced = torch.jit.trace(model, (x, target))
    loss = traced(x, target)
    grads = torch.autograd.grad(loss, [x, model.weight])
    eager = model(x, target)
    expected = torch.autograd.grad(eager, [x, model.weight])
    assert_close_named(loss, eager, "loss")
    for name, got, want in zip(["x", "weight"], grads, expected, strict=True):
        assert_close_named(got, want, f"grad {name}")
    with torch.no_grad():
        assert_close_named(traced(x, target), eager.detach(), "loss under no_grad")


def _largest_tensor_in_kernels(x, w, target, b, reduction: str) -> int:
    """The largest tensor the op's kernels make: the forward (gradients computed in it) and the
    backward's recomputation of the chunks (reduction "none"), called directly. A mode around
    the op call itself sees only the op's inputs and outputs, not what its kernel makes."""
    x, w, b = x.detach(), w.detach(), b.detach()
    with LargestTensor() as seen:
        LCE._linear_cross_entropy_kernel(x, w, target, b, -100, reduction, 0.1, *[True] * 3)
        scale = torch.ones(x.shape[0], dtype=torch.float64)
        LCE._chunked_pass(x, w, b, target, -100, 0.1, scale, (True, True, True))
    return seen.numel


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_neither_forward_nor_backward_makes_the_logits(small_chunks, reduction):
    """Every tensor the kernels make is at most a chunk of logits or a parameter's size: never
    [rows, classes] (the composite makes several); with one chunk of every row, the same
    measurement does see the [rows, classes] logits."""
    x, w, target, b = _lce_case(rows=64, hidden=4, classes=40, dtype=torch.float32)
    ours = _largest_tensor_in_kernels(x, w, target, b, reduction)
    with LargestTensor() as native:
        loss = native_linear_cross_entropy(x, w, target, b, -100, reduction, 0.1)
        torch.autograd.grad(loss, (x, w, b), torch.ones_like(loss))
    assert native.numel >= 64 * 40
    assert ours <= max(x.numel(), w.numel(), 40 * 3), ours
    LCE.CHUNK_ELEMENTS = 1 << 24  # (monkeypatched: restored after the test)
    assert _largest_tensor_in_kernels(x, w, target, b, reduction) >= 64 * 40


def test_forward_computes_gradients_only_when_they_are_needed():
    x, w, target, b = _lce_case(dtype=torch.float32)
    with torch.no_grad():
        out = LCE._linear_cross_entropy(x, w, target, b)
    assert [t.numel() for t in out[1:]] == [0, 0, 0]
    out = LCE._linear_cross_entropy(x, w, target, b, -100, "mean", 0.0, True, True, True)
    assert [t.shape for t in out[1:]] == [x.shape, w.shape, b.shape]
    assert not any(t.requires_grad for t in out[1:])  # non-differentiable extra outputs


def test_double_backward_through_the_fused_path():
    x, w, target, b = _lce_case(rows=6)
    loss = opslib.linear_cross_entropy(x, w, target, b)
    gx, gw = torch.autograd.grad(loss, (x, w), create_graph=True)
    ref = [a.detach().clone().requires_grad_() for a in (x, w, b)]
    loss_ref = native_linear_cross_entropy(ref[0], ref[1], target, ref[2])
    gx_ref, gw_ref = torch.autograd.grad(loss_ref, ref[:2], create_graph=True)
    second = torch.autograd.grad((gx.square().sum() + gw.sum()), (x, w, b))
    second_ref = torch.autograd.grad((gx_ref.square().sum() + gw_ref.sum()), ref)
    for got, want in zip(second, second_ref, strict=True):
        assert_close_named(got, want, "second derivative", atol=1e-12, rtol=1e-10)


def test_all_targets_ignored_gives_natives_nan_mean_and_zero_gradients():
    x = torch.randn(3, 5, requires_grad=True)
    target = torch.full((3,), -100)
    loss = opslib.cross_entropy(x, target)
    native = F.cross_entropy(x, target)
    assert torch.isnan(loss) and torch.isnan(native)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8], ids=str)
def test_every_integer_target_dtype_is_class_indices_too(dtype):
    """A deliberate superset of native (documented in opslib/ops/cross_entropy.py): native
    takes int64 and uint8 targets only; the op gives native's int64 loss and gradient for
    every integer dtype, for cross_entropy and linear_cross_entropy. bool targets are refused
    by both."""
    x, target = torch.randn(6, 5, requires_grad=True), torch.randint(0, 5, (6,))
    loss = opslib.cross_entropy(x, target.to(dtype))
    expected = F.cross_entropy(x, target)
    assert_close_named(loss, expected, f"{dtype} targets")
    (grad,) = torch.autograd.grad(loss, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert_close_named(grad, expected_grad, f"{dtype} targets, gradient")
    w = torch.randn(5, 3)
    assert_close_named(
        opslib.linear_cross_entropy(x[:, :3], w, target.to(dtype)),
        F.cross_entropy(x[:, :3] @ w.t(), target),
        f"{dtype} targets, linear_cross_entropy",
    )
    with pytest.raises(TypeError, match=r"customgrad\.cross_entropy: target must be an integer"):
        opslib.cross_entropy(x, target.bool())


def test_out_of_range_target_is_refused_under_inductor_too():
    torch._dynamo.reset()
    compiled = torch.compile(opslib.cross_entropy, fullgraph=True)
    x = torch.randn(4, 5)
    compiled(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(IndexError, match=r"customgrad\.cross_entropy: target 9 is out of range"):
        compiled(x, torch.tensor([0, 9, 2, 3]))


def test_cross_entropy_loss_module_is_torch_nn_cross_entropy():
    torch.manual_seed(0)
    weight = torch.rand(5) + 0.5
    x, target = torch.randn(7, 5, requires_grad=True), torch.randint(0, 5, (7,))
    target[2] = 3
    kwargs = {"weight": weight, "ignore_index": 3, "reduction": "sum", "label_smoothing": 0.1}
    ours, native = opslib.nn.CrossEntropyLoss(**kwargs), torch.nn.CrossEntropyLoss(**kwargs)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == native.state_dict().keys()
    assert_close_named(ours(x, target), native(x, target), "CrossEntropyLoss")


def test_linear_cross_entropy_loss_loads_a_linear_head():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13)
    loss_fn = opslib.nn.LinearCrossEntropyLoss(8, 13, label_smoothing=0.05)
    loss_fn.load_state_dict(head.state_dict())
    x, target = torch.randn(2, 5, 8), torch.randint(0, 13, (2, 5))
    expected = F.cross_entropy(head(x).reshape(-1, 13), target.reshape(-1), label_smoothing=0.05)
    assert_close_named(loss_fn(x, target), expected, "LinearCrossEntropyLoss")
    assert_close_named(loss_fn.logits(x), head(x), "its logits")


def test_mlp_classifier_fused_loss_matches_its_torch_nn_twin():
    from opslib.models import MLPClassifier

    torch.manual_seed(0)
    ours, native = MLPClassifier(), MLPClassifier(native=True)
    native.load_state_dict(ours.state_dict())
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    loss, loss_ref = ours.loss(x, y), native.loss(x, y)
    assert_close_named(loss, loss_ref, "model loss", atol=1e-6, rtol=1e-5)
    loss.backward()
    loss_ref.backward()
    for (name, p), p_ref in zip(ours.named_parameters(), native.parameters(), strict=True):
        assert_close_named(p.grad, p_ref.grad, f"grad {name}", atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "sample", ["weighted-mean", "none", "smoothing", "spatial", "one-sample-none", "transposed"]
)
def test_cross_entropy_backward_op_passes_opcheck_gradcheck_and_gradgradcheck(sample):
    """The first-order backward is an op of its own (so that compiled backwards call its C++
    kernel); it meets the op contract's registration and math checks too."""
    info = OPS_BY_NAME["cross_entropy"]
    samples = {s.name: s for s in info.sample_inputs("cpu", torch.float64, True)}
    x, target, weight, ignore_index, reduction, smoothing = samples[sample].args
    y = info.func(x, target, weight, ignore_index, reduction, smoothing)
    grad = torch.randn(y.shape, dtype=torch.float64, requires_grad=True)
    rest = (target, weight, ignore_index, reduction, smoothing)
    op = torch.ops.customgrad.cross_entropy_backward
    result = torch.library.opcheck(op.default, (grad, x, *rest), test_utils=ALL_OPCHECK_TESTS)
    assert result == dict.fromkeys(ALL_OPCHECK_TESTS, "SUCCESS")
    x = x.detach().contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda g, x: op(g, x, *rest), (grad, x))
    assert torch.autograd.gradgradcheck(lambda g, x: op(g, x, *rest), (grad, x))


def test_compiled_cross_entropy_backward_calls_the_backward_op():
    """Under torch.compile the backward graph keeps customgrad.cross_entropy_backward (its C++
    kernel runs) instead of inductor compiling the traced formula."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    x, target = torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))
    compiled = torch.compile(opslib.cross_entropy, fullgraph=True)

    def run():
        loss = compiled(x, target)
        return torch.autograd.grad(loss, x)[0]

    grad, code = run_and_get_code(run)
    assert any("customgrad.cross_entropy_backward" in c for c in code), code
    assert_close_named(grad, torch.autograd.grad(F.cross_entropy(x, target), x)[0], "grad")


def test_backward_twice_with_retain_graph_gives_the_same_gradients():
    """The forward's gradient buffers are consumed by the first backward (scaled in place and
    handed over); a second backward of the retained graph recomputes them."""
    x, w, target, b = _lce_case(dtype=torch.float32)
    loss = opslib.linear_cross_entropy(x, w, target, b)
    first = torch.autograd.grad(loss * 3, (x, w, b), retain_graph=True)
    second = torch.autograd.grad(loss * 3, (x, w, b), retain_graph=True)
    third = torch.autograd.grad(loss, (x, w, b))
    ref = [a.detach().clone().requires_grad_() for a in (x, w, b)]
    expected = torch.autograd.grad(native_linear_cross_entropy(ref[0], ref[1], target, ref[2]), ref)
    for got1, got2, got3, want in zip(first, second, third, expected, strict=True):
        assert_close_named(got1, 3 * want, "first backward")
        assert_close_named(got2, 3 * want, "second backward")
        assert_close_named(got3, want, "third backward")


@pytest.mark.skipif(not cpu_kernels.is_loaded(), reason="opslib's C++ CPU kernels are not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_chunk_kernel_gives_the_loss_and_gradient_kernels_values(dtype, smoothing):
    """linear_cross_entropy's chunks take their losses and dz from one C++ pass
    (cross_entropy_forward_backward_, dz written over the logits): bit for bit what the separate
    loss and gradient kernels give, ignored rows included."""
    from opslib.ops.cross_entropy import row_loss_gradient, row_losses

    torch.manual_seed(0)
    logits = torch.randn(37, 1000, dtype=dtype) * 3
    target = torch.randint(0, 1000, (37,))
    target[::5] = -100
    scale = torch.rand(37, dtype=torch.float64)
    losses = row_losses(logits, target, -100, smoothing)
    grad = row_loss_gradient(scale, logits, target, -100, smoothing)
    overwritten = logits.clone()
    fused = torch.ops.opslib_cpu.cross_entropy_forward_backward_(
        scale, overwritten, target, None, -100, smoothing
    )
    assert torch.equal(fused, losses)
    assert torch.equal(overwritten, grad)
