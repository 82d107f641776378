"""Shared test helpers: devices, sample parametrisation over the op table, comparisons."""

from __future__ import annotations

import math
import os
import sys
import zlib
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

# The export scripts' parity models (export/parity.py) and the benchmark script are shared with
# the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# Without a GPU, Triton kernels run on CPU tensors under Triton's interpreter; it must be
# switched on before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import opslib  # noqa: F401  (registers the ops)
from opslib.op_table import OP_TABLE, OpInfo, Sample, leaves

HAS_CUDA = torch.cuda.is_available()
# Every check torch.library.opcheck has (its default leaves out test_aot_dispatch_static).
ALL_OPCHECK_TESTS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_static",
    "test_aot_dispatch_dynamic",
)
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]

# Inputs drawn while tests are collected (parametrisations that call batch_inputs) come from
# this seed, the same in every run of the same files; each test's own draws come from its name,
# so that a failure in a test's body reproduces when that test runs alone.
torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _seed_from_the_test_name(request) -> None:
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def op_sample_params(table: list[OpInfo] = OP_TABLE) -> list:
    """One pytest param per (op, sample) of the table, named op-sample."""
    params = []
    for info in table:
        for index, sample in enumerate(info.sample_inputs("cpu", torch.float32, True)):
            params.append(pytest.param(info, index, id=f"{info.name}-{sample.name}"))
    return params


def op_params(table: list[OpInfo] = OP_TABLE) -> list:
    return [pytest.param(info, id=info.name) for info in table]


def get_sample(info: OpInfo, index: int, device, dtype, requires_grad: bool = True) -> Sample:
    torch.manual_seed(1000 + index)
    return info.sample_inputs(device, dtype, requires_grad)[index]


def fresh_leaves(args: tuple, dtype: torch.dtype | None = None) -> tuple:
    """Independent copies of a sample's tensors (optionally cast), same requires_grad."""
    return leaves(args, requires_grad=None, dtype=dtype)


def grads_of(args: tuple) -> list:
    return [a.grad for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def assert_close_named(actual, expected, what: str, **tol) -> None:
    """assert_close whose message starts with which op/sample/quantity failed."""
    torch.testing.assert_close(
        actual, expected, equal_nan=True, msg=lambda m: f"{what}: {m}", **tol
    )


def bind_constants(func, args: tuple):
    """``(f, tensors)``: ``f(*tensors)`` calls ``func(*args)`` with every argument that is not a
    tensor (floats, ints, None...) written into ``f``'s code as a literal, the way a model's code
    writes a hyperparameter; ``tensors`` are the tensor arguments in order.

    Literals, not a closure: dynamo treats a float it reads from a closure, a container or a
    module attribute as a symbolic input (see test_compile_export's float tests); a literal is a
    constant of the code.
    """
    tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
    places, k = [], 0
    for a in args:
        if isinstance(a, torch.Tensor):
            places.append(f"t[{k}]")
            k += 1
        else:
            places.append(_literal(a))
    with_constants = eval(f"lambda *t: func({', '.join(places)})", {"func": func})
    return with_constants, tensors


def _literal(value: object) -> str:
    """Python source for a float, int, bool, None or (nested) list: its repr, but inf and nan,
    which have no literal, as float('inf') and float('nan')."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, (list, tuple)):
        items = ", ".join(_literal(v) for v in value)
        return (
            f"[{items}]"
            if isinstance(value, list)
            else f"({items}{',' if len(value) == 1 else ''})"
        )
    return repr(value)


def assert_error_in_chain(raised: BaseException, error: type[Exception]) -> None:
    """Dynamo wraps a fake implementation's error; the op's own error must be in the chain. An
    error raised by Python code dynamo traces (a public function's argument check) reaches the
    chain as dynamo's own stand-in for that type (``ObservedTypeError`` for a TypeError)."""
    from torch._dynamo.exc import get_dynamo_observed_exception

    stand_in = get_dynamo_observed_exception(error)
    chain, err = [], raised
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, (error, stand_in)) for e in chain), [type(e) for e in chain]


class LargestTensor(TorchFunctionMode):
    """The largest tensor any torch function or op call returns. (A function mode, not a
    dispatch mode: under a dispatch mode the op takes its tracing path, as it must.)"""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out
