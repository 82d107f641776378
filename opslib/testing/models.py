"""The one-op models that export and ONNX checks run: an op as a model of its inputs, with its
other tensors as parameters (exported as initializers, the way a trained model's would be)."""

from __future__ import annotations

from collections.abc import Callable

import torch


class SingleOpModel(torch.nn.Module):
    """One op as a model. Of the op's arguments, the first is the model's input, and so are
    the others at ``batch_args`` (an OpInfo's: a cross-entropy's targets); the other tensors
    (weight, bias, slope) are parameters, exported as initializers the way a trained model's
    would be; the rest (floats, ints, None) are constants of the model's code."""

    def __init__(
        self, func: Callable[..., torch.Tensor], args: tuple, batch_args: tuple[int, ...] = (0,)
    ) -> None:
        super().__init__()
        self.func = func
        self.eval()
        rest = args[1:]
        self.kinds = [
            ("input" if i + 1 in batch_args else "param") if isinstance(a, torch.Tensor) else None
            for i, a in enumerate(rest)
        ]
        self.constants = [None if isinstance(a, torch.Tensor) else a for a in rest]
        self.params = torch.nn.ParameterList(
            [
                torch.nn.Parameter(a.detach().clone(), requires_grad=False)
                for a, kind in zip(rest, self.kinds, strict=True)
                if kind == "param"
            ]
        )

    def forward(self, x: torch.Tensor, *batch_tensors: torch.Tensor) -> torch.Tensor:
        params, inputs = iter(self.params), iter(batch_tensors)
        places = zip(self.kinds, self.constants, strict=True)
        args = [
            next(inputs) if kind == "input" else next(params) if kind == "param" else c
            for kind, c in places
        ]
        return self.func(x, *args)


def model_inputs(args: tuple, batch_args: tuple[int, ...] = (0,)) -> tuple[torch.Tensor, ...]:
    """What a SingleOpModel of ``args`` takes: the first argument and the others at
    ``batch_args``."""
    return (args[0], *(args[i] for i in sorted(batch_args) if i > 0))
