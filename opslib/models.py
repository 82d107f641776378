"""A small reference model built only from opslib modules, and its torch.nn twin.

The digits example trains it, the tests compile/export/script it, and the benchmarks compare it
with the same architecture built from native modules (``native=True``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

import opslib.nn
from opslib.checkpointing import save_linear_outputs


class NativeLearnedSiLU(torch.nn.Module):
    """The native composite ``slope * x * sigmoid(x)``: the baseline for LearnedSiLU."""

    def __init__(self, init: float = 1.0, num_parameters: int = 1) -> None:
        super().__init__()
        self.slope = torch.nn.Parameter(torch.full((num_parameters,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return self.slope * x * torch.sigmoid(x)


class MLPClassifier(torch.nn.Module):
    """in -> Linear -> LayerNorm -> LearnedSiLU (per channel) -> Linear -> Tanh -> Linear ->
    logits. ``loss(x, target)`` is the training loss: the last Linear and the cross-entropy as
    one fused ``linear_cross_entropy`` (native: ``F.cross_entropy`` of the logits)."""

    def __init__(
        self, in_features: int = 64, hidden: int = 128, num_classes: int = 10, native: bool = False
    ) -> None:
        super().__init__()
        linear = torch.nn.Linear if native else opslib.nn.Linear
        norm = torch.nn.LayerNorm if native else opslib.nn.LayerNorm
        silu = NativeLearnedSiLU if native else opslib.nn.LearnedSiLU
        tanh = torch.nn.Tanh if native else opslib.nn.Tanh
        self.native = native
        self.net = torch.nn.Sequential(
            linear(in_features, hidden),
            norm(hidden),
            silu(num_parameters=hidden),
            linear(hidden, hidden // 2),
            tanh(),
            linear(hidden // 2, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy of the logits against class indices, without materialising the
        logits in opslib's model (the head's matmul and the loss are one op)."""
        features, head = self.net[:-1](x), self.net[-1]
        if self.native:
            return torch.nn.functional.cross_entropy(head(features), target)
        return opslib.ops.linear_cross_entropy(features, head.weight, target, head.bias)


class TrainingLoss(torch.nn.Module):
    """``model`` with its training loss as the forward: ``forward(x, target)`` is
    ``model.loss(x, target)``, ``forward(x)`` the logits. DDP and FSDP2 act in a module's
    forward (FSDP2 gathers a unit's parameters in its forward hooks; ``model.loss`` reads the
    head's weight directly, which those hooks would not see otherwise)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        return self.model(x) if target is None else self.model.loss(x, target)


class DigitsCNN(torch.nn.Module):
    """A small CNN for 1x8x8 images, every layer a customgrad op: Conv2d(1->16, 3x3, same) ->
    BatchNorm2d -> ReLU -> Conv2d(16->32, 3x3, stride 2) -> ReLU -> flatten -> Linear(512 -> 10)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = opslib.nn.Conv2d(1, 16, 3, padding="same")
        self.norm1 = opslib.nn.BatchNorm2d(16)
        self.conv2 = opslib.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.act = opslib.nn.ReLU()
        self.head = opslib.nn.Linear(32 * 4 * 4, classes)
        self.criterion = opslib.nn.CrossEntropyLoss()

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 1, 8, 8] (or [N, 64] pixel rows) -> logits [N, classes]."""
        x = x.reshape(x.shape[0], 1, 8, 8)
        h = self.act(self.norm1(self.conv1(x)))
        h = self.act(self.conv2(h))
        return self.head(h.flatten(1))

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        return self.criterion(self(x), target)


class DeepMLP(torch.nn.Module):
    """``depth`` residual blocks x + LearnedSiLU(LayerNorm(Linear(x))), width ``width``, for
    activation checkpointing: ``checkpointing`` is "none", "full" (each block's
    activations recomputed in backward from its input) or "selective" (the Linear outputs
    kept, the norm and activation recomputed: opslib.checkpointing)."""

    def __init__(self, width: int = 256, depth: int = 8, checkpointing: str = "none") -> None:
        super().__init__()
        if checkpointing not in ("none", "full", "selective"):
            raise ValueError(f"checkpointing must be none, full or selective, got {checkpointing}")
        self.checkpointing = checkpointing
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                opslib.nn.Linear(width, width),
                opslib.nn.LayerNorm(width),
                opslib.nn.LearnedSiLU(num_parameters=width),
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            if self.checkpointing == "none":
                x = x + block(x)
            elif self.checkpointing == "full":
                x = x + checkpoint(block, x, use_reentrant=False)
            else:
                x = x + checkpoint(block, x, use_reentrant=False, context_fn=save_linear_outputs)
        return x
