"""vmap (batched, no per-sample fallback), autocast (as native), and the upstream limits of
torch.library custom ops, pinned so that a PyTorch fix is noticed."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from conftest import assert_close_named, op_params

import opslib

B = 5


def _loop(fn, in_dims, args):
    """The reference for vmap: a Python loop over the batch dimension."""
    outs = []
    for b in range(B):
        sliced = [a if d is None else a.select(d, b) for a, d in zip(args, in_dims, strict=True)]
        outs.append(fn(*sliced))
    return torch.stack(outs)


VMAP_CASES = [
    ("square", (0,), [(B, 3, 4)]),
    ("cube", (1,), [(3, B, 4)]),
    ("exp", (0,), [(B,)]),
    ("relu", (2,), [(3, 4, B)]),
    ("sigmoid", (0,), [(B, 7)]),
    ("tanh", (0,), [(B, 2, 3)]),
    ("linear", (0, None, None), [(B, 4, 3), (6, 3), (6,)]),
    ("linear", (None, 0, None), [(4, 3), (B, 6, 3), (6,)]),
    ("linear", (0, 0, 0), [(B, 4, 3), (B, 6, 3), (B, 1, 6)]),
    ("linear", (None, None, 0), [(4, 3), (6, 3), (B, 4, 6)]),
    ("linear", (1, None, None), [(3, B), (6, 3), None]),
    ("learned_silu", (0, None), [(B, 4, 6), (6,)]),
    ("learned_silu", (0, 0), [(B, 4, 6), (B, 6)]),
    ("learned_silu", (None, 0), [(4, 6), (B, 1)]),
]


@pytest.mark.parametrize(
    "name,in_dims,shapes", VMAP_CASES, ids=[f"{c[0]}-{c[1]}" for c in VMAP_CASES]
)
def test_vmap_matches_a_python_loop_without_fallback(name, in_dims, shapes):
    fn = getattr(opslib, name)
    args = [None if s is None else torch.randn(s) for s in shapes]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the per-sample fallback warns of a performance drop
        batched = torch.vmap(fn, in_dims=in_dims)(*args)
    assert_close_named(batched, _loop(fn, in_dims, args), f"vmap {name} {in_dims}")


def test_vmap_of_pointwise_op_runs_once_not_per_sample():
    calls = []
    handle = torch.ops.customgrad.relu.default  # counted via a dispatch-mode spy

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is handle:
                calls.append(args[0].shape)
            return func(*args, **(kwargs or {}))

    with Spy():
        torch.vmap(opslib.relu)(torch.randn(B, 3))
    assert calls == [torch.Size([B, 3])]


@pytest.mark.parametrize("info", op_params())
def test_autocast_cpu_bfloat16_follows_native(info):
    args = info.batch_inputs(8, "cpu", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, native = info.func(*args), info.reference(*args)
    assert ours.dtype == native.dtype, f"{info.name}: {ours.dtype} vs native {native.dtype}"
    assert_close_named(ours, native, f"{info.name} under autocast")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_linear_computes_in_the_autocast_dtype_like_F_linear(dtype):
    x, w, b = (
        t.requires_grad_()
        for t in opslib.op_table.OPS_BY_NAME["linear"].batch_inputs(8, "cpu", torch.float32)
    )
    with torch.autocast("cpu", dtype=dtype):
        ours = opslib.linear(x, w, b)
        native = F.linear(x, w, b)
    assert ours.dtype == native.dtype == dtype
    assert_close_named(ours, native, "linear under autocast", atol=0, rtol=0)
    ours.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32  # grads to the params


# Known upstream limits (README "Known limits"). Each test asserts the *correct* behaviour and is
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
