"""Which kernel computes a call can be read in the op's own file: its docstring's "Kernels"
paragraph names the C++ fast path, the fused C++ kernels and the Triton kernels exactly where
they are registered or called, and names none that are not."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
from conftest import op_params

CSRC = Path(__file__).resolve().parents[1] / "opslib" / "csrc"
# the ops cpu_fast_path.cpp registers at AutogradCPU: m.impl("relu", ...)
FAST_PATH_OPS = set(re.findall(r'm\.impl\("(\w+)"', (CSRC / "cpu_fast_path.cpp").read_text()))
# where each torch.ops.opslib_cpu.* op is defined: m.def("learned_silu_forward(Tensor x, ...
DEFINED_IN = {
    name: path.name
    for path in CSRC.glob("*.cpp")
    for name in re.findall(r'm\.def\(\s*"(\w+)\(', path.read_text())
}


def _kernels_paragraph(module) -> str:
    doc = module.__doc__ or ""
    start = doc.find("Kernels")
    assert start >= 0, f"{module.__name__}: the docstring has no 'Kernels' paragraph"
    return doc[start:]


@pytest.mark.every_op
def test_the_fast_path_registers_what_the_op_table_says():
    from opslib.testing.opinfos import OP_TABLE

    declared = {info.name for info in OP_TABLE if info.cpu_fast_path is not None}
    assert FAST_PATH_OPS == declared


@pytest.mark.parametrize("info", op_params())
def test_the_docstring_names_the_kernels_that_compute_the_op(info):
    module = sys.modules[info.func.__module__]
    text = _kernels_paragraph(module)
    source = inspect.getsource(module)
    fast_path = info.name in FAST_PATH_OPS
    assert ("cpu_fast_path.cpp" in text) == fast_path, (
        f"{info.name}: the fast path {'takes' if fast_path else 'does not take'} its CPU calls; "
        f"its Kernels paragraph {'does not say so' if fast_path else 'says it does'}"
    )
    for kernel in sorted(set(re.findall(r"torch\.ops\.opslib_cpu\.(\w+)", source))):
        assert DEFINED_IN[kernel] in text, (
            f"{info.name} calls opslib_cpu.{kernel}, defined in opslib/csrc/{DEFINED_IN[kernel]}, "
            f"which its Kernels paragraph does not name"
        )
    triton_modules = set(re.findall(r'cuda_path\.kernels\("(\w+)"\)', source))
    launches_triton = bool(triton_modules)
    assert launches_triton == (info.triton is not None), info.name
    for name in sorted(triton_modules):
        assert f"opslib/ops/triton_kernels/{name}.py" in text, (
            f"{info.name} launches the Triton kernels of opslib/ops/triton_kernels/{name}.py, "
            f"which its Kernels paragraph does not name"
        )
    if launches_triton:
        assert "Triton kernel" in text and "no Triton kernel" not in text.replace("No", "no")
    else:
        assert "Triton kernel" not in text or re.search(r"[Nn]o Triton kernel", text), (
            f"{info.name} launches no Triton kernel, but its Kernels paragraph names one"
        )
