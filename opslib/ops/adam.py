r"""``customgrad::adam_step_``: one Adam or AdamW update of a list of parameters, in place.

Schema (every tensor argument but the gradients is updated in place, hence ``(a!)``)::

    adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs,
               Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps,
               Tensor lr, Tensor beta1, Tensor beta2, Tensor weight_decay, Tensor eps,
               bool amsgrad, bool maximize, bool decoupled_weight_decay) -> ()

The hyperparameters are 0-d tensors, so that under ``torch.compile`` a learning rate that a
scheduler changes is data, not a constant of the graph (a Python float would recompile the
step at every new value). ``opslib.optim.Adam``/``AdamW`` call this op; ``adam_step_`` below
takes floats or tensors.

The update
----------
Kingma & Ba, "Adam", 2015; the conventions of ``torch.optim.Adam``. For each parameter θ with
gradient g, first moment m, second moment v and step count t, all updated in place, with
learning rate :math:`\gamma` (lr), weight decay :math:`\lambda` (wd):

.. math::

    t &\leftarrow t + 1 && \text{the first update has } t = 1 \\
    g &\leftarrow -g && \text{if maximize (ascend instead of descend)} \\
    \theta &\leftarrow \theta\,(1 - \gamma\lambda) && \text{AdamW: decoupled weight decay} \\
    g &\leftarrow g + \lambda\theta && \text{Adam: the L2 penalty's gradient} \\
    m &\leftarrow \beta_1 m + (1 - \beta_1)\, g
        && \text{computed as } \operatorname{lerp}(m, g, 1 - \beta_1) \\
    v &\leftarrow \beta_2 v + (1 - \beta_2)\, g^2 \\
    \bar v &\leftarrow \max(\bar v, v) && \text{amsgrad; else } \bar v \text{ is } v \\
    \theta &\leftarrow \theta - \frac{\gamma}{1 - \beta_1^t} \cdot
        \frac{m}{\sqrt{\bar v}/\sqrt{1 - \beta_2^t} + \varepsilon}

Why the bias corrections: m and v start at 0, so after t steps of a gradient with mean
:math:`E[g]`,

.. math::

    E[m] = \sum_{i=1}^t (1 - \beta_1)\, \beta_1^{t - i}\, E[g] = (1 - \beta_1^t)\, E[g]:

m is biased towards 0 by exactly the factor :math:`1 - \beta_1^t`, and v by
:math:`1 - \beta_2^t`. Dividing them out gives the estimates :math:`\hat m = m/(1 - \beta_1^t)`
and :math:`\hat v = v/(1 - \beta_2^t)`, and the textbook update
:math:`\theta \leftarrow \theta - \gamma\, \hat m/(\sqrt{\hat v} + \varepsilon)`. The last line
above is that update rearranged as torch computes it: the step size
:math:`\gamma/(1 - \beta_1^t)` is one number per tensor, :math:`\sqrt v` is divided by
:math:`\sqrt{1 - \beta_2^t}` before ε is added (so ε is added to :math:`\sqrt{\hat v}`, as in
the paper).

Adam's weight decay adds the gradient of the penalty :math:`(\lambda/2)\lVert\theta\rVert^2` to
g, so it then goes through the :math:`1/\sqrt{\hat v}` normalisation: parameters with large
gradients are decayed less. AdamW (Loshchilov & Hutter, "Decoupled Weight Decay
Regularization", 2019) shrinks θ by :math:`\gamma\lambda` directly, before the gradient step,
independent of the gradient statistics.

AMSGrad (Reddi et al., 2018) divides by the largest second moment seen so far, :math:`\bar v`,
so that the effective step size never grows; torch keeps the maximum of the uncorrected v, as
here.

Rounding
--------
Each line above rounds where ``torch.optim.Adam(foreach=True)`` rounds, one foreach op per line
(the torch-op kernel below is those ops, and bit-identical to it). The C++ kernel's square root
is correctly rounded where ATen's is an ulp off on ~1 element in 40,000, so after 200 training
steps its float32 parameters are within 1e-6 of torch's (relative, per tensor), as far as
torch's own fused kernel lands. The coefficients (:math:`1 - \beta_1^t`,
:math:`\gamma/(1 - \beta_1^t)`, :math:`\sqrt{1 - \beta_2^t}`) are computed in double, as torch
computes them in Python. float16 and bfloat16 parameters keep their moments in their own dtype,
as torch does, and are computed in float32 and rounded once per stored tensor, as torch's fused
kernel does (the foreach path rounds after every op).

Kernels
-------
CPU tensors go to the C++ kernel (``opslib/csrc/adam.cpp``: one vectorized pass over p, g, m,
v, the elements of all the tensors split between the threads in one parallel region, not one
region per tensor, which cost ~5% of a step over 100 tensors); CUDA tensors to a Triton kernel
(one pass, float32 compute: ``opslib/ops/triton_kernels/adam.py``); anything else (float64 on
CUDA, non-contiguous tensors, no C++ compiler) to the torch ops of ``_update_with_torch_ops``.
Every tensor of every parameter is checked before the first one is updated, so a call that is
refused changes nothing: by the C++ kernel itself, which takes a call only if every tensor
passes ``_check_tensors``'s checks and is a contiguous CPU tensor (an optimizer step passes
hundreds of tensors, whose checks in Python took ~0.3 ms of a 7 ms step), and in Python for
any call it does not take.

No autograd
-----------
An update is not a differentiable function of its inputs here (torch's ``differentiable=True``
optimizers are not supported). See ``define_mutating_op`` for what the op registers instead,
and why it refuses tensors that require grad while grad mode is on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from opslib.core import cpu_kernels, cuda_path
from opslib.core.checks import label
from opslib.core.registration import define_mutating_op
from opslib.core.sharding import register_per_parameter_sharding

OP = "adam_step_"
PARAMETER_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HYPERPARAMETERS = ("lr", "beta1", "beta2", "weight_decay", "eps")


def _fail(message: str) -> None:
    raise ValueError(f"{label(OP)}: {message}")


def _check_hyperparameters(hyperparameters: Sequence[Tensor]) -> None:
    for name, value in zip(HYPERPARAMETERS, hyperparameters, strict=True):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            _fail(f"{name} must be a real tensor of one element, got {_describe(value)}")


def _check_tensors(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    amsgrad: bool,
) -> None:
    """Everything about the parameters and their state that could make the update fail or be
    wrong, checked for every tensor before any is updated; on real and fake tensors alike
    (shapes, dtypes, devices, layouts). The C++ kernel makes the same checks itself
    before it takes a call (``takes`` in opslib/csrc/adam.cpp), so this runs only on calls it
    does not take: to name the problem, or to pass those that take another path."""
    n = len(params)
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "steps": steps}
    for list_name, values in lists.items():
        if len(values) != n:
            _fail(f"got {n} params but {len(values)} {list_name}")
    if len(max_exp_avg_sqs) != (n if amsgrad else 0):
        _fail(
            f"amsgrad={amsgrad} needs {n if amsgrad else 0} max_exp_avg_sqs (one per parameter "
            f"with amsgrad, none without), got {len(max_exp_avg_sqs)}"
        )
    if len({id(p) for p in params}) != n:
        _fail("a parameter appears twice in params; each would be updated twice")
    for i, p in enumerate(params):
        if p.layout != torch.strided:
            _fail(f"params[{i}] is {p.layout}; only dense (strided) parameters are updated")
        if p.dtype not in PARAMETER_DTYPES:
            _fail(
                f"params[{i}] has dtype {p.dtype}; Adam updates floating-point parameters "
                f"(float16, bfloat16, float32, float64) only"
            )
        state = [("grads", grads[i]), ("exp_avgs", exp_avgs[i]), ("exp_avg_sqs", exp_avg_sqs[i])]
        if amsgrad:
            state.append(("max_exp_avg_sqs", max_exp_avg_sqs[i]))
        for name, t in state:
            if t.layout != torch.strided:
                hint = (
                    " (torch.optim.SparseAdam updates sparse gradients)" if name == "grads" else ""
                )
                _fail(f"{name}[{i}] is {t.layout}; dense tensors only{hint}")
            if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                _fail(
                    f"{name}[{i}] is {_describe(t)} but params[{i}] is {_describe(p)}; a "
                    f"parameter's gradient and state must have its shape, dtype and device"
                )
        step = steps[i]
        if step.numel() != 1 or not step.is_floating_point():
            _fail(
                f"steps[{i}] must be a floating-point tensor of one element (torch.optim keeps "
                f"a float32 0-d tensor), got {_describe(step)}"
            )
        if step.device != p.device and step.device.type != "cpu":
            _fail(f"steps[{i}] is on {step.device} but params[{i}] is on {p.device}")


def _describe(t: Tensor) -> str:
    return f"a {t.dtype} tensor of shape {list(t.shape)} on {t.device}"


def _update_with_torch_ops(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    vmax: Tensor | None,
    step: Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    """The update of one tensor in torch ops, one per line of the derivation, in the compute
    dtype (float32 for float16/bfloat16), written back once: the path of any call the fused
    kernels do not take, and the same ops as torch.optim.Adam(foreach=True) runs."""
    compute = torch.float64 if p.dtype == torch.float64 else torch.float32
    step.add_(1)
    t = step.item()
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    theta, grad = p.to(compute), g.to(compute)
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            theta = theta * (1 - lr * weight_decay)
        else:
            grad = torch.add(grad, theta, alpha=weight_decay)
    first = torch.lerp(m.to(compute), grad, 1 - beta1)
    second = torch.addcmul(v.to(compute) * beta2, grad, grad, value=1 - beta2)
    largest = second
    if vmax is not None:
        largest = torch.maximum(vmax.to(compute), second)
        vmax.copy_(largest)
    denom = largest.sqrt() / math.sqrt(bias_correction2) + eps
    theta = torch.addcdiv(theta, first, denom, value=-(lr / bias_correction1))
    p.copy_(theta)
    m.copy_(first)
    v.copy_(second)


def _adam_step_kernel(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    lr: Tensor,
    beta1: Tensor,
    beta2: Tensor,
    weight_decay: Tensor,
    eps: Tensor,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    hyperparameters = (lr, beta1, beta2, weight_decay, eps)
    _check_hyperparameters(hyperparameters)
    scalars = [float(h.item()) for h in hyperparameters]  # torch computes these in double too
    flags = (amsgrad, maximize, decoupled_weight_decay)
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
    cpp = torch.ops.opslib_cpu.adam_step_ if cpu_kernels.is_loaded() else None
    if params and cpp is not None and cpp(*lists, *scalars, *flags):
        return  # the usual case: the C++ kernel checked every tensor and took them all
    _check_tensors(*lists, amsgrad)  # raises, naming the problem, before anything changes
    for i, p in enumerate(params):  # each parameter by the fastest path that takes it
        vmax = max_exp_avg_sqs[i] if amsgrad else None
        tensors = [p, grads[i], exp_avgs[i], exp_avg_sqs[i]] + ([vmax] if amsgrad else [])
        one = [[t] for t in tensors[:4]] + [[vmax] if amsgrad else [], [steps[i]]]
        if cpp is not None and cpp(*one, *scalars, *flags):
            continue
        if cuda_path.takes(*tensors) and cuda_path.kernels("adam").supports(tensors):
            cuda_path.kernels("adam").update(tensors, steps[i], scalars, flags)  # CUDA: Triton
        else:
            _update_with_torch_ops(
                p, grads[i], exp_avgs[i], exp_avg_sqs[i], vmax, steps[i], *scalars,
                maximize, decoupled_weight_decay,
            )  # fmt: skip


def _adam_step_fake(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2,
    weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    _check_hyperparameters((lr, beta1, beta2, weight_decay, eps))
    _check_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad)


_adam_step = define_mutating_op(
    OP,
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, Tensor lr, Tensor beta1, Tensor beta2, "
    "Tensor weight_decay, Tensor eps, bool amsgrad, bool maximize, "
    "bool decoupled_weight_decay) -> ()",
    kernel=_adam_step_kernel,
    fake=_adam_step_fake,
)


def _as_tensor(value: float | Tensor) -> Tensor:
    """A hyperparameter as the op takes it: a tensor as is, a number as a 0-d float64 tensor
    (exact for any Python float; torch computes the coefficients in double)."""
    return value if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64)


# DTensor (core/sharding.py): each parameter's update reads and writes only its own tensors,
# elementwise, so every parameter may be sharded (FSDP2's Shard(0), tensor parallelism's
# column or row splits) or replicated, with its gradient and moments alike.
register_per_parameter_sharding(_adam_step)


def check_adam_step(*lists: list[Tensor], amsgrad: bool = False, **options: object) -> None:
    """Raises the error ``adam_step_`` would raise for the same arguments (its six lists, then
    its keywords), changing nothing: an optimizer checks every param group with it before it
    updates any (``opslib.optim``)."""
    defaults = {"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "eps": 1e-8}
    values = {**defaults, **options}
    _check_hyperparameters([_as_tensor(values[name]) for name in HYPERPARAMETERS])
    _check_tensors(*lists, amsgrad)


def adam_step_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor = 0.9,
    beta2: float | Tensor = 0.999,
    weight_decay: float | Tensor = 0.0,
    eps: float | Tensor = 1e-8,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> None:
    """One Adam (or, with ``decoupled_weight_decay=True``, AdamW) update of every parameter and
    its state, in place: ``torch.ops.customgrad.adam_step_`` with numbers made 0-d tensors.
    The update rule is derived in ``opslib/ops/adam.py``."""
    _adam_step(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
        *(_as_tensor(h) for h in (lr, beta1, beta2, weight_decay, eps)),
        amsgrad, maximize, decoupled_weight_decay,
    )  # fmt: skip
