"""Per-call cost of every op of the op table at its smallest benchmark size, against native.

    python3 benchmarks/registration_overhead.py        # OPSLIB_OVERHEAD_SAMPLES=51 for more

For each op (16 elements; linear [1, 4] x [4, 4]): forward without grad and forward + backward,
each as a ratio to the op's native reference timed alongside it (interleaved samples). Three
registrations in one run:

- ``torch.library.custom_op`` + ``register_autograd`` (relu only: the high-level API, for scale);
- opslib as shipped: ``Library.define`` + ``torch.library.register_autograd``, with the C++ CPU
  fast path (opslib/csrc/cpu_fast_path.cpp) taking calls that need no autograd;
- opslib with Python kernels only (a child process started with ``OPSLIB_CPU_KERNELS=0``).

The bounds opslib holds itself to: no-grad <= 3x native, forward + backward <= 2.5x native.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from bench import measure_pair
from bench_table import BENCH, bench_native

import opslib
from opslib.testing.opinfo import leaves, requiring_grad
from opslib.testing.opinfos import OP_TABLE

TARGET_S = 0.01  # each sample repeats the call for ~10 ms
SAMPLES = int(os.environ.get("OPSLIB_OVERHEAD_SAMPLES", "21"))  # samples per measurement
BOUNDS = {"no grad": 3.0, "fwd+bwd": 2.5}


@torch.library.custom_op("opslib_bench::relu", mutates_args=())
def custom_op_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


custom_op_relu.register_fake(lambda x: torch.empty_like(x))
custom_op_relu.register_autograd(
    lambda ctx, g: torch.ops.aten.threshold_backward(g, ctx.saved_tensors[0], 0),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(output),
)


def measure(label: str, func, reference, args: tuple, constant=()) -> tuple[float, float]:
    """(no-grad ratio, forward+backward ratio) of ``func`` against ``reference``; ``constant``:
    the op's constant_args (never requiring grad)."""
    inputs = leaves(args, constant=constant)
    tensors = requiring_grad(inputs)
    grad_y = torch.ones_like(reference(*args))
    fwd, fwd_native = measure_pair(lambda: func(*args), lambda: reference(*args), SAMPLES, TARGET_S)
    full, full_native = measure_pair(
        lambda: torch.autograd.grad(func(*inputs), tensors, grad_y),
        lambda: torch.autograd.grad(reference(*inputs), tensors, grad_y),
        SAMPLES,
        TARGET_S,
    )
    ratios = fwd.median / fwd_native.median, full.median / full_native.median
    print(
        f"{label:34s}{fwd.median * 1e6:8.2f} us {ratios[0]:5.2f}x"
        f"{full.median * 1e6:12.2f} us {ratios[1]:5.2f}x",
        flush=True,
    )
    return ratios


def main() -> int:
    python_only = os.environ.get("OPSLIB_CPU_KERNELS") == "0"
    if not python_only:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{'':34s}{'forward, no grad':>22s}{'forward + backward':>24s}  (x native)")
        torch.manual_seed(0)
        x = torch.randn(16)
        measure("relu via custom_op", torch.ops.opslib_bench.relu.default, torch.relu, (x,))
    path = (
        "Python kernels only"
        if python_only
        else "C++ fast path"
        if opslib.cpu_fast_path_enabled()
        else "fast path NOT BUILT"
    )
    worst = dict.fromkeys(BOUNDS, 0.0)
    for info in OP_TABLE:
        torch.manual_seed(0)
        args = BENCH[info.name].inputs(BENCH[info.name].sizes[0], "cpu", torch.float32)
        ratios = measure(
            f"{info.name} ({path})", info.func, bench_native(info), args, info.constant_args
        )
        for key, ratio in zip(BOUNDS, ratios, strict=True):
            worst[key] = max(worst[key], ratio)
    print(
        f"worst ({path}): "
        + ", ".join(f"{k} {worst[k]:.2f}x (bound {BOUNDS[k]}x)" for k in BOUNDS),
        flush=True,
    )
    if python_only:
        return 0
    child = subprocess.run(
        [sys.executable, __file__], env={**os.environ, "OPSLIB_CPU_KERNELS": "0"}, check=False
    )
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
