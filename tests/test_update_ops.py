"""The op contract for ops that update their arguments in place (``UPDATE_OP_TABLE``): an
optimizer step. Every family that applies to such an op runs here for every entry of the table
(see ``UpdateOpInfo`` for the ones that do not apply, and why): opcheck's five checks, each
kernel against the native reference in every dtype, torch.compile, torch.export, TorchScript,
autograd's version counters and refusals, and bad calls refused with nothing changed.
"""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from conftest import ALL_OPCHECK_TESTS, assert_error_in_chain

from opslib.core import cpu_kernels
from opslib.testing.opinfo import Sample
from opslib.testing.opinfos import UPDATE_OP_TABLE, UpdateOpInfo

HAS_TRITON = importlib.util.find_spec("triton") is not None


def sample_params(dtypes: bool = False) -> list:
    params = []
    for info in UPDATE_OP_TABLE:
        for index, sample in enumerate(info.sample_inputs("cpu", torch.float32)):
            for dtype in info.dtypes if dtypes else [torch.float32]:
                name = f"{info.name}-{sample.name}" + (
                    f"-{dtype}".replace("torch.", "") if dtypes else ""
                )
                params.append(pytest.param(info, index, dtype, id=name))
    return params


def get_sample(info: UpdateOpInfo, index: int, dtype=torch.float32) -> Sample:
    torch.manual_seed(2000 + index)
    return info.sample_inputs("cpu", dtype)[index]


def copy_args(args: tuple, dtype: torch.dtype | None = None) -> tuple:
    """A deep copy of a call's tensors (lists too), keeping their layouts; ``dtype`` casts
    every floating-point tensor."""

    def copy(t):
        if not isinstance(t, torch.Tensor):
            return t
        if dtype is not None and t.is_floating_point():
            t = t.detach().to(dtype)
        return t.detach().clone(memory_format=torch.preserve_format)

    return tuple([copy(t) for t in a] if isinstance(a, list) else copy(a) for a in args)


def tensors_of(args: tuple) -> list[torch.Tensor]:
    out = []
    for a in args:
        out += [t for t in a if isinstance(t, torch.Tensor)] if isinstance(a, list) else []
        out += [a] if isinstance(a, torch.Tensor) else []
    return out


def mutated_tensors(info: UpdateOpInfo, args: tuple) -> list[tuple[str, torch.Tensor]]:
    """(name[k], tensor) for every tensor the schema says the op updates."""
    out = []
    for i, arg in enumerate(info.op._schema.arguments):
        if arg.alias_info and arg.alias_info.is_write:
            values = args[i] if isinstance(args[i], list) else [args[i]]
            out += [(f"{arg.name}[{k}]", t) for k, t in enumerate(values)]
    return out


def assert_updates_equal(
    info, ours: tuple, native: tuple, atol: float, rtol: float, what: str
) -> None:
    for (name, a), (_, b) in zip(
        mutated_tensors(info, ours), mutated_tensors(info, native), strict=True
    ):
        assert a.stride() == b.stride() or a.numel() <= 1, f"{what}: {name} changed layout"
        torch.testing.assert_close(
            a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{what}: {n}: {m}"
        )


@pytest.mark.parametrize("info,index,dtype", sample_params())
def test_opcheck_all_five_checks(info, index, dtype):
    args = copy_args(get_sample(info, index).args)
    # opcheck's autograd-registration check needs an input that requires grad: the gradients
    # and the learning rate are read, never updated, so they may.
    for t in tensors_of(args):
        if not any(t is m for _, m in mutated_tensors(info, args)):
            t.requires_grad_(True)
    torch.library.opcheck(info.op, args, test_utils=ALL_OPCHECK_TESTS)


@pytest.mark.parametrize("path", ["default", "torch-ops"])
@pytest.mark.parametrize("info,index,dtype", sample_params(dtypes=True))
def test_every_kernel_matches_native(info, index, dtype, path, monkeypatch):
    """float32/float64: the op against the native update. float16/bfloat16: both against the
    native update run in float64 from the same values; the op must be at least as accurate."""
    if path == "torch-ops":  # the fallback every other path stands in for
        monkeypatch.setattr(cpu_kernels, "_loaded", False)  # no C++ kernel: torch ops
    sample = get_sample(info, index, dtype)
    ours, native = copy_args(sample.args), copy_args(sample.args)
    info.op(*ours)
    if dtype in info.tolerances:
        info.reference(*native)
        atol, rtol = info.tolerances[dtype]
        assert_updates_equal(info, ours, native, atol, rtol, f"{sample!r} {dtype}")
        return
    info.reference(*native)  # native in this dtype
    exact = copy_args(sample.args, torch.float64)
    info.reference(*exact)
    for (name, a), (_, b), (_, e) in zip(
        mutated_tensors(info, ours),
        mutated_tensors(info, native),
        mutated_tensors(info, exact),
        strict=True,
    ):
        if name.startswith("steps"):
            assert torch.equal(a, b), f"{sample!r}: {name}"
            continue
        if a.numel() == 0:
            continue
        ours_error = (a.double() - e).abs().max().item()
        native_error = (b.double() - e).abs().max().item()
        ulp = torch.finfo(dtype).eps * e.abs().max().item()
        assert ours_error <= native_error + ulp, (
            f"{sample!r} {dtype} {name}: error {ours_error:.3g}, native's {native_error:.3g}"
        )


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("info,index,_", sample_params())
def test_triton_kernel_matches_the_op(info, index, _, dtype):
    """The CUDA path's kernel, on CPU tensors under the Triton interpreter (on a GPU when
    there is one), against the op's CPU kernels: the same float32 formula."""
    if info.triton is None:
        pytest.skip("no Triton kernel")
    sample = get_sample(info, index, dtype)
    if not all(t.is_contiguous() for t in tensors_of(sample.args)):
        pytest.skip("the Triton kernel takes contiguous tensors (others use torch ops)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours = tuple(
        [t.to(device) for t in a] if isinstance(a, list) else a for a in copy_args(sample.args)
    )
    ours = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in ours)
    expected = copy_args(sample.args)
    info.triton(*ours)
    info.op(*expected)
    tol = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-2, 1.6e-2)}[dtype]
    assert_updates_equal(
        info,
        tuple([t.cpu() for t in a] if isinstance(a, list) else a for a in ours),
        expected,
        *tol,
        f"triton {sample!r}",
    )


def _is_empty_call(sample: Sample) -> bool:
    return not tensors_of(sample.args[:1])


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in UPDATE_OP_TABLE])
def test_compiles_fullgraph_dynamic_without_recompiles(info):
    """One graph for calls of other sizes and other hyperparameter values (they are tensors),
    and the same updates as eager."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(lambda *args: info.op(*args), fullgraph=True, dynamic=True)
    for index in (0, 1):  # same structure, other values; then other sizes
        sample = get_sample(info, index)
        ours, eager = copy_args(sample.args), copy_args(sample.args)
        compiled(*ours)
        info.op(*eager)
        assert_updates_equal(info, ours, eager, 0, 0, f"compiled {sample!r}")
    resized = get_sample(info, 0)
    grown = tuple(
        [t.repeat([2] * t.dim()) for t in a]  # every dim twice: duck sizes still agree
        if isinstance(a, list)
        else a
        for a in resized.args
    )
    grown = tuple(
        a * 0.5 if isinstance(a, torch.Tensor) else a for a in grown
    )  # other hyperparameters
    ours, eager = copy_args(grown), copy_args(grown)
    compiled(*ours)
    info.op(*eager)
    assert_updates_equal(info, ours, eager, 0, 0, "compiled, other sizes")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in UPDATE_OP_TABLE])
def test_torch_export_keeps_the_update_and_runs_it(info):
    class Step(torch.nn.Module):
        def forward(self, *args):
            info.op(*args)

    sample = get_sample(info, 2)
    exported = torch.export.export(Step(), copy_args(sample.args))
    assert any(n.target == info.op for n in exported.graph.nodes) or "auto_functionalized" in str(
        exported.graph
    )
    ours, eager = copy_args(sample.args), copy_args(sample.args)
    exported.module()(*ours)
    info.op(*eager)
    assert_updates_equal(info, ours, eager, 0, 0, "exported")


def _script_source(info: UpdateOpInfo) -> str:
    types = {
        "Tensor[]": "List[Tensor]",
        "Tensor": "Tensor",
        "bool": "bool",
        "float": "float",
        "int": "int",
    }
    args = [
        (a.name, types[str(a.type).replace("List[Tensor]", "Tensor[]")])
        for a in info.op._schema.arguments
    ]
    signature = ", ".join(f"{n}: {t}" for n, t in args)
    call = ", ".join(n for n, _ in args)
    return f"def call({signature}):\n    torch.ops.{info.namespace}.{info.name}({call})\n"


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in UPDATE_OP_TABLE])
def test_torchscript_calls_the_op(info):
    unit = torch.jit.CompilationUnit(_script_source(info))
    sample = get_sample(info, 3)
    ours, eager = copy_args(sample.args), copy_args(sample.args)
    unit.call(*ours)
    info.op(*eager)
    assert_updates_equal(info, ours, eager, 0, 0, "scripted")


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in UPDATE_OP_TABLE])
def test_updating_a_tensor_that_requires_grad_is_refused_with_grad_mode_on(info):
    args = copy_args(get_sample(info, 0).args)
    name, target = mutated_tensors(info, args)[2]
    target.requires_grad_(True)
    before = [t.clone() for t in tensors_of(args)]
    message = rf"{re.escape(info.label)}: {re.escape(name)} requires grad .* torch\.no_grad\(\)"
    with pytest.raises(RuntimeError, match=message):
        info.op(*args)
    assert all(torch.equal(a, b) for a, b in zip(tensors_of(args), before, strict=True))
    with torch.no_grad():
        info.op(*args)  # what an optimizer step does


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in UPDATE_OP_TABLE])
def test_version_counters_tell_autograd_a_saved_tensor_was_updated(info):
    args = copy_args(get_sample(info, 0).args)
    updated = [t for _, t in mutated_tensors(info, args)]
    versions = [t._version for t in updated]
    x = torch.ones(1, requires_grad=True)
    target = next(t for t in updated if t.numel() > 1)
    y = (x * target.flatten()[:1]).sum()  # saves target for backward
    info.op(*args)
    assert all(t._version > v for t, v in zip(updated, versions, strict=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def error_params() -> list:
    return [
        pytest.param(info, case, id=f"{info.name}: {case.name}")
        for info in UPDATE_OP_TABLE
        for case in info.error_inputs()
    ]


@pytest.mark.parametrize("info,case", error_params())
def test_bad_call_is_refused_and_changes_nothing(info, case):
    args = case.make_args()
    before = [t.clone() for t in tensors_of(args) if t.layout == torch.strided]
    with pytest.raises(case.error_type, match=case.match):
        info.op(*args)
    after = [t for t in tensors_of(args) if t.layout == torch.strided]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True)), "half-updated"


@pytest.mark.parametrize("info,case", [p for p in error_params() if p.values[1].compiles])
def test_bad_call_is_refused_under_compile(info, case):
    torch._dynamo.reset()
    args = case.make_args()
    compiled = torch.compile(lambda: info.op(*args), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=case.match) as raised:
        compiled()
    assert_error_in_chain(raised.value, case.error_type)
