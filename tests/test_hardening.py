"""Hardening: no memory growth over a long training run, nothing saved without grad, the same
results from many threads as from one, and state_dicts that load with weights_only=True."""

from __future__ import annotations

import gc
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_named, op_params

from opslib.models import MLPClassifier
from opslib.testing.opinfo import leaves, requiring_grad
from opslib.testing.opinfos import OP_TABLE


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:  # resident pages now (ru_maxrss is only the peak)
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def training_growth(steps: int = 10_000, warmup: int = 1000) -> tuple[float, int]:
    """(RSS growth in MiB, live-tensor growth) over the steps after the warm-up."""
    torch.manual_seed(0)
    model = MLPClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(warmup):  # allocator pools, optimizer state
        step()
    gc.collect()
    rss_before, tensors_before = _rss_mb(), _live_tensors()
    for _ in range(steps - warmup):
        step()
    gc.collect()
    return _rss_mb() - rss_before, _live_tensors() - tensors_before


@pytest.mark.slow  # ~45 s on 2 cores: python3 -m pytest -m slow
def test_ten_thousand_training_steps_do_not_grow_memory():
    """Measured in a fresh process: in this one, objects that earlier tests left for the
    garbage collector may be freed during the run and move the count either way."""
    code = "import test_hardening as t; print(*t.training_growth())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rss_growth, tensor_growth = float(result.stdout.split()[0]), int(result.stdout.split()[1])
    print(
        f"RSS growth over steps 1000..10000: {rss_growth:.2f} MiB; live tensors {tensor_growth:+d}"
    )
    assert tensor_growth == 0
    assert rss_growth < 8.0  # a leak of one 32x64 float tensor per step would be 70 MiB


@pytest.mark.parametrize("info", op_params())
def test_nothing_is_saved_for_backward_without_grad(info):
    args = leaves(info.batch_inputs(16, "cpu", torch.float32), constant=info.constant_args)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.no_grad():
            assert not info.func(*args).requires_grad
        with torch.inference_mode():
            assert not info.func(*args).requires_grad
    assert saved == []


@pytest.mark.slow  # ~25 s on 2 cores
def test_many_threads_give_the_same_results_as_one():
    torch.manual_seed(0)
    jobs = []
    for info in OP_TABLE:
        for rows in (3, 64, 2048):  # 2048 x 64 reaches learned_silu's fused path
            jobs.append((info, info.batch_inputs(rows, "cpu", torch.float32)))

    def run(job):
        info, args = job
        inputs = leaves(args, constant=info.constant_args)
        y = info.func(*inputs)
        grads = torch.autograd.grad(y, requiring_grad(inputs), torch.ones_like(y))
        return [y.detach(), *grads]

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(run, jobs * 4))
    for i, results in enumerate(concurrent):
        info = jobs[i % len(jobs)][0]
        for got, want in zip(results, sequential[i % len(jobs)], strict=True):
            assert_close_named(got, want, f"{info.name} in a thread", atol=0, rtol=0)


def test_state_dicts_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = MLPClassifier()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    restored = MLPClassifier()
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = torch.randn(5, 64)
    assert_close_named(restored(x), model(x), "restored model", atol=0, rtol=0)
    native = MLPClassifier(native=True)  # the same keys as the torch.nn twin
    native.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert_close_named(native(x), model(x), "torch.nn twin with opslib weights")
