"""The standing differential fuzz (tests/fuzz.py): a quick seed over the whole op table in the
default run, and proof that the fuzzer catches what it exists to catch (a wrong value, a
wrong gradient, a bad call answered, an error that does not name the op)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import op_params
from fuzz import Campaign, failure_lines, run_op, table

from opslib.testing.opinfos import OPS_BY_NAME


@pytest.mark.parametrize("info", op_params())
def test_quick_fuzz_seed_finds_nothing(info):
    """60 valid calls (about 3 compiled too) and 20 bad calls of every op, seed 0: no failure.
    The long run is ``python3 tests/fuzz.py`` (docs/guides/limits.md, Robustness)."""
    campaign = Campaign(compiled_share=0.05)
    run_op(campaign, info, calls=60, bad=20, seed_value=0)
    counts = campaign.counts[info.name]
    assert counts["eager calls"] >= 55 and counts["eager bad calls"] >= 18, counts
    assert not campaign.failures, "\n".join([table(campaign.counts), *failure_lines(campaign)])


def _kinds(info, calls: int = 30, bad: int = 12) -> set[str]:
    campaign = Campaign(compiled_share=0.0)
    run_op(campaign, info, calls=calls, bad=bad, seed_value=1)
    return {f.kind for f in campaign.failures.values()}


class _InjectedError(Exception):
    pass


@pytest.mark.every_op
def test_fuzzer_catches_a_wrong_value_and_a_wrong_gradient():
    relu = OPS_BY_NAME["relu"]
    off_by_a_little = dataclasses.replace(relu, func=lambda x: relu.func(x) * (1 + 2e-3))
    assert "wrong answer" in _kinds(off_by_a_little)

    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (x >= 0)  # d relu/dx at 0 is 0 (native), not 1: only where x == 0

    wrong_gradient = dataclasses.replace(relu, func=WrongBackward.apply)
    assert "wrong answer" in _kinds(wrong_gradient, calls=60)


@pytest.mark.every_op
def test_fuzzer_catches_a_bad_call_answered_and_an_unnamed_error():
    relu = OPS_BY_NAME["relu"]

    def takes_anything(x):
        return torch.as_tensor(x).float().clamp_min(0)  # no input check at all

    assert "took a bad call" in _kinds(dataclasses.replace(relu, func=takes_anything))

    def anonymous_errors(x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise _InjectedError("bad input")  # says neither the op nor the problem
        return relu.func(x)

    assert "unnamed error" in _kinds(dataclasses.replace(relu, func=anonymous_errors))
