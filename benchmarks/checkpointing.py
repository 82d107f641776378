"""Peak memory and time of one training step (forward + backward) of opslib.models.DeepMLP with
no, full and selective activation checkpointing (opslib/checkpointing.py), eager and compiled.

    python3 benchmarks/checkpointing.py                       # width 1024, depth 8, batch 4096
    python3 benchmarks/checkpointing.py --depth 16 --no-compile

Method: as benchmarks/peak_memory.py. Each measurement is a fresh process that builds the model
and input, runs one warm-up step (and the compile), resets the high-water mark of its resident
memory, runs one step and reads VmHWM: the peak above the parameters and input. The saved
activations are what checkpointing changes; the parameters' gradients are the same in every
row. Time: the median of 3 steps after the warm-up. Rows are appended to
benchmarks/results/checkpointing.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
MODES = ("none", "full", "selective")

CHILD = """
import json, statistics, sys, time, torch
from opslib.models import DeepMLP
width, depth, batch, mode, compiled = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                       sys.argv[4], sys.argv[5] == "1")
torch.manual_seed(0)
model = DeepMLP(width, depth, checkpointing=mode)
x = torch.randn(batch, width, requires_grad=True) * 0.5
run = torch.compile(model, fullgraph=True) if compiled else model
def step():
    y = run(x)
    return torch.autograd.grad(y.square().mean(), [x, *model.parameters()])
grads = step(); del grads  # warm-up (and compile)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss("VmRSS:")
grads = step()
peak = rss("VmHWM:") - before
del grads
times = []
for _ in range(3):
    start = time.perf_counter(); grads = step(); times.append(time.perf_counter() - start)
    del grads
print(json.dumps({"peak_bytes": peak, "seconds": statistics.median(times)}))
"""


def measure(width: int, depth: int, batch: int, mode: str, compiled: bool) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    args = [str(width), str(depth), str(batch), mode, "1" if compiled else "0"]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env,
        timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="do not append to the CSV")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from bench import append_rows, run_metadata

    meta = run_metadata(torch.device("cpu"))
    activation = args.batch * args.width * 4
    print(
        f"DeepMLP width {args.width}, depth {args.depth}, batch {args.batch}, float32: one "
        f"activation [batch, width] = {activation / (1 << 20):.1f} MiB"
    )
    rows = []
    for compiled in (False,) if args.no_compile else (False, True):
        baseline = None
        for mode in MODES:
            result = measure(args.width, args.depth, args.batch, mode, compiled)
            baseline = baseline or result
            row = {
                **meta, "width": args.width, "depth": args.depth, "batch": args.batch,
                "checkpointing": mode, "compiled": compiled,
                "peak_bytes": result["peak_bytes"], "seconds": round(result["seconds"], 4),
                "peak_vs_none": round(result["peak_bytes"] / baseline["peak_bytes"], 4),
                "time_vs_none": round(result["seconds"] / baseline["seconds"], 4),
            }  # fmt: skip
            rows.append(row)
            print(
                f"{'compiled' if compiled else 'eager':8s} {mode:9s}: peak above the inputs "
                f"{result['peak_bytes'] / (1 << 20):8.1f} MiB ({row['peak_vs_none']:.2f}x of "
                f"none), one step {result['seconds'] * 1e3:7.1f} ms "
                f"({row['time_vs_none']:.2f}x)",
                flush=True,
            )
    if not args.no_save:
        append_rows(RESULTS, "checkpointing", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
