r"""``customgrad::linear(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor``:
:math:`y = x W^\top + b`.

Shapes
------
- ``x``: ``[*, in]`` (any number of leading dims, or a single vector ``[in]``).
- ``weight`` (:math:`W`): ``[out, in]``.
- ``bias`` (:math:`b`): None, or any shape that broadcasts to y without enlarging it: ``[out]``,
  ``[1, out]``, ``[batch, out]``, ... (the original design used the last two).
- ``y``: ``[*, out]``.

Forward
-------
.. math::

    y_{\dots,o} = \sum_i x_{\dots,i}\, W_{o,i} \;+\; b \text{ (broadcast over } y\text{)}

Backward
--------
With :math:`g = \partial L/\partial y`, shape ``[*, out]``. Flattening the leading dims into
rows, :math:`g_2` ``[N, out]`` and :math:`x_2` ``[N, in]``:

.. math::

    \frac{\partial L}{\partial x} &= g\, W
        && [*, \text{out}] \times [\text{out}, \text{in}] \to [*, \text{in}] \\
    \frac{\partial L}{\partial W} &= \textstyle\sum_{\text{rows}} g^\top x = g_2^\top x_2
        && [\text{out}, N] \times [N, \text{in}] \to [\text{out}, \text{in}] \\
    \frac{\partial L}{\partial b} &= g \text{ summed over every dim } b
        \text{ was broadcast along}

The bias gradient is ``g.sum_to_size(b.shape)``: for b ``[out]`` that sums the leading dims; for
b ``[1, out]`` it keeps the 1; for b ``[batch, out]`` it sums nothing (``g.sum(0)`` is wrong for
the last two).

Saved for backward
------------------
x only if W needs a gradient, W only if x needs one; never y. Native ``F.linear`` saves the same
two tensors.

Sharding
--------
DTensor, one mesh dim (``_linear_sharding``), the splits tensor parallelism uses:

- batch: x ``Shard(d)`` for a leading dim d, W ``Replicate`` → y ``Shard(d)``;
- column-wise: x ``Replicate``, W ``Shard(0)`` (rows = outputs), b ``Shard`` → y ``Shard(-1)``;
- row-wise: x ``Shard(-1)``, W ``Shard(1)`` (the contraction) → y ``Partial``: each rank's
  :math:`x_r W_r^\top` is a partial sum of y. The bias must be added once in that sum, not once
  per rank: the rule asks for b as ``Partial`` too, which DTensor makes from a replicated bias as
  :math:`b/R` on each of the R ranks, so that
  :math:`\sum_r (x_r W_r^\top + b/R) = x W^\top + b`.

The backward's matmuls and sums are ATen ops, which DTensor shards by its own rules.

Double backward
---------------
All three gradients are matmuls, reshapes and sums of g, x and W, which autograd differentiates
again (for example the derivative of :math:`\partial L/\partial x` in W contracts the incoming
gradient with g).

Kernels
-------
A plain CPU call without autograd, in its common forms, is computed in C++ by the fast path
(``opslib/csrc/cpu_fast_path.cpp``: the same ATen matmul as the Python kernel, without the trip
into Python); every other call runs the torch ops of this file (ATen's matmul and addmm).
No Triton kernel: a matmul is cuBLAS's job on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core.checks import (
    broadcasts_to,
    check_floating_input,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
)
from opslib.core.registration import (
    define_op,
    register_autocast_to_autocast_dtype,
    register_inductor_decomposition,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import broadcast_placement, register_sharding_rule, replicate


def _check_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> list[int]:
    """Validate the arguments and return the output shape."""
    check_floating_input("linear", "x", x)
    check_floating_input("linear", "weight", weight)
    named = {"x": x, "weight": weight}
    if bias is not None:
        check_floating_input("linear", "bias", bias)
        named["bias"] = bias
    check_same_dtype_and_device("linear", named)
    if weight.dim() != 2:
        raise ValueError(
            f"customgrad.linear: weight must be 2-D [out_features, in_features], "
            f"got shape {fmt_shape(weight.shape)}"
        )
    if x.dim() == 0:
        raise ValueError(
            "customgrad.linear: x must have at least 1 dimension ([*, in_features]), "
            "got a 0-d tensor"
        )
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(
            f"customgrad.linear: x has {x.shape[-1]} features in its last dimension but weight "
            f"expects in_features={in_features} (x {fmt_shape(x.shape)}, "
            f"weight {fmt_shape(weight.shape)})"
        )
    out_shape = [*x.shape[:-1], out_features]
    if bias is not None and not broadcasts_to(bias.shape, out_shape):
        raise ValueError(
            f"customgrad.linear: bias of shape {fmt_shape(bias.shape)} does not broadcast to "
            f"the output shape {fmt_shape(out_shape)}"
        )
    return out_shape


def _linear_formula(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if bias is None or bias.dim() == 1 or x.dim() == 2:
        return F.linear(x, weight, bias)  # one fused addmm/matmul for these bias forms
    # F.linear flattens a contiguous 3-D x to 2-D for addmm, which cannot broadcast a bias such
    # as [1, 1, out] or [batch, seq, out]: add those separately.
    return F.linear(x, weight) + bias


def _linear_kernel(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    # Plain CPU calls without autograd get this from its C++ twin (opslib/csrc/cpu_fast_path.cpp).
    _check_linear(x, weight, bias)
    return _linear_formula(x, weight, bias)


def _linear_fake(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    out_shape = _check_linear(x, weight, bias)
    return x.new_empty(out_shape)  # F.linear's output is always a fresh contiguous tensor


def _linear_setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor | None], output) -> None:
    x, weight, bias = inputs
    needs_x, needs_w, _ = input_grad_flags(ctx, 3)
    ctx.save_for_backward(x if needs_w else None, weight if needs_x else None)
    ctx.bias_shape = None if bias is None else bias.shape


def _as_rows(t: Tensor) -> Tensor:
    """[*, n] -> [N, n] (a vector becomes one row). Not reshape(-1, n): that is ambiguous
    when n == 0."""
    return t.unsqueeze(0) if t.dim() == 1 else t.flatten(0, -2)


def _linear_backward(ctx, grad_y: Tensor):
    x, weight = ctx.saved_tensors
    needs_x, needs_w, needs_b = input_grad_flags(ctx, 3)
    grad_x = grad_w = grad_b = None
    if needs_x:
        grad_x = grad_y @ weight
    if needs_w:
        grad_w = _as_rows(grad_y).t() @ _as_rows(x)
    if needs_b:
        grad_b = grad_y.sum_to_size(ctx.bias_shape)
    return grad_x, grad_w, grad_b


_linear = define_op(
    "linear",
    "(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor",
    kernel=_linear_kernel,
    fake=_linear_fake,
    setup_context=_linear_setup_context,
    backward=_linear_backward,
)


def _linear_vmap(info, in_dims, x: Tensor, weight: Tensor, bias: Tensor | None = None):
    """Batch dims go to the front. An unbatched weight keeps the op (its leading dims are batch
    dims already); a per-sample weight [B, out, in] is a batched matmul, done with torch ops.

    The dispatcher drops a trailing ``bias=None``, so there may be two in_dims, not three."""
    x_dim, w_dim, b_dim = (*in_dims, None)[:3]
    batch = info.batch_size
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(batch, *x.shape)
    out_ndim = x.dim()  # [B, *, out] has as many dims as [B, *, in]
    if bias is not None and b_dim is not None:
        bias = bias.movedim(b_dim, 0)
        bias = bias.reshape(batch, *([1] * (out_ndim - bias.dim())), *bias.shape[1:])
    if w_dim is None:
        return _linear(x, weight, bias), 0
    weight = weight.movedim(w_dim, 0)  # [B, out, in]
    x3 = x.reshape(batch, -1, x.shape[-1])  # [B, N, in]
    y = (x3 @ weight.transpose(1, 2)).reshape(*x.shape[:-1], weight.shape[1])
    return (y if bias is None else y + bias), 0


register_vmap(_linear, _linear_vmap)
# Under torch.compile, inductor computes the forward from this formula: the bias add and a
# following activation fuse into the matmul's epilogue instead of each making a pass over y.
register_inductor_decomposition(_linear, _linear_formula)

# Like F.linear: under autocast, compute in the autocast dtype (bfloat16/float16).
register_autocast_to_autocast_dtype(_linear, "cpu")
register_autocast_to_autocast_dtype(_linear, "cuda")


def _linear_sharding(x, weight, bias=None):
    from torch.distributed.tensor import Partial, Replicate, Shard

    last = x.ndim - 1
    rules = [([Replicate()], replicate(x, weight, bias))]
    for d in range(last):  # batch dims
        rules.append(([Shard(d)], [Shard(d), Replicate(), broadcast_placement(bias, x.ndim, d)]))
    column_bias = broadcast_placement(bias, x.ndim, last)
    rules.append(([Shard(last)], [Replicate(), Shard(0), column_bias]))
    row_bias = None if bias is None else Partial()
    rules.append(([Partial()], [Shard(last), Shard(1), row_bias]))
    return rules


register_sharding_rule(_linear, _linear_sharding)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b, with the gradients written out in ``opslib/ops/linear.py``.

    x ``[*, in]`` or ``[in]``, weight ``[out, in]``, bias ``None`` or any shape broadcasting to
    the output ``[*, out]`` (``[out]``, ``[1, out]``, ``[batch, out]``).

    A 1-D weight ``[in]``, which ``F.linear`` documents, gives ``x @ weight (+ bias)`` of shape
    ``[*]``: the op on the weight as one output row, that dim dropped, then the bias added with
    broadcasting, as native's. Native refuses a bias with a 1-D weight for a 2-D x (its addmm
    path): so does this.
    """
    if not torch.jit.is_scripting() and isinstance(weight, Tensor) and weight.dim() == 1:
        return _linear_with_a_vector_weight(x, weight, bias)
    return _linear(x, weight, bias)


@torch.jit.unused  # TorchScript compiles linear() without this branch (its helpers are Python)
def _linear_with_a_vector_weight(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear with a 1-D weight: the op on it as one output row, that dim dropped."""
    y = _linear(x, weight.unsqueeze(0), None).squeeze(-1)
    if bias is None:
        return y
    if x.dim() == 2 or not broadcasts_to(bias.shape, y.shape):
        raise ValueError(
            f"customgrad.linear: with a 1-D weight, bias of shape {fmt_shape(bias.shape)} "
            f"must broadcast to the output {fmt_shape(y.shape)}, and x may not be 2-D "
            f"(F.linear refuses both)"
        )
    return y + bias


def linear_onnx(x, weight, bias=None):
    """ONNX translation: MatMul(x, Transpose(W)) (+ Add(b)), standard ONNX only.

    Gemm would fuse the bias but accepts only 2-D x; MatMul takes any [*, in] and Add
    broadcasts every bias form numpy-style, exactly like the op.
    """
    from opslib.onnx import opset

    y = opset.MatMul(x, opset.Transpose(weight, perm=[1, 0]))
    return y if bias is None else opset.Add(y, bias)


register_onnx_translation(_linear, linear_onnx)
