"""opslib: PyTorch custom operators with hand-written, documented gradients.

``import opslib`` registers the ``customgrad`` ops::

    torch.ops.customgrad.linear(x, weight, bias)      # or opslib.linear(...)
    torch.ops.customgrad.learned_silu(x, slope)       # or opslib.learned_silu(...)

Each op's forward, fake implementation, backward derivation and ONNX translation live together in
``opslib/ops/<name>.py``; ``opslib.testing.opinfos`` describes every op (its reference and
samples) for the test kit, ``opslib.testing``.
"""

from opslib import checkpointing, nn, optim
from opslib.functions import Cube, Exp, LearnedSiLU, Linear, ReLU, Sigmoid, Square, Tanh
from opslib.ops import (
    adam_step_,
    batch_norm,
    conv1d,
    conv2d,
    cpu_fast_path_enabled,
    cpu_kernels_enabled,
    cross_entropy,
    cube,
    exp,
    layer_norm,
    learned_silu,
    linear,
    linear_cross_entropy,
    log_softmax,
    relu,
    rms_norm,
    rotary_embedding,
    scaled_dot_product_attention,
    sigmoid,
    softmax,
    square,
    swiglu,
    tanh,
)
from opslib.swap import swap_modules

__version__ = "0.2.0"


def __getattr__(name: str):
    """``opslib.onnx`` on first use (``import opslib`` imports no onnx: it is an extra)."""
    if name == "onnx":
        import importlib

        return importlib.import_module("opslib.onnx")
    raise AttributeError(f"module 'opslib' has no attribute {name!r}")


__all__ = [
    "adam_step_",
    "checkpointing",
    "optim",
    "Cube",
    "Exp",
    "LearnedSiLU",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Square",
    "Tanh",
    "cpu_fast_path_enabled",
    "batch_norm",
    "cpu_kernels_enabled",
    "conv1d",
    "conv2d",
    "cross_entropy",
    "cube",
    "exp",
    "layer_norm",
    "learned_silu",
    "linear",
    "linear_cross_entropy",
    "log_softmax",
    "nn",
    "relu",
    "rms_norm",
    "rotary_embedding",
    "scaled_dot_product_attention",
    "sigmoid",
    "softmax",
    "square",
    "swap_modules",
    "swiglu",
    "tanh",
]
