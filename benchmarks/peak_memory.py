"""Peak memory of one forward + backward, opslib against native, for the ops of the op table that
declare a size for it (``bench_peak_memory_size``: the fused losses).

    python3 benchmarks/peak_memory.py                      # every such op, CPU
    python3 benchmarks/peak_memory.py --ops linear_cross_entropy --size 4096

Method (CPU): each measurement runs in a fresh Python process. It runs the op once at a small
size (one-time buffers: thread pools, BLAS workspaces), builds the inputs, resets the kernel's
high-water mark of the process's resident memory (``echo 5 > /proc/self/clear_refs``), runs
forward and backward once, and reads ``VmHWM`` from
``/proc/self/status``: the peak above the inputs and parameters is VmHWM minus the resident
size just before. glibc's mmap threshold is fixed (``MALLOC_MMAP_THRESHOLD_``, 1 MiB) so that
large freed blocks go back to the OS instead of being reused from a heap whose size depends on
history (FACTS.md; ``tracemalloc`` does not see torch's allocator at all). The gradients'
storage counts: both sides produce the same gradients. On CUDA: ``max_memory_allocated``
after ``reset_peak_memory_stats``, minus the allocation before.

Rows are appended to benchmarks/results/peak_memory.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from opslib.op_table import OP_TABLE, leaves, requiring_grad

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, sys, time, torch
from opslib.op_table import OPS_BY_NAME, leaves, requiring_grad
name, which, size, device, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], 0
info = OPS_BY_NAME[name]
fn = info.func if which == "opslib" else info.reference
torch.manual_seed(seed)
small = info.bench_inputs(info.bench_sizes[1], device, torch.float32)
warm = leaves(small, constant=info.constant_args)
y = fn(*warm)  # one-time costs (thread pools, BLAS buffers, kernel caches) before measuring
torch.autograd.grad(y, requiring_grad(warm), torch.ones_like(y))
del warm, y
args = leaves(info.bench_inputs(size, device, torch.float32), constant=info.constant_args)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
if device == "cuda":
    torch.cuda.synchronize(); before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss("VmRSS:")
start = time.perf_counter()
y = fn(*args)
grads = torch.autograd.grad(y, requiring_grad(args), torch.ones_like(y))
if device == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - before
else:
    peak = rss("VmHWM:") - before
seconds = time.perf_counter() - start
print(json.dumps({"peak_bytes": peak, "seconds": seconds}))
"""


def measure(name: str, which: str, size: int, device: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, name, which, str(size), device],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", help="only these ops")
    parser.add_argument("--size", type=int, help="instead of the op's bench_peak_memory_size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", type=Path, default=RESULTS, help="CSV folder")
    args = parser.parse_args(argv)
    from bench import append_rows, run_metadata

    meta = run_metadata(torch.device(args.device))
    rows = []
    for info in OP_TABLE:
        if info.bench_peak_memory_size is None or (args.ops and info.name not in args.ops):
            continue
        size = args.size or info.bench_peak_memory_size
        inputs = leaves(info.bench_inputs(size, "meta", torch.float32), constant=info.constant_args)
        input_bytes = sum(
            t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor)
        )
        grad_bytes = sum(t.numel() * t.element_size() for t in requiring_grad(inputs))
        ours = measure(info.name, "opslib", size, args.device)
        native = measure(info.name, "native", size, args.device)
        ratio = ours["peak_bytes"] / native["peak_bytes"]
        rows.append(
            {
                **meta,
                "op": info.name,
                "size": size,
                "input_bytes": input_bytes,
                "gradient_bytes": grad_bytes,
                "ours_peak_bytes": ours["peak_bytes"],
                "native_peak_bytes": native["peak_bytes"],
                "ratio": round(ratio, 4),
                "ours_seconds": round(ours["seconds"], 3),
                "native_seconds": round(native["seconds"], 3),
            }
        )
        mib = 1 << 20
        print(
            f"{info.name:22s} size {size}: inputs {input_bytes / mib:8.1f} MiB, gradients "
            f"{grad_bytes / mib:8.1f} MiB; peak above the inputs: opslib "
            f"{ours['peak_bytes'] / mib:8.1f} MiB, native {native['peak_bytes'] / mib:8.1f} MiB "
            f"(ratio {ratio:.3f}); one fwd+bwd {ours['seconds']:.2f} s, "
            f"native {native['seconds']:.2f} s",
            flush=True,
        )
    path = append_rows(args.results, "peak_memory", rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
