"""TorchScript (deprecated upstream, kept working): script and trace modules that call the ops,
save, load in a fresh process that imports opslib, run forward and backward.

Every op of the table is called by one generated module, ``EveryOp``: its source is written from
the ops' schemas (a schema's argument types are TorchScript's annotations), so ``torch.jit.script``
compiles it from a file like any hand-written module.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import bind_constants

import opslib
from opslib.models import MLPClassifier
from opslib.testing.opinfo import OpInfo, among_tensors, leaves, requiring_grad
from opslib.testing.opinfos import OP_TABLE

# TorchScript warns on every call that it is deprecated; silenced here, and only here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def every_op_module_source(table: list[OpInfo]) -> str:
    """A module whose forward takes every op's arguments (those its batch_inputs give: trailing
    schema arguments past them keep their defaults), typed as its schema types them, and
    returns every op's output (the first, for an op with several: the result its public
    function returns)."""
    params, calls = [], []
    for k, info in enumerate(table):
        given = len(info.batch_inputs(2, "cpu", torch.float32))
        arguments = info.op._schema.arguments[:given]
        names = [f"{a.name}_{k}" for a in arguments]
        params += [f"{n}: {a.type}" for n, a in zip(names, arguments, strict=True)]
        first = "[0]" if len(info.op._schema.returns) > 1 else ""
        calls.append(f"torch.ops.{info.namespace}.{info.name}({', '.join(names)}){first}")
    return textwrap.dedent(
        """\
        from typing import List, Optional, Tuple

        import torch
        from torch import Tensor


        class EveryOp(torch.nn.Module):
            def forward(self, {params}) -> Tuple[{returns}]:
                return ({calls},)
        """
    ).format(
        params=", ".join(params), returns=", ".join(["Tensor"] * len(table)), calls=", ".join(calls)
    )


def every_op_module(table: list[OpInfo], folder) -> torch.nn.Module:
    path = folder / "every_op.py"
    path.write_text(every_op_module_source(table))
    spec = importlib.util.spec_from_file_location("every_op", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EveryOp()


def every_op_args(table: list[OpInfo], rows: int) -> tuple:
    return tuple(a for info in table for a in info.batch_inputs(rows, "cpu", torch.float32))


def every_op_constants(table: list[OpInfo], rows: int, tensors_only: bool = False) -> tuple:
    """The positions of every op's ``constant_args`` in ``every_op_args`` (or in the tuple of
    its tensors alone): the tensors that never require grad."""
    positions, offset = [], 0
    for info in table:
        args = info.batch_inputs(rows, "cpu", torch.float32)
        own = among_tensors(args, info.constant_args) if tensors_only else info.constant_args
        positions += [offset + i for i in own]
        offset += sum(isinstance(a, torch.Tensor) for a in args) if tensors_only else len(args)
    return tuple(positions)


LOAD_AND_CHECK = """
    import sys, warnings, torch, opslib
    warnings.simplefilter("ignore")
    for name in sys.argv[3:]:
        __import__(name)  # modules that define ops of other namespaces (the tests' extra op)
    io = torch.load(sys.argv[2], weights_only=False)
    loaded = torch.jit.load(sys.argv[1])
    args = io["args"]
    out = loaded(*args)
    outputs = out if isinstance(out, tuple) else (out,)
    for got, want in zip(outputs, io["expected"], strict=True):
        torch.testing.assert_close(got, want)
    sum(o.sum() for o in outputs).backward()
    grads = [a.grad for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    assert all(g is not None for g in grads) and len(grads) == io["num_grads"]
    assert all(p.grad is not None for p in loaded.parameters())
    print("ok")
"""


def check_round_trip(converted, args: tuple, tmp_path, *imports: str, constant=()) -> None:
    """``converted`` (scripted or traced) saved, loaded in a fresh process, run on ``args`` and
    differentiated; outputs must equal those of this process."""
    out = converted(*args)
    expected = [o.detach() for o in (out if isinstance(out, tuple) else (out,))]
    converted.save(tmp_path / "model.ts")
    inputs = leaves(args, constant=constant)
    torch.save(
        {"args": inputs, "expected": expected, "num_grads": len(requiring_grad(inputs))},
        tmp_path / "io.pt",
    )
    tests = str(Path(__file__).resolve().parent)  # where modules defining extra ops live
    python_path = os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(LOAD_AND_CHECK),
            str(tmp_path / "model.ts"),
            str(tmp_path / "io.pt"),
            *imports,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": python_path},
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.every_op
def test_every_op_scripted_round_trips_in_a_fresh_process(tmp_path, table=OP_TABLE, imports=()):
    torch.manual_seed(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    module = every_op_module(table, tmp_path)
    args = every_op_args(table, 5)
    scripted = torch.jit.script(module)
    for got, want in zip(scripted(*args), module(*args), strict=True):
        torch.testing.assert_close(got, want)
    check_round_trip(
        scripted, every_op_args(table, 3), tmp_path, *imports,
        constant=every_op_constants(table, 3),
    )  # fmt: skip


class _Traced(torch.nn.Module):
    """Every op on its tensor arguments, other arguments as the constants a trace records."""

    def __init__(self, table: list[OpInfo]) -> None:
        super().__init__()
        self.calls = [
            bind_constants(info.func, info.batch_inputs(5, "cpu", torch.float32)) for info in table
        ]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs, i = [], 0
        for func, own in self.calls:
            outputs.append(func(*tensors[i : i + len(own)]))
            i += len(own)
        return tuple(outputs)


@pytest.mark.every_op
def test_every_op_traced_round_trips_in_a_fresh_process(tmp_path, table=OP_TABLE, imports=()):
    torch.manual_seed(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    module = _Traced(table)
    tensors = tuple(t for _, own in module.calls for t in own)
    traced = torch.jit.trace(module, tensors)
    constant = every_op_constants(table, 5, tensors_only=True)
    check_round_trip(traced, tensors, tmp_path, *imports, constant=constant)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_mlp_classifier_round_trips_in_a_fresh_process(how, tmp_path):
    torch.manual_seed(0)
    model = MLPClassifier()
    x = torch.randn(5, 64)
    converted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    torch.testing.assert_close(converted(x), model(x))
    check_round_trip(converted, (torch.randn(3, 64),), tmp_path)


def test_linear_without_bias_scripts():
    """A schema default (bias=None) dropped by the caller is filled in for TorchScript too."""
    layer = torch.jit.script(opslib.nn.Linear(6, 4, bias=False))
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ layer.weight.t())
