"""Shared test helpers: devices and sample parametrisation over the op table; the comparisons
and checks are the kit's (``opslib.testing.support``)."""

from __future__ import annotations

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
from opslib.testing.families import sample_at
from opslib.testing.opinfo import OpInfo, fresh_leaves, grads_of  # noqa: F401
from opslib.testing.opinfos import OP_TABLE, UPDATE_OP_TABLE
from opslib.testing.support import (  # noqa: F401  (the tests import them from here)
    ALL_OPCHECK_TESTS,
    assert_close_named,
    assert_error_in_chain,
    bind_constants,
)

# The third-party example runs from outside the repository (tests/test_testing_kit.py).
collect_ignore = ["third_party"]


def pytest_collection_modifyitems(items) -> None:
    """A test over the whole op table (``@pytest.mark.every_op``) answers to every op's name,
    and a test of a module about some ops (``pytestmark = pytest.mark.ops(...)``) to theirs, so
    that ``pytest -k <op>`` runs every test that covers the op."""
    names = [info.name for info in (*OP_TABLE, *UPDATE_OP_TABLE)]
    for item in items:
        if item.get_closest_marker("every_op"):
            item.extra_keyword_matches.update(names)
        for marker in item.iter_markers("ops"):
            item.extra_keyword_matches.update(marker.args)


HAS_CUDA = torch.cuda.is_available()
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


get_sample = sample_at  # sample ``index`` of an op, from a seed of its own (the kit's)


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
