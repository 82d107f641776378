r"""``customgrad::conv1d`` and ``customgrad::conv2d(Tensor x, Tensor weight, Tensor? bias=None,
int[2] stride=1, int[4] padding=0, int[2] dilation=1, int groups=1) -> Tensor``: convolution
(cross-correlation, as every deep-learning library computes it), as ``F.conv1d``/``F.conv2d``.
The two ops differ only in the number of spatial dims d (1 or 2), so they share this file.

Shapes
------
d spatial dims; conv2d: ``[N, C, H, W]``. g = groups: input channels :math:`c \cdot C/g \dots`
and output channels :math:`o \cdot O/g \dots` pair up.

- ``x``: ``[N, C, *in]`` or unbatched ``[C, *in]``.
- ``weight``: ``[O, C/g, *k]``.
- ``bias``: None or ``[O]``.
- ``y``: ``[N, O, *out]``, with, per spatial dim,
  :math:`\text{out} = \bigl\lfloor (\text{in} + p_\text{begin} + p_\text{end}
  - \text{dil}\,(k - 1) - 1) / \text{stride} \bigr\rfloor + 1`.
- padding per dim as (begin, end) pairs in the op, ``[h_begin, h_end, w_begin, w_end]``; the
  public functions also take an int, one int per dim, "valid" (0) and "same"
  (:math:`\text{dil}\,(k - 1)` split with the odd one at the end, as native; stride 1 only).

Forward
-------
With x zero-padded (:math:`x_p`), stride s, dilation δ, and one group (groups split the channels
into independent convolutions); i and κ are d-dim indices:

.. math::

    y[n, o, i] = b[o] + \sum_c \sum_\kappa W[o, c, \kappa]\; x_p[n, c, s i + \delta\kappa]

Backward
--------
With :math:`g = \partial L/\partial y`, each from differentiating that sum:

.. math::

    \frac{\partial L}{\partial b[o]} &= \sum_n \sum_i g[n, o, i] \\
    \frac{\partial L}{\partial W[o, c, \kappa]} &= \sum_n \sum_i g[n, o, i]\;
        x_p[n, c, s i + \delta\kappa] \\
    \frac{\partial L}{\partial x_p[n, c, j]} &= \sum_o \sum_{i, \kappa:\ s i + \delta\kappa = j}
        g[n, o, i]\; W[o, c, \kappa]

The bias gradient is the sum of dY; the weight gradient a correlation of X with dY (dY plays the
kernel, dilated by the stride); the input gradient a transposed convolution of dY with W
(stride s, dilation δ): dY scattered back through every position that read j.
:math:`\partial L/\partial x` is :math:`\partial L/\partial x_p` without the padding (padding only
adds zeros, whose gradient is dropped).

ATen computes the three with ``aten.convolution_backward`` (oneDNN/MKL on CPU, cuDNN on CUDA),
the same kernels as native; tests/test_conv.py checks its dX and dW against
``F.conv_transpose2d`` and the correlation written above.

Saved for backward
------------------
x if W needs a gradient, W if x does (as native).

Double backward
---------------
``aten.convolution_backward`` has its own derivative in ATen (each gradient is bilinear in g
and one of x, W, so its derivative is again a convolution), so autograd differentiates the
backward again; gradgradcheck runs over the op table's samples.

Asymmetric padding
------------------
"same" with an even kernel, or explicit pairs: ATen's convolution pads both sides alike, so the
part of the padding beyond the smaller side is added first with ``F.pad`` (as native's "same"
does); its gradient is the slice of :math:`\partial L/\partial x_p`.

Half precision on CPU
---------------------
float16 and bfloat16 compute in float32 and round the results: oneDNN's half-precision
convolutions, which native F.conv*d calls, crash the process for some small shapes (torch 2.13
on an AVX512 machine: segfaults and SIGFPE, with and without padding, not always on the same
call: 150 of 20,000 random small float16 convolutions and 19 of 20,000 bfloat16 ones,
``python3 tests/search_conv_crashes.py``; tests/test_conv.py keeps six). Its float32 kernels ran
160,000 such calls without one. The float32 result rounded once is at least as accurate as
native's; in bfloat16 it is slower than native's fast kernel (see the benchmarks).

Kernels
-------
ATen's ``convolution`` forward and ``convolution_backward`` for both gradients (the kernels
native uses: oneDNN on CPU, cuDNN on CUDA), float16/bfloat16 on CPU computed in float32 and
rounded (see above). No C++ kernel of opslib's own, no fast path, no Triton kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core.checks import (
    check_floating_input,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
    int_list,
    label,
)
from opslib.core.precision import accumulation_dtype
from opslib.core.registration import (
    define_op,
    register_autocast_to_autocast_dtype,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import register_sharding_rule, replicate


def _check_conv(op: str, dims: int, x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int) -> list[int]:  # fmt: skip
    """Validate the arguments; return the output's shape."""
    check_floating_input(op, "x", x)
    check_floating_input(op, "weight", weight)
    named = {"x": x, "weight": weight}
    if bias is not None:
        check_floating_input(op, "bias", bias)
        named["bias"] = bias
    check_same_dtype_and_device(op, named)
    if weight.dim() != dims + 2:
        raise ValueError(
            f"{label(op)}: weight must be {dims + 2}-D [out_channels, in_channels/groups, "
            f"{'kernel' if dims == 1 else 'kH, kW'}], got shape {fmt_shape(weight.shape)}"
        )
    if x.dim() not in (dims + 1, dims + 2):
        raise ValueError(
            f"{label(op)}: x must be {dims + 2}-D [N, C, {'L' if dims == 1 else 'H, W'}] or "
            f"{dims + 1}-D unbatched, got shape {fmt_shape(x.shape)}"
        )
    if len(stride) != dims or len(dilation) != dims or len(padding) != 2 * dims:
        raise ValueError(
            f"{label(op)}: stride and dilation need {dims} values and padding {2 * dims} "
            f"(begin, end per dim), got {list(stride)}, {list(dilation)}, {list(padding)}"
        )
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0 or groups < 1:
        raise ValueError(
            f"{label(op)}: stride, dilation and groups must be positive and padding "
            f"non-negative, got stride {list(stride)}, padding {list(padding)}, dilation "
            f"{list(dilation)}, groups {groups}"
        )
    out_channels, channels = weight.shape[0], x.shape[-dims - 1]
    if out_channels == 0:  # native refuses it too, in ATen's words ("at least 1 at dimension 0")
        raise ValueError(
            f"{label(op)}: weight of shape {fmt_shape(weight.shape)} has no output channels; "
            f"a convolution needs at least one"
        )
    if out_channels % groups or channels != weight.shape[1] * groups:
        raise ValueError(
            f"{label(op)}: x has {channels} channels and weight {fmt_shape(weight.shape)} "
            f"expects {weight.shape[1]} per group x {groups} groups = {weight.shape[1] * groups}"
            f" (and out_channels {out_channels} divisible by groups)"
        )
    if bias is not None and list(bias.shape) != [out_channels]:
        raise ValueError(
            f"{label(op)}: bias of shape {fmt_shape(bias.shape)} must be [{out_channels}], one "
            f"per output channel"
        )
    out = []
    for i in range(dims):
        padded = x.shape[x.dim() - dims + i] + padding[2 * i] + padding[2 * i + 1]
        reach = dilation[i] * (weight.shape[2 + i] - 1) + 1
        if padded < reach:
            raise ValueError(
                f"{label(op)}: the padded input ({padded} in spatial dim {i}) is smaller than "
                f"the dilated kernel ({reach}) (x {fmt_shape(x.shape)}, weight "
                f"{fmt_shape(weight.shape)})"
            )
        out.append((padded - reach) // stride[i] + 1)
    return [*x.shape[: x.dim() - dims - 1], out_channels, *out]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision x on CPU (oneDNN's half-precision kernels crash, see above),
    else x's dtype."""
    return accumulation_dtype(x.dtype) if x.device.type == "cpu" else x.dtype


def _split_padding(padding: Sequence[int]) -> tuple[list[int], list[int]]:
    """(the symmetric part per dim, F.pad's pairs for the rest, last dim first)."""
    pairs = list(zip(padding[::2], padding[1::2], strict=True))
    symmetric = [min(b, e) for b, e in pairs]
    extra = [side - s for (b, e), s in reversed(list(zip(pairs, symmetric, strict=True)))
             for side in (b, e)]  # fmt: skip
    return symmetric, extra


def _conv_formula(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
                  groups: int) -> Tensor:  # fmt: skip
    """y by ATen's convolution (an unbatched x as a batch of one; asymmetric padding by F.pad)."""
    unbatched = x.dim() == weight.dim() - 1
    x = x.unsqueeze(0) if unbatched else x
    symmetric, extra = _split_padding(padding)
    if any(extra):
        x = F.pad(x, extra)
    if weight.shape[1] == 0:
        # No input channels: y = b (an empty sum), with weight's out channels. ATen returns a
        # y with 0 channels instead; a rank holds such an x when DTensor splits the input
        # channels (the Partial rule below) over more ranks than there are channels.
        x = x.new_zeros(x.shape[0], groups, *x.shape[2:])
        weight = weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])
    dtype, compute = x.dtype, _compute_dtype(x)
    y = torch.ops.aten.convolution(
        x.to(compute), weight.to(compute), None if bias is None else bias.to(compute),
        list(stride), symmetric, list(dilation), False, [0] * len(stride), groups,
    ).to(dtype)  # fmt: skip
    return y.squeeze(0) if unbatched else y


def _conv_backward_formula(grad_y: Tensor, x: Tensor, weight: Tensor, bias_shape, stride,
                           padding, dilation, groups: int, needs: tuple[bool, ...]):  # fmt: skip
    """(dL/dx, dL/dW, dL/db) as derived above, by aten.convolution_backward (differentiable)."""
    unbatched = x.dim() == weight.dim() - 1
    if unbatched:
        x, grad_y = x.unsqueeze(0), grad_y.unsqueeze(0)
    symmetric, extra = _split_padding(padding)
    compute = _compute_dtype(x)
    x_padded = F.pad(x.to(compute), extra) if any(extra) else x.to(compute)
    grads = torch.ops.aten.convolution_backward(
        grad_y.to(compute), x_padded, weight.to(compute), bias_shape, list(stride),
        symmetric, list(dilation), False, [0] * len(stride), groups, list(needs),
    )  # fmt: skip
    grad_x, grad_w, grad_b = (None if t is None else t.to(x.dtype) for t in grads)
    if needs[2] and weight.shape[1] == 0:  # ATen skips an empty x's backward, db included
        grad_b = grad_y.sum([0, *range(2, grad_y.dim())])
    if grad_x is not None and any(extra):  # drop the padding F.pad added
        for i in range(len(stride)):
            begin, end = extra[-2 * i - 2], extra[-2 * i - 1]
            dim = 2 + i
            grad_x = grad_x.narrow(dim, begin, grad_x.shape[dim] - begin - end)
    if grad_x is not None and unbatched:
        grad_x = grad_x.squeeze(0)
    return grad_x, grad_w, grad_b


def _padding_pairs(op: str, dims: int, padding, weight: Tensor, stride, dilation) -> list[int]:
    """The public functions' padding (int, d ints, 2·d ints, "valid" or "same") as the op's
    (begin, end) pairs."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0] * (2 * dims)
        if padding != "same":
            raise ValueError(
                f"{label(op)}: padding must be an int, {dims} ints, 'same' or 'valid', got "
                f"{padding!r}"
            )
        if any(s != 1 for s in stride):
            raise ValueError(f"{label(op)}: padding='same' needs stride 1, got {list(stride)}")
        pairs = []
        for i in range(dims):
            total = dilation[i] * (weight.shape[2 + i] - 1)
            pairs += [total // 2, total - total // 2]  # the odd one at the end, as native
        return pairs
    values = int_list(op, "padding", padding, scalar_count=dims)
    if len(values) == dims:
        return [p for v in values for p in (v, v)]
    return values  # begin/end pairs already (the op checks their number)


def _conv_sharding(dims, x, weight, bias=None, stride=None, padding=None, dilation=None,
                   groups=1):  # fmt: skip
    """DTensor (core/sharding.py), for x [N, C_in, *spatial] (or unbatched [C_in, *spatial]):
    - batch: x Shard(0), weight and bias replicated -> y Shard(0);
    - output channels (groups == 1): weight and bias Shard(0) -> y sharded on its channel dim;
    - input channels (groups == 1): x on its channel dim and weight Shard(1) -> y Partial (each
      rank sums its channels' share of Σ_c; the bias asked as Partial too, so that it is added
      once in the sum, as linear's row-wise split).
    Sharded spatial dims would need each shard's halo of neighbouring rows: not offered."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    channel = x.ndim - dims - 1
    rules = [([Replicate()], replicate(x, weight, bias))]
    if channel == 1:
        rules.append(([Shard(0)], [Shard(0), *replicate(weight, bias)]))
    if groups == 1:
        out_bias = None if bias is None else Shard(0)
        rules.append(([Shard(channel)], [Replicate(), Shard(0), out_bias]))
        in_bias = None if bias is None else Partial()
        rules.append(([Partial()], [Shard(channel), Shard(1), in_bias]))
    return rules


def _make_conv(dims: int):
    """Register customgrad::conv{dims}d and return (op, public function, ONNX translation)."""
    name = f"conv{dims}d"

    def kernel(x, weight, bias=None, stride=(1,) * dims, padding=(0,) * (2 * dims),
               dilation=(1,) * dims, groups=1):  # fmt: skip
        _check_conv(name, dims, x, weight, bias, stride, padding, dilation, groups)
        return _conv_formula(x, weight, bias, stride, padding, dilation, groups)

    def fake(x, weight, bias=None, stride=(1,) * dims, padding=(0,) * (2 * dims),
             dilation=(1,) * dims, groups=1):  # fmt: skip
        _check_conv(name, dims, x, weight, bias, stride, padding, dilation, groups)
        # the same ATen call on fake tensors: its meta function gives native's layout (a
        # channels-last x gives a channels-last y)
        return _conv_formula(x, weight, bias, stride, padding, dilation, groups)

    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, weight, bias, stride, padding, dilation, groups = inputs
        needs_x, needs_w, _ = input_grad_flags(ctx, 3)
        ctx.save_for_backward(x if needs_w else None, weight)
        ctx.x_shape = x.shape
        ctx.bias_shape = None if bias is None else list(bias.shape)
        ctx.options = (list(stride), list(padding), list(dilation), groups)

    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        needs = input_grad_flags(ctx, 3)
        if x is None:  # dL/dx alone does not read x's values, only its shape
            x = grad_y.new_empty(ctx.x_shape)
        grads = _conv_backward_formula(grad_y, x, weight, ctx.bias_shape, *ctx.options, needs)
        return (*grads, None, None, None, None)

    op = define_op(
        name,
        f"(Tensor x, Tensor weight, Tensor? bias=None, int[{dims}] stride=1, "
        f"int[{2 * dims}] padding=0, int[{dims}] dilation=1, int groups=1) -> Tensor",
        kernel=kernel,
        fake=fake,
        setup_context=setup_context,
        backward=backward,
    )

    def vmap_rule(info, in_dims, x, weight, bias=None, stride=(1,) * dims,
                  padding=(0,) * (2 * dims), dilation=(1,) * dims, groups=1):  # fmt: skip
        """A batched x with a shared weight is one bigger batch; a batched weight (or bias) is
        a grouped convolution: B samples' channels side by side, groups B·g."""
        x_dim, w_dim, b_dim = (*in_dims, None, None)[:3]
        batch = info.batch_size
        x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(batch, *x.shape)
        sample_unbatched = x.dim() == dims + 2  # [B, C, *in]: each sample's x was unbatched
        x = x.unsqueeze(1) if sample_unbatched else x  # [B, N, C, *in]
        options = (stride, padding, dilation)
        if w_dim is None and b_dim is None:
            y = op(x.flatten(0, 1), weight, bias, *options, groups).unflatten(0, x.shape[:2])
        else:
            weight = weight.movedim(w_dim, 0) if w_dim is not None else weight.expand(
                batch, *weight.shape)  # fmt: skip
            if bias is not None:
                bias = bias.movedim(b_dim, 0) if b_dim is not None else bias.expand(batch, -1)
                bias = bias.flatten()
            x_grouped = x.transpose(0, 1).flatten(1, 2)  # [N, B·C, *in]
            y = op(x_grouped, weight.flatten(0, 1), bias, *options, batch * groups)
            y = y.unflatten(1, (batch, weight.shape[1])).transpose(0, 1)  # [B, N, O, *out]
        return (y.squeeze(1) if sample_unbatched else y), 0

    register_vmap(op, vmap_rule)

    register_sharding_rule(op, partial(_conv_sharding, dims))
    # Like native convolutions: under autocast, compute in the autocast dtype.
    register_autocast_to_autocast_dtype(op, "cpu")
    register_autocast_to_autocast_dtype(op, "cuda")

    def public(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
               dilation=1, groups: int = 1) -> Tensor:  # fmt: skip
        strides = int_list(name, "stride", stride, scalar_count=dims)
        dilations = int_list(name, "dilation", dilation, scalar_count=dims)
        pads = _padding_pairs(name, dims, padding, weight, strides, dilations)
        return op(x, weight, bias, strides, pads, dilations, groups)

    public.__name__ = public.__qualname__ = name
    public.__doc__ = (
        f"``F.{name}(x, weight, bias, stride, padding, dilation, groups)``; padding also as "
        f"(begin, end) pairs per dim. The gradients are derived in ``opslib/ops/conv.py``."
    )

    def onnx(x, weight, bias=None, stride=(1,) * dims, padding=(0,) * (2 * dims),
             dilation=(1,) * dims, groups=1):  # fmt: skip
        """ONNX translation: one Conv (opset 11 and later), its pads [begins..., ends...]
        (asymmetric allowed); an unbatched x through Unsqueeze/Squeeze. onnxruntime's CPU
        provider has no float64 Conv: parity is checked in float32."""
        import numpy as np
        from onnxscript import ir

        from opslib.onnx import opset

        unbatched = len(x.shape) == dims + 1
        axes = opset.Constant(value=ir.tensor(np.array([0], dtype=np.int64)))
        x = opset.Unsqueeze(x, axes) if unbatched else x
        inputs = (x, weight) if bias is None else (x, weight, bias)
        y = opset.Conv(
            *inputs,
            strides=list(stride),
            pads=list(padding[::2]) + list(padding[1::2]),
            dilations=list(dilation),
            group=groups,
            kernel_shape=list(weight.shape[2:]),
        )
        return opset.Squeeze(y, axes) if unbatched else y

    register_onnx_translation(op, onnx)
    return op, public, onnx


_conv1d, conv1d, conv1d_onnx = _make_conv(1)
_conv2d, conv2d, conv2d_onnx = _make_conv(2)


def native_conv(dims: int, half_in_float32: bool = True):
    """The native reference with the op's arguments: F.conv{d}d, explicit asymmetric padding by
    F.pad first (native convolutions take symmetric padding only). Half precision on CPU runs
    native in float32 and rounds (autograd rounds the gradients): native's own half-precision
    CPU kernels can crash the test process (see the module docstring). ``half_in_float32=False``
    calls those kernels: what the benchmarks time, since that is what a user of F.conv gets."""
    function = F.conv1d if dims == 1 else F.conv2d

    def reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
        if half_in_float32 and _compute_dtype(x) != x.dtype:
            as_float = [None if t is None else t.float() for t in (x, weight, bias)]
            return reference(*as_float, stride, padding, dilation, groups).to(x.dtype)
        if (
            not isinstance(padding, str)
            and not isinstance(padding, int)
            and (len(padding) == 2 * dims)
        ):
            symmetric, extra = _split_padding(padding)
            if any(extra):
                x = F.pad(x, extra)
            padding = symmetric
        return function(x, weight, bias, stride, padding, dilation, groups)

    return reference


def conv_flops(batch: int, channels: int, out_channels: int, spatial: Sequence[int],
               kernel: Sequence[int]) -> float:  # fmt: skip
    """2 · N · O · C · Πk · Πout for a stride-1 "same" convolution (for the benchmarks)."""
    return 2.0 * batch * out_channels * channels * math.prod(kernel) * math.prod(spatial)
