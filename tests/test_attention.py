"""What scaled_dot_product_attention promises beyond matching native (the op table's tests): the
blocks of the torch-op formula and the tiles of the C++ kernels change nothing, neither holds
the scores of every row at once, the saved logsumexp is right and differentiable, fully masked
rows are exact zeros, and the attention module is torch.nn.MultiheadAttention with its
weights."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import LargestTensor

import opslib
from opslib.core import cpu_kernels
from opslib.testing.support import max_error

pytestmark = pytest.mark.ops("scaled_dot_product_attention")

# the module (opslib.ops re-exports the function under the same name)
attention_module = importlib.import_module("opslib.ops.scaled_dot_product_attention")
OP = torch.ops.customgrad.scaled_dot_product_attention.default


def _inputs(lead=(2, 3), rows=9, keys=11, e=4, ev=5, dtype=torch.float64):
    torch.manual_seed(0)
    return [
        torch.randn(*lead, n, d, dtype=dtype, requires_grad=True)
        for n, d in ((rows, e), (keys, e), (keys, ev))
    ]


CALLS = {
    "plain": {},
    "causal": {"is_causal": True},
    "float-mask-by-rows": {"attn_mask": "float-rows"},
    "float-mask-along-keys": {"attn_mask": "float-keys"},
    "bool-mask": {"attn_mask": "bool"},
}


def _mask(kind, rows=9, keys=11):
    gen = torch.Generator().manual_seed(1)
    if kind == "float-rows":
        return torch.randn(rows, keys, dtype=torch.float64, generator=gen).requires_grad_()
    if kind == "float-keys":
        return torch.randn(3, 1, keys, dtype=torch.float64, generator=gen).requires_grad_()
    mask = torch.rand(rows, keys, generator=gen) > 0.5
    mask[4] = False  # a fully masked row
    return mask


def _run(kwargs):
    q, k, v = _inputs()
    kwargs = {**kwargs}
    if "attn_mask" in kwargs:
        kwargs["attn_mask"] = _mask(kwargs["attn_mask"])
    out = opslib.scaled_dot_product_attention(q, k, v, **kwargs)
    wrt = [t for t in (q, k, v, kwargs.get("attn_mask")) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, wrt, torch.randn_like(out))
    return [out, *grads]


@pytest.fixture
def torch_op_path(monkeypatch):
    """Every call takes the torch-op formula (CPU calls without a mask otherwise take the C++
    kernels)."""
    monkeypatch.setattr(attention_module, "_cpu_kernel_takes", lambda *args: False)


@pytest.mark.parametrize("kwargs", CALLS.values(), ids=CALLS.keys())
def test_blocks_of_rows_give_the_result_of_one_block(monkeypatch, torch_op_path, kwargs):
    """The torch-op formula's blocks of 2 rows (an uneven last one: 9 rows) against one block
    of every row."""
    whole = _run(kwargs)
    monkeypatch.setattr(attention_module, "BLOCK_SCORES", 2 * 2 * 3 * 11)
    blocked = _run(kwargs)
    for a, b in zip(blocked, whole, strict=True):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-13)


def _largest_tensor_in_kernels(q, k, v) -> int:
    """The most elements of any tensor the op's forward and backward kernels make, called
    directly (a mode around the op call sees only its inputs and outputs)."""
    q, k, v = q.detach(), k.detach(), v.detach()
    with LargestTensor() as seen:
        out, lse = attention_module._attention_kernel(q, k, v, None, 0.0, True, None, False)
        attention_module._grad_kernel(
            torch.randn_like(out), None, q, k, v, out, lse, None, True, None, False, False
        )
    return seen.numel


def test_backward_never_holds_the_scores_of_every_row(monkeypatch, torch_op_path):
    """In the torch-op formula, with blocks of at most 4096 scores, no tensor of the forward or
    backward kernels is larger than one block (or q, of 4096 elements too), where one block of
    every row makes [1, 2, 256, 256] (131072, the same measurement shows) as native's math
    attention does; and what is saved for backward is q, k, v, the output and the per-row
    lse, nothing [L, S]."""
    q, k, v = (torch.randn(1, 2, 256, 8, requires_grad=True) for _ in range(3))
    assert _largest_tensor_in_kernels(q, k, v) == 2 * 256 * 256
    monkeypatch.setattr(attention_module, "BLOCK_SCORES", 4096)
    assert _largest_tensor_in_kernels(q, k, v) <= 4096
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        opslib.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert sum(saved) == 4 * q.numel() + 2 * 256, saved


needs_cpp_kernels = pytest.mark.skipif(
    not cpu_kernels.is_loaded(), reason="opslib's C++ CPU kernels are not built here"
)

# (lead dims of q, of k and v, rows L, keys S, is_causal, enable_gqa)
CPP_CALLS = {
    "plain": ((2, 3), (2, 3), 9, 11, False, False),
    "causal-L<S": ((2, 3), (2, 3), 9, 11, True, False),
    "causal-L>S": ((3,), (3,), 13, 5, True, False),
    "gqa-causal": ((2, 6), (2, 2), 10, 10, True, True),
    "no-head-dim": ((), (), 7, 4, False, False),
    "one-key": ((2,), (2,), 5, 1, True, False),
}


# (forward tile, backward tile): query rows x keys; the last, the defaults: one tile per head
TILES = [((2, 3), (3, 2)), ((3, 64), (2, 5)), ((4, 8), (4, 3)), ((256, 1024), (128, 512))]


@needs_cpp_kernels
@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("call", CPP_CALLS.values(), ids=CPP_CALLS.keys())
def test_cpp_kernel_tiles_give_the_torch_op_formula(monkeypatch, call, tiles):
    """The C++ kernels (tiles of query rows x keys, uneven last ones, causal tiles cut
    at the diagonal, grouped-query heads) against the torch-op formula in float64, values and
    every gradient, the lse's included; and they are the path these calls take."""
    q_lead, kv_lead, rows, keys, is_causal, enable_gqa = call
    torch.manual_seed(0)
    q = torch.randn(*q_lead, rows, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*kv_lead, keys, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(*kv_lead, keys, 3, dtype=torch.float64, requires_grad=True)

    def run():
        out, lse = OP(q, k, v, None, 0.0, is_causal, 0.6, enable_gqa)
        grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
        grads = torch.autograd.grad((out, lse), (q, k, v), (grad_out, grad_lse))
        return [out, lse, *grads]

    taken = []
    real_takes = attention_module._cpu_kernel_takes
    monkeypatch.setattr(
        attention_module, "_cpu_kernel_takes", lambda *a: taken.append(real_takes(*a)) or taken[-1]
    )
    monkeypatch.setattr(attention_module, "CPP_FORWARD_TILE", tiles[0])
    monkeypatch.setattr(attention_module, "CPP_BACKWARD_TILE", tiles[1])
    torch.manual_seed(1)
    by_cpp = run()
    assert taken == [True, True]  # forward and backward
    monkeypatch.setattr(attention_module, "_cpu_kernel_takes", lambda *args: False)
    torch.manual_seed(1)
    by_torch_ops = run()
    for a, b in zip(by_cpp, by_torch_ops, strict=True):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)


def _assert_float32_error_at_most_twice_natives(q, k, v, grad_out, is_causal: bool) -> None:
    """opslib's float32 output and dq, dk, dv (grouped-query attention) are within twice
    native's error against float64, plus float32's epsilon times the largest value."""

    def outputs(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, is_causal=is_causal, enable_gqa=True)
        return [out, *torch.autograd.grad(out, leaves, grad_out.to(dtype))]

    exact = outputs(F.scaled_dot_product_attention, torch.float64)
    native = outputs(F.scaled_dot_product_attention, torch.float32)
    ours = outputs(opslib.scaled_dot_product_attention, torch.float32)
    eps = torch.finfo(torch.float32).eps
    for name, a, n, e in zip(["out", "dq", "dk", "dv"], ours, native, exact, strict=True):
        err, native_err = max_error(a, e), max_error(n, e)
        assert err <= 2 * native_err + eps * e.abs().max().item(), (name, err, native_err)


@needs_cpp_kernels
@pytest.mark.parametrize("sharpness", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_cpp_kernels_float32_error_at_most_twice_native(monkeypatch, is_causal, sharpness):
    """float32 through the C++ kernels, over several tiles of rows and keys (32 x 64 forward,
    48 x 32 backward, for 200 queries and 300 keys; sharpness 10 makes rows nearly one-hot,
    where D = rowsum(dO ⊙ O) loses most to rounding): the error of the output and of every
    gradient against float64 is at most twice native's (F.scaled_dot_product_attention: its CPU
    flash kernel) plus float32's epsilon times the largest value."""
    monkeypatch.setattr(attention_module, "CPP_FORWARD_TILE", (32, 64))
    monkeypatch.setattr(attention_module, "CPP_BACKWARD_TILE", (48, 32))
    torch.manual_seed(0)
    q = torch.randn(2, 4, 200, 32) * sharpness
    k, v = torch.randn(2, 2, 300, 32), torch.randn(2, 2, 300, 16)
    grad_out = torch.randn(2, 4, 200, 16)
    _assert_float32_error_at_most_twice_natives(q, k, v, grad_out, is_causal)


@needs_cpp_kernels
def test_cpp_kernels_output_and_dv_error_at_scores_of_1e4_is_natives(monkeypatch):
    """Scores of 1e3-2e4 (q, k of std 60, dim 8), rows over several tiles, 12 calls: opslib's
    float32 output and dV are more than twice as far from float64 as native's in at most 4
    calls each (native's are in 1-3), and the log-sum-exp the backward reads is float64 (with a
    float32 lse, e^(s - lse) carried lse's rounding, up to 5e-4, into every p: dV was more than
    2x native's error in 35 of 60 such calls, up to 160x).

    Not bounded here, a known gap (docs/guides/limits.md): dQ and dK of nearly one-hot rows over
    several tiles, where D = rowsum(dO ⊙ O) and the tile's dP round differently (dQ in 15, dK
    in 14 of 40 such calls more than 2x native's error, native's in 8: docs/guides/limits.md);
    rows within one tile re-sum D and are even with native."""
    monkeypatch.setattr(attention_module, "CPP_FORWARD_TILE", (32, 64))
    monkeypatch.setattr(attention_module, "CPP_BACKWARD_TILE", (32, 64))
    gen = torch.Generator().manual_seed(1)
    worse = dict.fromkeys(["out", "dq", "dk", "dv"], 0)
    for call in range(12):
        q = torch.randn(2, 70, 8, generator=gen) * 60
        k, v = torch.randn(2, 150, 8, generator=gen) * 60, torch.randn(2, 150, 4, generator=gen)
        grad_out = torch.randn(2, 70, 4, generator=gen)

        def outputs(fn, dtype, q=q, k=k, v=v, grad_out=grad_out, call=call):
            leaves = [t.to(dtype).clone().requires_grad_() for t in (q, k, v)]
            out = fn(*leaves, is_causal=call % 3 == 0)
            return [out, *torch.autograd.grad(out, leaves, grad_out.to(dtype))]

        exact = outputs(F.scaled_dot_product_attention, torch.float64)
        native = outputs(F.scaled_dot_product_attention, torch.float32)
        ours = outputs(opslib.scaled_dot_product_attention, torch.float32)
        for name, a, n, e in zip(worse, ours, native, exact, strict=True):
            worse[name] += max_error(a, e) > 2 * max_error(n, e)
        with torch.no_grad():
            _, lse = OP(q, k, v, None, 0.0, call % 3 == 0, None, False)
        scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(8)
        if call % 3 == 0:
            scores = scores.masked_fill(torch.ones(70, 150, dtype=torch.bool).triu(1), -math.inf)
        # exact for the float32-rounded scores: their rounding (ulp(2e4) = 2e-3) is the input's
        assert lse.dtype == torch.float64
        torch.testing.assert_close(lse, torch.logsumexp(scores, -1), atol=5e-3, rtol=0)
    assert worse["out"] <= 4 and worse["dv"] <= 4, worse


@needs_cpp_kernels
@pytest.mark.parametrize("sharpness", [1.0, 10.0, 30.0])
def test_cpp_kernels_of_one_tile_float32_error_at_most_twice_native(sharpness):
    """A decoder's short causal grouped-query heads (L = S = 128, the tiny LM's shape), one
    tile each at the default tiles: float32 output and gradients within twice native's error
    against float64 (plus float32's epsilon times the largest value)."""
    torch.manual_seed(0)
    q = (torch.randn(2, 128, 4, 64) * sharpness).transpose(1, 2)  # HF's transposed views
    k, v = torch.randn(2, 128, 2, 64).transpose(1, 2), torch.randn(2, 128, 2, 64).transpose(1, 2)
    grad_out = torch.randn(2, 4, 128, 64)
    with torch.no_grad():
        assert attention_module._cpu_kernel_takes(q, k, v, None, 2)
    _assert_float32_error_at_most_twice_natives(q, k, v, grad_out, is_causal=True)


@needs_cpp_kernels
def test_cpp_kernels_take_calls_without_a_mask_and_leave_the_rest():
    """Which calls the C++ kernels compute: float32/float64 CPU calls without a mask and with
    finite inputs, heads of one tile included; a mask, half precision, broadcast heads or an
    inf go to the torch-op formula (an inf score must make nan as native's softmax does:
    checked against native)."""
    q, k, v = _inputs(dtype=torch.float32)  # 9 rows, 11 keys: one tile
    with torch.no_grad():
        assert attention_module._cpu_kernel_takes(q, k, v, None, 1)
        assert not attention_module._cpu_kernel_takes(q, k, v, torch.ones(9, 11) > 0, 1)
        assert not attention_module._cpu_kernel_takes(q.half(), k.half(), v.half(), None, 1)
        assert not attention_module._cpu_kernel_takes(q, k[:, :1], v[:, :1], None, 1)
        k_inf = k.detach().clone()
        k_inf[0, 0, 2, 1] = math.inf
        assert not attention_module._cpu_kernel_takes(q, k_inf, v, None, 1)
        torch.testing.assert_close(
            opslib.scaled_dot_product_attention(q, k_inf, v),
            F.scaled_dot_product_attention(q, k_inf, v),
            equal_nan=True,
        )
    assert not attention_module._cpu_kernel_takes(q, k, v, None, 1)  # grad mode: autograd's


@needs_cpp_kernels
def test_cpp_kernels_peak_memory_is_the_outputs_and_gradients_not_the_scores():
    """One forward + backward through the C++ kernels at L = S = 2048, 8 heads, dim 64,
    measured as benchmarks/peak_memory.py does (a fresh process, the peak resident memory above
    the inputs): the gradients of q, k, v, the output and its gradient, and a few MiB of tiles,
    where one head's [L, S] scores alone are 16 MiB (native's math attention: ~400 MiB)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import peak_memory

    peak = peak_memory.measure("scaled_dot_product_attention", "opslib", 2048, "cpu")
    tensor = 8 * 2048 * 64 * 4  # q, k, v, out, each gradient: 4 MiB
    assert peak["peak_bytes"] <= 5 * tensor + (6 << 20), peak


def test_saved_logsumexp_is_the_rows_and_its_gradient_is_right():
    """The op's second output is log Σ_j e^(s_ij) per row (float64, against torch.logsumexp of
    the masked scores), and gradients through it (the p·g term of dS) pass gradcheck."""
    q, k, v = _inputs(rows=5, keys=7)
    out, lse = OP(q, k, v, None, 0.0, True, 0.7, False)
    scores = (q @ k.transpose(-2, -1)) * 0.7
    scores = scores.masked_fill(torch.ones(5, 7, dtype=torch.bool).triu(1), -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), atol=1e-14, rtol=1e-14)

    def both(q, k, v):
        out, lse = OP(q, k, v, None, 0.0, True, 0.7, False)
        return out, lse

    assert torch.autograd.gradcheck(both, (q, k, v))
    assert torch.autograd.gradgradcheck(both, (q, k, v))


def test_fully_masked_rows_are_exactly_zero_with_zero_gradients():
    """Native 2.13 gives 0 for a row that attends to nothing (FACTS.md), and no gradient flows
    from it: exactly, not nan."""
    q, k, v = _inputs(dtype=torch.float32)
    mask = torch.ones(9, 11, dtype=torch.bool)
    mask[3] = False
    out = opslib.scaled_dot_product_attention(q, k, v, mask)
    assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
    grad_out = torch.zeros_like(out)
    grad_out[:, :, 3] = 1.0  # only the masked row's output matters
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))
    native = F.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, native)


# ---- the module ----

MODULE_CALLS = [
    "no-mask", "causal", "key-padding", "bool-mask-and-padding", "float-mask",
    "causal-hint-with-mask", "causal-hint-with-mask-and-padding",
]  # fmt: skip


def _module_call(name: str, seq: int):
    causal = torch.nn.Transformer.generate_square_subsequent_mask(seq)
    padding = torch.zeros(3, seq, dtype=torch.bool)
    padding[1, seq - 2 :] = True
    bool_mask = torch.rand(seq, seq, generator=torch.Generator().manual_seed(2)) > 0.7
    bool_mask.fill_diagonal_(False)
    ours = {
        "no-mask": {},
        "causal": {"is_causal": True},
        "key-padding": {"key_padding_mask": padding},
        "bool-mask-and-padding": {"attn_mask": bool_mask, "key_padding_mask": padding},
        "float-mask": {"attn_mask": causal},
        # torch's convention (ported code): is_causal=True is a hint that attn_mask is causal
        "causal-hint-with-mask": {"attn_mask": causal, "is_causal": True},
        "causal-hint-with-mask-and-padding": {
            "attn_mask": causal,
            "key_padding_mask": padding,
            "is_causal": True,
        },
    }[name]
    native = {**ours}
    if "attn_mask" not in native and native.pop("is_causal", False):
        native["attn_mask"] = causal  # is_causal alone: torch's module needs the mask given
    return ours, native


@pytest.mark.parametrize("call", MODULE_CALLS)
def test_multihead_self_attention_is_torch_multihead_attention(call):
    """The weights of torch.nn.MultiheadAttention(batch_first=True) load unchanged; outputs and
    every parameter's gradient match it (float32)."""
    torch.manual_seed(0)
    native = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ours = opslib.nn.MultiheadSelfAttention(16, 4)
    ours.load_state_dict(native.state_dict())
    assert sorted(ours.state_dict()) == sorted(native.state_dict())
    x = torch.randn(3, 7, 16)
    ours_kwargs, native_kwargs = _module_call(call, 7)
    y = ours(x, **ours_kwargs)
    y_ref = native(x, x, x, need_weights=False, **native_kwargs)[0]
    torch.testing.assert_close(y, y_ref, atol=2e-6, rtol=1e-5)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, list(ours.parameters()), grad)
    want = torch.autograd.grad(y_ref, list(native.parameters()), grad)
    for name, g, w in zip(dict(ours.named_parameters()), got, want, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, msg=name)


def test_multihead_self_attention_compiles_without_graph_breaks_or_recompiles():
    """fullgraph=True with dynamic batch sizes: other batch sizes run the first graph (dynamo
    restarts its first analysis once for the op's float argument, FACTS.md; that is one
    graph), and the results are eager's."""
    torch._dynamo.reset()
    module = opslib.nn.MultiheadSelfAttention(16, 4)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=True)
    for i, batch in enumerate((3, 5, 9)):
        x = torch.randn(batch, 11, 16, requires_grad=True)
        with torch.compiler.set_stance("fail_on_recompile" if i else "default"):
            y = compiled(x, is_causal=True)
            (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y, module(x, is_causal=True))
        torch.testing.assert_close(grad, torch.autograd.grad(module(x, is_causal=True).sum(), x)[0])


def test_multihead_self_attention_refuses_heads_that_do_not_divide():
    with pytest.raises(ValueError, match=r"MultiheadSelfAttention: embed_dim 10 .* num_heads 4"):
        opslib.nn.MultiheadSelfAttention(10, 4)


@pytest.mark.parametrize(
    "shapes,gqa",
    [
        ([(1, 3, 3), (1, 1, 3), (1, 1, 1, 2), (3, 1)], False),
        ([(2, 4, 3), (1, 2, 5, 3), (2, 5, 4), None], False),
        ([(1, 2, 4, 3), (2, 5, 3), (2, 5, 4), None], False),
        ([(2, 4, 7, 12), (2, 2, 9, 12), (1, 2, 2, 9, 11), (7, 9)], True),
    ],
    ids=["v-rank-more-float-mask", "k-rank-more", "q-rank-more", "gqa-v-rank"],
)
def test_q_k_v_of_different_ranks_broadcast_as_native(shapes, gqa):
    """Leading dims of q, k, v and the mask broadcast whatever their ranks, as native's (found
    by tests/fuzz.py: with v of one dim more, the backward failed in ATen's softmax backward,
    "[1, 1, 3, 1] does not equal [1, 3, 1]"): values and every gradient in float64."""
    torch.manual_seed(0)
    tensors = [None if s is None else torch.randn(s, dtype=torch.float64, requires_grad=True)
               for s in shapes]  # fmt: skip
    given = [t for t in tensors if t is not None]
    y = opslib.scaled_dot_product_attention(*tensors, enable_gqa=gqa)
    expected = F.scaled_dot_product_attention(*tensors, enable_gqa=gqa)
    torch.testing.assert_close(y, expected)
    grad = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, given, grad),
                         torch.autograd.grad(expected, given, grad), strict=True):  # fmt: skip
        torch.testing.assert_close(got, want)
