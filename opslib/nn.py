"""``torch.nn`` modules built on the customgrad ops."""

from __future__ import annotations

import torch
from torch import Tensor

from opslib import ops


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` computed by ``customgrad::linear``.

    A subclass, not a look-alike: same constructor, parameters, initialisation and state_dict
    keys, so anything that looks for ``nn.Linear`` (tensor-parallel plans, quantizers, FSDP wrap
    policies, ``load_state_dict`` from a plain model) accepts it.
    """

    def forward(self, input: Tensor) -> Tensor:
        return ops.linear(input, self.weight, self.bias)


class ReLU(torch.nn.Module):
    """Elementwise max(x, 0) via ``customgrad::relu``."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Sigmoid(torch.nn.Module):
    """Elementwise 1 / (1 + e⁻ˣ) via ``customgrad::sigmoid``."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Tanh(torch.nn.Module):
    """Elementwise tanh(x) via ``customgrad::tanh``."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class LearnedSiLU(torch.nn.Module):
    """slope · x · sigmoid(x) with a learned slope, via ``customgrad::learned_silu``.

    ``num_parameters=1`` learns one slope shared by all channels; ``num_parameters=C`` learns
    one per channel of the input's last dimension. Every slope starts at ``init``
    (``init=1.0`` is exactly SiLU).
    """

    def __init__(self, init: float = 1.0, num_parameters: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        self.num_parameters = num_parameters
        self.init = init
        self.slope = torch.nn.Parameter(
            torch.full((num_parameters,), float(init), device=device, dtype=dtype)
        )

    def forward(self, x: Tensor) -> Tensor:
        return ops.learned_silu(x, self.slope)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, init={self.init}"


def _legacy_dim(name: str, ndim: int) -> int:
    """What torch.nn.Softmax(dim=None) picks (with its deprecation warning): 0 for 0-, 1- and
    3-d input, else 1."""
    return torch.nn.functional._get_softmax_dim(name, ndim, stacklevel=4)


class Softmax(torch.nn.Softmax):
    """``torch.nn.Softmax`` computed by ``customgrad::softmax``: a subclass, same constructor."""

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim if self.dim is not None else _legacy_dim("softmax", input.dim())
        return ops.softmax(input, dim)


class LogSoftmax(torch.nn.LogSoftmax):
    """``torch.nn.LogSoftmax`` computed by ``customgrad::log_softmax``: a subclass, same
    constructor."""

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim if self.dim is not None else _legacy_dim("log_softmax", input.dim())
        return ops.log_softmax(input, dim)


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` computed by ``customgrad::rms_norm``: a subclass, same constructor,
    parameters and state_dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, list(self.normalized_shape), self.weight, self.eps)


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` computed by ``customgrad::layer_norm``: a subclass, same
    constructor, parameters and state_dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, list(self.normalized_shape), self.weight, self.bias, self.eps)
