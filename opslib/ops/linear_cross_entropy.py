r"""``customgrad::linear_cross_entropy(Tensor x, Tensor weight, Tensor target, Tensor? bias=None,
int ignore_index=-100, str reduction="mean", float label_smoothing=0.0,
bool grad_x_in_forward=False, bool grad_weight_in_forward=False,
bool grad_bias_in_forward=False) -> (Tensor, Tensor, Tensor, Tensor)``: the cross-entropy of a
linear layer's logits, ``F.cross_entropy(F.linear(x, weight, bias), target, ...)``, that never
holds the ``[N, V]`` logits or their gradient.

x is ``[*, H]`` (hidden states), weight ``[V, H]`` (an output projection, V classes: a
vocabulary), bias ``[V]``, target ``[*]`` class indices. ``opslib.linear_cross_entropy`` returns
the loss alone, as the composite does.

Forward
-------
Over chunks of rows (tokens) of x, each chunk's logits held at once (``CHUNK_ELEMENTS`` of
them, 32 MB in float32, whatever N and V are). For a chunk :math:`x_c` of :math:`n_c` rows:

.. math::

    z = x_c W^\top + b \qquad [n_c, V]\text{, this chunk only}

:math:`\ell_i` is cross_entropy's per-row loss of :math:`z_i` (derived on the
:ref:`cross_entropy <op-cross_entropy>` page). "sum": :math:`L = \sum_i \ell_i`; "mean":
:math:`L = \sum_i \ell_i / (\text{number of targets not ignored})`; "none": :math:`[\ell_i]`.

Backward
--------
With :math:`g = \partial L/\partial L_\text{out}` and :math:`s_i = g`, :math:`g/\text{count}`, or
:math:`g_i` as for cross_entropy:

.. math::

    \mathrm{d}z_i &= s_i \frac{\partial \ell_i}{\partial z_i}
        \qquad \bigl(s_i\,(p_i - \operatorname{onehot}(t_i)) \text{ when unsmoothed, 0 for
        ignored rows}\bigr) \\
    \frac{\partial L}{\partial x_c} &= \mathrm{d}z\, (W^\top)^\top = \mathrm{d}z\, W, \qquad
    \frac{\partial L}{\partial W} = \sum_\text{chunks} \mathrm{d}z^\top x_c, \qquad
    \frac{\partial L}{\partial b} = \sum_\text{chunks} \sum_\text{rows} \mathrm{d}z

A chunk's rows are whole rows of logits, so its softmax, loss and dz are exact at once; no chunk
needs another (the vocabulary is not split, so no running logsumexp across chunks).

Why the gradients are computed in the forward
---------------------------------------------
For "mean" and "sum" the loss is a scalar, so dz for g = 1 is all that backward needs, scaled
by g: computing :math:`\partial L/\partial x`, :math:`\partial L/\partial W`,
:math:`\partial L/\partial b` while each chunk's logits are at hand costs the three matmuls
native makes (forward, dx, dW) instead of four (recomputing the logits in backward would be a
fourth). They are the op's extra outputs (``grad_*_in_forward`` say which: three bools, not a
``bool[]``, which ``torch.jit.trace`` cannot record; the public function asks for those of
inputs that require grad, when grad mode is on and nothing is exporting), saved for backward,
marked non-differentiable. "none" (per-row :math:`g_i`) and calls without them recompute the
chunks in backward: four matmuls, the same memory.

Saved for backward
------------------
x, weight, bias, target (inputs), and the precomputed gradients (the size of x, weight and
bias; eagerly kept on ctx and consumed by the first backward, which scales them in place: no
second W-sized buffer). Native saves x, weight and its ``[N, V]`` log-probabilities.

Double backward
---------------
With ``create_graph=True`` the backward recomputes the loss as
``cross_entropy(linear(x, weight, bias), ...)`` from customgrad's twice-differentiable ops and
differentiates that (it holds the ``[N, V]`` logits: memory is saved on the first-order path
only).

dtypes
------
float16/bfloat16 inputs get float16/bfloat16 logits (as F.linear computes them) and a loss
accumulated in float64 per row; the op returns it in float32 and ``linear_cross_entropy``
rounds it to x's dtype, or keeps float32 under autocast (native's float32 policy for
cross_entropy, after a linear in the autocast dtype: the public function casts x, weight and
bias to it, as autocast does for F.linear).

Kernels
-------
The chunks' matmuls are ATen's (``addmm``, ``mm``); their softmax, loss and dz are
cross_entropy's C++ kernels on CPU (where the gradients are made in the forward, one pass gives
a chunk's losses and writes dz over its logits: one exponential per logit), its torch-op
formula elsewhere (CUDA). No Triton kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.core.checks import (
    check_floating_input,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
    label,
)
from opslib.core.precision import accumulation_dtype
from opslib.core.registration import (
    define_op,
    only_plain_tensors,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import register_sharding_rule, replicate
from opslib.ops.cross_entropy import _backward_formula as _ce_backward_formula
from opslib.ops.cross_entropy import (
    check_cross_entropy,
    check_targets,
    cross_entropy,
    onnx_loss,
    row_losses,
    row_losses_and_gradient_,
)

OP = "linear_cross_entropy"
# Logits held at once: rows per chunk = CHUNK_ELEMENTS // V (at least 1). 8M: at N=4096, H=1024,
# V=32768 the peak above the inputs is 270 MiB against native chunked F.linear_cross_entropy's
# 298 MiB (16M: 368 MiB, 5% faster; benchmarks/peak_memory.py, 2026-12-06).
CHUNK_ELEMENTS = 1 << 23


def _check(x: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None, reduction: str,
           label_smoothing: float) -> None:  # fmt: skip
    check_floating_input(OP, "x", x)
    check_floating_input(OP, "weight", weight)
    if weight.dim() != 2:
        raise ValueError(
            f"{label(OP)}: weight must be 2-D [classes, hidden], got shape "
            f"{fmt_shape(weight.shape)}"
        )
    check_cross_entropy(
        OP, x, target, None, reduction, label_smoothing, weight.shape[0], input_name="x"
    )
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{label(OP)}: x of shape {fmt_shape(x.shape)} must end in weight's hidden size "
            f"{weight.shape[1]}"
        )
    check_same_dtype_and_device(OP, {"x": x, "weight": weight})
    if bias is not None:
        check_floating_input(OP, "bias", bias)
        check_same_dtype_and_device(OP, {"x": x, "bias": bias})
        if list(bias.shape) != [weight.shape[0]]:
            raise ValueError(
                f"{label(OP)}: bias of shape {fmt_shape(bias.shape)} must be "
                f"[{weight.shape[0]}], one per class"
            )


def _loss_dtype(x: Tensor) -> torch.dtype:
    return accumulation_dtype(x.dtype)


def _chunks(rows: int, classes: int, hidden: int) -> list[tuple[int, int]]:
    """Chunks of at most CHUNK_ELEMENTS logits, and of at most ``hidden`` rows (64 at least):
    a chunk's logits and dz are then no larger than W and its gradient, which the loss holds
    anyway. (examples/train_tiny_lm.py, hidden 256, V 8192: 256 rows, 8 MB, where 1024 rows
    made the step's peak 128 MiB against 76; hidden // 4 rows saved a little more memory and
    cost ~5% of the step's time.)"""
    step = max(1, min(CHUNK_ELEMENTS // max(classes, 1), max(hidden, 64)))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _chunked_pass(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ignore_index: int,
    label_smoothing: float,
    scale: Tensor | None,
    wants: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One sweep over chunks of rows of x [n, H]: the per-row losses [n] (float64) and, if
    ``scale`` (s_i, [n] float64) is given, the gradients asked for by ``wants`` (x, W, b)."""
    rows, classes = x.shape[0], weight.shape[0]
    losses = x.new_empty(rows, dtype=torch.float64)
    # dW and db sum over every chunk: in float32 for half types, rounded once at the end
    wide = _loss_dtype(x)
    grad_x = x.new_empty(x.shape) if scale is not None and wants[0] else None
    grad_w = weight.new_zeros(weight.shape, dtype=wide) if scale is not None and wants[1] else None
    grad_b = bias.new_zeros(bias.shape, dtype=wide) if scale is not None and wants[2] else None
    weight_t = weight.t()
    chunks = _chunks(rows, classes, x.shape[1])
    # One buffer holds every chunk's logits in turn (and dz, written over them): a new chunk-
    # sized tensor per chunk came from fresh pages each time (glibc returns blocks this large to
    # the OS when freed), and faulting them in made the logits' matmul ~1.5x slower (the tiny
    # LM's head: 6 ms instead of 4 per 256-row chunk).
    logits = x.new_empty((chunks[0][1] - chunks[0][0], classes)) if chunks else None
    for r0, r1 in chunks:
        x_c, t_c = x[r0:r1], target[r0:r1]
        z = logits[: r1 - r0]
        if bias is not None:
            torch.addmm(bias, x_c, weight_t, out=z)
        else:
            torch.mm(x_c, weight_t, out=z)
        if scale is None:
            losses[r0:r1] = row_losses(z, t_c, ignore_index, label_smoothing)
            continue
        # the losses and dz at once, dz over z where the C++ kernel computes it (the logits are
        # not needed after), one exponential per logit
        losses[r0:r1], dz = row_losses_and_gradient_(scale[r0:r1], z, t_c, ignore_index,
                                                     label_smoothing)  # fmt: skip
        # ignored rows' dz is 0, and so is their every gradient term, even where 0·W or 0·x
        # would be nan (an inf weight or hidden state): the loss does not depend on them
        ignored = t_c == ignore_index
        any_ignored = bool(ignored.any())
        if grad_x is not None:
            torch.mm(dz, weight, out=grad_x[r0:r1])
            if any_ignored:
                grad_x[r0:r1].masked_fill_(ignored.unsqueeze(1), 0)
        if grad_w is not None:
            x_w = x_c.masked_fill(ignored.unsqueeze(1), 0) if any_ignored else x_c
            grad_w.addmm_(dz.t(), x_w) if wide == x.dtype else grad_w.add_(dz.t() @ x_w)
        if grad_b is not None:
            grad_b += dz.sum(0, dtype=wide)
        del dz  # (a new tensor where the torch-op formula made it: freed before the next chunk)
    grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
    grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
    return losses, grad_x, grad_w, grad_b


def _rows_of(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    return x.reshape(-1, x.shape[-1]), target.reshape(-1).long()


def _reduce(losses: Tensor, count: Tensor, reduction: str, target: Tensor, dtype) -> Tensor:
    if reduction == "none":
        return losses.reshape(target.shape).to(dtype)
    total = losses.sum()
    return (total / count if reduction == "mean" else total).to(dtype)


def _empty(x: Tensor) -> Tensor:
    return x.new_empty(0)


def _linear_cross_entropy_kernel(
    x: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    grad_x_in_forward: bool = False,
    grad_weight_in_forward: bool = False,
    grad_bias_in_forward: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(x, weight, target, bias, reduction, label_smoothing)
    check_targets(OP, target, weight.shape[0], ignore_index)
    in_forward = (grad_x_in_forward, grad_weight_in_forward, grad_bias_in_forward)
    wants = _wanted(in_forward, bias, reduction)
    x2, t = _rows_of(x, target)
    count = (t != ignore_index).sum().double()
    scale = None
    if any(wants):  # s_i for g = 1: backward scales by g
        # (no target counted, "mean": 1/0 = inf, times the zero gradient of every ignored row)
        per_row = count.new_ones(()) if reduction == "sum" else 1.0 / count
        scale = per_row.expand(x2.shape[0]).contiguous()
    losses, gx, gw, gb = _chunked_pass(x2, weight, bias, t, ignore_index, label_smoothing,
                                       scale, wants)  # fmt: skip
    loss = _reduce(losses, count, reduction, target, _loss_dtype(x))
    return (
        loss,
        gx.reshape(x.shape) if gx is not None else _empty(x),
        gw if gw is not None else _empty(x),
        gb if gb is not None else _empty(x),
    )


def _wanted(in_forward: tuple[bool, bool, bool], bias: Tensor | None, reduction: str):
    """Which gradients the forward computes (x, weight, bias): those asked for, but none for
    "none" (per-row g is not known yet) and none for an absent bias."""
    if reduction == "none":
        return (False, False, False)
    want_x, want_w, want_b = in_forward
    return (bool(want_x), bool(want_w), bool(want_b) and bias is not None)


def _linear_cross_entropy_fake(
    x: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    grad_x_in_forward: bool = False,
    grad_weight_in_forward: bool = False,
    grad_bias_in_forward: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(x, weight, target, bias, reduction, label_smoothing)
    in_forward = (grad_x_in_forward, grad_weight_in_forward, grad_bias_in_forward)
    wants = _wanted(in_forward, bias, reduction)
    loss = x.new_empty(target.shape if reduction == "none" else (), dtype=_loss_dtype(x))
    # contiguous, as the kernel makes them (new_zeros), whatever the layout of weight and bias
    # (empty_like would keep a transposed weight's strides: a tied or transposed LM head)
    return (
        loss,
        x.new_empty(x.shape) if wants[0] else _empty(x),
        weight.new_empty(weight.shape) if wants[1] else _empty(x),
        bias.new_empty(bias.shape) if wants[2] else _empty(x),
    )


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, weight, target, bias, ignore_index, reduction, label_smoothing, *in_forward = (
        *inputs, None, -100, "mean", 0.0, False, False, False,
    )[:10]  # fmt: skip
    ctx.args = (ignore_index, reduction, label_smoothing)
    ctx.precomputed = _wanted(tuple(in_forward), bias, reduction)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero [V, H] gradient for the unused extra outputs
    # Eagerly, the precomputed gradients are kept on ctx, not saved, so that the first backward
    # can scale them in place and hand them to autograd without a copy (a saved tensor must
    # stay unmodified): one W-sized buffer, not two. (No reference cycle: non-differentiable
    # outputs have no grad_fn.) Traced (compile, export), they are saved like any tensor.
    ctx.buffers = list(output[1:]) if only_plain_tensors(output[1:]) else None
    ctx.save_for_backward(x, weight, target, bias, *(() if ctx.buffers else output[1:]))


def _backward_formula(grad_loss, x, weight, target, bias, ignore_index, reduction,
                      label_smoothing, needs):  # fmt: skip
    """The gradients from the whole [N, V] logits in differentiable torch ops: for double
    backward and for compile/export tracing (a traced chunk loop would specialise on N)."""
    x2, t = x.reshape(-1, x.shape[-1]), target.reshape(-1)
    z = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
    g = grad_loss.reshape(-1) if reduction == "none" else grad_loss
    if reduction == "mean":
        g = g / (t != ignore_index).sum()
    dz = _ce_backward_formula(g.expand(t.shape), z, t, None, ignore_index, "none",
                              label_smoothing)  # fmt: skip
    counted = (t != ignore_index).unsqueeze(1)  # ignored rows: no term at all (see _chunked_pass)
    gx = (dz @ weight).where(counted, 0).reshape(x.shape) if needs[0] else None
    gw = dz.t() @ x2.where(counted, 0) if needs[1] else None
    gb = dz.sum(0) if needs[2] else None
    return gx, gw, gb


def _precomputed_gradients(ctx, grad_loss: Tensor, saved: tuple, needs) -> list:
    """The forward's gradients (for g = 1) times g. Eagerly they are consumed: scaled in place
    and handed over, once; a later backward of the same graph (``retain_graph=True``) then
    recomputes (ctx.precomputed is cleared)."""
    if ctx.buffers is None:  # traced: saved tensors, left as they are
        g = grad_loss.to(saved[0].dtype)
        return [t * g if n else None for t, n in zip(saved, needs, strict=True)]
    buffers, ctx.buffers, ctx.precomputed = ctx.buffers, None, (False, False, False)
    scale_by_one = bool(grad_loss == 1)
    for t, n in zip(buffers, needs, strict=True):
        if n and not scale_by_one:
            t.mul_(grad_loss.to(t.dtype))
    return [t if n else None for t, n in zip(buffers, needs, strict=True)]


def _backward(ctx, grad_loss: Tensor, *_unused: Tensor):
    x, weight, target, bias, *saved_grads = ctx.saved_tensors
    if grad_loss is None:  # not materialised (set_materialize_grads(False)): a zero gradient
        return (None,) * 10
    ignore_index, reduction, label_smoothing = ctx.args
    flags = input_grad_flags(ctx, 4)
    needs = (flags[0], flags[1], flags[3] and bias is not None)
    precomputed = all(p or not n for p, n in zip(ctx.precomputed, needs, strict=True))
    if precomputed and not torch.is_grad_enabled():  # a scalar g: the forward's, times g
        gx, gw, gb = _precomputed_gradients(ctx, grad_loss, tuple(saved_grads), needs)
    elif torch.is_grad_enabled() or not only_plain_tensors((x, grad_loss)):
        gx, gw, gb = _backward_formula(grad_loss, x, weight, target, bias, *ctx.args, needs)
    else:  # recompute the chunks with each row's own scale (reduction "none")
        x2, t = _rows_of(x, target)
        g = grad_loss.double().reshape(-1) if reduction == "none" else grad_loss.double()
        if reduction == "mean":
            g = g / (t != ignore_index).sum()
        scale = g.expand(t.shape[0]).contiguous()
        _, gx, gw, gb = _chunked_pass(x2, weight, bias, t, ignore_index, label_smoothing,
                                      scale, needs)  # fmt: skip
        gx = gx.reshape(x.shape) if gx is not None else None
    return gx, gw, None, gb, *(None,) * 6


_linear_cross_entropy = define_op(
    OP,
    "(Tensor x, Tensor weight, Tensor target, Tensor? bias=None, int ignore_index=-100, "
    'str reduction="mean", float label_smoothing=0.0, bool grad_x_in_forward=False, '
    "bool grad_weight_in_forward=False, bool grad_bias_in_forward=False) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    kernel=_linear_cross_entropy_kernel,
    fake=_linear_cross_entropy_fake,
    setup_context=_setup_context,
    backward=_backward,
)


def _vmap(info, in_dims, x, weight, target, bias=None, ignore_index=-100, reduction="mean",
          label_smoothing=0.0, *_in_forward: bool):  # fmt: skip
    """Batch dims to the front. One weight and bias for every sample: the op runs once on the
    whole batch ([B, *, H] is a valid x) with reduction "none", and each sample's losses are
    reduced on their own. A batched weight or bias: a batched matmul, then cross_entropy."""
    x_dim, w_dim, t_dim, b_dim = (*in_dims, None, None, None, None)[:4]
    batch = info.batch_size

    def front(t, dim):
        return t.movedim(dim, 0) if dim is not None else t.expand(batch, *t.shape)

    x, target = front(x, x_dim), front(target, t_dim)
    sample_dims = tuple(range(1, target.dim()))
    valid = (target != ignore_index).to(_loss_dtype(x))
    if w_dim is None and b_dim is None:
        losses = _linear_cross_entropy(x, weight, target, bias, ignore_index, "none",
                                       label_smoothing)[0]  # fmt: skip
    else:
        x3 = x.reshape(batch, -1, x.shape[-1])
        w = front(weight, w_dim)
        logits = torch.bmm(x3, w.transpose(1, 2))
        if bias is not None:
            logits = logits + front(bias, b_dim).unsqueeze(1)
        losses = cross_entropy(logits.transpose(1, 2), target.reshape(batch, -1), None,
                               ignore_index, "none", label_smoothing)  # fmt: skip
        losses = losses.reshape(target.shape).to(_loss_dtype(x))
    if reduction != "none":
        total = losses.sum(sample_dims) if sample_dims else losses
        if reduction == "mean":
            total = total / (valid.sum(sample_dims) if sample_dims else valid)
        losses = total
    empty = _empty(x)  # the op's gradient outputs: none are computed under vmap
    return (losses, empty, empty.clone(), empty.clone()), (0, None, None, None)


register_vmap(_linear_cross_entropy, _vmap)


def _sharding(x, weight, target, bias=None, ignore_index=-100, reduction="mean",
              label_smoothing=0.0, *in_forward: bool):  # fmt: skip
    """DTensor (core/sharding.py). Sharded tokens (x and target split along a leading dim, the
    weight and bias replicated): for "none" each rank's losses are its tokens', for "sum" a
    partial sum, and the forward's gradients are each rank's tokens' (dL/dx sharded like x,
    dL/dW and dL/db partial sums). "mean": only replicated, as cross_entropy. A sharded
    vocabulary (weight Shard(0)) would need the logsumexp reduced across ranks: not offered."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    want_x, want_w, want_b = _wanted((*in_forward, False, False, False)[:3], bias, reduction)
    rules = [([Replicate()] * 4, replicate(x, weight, target, bias))]
    if reduction == "mean":
        return rules
    for d in range(x.ndim - 1):
        outputs = [
            Shard(d) if reduction == "none" else Partial(),
            Shard(d) if want_x else Replicate(),
            Partial() if want_w else Replicate(),
            Partial() if want_b else Replicate(),
        ]
        rules.append((outputs, [Shard(d), Replicate(), Shard(d), replicate(bias)[0]]))
    return rules


register_sharding_rule(_linear_cross_entropy, _sharding)


def linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``F.cross_entropy(F.linear(x, weight, bias), target, ignore_index=..., reduction=...,
    label_smoothing=...)`` for x ``[*, H]`` and target ``[*]``, computed over chunks of rows so
    that neither the forward nor the backward holds the [N, V] logits (see
    ``opslib/ops/linear_cross_entropy.py``)."""
    device_type = x.device.type if isinstance(x, Tensor) else "cpu"  # the op says what x is
    # (a device without autocast, meta say, makes is_autocast_enabled raise: the op then says
    # what is wrong with the call)
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(
        device_type
    )
    if autocast:  # as autocast runs F.linear: in the autocast dtype
        low = torch.get_autocast_dtype(device_type)
        x, weight = x.to(low), weight.to(low)
        bias = bias.to(low) if bias is not None else None
    in_forward = [False] * 3
    # not while exporting or tracing: the graph would fix the choice for every later call
    # (the backward then recomputes the chunks: four matmuls instead of three, same memory)
    if torch.is_grad_enabled() and not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
        in_forward = [isinstance(t, Tensor) and t.requires_grad for t in (x, weight, bias)]
    loss = _linear_cross_entropy(
        x, weight, target, bias, ignore_index, reduction, float(label_smoothing), *in_forward
    )[0]
    return loss if autocast else loss.to(x.dtype)  # float32 for half types: their dtype


def linear_cross_entropy_onnx(x, weight, target, bias=None, ignore_index: int = -100,
                              reduction: str = "mean", label_smoothing: float = 0.0,
                              *_in_forward: bool):  # fmt: skip
    """ONNX translation: MatMul(x, Transpose(W)) (+ Add(b)), then cross_entropy's decomposition
    with the classes along the last axis (an inference graph holds the logits: ONNX has no
    chunked loop worth its cost here). The op's gradient outputs are empty in an inference
    graph: empty constants."""
    import numpy as np
    from onnxscript import ir

    from opslib.onnx import opset

    logits = opset.MatMul(x, opset.Transpose(weight, perm=[1, 0]))
    if bias is not None:
        logits = opset.Add(logits, bias)
    axis = len(x.shape) - 1
    loss = onnx_loss(logits, target, None, ignore_index, reduction, label_smoothing, axis,
                     num_classes=weight.shape[0], like=x)  # fmt: skip
    if x.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):  # the op's loss: float32
        loss = opset.Cast(loss, to=ir.DataType.FLOAT)
    empty = opset.CastLike(opset.Constant(value=ir.tensor(np.zeros(0, dtype=np.float32))), x)
    return loss, empty, opset.Identity(empty), opset.Identity(empty)


def native_linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100,
                                reduction="mean", label_smoothing=0.0) -> Tensor:  # fmt: skip
    """The composite it replaces: what the op table and benchmarks compare it with."""
    return F.cross_entropy(
        F.linear(x, weight, bias).reshape(-1, weight.shape[0]), target.reshape(-1),
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
    ).reshape(target.shape if reduction == "none" else ())  # fmt: skip


register_onnx_translation(_linear_cross_entropy, linear_cross_entropy_onnx)
