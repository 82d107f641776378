"""Helpers the contract's checks share: comparisons that name what failed, calls with constants
written into the code, and the error chain of a compiled call."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

# Every check torch.library.opcheck has (its default leaves out test_aot_dispatch_static).
ALL_OPCHECK_TESTS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_static",
    "test_aot_dispatch_dynamic",
)


def assert_close_named(actual: Any, expected: Any, what: str, **tol: Any) -> None:
    """assert_close whose message starts with which op/sample/quantity failed."""
    torch.testing.assert_close(
        actual, expected, equal_nan=True, msg=lambda m: f"{what}: {m}", **tol
    )


def bind_constants(func: Callable[..., Any], args: tuple) -> tuple[Callable[..., Any], tuple]:
    """``(f, tensors)``: ``f(*tensors)`` calls ``func(*args)`` with every argument that is not a
    tensor (floats, ints, None...) written into ``f``'s code as a literal, the way a model's code
    writes a hyperparameter; ``tensors`` are the tensor arguments in order.

    Literals, not a closure: dynamo treats a float it reads from a closure, a container or a
    module attribute as a symbolic input, guarded on its value; a literal is a constant of the
    code.
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
    """Python source for a float, int, bool, None, string or (nested) list: its repr, but inf
    and nan, which have no literal, as float('inf') and float('nan')."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, (list, tuple)):
        items = ", ".join(_literal(v) for v in value)
        return (
            f"[{items}]"
            if isinstance(value, list)
            else f"({items}{',' if len(value) == 1 else ''})"
        )
    if isinstance(value, torch.dtype):
        return str(value)
    return repr(value)


def error_chain(raised: BaseException) -> list[BaseException]:
    chain, err = [], raised
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def error_in_chain(raised: BaseException, error: type[Exception]) -> bool:
    """Dynamo wraps a fake implementation's error; the op's own error must be in the chain. An
    error raised by Python code dynamo traces (a public function's argument check) reaches the
    chain as dynamo's own stand-in for that type (``ObservedTypeError`` for a TypeError)."""
    from torch._dynamo.exc import get_dynamo_observed_exception

    stand_in = get_dynamo_observed_exception(error)
    return any(isinstance(e, (error, stand_in)) for e in error_chain(raised))


def assert_error_in_chain(raised: BaseException, error: type[Exception]) -> None:
    assert error_in_chain(raised, error), [type(e) for e in error_chain(raised)]


def max_error(values: torch.Tensor, exact: torch.Tensor) -> float:
    """max |values - exact| in float64 (0 for empty tensors)."""
    return (values.double() - exact).abs().max().item() if exact.numel() else 0.0


def tensor_memory(run: Callable[[], Any]) -> tuple[int, int, Any]:
    """``(peak, held, result)`` of ``run()``: the most bytes of tensor memory it held at once of
    what it allocated, the bytes of that still held when it returned, and what it returned.
    Torch's CPU allocator reports each allocation and free to the profiler
    (``profile_memory=True``); the running sum of those events is exact, where the process's
    resident high-water mark is coarse (glibc's heap keeps freed blocks). Allocations made on
    other threads than the caller's are not seen (autograd runs CPU work on the caller's)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = run()
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak, held, result
