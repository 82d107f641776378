r"""``customgrad::cross_entropy(Tensor input, Tensor target, Tensor? weight=None,
int ignore_index=-100, str reduction="mean", float label_smoothing=0.0) -> Tensor``: the
softmax cross-entropy of class-index targets, as ``F.cross_entropy``.

input is ``[N, C]``, ``[C]`` (one sample) or ``[N, C, d1, ...]`` (a class score per position);
target holds one class index per sample (per position): ``[N]``, ``[]``, ``[N, d1, ...]``, in
any integer dtype. (Native takes int64 and uint8 only, "expected target dtype to be Long or
Byte": its kernels are written for those two. A class index means the same in int8, int16 or
int32, and the loss is the same exact value, so this op takes them: a deliberate superset,
tested against native on the int64 copy. bool, floating-point and complex targets are refused.)
weight ``[C]`` rescales each class; a target equal to ``ignore_index`` contributes nothing.

Forward
-------
Per sample i with logits :math:`x_{i1} \dots x_{iC}`, target t, label smoothing ε, and
:math:`m = \max_c x_{ic}` (no overflow); p is the softmax of the row:

.. math::

    \operatorname{lse}_i &= \log \sum_c e^{x_{ic}} = m + \log \sum_c e^{x_{ic} - m} \\
    -\log p_{ic} &= \operatorname{lse}_i - x_{ic} \\
    \ell_i &= (1 - \varepsilon)\, w_t\, (\operatorname{lse}_i - x_{it})
        + \frac{\varepsilon}{C} \sum_c w_c\, (\operatorname{lse}_i - x_{ic})

with :math:`w \equiv 1` without weight; :math:`\ell_i = 0` and :math:`w_t` counts as 0 where
t = ignore_index. The smoothed target is :math:`(1 - \varepsilon)\operatorname{onehot}(t) +
\varepsilon/C` for every class, and :math:`\ell_i` its cross-entropy against p (with class
weights as native applies them: :math:`w_t` on the one-hot part, :math:`w_c` on the uniform
part). Reduction "none": :math:`[\ell_i]`; "sum": :math:`\sum_i \ell_i`; "mean":
:math:`\sum_i \ell_i / \sum_i w_{t_i}` (native's weighted mean; nan when every target is
ignored, as native).

Backward
--------
With :math:`g = \partial L/\partial(\text{result})` and :math:`s_i = g_i`, :math:`g`, or
:math:`g / \sum w_t` for none, sum, mean; :math:`W = \sum_c w_c`:

.. math::

    \frac{\partial \operatorname{lse}_i}{\partial x_{ic}} &= p_{ic} \\
    \frac{\partial \ell_i}{\partial x_{ic}} &= (1 - \varepsilon)\, w_t\, (p_{ic} - \delta_{ct})
        + \frac{\varepsilon}{C}\, (W p_{ic} - w_c) \\
    \frac{\partial L}{\partial x_{ic}} &= s_i \Bigl[a_i\, p_{ic} - \frac{\varepsilon}{C} w_c
        - (1 - \varepsilon)\, w_t\, \delta_{ct}\Bigr], \qquad
        a_i = (1 - \varepsilon)\, w_t + \frac{\varepsilon}{C} W

One softmax per row and a subtraction at the target: the ``[C, C]`` Jacobian of the softmax is
never formed, and no ``[N, C]`` tensor is saved. :math:`\partial L/\partial x` is 0 on ignored
rows. target (integers) gets no gradient, and neither does weight: native refuses a weight that
requires grad, and so does this op, with an error naming it.

Saved for backward
------------------
input, target and weight (the inputs: no copy). The row's lse is recomputed in backward, in the
pass that computes p anyway. Native saves its ``[N, C]`` log-probabilities.

Double backward
---------------
Under ``create_graph=True`` the backward is the torch-op formula ``_backward_formula``
(softmax, scatter, products), which autograd differentiates again. A first-order backward calls
the op ``customgrad::cross_entropy_backward`` (the C++ kernel on CPU, the formula elsewhere),
so that a compiled backward calls the kernel too; its own backward differentiates the formula.

Kernels
-------
Plain CPU calls on contiguous ``[N, C]`` or ``[C]`` inputs run the C++ kernels of
``opslib/csrc/cross_entropy.cpp`` (forward: two sweeps over a row in cache, no ``[N, C]``
output; backward: one exp per element, written once); anything else (CUDA, ``[N, C, d...]``,
other layouts, compile and export tracing) runs ``_forward_formula`` and ``_backward_formula``,
the same math in torch ops (in float64 in eager mode, float32 for half types while tracing).
There is no Triton kernel: on CUDA this op runs torch ops.

Extreme values
--------------
Targets out of range (neither in [0, C) nor ignore_index) raise an IndexError naming the op and
the target, eager and compiled: the kernel checks them before computing (one pass over the
integer targets; a device sync on CUDA), where native CPU raises and native CUDA asserts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opslib.core import cpu_kernels
from opslib.core.checks import (
    check_floating_input,
    check_index_input,
    check_same_dtype_and_device,
    fmt_shape,
    label,
)
from opslib.core.precision import accumulation_dtype
from opslib.core.registration import (
    define_op,
    only_plain_tensors,
    register_autocast,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import register_sharding_rule, replicate

OP = "cross_entropy"
REDUCTIONS = ("none", "mean", "sum")


def class_dim(input: Tensor) -> int:
    """Native's convention: classes are dim 1, or dim 0 of a single sample's [C]."""
    return 1 if input.dim() >= 2 else 0


def check_cross_entropy(
    op: str,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    label_smoothing: float,
    num_classes: int | None = None,
    input_name: str = "input",
) -> None:
    """The arguments' types and shapes (values are checked by ``check_targets``). ``op`` names
    the op in errors (linear_cross_entropy shares these checks); ``num_classes`` is C when the
    input does not show it (linear_cross_entropy's hidden states, named ``input_name``)."""
    check_floating_input(op, input_name, input)
    check_index_input(op, "target", target, input, input_name)
    if weight is not None:
        check_floating_input(op, "weight", weight)
        check_same_dtype_and_device(op, {"input": input, "weight": weight})
    if num_classes is None:
        if input.dim() == 0:
            raise ValueError(f"{label(op)}: input must have a class dim, got a 0-d tensor")
        num_classes = input.shape[class_dim(input)]
        expected = list(input.shape[:1]) + list(input.shape[2:]) if input.dim() >= 2 else []
    else:
        expected = list(input.shape[:-1])
    if list(target.shape) != expected:
        raise ValueError(
            f"{label(op)}: target of shape {fmt_shape(target.shape)} must have shape "
            f"{fmt_shape(expected)} (one class index per sample) for input of shape "
            f"{fmt_shape(input.shape)}"
        )
    if weight is not None:
        if list(weight.shape) != [num_classes]:
            raise ValueError(
                f"{label(op)}: weight of shape {fmt_shape(weight.shape)} must have one value "
                f"per class, [{num_classes}]"
            )
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{label(op)}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{label(op)}: label_smoothing must be in [0, 1], got {label_smoothing}")


def check_targets(op: str, target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Every target is a class index or ignore_index: native CPU raises for others, native CUDA
    asserts (and loses the CUDA context); neither may give a loss."""
    if target.numel() == 0:
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = int(target[bad].flatten()[0])
        raise IndexError(
            f"{label(op)}: target {value} is out of range for {num_classes} classes "
            f"(expected 0 to {num_classes - 1}, or ignore_index {ignore_index})"
        )


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 where it computes eagerly (exact reductions, no cancellation); while compile or
    export traces, float32 for half types and x's dtype otherwise, as native's own code."""
    if only_plain_tensors((x,)):
        return torch.float64
    return accumulation_dtype(x.dtype)


def classes_last(x: Tensor) -> Tensor:
    return x.movedim(1, -1) if x.dim() >= 2 else x


def _target_terms(
    target: Tensor, weight: Tensor | None, ignore_index: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """(valid, t, w_t): where the target counts, the target with ignored ones replaced by class
    0 (a safe index), and each target's class weight (0 where ignored)."""
    valid = target != ignore_index
    t = torch.where(valid, target, 0).long()
    w_t = valid.to(dtype) if weight is None else weight.to(dtype).take(t) * valid
    return valid, t, w_t


def _forward_formula(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> Tensor:
    """ℓ_i and its reduction as derived above, in differentiable torch ops."""
    wide = _compute_dtype(input)
    x = classes_last(input).to(wide)
    valid, t, w_t = _target_terms(target, weight, ignore_index, wide)
    # any constant per row cancels; the row's max keeps every exponential <= 1 (a row with an
    # inf or nan logit is nan, as native's log_softmax makes it)
    shift = x.amax(-1, keepdim=True).detach()
    shifted = x - shift
    log_sum = torch.logsumexp(shifted, -1)
    nll = log_sum - shifted.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    loss = (1 - label_smoothing) * w_t * nll
    if label_smoothing:
        num_classes = x.shape[-1]
        w = weight.to(wide) if weight is not None else x.new_ones(num_classes)
        smooth = log_sum * w.sum() - (shifted * w).sum(-1)  # Σ_c w_c (lse - x_c)
        loss = loss + torch.where(valid, (label_smoothing / num_classes) * smooth, 0)
    loss = torch.where(valid, loss, 0)  # ignored rows: 0, whatever their logits
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / w_t.sum()
    return loss.to(input.dtype).contiguous()  # the kernel's layout, whatever target's


def _row_scale(
    grad: Tensor, target: Tensor, w_t: Tensor, reduction: str, dtype: torch.dtype
) -> Tensor:
    """s_i: dL/dℓ_i for every sample, in ``dtype`` and target's shape."""
    g = grad.to(dtype)
    if reduction == "mean":
        g = g / w_t.sum()
    return g.expand(target.shape) if reduction != "none" else g


def _backward_formula(
    grad: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> Tensor:
    """dL/dx = s_i · [a_i p - (ε/C) w - (1-ε) w_t onehot(t)], in differentiable torch ops."""
    wide = _compute_dtype(input)
    x = classes_last(input).to(wide)
    valid, t, w_t = _target_terms(target, weight, ignore_index, wide)
    num_classes = x.shape[-1]
    eps = label_smoothing
    s = _row_scale(grad, target, w_t, reduction, wide)
    p = torch.softmax(x, -1)
    w_sum = weight.to(wide).sum() if weight is not None else num_classes
    counted = valid.to(wide)  # a bool times a Python float would be float32
    a = s * ((1 - eps) * w_t + (eps / num_classes) * w_sum * counted)
    grad_x = a.unsqueeze(-1) * p
    if eps:
        w = weight.to(wide) if weight is not None else 1.0
        grad_x = grad_x - (s * counted * (eps / num_classes)).unsqueeze(-1) * w
    at_target = (s * (1 - eps) * w_t).unsqueeze(-1)
    grad_x = grad_x - torch.zeros_like(grad_x).scatter(-1, t.unsqueeze(-1), at_target)
    grad_x = torch.where(valid.unsqueeze(-1), grad_x, 0)  # nothing flows to ignored rows
    grad_x = grad_x.movedim(-1, 1) if input.dim() >= 2 else grad_x
    return grad_x.to(input.dtype)


def cpu_kernel_takes(input: Tensor, weight: Tensor | None) -> bool:
    """Calls the C++ kernels compute: CPU, [N, C] or [C], contiguous (and weight), the kernels
    built."""
    return (
        input.is_cpu
        and input.dim() in (1, 2)
        and input.shape[-1] > 0
        and input.is_contiguous()
        and (weight is None or weight.is_contiguous())
        and cpu_kernels.is_loaded()
    )


def _rows(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """[N, C] and [N] views of a [N, C] or [C] call (a [C] input is one row)."""
    return input.reshape(-1, input.shape[-1]), target.reshape(-1).long()


def _cross_entropy_kernel(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    check_cross_entropy(OP, input, target, weight, reduction, label_smoothing)
    check_targets(OP, target, input.shape[class_dim(input)], ignore_index)
    if not cpu_kernel_takes(input, weight):
        return _forward_formula(input, target, weight, ignore_index, reduction, label_smoothing)
    x, t = _rows(input, target)
    # per sample, in double: ℓ_i and w_t (two sweeps over each row; no [N, C] tensor written)
    losses, target_weights = torch.ops.opslib_cpu.cross_entropy_forward(
        x, t, weight, ignore_index, label_smoothing
    )
    if reduction == "none":
        return losses.reshape(target.shape).to(input.dtype)
    total = losses.sum()
    return (total / target_weights.sum() if reduction == "mean" else total).to(input.dtype)


def _cross_entropy_fake(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    check_cross_entropy(OP, input, target, weight, reduction, label_smoothing)
    shape = target.shape if reduction == "none" else ()
    return input.new_empty(shape)


def _cross_entropy_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    input, target, weight, ignore_index, reduction, label_smoothing = (
        *inputs,
        None,
        -100,
        "mean",
        0.0,
    )[:6]
    if weight is not None and weight.requires_grad:
        raise RuntimeError(
            f"{label(OP)}: weight requires grad, but class weights get no gradient (native "
            f"F.cross_entropy refuses the same); pass weight.detach()"
        )
    ctx.ignore_index, ctx.reduction, ctx.label_smoothing = ignore_index, reduction, label_smoothing
    ctx.save_for_backward(input, target, weight)


def _cross_entropy_backward(ctx, grad: Tensor):
    input, target, weight = ctx.saved_tensors
    args = (target, weight, ctx.ignore_index, ctx.reduction, ctx.label_smoothing)
    if torch.is_grad_enabled():  # create_graph=True: the differentiable formula
        return _backward_formula(grad, input, *args), None, None, None, None, None
    # An op, so that a compiled backward calls it (and its C++ kernel) instead of inductor
    # compiling the torch-op formula traced in its place.
    return _cross_entropy_grad(grad, input, *args), None, None, None, None, None


def _grad_kernel(grad, input, target, weight, ignore_index, reduction, label_smoothing):
    if only_plain_tensors((grad, input)) and cpu_kernel_takes(input, weight):
        x, t = _rows(input, target)
        _, _, w_t = _target_terms(t, weight, ignore_index, torch.float64)
        scale = _row_scale(grad.reshape(-1) if reduction == "none" else grad, t, w_t,
                           reduction, torch.float64)  # fmt: skip
        return torch.ops.opslib_cpu.cross_entropy_backward(
            scale.contiguous(), x, t, weight, ignore_index, label_smoothing
        ).reshape(input.shape)
    return _backward_formula(grad, input, target, weight, ignore_index, reduction, label_smoothing)


def _grad_fake(grad, input, target, weight, ignore_index, reduction, label_smoothing):
    # the formula's layout (the C++ kernel's for the inputs it takes: contiguous [N, C])
    return _backward_formula(grad, input, target, weight, ignore_index, reduction, label_smoothing)


def _grad_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.args = inputs[2:]
    ctx.save_for_backward(inputs[0], inputs[1])


def _grad_backward(ctx, grad_grad_x: Tensor):
    """The backward of the backward: dL/dx is linear in g, so its vjp with respect to g is the
    same formula applied to the incoming gradient's contraction, and with respect to x the
    derivative of p = softmax(x) it contains; both by autograd through the torch-op formula
    (``torch.func.vjp``), itself differentiable again."""
    grad, input = ctx.saved_tensors
    _, vjp = torch.func.vjp(lambda g, x: _backward_formula(g, x, *ctx.args), grad, input)
    grad_g, grad_x = vjp(grad_grad_x)
    return grad_g, grad_x, None, None, None, None, None


_cross_entropy_grad = define_op(
    "cross_entropy_backward",
    "(Tensor grad, Tensor input, Tensor target, Tensor? weight, int ignore_index, "
    "str reduction, float label_smoothing) -> Tensor",
    kernel=_grad_kernel,
    fake=_grad_fake,
    setup_context=_grad_setup_context,
    backward=_grad_backward,
)


def row_losses(logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float) -> Tensor:
    """ℓ_i of rows of logits [n, C] (no class weights) in float64: the C++ kernel where it
    computes, else the torch-op formula. For the chunks of linear_cross_entropy."""
    if cpu_kernel_takes(logits, None) and only_plain_tensors((logits,)):
        losses, _ = torch.ops.opslib_cpu.cross_entropy_forward(
            logits, target, None, ignore_index, label_smoothing
        )
        return losses
    return _forward_formula(
        logits.double(), target, None, ignore_index, "none", label_smoothing
    ).double()


def row_loss_gradient(
    scale: Tensor,
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> Tensor:
    """s_i · dℓ_i/dlogits for rows of logits [n, C] and per-row scales s [n] (float64), in
    logits' dtype: the C++ kernel where it computes, else the torch-op formula."""
    if cpu_kernel_takes(logits, None) and only_plain_tensors((scale, logits)):
        return torch.ops.opslib_cpu.cross_entropy_backward(
            scale.contiguous(), logits, target, None, ignore_index, label_smoothing
        )
    return _backward_formula(scale, logits, target, None, ignore_index, "none", label_smoothing)


def row_losses_and_gradient_(
    scale: Tensor, logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float
) -> tuple[Tensor, Tensor]:
    """``row_losses`` and ``row_loss_gradient`` of the same rows at once, for logits the caller
    no longer needs: where the C++ kernel computes, one pass writes the gradient over the logits
    and gives the losses (the same values as ``row_losses``: the same sums in the same order)
    with one exponential per element where the two calls make two; else the two calls."""
    if cpu_kernel_takes(logits, None) and only_plain_tensors((scale, logits)):
        losses = torch.ops.opslib_cpu.cross_entropy_forward_backward_(
            scale.contiguous(), logits, target, None, ignore_index, label_smoothing
        )
        return losses, logits
    losses = row_losses(logits, target, ignore_index, label_smoothing)
    return losses, row_loss_gradient(scale, logits, target, ignore_index, label_smoothing)


_cross_entropy = define_op(
    OP,
    "(Tensor input, Tensor target, Tensor? weight=None, int ignore_index=-100, "
    'str reduction="mean", float label_smoothing=0.0) -> Tensor',
    kernel=_cross_entropy_kernel,
    fake=_cross_entropy_fake,
    setup_context=_cross_entropy_setup_context,
    backward=_cross_entropy_backward,
)


def _reduce_per_sample(
    losses: Tensor, target_weights: Tensor, reduction: str, sample_dims: tuple[int, ...]
) -> Tensor:
    if reduction == "none":
        return losses
    total = losses.sum(sample_dims) if sample_dims else losses
    if reduction == "sum":
        return total
    return total / (target_weights.sum(sample_dims) if sample_dims else target_weights)


def _cross_entropy_vmap(info, in_dims, input, target, weight=None, ignore_index=-100,
                        reduction="mean", label_smoothing=0.0):  # fmt: skip
    """Batch dims go to the front. With one weight for every sample, the op runs once on the
    whole batch with reduction "none" (a batch of [N, C, d...] calls is one [B, C, N, d...]
    call: the batch becomes the op's N, the sample's N a spatial dim), and each sample's
    losses are reduced on their own. A batched weight takes log_softmax and torch ops."""
    x_dim, t_dim, w_dim = (*in_dims, None, None)[:3]
    batch = info.batch_size
    x = input.movedim(x_dim, 0) if x_dim is not None else input.expand(batch, *input.shape)
    t = target.movedim(t_dim, 0) if t_dim is not None else target.expand(batch, *target.shape)
    sample_dims = tuple(range(1, t.dim()))
    x = x.movedim(2, 1) if x.dim() >= 3 else x  # the sample's class dim becomes dim 1
    if w_dim is None:
        losses = _cross_entropy(x, t, weight, ignore_index, "none", label_smoothing)
        _, _, w_t = _target_terms(t, weight, ignore_index, x.dtype)
        return _reduce_per_sample(losses, w_t, reduction, sample_dims), 0
    from opslib.ops.log_softmax import log_softmax

    w = weight.movedim(w_dim, 0)  # [B, C]
    log_p = classes_last(log_softmax(x, 1))  # [B, ..., C]
    w_rows = w.reshape(batch, *([1] * (log_p.dim() - 2)), w.shape[-1])
    valid = t != ignore_index
    safe = torch.where(valid, t, 0).long()
    w_t = w_rows.expand(log_p.shape).gather(-1, safe.unsqueeze(-1)).squeeze(-1) * valid
    losses = -(1 - label_smoothing) * w_t * log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    if label_smoothing:
        smooth = -(log_p * w_rows).sum(-1) * (label_smoothing / w.shape[-1])
        losses = losses + torch.where(valid, smooth, 0)
    losses = torch.where(valid, losses, 0)
    return _reduce_per_sample(losses, w_t, reduction, sample_dims), 0


register_vmap(_cross_entropy, _cross_entropy_vmap)


def _sample_dim_pairs(input) -> list[tuple[int, int]]:
    """(input dim, target dim) pairs of the dims that index samples: N and d1, d2, ... of
    [N, C, d1, ...] (target [N, d1, ...]); none for a single sample [C]."""
    if input.ndim < 2:
        return []
    return [(0, 0)] + [(d, d - 1) for d in range(2, input.ndim)]


def _sharding(input, target, weight=None, ignore_index=-100, reduction="mean",
              label_smoothing=0.0):  # fmt: skip
    """DTensor (core/sharding.py). Sharded samples (input and target split along N or a
    spatial dim; class weights replicated): "none" gives each rank its samples' losses, "sum"
    a partial sum (Partial). "mean" divides by the weight of every target in the batch, which no
    rank knows alone: only replicated (DTensor gathers). Sharded classes would need the
    logsumexp reduced across ranks: not offered."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    rules = [([Replicate()], replicate(input, target, weight))]
    if reduction == "mean":
        return rules
    for d, t in _sample_dim_pairs(input):
        out = Shard(t) if reduction == "none" else Partial()
        rules.append(([out], [Shard(d), Shard(t), replicate(weight)[0]]))
    return rules


def _grad_sharding(grad, input, target, weight, ignore_index, reduction, label_smoothing):
    """The backward, sharded as the forward: grad is each sample's ("none", Shard) or the one
    scalar ("sum", Replicate); each rank's rows of dL/dinput need only its own samples."""
    from torch.distributed.tensor import Replicate, Shard

    rules = [([Replicate()], replicate(grad, input, target, weight))]
    if reduction == "mean":
        return rules
    for d, t in _sample_dim_pairs(input):
        grad_placement = Shard(t) if reduction == "none" else Replicate()
        rules.append(([Shard(d)], [grad_placement, Shard(d), Shard(t), replicate(weight)[0]]))
    return rules


register_sharding_rule(_cross_entropy, _sharding)
register_sharding_rule(_cross_entropy_grad, _grad_sharding)
# Native cross_entropy is on the float32 list of CUDA and CPU autocast.
register_autocast(_cross_entropy, "cuda", torch.float32)
register_autocast(_cross_entropy, "cpu", torch.float32)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``F.cross_entropy(input, target, weight, ignore_index=..., reduction=...,
    label_smoothing=...)`` for class-index targets, with the gradient written out in
    ``opslib/ops/cross_entropy.py``."""
    return _cross_entropy(input, target, weight, ignore_index, reduction, float(label_smoothing))


def cross_entropy_onnx(input, target, weight=None, ignore_index: int = -100,
                       reduction: str = "mean", label_smoothing: float = 0.0):  # fmt: skip
    """ONNX translation in standard operators at the default opset: LogSoftmax along the class
    axis, the target's log-probability by GatherElements, the class weights by Gather, ignored
    targets masked with Where, then ReduceSum (and a Div by the weight total for "mean").
    ONNX's SoftmaxCrossEntropyLoss has no label smoothing; this decomposition computes every
    option, with constants in the input's dtype."""
    axis = 1 if len(input.shape) >= 2 else 0
    return onnx_loss(input, target, weight, ignore_index, reduction, label_smoothing, axis)


def onnx_loss(input, target, weight, ignore_index: int, reduction: str, label_smoothing: float,
              axis: int, num_classes: int | None = None, like=None):  # fmt: skip
    """cross_entropy_onnx's graph with the classes along ``axis`` (linear_cross_entropy's
    logits have them last, and their number and dtype from its weight and x, ``num_classes``
    and ``like``: a MatMul's output has no static shape or dtype while the graph is built)."""
    like = input if like is None else like
    import numpy as np
    from onnxscript import ir

    from opslib.onnx import constant, opset

    log_p = opset.LogSoftmax(input, axis=axis)
    valid = opset.Not(opset.Equal(target, constant(ignore_index, target)))
    safe = opset.Cast(opset.Where(valid, target, constant(0, target)), to=ir.DataType.INT64)
    axes = opset.Constant(value=ir.tensor(np.array([axis], dtype=np.int64)))
    at_target = opset.Squeeze(opset.GatherElements(log_p, opset.Unsqueeze(safe, axes), axis=axis),
                              axes)  # fmt: skip
    valid_float = opset.CastLike(valid, input)
    w_t = valid_float if weight is None else opset.Mul(opset.Gather(weight, safe), valid_float)
    loss = opset.Mul(opset.Neg(at_target), w_t)
    if label_smoothing:
        num_classes = num_classes or input.shape[axis]
        weighted = log_p
        if weight is not None:
            shape = [-1] + [1] * (len(input.shape) - axis - 1)
            weighted = opset.Mul(log_p, opset.Reshape(weight, opset.Constant(
                value=ir.tensor(np.array(shape, dtype=np.int64)))))  # fmt: skip
        smooth = opset.Neg(opset.ReduceSum(weighted, axes, keepdims=0))
        smooth = opset.Mul(smooth, valid_float)
        loss = opset.Add(
            opset.Mul(loss, constant(1 - label_smoothing, like)),
            opset.Mul(smooth, constant(label_smoothing / num_classes, like)),
        )
    if reduction == "none":
        return loss
    total = opset.ReduceSum(loss, keepdims=0)
    return total if reduction == "sum" else opset.Div(total, opset.ReduceSum(w_t, keepdims=0))


register_onnx_translation(_cross_entropy, cross_entropy_onnx)
