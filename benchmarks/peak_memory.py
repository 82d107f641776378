"""Peak memory of one forward + backward, opslib against native, for the ops of the op table that
declare a size for it (``bench_peak_memory_size``: the fused losses, attention), at that size or
along the op's ``bench_memory_curve`` (attention: L = 512 ... 8192), also against the op's other
baselines (``bench_baselines``: attention's textbook "math" composite), with a plot per curve.

    python3 benchmarks/peak_memory.py                      # every such op, CPU
    python3 benchmarks/peak_memory.py --ops linear_cross_entropy --size 4096
    python3 benchmarks/peak_memory.py --ops scaled_dot_product_attention   # the curve + plot

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
from bench_table import BENCH

from opslib.testing.opinfo import leaves, requiring_grad
from opslib.testing.opinfos import OP_TABLE

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, sys, time, torch
from opslib.testing.opinfo import leaves, requiring_grad
from opslib.testing.opinfos import OPS_BY_NAME
from bench_table import BENCH, bench_native
name, which, size, device, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], 0
info = OPS_BY_NAME[name]
fn = {"opslib": info.func, "native": bench_native(info), **BENCH[info.name].baselines}[which]
torch.manual_seed(seed)
small = BENCH[info.name].inputs(BENCH[info.name].sizes[1], device, torch.float32)
warm = leaves(small, constant=BENCH[info.name].constant_args(info))
y = fn(*warm)  # one-time costs (thread pools, BLAS buffers, kernel caches) before measuring
torch.autograd.grad(y, requiring_grad(warm), torch.ones_like(y))
del warm, y
args = leaves(
    BENCH[info.name].inputs(size, device, torch.float32),
    constant=BENCH[info.name].constant_args(info),
)
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
        cwd=Path(__file__).parent,  # the child imports bench_table from here
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_size(info, size: int, device: str, meta: dict) -> dict:
    """One row: the peak above the inputs and the seconds of one forward + backward, for opslib,
    native and each of the op's baselines, in fresh processes."""
    inputs = leaves(
        BENCH[info.name].inputs(size, "meta", torch.float32),
        constant=BENCH[info.name].constant_args(info),
    )
    input_bytes = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
    grad_bytes = sum(t.numel() * t.element_size() for t in requiring_grad(inputs))
    ours = measure(info.name, "opslib", size, device)
    native = measure(info.name, "native", size, device)
    row = {
        **meta,
        "op": info.name,
        "size": size,
        "input_bytes": input_bytes,
        "gradient_bytes": grad_bytes,
        "ours_peak_bytes": ours["peak_bytes"],
        "native_peak_bytes": native["peak_bytes"],
        "ratio": round(ours["peak_bytes"] / native["peak_bytes"], 4),
        "ours_seconds": round(ours["seconds"], 3),
        "native_seconds": round(native["seconds"], 3),
    }
    mib = 1 << 20
    line = (
        f"{info.name:22s} size {size}: inputs {input_bytes / mib:8.1f} MiB, gradients "
        f"{grad_bytes / mib:8.1f} MiB; peak above the inputs: opslib "
        f"{ours['peak_bytes'] / mib:8.1f} MiB, native {native['peak_bytes'] / mib:8.1f} MiB "
        f"(ratio {row['ratio']:.3f}); one fwd+bwd {ours['seconds']:.2f} s, "
        f"native {native['seconds']:.2f} s"
    )
    for name in BENCH[info.name].baselines:
        other = measure(info.name, name, size, device)
        row[f"{name}_peak_bytes"], row[f"{name}_seconds"] = other["peak_bytes"], other["seconds"]
        row[f"ratio_vs_{name}"] = round(ours["peak_bytes"] / other["peak_bytes"], 4)
        line += (
            f"; {name} {other['peak_bytes'] / mib:.1f} MiB (ratio {row[f'ratio_vs_{name}']:.3f}),"
            f" {other['seconds']:.2f} s"
        )
    print(line, flush=True)
    return row


def plot_curve(info, rows: list[dict], folder: Path) -> Path:
    """Peak memory and time of one forward + backward against the size, every implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["size"] for row in rows]
    names = {"opslib": "ours", "native": "native", **{n: n for n in BENCH[info.name].baselines}}
    figure, (memory, seconds) = plt.subplots(1, 2, figsize=(11, 4))
    for label, key in names.items():
        memory.plot(sizes, [row[f"{key}_peak_bytes"] / (1 << 20) for row in rows], "o-",
                    label=label)  # fmt: skip
        seconds.plot(sizes, [row[f"{key}_seconds"] for row in rows], "o-", label=label)
    for axis, what in ((memory, "peak memory above the inputs (MiB)"), (seconds, "seconds")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel(BENCH[info.name].size_unit)
        axis.set_ylabel(what)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(f"{info.name}: one forward + backward ({rows[0]['device']}, "
                    f"{rows[0]['threads']} threads)")  # fmt: skip
    figure.tight_layout()
    path = folder / f"peak_memory_{info.name}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
        if BENCH[info.name].peak_memory_size is None or (args.ops and info.name not in args.ops):
            continue
        sizes = (
            [args.size]
            if args.size
            else BENCH[info.name].memory_curve or [BENCH[info.name].peak_memory_size]
        )
        for size in sizes:
            rows.append(measure_size(info, size, args.device, meta))
        if len(sizes) > 1:
            print(f"plotted {plot_curve(info, rows[-len(sizes) :], args.results)}")
    path = append_rows(args.results, "peak_memory", rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
