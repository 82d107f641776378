"""Time one optimizer step of every update op in the op table (``UPDATE_OP_TABLE``) against
native PyTorch's optimizers, on the same parameters, in one run.

    python3 benchmarks/optimizer_step.py            # 10M parameters in 100 tensors (~1 min)
    python3 benchmarks/optimizer_step.py --quick    # 1M parameters: the CI smoke test

The model: 100 float32 tensors whose sizes grow geometrically (about 5K to 700K elements, as
a network's biases, norms and weights), 10M parameters in all, each with a gradient. Every
optimizer gets its own copy of the same parameters and gradients, is warmed up for 3 steps, and
is then timed step by step, the optimizers interleaved, so that each ratio compares like with
like. Memory traffic: the bytes a step must move at least (``bench_traffic`` parameter-sized
reads and writes: read p, g, m, v and write p, m, v for Adam) over the median step time, next
to the bandwidth of the simplest in-place update measured in the same run (``x.add_(y)`` on
32M floats: read x and y, write x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_table import UPDATE_BENCH

import opslib  # noqa: F401  (registers the ops)
from opslib.testing.opinfos import UPDATE_OP_TABLE


def parameter_sizes(total: int, count: int = 100) -> list[int]:
    """``count`` sizes growing geometrically by a factor of ~140 from first to last, summing
    to ``total``."""
    weights = [1.051**i for i in range(count)]
    scale = total / sum(weights)
    sizes = [max(1, round(w * scale)) for w in weights]
    sizes[-1] += total - sum(sizes)
    return sizes


def update_bandwidth(numel: int, device: torch.device, sync, repeats: int = 10) -> float:
    """GB/s of ``x.add_(y)``, the simplest in-place update: read x and y, write x (3 x 4 bytes
    an element) over the best time. A copy into a fresh tensor would understate it: its writes
    first read the destination's cache lines, traffic that the byte count would not see."""
    x, y = torch.randn(numel, device=device), torch.randn(numel, device=device)
    x.add_(y)
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        x.add_(y)
        sync()
        best = min(best, time.perf_counter() - start)
    return 3 * numel * 4 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M parameters, 5 timed steps")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (the Triton kernel)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    total = 1_000_000 if args.quick else 10_000_000
    repeats = 5 if args.quick else 30
    sizes = parameter_sizes(total)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(
        f"{len(sizes)} float32 tensors, {sum(sizes):,} parameters ({sizes[0]:,} to {sizes[-1]:,})"
    )
    bandwidth = update_bandwidth(4 << 20 if args.quick else 32 << 20, device, sync)
    print(f"in-place update bandwidth (x.add_(y): read x, y, write x): {bandwidth:.1f} GB/s")
    for info in UPDATE_OP_TABLE:
        if UPDATE_BENCH[info.name].optimizers is None:
            continue
        torch.manual_seed(0)
        values = [torch.randn(n, device=device) for n in sizes]
        grads = [torch.randn(n, device=device) * 1e-2 for n in sizes]
        optimizers = {}
        for name in UPDATE_BENCH[info.name].optimizers(
            [torch.nn.Parameter(torch.empty(1, device=device))]
        ):
            params = [torch.nn.Parameter(v.clone()) for v in values]
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizers[name] = UPDATE_BENCH[info.name].optimizers(params)[name]
        for opt in optimizers.values():
            for _ in range(3):
                opt.step()
        times: dict[str, list[float]] = {name: [] for name in optimizers}
        for _ in range(repeats):
            for name, opt in optimizers.items():
                sync()
                start = time.perf_counter()
                opt.step()
                sync()
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        ours_name = next(iter(medians))
        moved = UPDATE_BENCH[info.name].traffic * sum(sizes) * 4
        print(f"\n{info.label}: one step, median of {repeats} (interleaved)")
        print(f"| optimizer | step ms | ratio to {ours_name} | GB/s moved | of x.add_(y)'s |")
        print("|---|---|---|---|---|")
        for name, seconds in medians.items():
            rate = moved / seconds / 1e9
            print(
                f"| {name} | {seconds * 1e3:.2f} | {seconds / medians[ours_name]:.2f} | "
                f"{rate:.1f} | {rate / bandwidth:.0%} |"
            )
        for name in list(medians)[1:]:
            print(f"{ours_name} / {name}: {medians[ours_name] / medians[name]:.2f}x")


if __name__ == "__main__":
    main()
