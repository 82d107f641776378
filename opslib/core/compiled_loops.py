"""Torch-op formulas run as one inductor-generated CPU loop (learned_silu's fused path).

Compiling at run time inside an op is a stopgap: it costs seconds on a process's first large
call. The plan is C++ kernels in ``opslib/csrc`` instead (see the project's CPU-kernels issue).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor


class FusedKernelWarning(RuntimeWarning):
    """A fused kernel could not be compiled; the op used its torch-op formula instead."""


@functools.cache
def _compiled(formula: Callable) -> Callable:
    return torch.compile(formula, dynamic=True, fullgraph=True)


_failed_fusions: set[tuple] = set()


def run_fused(formula: Callable, *args: Tensor) -> object | None:
    """``formula`` (torch ops) run as one inductor-generated loop, or None if that failed.

    Compiled once per process with dynamic shapes, so one compile serves every size; inductor's
    on-disk cache lets later processes load the generated code instead of compiling it again.
    If compiling fails (no C++ compiler, a recompile limit, a ``fail_on_recompile`` stance
    set by the user), it warns once and returns None, and the caller computes the same formula
    with torch ops: slower, never wrong. Only for callers that have checked that fusion pays
    (large, contiguous, CPU tensors).
    """
    key = (formula, *((a.dtype, a.dim()) for a in args))
    if key in _failed_fusions:
        return None
    try:
        return _compiled(formula)(*args)
    except Exception as err:  # compilation problems of every kind: fall back, never fail
        _failed_fusions.add(key)
        warnings.warn(
            f"opslib: the fused {formula.__name__} kernel could not be compiled "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"computing it with torch ops instead",
            FusedKernelWarning,
            stacklevel=2,
        )
        return None
