"""vmap (batched, no per-sample fallback), autocast (as native), and the upstream limits of
torch.library custom ops, pinned so that a PyTorch fix is noticed."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import assert_close_named, op_params

import opslib
from opslib.testing.opinfo import leaves, requiring_grad
from opslib.testing.opinfos import OP_TABLE

B = 5
ROWS = 3  # rows of each op's batch inputs in the vmap tests


def _loop(fn, in_dims, args):
    """The reference for vmap: a Python loop over the batch dimension."""
    outs = []
    for b in range(B):
        sliced = [a if d is None else a.select(d, b) for a, d in zip(args, in_dims, strict=True)]
        outs.append(fn(*sliced))
    return torch.stack(outs)


def _batched(info, args: tuple, in_dims: tuple) -> list:
    """B independent draws of the op's batch inputs, each argument with an in_dim stacked along
    it, the others as given: each slice is a valid call of the op, since the op table's own
    inputs keep every argument in its domain (positive class weights, class-index targets).
    Generic random values would not: a randn class weight makes a weighted mean divide by a
    sum of mixed signs, so float32 rounding is amplified without bound, and vmap and the loop
    (which round differently) disagreed beyond the tolerance on some draws and CPUs (11 of 200
    seeds with ATEN_CPU_CAPABILITY=avx2)."""
    draws = [info.batch_inputs(ROWS, "cpu", torch.float32) for _ in range(B)]
    return [
        a if d is None else torch.stack([draw[i] for draw in draws], dim=d)
        for i, (a, d) in enumerate(zip(args, in_dims, strict=True))
    ]


def vmap_cases(table=OP_TABLE) -> list:
    """For every op: every tensor argument batched at dim 0; the first batched alone at its
    last dim; and, for ops of several tensors, each one batched alone (a per-sample weight,
    bias or slope). Non-tensor arguments are never batched."""
    cases = []
    for info in table:
        args = info.batch_inputs(ROWS, "cpu", torch.float32)
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        plans = {"all-0": dict.fromkeys(tensors, 0), "first-last": {tensors[0]: args[0].dim()}}
        if len(tensors) > 1:
            plans.update({f"only-{i}": {i: 0} for i in tensors})
        for plan_name, plan in plans.items():
            in_dims = tuple(plan.get(i) for i in range(len(args)))
            cases.append(pytest.param(info, args, in_dims, id=f"{info.name}-{plan_name}"))
    return cases


@pytest.mark.parametrize("info,args,in_dims", vmap_cases())
def test_vmap_matches_a_python_loop_without_fallback(info, args, in_dims):
    torch.manual_seed(0)
    batched = _batched(info, args, in_dims)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the per-sample fallback warns of a performance drop
        out = torch.vmap(info.func, in_dims=in_dims)(*batched)
    assert_close_named(out, _loop(info.func, in_dims, batched), f"vmap {info.name} {in_dims}")


class _CallSpy(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self, op):
        super().__init__()
        self.op, self.shapes = op, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is self.op:
            self.shapes.append(args[0].shape)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("info", op_params())
def test_vmap_runs_the_op_once_on_the_batch_not_per_sample(info):
    """The first tensor batched (the others shared): one call of the op on the whole batch (its
    first argument holds every sample's: B of them in dim 0, or folded into it, as a
    convolution's batch of batches is)."""
    args = info.batch_inputs(ROWS, "cpu", torch.float32)
    in_dims = (0, *([None] * (len(args) - 1)))
    with _CallSpy(info.op) as spy:
        torch.vmap(info.func, in_dims=in_dims)(*_batched(info, args, in_dims))
    assert len(spy.shapes) == 1 and spy.shapes[0].numel() == B * args[0].numel(), (
        f"{info.name}: {spy.shapes}"
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("info", op_params())
def test_autocast_cpu_follows_native(info, dtype):
    """Under CPU autocast the op computes in the dtype native does (linear: the autocast dtype,
    like F.linear; pointwise ops: their input's), and its gradients reach the inputs in the
    dtype native's do."""
    args = leaves(info.batch_inputs(8, "cpu", torch.float32), constant=info.constant_args)
    native_args = leaves(args, constant=info.constant_args)
    with torch.autocast("cpu", dtype=dtype):
        ours, native = info.func(*args), info.reference(*native_args)
    assert ours.dtype == native.dtype, f"{info.name}: {ours.dtype} vs native {native.dtype}"
    assert_close_named(ours, native, f"{info.name} under autocast")
    ours.float().sum().backward()
    native.float().sum().backward()
    for i, (a, b) in enumerate(zip(requiring_grad(args), requiring_grad(native_args), strict=True)):
        assert a.grad.dtype == b.grad.dtype, (
            f"{info.name} grad {i}: {a.grad.dtype} vs {b.grad.dtype}"
        )


# Known upstream limits (docs/guides/limits.md). Each test asserts the *correct* behaviour and is
# expected to fail today; strict=True makes a PyTorch fix show up as an unexpected pass.


def test_forward_mode_make_dual_raises_a_clear_error():
    with fwAD.dual_level():
        dual = fwAD.make_dual(torch.randn(3), torch.ones(3))
        with pytest.raises(NotImplementedError, match=r"customgrad\.square: forward-mode AD"):
            opslib.square(dual)


@pytest.mark.xfail(strict=True, reason="pytorch: torch.func.jvp gives custom ops a zero tangent")
def test_func_jvp_gives_the_true_tangent():
    x = torch.randn(3)
    _, tangent = torch.func.jvp(opslib.square, (x,), (torch.ones(3),))
    assert_close_named(tangent, 2 * x, "jvp of square")


@pytest.mark.xfail(
    strict=True,
    raises=RuntimeError,
    reason="pytorch#168393: functorch needs an autograd.Function with setup_context",
)
def test_func_grad_works():
    x = torch.randn(3)
    grad = torch.func.grad(lambda t: opslib.square(t).sum())(x)
    assert_close_named(grad, 2 * x, "func.grad of square")


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason="pytorch#168393 (as func.grad)")
def test_func_jacrev_works():
    x = torch.randn(3)
    assert_close_named(torch.func.jacrev(opslib.tanh)(x), torch.diag(1 - torch.tanh(x) ** 2), "")


@pytest.mark.xfail(
    strict=True, raises=RuntimeError, reason="aot_autograd does not support double backward"
)
def test_double_backward_through_compiled_region():
    torch._dynamo.reset()
    x = torch.randn(4, requires_grad=True)
    y = torch.compile(opslib.cube, backend="aot_eager", fullgraph=True)(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert_close_named(gg, 6 * x, "second derivative of cube")
