"""Per-call cost of the ways an op can be registered, measured in one run (issue: "measure both").

    python3 benchmarks/registration_overhead.py

The same relu (kernel torch.relu, backward threshold_backward) registered with
``torch.library.custom_op`` + ``register_autograd``, and as opslib's ``customgrad::relu``
(``Library.define`` + an autograd kernel, opslib/ops/_registration.py), with and without its C++
CPU fast path (opslib/csrc/cpu_fast_path.cpp; "without" runs in a child process started with
OPSLIB_CPU_FAST_PATH=0). On 16 elements: forward without grad and forward + backward, each as a
ratio to native ``torch.relu`` timed alongside it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from bench import measure_pair

import opslib


@torch.library.custom_op("opslib_bench::relu", mutates_args=())
def custom_op_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


custom_op_relu.register_fake(lambda x: torch.empty_like(x))
custom_op_relu.register_autograd(
    lambda ctx, g: torch.ops.aten.threshold_backward(g, ctx.saved_tensors[0], 0),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(output),
)


def measure(name: str, op) -> None:
    x = torch.randn(16)
    xg = torch.randn(16, requires_grad=True)
    g = torch.ones(16)
    fwd, fwd_native = measure_pair(lambda: op(x), lambda: torch.relu(x), 21, 0.01)
    full, full_native = measure_pair(
        lambda: torch.autograd.grad(op(xg), xg, g),
        lambda: torch.autograd.grad(torch.relu(xg), xg, g),
        21,
        0.01,
    )
    print(
        f"{name:44s}{fwd.median * 1e6:8.2f} us ({fwd.median / fwd_native.median:4.1f}x native)"
        f"{full.median * 1e6:12.2f} us ({full.median / full_native.median:4.1f}x native)",
        flush=True,
    )


def main() -> int:
    if os.environ.get("OPSLIB_CPU_FAST_PATH") == "0":  # the child process: Python kernels only
        measure("opslib.relu, Python kernels only", opslib.relu)
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, relu on 16 elements")
    print(f"{'registration':44s}{'forward, no grad':>28s}{'forward + backward':>30s}")
    measure("custom_op + register_autograd", torch.ops.opslib_bench.relu.default)
    fast = "with" if opslib.cpu_fast_path_enabled() else "WITHOUT (not built)"
    measure(f"opslib.relu, {fast} C++ CPU fast path", opslib.relu)
    child = subprocess.run(
        [sys.executable, __file__], env={**os.environ, "OPSLIB_CPU_FAST_PATH": "0"}, check=False
    )
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
