"""Bad input gets a clear error that names the op and the problem: never a wrong answer or a
crash. Each case runs in eager mode and under torch.compile(fullgraph=True), where the check in
the fake implementation fires at trace time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import opslib


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, device=device).to(dtype)


@dataclass(frozen=True)
class BadCall:
    name: str
    call: Callable[[], object]
    error: type[Exception]
    message: str  # regex that must appear: the op's name and the problem
    compiles: bool = True  # dynamo cannot trace some inputs at all (sparse tensors, lists)


X, W = t(4, 3), t(5, 3)
with torch.inference_mode():
    INFERENCE_X = t(4, 3)
CATALOGUE = [
    BadCall(
        "linear: in_features mismatch",
        lambda: opslib.linear(t(4, 6), W),
        ValueError,
        r"customgrad\.linear: x has 6 features .* in_features=3",
    ),
    BadCall(
        "linear: weight 1-D",
        lambda: opslib.linear(X, t(3)),
        ValueError,
        r"customgrad\.linear: weight must be 2-D .* got shape \[3\]",
    ),
    BadCall(
        "linear: weight 3-D",
        lambda: opslib.linear(X, t(2, 5, 3)),
        ValueError,
        r"customgrad\.linear: weight must be 2-D",
    ),
    BadCall(
        "linear: 0-d x",
        lambda: opslib.linear(t(), W),
        ValueError,
        r"customgrad\.linear: x must have at least 1 dimension",
    ),
    BadCall(
        "linear: bias wrong width",
        lambda: opslib.linear(X, W, t(7)),
        ValueError,
        r"customgrad\.linear: bias of shape \[7\] does not broadcast .*\[4, 5\]",
    ),
    BadCall(
        "linear: bias wrong batch",
        lambda: opslib.linear(X, W, t(3, 5)),
        ValueError,
        r"customgrad\.linear: bias of shape \[3, 5\] does not broadcast",
    ),
    BadCall(
        "linear: bias would enlarge output",
        lambda: opslib.linear(X, W, t(2, 4, 5)),
        ValueError,
        r"customgrad\.linear: bias of shape \[2, 4, 5\] does not broadcast",
    ),
    BadCall(
        "linear: weight dtype differs",
        lambda: opslib.linear(X, t(5, 3, dtype=torch.float64)),
        TypeError,
        r"customgrad\.linear: x and weight must have the same dtype",
    ),
    BadCall(
        "linear: bias dtype differs",
        lambda: opslib.linear(X, W, t(5, dtype=torch.float16)),
        TypeError,
        r"customgrad\.linear: x and bias must have the same dtype",
    ),
    BadCall(
        "linear: integer x",
        lambda: opslib.linear(torch.ones(4, 3, dtype=torch.int64), W),
        TypeError,
        r"customgrad\.linear: x must be a floating-point tensor .* torch\.int64",
    ),
    BadCall(
        "linear: bool weight",
        lambda: opslib.linear(X, torch.ones(5, 3, dtype=torch.bool)),
        TypeError,
        r"customgrad\.linear: weight must be a floating-point tensor",
    ),
    BadCall(
        "linear: x on meta, weight on cpu",
        lambda: opslib.linear(t(4, 3, device="meta"), W),
        ValueError,
        r"customgrad\.linear: x and weight must be on the same device",
    ),
    BadCall(
        "linear: sparse weight",
        lambda: opslib.linear(X, W.to_sparse()),
        TypeError,
        r"customgrad\.linear: weight must be a dense \(strided\) tensor",
        compiles=False,
    ),
    BadCall(
        "learned_silu: slope wrong width",
        lambda: opslib.learned_silu(t(4, 5), t(3)),
        ValueError,
        r"customgrad\.learned_silu: slope of shape \[3\] does not broadcast",
    ),
    BadCall(
        "learned_silu: slope higher rank",
        lambda: opslib.learned_silu(t(4, 5), t(2, 4, 5)),
        ValueError,
        r"customgrad\.learned_silu: slope of shape \[2, 4, 5\] does not broadcast",
    ),
    BadCall(
        "learned_silu: slope dtype differs",
        lambda: opslib.learned_silu(t(4, 5), t(1, dtype=torch.float64)),
        TypeError,
        r"customgrad\.learned_silu: x and slope must have the same dtype",
    ),
    BadCall(
        "learned_silu: integer x",
        lambda: opslib.learned_silu(torch.ones(4, 5, dtype=torch.int32), t(1)),
        TypeError,
        r"customgrad\.learned_silu: x must be a floating-point tensor",
    ),
    BadCall(
        "learned_silu: slope on another device",
        lambda: opslib.learned_silu(t(4, 5), t(1, device="meta")),
        ValueError,
        r"customgrad\.learned_silu: x and slope must be on the same device",
    ),
    BadCall(
        "square: integer tensor",
        lambda: opslib.square(torch.arange(4)),
        TypeError,
        r"customgrad\.square: x must be a floating-point tensor .* torch\.int64",
    ),
    BadCall(
        "cube: int8 tensor",
        lambda: opslib.cube(torch.ones(3, dtype=torch.int8)),
        TypeError,
        r"customgrad\.cube: x must be a floating-point tensor .* torch\.int8",
    ),
    BadCall(
        "relu: bool tensor",
        lambda: opslib.relu(torch.ones(3, dtype=torch.bool)),
        TypeError,
        r"customgrad\.relu: x must be a floating-point tensor .* torch\.bool",
    ),
    BadCall(
        "exp: complex tensor",
        lambda: opslib.exp(torch.ones(3, dtype=torch.complex64)),
        TypeError,
        r"customgrad\.exp: x must be a floating-point tensor .* torch\.complex64",
    ),
    BadCall(
        "sigmoid: sparse tensor",
        lambda: opslib.sigmoid(t(3, 3).to_sparse()),
        TypeError,
        r"customgrad\.sigmoid: x must be a dense \(strided\) tensor",
        compiles=False,
    ),
    BadCall(
        "linear: inference-mode x where autograd must save it",
        lambda: opslib.linear(INFERENCE_X, W.clone().requires_grad_()),
        RuntimeError,
        r"customgrad\.linear: x created under torch\.inference_mode\(\) cannot be saved",
        compiles=False,  # compile traces with fake tensors; the refusal happens at run time
    ),
    BadCall(
        "learned_silu: slope where x is a 0-d tensor and slope [2]",
        lambda: opslib.learned_silu(t(), t(2)),
        ValueError,
        r"customgrad\.learned_silu: slope of shape \[2\] does not broadcast to x's shape \[\]",
    ),
    BadCall(
        "tanh: a list, not a tensor",
        lambda: opslib.tanh([1.0, 2.0]),
        RuntimeError,
        r"customgrad::tanh\(\) Expected a value of type 'Tensor'",
        compiles=False,
    ),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # each case compiles its own frame; never hit the recompile limit
    yield


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_bad_call_raises_clear_error_in_eager(case):
    with pytest.raises(case.error, match=case.message):
        case.call()


@pytest.mark.parametrize("case", [c for c in CATALOGUE if c.compiles], ids=lambda c: c.name)
def test_bad_call_raises_clear_error_under_compile(case):
    compiled = torch.compile(case.call, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=case.message) as raised:
        compiled()
    # Dynamo wraps the fake implementation's error; ours must be the one it carries.
    chain, err = [], raised.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, case.error) for e in chain), [type(e) for e in chain]


def test_catalogue_has_at_least_twenty_distinct_cases():
    assert len({c.name for c in CATALOGUE}) == len(CATALOGUE) >= 20
