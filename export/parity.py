"""onnxruntime parity: every op of the op table as a single-op model, and the example classifier,
exported and run in onnxruntime against PyTorch eager.

Used by ``check_parity.py`` and ``export_models.py`` beside this file, and by the tests. The
tolerances, and why they are what they are: ``PARITY_TOLERANCE`` in ``opslib/onnx.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from opslib import onnx as opslib_onnx
from opslib.models import MLPClassifier
from opslib.testing.models import SingleOpModel, model_inputs
from opslib.testing.opinfo import OpInfo
from opslib.testing.opinfos import OP_TABLE

PARITY_DTYPES = (torch.float64, torch.float32, torch.float16)
PARITY_BATCHES = (1, 7, 4096)


@dataclass(frozen=True)
class ReferenceModel:
    name: str
    dtype: torch.dtype
    model: torch.nn.Module
    make_input: Callable[[int], tuple[torch.Tensor, ...]]  # rows -> the model's inputs
    translations: dict = field(default_factory=dict)  # for ops outside the op table


def reference_models(
    dtypes: Sequence[torch.dtype] = PARITY_DTYPES,
    names: Sequence[str] | None = None,
    table: Sequence[OpInfo] = OP_TABLE,
) -> list[ReferenceModel]:
    models = []
    extra = {} if table is OP_TABLE else opslib_onnx.translation_table(table)
    for dtype in dtypes:
        for info in table:
            if (names is None or info.name in names) and dtype not in info.onnxruntime_missing:
                torch.manual_seed(0)
                args = info.batch_inputs(8, "cpu", dtype)

                def make_input(rows, info=info, dtype=dtype):
                    return model_inputs(info.batch_inputs(rows, "cpu", dtype), info.batch_args)

                model = SingleOpModel(info.func, args, info.batch_args)
                models.append(ReferenceModel(info.name, dtype, model, make_input, extra))
        if table is OP_TABLE and (names is None or "mlp_classifier" in names):
            torch.manual_seed(0)
            classifier = MLPClassifier().to(dtype).eval()

            def make_input(rows, dtype=dtype):
                return (torch.rand(rows, 64, dtype=dtype),)

            models.append(ReferenceModel("mlp_classifier", dtype, classifier, make_input))
    return models


def not_checked(table: Sequence[OpInfo] = OP_TABLE) -> list[str]:
    """The (op, dtype) pairs parity skips because onnxruntime has no kernel, and why."""
    return [
        f"{info.name} {str(dtype).removeprefix('torch.')}: onnxruntime CPU has {why}"
        for info in table
        for dtype, why in info.onnxruntime_missing.items()
    ]


def file_name(ref: ReferenceModel) -> str:
    return f"{ref.name}_{str(ref.dtype).removeprefix('torch.')}.onnx"


def export_reference(ref: ReferenceModel, path: str | Path):
    return opslib_onnx.export(
        ref.model, ref.make_input(8), path, extra_translations=ref.translations
    )


@dataclass(frozen=True)
class ParityRow:
    model: str
    dtype: torch.dtype
    batch: int
    max_abs: float
    max_rel: float
    tolerance_used: float  # max over elements of |err| / (atol + rtol·|expected|); <= 1 passes
    atol: float
    rtol: float
    passed: bool


def check_parity(
    ref: ReferenceModel, path: str | Path, batches: Sequence[int] = PARITY_BATCHES
) -> list[ParityRow]:
    """Run the exported ``ref`` in onnxruntime at each batch size and compare with PyTorch."""
    session = opslib_onnx.onnxruntime_session(path)
    atol, rtol = opslib_onnx.PARITY_TOLERANCE[ref.dtype]
    rows = []
    for batch in batches:
        torch.manual_seed(batch)
        inputs = ref.make_input(batch)
        with torch.no_grad():
            expected = ref.model(*inputs)
        (actual,) = opslib_onnx.run_onnxruntime(session, *inputs)
        max_abs, max_rel = opslib_onnx.parity_error(actual, expected)
        used = opslib_onnx.tolerance_used(actual, expected, ref.dtype)
        passed = actual.shape == tuple(expected.shape) and used <= 1.0
        rows.append(
            ParityRow(ref.name, ref.dtype, batch, max_abs, max_rel, used, atol, rtol, passed)
        )
    return rows


def format_parity_table(rows: Sequence[ParityRow]) -> str:
    lines = [
        f"{'model':<16}{'dtype':<9}{'batch':>6}{'max abs err':>13}{'max rel err':>13}"
        f"{'tolerance (atol, rtol)':>24}{'err/tol':>9}  result"
    ]
    for r in rows:
        dtype = str(r.dtype).removeprefix("torch.")
        lines.append(
            f"{r.model:<16}{dtype:<9}{r.batch:>6}{r.max_abs:>13.2e}{r.max_rel:>13.2e}"
            f"{f'({r.atol:.0e}, {r.rtol:.0e})':>24}{r.tolerance_used:>9.3f}"
            f"  {'PASS' if r.passed else 'FAIL'}"
        )
    return "\n".join(lines)
