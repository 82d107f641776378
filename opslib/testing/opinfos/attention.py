"""The op table's attention ops, scaled_dot_product_attention and rotary_embedding: samples,
reference and bad calls beside each entry.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core import cuda_path
from opslib.ops.rotary_embedding import rotary_embedding, rotate_half
from opslib.ops.scaled_dot_product_attention import (
    scaled_dot_product_attention,
)
from opslib.testing.opinfo import (
    ErrorInput,
    Sample,
)
from opslib.testing.opinfos.common import OpslibOpInfo, TritonPath, _leaf_view, _make, _t

# ---- scaled_dot_product_attention ----


def _native_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      enable_gqa=False) -> Tensor:  # fmt: skip
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
    )


def _attention_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def qkv(lead, rows, keys, e=4, ev=3, kv_lead=None, rg=requires_grad):
        kv_lead = lead if kv_lead is None else kv_lead
        return (
            make((*lead, rows, e), rg),
            make((*kv_lead, keys, e), rg),
            make((*kv_lead, keys, ev), rg),
        )

    def call(name, q, k, v, mask=None, causal=False, scale=None, gqa=False) -> Sample:
        return Sample(name, (q, k, v, mask, 0.0, causal, scale, gqa))

    bool_mask = torch.rand(5, 7, device=device) > 0.4
    bool_mask[:, 0] = True
    bool_mask[2] = False  # a fully masked row: output and gradients 0, as native
    base = torch.randn(2, 5, 3, 4, device=device, dtype=dtype)  # [batch, L, heads, E]
    return [
        call("heads", *qkv((2, 3), 5, 7)),
        call("causal-L<S", *qkv((2, 2), 4, 6), causal=True),
        call("causal-L>S", *qkv((2, 2), 6, 4), causal=True),
        call("bool-mask[L,S]", *qkv((2, 3), 5, 7), mask=bool_mask),
        call("float-mask[H,1,S]", *qkv((2, 3), 5, 7), mask=make((3, 1, 7))),
        call("float-mask[B,H,L,S]", *qkv((2, 3), 5, 7), mask=make((2, 3, 5, 7))),
        call("float-mask-no-grad", *qkv((2,), 5, 7), mask=make((5, 7), rg=False)),
        call("scale", *qkv((2, 3), 5, 7), scale=0.3),
        call("gqa", *qkv((2, 4), 5, 7, kv_lead=(2, 2)), gqa=True),
        call("gqa-causal", *qkv((1, 6), 5, 3, kv_lead=(1, 2)), causal=True, gqa=True),
        call("3-d", *qkv((3,), 5, 7)),
        call("2-d", *qkv((), 5, 7)),
        call("broadcast-batch", make((3, 5, 4)), make((2, 3, 7, 4)), make((2, 3, 7, 3))),
        call("one-query", *qkv((2, 3), 1, 7)),
        call("one-key", *qkv((2, 3), 5, 1)),
        call("no-queries", *qkv((2, 3), 0, 7)),
        call(
            "transposed-[B,L,H,E]",
            _leaf_view(base.transpose(1, 2), requires_grad),
            _leaf_view(base.transpose(1, 2).clone(), requires_grad),
            _leaf_view(base.transpose(1, 2).clone(), requires_grad),
        ),
        call("k-only-grad", *(a if i == 1 else a.detach() for i, a in enumerate(qkv((2,), 5, 7)))),
        call("no-grad", *qkv((2, 3), 5, 7, rg=False)),
    ]


def _attention_batch(rows: int, device, dtype) -> tuple:
    """q [rows, 10, 7, 12], k [rows, 5, 9, 12], v [rows, 5, 9, 11] (grouped-query: two query
    heads per key head), a [7, 9] float mask, scale 0.25: no dim equals a batch size the tests
    use."""
    return (
        torch.randn(rows, 10, 7, 12, device=device, dtype=dtype),
        torch.randn(rows, 5, 9, 12, device=device, dtype=dtype),
        torch.randn(rows, 5, 9, 11, device=device, dtype=dtype),
        torch.randn(7, 9, device=device, dtype=dtype),
        0,  # dropout_p: an int, so that the tests that vary every float argument leave it 0
        False,
        0.25,
        True,
    )


def _attention_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    rows, keys, e, ev = (draw(st.integers(0 if i == 0 else 1, 4)) for i in range(4))
    heads_kv = draw(st.integers(1, 2))
    gqa = draw(st.booleans())
    heads_q = heads_kv * (draw(st.integers(1, 2)) if gqa else 1)
    # finite extremes only: on inf and nan, native's own float32 and float64 kernels disagree
    # (nan against inf where a p that underflows meets an infinite value), so there is no one
    # native answer to match; the samples cover fully masked rows
    q = draw(tensors(shape=[heads_q, rows, e], finite=True))
    k = draw(tensors(shape=[heads_kv, keys, e], finite=True))
    v = draw(tensors(shape=[heads_kv, keys, ev], finite=True))
    form = draw(st.sampled_from(["none", "causal", "bool", "float"]))
    mask = None
    if form == "bool":
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=rows * keys,
                                          max_size=rows * keys))).reshape(rows, keys)  # fmt: skip
    elif form == "float":
        mask = draw(tensors(shape=[rows, keys], finite=True))
    scale = draw(st.sampled_from([None, 0.5]))
    return (q, k, v, mask, 0.0, form == "causal", scale, gqa)


def _attention_error_inputs() -> list[ErrorInput]:
    q, k, v = _t(2, 5, 4), _t(2, 7, 4), _t(2, 7, 3)
    label = r"customgrad\.scaled_dot_product_attention"

    def call(q=q, k=k, v=v, mask=None, dropout=0.0, causal=False, scale=None, gqa=False):
        return (q, k, v, mask, dropout, causal, scale, gqa)

    return [
        ErrorInput(
            "1-D mask",
            lambda: call(mask=_t(7)),
            ValueError,
            label + r": attn_mask must have at least 2 dims \(\[\.\.\., L, S\]\), got shape \[7\]",
        ),
        ErrorInput(
            "nan scale",
            lambda: call(scale=float("nan")),
            ValueError,
            label + r": scale must be finite \(or None for 1/sqrt\(E\)\), got nan",
        ),
        ErrorInput(
            "dropout",
            lambda: call(dropout=0.1),
            NotImplementedError,
            label + r": dropout_p=0.1 is not supported",
        ),
        ErrorInput(
            "feature sizes differ",
            lambda: call(k=_t(2, 7, 5)),
            ValueError,
            label + r": q and k must have the same feature size E",
        ),
        ErrorInput(
            "key counts differ",
            lambda: call(v=_t(2, 6, 3)),
            ValueError,
            label + r": k and v must have the same number of keys S",
        ),
        ErrorInput(
            "1-d q",
            lambda: call(q=_t(4)),
            ValueError,
            label + r": q must have at least 2 dims",
        ),
        ErrorInput(
            "heads differ without enable_gqa",
            lambda: call(q=_t(4, 5, 4)),
            ValueError,
            label + r": the leading dims of q \[4, 5, 4\].* do not broadcast .*enable_gqa",
        ),
        ErrorInput(
            "gqa heads not a multiple",
            lambda: call(q=_t(3, 5, 4), gqa=True),
            ValueError,
            label + r": enable_gqa needs q's heads \(3\) to be a multiple of k's \(2\)",
        ),
        ErrorInput(
            "mask and causal",
            lambda: call(mask=torch.ones(5, 7, dtype=torch.bool), causal=True),
            ValueError,
            label + r": attn_mask and is_causal=True were both given",
        ),
        ErrorInput(
            "mask of the wrong shape",
            lambda: call(mask=_t(4, 7)),
            ValueError,
            label + r": attn_mask of shape \[4, 7\] does not broadcast to the scores' shape "
            r"\[2, 5, 7\]",
        ),
        ErrorInput(
            "integer mask",
            lambda: call(mask=torch.ones(5, 7, dtype=torch.int64)),
            TypeError,
            label + r": attn_mask must be a floating-point tensor of q's dtype .* or a bool "
            r"tensor .*, got torch.int64",
        ),
        ErrorInput(
            "float64 mask for float32 q",
            lambda: call(mask=torch.zeros(5, 7, dtype=torch.float64)),
            TypeError,
            label + r": q and attn_mask must have the same dtype \(or attn_mask bool\), got q "
            r"torch.float32 and attn_mask torch.float64",
        ),
    ]


# ---- rotary_embedding ----


def _native_rotary_embedding(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """transformers' apply_rotary_pos_emb for one tensor (its rotate_half: cat(-x₂, x₁))."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _rotary_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg)

    def view(v, rg=requires_grad):
        return _leaf_view(v, rg)

    def hf_layout():
        """q as transformers makes it: [B, L, H, D] projected, viewed as [B, H, L, D]."""
        return view(torch.randn(2, 5, 3, 8, device=device, dtype=dtype).transpose(1, 2))

    return [
        Sample("hf-layout", (hf_layout(), make((2, 1, 5, 8)), make((2, 1, 5, 8)))),
        Sample("cos[L,D]", (make((2, 3, 5, 8)), make((5, 8)), make((5, 8)))),
        Sample("same-shape", (make((4, 6)), make((4, 6)), make((4, 6)))),
        Sample("vector", (make((6,)), make((6,)), make((6,)))),
        Sample("cos[D]", (make((3, 4)), make((4,)), make((4,)))),
        Sample("empty", (make((0, 4)), make((4,)), make((4,)))),
        Sample("cos[L,1]", (make((3, 5, 8)), make((5, 1)), make((5, 1)))),
        Sample("cos-0-d", (make((3, 4)), make(()), make(()))),
        Sample(
            "strided-last-dim",
            (view(torch.randn(3, 12, device=device, dtype=dtype)[:, ::2]), make((6,)), make((6,))),
        ),
        Sample(
            "cos-sin-no-grad",
            (make((2, 3, 5, 8)), make((5, 8), rg=False), make((5, 8), rg=False)),
        ),
        Sample("x-no-grad", (make((3, 5, 8), rg=False), make((5, 8)), make((5, 8)))),
    ]


def _rotary_batch(rows: int, device, dtype) -> tuple[Tensor, ...]:
    """rows sequences of 4 heads × 6 positions × 8 dims, the cos and sin of the 6 positions."""
    angles = torch.arange(6, device=device, dtype=dtype)[:, None] * torch.linspace(
        0.1, 1.0, 4, device=device, dtype=dtype
    )
    angles = torch.cat((angles, angles), dim=-1)
    return torch.randn(rows, 4, 6, 8, device=device, dtype=dtype), angles.cos(), angles.sin()


def _rotary_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    lead = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    shape = [*lead, 2 * draw(st.integers(1, 4))]
    cos_shape = draw(st.sampled_from([shape, shape[-1:], [1] * (len(shape) - 1) + shape[-1:]]))
    return (
        draw(tensors(shape=shape)),
        draw(tensors(shape=cos_shape)),
        draw(tensors(shape=cos_shape)),
    )


def _rotary_extremes(x: Tensor) -> tuple:
    """The extreme values as x (with a 1 after them if their count is odd: the rotation pairs
    two halves), a plain angle's cos and sin."""
    values = x.detach()
    if values.numel() % 2:
        values = torch.cat((values, values.new_ones(1)))
    x = values.clone().requires_grad_(x.requires_grad)
    cos = torch.full_like(x, 0.6).requires_grad_(x.requires_grad)
    return x, cos, torch.full_like(x, 0.8).requires_grad_(x.requires_grad)


def _rotary_error_inputs() -> list[ErrorInput]:
    return [
        ErrorInput(
            "odd last dim",
            lambda: (_t(4, 5), _t(5), _t(5)),
            ValueError,
            r"customgrad\.rotary_embedding: x of shape \[4, 5\] must have a last dim of even",
        ),
        ErrorInput(
            "0-d x",
            lambda: (_t(), _t(), _t()),
            ValueError,
            r"customgrad\.rotary_embedding: x of shape \[\] must have a last dim of even",
        ),
        ErrorInput(
            "cos that enlarges x",
            lambda: (_t(4, 6), _t(3, 4, 6), _t(6)),
            ValueError,
            r"customgrad\.rotary_embedding: cos of shape \[3, 4, 6\] does not broadcast to x's "
            r"shape \[4, 6\]",
        ),
        ErrorInput(
            "sin of another length",
            lambda: (_t(4, 6), _t(6), _t(4)),
            ValueError,
            r"customgrad\.rotary_embedding: sin of shape \[4\] does not broadcast",
        ),
        ErrorInput(
            "sin of another dtype",
            lambda: (_t(4, 6), _t(6), _t(6).double()),
            TypeError,
            r"customgrad\.rotary_embedding: .*same dtype",
        ),
    ]


def _rotary_triton_backward(g: Tensor, x: Tensor, cos: Tensor, sin: Tensor) -> tuple:
    """dL/dx from the kernel; dL/dcos and dL/dsin in torch ops, as the op computes them."""
    grad_x = cuda_path.kernels("rotary_embedding").rotate(g, cos, sin, True)
    return grad_x, (g * x).sum_to_size(cos.shape), (g * rotate_half(x)).sum_to_size(sin.shape)


_ROTARY_TRITON = TritonPath(
    forward=lambda x, cos, sin: cuda_path.kernels("rotary_embedding").rotate(x, cos, sin, False),
    backward=_rotary_triton_backward,
    supports=lambda x, cos, sin: cuda_path.kernels("rotary_embedding").supports(x, cos, sin),
)


OPINFOS: list[OpslibOpInfo] = [
    OpslibOpInfo(
        op=torch.ops.customgrad.scaled_dot_product_attention,
        func=scaled_dot_product_attention,
        reference=_native_attention,
        reference_text="F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, "
        "scale, enable_gqa=...)",
        formula=(
            "o = P V, P = softmax(scale·q kᵀ + m) by tiles (C++) or blocks of rows, lse saved ; "
            "dV = Pᵀ dO, "
            "dS = P ⊙ (dO Vᵀ - rowsum(dO ⊙ O)), dQ = scale·dS K, dK = scale·dSᵀ Q (P recomputed)"
        ),
        sample_inputs=_attention_samples,
        batch_inputs=_attention_batch,
        batch_args=(0, 1, 2),  # q, k and v carry the batch; the mask broadcasts over it
        extreme_inputs=None,  # sums of ±inf through matmuls are order-dependent (as linear)
        property_inputs=_attention_property_inputs,
        error_inputs=_attention_error_inputs,
        deliberate_refusals=(
            r"dropout_p=.* is not supported",  # see the op's docstring
            r"enable_gqa needs a head dim",  # heads must be explicit
            r"enable_gqa needs q's heads .* which must be equal",  # k and v: one head count
        ),
        float32_tol=(2e-5, 1e-5),
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.rotary_embedding,
        func=rotary_embedding,
        reference=_native_rotary_embedding,
        reference_text="x * cos + rotate_half(x) * sin",
        formula=(
            "y = x·c + R(x)·s, R(x) = [-x₂, x₁] ; dL/dx = g·c - R(g·s), dL/dc = Σ g·x, "
            "dL/ds = Σ g·R(x)"
        ),
        sample_inputs=_rotary_samples,
        batch_inputs=_rotary_batch,
        extreme_inputs=_rotary_extremes,
        property_inputs=_rotary_property_inputs,
        error_inputs=_rotary_error_inputs,
        deliberate_refusals=(
            r"must have a last dim of even size",  # the rotation pairs the two halves
            r"does not broadcast to x's shape",  # cos and sin are per position, never larger
        ),
        triton=_ROTARY_TRITON,
    ),
]
