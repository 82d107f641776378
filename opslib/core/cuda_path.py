"""The CUDA path's machinery: when a call goes to a Triton kernel, and the layout helpers the
launchers share. The kernels themselves are per op, in ``opslib/ops/triton_kernels/<name>.py``
(each module holds its ``@triton.jit`` kernels and the functions that launch them).

Triton is imported lazily, on the first CUDA call: opslib imports and works on machines without
Triton or CUDA, where ``takes`` answers False and the op computes with torch ops. An op's kernel
reads::

    if cuda_path.takes(x):  # CUDA: one Triton kernel (ops/triton_kernels/unary.py)
        return cuda_path.kernels("unary").forward(RELU, x)

The launchers run on whatever device their tensors are on (CPU tensors run under the Triton
interpreter, ``TRITON_INTERPRET=1``, which is how the tests check them without a GPU); ``takes``
is what restricts the ops to CUDA. float64 stays on the torch-op path (the kernels compute in
float32).

Layouts: an elementwise op can run over any non-overlapping dense tensor (contiguous,
transposed, channels-last) as a flat array, writing into ``empty_like(x)``, which has the same
strides; that is also what the fake implementation promises. Other layouts (strided slices,
expanded views) are made contiguous first (``dense``), and gradients are brought to the saved
tensor's layout (``in_layout_of``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch
from torch import Tensor

from opslib.core.registration import in_layout_of, only_plain_tensors  # noqa: F401 (launchers')

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 1024  # elements per program of the elementwise kernels


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def kernels(name: str) -> ModuleType:
    """``opslib.ops.triton_kernels.<name>``, imported on first use (it imports Triton). An error
    in that module is raised, not mistaken for a missing Triton."""
    if not triton_installed():
        raise RuntimeError(f"opslib: the Triton kernels '{name}' need Triton, not installed")
    return importlib.import_module(f"opslib.ops.triton_kernels.{name}")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def takes(*tensors: Tensor) -> bool:
    """Whether a call on these tensors goes to a Triton kernel: CUDA tensors in float32,
    float16 or bfloat16, Triton installed, real tensors (never fake ones while compile traces).
    An op adds its own conditions (layouts, sizes) after this."""
    first = tensors[0]
    return (
        first.is_cuda  # first: on CPU this is the only check a call pays
        and first.dtype in TRITON_DTYPES
        and triton_installed()
        and only_plain_tensors(tensors)
    )


def takes_first_order(*tensors: Tensor) -> bool:
    """``takes`` for a backward kernel that autograd cannot differentiate: only a first-order
    backward (under create_graph the torch-op formula must run, so that autograd records it)."""
    return takes(*tensors) and not torch.is_grad_enabled()


def is_non_overlapping_and_dense(t: Tensor) -> bool:
    """Its elements fill one block of memory exactly (any dim order): contiguous, transposed,
    channels-last; not a strided slice or an expanded view."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda p: p[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def dense(t: Tensor) -> Tensor:
    return t if is_non_overlapping_and_dense(t) else t.contiguous()


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()
