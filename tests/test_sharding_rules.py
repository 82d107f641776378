"""Every DTensor sharding rule, checked by arithmetic in one process.

A rule (opslib/core/sharding.py) promises: give each rank the local pieces of the inputs in
these placements, run the op on them, and each rank holds its piece of the true outputs in those
placements. That promise needs no process group to check: this file records every customgrad
call that the op table's samples make, forward and backward (backward ops included), and for
each placement pair each rule offers, simulates R ranks: it splits the float64 inputs as DTensor
would (``Shard(d)``: torch.chunk's pieces; ``Replicate``: the whole tensor; ``Partial``: shares
that sum to it), runs the op once per rank, joins the local results the same way (cat, sum, or
"all ranks equal") and compares them with the op on the whole inputs. tests/test_distributed.py
then runs the rules through DTensor itself on two gloo ranks.
"""

from __future__ import annotations

import pytest
import torch
from conftest import get_sample, op_params
from torch.distributed.tensor import Partial, Replicate, Shard
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from opslib.core.sharding import sharding_rules
from opslib.testing.opinfo import requiring_grad
from opslib.testing.opinfos import OP_TABLE, UPDATE_OP_TABLE

# Shares of a Partial input on each rank (they sum to 1; unequal, so that a rule that should
# have asked for Replicate is caught).
PARTIAL_SHARES = {2: (0.75, 0.25), 3: (0.5, 0.375, 0.125)}
TOLERANCE = dict(rtol=1e-9, atol=1e-12)  # float64; a wrong rule is off by O(1)


class RecordCustomOps(TorchDispatchMode):
    """Every customgrad op called under it, with copies of its arguments taken before the call
    (a mutating op's inputs as they were)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch._ops.OpOverload, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "customgrad":
            positional = _positional(func, args, kwargs)
            copy = tree_map_only(torch.Tensor, lambda t: t.detach().clone(), positional)
            self.calls.append((func, copy))
        return func(*args, **kwargs)


def _positional(func, args: tuple, kwargs: dict) -> tuple:
    rest = [
        kwargs[a.name] if a.name in kwargs else a.default_value
        for a in func._schema.arguments[len(args) :]
    ]
    return (*args, *rest)


def recorded_calls(info, index: int) -> list:
    """The customgrad calls of one sample's forward and backward, in float64."""
    sample = get_sample(info, index, "cpu", torch.float64)
    with RecordCustomOps() as recorder:
        out = info.func(*sample.args)
        inputs = requiring_grad(sample.args)
        if inputs and out.requires_grad:
            torch.autograd.grad(out, inputs, torch.randn_like(out))
    return recorder.calls


def _tensors(values) -> list[torch.Tensor]:
    """The tensors of an argument list, a list argument's in order (DTensor's order)."""
    found = []
    for v in values:
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(t for t in v if isinstance(t, torch.Tensor))
    return found


def _with_tensors(args: tuple, tensors: list[torch.Tensor]) -> tuple:
    """args with its tensors (in _tensors' order) replaced by ``tensors``."""
    supply = iter(tensors)

    def replace(v):
        if isinstance(v, torch.Tensor):
            return next(supply)
        if isinstance(v, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in v):
            return type(v)(next(supply) if isinstance(t, torch.Tensor) else t for t in v)
        return v

    return tuple(replace(v) for v in args)


def _split(t: torch.Tensor, placement, ranks: int) -> list[torch.Tensor]:
    if isinstance(placement, Shard):
        pieces = list(torch.chunk(t, ranks, placement.dim))
        while len(pieces) < ranks:  # torch.chunk makes fewer pieces; DTensor's ranks get empties
            pieces.append(t.narrow(placement.dim, t.shape[placement.dim], 0))
        return [p.clone() for p in pieces]
    if isinstance(placement, Partial):
        return [t * share for share in PARTIAL_SHARES[ranks]]
    assert isinstance(placement, Replicate), placement
    return [t.clone() for _ in range(ranks)]


def _join(pieces: list[torch.Tensor], placement, what: str) -> torch.Tensor:
    if isinstance(placement, Shard):
        return torch.cat(pieces, placement.dim)
    if isinstance(placement, Partial):
        return torch.stack(pieces).sum(0)
    assert isinstance(placement, Replicate), f"{what}: placement {placement}"
    for rank, piece in enumerate(pieces[1:], 1):
        torch.testing.assert_close(piece, pieces[0], **TOLERANCE, msg=f"{what}: rank {rank}")
    return pieces[0]


def _shardable(t: torch.Tensor, placement, ranks: int) -> bool:
    """As DTensor's is_tensor_shardable: a sharded dim needs at least one element per rank."""
    return not isinstance(placement, Shard) or t.shape[placement.dim] >= ranks


def check_rule(func, args: tuple, rule, ranks: int) -> int:
    """Simulate every pair of ``rule`` for one call on ``ranks`` ranks; how many were checked."""
    schema = func._schema
    mutated = [i for i, a in enumerate(schema.arguments) if a.alias_info and a.alias_info.is_write]
    fresh = tree_map_only(torch.Tensor, torch.clone, args)
    expected = func(*fresh)
    expected = [] if expected is None else list(expected) if isinstance(expected, tuple) else [
        expected
    ]  # fmt: skip
    checked = 0
    for outputs, inputs in rule(*args):
        what = f"{schema.name} rule {list(outputs)} <- {list(inputs)}, {ranks} ranks"
        placements = [q for p in inputs for q in (p if isinstance(p, list) else [p])]
        placements = [p for p in placements if p is not None]  # a list argument's in order
        tensors = _tensors(args)
        assert len(placements) == len(tensors), f"{what}: {len(tensors)} tensor arguments"
        assert len(outputs) == len(expected), f"{what}: the op returns {len(expected)}"
        if not all(_shardable(t, p, ranks) for t, p in zip(tensors, placements, strict=True)):
            continue
        pieces = [_split(t, p, ranks) for t, p in zip(tensors, placements, strict=True)]
        local_args = [_with_tensors(args, [p[r] for p in pieces]) for r in range(ranks)]
        local_results = []
        for r in range(ranks):
            result = func(*local_args[r])
            local_results.append(
                [] if result is None else list(result) if isinstance(result, tuple) else [result]
            )
        for k, placement in enumerate(outputs):
            joined = _join([res[k] for res in local_results], placement, f"{what}, output {k}")
            torch.testing.assert_close(joined, expected[k], **TOLERANCE, msg=f"{what}, output {k}")
        first = [len(_tensors(args[:i])) for i in range(len(args))]  # flat index of arg i
        for i in mutated:
            for j, whole in enumerate(_tensors([fresh[i]])):
                local = [_tensors([local_args[r][i]])[j] for r in range(ranks)]
                joined = _join(local, placements[first[i] + j], f"{what}, mutated {i}")
                torch.testing.assert_close(joined, whole, **TOLERANCE, msg=f"{what}, mutated {i}")
        checked += 1
    return checked


@pytest.mark.every_op
def test_every_customgrad_op_has_a_sharding_rule():
    rules = sharding_rules()
    ops = [info.op for info in [*OP_TABLE, *UPDATE_OP_TABLE]]
    ops += [getattr(torch.ops.customgrad, n).default for n in _namespace_ops()]
    missing = sorted({op._schema.name for op in ops} - set(rules))
    assert not missing, f"no DTensor sharding rule: {missing}"


def _namespace_ops() -> list[str]:
    """Every op opslib defined in the customgrad namespace (not ones a test adds)."""
    import opslib.ops  # noqa: F401
    from opslib.core.registration import library

    lib = library("customgrad")
    return sorted({name.split("::")[1].split(".")[0] for name in lib._op_defs})


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("info", op_params())
def test_sharding_rules_hold_on_the_op_table_samples(info, ranks):
    rules = sharding_rules()
    samples = info.sample_inputs("cpu", torch.float64, True)
    seen: dict[str, int] = {}
    for index in range(len(samples)):
        for func, args in recorded_calls(info, index):
            name = func._schema.name
            seen[name] = seen.get(name, 0) + check_rule(func, args, rules[name], ranks)
    assert seen.get(info.op._schema.name, 0) > 0, f"{info.name}: no rule pair was checked"
    print(info.name, seen)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("info", op_params(UPDATE_OP_TABLE))
def test_sharding_rules_hold_for_the_update_ops(info, ranks):
    rule = sharding_rules()[info.op._schema.name]
    checked = 0
    for sample in info.sample_inputs("cpu", torch.float64):
        checked += check_rule(info.op, _positional(info.op, sample.args, {}), rule, ranks)
    assert checked > 0, f"{info.name}: no rule pair was checked"


def test_the_check_catches_a_wrong_rule():
    """A softmax 'sharded along its own dim' must fail the check: each rank would normalise its
    slice of the row alone."""
    x = torch.randn(4, 6, dtype=torch.float64)

    def wrong(x, dim):
        return [([Shard(dim)], [Shard(dim)])]

    with pytest.raises(AssertionError):
        check_rule(torch.ops.customgrad.softmax.default, (x, 1), wrong, 2)


def test_importing_opslib_does_not_import_dtensor_and_rules_install_when_it_is_imported():
    """DTensor costs ~1.5 s to import: opslib leaves it out, and installs its rules the moment
    a program imports it, after opslib or before."""
    import subprocess
    import sys

    check = (
        "import sys, opslib; assert 'torch.distributed.tensor' not in sys.modules; "
        "from torch.distributed.tensor import DTensor; "
        "strategies = DTensor._op_dispatcher.sharding_propagator.op_strategy_funcs; "
        "import torch; assert torch.ops.customgrad.linear.default in strategies; "
        "assert torch.ops.customgrad.adam_step_.default in strategies"
    )
    before = "import torch.distributed.tensor; " + check.replace(
        "assert 'torch.distributed.tensor' not in sys.modules; ", ""
    )
    for code in (check, before):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
