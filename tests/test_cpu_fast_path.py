"""The C++ CPU fast path (opslib/csrc/cpu_fast_path.cpp): built here, taken by plain calls that
need no autograd, bit-for-bit the Python kernel's result, and never taken by any other call.

Which path ran is told by the Python kernel's input check: every Python kernel calls its
module's ``check_floating_input``, the C++ path calls nothing in Python, so a counter put in
its place stays at zero exactly when the fast path computed the call.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import get_sample, op_params, op_sample_params
from torch.utils._python_dispatch import TorchDispatchMode

import opslib
from opslib.ops.learned_silu import FUSED_FORWARD_MIN_NUMEL

FAST_PATH_OFF = os.environ.get("OPSLIB_CPU_FAST_PATH") == "0"
needs_fast_path = pytest.mark.skipif(FAST_PATH_OFF, reason="OPSLIB_CPU_FAST_PATH=0")


def python_kernel(name: str):
    """The op's CPU kernel, ``opslib/ops/<name>.py: _<name>_kernel``, called directly."""
    return getattr(importlib.import_module(f"opslib.ops.{name}"), f"_{name}_kernel")


@pytest.fixture
def python_kernel_calls(monkeypatch):
    """``calls[name]``: how many times op ``name``'s Python kernel checked its input."""
    calls: dict[str, int] = {}
    for info in opslib.op_table.OP_TABLE:
        module = importlib.import_module(f"opslib.ops.{info.name}")
        original = module.check_floating_input

        def counting(op, *args, _original=original):
            calls[op] = calls.get(op, 0) + 1
            return _original(op, *args)

        monkeypatch.setattr(module, "check_floating_input", counting)
    return calls


@needs_fast_path
def test_fast_path_is_built_and_loaded():
    assert opslib.cpu_fast_path_enabled(), "the C++ CPU fast path failed to build or load"


@pytest.mark.parametrize("info,index", op_sample_params())
def test_no_grad_call_gives_the_python_kernels_result_bit_for_bit(info, index):
    """Every sample, in every float dtype, called without autograd: the op's result equals what
    its Python kernel computes, in value (bit for bit), dtype, shape and strides."""
    for dtype in info.dtypes:
        sample = get_sample(info, index, "cpu", dtype, requires_grad=False)
        got = info.op(*sample.args)
        want = python_kernel(info.name)(*sample.args)
        what = f"{info.name}/{sample} {dtype}"
        assert got.dtype == want.dtype and got.shape == want.shape, what
        assert got.stride() == want.stride(), f"{what}: strides {got.stride()} != {want.stride()}"
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=what)


def t(*shape, dtype=torch.float32, requires_grad=False):
    return torch.randn(shape, dtype=dtype).requires_grad_(requires_grad)


UNARY = ["square", "cube", "exp", "relu", "sigmoid", "tanh"]
PLAIN_CALLS = [
    *[(name, (t(4, 5),)) for name in UNARY],
    *[(name, (t(5, 4).t(),)) for name in UNARY],  # transposed
    ("relu", (t(),)),
    ("exp", (t(0, 3),)),
    ("tanh", (t(3, 4, dtype=torch.bfloat16),)),
    ("sigmoid", (t(3, 4, dtype=torch.float16),)),
    ("square", (t(3, 4, dtype=torch.float64),)),
    ("linear", (t(4, 3), t(5, 3))),
    ("linear", (t(4, 3), t(5, 3), t(5))),
    ("linear", (t(3), t(5, 3), t(5))),
    ("linear", (t(2, 4, 3), t(5, 3), t(5))),
    ("learned_silu", (t(4, 5), t())),
    ("learned_silu", (t(4, 5), t(1))),
    ("learned_silu", (t(4, 5), t(5))),
    ("learned_silu", (t(FUSED_FORWARD_MIN_NUMEL - 1), t(1))),
]


def _call(name, args):
    return getattr(torch.ops.customgrad, name)(*args)


@needs_fast_path
@pytest.mark.parametrize("name,args", PLAIN_CALLS, ids=[c[0] for c in PLAIN_CALLS])
def test_plain_call_without_autograd_takes_the_fast_path(name, args, python_kernel_calls):
    _call(name, args)
    with_grad = [a.detach().requires_grad_() for a in args]
    with torch.no_grad():  # inputs that require grad, but no_grad: nothing to record
        _call(name, with_grad)
    assert python_kernel_calls.get(name, 0) == 0, f"{name}: the Python kernel ran"
    _call(name, with_grad)  # a gradient to record: the Python path, or the counter is blind
    assert python_kernel_calls.get(name, 0) > 0, f"{name}: the counter saw no Python call"


def _fused_learned_silu_call():
    x = t(FUSED_FORWARD_MIN_NUMEL)
    return opslib.learned_silu(x, t(1))


OTHER_CALLS = {
    "needs a gradient": lambda: opslib.relu(t(3, requires_grad=True)),
    "linear bias [1, out]": lambda: opslib.linear(t(4, 3), t(5, 3), t(1, 5)),
    "linear bias [batch, out]": lambda: opslib.linear(t(4, 3), t(5, 3), t(4, 5)),
    "learned_silu at the fused size": _fused_learned_silu_call,
    "integer input": lambda: opslib.exp(torch.arange(3)),
    "mismatched dtypes": lambda: opslib.linear(t(4, 3), t(5, 3, dtype=torch.float64)),
    "bad shapes": lambda: opslib.linear(t(4, 6), t(5, 3)),
    "slope too wide": lambda: opslib.learned_silu(t(4, 5), t(6)),
    "sparse input": lambda: opslib.tanh(t(3, 3).to_sparse()),
}


@needs_fast_path
@pytest.mark.parametrize("case", list(OTHER_CALLS), ids=list(OTHER_CALLS))
def test_every_other_call_goes_to_the_python_kernel(case, python_kernel_calls):
    """Autograd, other bias or slope forms, the fused size and every bad input are the Python
    kernel's: it computes or raises (its messages are checked in test_bad_input.py)."""
    try:
        OTHER_CALLS[case]()
    except (TypeError, ValueError):
        pass
    assert sum(python_kernel_calls.values()) > 0, f"{case}: the fast path took it"


def test_learned_silu_sizes_the_fast_path_leaves_to_the_fused_loop(monkeypatch):
    """The C++ constant for learned_silu's fused size equals FUSED_FORWARD_MIN_NUMEL: below it
    the op computes without the fused loop, from it on through it."""
    module = importlib.import_module("opslib.ops.learned_silu")
    fused_calls = []
    original = module.run_fused
    monkeypatch.setattr(module, "run_fused", lambda *a: fused_calls.append(1) or original(*a))
    opslib.learned_silu(t(FUSED_FORWARD_MIN_NUMEL - 1), t(1))
    assert not fused_calls
    y = _fused_learned_silu_call()
    assert fused_calls and y.shape == (FUSED_FORWARD_MIN_NUMEL,)


class SeesEveryOp(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("info", op_params())
def test_a_dispatch_mode_still_sees_the_op(info):
    """Under a TorchDispatchMode (what tracing and FakeTensor use) the op reaches the mode as
    customgrad.<name>, not as the ATen calls it is made of."""
    args = info.batch_inputs(3, "cpu", torch.float32)
    with SeesEveryOp() as mode:
        info.func(*args)
    assert f"customgrad.{info.name}.default" in mode.seen, mode.seen


def test_forward_mode_tangent_is_refused_without_grad_too():
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(t(3), t(3))
        with pytest.raises(NotImplementedError, match=r"customgrad\.tanh: forward-mode AD"):
            opslib.tanh(dual)


def test_inference_mode_calls_work():
    x = t(4, 5)
    with torch.inference_mode():
        for name in UNARY:
            torch.testing.assert_close(_call(name, (x,)), python_kernel(name)(x))


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


CHECK_OPS_WITHOUT_FAST_PATH = """
    import torch, opslib
    from opslib.op_table import OP_TABLE
    print("fast path:", opslib.cpu_fast_path_enabled())
    for info in OP_TABLE:
        args = info.batch_inputs(5, "cpu", torch.float32)
        torch.testing.assert_close(info.func(*args), info.reference(*args))
    print("ops ok")
"""


def test_switched_off_the_ops_run_their_python_kernels():
    result = _run(CHECK_OPS_WITHOUT_FAST_PATH, {"OPSLIB_CPU_FAST_PATH": "0"})
    assert result.returncode == 0, result.stderr
    assert "fast path: False" in result.stdout and "ops ok" in result.stdout
    assert "CpuFastPathWarning" not in result.stderr, result.stderr


def test_when_it_cannot_be_built_opslib_warns_once_and_works(tmp_path):
    """No working C++ compiler: one warning that says what failed and how to silence it."""
    result = _run(
        CHECK_OPS_WITHOUT_FAST_PATH,
        {"OPSLIB_CPU_FAST_PATH": "1", "CXX": "false", "TORCH_EXTENSIONS_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "fast path: False" in result.stdout and "ops ok" in result.stdout
    assert result.stderr.count("CpuFastPathWarning") == 1, result.stderr
    assert "OPSLIB_CPU_FAST_PATH=0" in result.stderr, result.stderr


def test_only_a_lock_older_than_any_build_is_removed(tmp_path):
    from opslib.core.cpu_fast_path import STALE_LOCK_SECONDS, remove_stale_lock

    fresh, stale = tmp_path / "fresh", tmp_path / "stale"
    fresh.touch()
    stale.touch()
    old = time.time() - STALE_LOCK_SECONDS - 60
    os.utime(stale, (old, old))
    remove_stale_lock(fresh)  # a build in progress elsewhere: wait for it
    remove_stale_lock(stale)  # left by a killed build: every import would wait forever
    remove_stale_lock(tmp_path / "absent")
    assert fresh.exists() and not stale.exists()


def test_a_lock_left_by_a_killed_build_does_not_hang_the_import(tmp_path, monkeypatch):
    from opslib.core import cpu_fast_path as _cpu_fast_path

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _cpu_fast_path.build_directory() / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    old = time.time() - _cpu_fast_path.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECK_OPS_WITHOUT_FAST_PATH)],
        capture_output=True,
        text=True,
        timeout=300,  # torch's builder would wait on the lock for ever
        env={**os.environ, "OPSLIB_CPU_FAST_PATH": "1", "CXX": "false"},
    )
    assert result.returncode == 0 and "ops ok" in result.stdout, result.stderr
    assert not lock.exists()
