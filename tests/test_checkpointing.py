"""Activation checkpointing over customgrad ops (opslib/checkpointing.py): full and selective
checkpointing give the gradients of no checkpointing, eager and compiled, and selective
checkpointing recomputes exactly the ops its policy says (the memory it saves:
benchmarks/checkpointing.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from opslib.models import DeepMLP

WIDTH, DEPTH = 32, 3


class CountCustomOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "customgrad":
            name = func._schema.name.split("::")[1]
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def gradients(model: torch.nn.Module, x: torch.Tensor, step=None) -> list[torch.Tensor]:
    y = (model if step is None else step)(x)
    return torch.autograd.grad((y * y).sum(), [x, *model.parameters()])


def models(mode: str, dtype=torch.float64) -> tuple[DeepMLP, DeepMLP]:
    torch.manual_seed(0)
    plain = DeepMLP(WIDTH, DEPTH).to(dtype)
    checkpointed = DeepMLP(WIDTH, DEPTH, checkpointing=mode).to(dtype)
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_gives_the_gradients_of_no_checkpointing(mode):
    plain, checkpointed = models(mode)
    x = torch.randn(8, WIDTH, dtype=torch.float64, requires_grad=True)
    for got, expected in zip(gradients(checkpointed, x), gradients(plain, x), strict=True):
        # the same ops recomputed, but not always the same kernels (the recompute runs the ops'
        # first-order paths): float64 rounding apart
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "mode, recomputed",
    [
        # full: every op of each block runs again in backward
        ("full", {"linear": DEPTH, "layer_norm": DEPTH, "learned_silu": DEPTH}),
        # selective: the linears' outputs are kept; the norm and activation run again
        ("selective", {"layer_norm": DEPTH, "learned_silu": DEPTH}),
    ],
)
def test_backward_recomputes_what_the_policy_says(mode, recomputed):
    _, checkpointed = models(mode)
    x = torch.randn(8, WIDTH, dtype=torch.float64, requires_grad=True)
    y = checkpointed(x)
    with CountCustomOps() as counter:
        torch.autograd.grad((y * y).sum(), [x, *checkpointed.parameters()])
    forward_ops = {name: n for name, n in counter.counts.items() if not name.endswith("backward")}
    assert forward_ops == recomputed, counter.counts


@pytest.mark.parametrize("mode, backend", [("full", "aot_eager"), ("selective", "inductor")])
def test_checkpointing_under_compile_gives_the_same_gradients(mode, backend):
    """One graph (fullgraph=True). Selective checkpointing under inductor, whose partitioner
    applies the policy; full checkpointing under aot_eager (the same traced forward and
    backward without inductor's code generation, which costs ~15 s more on 2 cores)."""
    torch._dynamo.reset()
    plain, checkpointed = models(mode, torch.float32)
    x = torch.randn(8, WIDTH, requires_grad=True)
    step = torch.compile(checkpointed, fullgraph=True, backend=backend)
    for got, expected in zip(gradients(checkpointed, x, step), gradients(plain, x), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
