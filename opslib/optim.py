"""Adam and AdamW whose step is one fused, in-place custom op: ``customgrad::adam_step_``.

``opslib.optim.Adam`` and ``opslib.optim.AdamW`` are subclasses of ``torch.optim.Adam`` and
``torch.optim.AdamW``: the same constructor (and its argument checks), param groups,
``add_param_group``, hooks, LR schedulers and state (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, in torch's formats), so state_dicts load into and from torch's optimizers
unchanged. Only ``step`` differs: every parameter of a group is updated by one call of the op
(``opslib/ops/adam.py`` derives the update), which the C++ kernel runs in one pass per tensor.

Under ``torch.compile(fullgraph=True)`` the step traces without a graph break (torch's own Adam
breaks the graph on purpose around its step). To change the learning rate without recompiling,
give it as a tensor, ``lr=torch.tensor(1e-3)``: schedulers then fill it in place. A Python
float learning rate is a constant of the compiled graph, so each new value recompiles.

``torch.optim.Adam`` arguments that choose its implementation (``foreach``, ``fused``) are
accepted and kept in the param groups (a state_dict loaded into torch's optimizer means the same
there) but the step here is always the fused op. ``differentiable=True`` and
``capturable=True`` are refused: the op is not differentiable, and it reads the step count on
the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from opslib.ops.adam import adam_step_, check_adam_step


class _FusedAdamStep:
    """The step shared by Adam and AdamW: mixed into subclasses of torch's optimizers."""

    param_groups: list[dict]
    state: dict

    def _refuse_unsupported(self) -> None:
        """At construction and at every step: an option may be set in a group later. Not
        ``capturable`` under torch.compile: dynamo's optimizer support sets it to True in its
        traced view of every group (the eager check at construction and at eager steps stays)."""
        options = ("differentiable",) if torch.compiler.is_compiling() else (
            "differentiable", "capturable",
        )  # fmt: skip
        for group in self.param_groups:
            for option in options:
                if group.get(option):
                    raise ValueError(
                        f"opslib.optim.{type(self).__name__}: {option}=True is not supported "
                        f"(customgrad.adam_step_ is an in-place update without autograd that "
                        f"reads the step count on the host); use torch.optim."
                        f"{type(self).__name__} for it"
                    )

    def _init_group(
        self,
        group: dict,
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
    ) -> None:
        """The group's parameters that have a gradient, and their state, created on first use
        exactly as torch.optim.Adam creates it (a float32 0-d ``step`` on the CPU, moments like
        the parameter). Checks are the op's: it refuses, naming itself, before changing anything.

        torch.compile runs this method eagerly (dynamo's optimizer support looks for it by name)
        and traces only the update. So it is also where the step records that it ran, which
        an LR scheduler checks (see ``step``): an attribute set in traced code is not.
        """
        self._opt_called = True
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Adam update of every parameter that has a gradient (``closure``, if given,
        recomputes the loss first, with grad enabled).

        Every param group is checked before any is updated: a step refused for a bad state or
        gradient in one group (a moment of the wrong shape, a sparse gradient) or for an option
        set in a group after construction (``capturable``, ``differentiable``) leaves every
        parameter and its state as they were (torch.optim.Adam updates the groups before the
        bad one, then raises)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._refuse_unsupported()
            had_state = set(self.state)
            calls = []
            try:
                for group in self.param_groups:
                    calls.extend(self._group_calls(group))
                # one call checks all its tensors before it changes any: only a step of
                # several calls (param groups, device meshes) needs them all checked first
                for part, options in calls if len(calls) > 1 else ():
                    check_adam_step(*part, **options)
                for part, options in calls:  # (a refusal here is the first call's: no change)
                    adam_step_(*part, **options)
            except Exception:
                for p in [p for p in self.state if p not in had_state]:
                    del self.state[p]  # the state this refused step created
                raise
        return loss

    def _group_calls(self, group: dict) -> list[tuple[tuple[list[Tensor], ...], dict]]:
        """The adam_step_ calls that update one param group: its lists of tensors (one call per
        kind of parameter, see ``_by_device_mesh``) and its options."""
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        max_exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
        if not params:
            return []
        beta1, beta2 = group["betas"]
        options = {
            "lr": group["lr"], "beta1": beta1, "beta2": beta2,
            "weight_decay": group["weight_decay"], "eps": group["eps"],
            "amsgrad": group["amsgrad"], "maximize": group["maximize"],
            "decoupled_weight_decay": group["decoupled_weight_decay"],
        }  # fmt: skip
        lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
        return [(part, options) for part in _by_device_mesh(lists)]

    # An LR scheduler wraps ``optimizer.step`` in a function (to warn when scheduler.step()
    # comes first) that dynamo cannot trace, unless the step says it is wrapped already. This
    # step records what the wrapper records (``_opt_called``, in ``_init_group``), so it says so.
    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]


def _by_device_mesh(lists: tuple[list[Tensor], ...]) -> list[tuple[list[Tensor], ...]]:
    """The parameters' lists split into one call per kind of parameter: plain tensors, and
    DTensors of each device mesh. A tensor-parallel model mixes them (a norm left replicated
    as a plain tensor next to sharded linears), and DTensor refuses an op given both."""
    params = lists[0]
    keys = [id(getattr(p, "device_mesh", None)) for p in params]
    if len(set(keys)) <= 1:
        return [lists]
    parts = []
    for key in dict.fromkeys(keys):
        chosen = [i for i, k in enumerate(keys) if k == key]
        parts.append(tuple(
            [lst[i] for i in chosen] if len(lst) == len(params) else lst for lst in lists
        ))  # fmt: skip
    return parts


class Adam(_FusedAdamStep, torch.optim.Adam):
    """``torch.optim.Adam`` with its step computed by ``customgrad::adam_step_``: same
    arguments, param groups, schedulers and state_dicts (see the module docstring)."""

    def __init__(self, params, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self._refuse_unsupported()


class AdamW(_FusedAdamStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` (decoupled weight decay) with its step computed by
    ``customgrad::adam_step_``: same arguments, param groups, schedulers and state_dicts."""

    def __init__(self, params, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self._refuse_unsupported()
