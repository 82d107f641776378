r"""``opslib.batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
momentum=0.1, eps=1e-5)``: batch normalisation (Ioffe & Szegedy, 2015), as ``F.batch_norm``,
made of two ops, because ``register_autograd`` refuses an op that mutates its inputs:

- ``customgrad::batch_norm(Tensor x, Tensor? running_mean, Tensor? running_var,
  Tensor? weight=None, Tensor? bias=None, bool training=False, float momentum=0.1,
  float eps=1e-05) -> (Tensor y, Tensor mean, Tensor invstd, Tensor var)``, functional, with
  autograd: the normalised output, and in training the batch's per-channel mean and
  1/sqrt(var + eps) (what ATen's ``native_batch_norm`` returns) and its unbiased variance
  (empty in eval);
- ``customgrad::batch_norm_update_(Tensor(a!) running_mean, Tensor(b!) running_var,
  Tensor mean, Tensor var, float momentum) -> ()``, which updates the running statistics in
  place from them, as native does in training (no autograd: buffers).

``opslib.batch_norm`` calls the first and, in training with running statistics, the second, and
returns y. Under torch.compile the update is functionalised like any mutating op and inductor
writes the buffers back in place; torch.export records it as a buffer mutation.

x is ``[N, C]`` or ``[N, C, *]`` (BatchNorm1d/2d/3d); channel c's statistics are over every
element of dim 1's slice c: :math:`M = N \cdot \prod \text{spatial}` elements.

Forward
-------
One channel :math:`x_1 \dots x_M`; weight w and bias b, or 1 and 0. In training, the batch's
statistics; in eval, :math:`\mu, \sigma^2 = \text{running\_mean}_c, \text{running\_var}_c`:

.. math::

    \text{training:}\quad \mu = \frac1M \sum_k x_k, \qquad
        \sigma^2 = \frac1M \sum_k (x_k - \mu)^2 \\
    r = \frac{1}{\sqrt{\sigma^2 + \varepsilon}}, \qquad
    \hat x_k = (x_k - \mu)\, r, \qquad y_k = \hat x_k\, w + b

Running statistics
------------------
In training, native's rule (the variance unbiased, :math:`M/(M-1)`), with momentum
:math:`\alpha`:

.. math::

    \text{running\_mean} &\leftarrow (1 - \alpha)\,\text{running\_mean} + \alpha\,\mu \\
    \text{running\_var} &\leftarrow (1 - \alpha)\,\text{running\_var}
        + \alpha\,\sigma^2 \frac{M}{M - 1}

Backward
--------
With :math:`g = \partial L/\partial y` and :math:`u_k = w g_k`. In training, μ and σ² depend
on every :math:`x_k` of the channel, exactly as layer_norm's row statistics do on the row
(derived on the :ref:`layer_norm <op-layer_norm>` page); in eval they are constants:

.. math::

    \text{training:}\quad \frac{\partial L}{\partial x_k} &= r\Bigl(u_k - \frac1M \sum_j u_j
        - \hat x_k\, \frac1M \sum_j u_j \hat x_j\Bigr) \\
    \text{eval:}\quad \frac{\partial L}{\partial x_k} &= r\, u_k \\
    \text{both, per channel:}\quad \frac{\partial L}{\partial w} &= \sum_k g_k \hat x_k, \qquad
        \frac{\partial L}{\partial b} = \sum_k g_k

The running statistics get no gradient (native refuses ones that require grad; so does this
op).

Saved for backward
------------------
x, weight, and the statistics used (``[C]``: the batch's mean and 1/sqrt(var + eps) in
training, the running ones in eval): what native saves.

Kernels
-------
The forward is ATen's ``native_batch_norm`` (native's own fused kernel: in training the mean,
then the squared deviations from it, accumulated in double on CPU, and y; a hand-written
torch-op version, ``var_mean`` over dims (0, 2, ...) and then the normalisation, measured 4.4x
native's time at ``[4096, 4096]``). The unbiased variance comes from the same kernel: given
zeroed running statistics and momentum 1 it writes the batch's mean and unbiased variance into
them, computed in double, rounded once. (Not :math:`\text{invstd}^{-2} - \varepsilon`: that
cancels when the variance is small next to eps: 0.4% off at var = 1.4e-10 in float32.) A
first-order backward is ATen's ``native_batch_norm_backward``, the formula above in one kernel.
``create_graph=True`` takes ``_backward_formula``, the same math in differentiable torch ops
(the statistics recomputed from x, so their dependence on x is differentiated again).
float16/bfloat16 x: statistics in float32, as native (weight, bias and the running statistics
then join in float32: ATen's mixed-precision rule).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from opslib.core.checks import (
    check_floating_input,
    check_same_device,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
    label,
)
from opslib.core.precision import HALF_DTYPES, accumulation_dtype
from opslib.core.registration import (
    define_mutating_op,
    define_op,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import other_dims, register_sharding_rule, replicate

OP = "batch_norm"


def _check(x, running_mean, running_var, weight, bias, training, momentum, eps) -> None:
    check_floating_input(OP, "x", x)
    if x.dim() < 2:
        raise ValueError(
            f"{label(OP)}: x must be [N, C] or [N, C, *] (channels in dim 1), got shape "
            f"{fmt_shape(x.shape)}"
        )
    channels = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):  # fmt: skip
        if t is None:
            continue
        check_floating_input(OP, name, t)
        # x's dtype, or float32 beside a float16/bfloat16 x (native's mixed precision)
        if t.dtype == torch.float32 and x.dtype in HALF_DTYPES:
            check_same_device(OP, {"x": x, name: t})
        else:
            check_same_dtype_and_device(OP, {"x": x, name: t})
        if list(t.shape) != [channels]:
            raise ValueError(
                f"{label(OP)}: {name} of shape {fmt_shape(t.shape)} must be [{channels}], "
                f"one per channel of x (dim 1)"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            f"{label(OP)}: running_mean and running_var go together: give both or neither"
        )
    if not training and running_mean is None:
        raise ValueError(
            f"{label(OP)}: running_mean and running_var must be given in evaluation mode "
            f"(training=False normalises with them)"
        )
    if training and x.numel() // max(channels, 1) <= 1 and x.numel() > 0:
        raise ValueError(
            f"{label(OP)}: training needs more than one value per channel to compute a batch "
            f"variance, got x of shape {fmt_shape(x.shape)}"
        )
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{label(OP)}: eps must be finite and >= 0, got {eps}")
    if not math.isfinite(momentum):
        raise ValueError(f"{label(OP)}: momentum must be finite, got {momentum}")


def _reduced_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _stats_dtype(x: Tensor) -> torch.dtype:
    return accumulation_dtype(x.dtype)


def _params_dtype(x: Tensor, *tensors: Tensor | None) -> torch.dtype:
    """x's dtype, or float32 if x is float16/bfloat16 and any of ``tensors`` is float32."""
    if x.dtype in HALF_DTYPES and any(t is not None and t.dtype == torch.float32 for t in tensors):
        return torch.float32
    return x.dtype


def _params(x: Tensor, *tensors: Tensor | None) -> list[Tensor | None]:
    """weight, bias and statistics as native_batch_norm requires them: in one dtype
    (``_params_dtype``), and contiguous (see ``_forward``)."""
    dtype = _params_dtype(x, *tensors)
    return [t.to(dtype).contiguous() if t is not None else None for t in tensors]


def _forward(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """(y, mean, invstd, var): ATen's native_batch_norm, which in training computes the batch's
    statistics and y in its fused kernel (the mean and the variance in two sweeps, accumulated
    in double on CPU), returns the mean and 1/sqrt(var + eps) it used, and writes the mean and
    the unbiased variance into the zeroed statistics it is given (momentum 1). In eval: the
    running statistics, and empty outputs.

    Every per-channel tensor is handed over contiguous: ATen's CPU backward misreads strided
    running statistics for inputs of spatial size 1 ([N, C], [N, C, 1]: gradients of 1e2 to
    1e34, different on every run; native F.batch_norm returns them too)."""
    if training and x.numel() == 0:
        # No values, no statistics: native F.batch_norm returns the empty y (ATen's batch_norm
        # skips the kernel, which refuses an empty input) and updates nothing. Such an x is
        # also what a rank holds when DTensor splits fewer channels than there are ranks.
        stats = x.new_zeros(x.shape[1] if x.dim() > 1 else 0, dtype=_stats_dtype(x))
        return torch.empty_like(x), stats, stats.clone(), stats.clone()
    w, b, m, v = _params(x, weight, bias, running_mean, running_var)
    if training:
        params_dtype = _params_dtype(x, weight, bias, running_mean, running_var)
        batch_mean = x.new_zeros(x.shape[1], dtype=params_dtype)
        batch_var = x.new_zeros(x.shape[1], dtype=params_dtype)
        y, mean, invstd = torch.ops.aten.native_batch_norm(
            x, w, b, batch_mean, batch_var, True, 1.0, eps
        )
        var = batch_var.to(_stats_dtype(x))
    else:
        y = torch.ops.aten.native_batch_norm(x, w, b, m, v, False, 0.0, eps)[0]
        mean, invstd, var = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    # ATen's CPU kernel and its meta function lay out the output of a non-dense x differently;
    # both become x's suggested layout (channels-last stays channels-last)
    y = y.contiguous(memory_format=torch._prims_common.suggest_memory_format(x))
    return y, mean, invstd, var


def _batch_norm_kernel(x, running_mean, running_var, weight=None, bias=None, training=False,
                       momentum=0.1, eps=1e-5):  # fmt: skip
    _check(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return _forward(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _batch_norm_fake(x, running_mean, running_var, weight=None, bias=None, training=False,
                     momentum=0.1, eps=1e-5):  # fmt: skip
    _check(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return _forward(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, running_mean, running_var, weight, bias, training, momentum, eps = (
        *inputs, None, None, False, 0.1, 1e-5,
    )[:8]  # fmt: skip
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{label(OP)}: {name} requires grad, but running statistics get no gradient "
                f"(native F.batch_norm refuses the same); pass a buffer"
            )
    _, mean, invstd, var = output
    ctx.training, ctx.eps, ctx.has_bias = training, eps, bias is not None
    ctx.mark_non_differentiable(mean, invstd, var)
    ctx.set_materialize_grads(False)
    # training: the batch's mean and 1/sqrt(var + eps), as native saves; eval: the running ones
    used = (mean, invstd) if training else (running_mean, running_var)
    ctx.save_for_backward(x, weight, *used)


def _backward_formula(grad_y, x, weight, running_mean, running_var, training, eps, needs):
    """dL/dx, dL/dw, dL/db as derived above, in differentiable torch ops: in training the
    statistics are recomputed from x (``torch.var_mean``: one Welford pass), so that a second
    differentiation sees them depend on x; in eval they are the running ones."""
    dims = _reduced_dims(x)
    shape = [1, -1] + [1] * (x.dim() - 2)  # a [C] tensor against x
    wide = _stats_dtype(x)
    g, xw = grad_y.to(wide), x.to(wide)
    if training:
        var, mean = torch.var_mean(xw, dims, correction=0)
    else:
        mean, var = running_mean, running_var
    r = torch.rsqrt(var.to(wide) + eps).reshape(shape)
    x_hat = (xw - mean.to(wide).reshape(shape)) * r
    u = g * weight.to(wide).reshape(shape) if weight is not None else g
    if training:
        grad_x = r * (u - u.mean(dims, keepdim=True) - x_hat * (u * x_hat).mean(dims, keepdim=True))
    else:
        grad_x = r * u
    grad_w = (g * x_hat).sum(dims).to(weight.dtype) if needs[1] else None
    grad_b = g.sum(dims) if needs[2] else None
    return grad_x.to(x.dtype) if needs[0] else None, grad_w, grad_b


def _backward(ctx, grad_y: Tensor | None, *_stats_grads: Tensor | None):
    x, weight, stat_a, stat_b = ctx.saved_tensors  # (mean, invstd) or (running mean, var)
    if grad_y is None:
        return (None,) * 8
    flags = input_grad_flags(ctx, 5)
    needs = (flags[0], flags[3] and weight is not None, flags[4] and ctx.has_bias)
    # create_graph=True: the differentiable formula; so for an empty x, which ATen's kernel
    # (dividing by its zero elements) does not take
    if torch.is_grad_enabled() or x.numel() == 0:
        running = (None, None) if ctx.training else (stat_a, stat_b)
        gx, gw, gb = _backward_formula(grad_y, x, weight, *running, ctx.training, ctx.eps, needs)
    else:
        if ctx.training:
            (w,) = _params(x, weight)
            running, saved = (None, None), (stat_a, stat_b)
        else:
            w, m, v = _params(x, weight, stat_a, stat_b)
            running, saved = (m, v), (None, None)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, w, *running, *saved, ctx.training, ctx.eps, list(needs)
        )
        gw = gw.to(weight.dtype) if gw is not None else None
    if gb is not None:
        gb = gb.to(x.dtype if weight is None else weight.dtype)
    return gx, None, None, gw, gb, None, None, None


_batch_norm = define_op(
    OP,
    "(Tensor x, Tensor? running_mean, Tensor? running_var, Tensor? weight=None, "
    "Tensor? bias=None, bool training=False, float momentum=0.1, float eps=1e-05) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    kernel=_batch_norm_kernel,
    fake=_batch_norm_fake,
    setup_context=_setup_context,
    backward=_backward,
)


def _check_update(running_mean, running_var, mean, var, momentum) -> None:
    op = "batch_norm_update_"
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("mean", mean), ("var", var)):  # fmt: skip
        check_floating_input(op, name, t)
        if t.shape != running_mean.shape or t.dim() != 1 or t.device != running_mean.device:
            raise ValueError(
                f"{label(op)}: {name} of shape {fmt_shape(t.shape)} on {t.device} must be like "
                f"running_mean, one value per channel ({fmt_shape(running_mean.shape)} on "
                f"{running_mean.device})"
            )
    if not math.isfinite(momentum):
        raise ValueError(f"{label(op)}: momentum must be finite, got {momentum}")


def _update_kernel(running_mean, running_var, mean, var, momentum) -> None:
    """In float64, as native's CPU kernel updates them (its accumulation type), rounded once."""
    _check_update(running_mean, running_var, mean, var, momentum)
    running_mean.copy_(momentum * mean.double() + (1 - momentum) * running_mean.double())
    running_var.copy_(momentum * var.double() + (1 - momentum) * running_var.double())


def _update_fake(running_mean, running_var, mean, var, momentum) -> None:
    _check_update(running_mean, running_var, mean, var, momentum)


_batch_norm_update = define_mutating_op(
    "batch_norm_update_",
    "(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
    "float momentum) -> ()",
    kernel=_update_kernel,
    fake=_update_fake,
)


def batch_norm_update_(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                       momentum: float) -> None:  # fmt: skip
    """running ← (1 - momentum)·running + momentum·batch, in place, from the batch's mean and
    unbiased variance."""
    _batch_norm_update(running_mean, running_var, mean, var, momentum)


def _vmap(info, in_dims, x, running_mean, running_var, weight=None, bias=None, training=False,
          momentum=0.1, eps=1e-5):  # fmt: skip
    """Per-sample batch norm: B samples of [N, C, *] are one [N, B·C, *] call (each sample's
    channel its own channel), with weight, bias and running statistics repeated or
    flattened to B·C. Running statistics cannot be updated per sample in place (native's vmap
    refuses the same): a training call with them is refused."""
    x_dim, rm_dim, rv_dim, w_dim, b_dim = (*in_dims, None, None, None, None, None)[:5]
    batch = info.batch_size
    if training and running_mean is not None:
        raise RuntimeError(
            f"{label(OP)}: vmap cannot update running statistics in place per sample (native "
            f"F.batch_norm under vmap refuses the same); use training=False or no running "
            f"statistics"
        )
    x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(batch, *x.shape)
    n, c = x.shape[1], x.shape[2]
    if not training and all(d is None for d in (rm_dim, rv_dim, w_dim, b_dim)):
        # eval with shared statistics is per channel and element: [B, N, C, *] is the call
        # [B, C, N, *] (the sample's N a spatial dim)
        y, *stats = _batch_norm(
            x.movedim(2, 1), running_mean, running_var, weight, bias, training, momentum, eps
        )
        return (y.movedim(1, 2), *stats), (0, None, None, None)
    merged = x.movedim(0, 1).reshape(n, batch * c, *x.shape[3:])

    def per_channel(t, dim):
        if t is None:
            return None
        t = t.movedim(dim, 0) if dim is not None else t.expand(batch, c)
        return t.reshape(batch * c)

    args = [per_channel(t, d) for t, d in ((running_mean, rm_dim), (running_var, rv_dim),
                                           (weight, w_dim), (bias, b_dim))]  # fmt: skip
    y, *stats = _batch_norm(merged, *args, training, momentum, eps)
    y = y.reshape(n, batch, c, *x.shape[3:]).movedim(1, 0)
    stats = [t.reshape(batch, c) if training else t for t in stats]
    return (y, *stats), (0, *[0 if training else None] * 3)


register_vmap(_batch_norm, _vmap)


def _sharding(x, running_mean, running_var, weight=None, bias=None, training=False,
              momentum=0.1, eps=1e-5):  # fmt: skip
    """DTensor (core/sharding.py). Sharded channels (x Shard(1), every [C] tensor Shard(0)):
    each channel's statistics are whole on one rank, in training and eval. Sharded batch or
    spatial dims: only in eval, where the statistics are the running ones; in training each
    rank would normalise with its own slice's mean (SyncBatchNorm's job), so DTensor gathers x
    first. (Under DDP the model sees plain local tensors: each rank's batch statistics, as
    torch.nn.BatchNorm under DDP.)"""
    from torch.distributed.tensor import Replicate, Shard

    per_channel = (running_mean, running_var, weight, bias)
    stats = [Replicate()] * 3  # the batch's mean, invstd and variance, or empty in eval
    rules = [([Replicate(), *stats], [Replicate(), *replicate(*per_channel)])]
    if x.ndim >= 2:
        channel = [None if t is None else Shard(0) for t in per_channel]
        rules.append(([Shard(1), *([Shard(0)] * 3 if training else stats)], [Shard(1), *channel]))
    if not training:
        for d in other_dims(x.ndim, 1):
            rules.append(([Shard(d), *stats], [Shard(d), *replicate(*per_channel)]))
    return rules


def _update_sharding(running_mean, running_var, mean, var, momentum):
    """Per channel: the four [C] tensors sharded alike, or replicated."""
    from torch.distributed.tensor import Replicate, Shard

    return [([], [Replicate()] * 4), ([], [Shard(0)] * 4)]


register_sharding_rule(_batch_norm, _sharding)
register_sharding_rule(_batch_norm_update, _update_sharding)


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``:
    in training, the running statistics are updated in place, as native does; the gradient is
    written out in ``opslib/ops/batch_norm.py``."""
    eps = float(eps)
    y, mean, _, var = _batch_norm(
        x, running_mean, running_var, weight, bias, training, float(momentum), eps
    )
    if training and running_mean is not None and x.numel() > 0:
        # no torch.no_grad() needed (mean and var are non-differentiable outputs, buffers do
        # not require grad), and none wanted: export records a plain call as a buffer mutation
        _batch_norm_update(running_mean, running_var, mean, var, float(momentum))
    return y


def batch_norm_onnx(x, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5):  # fmt: skip
    """ONNX translation: BatchNormalization in inference mode (opset 15 and later), with the
    running statistics as its mean and var. Its ``epsilon`` attribute is a float32: with eps =
    1e-4 that shifts a float64 model's outputs by ~2e-11 (measured), so float64 models get the
    same formula in Sub/Div/Sqrt/Mul/Add instead, with eps a float64 constant (parity ~1e-16).
    Training mode is refused: an inference graph does not update running statistics (export
    ``model.eval()``)."""
    import numpy as np
    from onnxscript import ir

    from opslib.onnx import constant, opset

    if training:
        raise ValueError(
            f"{label(OP)}: ONNX export needs evaluation mode (model.eval(), training=False): "
            f"training-mode batch norm normalises with batch statistics and updates the "
            f"running ones, which an inference graph does not do"
        )
    channels = running_mean.shape[0]
    if x.dtype == ir.DataType.DOUBLE:  # exact eps: y = (x - mean) / sqrt(var + eps) · w + b
        shape = opset.Constant(value=ir.tensor(np.array([1, -1] + [1] * (len(x.shape) - 2),
                                                        dtype=np.int64)))  # fmt: skip
        std = opset.Sqrt(opset.Add(running_var, constant(eps, x)))
        y = opset.Div(opset.Sub(x, opset.Reshape(running_mean, shape)), opset.Reshape(std, shape))
        y = opset.Mul(y, opset.Reshape(weight, shape)) if weight is not None else y
        y = opset.Add(y, opset.Reshape(bias, shape)) if bias is not None else y
    else:
        dtype = running_mean.dtype.numpy()
        if weight is None:
            weight = opset.Constant(value=ir.tensor(np.ones(channels, dtype=dtype)))
        if bias is None:
            bias = opset.Constant(value=ir.tensor(np.zeros(channels, dtype=dtype)))
        y = opset.BatchNormalization(x, weight, bias, running_mean, running_var, epsilon=eps)
    empty = opset.CastLike(opset.Constant(value=ir.tensor(np.zeros(0, dtype=np.float32))), x)
    return y, empty, opset.Identity(empty), opset.Identity(empty)


def batch_norm_update_onnx(running_mean, running_var, mean, var, momentum: float):
    """No ONNX translation: an inference graph does not update running statistics. A model
    exported in training mode reaches this, and gets the error batch_norm_onnx gives."""
    batch_norm_onnx(None, running_mean, running_var, training=True)


register_onnx_translation(_batch_norm, batch_norm_onnx)
register_onnx_translation(_batch_norm_update, batch_norm_update_onnx)
