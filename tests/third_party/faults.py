"""Seven broken copies of ``mylib::scaled_tanh`` (``mylib.py``), each with one typical bug, each
in a namespace of its own: ``tests/test_testing_kit.py`` checks that ``opslib.testing.check_op``
fails each one, naming the family that catches it."""

from __future__ import annotations

import numpy as np
import torch
from mylib import backward, check_inputs, scaled_tanh_onnx, setup_context
from torch import Tensor


def define(namespace: str, *, kernel=None, fake=None, backward_fn=backward):
    """``<namespace>::scaled_tanh`` as mylib's, with the parts given replaced."""

    def good_kernel(x: Tensor, alpha: float = 1.0) -> Tensor:
        check_inputs(x, alpha)
        return torch.tanh(x) * alpha

    def good_fake(x: Tensor, alpha: float = 1.0) -> Tensor:
        check_inputs(x, alpha)
        return torch.empty_like(x)

    op = torch.library.custom_op(f"{namespace}::scaled_tanh", kernel or good_kernel,
                                 mutates_args=())  # fmt: skip
    op.register_fake(fake or good_fake)
    op.register_autograd(backward_fn, setup_context=setup_context)
    return op


def wrong_backward(ctx, grad_y: Tensor) -> tuple[Tensor, None]:
    (x,) = ctx.saved_tensors
    return grad_y * ctx.alpha * (1 - torch.tanh(x)), None  # 1 - t, not 1 - t²


def backward_under_no_grad(ctx, grad_y: Tensor) -> tuple[Tensor, None]:
    with torch.no_grad():  # right values, but not differentiable: no double backward
        return backward(ctx, grad_y)


def contiguous_fake(x: Tensor, alpha: float = 1.0) -> Tensor:
    check_inputs(x, alpha)
    return x.new_empty(x.shape)  # the kernel keeps a transposed x's layout; this does not


def float32_kernel(x: Tensor, alpha: float = 1.0) -> Tensor:
    check_inputs(x, alpha)
    return (torch.tanh(x) * alpha).float()  # float32 whatever x's dtype: the fake says x's


def unchecked_kernel(x: Tensor, alpha: float = 1.0) -> Tensor:
    return torch.tanh(x) * alpha  # an integer x gives a float result instead of an error


def unchecked_fake(x: Tensor, alpha: float = 1.0) -> Tensor:
    return torch.empty_like(x, dtype=torch.get_default_dtype() if not x.is_floating_point()
                            else x.dtype)  # fmt: skip


def float32_constant_onnx(x, alpha: float = 1.0):
    from onnxscript import opset20 as op

    return op.Mul(op.Tanh(x), np.float32(alpha))  # a float32 constant, whatever x's dtype


def define_all() -> dict[str, dict]:
    """{fault: OpInfo fields that differ from the good op's} for each bug."""
    ok = define("kit_fault_none")

    def branching(x: Tensor, alpha: float = 1.0) -> Tensor:
        if x.sum() > 0:  # a Python branch on a value: compile cannot keep one graph
            return ok(x, alpha)
        return ok(x, alpha)

    return {
        "wrong backward": {"op": define("kit_fault_backward", backward_fn=wrong_backward)},
        "backward under no_grad": {
            "op": define("kit_fault_no_grad", backward_fn=backward_under_no_grad)
        },
        "contiguous fake": {"op": define("kit_fault_fake_strides", fake=contiguous_fake)},
        "kernel dtype differs from the fake's": {
            "op": define("kit_fault_dtype", kernel=float32_kernel)
        },
        "missing input check": {
            "op": define("kit_fault_check", kernel=unchecked_kernel, fake=unchecked_fake)
        },
        "float32 constant in the ONNX translation": {
            "op": define("kit_fault_onnx"),
            "onnx_translation": float32_constant_onnx,
        },
        "Python branch on a tensor's value": {"op": ok, "func": branching},
        "none": {"op": ok, "onnx_translation": scaled_tanh_onnx},
    }
