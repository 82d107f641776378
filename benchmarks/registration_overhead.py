"""Per-call cost of the two ways to register an op, measured in one run (issue: "measure both").

    python3 benchmarks/registration_overhead.py

The same relu (kernel torch.relu, backward threshold_backward) registered with
``torch.library.custom_op`` + ``register_autograd``, and with opslib's ``define_op``
(``Library.define`` + an autograd kernel, opslib/ops/_registration.py), on 16 elements:
forward without grad and forward + backward, each as a ratio to native ``torch.relu``.
"""

from __future__ import annotations

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


def main() -> int:
    x = torch.randn(16)
    xg = torch.randn(16, requires_grad=True)
    g = torch.ones(16)
    variants = {
        "custom_op + register_autograd": torch.ops.opslib_bench.relu.default,
        "opslib define_op": torch.ops.customgrad.relu.default,
        "opslib.relu (public function)": opslib.relu,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, relu on 16 elements")
    print(f"{'registration':32s}{'forward, no grad':>28s}{'forward + backward':>30s}")
    for name, op in variants.items():
        fwd, fwd_native = measure_pair(lambda op=op: op(x), lambda: torch.relu(x), 21, 0.01)
        full, full_native = measure_pair(
            lambda op=op: torch.autograd.grad(op(xg), xg, g),
            lambda: torch.autograd.grad(torch.relu(xg), xg, g),
            21,
            0.01,
        )
        print(
            f"{name:32s}{fwd.median * 1e6:8.2f} us ({fwd.median / fwd_native.median:4.1f}x native)"
            f"{full.median * 1e6:12.2f} us ({full.median / full_native.median:4.1f}x native)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
