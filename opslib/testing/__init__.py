"""The op contract as a kit: check any ``torch.library`` op, yours included, the way opslib checks
its own.

``torch.library.opcheck`` checks an op's registration; this also checks its numbers and its
life in a real program. Describe the op once with an ``OpInfo`` (only ``op``, ``reference`` and
``sample_inputs`` are required), then run ``check_op(info)`` or, under pytest, one test per
family and sample. The families:

=============== ============================================================================
``opcheck``      torch.library.opcheck's five checks (schema, autograd registration, the fake
                 against the kernel's shapes/strides/dtypes, AOT dispatch static and dynamic)
``reference``    values, dtypes and gradients against the reference in float32 and float64;
                 bfloat16/float16 within twice native's own error (flash-attention's rule)
``gradcheck``    gradcheck and gradgradcheck in float64
``compile``      torch.compile(fullgraph=True, dynamic=True): no graph break, eager's results,
                 no recompile over batch sizes (with ``batch_inputs``)
``export``       torch.export keeps the op as a node; saved, loaded, run as eager
``onnx``         exported with the op's translation; onnxruntime parity in float64/32/16
``errors``       each ``ErrorInput`` raises its error, eager and compiled
``vmap``         the op's vmap rule against a loop, with no per-sample fallback
``autocast``     under CPU autocast, native's dtypes for outputs and gradients
``torchscript``  torch.jit.trace keeps the op; saved, loaded, run as eager
``extremes``     ±inf, nan, ±1e4 give native's values and gradients (``extreme_inputs``)
=============== ============================================================================

Every sample with a matrix also runs laid out transposed in memory (same values), so a fake
that ignores the kernel's strides, or a kernel that reads strides wrongly, is caught even where
the samples are all contiguous. A family that has nothing to check (no ONNX translation, no
vmap rule, a sample with no gradient) is skipped with its reason.

A third-party op's whole test file (``test_my_op.py``; ``mylib`` defines
``mylib::scaled_tanh(Tensor x, float alpha=1.0) -> Tensor`` with ``torch.library.custom_op``)::

    import mylib  # defines mylib::scaled_tanh(Tensor x, float alpha=1.0) -> Tensor
    import pytest
    import torch

    from opslib.testing import ErrorInput, OpInfo, Sample, op_cases


    def samples(device, dtype, requires_grad):
        def x(*shape):
            return torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)

        return [
            Sample("matrix", (x(4, 5), 0.5)),
            Sample("0-d", (x(), 2.0)),
            Sample("empty", (x(0, 3), 1.0)),
            Sample("alpha-keyword", (x(3),), {"alpha": -1.0}),
        ]


    INFO = OpInfo(
        op=torch.ops.mylib.scaled_tanh.default,
        reference=lambda x, alpha=1.0: alpha * torch.tanh(x),
        sample_inputs=samples,
        batch_inputs=lambda rows, device, dtype: (torch.randn(rows, 8, dtype=dtype), 1.5),
        onnx_translation=mylib.scaled_tanh_onnx,
        extreme_inputs=lambda x: (x, 0.5),
        error_inputs=lambda: [ErrorInput("int x", (torch.arange(3),), TypeError, "floating point")],
    )


    @pytest.mark.parametrize("case", op_cases(INFO))
    def test_scaled_tanh(case):
        case.run()

``check_op(INFO)`` runs the same checks without pytest and raises one ``AssertionError``
naming every failing family and sample with its numbers; ``check_op(INFO, ["opcheck",
"gradcheck"])`` runs some families only. ``tests/test_testing_kit.py`` runs this example from
outside the repository, and checks that the kit catches seven typical bugs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opslib.testing.families import FAMILIES, Case, NotApplicable
from opslib.testing.opinfo import ErrorInput, OpInfo, Sample, unary_extremes
from opslib.testing.support import ALL_OPCHECK_TESTS, assert_close_named, bind_constants

__all__ = [
    "ALL_OPCHECK_TESTS",
    "FAMILIES",
    "Case",
    "ErrorInput",
    "NotApplicable",
    "OpInfo",
    "Sample",
    "assert_close_named",
    "bind_constants",
    "cases",
    "check_op",
    "op_cases",
    "unary_extremes",
]


def cases(info: OpInfo, families: Iterable[str] | None = None) -> list[Case]:
    """Every check of the op in the given families (all of them by default), in order."""
    names = list(FAMILIES) if families is None else list(families)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(
            f"opslib.testing: unknown families {unknown}; the families are {list(FAMILIES)}"
        )
    return [case for name in names for case in FAMILIES[name](info)]


def check_op(info: OpInfo, families: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Run the families (all by default) on the op. Raises one ``AssertionError`` naming each
    failing family and check with its message; otherwise returns ``{"passed": [...],
    "skipped": [...]}`` (skipped: ``"<id>: <reason>"``)."""
    passed, skipped, failed = [], [], []
    for case in cases(info, families):
        try:
            case.check()
        except NotApplicable as reason:
            skipped.append(f"{case.id}: {reason}")
        except Exception as err:  # any error of a check is a failure of its family
            failed.append((case, err))
        else:
            passed.append(case.id)
    if failed:
        families_failed = sorted({case.family for case, _ in failed})
        lines = [
            f"{info.label}: {len(failed)} of {len(failed) + len(passed)} checks failed, in "
            f"families {', '.join(families_failed)}"
        ]
        for case, err in failed:
            first = str(err).strip().splitlines()[:6]
            lines.append(f"[{case.family}] {case.id}: {type(err).__name__}: " + " | ".join(first))
        raise AssertionError("\n".join(lines))
    return {"passed": passed, "skipped": skipped}


def op_cases(info: OpInfo, families: Iterable[str] | None = None) -> list[Any]:
    """``pytest.param``s of every check, with ids naming the op, family and sample, for
    ``@pytest.mark.parametrize("case", op_cases(info))`` and a body of ``case.run()``."""
    import pytest

    return [pytest.param(case, id=case.id) for case in cases(info, families)]
