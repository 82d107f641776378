"""What the op table's entries do not cover for the decoder ops, swiglu and rotary_embedding:
swiglu's broadcasting (the public function's, as native's ``F.silu(gate) * up``), the rotary
embedding as a rotation (norms kept, the backward the inverse rotation), and both C++ kernels on
large tensors in transformers' layouts against native."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import opslib
from opslib.testing.support import assert_close_named

pytestmark = pytest.mark.ops("swiglu", "rotary_embedding")


def _native_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@pytest.mark.parametrize(
    "gate_shape,up_shape", [((4, 5), (5,)), ((4, 1), (1, 6)), ((), (3, 2)), ((2, 1, 3), (4, 3))]
)
def test_swiglu_broadcasts_as_native(gate_shape, up_shape):
    gate = torch.randn(gate_shape, dtype=torch.float64, requires_grad=True)
    up = torch.randn(up_shape, dtype=torch.float64, requires_grad=True)
    y, want = opslib.swiglu(gate, up), F.silu(gate) * up
    assert_close_named(y, want, f"swiglu {gate_shape} x {up_shape}")
    g = torch.randn_like(want)
    got = torch.autograd.grad(y, (gate, up), g)
    for i, (a, b) in enumerate(zip(got, torch.autograd.grad(want, (gate, up), g), strict=True)):
        assert a.shape == b.shape
        assert_close_named(a, b, f"swiglu broadcast grad {i}")


def _llama_cos_sin(batch: int, length: int, dim: int, dtype=torch.float32):
    """cos and sin as transformers' LlamaRotaryEmbedding returns them: [B, L, D], the angles of
    each position repeated over both halves; unsqueezed to [B, 1, L, D] by the attention."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    positions = torch.arange(length, dtype=torch.float64)
    angles = torch.outer(positions, inv_freq)
    emb = torch.cat((angles, angles), dim=-1).expand(batch, length, dim)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def test_rotary_embedding_is_a_rotation_and_its_gradient_the_inverse():
    """With cos and sin of real angles, the op keeps each pair's norm, and dL/dx of L = ⟨g, y⟩
    rotates g back: applying the op to dL/dx gives g again."""
    cos, sin = _llama_cos_sin(2, 7, 16, torch.float64)
    x = torch.randn(2, 7, 3, 16, dtype=torch.float64).transpose(1, 2).requires_grad_()
    y = opslib.rotary_embedding(x, cos, sin)
    pair_norm = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2  # noqa: E731
    assert_close_named(pair_norm(y), pair_norm(x), "rotary pair norms")
    g = torch.randn_like(y)
    (grad_x,) = torch.autograd.grad(y, x, g)
    assert_close_named(opslib.rotary_embedding(grad_x, cos, sin), g, "rotate(dL/dx) = g")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_rotary_embedding_kernel_matches_native_on_llama_shapes(dtype):
    """q [2, 8, 128, 64] as transformers views it, cos/sin [2, 1, 128, 64]: the C++ kernel
    equals native's expression bit for bit (same products, same order), and so do dL/dx and
    dL/dcos, dL/dsin when they are asked for."""
    cos, sin = _llama_cos_sin(2, 128, 64, dtype)
    cos, sin = cos.clone().requires_grad_(), sin.clone().requires_grad_()
    x = torch.randn(2, 128, 8, 64, dtype=dtype).transpose(1, 2).requires_grad_()
    y, want = opslib.rotary_embedding(x, cos, sin), _native_rotary(x, cos, sin)
    assert torch.equal(y, want) and y.stride() == x.stride()
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, cos, sin), g)
    for i, (a, b) in enumerate(zip(got, torch.autograd.grad(want, (x, cos, sin), g), strict=True)):
        assert_close_named(a, b, f"rotary grad {i} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_swiglu_kernel_matches_native_on_mlp_shapes(dtype):
    """gate and up [4, 128, 688] as a Llama MLP makes them, and a transposed pair: values and
    both gradients against native autograd at the table's tolerance."""
    for layout in ("contiguous", "transposed"):
        gate, up = torch.randn(2, 4, 128, 688, dtype=dtype)
        if layout == "transposed":
            gate, up = gate.transpose(-1, -2), up.transpose(-1, -2)
        gate, up = gate.requires_grad_(), up.requires_grad_()
        y, want = opslib.swiglu(gate, up), F.silu(gate) * up
        assert_close_named(y, want, f"swiglu {layout} {dtype}")
        assert y.stride() == gate.stride()
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, (gate, up), g)
        for i, (a, b) in enumerate(zip(got, torch.autograd.grad(want, (gate, up), g), strict=True)):
            assert_close_named(a, b, f"swiglu {layout} grad {i} {dtype}")
