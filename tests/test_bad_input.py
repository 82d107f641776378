"""Bad input gets a clear error that names the op and the problem: never a wrong answer or a
crash. Each case runs in eager mode and under torch.compile(fullgraph=True), where the check in
the fake implementation fires at trace time.

The catalogue is made from the op table: the bad calls every op shares (an integer, bool or
complex tensor, a sparse one, a list instead of a tensor, tensors of mixed dtypes or devices),
written for each op from its batch arguments and the argument names of its schema, and the calls
particular to one op, declared in its OpInfo (``error_inputs``).
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import assert_error_in_chain

from opslib.testing.opinfo import ErrorInput, OpInfo
from opslib.testing.opinfos import OP_TABLE


def shared_bad_calls(info: OpInfo) -> list[ErrorInput]:
    args = info.batch_inputs(4, "cpu", torch.float32)
    names = [a.name for a in info.op._schema.arguments]
    label = re.escape(info.label)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    floating = [i for i in tensors if args[i].is_floating_point()]
    indices = [i for i in tensors if not args[i].is_floating_point()]  # class indices

    def replaced(i: int, value: object):
        return lambda: (*args[:i], value, *args[i + 1 :])

    cases = [
        ErrorInput(
            f"integer {names[i]}",
            replaced(i, torch.ones(args[i].shape, dtype=torch.int64)),
            TypeError,
            rf"{label}: {names[i]} must be a floating-point tensor .* torch\.int64",
        )
        for i in floating
    ]
    cases += [
        ErrorInput(
            f"floating-point {names[i]}",
            replaced(i, args[i].to(torch.float32)),
            TypeError,
            rf"{label}: {names[i]} must be an integer tensor .* torch\.float32",
        )
        for i in indices
    ]
    first, x = tensors[0], args[tensors[0]]
    name = names[first]
    cases += [
        ErrorInput(
            f"bool {name}",
            replaced(first, x > 0),
            TypeError,
            rf"{label}: {name} must be a floating-point tensor .* torch\.bool",
        ),
        ErrorInput(
            f"complex {name}",
            replaced(first, x.to(torch.complex64)),
            TypeError,
            rf"{label}: {name} must be a floating-point tensor .* torch\.complex64",
        ),
        ErrorInput(
            f"sparse {name}",
            replaced(first, x.to_sparse()),
            TypeError,
            rf"{label}: {name} must be a dense \(strided\) tensor",
            compiles=False,
        ),
        ErrorInput(
            f"a list for {name}",
            replaced(first, x.tolist()),
            RuntimeError,
            rf"{info.namespace}::{info.name}\(\) Expected a value of type 'Tensor'",
            compiles=False,
        ),
    ]
    for i in tensors[1:]:
        if i in floating:
            cases.append(
                ErrorInput(
                    f"{names[i]} float64, {name} float32",
                    replaced(i, args[i].double()),
                    TypeError,
                    rf"{label}: {name} and {names[i]} must have the same dtype",
                )
            )
        cases += [
            ErrorInput(
                f"{names[i]} on meta, {name} on cpu",
                replaced(i, args[i].to("meta")),
                ValueError,
                rf"{label}: {name} and {names[i]} must be on the same device",
            ),
        ]
    return cases


def catalogue(table: list[OpInfo] = OP_TABLE) -> list:
    return [
        pytest.param(info, case, id=f"{info.name}: {case.name}")
        for info in table
        for case in shared_bad_calls(info) + info.error_inputs()
    ]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # each case compiles its own frame; never hit the recompile limit
    yield


@pytest.mark.parametrize("info,case", catalogue())
def test_bad_call_raises_clear_error_in_eager(info, case):
    args = case.make_args()
    with pytest.raises(case.error_type, match=case.match):
        info.func(*args)


@pytest.mark.parametrize("info,case", [p for p in catalogue() if p.values[1].compiles])
def test_bad_call_raises_clear_error_under_compile(info, case):
    args = case.make_args()
    compiled = torch.compile(lambda: info.func(*args), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=case.match) as raised:
        compiled()
    assert_error_in_chain(raised.value, case.error_type)


@pytest.mark.every_op
def test_every_op_has_bad_calls_of_its_own_or_shared_and_they_are_distinct():
    ids = [p.id for p in catalogue()]
    assert len(set(ids)) == len(ids) >= 20
    assert {p.values[0].name for p in catalogue()} == {info.name for info in OP_TABLE}
