r"""``customgrad::rotary_embedding(Tensor x, Tensor cos, Tensor sin) -> Tensor``: rotary position
embedding, :math:`y = x \cdot \cos + \operatorname{rotate\_half}(x) \cdot \sin`, in the
Llama/GPT-NeoX convention that transformers' ``apply_rotary_pos_emb`` uses.

Shapes
------
- ``x``: ``[..., D]``, D even: transformers passes q or k as ``[B, H, L, D]``, often the
  transposed view of a ``[B, L, H, D]`` projection (any strides are taken).
- ``cos``, ``sin``: any shape that broadcasts to x without enlarging it: ``[B, 1, L, D]`` as
  transformers passes them, ``[L, D]``, ``[D]``, x's own shape.
- ``y``: x's shape, laid out like x.

Forward
-------
Split the last dim in halves, :math:`x = [x_1, x_2]`, and likewise :math:`c = [c_1, c_2]`
(cos), :math:`s = [s_1, s_2]` (sin):

.. math::

    \operatorname{rotate\_half}(x) &= [-x_2,\ x_1] \\
    y_1 &= x_1 c_1 - x_2 s_1 \\
    y_2 &= x_2 c_2 + x_1 s_2

With :math:`c = \cos\theta`, :math:`s = \sin\theta` repeated over both halves
(:math:`c_1 = c_2`, :math:`s_1 = s_2`, as every model builds them), each pair
:math:`(x_{1j}, x_{2j})` is rotated by the angle :math:`\theta_j` of its position.

Backward
--------
With :math:`g = \partial L/\partial y = [g_1, g_2]`. Write
:math:`R(v) = \operatorname{rotate\_half}(v) = [-v_2, v_1]`, a linear map. Its transpose:
:math:`\langle u, R(v)\rangle = -u_1 \cdot v_2 + u_2 \cdot v_1 = \langle [u_2, -u_1], v\rangle`,
so :math:`R^\top(u) = [u_2, -u_1] = -R(u)`. Then, from :math:`y = x c + R(x)\, s`:

.. math::

    \frac{\partial L}{\partial x} &= g c + R^\top(g s) = g c - R(g s), \quad\text{that is}\quad
    \frac{\partial L}{\partial x_1} = g_1 c_1 + g_2 s_2, \quad
    \frac{\partial L}{\partial x_2} = g_2 c_2 - g_1 s_1 \\
    \frac{\partial L}{\partial \cos} &= g\, x
        \quad\text{summed over every dim cos was broadcast along (sum\_to\_size)} \\
    \frac{\partial L}{\partial \sin} &= g\, R(x) \quad\text{summed likewise}

With :math:`c_1 = c_2`, :math:`s_1 = s_2`, :math:`\partial L/\partial x` is the rotation by
:math:`-\theta`, the inverse rotation, as expected of the transpose of a rotation.

:math:`\partial L/\partial x` is an op of its own,
``customgrad::rotary_embedding_backward(grad_y, cos, sin) -> grad_x``, so that compile and
export see the kernel it runs. The cos and sin gradients are torch ops, computed only when cos
or sin require grad (transformers' do not: they come from a buffer of inverse frequencies).

Double backward
---------------
The backward of rotary_embedding_backward, :math:`b(g, c, s) = g c + R^\top(g s)`, with
:math:`a = \partial L/\partial(\text{grad\_x})`; since
:math:`\langle a, R^\top(g s)\rangle = \langle R(a)\, s, g\rangle`:

.. math::

    \frac{\partial L}{\partial g} &= a c + R(a)\, s = \operatorname{rotary\_embedding}(a, c, s) \\
    \frac{\partial L}{\partial c} &= a\, g \quad\text{summed to cos's shape} \\
    \frac{\partial L}{\partial s} &= g\, R(a) \quad\text{summed to sin's shape}

The forward op and its backward op are each other's gradient; every other term is torch ops,
so autograd differentiates them again (third order and up).

Saved for backward
------------------
cos and sin when x requires grad, x only when cos or sin do (native's
``x * cos + rotate_half(x) * sin`` saves the same).

Kernels
-------
- CPU, float32 and float64: one vectorized, multi-threaded pass over x for the forward and over
  g for :math:`\partial L/\partial x` (``opslib/csrc/rotary_embedding.cpp``; native eager makes
  six passes forward: a product, two slices copied by cat, a negation, a product, a sum). x and
  g in any layout whose last dim is contiguous, cos and sin read through their broadcast.
  float16/bfloat16 and machines where the C++ kernels are not built use the torch-op formulas
  below (half precision computed in float32, rounded once).
- CUDA: one Triton kernel, forward and for :math:`\partial L/\partial x`
  (``opslib/ops/triton_kernels/rotary_embedding.py``), for up to 4-d x with a contiguous last
  dim; others, torch ops.
- torch.compile with inductor: the formulas, fused by inductor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opslib.core import cpu_kernels, cuda_path
from opslib.core.checks import (
    broadcasts_to,
    check_floating_input,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
)
from opslib.core.precision import HALF_DTYPES
from opslib.core.registration import (
    define_op,
    in_layout_of,
    only_plain_tensors,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import broadcast_placement, register_sharding_rule

CPU_KERNEL_DTYPES = (torch.float32, torch.float64)


def _check_cos_sin(op: str, like: Tensor, cos: Tensor, sin: Tensor) -> None:
    check_floating_input(op, "cos", cos)
    check_floating_input(op, "sin", sin)
    check_same_dtype_and_device(op, {"x": like, "cos": cos, "sin": sin})
    for name, t in (("cos", cos), ("sin", sin)):
        if not broadcasts_to(t.shape, like.shape):
            raise ValueError(
                f"customgrad.{op}: {name} of shape {fmt_shape(t.shape)} does not broadcast to "
                f"x's shape {fmt_shape(like.shape)}"
            )


def _check_rotated(op: str, name: str, x: Tensor, cos: Tensor, sin: Tensor) -> None:
    """x (or grad_y) with an even last dim, cos and sin that broadcast to it."""
    check_floating_input(op, name, x)
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(
            f"customgrad.{op}: {name} of shape {fmt_shape(x.shape)} must have a last dim of "
            f"even size (the two halves rotated together)"
        )
    _check_cos_sin(op, x, cos, sin)


def _check_rotary_embedding(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    _check_rotated("rotary_embedding", "x", x, cos, sin)


def _check_rotary_embedding_backward(grad_y: Tensor, cos: Tensor, sin: Tensor) -> None:
    _check_rotated("rotary_embedding_backward", "grad_y", grad_y, cos, sin)


def rotate_half(x: Tensor) -> Tensor:
    """R(x) = [-x₂, x₁] along the last dim (transformers' ``rotate_half``)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_half_transposed(x: Tensor) -> Tensor:
    """Rᵀ(x) = [x₂, -x₁] = -R(x)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, -x1), dim=-1)


def _forward_formula(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + rotate_half(x) * sin


def _backward_formula(grad_y: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return grad_y * cos + _rotate_half_transposed(grad_y * sin)


def cpu_kernel_takes(x: Tensor) -> bool:
    """Calls the C++ kernels compute: CPU, float32 or float64, the kernels built (any layout:
    the kernels copy what they cannot read in place)."""
    return x.is_cpu and x.dtype in CPU_KERNEL_DTYPES and cpu_kernels.is_loaded()


def _triton_takes(x: Tensor, cos: Tensor, sin: Tensor) -> bool:
    return cuda_path.takes(x, cos, sin) and cuda_path.kernels("rotary_embedding").supports(
        x, cos, sin
    )


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, *, inverse: bool) -> Tensor:
    """The forward (inverse=False) or dL/dx (inverse=True, x = grad_y) on the fastest path."""
    if _triton_takes(x, cos, sin):  # CUDA: one Triton pass
        return cuda_path.kernels("rotary_embedding").rotate(x, cos, sin, inverse)
    if cpu_kernel_takes(x):  # one pass (csrc/rotary_embedding.cpp)
        return torch.ops.opslib_cpu.rotary_embedding(x, cos, sin, inverse)
    formula = _backward_formula if inverse else _forward_formula
    if x.dtype in HALF_DTYPES:
        return in_layout_of(formula(x.float(), cos.float(), sin.float()).to(x.dtype), x)
    return in_layout_of(formula(x, cos, sin), x)


def _rotary_embedding_kernel(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    _check_rotary_embedding(x, cos, sin)
    return _rotate(x, cos, sin, inverse=False)


def _rotary_embedding_fake(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    _check_rotary_embedding(x, cos, sin)
    return torch.empty_like(x)


def _rotary_embedding_backward_kernel(grad_y: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    _check_rotary_embedding_backward(grad_y, cos, sin)
    # On CUDA this is the kernel of an op with its own autograd formula: a double backward
    # differentiates that formula, not this kernel.
    return _rotate(grad_y, cos, sin, inverse=True)


def _rotary_embedding_backward_fake(grad_y: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    _check_rotary_embedding_backward(grad_y, cos, sin)
    return torch.empty_like(grad_y)


def _rotary_embedding_backward_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _rotary_embedding_double_backward(ctx, grad_grad_x: Tensor):
    """The derivation is in the module docstring (a = grad_grad_x, g = grad_y)."""
    grad_y, cos, sin = ctx.saved_tensors
    needs_g, needs_cos, needs_sin = input_grad_flags(ctx, 3)
    a = grad_grad_x
    dg = _rotary_embedding(a, cos, sin) if needs_g else None
    dcos = (a * grad_y).sum_to_size(cos.shape) if needs_cos else None
    dsin = (grad_y * rotate_half(a)).sum_to_size(sin.shape) if needs_sin else None
    return dg, dcos, dsin


_rotary_embedding_backward = define_op(
    "rotary_embedding_backward",
    "(Tensor grad_y, Tensor cos, Tensor sin) -> Tensor",
    kernel=_rotary_embedding_backward_kernel,
    fake=_rotary_embedding_backward_fake,
    setup_context=_rotary_embedding_backward_setup_context,
    backward=_rotary_embedding_double_backward,
)
register_inductor_decomposition(_rotary_embedding_backward, _backward_formula)


def _rotary_embedding_setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor], output) -> None:
    x, cos, sin = inputs
    needs_x, needs_cos, needs_sin = input_grad_flags(ctx, 3)
    ctx.save_for_backward(
        x if (needs_cos or needs_sin) else None,
        cos if needs_x else None,
        sin if needs_x else None,
    )
    ctx.cos_shape, ctx.sin_shape = cos.shape, sin.shape


def _rotary_embedding_autograd_backward(ctx, grad_y: Tensor):
    x, cos, sin = ctx.saved_tensors
    needs_x, needs_cos, needs_sin = input_grad_flags(ctx, 3)
    grad_x = grad_cos = grad_sin = None
    if needs_x:
        if torch.is_grad_enabled() or not only_plain_tensors((grad_y, cos, sin)):
            # create_graph=True (its own backward is recorded), or compile/export tracing
            grad_x = _rotary_embedding_backward(grad_y, cos, sin)
        else:  # a plain first-order backward: the op's kernel, without its dispatch
            grad_x = _rotary_embedding_backward_kernel(grad_y, cos, sin)
    if needs_cos:
        grad_cos = (grad_y * x).sum_to_size(ctx.cos_shape)
    if needs_sin:
        grad_sin = (grad_y * rotate_half(x)).sum_to_size(ctx.sin_shape)
    return grad_x, grad_cos, grad_sin


_rotary_embedding = define_op(
    "rotary_embedding",
    "(Tensor x, Tensor cos, Tensor sin) -> Tensor",
    kernel=_rotary_embedding_kernel,
    fake=_rotary_embedding_fake,
    setup_context=_rotary_embedding_setup_context,
    backward=_rotary_embedding_autograd_backward,
)


def _rotary_embedding_vmap(info, in_dims, x: Tensor, cos: Tensor, sin: Tensor):
    """Batch dims to the front; x without one is expanded to the batch; cos or sin [B, *c] is
    padded to [B, 1, ..., *c] so that it broadcasts against x [B, *x] as it did unbatched."""
    batch = info.batch_size
    x_dim, cos_dim, sin_dim = in_dims
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(batch, *x.shape)

    def padded(t: Tensor, dim: int | None) -> Tensor:
        if dim is None:
            return t
        t = t.movedim(dim, 0)
        return t.reshape(batch, *([1] * (x.dim() - t.dim())), *t.shape[1:])

    return _rotary_embedding(x, padded(cos, cos_dim), padded(sin, sin_dim)), 0


register_vmap(_rotary_embedding, _rotary_embedding_vmap)
# Under torch.compile, inductor computes the forward from the formula above, fused with its
# neighbours (and dL/dx from _backward_formula).
register_inductor_decomposition(_rotary_embedding, _forward_formula)


# DTensor (core/sharding.py): x sharded along any dim but the last (the rotation pairs its two
# halves), cos and sin sharded alike where they have that dim at full size, else replicated;
# never Partial. dL/dcos and dL/dsin are torch ops, which DTensor shards by its own rules.
def _rotary_embedding_sharding(x, cos, sin):
    from torch.distributed.tensor import Replicate, Shard

    rules = [([Replicate()], [Replicate()] * 3)]
    for d in range(x.ndim - 1):
        rules.append(
            (
                [Shard(d)],
                [
                    Shard(d),
                    broadcast_placement(cos, x.ndim, d),
                    broadcast_placement(sin, x.ndim, d),
                ],
            )
        )
    return rules


register_sharding_rule(_rotary_embedding, _rotary_embedding_sharding)
register_sharding_rule(_rotary_embedding_backward, _rotary_embedding_sharding)

# No autocast rule: the native expression (mul, cat, neg, add) is on neither autocast list.


def rotary_embedding(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x · cos + rotate_half(x) · sin (transformers' ``apply_rotary_pos_emb`` for one tensor);
    gradients, for x, cos and sin, in ``opslib/ops/rotary_embedding.py``.

    cos and sin broadcast to x: ``[B, 1, L, D]`` as transformers' rotary embedding returns them
    (unsqueezed at dim 1), or ``[L, D]``; x may be the transposed view a model makes of its
    projection. To rotate q and k as ``apply_rotary_pos_emb(q, k, cos, sin)`` does, call this
    once for each.
    """
    return _rotary_embedding(x, cos, sin)


def rotary_embedding_onnx(x, cos, sin):
    """ONNX translation: Add(Mul(x, cos), Mul(Concat(Neg(x₂), x₁), sin)), x split in halves
    along the last axis; standard ONNX operators only, which onnxruntime runs in float16, 32
    and 64 (parity checked)."""
    from opslib.onnx import opset

    x1, x2 = opset.Split(x, axis=-1, num_outputs=2)
    rotated = opset.Concat(opset.Neg(x2), x1, axis=-1)
    return opset.Add(opset.Mul(x, cos), opset.Mul(rotated, sin))


register_onnx_translation(_rotary_embedding, rotary_embedding_onnx)
