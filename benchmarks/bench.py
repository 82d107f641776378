"""Benchmark every op of the op table against native PyTorch, as data.

    python3 benchmarks/bench.py             # full run (CPU, 2 threads: ~48 minutes)
    python3 benchmarks/bench.py --quick     # seconds: the CI smoke test
    python3 benchmarks/bench.py --ops conv2d --dtype bfloat16 --sizes 8 32 --results <folder>
    python3 benchmarks/report.py            # CSV -> PNG plots and summary.md

For each op: forward, backward and full (forward + backward) time, eager and under
torch.compile, at sizes from 16 elements (per-call overhead) to 16M (linear: up to
[8192, 1024] x [1024, 1024]), against the native equivalent in the op table. opslib and native
samples are interleaved within one run, so each ratio compares like with like. Also: bytes saved
for backward, and the example classifier's training step against its torch.nn twin. On a CUDA
machine the same command measures the GPU (Timer synchronises).

Rows are appended to benchmarks/results/{timings,memory,model}.csv, each row carrying the
machine, device, torch version, thread count, git commit and run id (column meanings:
docs/guides/performance.md). ``--dtype`` times another dtype (float32 by default) for the ops
whose op-table entry lists it, and skips the training step (a float32 model); report.py's tables
read float32 runs only, so give such a run its own ``--results`` folder.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_table import BENCH, bench_native
from torch.utils.benchmark import Timer

import opslib
from opslib.models import MLPClassifier
from opslib.testing.opinfo import OpInfo, leaves, requiring_grad
from opslib.testing.opinfos import OP_TABLE

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
PHASES = ("forward", "backward", "full")
# x-sized tensors each phase must read or write at least: forward reads x and writes y;
# backward reads g and the saved tensor and writes dx; full is both.
TRAFFIC = {"forward": 2, "backward": 3, "full": 5}
MATMULS = {"forward": 1, "backward": 2, "full": 3}  # matmuls of the forward's size


def steady_allocator() -> bool:
    """Keep freed blocks up to 32 MiB in glibc's heap instead of returning them to the OS.

    By default glibc unmaps large freed blocks and the next allocation page-faults them back
    in (~1.6 ms for 16 MiB), at points that depend on its adaptive thresholds: timings of a
    4M-element op then jump between two modes at random. A training loop reuses its blocks, so
    measuring with a warm allocator is both steadier and closer to real use. (PyTorch's CUDA
    caching allocator already behaves this way on a GPU.)
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    )


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return (commit or "unknown") + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def machine_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata(device: torch.device) -> dict[str, str]:
    return {
        "run_id": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "machine": machine_name(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        # Whether CPU calls without autograd took opslib's C++ fast path in this run.
        "cpu_fast_path": str(opslib.cpu_fast_path_enabled()),
    }


def append_rows(folder: Path, name: str, rows: list[dict]) -> Path:
    """Add this run's rows to ``<name>.csv``, rewriting the (small) file whole with every column
    any run has had, so a column added later never puts a value under the wrong header (older
    rows get an empty cell)."""
    path = folder / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    old_rows: list[dict] = []
    if path.exists():
        with path.open(newline="") as f:
            old_rows = list(csv.DictReader(f))
    all_rows = old_rows + rows
    columns = list(dict.fromkeys(column for row in all_rows for column in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(all_rows)
    return path


class Stats:
    """Seconds per call: median and 20th/80th percentiles over samples."""

    def __init__(self, samples: list[float]) -> None:
        self.median = float(np.median(samples))
        self.p20 = float(np.percentile(samples, 20))
        self.p80 = float(np.percentile(samples, 80))


def _timer(fn: Callable[[], object]) -> Timer:
    """torch.utils.benchmark's Timer for ``fn()`` at this process's thread count. Its default is
    one thread: until 2026-12-06 every timing here ran on one thread while its row said 2 (those
    rows' ``threads`` now say 1; see docs/guides/performance.md)."""
    return Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def _calls_per_sample(fn: Callable[[], object], target_s: float) -> int:
    once = _timer(fn).timeit(1).median
    return max(1, int(target_s / max(once, 1e-9)))


def measure_pair(
    ours: Callable[[], object], native: Callable[[], object], samples: int, target_s: float
) -> tuple[Stats, Stats]:
    """Time both callables, alternating sample by sample so drift hits both alike."""
    for fn in (ours, native):  # warm-up (and compile, for compiled callables)
        for _ in range(3):
            fn()
    numbers = [_calls_per_sample(fn, target_s) for fn in (ours, native)]
    timers = [_timer(fn) for fn in (ours, native)]
    if min(numbers) == 1 and _timer(ours).timeit(1).median > 0.05:
        samples = min(samples, 7)  # seconds-long calls: 7 samples keep a large run bounded
    times: list[list[float]] = [[], []]
    for i in range(samples):
        for j in (i % 2, 1 - i % 2):
            times[j].append(timers[j].timeit(numbers[j]).median)
    return Stats(times[0]), Stats(times[1])


def phase_callable(
    func: Callable, args: tuple, phase: str, constant: tuple[int, ...] = ()
) -> Callable[[], object]:
    """forward: no autograd at all; backward: only the backward of a kept graph; full: both.
    ``constant``: the op's constant_args, which never require grad."""
    if phase == "forward":
        return lambda: func(*args)
    inputs = leaves(args, constant=constant)
    wrt = requiring_grad(inputs)
    y = func(*inputs)
    grad_y = torch.randn_like(y)
    if phase == "backward":
        return lambda: torch.autograd.grad(y, wrt, grad_y, retain_graph=True)
    return lambda: torch.autograd.grad(func(*inputs), wrt, grad_y)


def roofline(device: torch.device, quick: bool, samples: int) -> dict[str, float]:
    """What the machine reaches on a plain copy (GB/s) and a plain matmul (GFLOP/s)."""
    numel = (1 << 20) if quick else (1 << 24) if device.type == "cpu" else (1 << 26)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    copy_s, _ = measure_pair(lambda: dst.copy_(src), lambda: None, samples, 0.02)
    n = 256 if quick else 1024 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    mm_s, _ = measure_pair(lambda: torch.mm(a, b), lambda: None, samples, 0.02)
    return {
        "copy_gbps": 2 * numel * 4 / copy_s.median / 1e9,
        "matmul_gflops": 2 * n**3 / mm_s.median / 1e9,
    }


def work(info: OpInfo, size: int, phase: str, dtype: torch.dtype) -> tuple[float, str]:
    """Minimum bytes moved (pointwise) or flops done (linear) by one call of the phase."""
    if BENCH[info.name].roofline == "matmul":
        return MATMULS[phase] * BENCH[info.name].forward_flops(size), "GFLOP/s"
    return TRAFFIC[phase] * size * dtype.itemsize, "GB/s"


def bench_ops(args, device, meta, roof) -> list[dict]:
    rows = []
    # eager: both eager; compiled: both compiled; vs-compiled: opslib eager against the
    # compiled reference (only ops marked bench_against_compiled in the op table).
    modes = ["eager"] if args.no_compile else ["eager", "compiled", "vs-compiled"]
    for info in benched_ops(args):
        sizes = BENCH[info.name].sizes[:1] if args.quick else BENCH[info.name].sizes
        if args.sizes:
            sizes = args.sizes
        for mode in modes:
            if mode == "vs-compiled" and not BENCH[info.name].against_compiled:
                continue
            ours_fn, native_fn = info.func, bench_native(info)
            if mode != "eager":
                torch._dynamo.reset()
                native_fn = torch.compile(native_fn, backend=args.backend, dynamic=False)
            if mode == "compiled":
                ours_fn = torch.compile(info.func, backend=args.backend, dynamic=False)
            for label, size, inputs_fn in _cases(info, sizes):
                torch.manual_seed(size)
                inputs = inputs_fn(size, device, args.dtype)
                for phase in PHASES:
                    ours, native = measure_pair(
                        phase_callable(
                            ours_fn, inputs, phase, BENCH[info.name].constant_args(info)
                        ),
                        phase_callable(
                            native_fn, inputs, phase, BENCH[info.name].constant_args(info)
                        ),
                        args.samples,
                        args.target_ms / 1000,
                    )
                    amount, unit = work(info, size, phase, args.dtype)
                    limit = roof["matmul_gflops" if unit == "GFLOP/s" else "copy_gbps"]
                    achieved = amount / ours.median / 1e9
                    rows.append(
                        {
                            **meta,
                            "op": label,
                            "mode": mode if mode == "eager" else f"{mode}-{args.backend}",
                            "phase": phase,
                            "size": size,
                            "dtype": str(args.dtype).removeprefix("torch."),
                            "ours_us": round(ours.median * 1e6, 3),
                            "ours_p20_us": round(ours.p20 * 1e6, 3),
                            "ours_p80_us": round(ours.p80 * 1e6, 3),
                            "native_us": round(native.median * 1e6, 3),
                            "native_p20_us": round(native.p20 * 1e6, 3),
                            "native_p80_us": round(native.p80 * 1e6, 3),
                            "ratio": round(ours.median / native.median, 4),
                            "achieved": round(achieved, 3),
                            "unit": unit,
                            "machine_limit": round(limit, 3),
                            "fraction_of_limit": round(achieved / limit, 4),
                        }
                    )
                    print(
                        f"{label:13s} {mode:11s} {phase:8s} {size:>9d}  opslib "
                        f"{ours.median * 1e6:10.1f} us  native {native.median * 1e6:10.1f} us  "
                        f"ratio {ours.median / native.median:5.2f}  {achieved:8.1f} {unit} "
                        f"({100 * achieved / limit:4.0f}% of machine)",
                        flush=True,
                    )
    return rows


def benched_ops(args) -> list[OpInfo]:
    """The op table's ops that --ops names (all by default) and that have a --dtype kernel."""
    return [
        info
        for info in OP_TABLE
        if (not args.ops or info.name in args.ops) and args.dtype in info.dtypes
    ]


def _cases(info: OpInfo, sizes) -> list[tuple[str, int, Callable]]:
    """(label, size, inputs) for every size: the op's own inputs, then each variant the op
    table declares for it (labelled op[variant]), size by size."""
    inputs = {info.name: BENCH[info.name].inputs}
    inputs.update({f"{info.name}[{v}]": fn for v, fn in BENCH[info.name].variants.items()})
    return [(label, size, fn) for label, fn in inputs.items() for size in sizes]


def saved_bytes(fn: Callable, args: tuple) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values())


def bench_memory(args, device, meta) -> list[dict]:
    rows = []
    for info in benched_ops(args):
        size = BENCH[info.name].sizes[1 if args.quick else 2]
        inputs = leaves(
            BENCH[info.name].inputs(size, device, args.dtype),
            constant=BENCH[info.name].constant_args(info),
        )
        ours, native = saved_bytes(info.func, inputs), saved_bytes(bench_native(info), inputs)
        rows.append(
            {
                **meta,
                "op": info.name,
                "size": size,
                "dtype": str(args.dtype).removeprefix("torch."),
                "ours_saved_bytes": ours,
                "native_saved_bytes": native,
                "ratio": round(ours / native, 4) if native else "",
            }
        )
        print(f"{info.name:13s} saved for backward: opslib {ours:>10d} B, native {native:>10d} B")
    return rows


def bench_model(args, device, meta) -> list[dict]:
    """The example classifier's training step: opslib modules vs the same torch.nn model."""
    rows = []
    if args.dtype != torch.float32:
        print("training step: skipped (the model is float32)")
        return rows
    batches = (64,) if args.quick else (64, 1024)
    modes = ["eager"] if args.no_compile else ["eager", "compiled"]
    for batch in batches:
        for mode in modes:
            torch._dynamo.reset()
            steps, peaks = [], []
            for native in (False, True):
                torch.manual_seed(0)
                model = MLPClassifier(native=native).to(device)
                forward = model if mode == "eager" else torch.compile(model, backend=args.backend)
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
                x = torch.randn(batch, 64, device=device)
                y = torch.randint(0, 10, (batch,), device=device)

                def step(forward=forward, optimizer=optimizer, x=x, y=y):
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(forward(x), y).backward()
                    optimizer.step()

                steps.append(step)
                if device.type == "cuda":
                    step()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    step()
                    torch.cuda.synchronize()
                    peaks.append(torch.cuda.max_memory_allocated())
            ours, native = measure_pair(steps[0], steps[1], args.samples, args.target_ms / 1000)
            rows.append(
                {
                    **meta,
                    "model": "MLPClassifier",
                    "mode": mode if mode == "eager" else f"compiled-{args.backend}",
                    "batch": batch,
                    "ours_ms": round(ours.median * 1e3, 4),
                    "ours_p20_ms": round(ours.p20 * 1e3, 4),
                    "ours_p80_ms": round(ours.p80 * 1e3, 4),
                    "native_ms": round(native.median * 1e3, 4),
                    "native_p20_ms": round(native.p20 * 1e3, 4),
                    "native_p80_ms": round(native.p80 * 1e3, 4),
                    "ratio": round(ours.median / native.median, 4),
                    "ours_peak_cuda_bytes": peaks[0] if peaks else "",
                    "native_peak_cuda_bytes": peaks[1] if peaks else "",
                }
            )
            print(
                f"training step {mode:8s} batch {batch:5d}: opslib {ours.median * 1e3:.3f} ms, "
                f"torch.nn {native.median * 1e3:.3f} ms, ratio {ours.median / native.median:.3f}"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    # A fresh inductor cache: its key does not cover how opslib's ops lower (the decompositions
    # or backward formulas), so a cache filled by an older opslib would be measured instead.
    # First thing: importing torch._dynamo fixes inductor's cache folder for the process.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="opslib-bench-"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the smallest size, few samples (a smoke test)"
    )
    parser.add_argument("--ops", nargs="*", help="only these ops")
    parser.add_argument(
        "--sizes", nargs="*", type=int, help="these sizes instead (elements; rows for linear)"
    )
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor)")
    parser.add_argument("--samples", type=int, default=None, help="samples per measurement")
    parser.add_argument("--target-ms", type=float, default=None, help="time per sample")
    parser.add_argument("--results", type=Path, default=RESULTS, help="CSV folder")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64", "float16", "bfloat16"],
        help="the inputs' dtype (machine limits are measured in float32)",
    )
    args = parser.parse_args(argv)
    args.dtype = getattr(torch, args.dtype)
    args.samples = args.samples or (5 if args.quick else 21)
    args.target_ms = args.target_ms or (1.0 if args.quick else 10.0)
    args.backend = args.backend or ("aot_eager" if args.quick else "inductor")
    # Each (op, phase, size) compiles its own graph; keep them all instead of falling back.
    torch._dynamo.config.cache_size_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steady = steady_allocator()
    meta = run_metadata(device)
    print(
        f"{meta['device']} ({meta['machine']}), torch {meta['torch']}, "
        f"{meta['threads']} threads, commit {meta['commit']}, steady allocator: {steady}"
    )
    start = time.perf_counter()
    roof = roofline(device, args.quick, args.samples)
    print(f"machine: copy {roof['copy_gbps']:.1f} GB/s, matmul {roof['matmul_gflops']:.1f} GFLOP/s")
    written = [
        append_rows(args.results, "timings", bench_ops(args, device, meta, roof)),
        append_rows(args.results, "memory", bench_memory(args, device, meta)),
        append_rows(args.results, "model", bench_model(args, device, meta)),
    ]
    print(
        f"done in {time.perf_counter() - start:.0f} s; appended to "
        + ", ".join(str(p) for p in written)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
