"""The op table's ops that update their arguments in place (optimizer steps): adam_step_."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from opslib.core import cuda_path
from opslib.ops.adam import adam_step_
from opslib.testing.opinfo import (
    ALL_FLOAT_DTYPES,
    ErrorInput,
    Sample,
)

# ---- ops that update their arguments in place (optimizer steps) ----


@dataclass(frozen=True)
class UpdateOpInfo:
    """An op that updates some of its arguments in place and returns nothing: an optimizer step.

    It is not a function of its inputs, so the families of the op contract that are about
    gradients and inference graphs do not apply: no gradcheck (no autograd: the update runs
    under no_grad), no vmap rule, no ONNX (an inference graph holds no training update). The
    tests run every other family over ``UPDATE_OP_TABLE``: opcheck's five checks, each kernel
    (C++, Triton, torch ops) against the native reference in every dtype, torch.compile
    (fullgraph, dynamic shapes, no recompiles), torch.export, TorchScript, version counters, and
    bad calls refused with nothing changed.
    """

    name: str
    func: Callable[..., None]  # the public opslib function (keyword hyperparameters)
    # The native update, called with the op's own arguments; it updates them in place.
    reference: Callable[..., None]
    reference_text: str
    formula: str
    # Calls of the op: its positional arguments, as the schema lists them (every call may
    # update its tensors: the tests copy a sample before each use).
    sample_inputs: Callable[[torch.device | str, torch.dtype], list[Sample]]
    # (atol, rtol) of the updated tensors against the reference, float32 and float64; float16
    # and bfloat16 are judged against a float64 run of the reference, relative to its own error.
    tolerances: dict[torch.dtype, tuple[float, float]]
    error_inputs: Callable[[], list[ErrorInput]] = list
    # The CUDA path's kernel, run directly on one sample (CPU tensors under the interpreter).
    triton: Callable[..., None] | None = None
    dtypes: tuple[torch.dtype, ...] = ALL_FLOAT_DTYPES
    namespace: str = "customgrad"

    @property
    def op(self) -> torch._ops.OpOverload:
        return getattr(getattr(torch.ops, self.namespace), self.name).default

    @property
    def label(self) -> str:
        return f"{self.namespace}.{self.name}"


def _hyperparameters(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8) -> tuple:
    return tuple(
        torch.tensor(h, dtype=torch.float64) for h in (lr, beta1, beta2, weight_decay, eps)
    )


def _adam_state(shapes, device, dtype, *, amsgrad: bool, step: float = 0.0, layout=None) -> tuple:
    """params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps for tensors of ``shapes``,
    with moments as after some steps (v > 0, vmax >= v)."""

    def make(shape, fill):
        t = fill(shape)
        return layout(t) if layout is not None and t.dim() == 4 else t

    rand = lambda shape: torch.randn(shape, device=device, dtype=dtype)  # noqa: E731
    params = [make(sh, rand) for sh in shapes]
    grads = [make(sh, rand) for sh in shapes]
    exp_avgs = [make(sh, lambda sh: 0.1 * rand(sh)) for sh in shapes]
    exp_avg_sqs = [make(sh, lambda sh: 0.01 * rand(sh).abs()) for sh in shapes]
    max_sqs = [v + 0.01 * rand(v.shape).abs() for v in exp_avg_sqs] if amsgrad else []
    steps = [torch.tensor(step) for _ in shapes]
    return params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps


def _adam_samples(device, dtype) -> list[Sample]:
    shapes = [(), (0,), (7,), (4, 5), (2, 3, 4, 5), (1 << 15) + 37]  # the last: threads + tail

    def call(name, *, amsgrad=False, maximize=False, decoupled=False, step=0.0, layout=None,
             shape_list=shapes, **hyper) -> Sample:  # fmt: skip
        state = _adam_state(shape_list, device, dtype, amsgrad=amsgrad, step=step, layout=layout)
        return Sample(name, (*state, *_hyperparameters(**hyper), amsgrad, maximize, decoupled))

    transposed = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    return [
        call("first-step"),
        call("step-10", step=10.0),
        call("amsgrad", amsgrad=True, step=3.0),
        call("l2-weight-decay", weight_decay=0.1, step=2.0),
        call("adamw", decoupled=True, weight_decay=0.1, step=2.0),
        call("maximize", maximize=True, weight_decay=0.01, step=1.0),
        call("beta1-below-half", beta1=0.3, beta2=0.9, step=4.0),  # lerp's other form
        call("big-eps-lr", lr=0.5, eps=1e-3),
        call("channels-last", layout=lambda t: t.contiguous(memory_format=torch.channels_last)),
        call("transposed-views", layout=transposed, amsgrad=True),
        call("no-parameters", shape_list=[]),
    ]


def _native_adam_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2,
    weight_decay, eps, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    from torch.optim.adam import adam

    adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, foreach=True,
        amsgrad=amsgrad, beta1=beta1.item(), beta2=beta2.item(), lr=lr.item(),
        weight_decay=weight_decay.item(), eps=eps.item(), maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
    )  # fmt: skip


def _adam_error_inputs() -> list[ErrorInput]:
    def state(*shapes, dtype=torch.float32, amsgrad=False):
        return _adam_state(shapes or [(3, 4)], "cpu", dtype, amsgrad=amsgrad)

    def call(params, grads, m, v, vmax, steps, amsgrad=False, **hyper) -> tuple:
        return (params, grads, m, v, vmax, steps, *_hyperparameters(**hyper), amsgrad, False, False)

    def with_(index: int, k: int, value: Tensor, amsgrad=False) -> tuple:
        lists = [list(x) for x in state((3, 4), (5,), amsgrad=amsgrad)]
        lists[index][k] = value
        return call(*lists, amsgrad=amsgrad)

    def sparse_grad() -> tuple:
        return with_(1, 1, torch.randn(5).to_sparse())

    def int_params() -> tuple:
        p, g, m, v, vmax, steps = state((3, 4), (5,))
        p[1] = torch.arange(5)
        g[1], m[1], v[1] = (torch.zeros(5, dtype=torch.int64) for _ in range(3))
        return call(p, g, m, v, vmax, steps)

    def bad_lr() -> tuple:
        args = list(call(*state()))
        args[6] = torch.tensor([1e-3, 1e-3])
        return tuple(args)

    def missing_max() -> tuple:
        return call(*state(), amsgrad=True)

    def fewer_grads() -> tuple:
        p, g, m, v, vmax, steps = state((3, 4), (5,))
        return call(p, g[:1], m, v, vmax, steps)

    def twice() -> tuple:
        p, g, m, v, vmax, steps = state((3, 4), (5,))
        return call([p[0], p[0]], g, m, v, vmax, steps)

    label = r"customgrad\.adam_step_"
    return [
        ErrorInput(
            "grad shape differs",
            lambda: with_(1, 1, torch.randn(6)),
            ValueError,
            label
            + r": grads\[1\] is a torch.float32 tensor of shape \[6\] .* params\[1\] is "
            + r".* shape \[5\]",
        ),
        ErrorInput(
            "state dtype differs",
            lambda: with_(3, 0, torch.rand(3, 4, dtype=torch.float64)),
            ValueError,
            label + r": exp_avg_sqs\[0\] is a torch.float64 tensor",
        ),
        ErrorInput(
            "max state shape differs",
            lambda: with_(4, 1, torch.rand(4), amsgrad=True),
            ValueError,
            label + r": max_exp_avg_sqs\[1\] is a torch.float32 tensor of shape \[4\]",
        ),
        ErrorInput(
            "sparse gradient",
            sparse_grad,
            ValueError,
            label + r": grads\[1\] is torch.sparse_coo; dense tensors only .*SparseAdam",
            compiles=False,
        ),
        ErrorInput(
            "integer parameter",
            int_params,
            ValueError,
            label + r": params\[1\] has dtype torch.int64; Adam updates floating-point",
        ),
        ErrorInput(
            "list lengths differ", fewer_grads, ValueError, label + r": got 2 params but 1 grads"
        ),
        ErrorInput(
            "amsgrad without max_exp_avg_sqs",
            missing_max,
            ValueError,
            label + r": amsgrad=True needs 1 max_exp_avg_sqs",
        ),
        ErrorInput(
            "lr of two elements",
            bad_lr,
            ValueError,
            label + r": lr must be a real tensor of one element",
        ),
        ErrorInput(
            "integer step",
            lambda: with_(5, 0, torch.tensor(3)),
            ValueError,
            label + r": steps\[0\] must be a floating-point tensor of one element",
        ),
        ErrorInput(
            "parameter twice", twice, ValueError, label + r": a parameter appears twice in params"
        ),
    ]


UPDATE_OP_TABLE: list[UpdateOpInfo] = [
    UpdateOpInfo(
        name="adam_step_",
        func=adam_step_,
        reference=_native_adam_step,
        reference_text="torch.optim.adam.adam(..., foreach=True)",
        formula=(
            "m ← lerp(m, g, 1-β1), v ← β2·v + (1-β2)·g², "
            "θ ← θ - lr/(1-β1ᵗ) · m/(√v/√(1-β2ᵗ) + ε) (AdamW: θ ← θ(1-lr·wd) first)"
        ),
        sample_inputs=_adam_samples,
        tolerances={torch.float32: (2e-7, 2e-6), torch.float64: (1e-15, 1e-13)},
        error_inputs=_adam_error_inputs,
        triton=lambda *args: cuda_path.kernels("adam").update_with_op_arguments(*args),
    ),
]
