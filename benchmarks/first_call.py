"""First call against second call in a fresh process, for ops whose eager path is fused.

    python3 benchmarks/first_call.py [--runs 5] [--numel 4194304]

Each run starts a new Python process, imports opslib, and times forward + backward twice on the
op's benchmark inputs (the nn.Parameter variant where the op table declares one): a kernel
compiled at run time (as learned_silu's used to be, with inductor) shows up as a first call
seconds slower than the second. The native expression is timed the same way, in a process of
its own.

PyTorch's first ``torch.autograd.grad`` in a process imports sympy (~0.4 s), for native code
and opslib alike; each process first takes the gradient of one element with native ops, so that
what is measured is the op's own first-call cost. Prints every run's times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = """
    import sys, time, torch, opslib
    from opslib.testing.opinfo import leaves, requiring_grad
    from opslib.testing.opinfos import OPS_BY_NAME
    from bench_table import BENCH, bench_native
    info = OPS_BY_NAME[sys.argv[1]]
    func = info.func if sys.argv[3] == "opslib" else bench_native(info)
    one = torch.ones(1, requires_grad=True)
    torch.autograd.grad(one * 2, one, torch.ones(1))  # torch's own lazy imports, not the op's
    make = BENCH[info.name].variants.get("nn.Parameter slope", BENCH[info.name].inputs)
    args = leaves(make(int(sys.argv[2]), "cpu", torch.float32), constant=info.constant_args)
    grad_y = torch.ones_like(func(*args))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        torch.autograd.grad(func(*args), requiring_grad(args), grad_y)
        times.append(time.perf_counter() - start)
    print(times[0], times[1])
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--numel", type=int, default=1 << 22)
    args = parser.parse_args(argv)
    from bench_table import BENCH

    from opslib.testing.opinfos import OP_TABLE

    for info in OP_TABLE:
        if not BENCH[info.name].against_compiled:
            continue
        for run in range(args.runs):
            for side in ("opslib", "native"):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        textwrap.dedent(CHILD),
                        info.name,
                        str(args.numel),
                        side,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=Path(__file__).parent,  # the child imports bench_table from here
                ).stdout.split()
                first, second = float(out[0]), float(out[1])
                print(
                    f"{info.name} {side:6s} {args.numel} elements, run {run + 1}: first "
                    f"{first * 1e3:7.1f} ms, second {second * 1e3:6.1f} ms, first - second "
                    f"{(first - second) * 1e3:+7.1f} ms",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
