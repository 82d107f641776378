"""What scaled_dot_product_attention promises beyond matching native (the op table's tests): the
blocks change nothing, backward never holds the scores of every row at once, the saved
logsumexp is right and differentiable, fully masked rows are exact zeros, and the attention
module is torch.nn.MultiheadAttention with its weights."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LargestTensor

import opslib

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


@pytest.mark.parametrize("kwargs", CALLS.values(), ids=CALLS.keys())
def test_blocks_of_rows_give_the_result_of_one_block(monkeypatch, kwargs):
    """Blocks of 2 rows (an uneven last one: 9 rows) against one block of every row."""
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


def test_backward_never_holds_the_scores_of_every_row(monkeypatch):
    """With blocks of at most 4096 scores, no tensor of the forward or backward kernels is
    larger than one block (or q, of 4096 elements too), where one block of every row makes
    [1, 2, 256, 256] (131072, the same measurement shows) as native's math attention does;
    and what is saved for backward is q, k, v, the output and the per-row lse, nothing
    [L, S]."""
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

MODULE_CALLS = ["no-mask", "causal", "key-padding", "bool-mask-and-padding", "float-mask"]


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
    }[name]
    native = {**ours}
    if native.pop("is_causal", False):
        native["attn_mask"] = causal
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
