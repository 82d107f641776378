"""ONNX export of models that use customgrad ops, in standard ONNX operators only.

Each op's translation lives next to its code (``opslib/ops/<name>.py``, ``<name>_onnx``), which
registers it (``register_onnx_translation``); this module collects them for
``torch.onnx.export``::

    torch.onnx.export(model, args, dynamo=True,
                      custom_translation_table=opslib.onnx.translation_table())

or, with the checks below done for you::

    opslib.onnx.export(model, (x,), "model.onnx")      # dynamic batch, checked

The parity check against onnxruntime over every op (its reference models, the runner, the table
it prints) lives with the scripts that use it: ``export/parity.py``.

Needs the ``onnx`` extra: ``pip install "customgrad[onnx]"`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxscript import opset20 as opset  # noqa: F401  (the translations build with this)

from opslib.core.registration import ONNX_TRANSLATIONS

ONNX_OPSET = 20  # torch.onnx's default; the translations use onnxscript's opset20 to match
STANDARD_DOMAINS = ("", "ai.onnx")

# onnxruntime vs PyTorch eager, max |a - b| <= atol + rtol * |b| per element. Why these:
# - float64: both compute in float64; the translations contain no Python float literals (the
#   exporter stores those as float32 constants: docs/guides/using.md), so the differences are
#   summation order in MatMul and last-ulp differences of exp/tanh/sigmoid: ~1e-15.
# - float32: the same, at float32's epsilon (1.2e-7) over 64-term dot products: ~1e-6.
# - float16: onnxruntime runs several ops in float32 behind inserted casts and rounds once;
#   PyTorch's CPU half kernels also compute in float32 internally, but the op chains round at
#   different points: a few float16 ulps (eps = 9.8e-4).
PARITY_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 4e-3),
}


_STATIC_BATCH_ADVICE = (
    "opslib.onnx.export: the model fixes the batch size ({what}), so an ONNX model with a "
    "dynamic batch would reject every other batch size. A parameter or constant with the batch "
    "size in its shape (such as a [batch, out] bias) ties the batch to one value: pass it as an "
    "input instead (it then shares the batch dimension), or export with dynamic_batch=False."
)


class ONNXExportError(ValueError):
    """The exported model would not do what was asked (static batch, non-standard ops)."""


def translation_table(table: Sequence | None = None) -> dict[torch._ops.OpOverload, Callable]:
    """``{torch.ops.customgrad.<op>.default: translation}`` for every op that registered one
    (``opslib.core.registration.register_onnx_translation``: every customgrad op, batch_norm's
    in-place update included); or, given ``table`` (``OpInfo``s of ops from elsewhere, as the
    tests' own), those entries' ``onnx_translation``."""
    if table is not None:
        return {info.op: info.onnx_translation for info in table}
    return dict(ONNX_TRANSLATIONS)


def constant(value: float | int | bool, like) -> object:
    """``value`` as an ONNX constant of the dtype of ``like`` (an input of the translation).

    For translations of ops with non-tensor arguments (``alpha``, ``eps``...). A Python float
    used as it is becomes a float32 constant: a float64 model then fails ``onnx.checker``
    where the constant meets a float64 value, or computes with a rounded value.
    """
    from onnxscript import ir

    return opset.Constant(value=ir.tensor(np.array(value, dtype=like.dtype.numpy())))


def export(
    model: torch.nn.Module,
    args: Sequence[torch.Tensor],
    path: str | Path,
    dynamic_batch: bool = True,
    extra_translations: dict[torch._ops.OpOverload, Callable] | None = None,
) -> onnx.ModelProto:
    """Export ``model(*args)`` to ONNX at ``path``, check it, and return the loaded model.

    With ``dynamic_batch``, dim 0 of every tensor argument is one shared symbolic batch
    dimension, and the saved model is verified to keep it symbolic: the exporter can silently
    specialise it (for example when a parameter has a ``[batch, out]`` shape), which would give
    a model that rejects every other batch size. That raises ``ONNXExportError`` here instead.
    Also runs ``onnx.checker.check_model(full_check=True)``, refuses non-standard domains, and
    names any custom op in the model that has no translation (``extra_translations`` adds
    translations for ops from other libraries).
    """
    args = tuple(args)
    dynamic_shapes = None
    if dynamic_batch:
        sizes = {a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0}
        if sizes & {0, 1}:
            raise ONNXExportError(
                "opslib.onnx.export: with dynamic_batch=True the example batch must be >= 2 "
                "(PyTorch specialises sizes 0 and 1); pass a larger example batch"
            )
        batch = torch.export.Dim("batch")
        # by tensor, not by position: whatever the forward's signature (``*inputs`` too)
        dynamic_shapes = torch.export.ShapesCollection()
        for a in args:
            if isinstance(a, torch.Tensor) and a.dim() > 0:
                dynamic_shapes[a] = {0: batch}
    translations = {**translation_table(), **(extra_translations or {})}
    with _quiet_exporter():
        try:
            program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
        except torch._dynamo.exc.UserError as err:
            if "Constraints violated" not in str(err):
                raise
            raise ONNXExportError(
                _STATIC_BATCH_ADVICE.format(what=f"torch.export: {str(err).splitlines()[0]}")
            ) from err
        _check_every_custom_op_has_a_translation(program, translations)
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            custom_translation_table=translations,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    path = Path(path)
    onnx_program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)

    custom = sorted({n.domain for n in proto.graph.node if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise ONNXExportError(f"opslib.onnx.export: non-standard ONNX domains {custom} in {path}")
    if dynamic_batch:
        static = [
            f"{i.name} (batch fixed to {i.type.tensor_type.shape.dim[0].dim_value})"
            for i in proto.graph.input
            if i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].dim_param
        ]
        if static:
            path.unlink()
            raise ONNXExportError(_STATIC_BATCH_ADVICE.format(what=", ".join(static)))
    return proto


def _check_every_custom_op_has_a_translation(program, translations) -> None:
    """torch.onnx reports a missing translation deep in a conversion traceback; name it here."""
    builtin = {"aten", "prims", "_operator", "higher_order"}
    missing = sorted(
        {
            str(node.target)
            for node in program.graph.nodes
            if node.op == "call_function"
            and isinstance(node.target, torch._ops.OpOverload)
            and node.target.namespace not in builtin
            and node.target not in translations
        }
    )
    if missing:
        raise ONNXExportError(
            f"opslib.onnx.export: no ONNX translation for {', '.join(missing)}. Every customgrad "
            f"op has one (registered in opslib/ops/<name>.py); for an op from "
            f"another library pass extra_translations={{op: onnxscript_function}}."
        )


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress and warns about optional torchvision ops."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnxruntime_session(path: str | Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(session, *args: torch.Tensor) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return session.run(
        None, {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True)}
    )


def parity_error(actual: np.ndarray, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max rel error) of onnxruntime's output against PyTorch's, in float64."""
    expected64 = expected.detach().double().numpy()
    diff = np.abs(actual.astype(np.float64) - expected64)
    if diff.size == 0:
        return 0.0, 0.0
    rel = diff / np.maximum(np.abs(expected64), np.finfo(np.float64).tiny)
    return float(diff.max()), float(rel.max())


def tolerance_used(actual: np.ndarray, expected: torch.Tensor, dtype: torch.dtype) -> float:
    """max |actual - expected| / (atol + rtol·|expected|): the share of the tolerance used by
    the worst element (nan if the outputs disagree on nan); at most 1 passes."""
    atol, rtol = PARITY_TOLERANCE[dtype]
    expected64 = expected.detach().double().numpy()
    diff = np.abs(actual.astype(np.float64) - expected64)
    if diff.size == 0:
        return 0.0
    return float(np.max(diff / (atol + rtol * np.abs(expected64))))
