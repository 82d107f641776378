"""An op written the way docs/guides/contributing.md says, to prove that it is enough.

``opslib_test::scaled_tanh(Tensor x, float alpha=1.0) -> Tensor``: y = alpha · tanh(x), an op
with a float argument. It lives in its own namespace, so it never joins opslib's ops; the tests
of ``test_adding_an_op.py`` give it an ``OpInfo`` (``SCALED_TANH``), add it to a copy of the op
table, and run the table-driven test families on it.

Forward (t = tanh(x))
    y = alpha · t

Backward (g = dL/dy)
    dy/dx = alpha · (1 - t²)     =>  dL/dx = g · alpha · (1 - t²)
    alpha is a float, not a tensor: it gets no gradient (None).

Saved for backward: x (t is recomputed with torch.tanh, so the backward is differentiable torch
code and double backward works); alpha as a plain attribute of ctx.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from opslib.authoring import (
    check_floating_input,
    define_op,
    register_inductor_decomposition,
    register_pointwise_vmap,
)

OP = "opslib_test.scaled_tanh"  # how its errors name it


def _check_scaled_tanh(x: Tensor, alpha: float) -> None:
    check_floating_input(OP, "x", x)
    if not math.isfinite(alpha):
        raise ValueError(f"{OP}: alpha must be finite, got {alpha}")


def _scaled_tanh_formula(x: Tensor, alpha: float = 1.0) -> Tensor:
    return torch.tanh(x) * alpha


def _scaled_tanh_kernel(x: Tensor, alpha: float = 1.0) -> Tensor:
    _check_scaled_tanh(x, alpha)
    return _scaled_tanh_formula(x, alpha)


def _scaled_tanh_fake(x: Tensor, alpha: float = 1.0) -> Tensor:
    _check_scaled_tanh(x, alpha)
    return torch.empty_like(x)


def _scaled_tanh_setup_context(ctx, inputs: tuple[Tensor, float], output: Tensor) -> None:
    x, alpha = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)
    ctx.alpha = alpha


def _scaled_tanh_backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, None]:
    (x,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None
    t = torch.tanh(x)
    return grad_y * ctx.alpha * (1 - t * t), None


_scaled_tanh = define_op(
    "scaled_tanh",
    "(Tensor x, float alpha=1.0) -> Tensor",
    kernel=_scaled_tanh_kernel,
    fake=_scaled_tanh_fake,
    setup_context=_scaled_tanh_setup_context,
    backward=_scaled_tanh_backward,
    namespace="opslib_test",
)
register_pointwise_vmap(_scaled_tanh)
register_inductor_decomposition(_scaled_tanh, _scaled_tanh_formula)


def scaled_tanh(x: Tensor, alpha: float = 1.0) -> Tensor:
    """alpha · tanh(x)."""
    return _scaled_tanh(x, alpha)


def scaled_tanh_onnx(x, alpha: float = 1.0):
    """ONNX translation: Mul(Tanh(x), alpha), alpha a constant in x's dtype."""
    from opslib.onnx import constant, opset

    return opset.Mul(opset.Tanh(x), constant(alpha, x))
