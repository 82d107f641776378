"""The C++ CPU fast path (opslib/csrc/cpu_fast_path.cpp): built here, taken by plain calls that
need no autograd, bit-for-bit the Python kernel's result, and never taken by any other call.

Which path ran is told by the Python kernel itself: a profile hook (``sys.setprofile``) sees
every call into the code of a registered kernel (``PYTHON_KERNELS``), and the C++ path calls
nothing in Python. Which calls the C++ path computes is declared per op in the op table
(``OpInfo.cpu_fast_path``). Bad calls never reach it either: they raise the Python kernel's
errors, with the fast path on, in tests/test_bad_input.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import pytest
import torch
from bench_table import BENCH
from conftest import get_sample, op_params, op_sample_params
from torch.utils._python_dispatch import TorchDispatchMode

import opslib
from opslib.core.registration import PYTHON_KERNELS
from opslib.testing.opinfo import leaves
from opslib.testing.opinfos import OP_TABLE

FAST_PATH_OFF = os.environ.get("OPSLIB_CPU_KERNELS") == "0"
needs_fast_path = pytest.mark.skipif(FAST_PATH_OFF, reason="OPSLIB_CPU_KERNELS=0")


def as_outputs(result) -> tuple:
    """An op's outputs as a tuple (linear_cross_entropy's op has four; most have one)."""
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def python_kernel(info):
    """The op's Python kernel, as define_op registered it."""
    return PYTHON_KERNELS[info.op._schema.name]


@contextmanager
def python_kernel_calls():
    """Yields a list that collects the qualified name of every Python kernel run inside."""
    codes = {kernel.__code__: name for name, kernel in PYTHON_KERNELS.items()}
    seen: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(previous)


@needs_fast_path
def test_fast_path_is_built_and_loaded():
    assert opslib.cpu_fast_path_enabled(), "the C++ CPU fast path failed to build or load"


@pytest.mark.every_op
def test_the_table_declares_exactly_the_ops_that_have_a_cpp_kernel():
    if not opslib.cpu_fast_path_enabled():
        pytest.skip("the fast path is not loaded")
    for info in OP_TABLE:
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(
            info.op._schema.name, "AutogradCPU"
        )
        assert has_kernel == (info.cpu_fast_path is not None), info.name


@pytest.mark.parametrize("info,index", op_sample_params())
def test_no_grad_call_gives_the_python_kernels_result_bit_for_bit(info, index):
    """Every sample, in every float dtype, called without autograd: the op's result equals what
    its Python kernel computes, in value (bit for bit), dtype, shape and strides."""
    for dtype in info.dtypes:
        sample = get_sample(info, index, "cpu", dtype, requires_grad=False)
        got = as_outputs(info.op(*sample.args))
        want = as_outputs(python_kernel(info)(*sample.args))
        what = f"{info.name}/{sample} {dtype}"
        for g, w in zip(got, want, strict=True):  # every output of ops with several
            assert g.dtype == w.dtype and g.shape == w.shape, what
            assert g.stride() == w.stride(), f"{what}: strides {g.stride()} != {w.stride()}"
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=what)


def plain_calls() -> list:
    """Every sample of every op with a C++ kernel, and its benchmark inputs up to 4M elements,
    without grad."""
    params = []
    for info in OP_TABLE:
        if info.cpu_fast_path is None:
            continue
        for index, sample in enumerate(info.sample_inputs("cpu", torch.float32, False)):
            params.append(pytest.param(info, ("sample", index), id=f"{info.name}-{sample.name}"))
        for size in BENCH[info.name].sizes:
            if size <= 1 << 22:
                params.append(pytest.param(info, ("bench", size), id=f"{info.name}-bench{size}"))
    return params


def _plain_args(info, which):
    kind, key = which
    torch.manual_seed(0)
    if kind == "sample":
        return info.sample_inputs("cpu", torch.float32, False)[key].args
    return BENCH[info.name].inputs(key, "cpu", torch.float32)


@needs_fast_path
@pytest.mark.parametrize("info,which", plain_calls())
def test_calls_the_op_table_gives_the_fast_path_take_it_and_no_others(info, which):
    """A valid call without autograd is the C++ kernel's exactly when the op's OpInfo says so;
    inputs that require grad under torch.no_grad() are the same; a call that records a gradient
    always reaches the Python kernel (which also shows that the profile hook sees it)."""
    args = _plain_args(info, which)
    expected_fast = info.cpu_fast_path(*args)
    with_grad = leaves(args, constant=info.constant_args)
    with python_kernel_calls() as seen:
        info.op(*args)
        with torch.no_grad():
            info.op(*with_grad)
    assert bool(seen) != expected_fast, f"{info.name}: Python kernel calls {seen}"
    if any(a.requires_grad for a in with_grad if isinstance(a, torch.Tensor) and a.numel()):
        with python_kernel_calls() as seen:
            info.op(*with_grad)
        assert seen, f"{info.name}: a call that needs a gradient skipped the Python kernel"


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
    assert str(info.op) in mode.seen, mode.seen


@pytest.mark.parametrize("info", op_params())
def test_forward_mode_tangent_is_refused_without_grad_too(info):
    import torch.autograd.forward_ad as fwAD

    args = info.batch_inputs(3, "cpu", torch.float32)
    with fwAD.dual_level():
        dual = fwAD.make_dual(args[0], torch.randn_like(args[0]))
        with pytest.raises(NotImplementedError, match=rf"{info.label}: forward-mode AD"):
            info.func(dual, *args[1:])


@pytest.mark.parametrize("info", op_params())
def test_inference_mode_calls_work(info):
    args = info.batch_inputs(4, "cpu", torch.float32)
    with torch.inference_mode():
        result = as_outputs(python_kernel(info)(*args))[0]  # the op's result (the loss)
        torch.testing.assert_close(info.func(*args), result.to(info.func(*args).dtype))


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


CHECK_OPS_WITHOUT_FAST_PATH = """
    import torch, opslib
    from opslib.testing.opinfos import OP_TABLE
    print("fast path:", opslib.cpu_fast_path_enabled())
    for info in OP_TABLE:
        args = info.batch_inputs(5, "cpu", torch.float32)
        torch.testing.assert_close(info.func(*args), info.reference(*args))
    print("ops ok")
"""


@pytest.mark.every_op
def test_switched_off_the_ops_run_their_python_kernels():
    result = _run(CHECK_OPS_WITHOUT_FAST_PATH, {"OPSLIB_CPU_KERNELS": "0"})
    assert result.returncode == 0, result.stderr
    assert "fast path: False" in result.stdout and "ops ok" in result.stdout
    assert "CpuKernelsWarning" not in result.stderr, result.stderr


def test_when_it_cannot_be_built_opslib_warns_once_and_works(tmp_path):
    """No working C++ compiler: one warning that says what failed and how to silence it."""
    result = _run(
        CHECK_OPS_WITHOUT_FAST_PATH,
        {"OPSLIB_CPU_KERNELS": "1", "CXX": "false", "TORCH_EXTENSIONS_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "fast path: False" in result.stdout and "ops ok" in result.stdout
    assert result.stderr.count("CpuKernelsWarning") == 1, result.stderr
    assert "OPSLIB_CPU_KERNELS=0" in result.stderr, result.stderr


def test_only_a_lock_older_than_any_build_is_removed(tmp_path):
    from opslib.core.cpu_kernels import STALE_LOCK_SECONDS, remove_stale_lock

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
    from opslib.core import cpu_kernels as _cpu_kernels

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _cpu_kernels.build_directory() / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    old = time.time() - _cpu_kernels.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECK_OPS_WITHOUT_FAST_PATH)],
        capture_output=True,
        text=True,
        timeout=300,  # torch's builder would wait on the lock for ever
        env={**os.environ, "OPSLIB_CPU_KERNELS": "1", "CXX": "false"},
    )
    assert result.returncode == 0 and "ops ok" in result.stdout, result.stderr
    assert not lock.exists()


def test_the_prebuild_command_reports_the_library_loaded():
    """``python3 -m opslib.core.cpu_kernels`` (the quick start's build-ahead command) exits 0
    and says so when the library loads (here it is already built: the tests imported it)."""
    run = subprocess.run(
        [sys.executable, "-m", "opslib.core.cpu_kernels"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and "C++ CPU kernels: loaded" in run.stdout, run.stdout + run.stderr


def test_module_parameters_count_as_plain_tensors_and_fake_tensors_do_not():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from opslib.core.registration import only_plain_tensors

    assert only_plain_tensors((torch.ones(2), torch.nn.Parameter(torch.ones(2))))
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.ones(2))
    assert not only_plain_tensors((fake,))


@pytest.mark.parametrize(
    "module, op_file",
    [
        (lambda: opslib.nn.LayerNorm(8), "layer_norm"),
        (lambda: opslib.nn.RMSNorm(8), "rms_norm"),
    ],
    ids=["LayerNorm", "RMSNorm"],
)
def test_a_norm_module_backward_takes_the_cpp_kernel(module, op_file, monkeypatch):
    """Inside a model the weight is an nn.Parameter (a Tensor subclass): the first-order
    backward must still run the C++ kernel, not the torch-op formula (2x a DeepMLP step)."""
    if not opslib.cpu_kernels_enabled():
        pytest.skip("the C++ kernels are not loaded")
    import importlib

    op_module = importlib.import_module(f"opslib.ops.{op_file}")

    def formula_must_not_run(*args, **kwargs):
        raise AssertionError("the torch-op backward formula ran")

    monkeypatch.setattr(op_module, "_backward_formula", formula_must_not_run)
    norm = module()
    x = torch.randn(4, 8, requires_grad=True)
    norm(x).sum().backward()
    assert norm.weight.grad is not None and x.grad is not None
