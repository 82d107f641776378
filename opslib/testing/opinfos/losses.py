"""The op table's losses: cross_entropy and linear_cross_entropy, each with its samples,
references and bad calls beside its entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.ops.cross_entropy import cross_entropy
from opslib.ops.linear_cross_entropy import (
    linear_cross_entropy,
    native_linear_cross_entropy,
)
from opslib.testing.opinfo import (
    ErrorInput,
    Sample,
)
from opslib.testing.opinfos.common import OpslibOpInfo, _leaf_view, _make, _t


def _native_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0) -> Tensor:  # fmt: skip
    return F.cross_entropy(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing,
    )  # fmt: skip


def _ignored_rows_zeroed(input, target, *rest) -> Tensor:
    """cross_entropy's exact value for the property tests: native's, with the logits of ignored
    targets set to 0. They contribute nothing to the loss, so their gradient is exactly 0;
    native's log_softmax backward turns an inf or nan logit there into a nan gradient."""
    ignore_index = rest[1] if len(rest) > 1 else -100
    valid = target != ignore_index
    mask = valid.unsqueeze(1) if input.dim() >= 2 else valid
    return _native_cross_entropy(input.where(mask, 0), target, *rest)


def _ignored_tokens_dropped(x, weight, target, bias=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0) -> Tensor:  # fmt: skip
    """linear_cross_entropy's exact value for the property tests: the composite's over the
    tokens whose targets count (ignored ones contribute nothing, so their gradient is exactly 0,
    where the composite's can be 0·inf = nan), 0 for the others under reduction "none"."""
    if target.dim() == 0:  # one token: as a batch of one
        one = _ignored_tokens_dropped(x.unsqueeze(0), weight, target.unsqueeze(0), bias,
                                      ignore_index, reduction, label_smoothing)  # fmt: skip
        return one.reshape(())
    counted = target != ignore_index
    kept = native_linear_cross_entropy(
        x[counted], weight, target[counted], bias, ignore_index,
        "none" if reduction == "none" else reduction, label_smoothing,
    )  # fmt: skip
    if reduction != "none":
        return kept
    return torch.zeros(target.shape, dtype=kept.dtype).index_put((counted,), kept)


def _targets(shape, classes: int, device, ignore_index: int | None = None) -> Tensor:
    """Class indices in [0, classes); with ``ignore_index``, the first target is that."""
    t = torch.randint(0, classes, shape, device=device)
    if ignore_index is not None and t.numel():
        t.view(-1)[0] = ignore_index
    return t


def _cross_entropy_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    def make(shape, rg=requires_grad):
        return _make(shape, device, dtype, rg, scale=2.0)

    def weight(c):
        return torch.rand(c, device=device, dtype=dtype) + 0.5  # class weights: no gradient

    def t(shape, classes=5, ignore=None):
        return _targets(shape, classes, device, ignore)

    wide = 300  # a row of vectors and a tail in the C++ kernels
    return [
        Sample("rows", (make((4, 5)), t((4,)), None, -100, "mean", 0.0)),
        Sample("weighted-mean", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "mean", 0.0)),
        Sample("sum", (make((6, 5)), t((6,), ignore=-100), None, -100, "sum", 0.0)),
        Sample("none", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "none", 0.0)),
        Sample("smoothing", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "mean", 0.1)),
        Sample("smoothing-none", (make((6, 5)), t((6,)), None, -100, "none", 0.3)),
        Sample("smoothing-sum", (make((6, 5)), t((6,), ignore=-100), weight(5), -100, "sum", 1.0)),
        Sample("one-sample", (make((5,)), t(()), None, -100, "mean", 0.0)),
        Sample("one-sample-none", (make((5,)), t(()), weight(5), -100, "none", 0.2)),
        Sample(
            "spatial",
            (make((2, 5, 3, 4)), t((2, 3, 4), ignore=-100), weight(5), -100, "mean", 0.1),
        ),
        Sample("spatial-none", (make((2, 5, 3)), t((2, 3)), None, -100, "none", 0.0)),
        Sample("ignore-index-2", (make((8, 5)), t((8,), ignore=2), None, 2, "mean", 0.05)),
        Sample(
            "all-ignored-sum",
            (make((3, 5)), torch.full((3,), -1, device=device), None, -1, "sum", 0.1),
        ),  # fmt: skip
        Sample("empty-batch", (make((0, 5)), t((0,)), None, -100, "sum", 0.0)),
        Sample("one-class", (make((4, 1)), t((4,), classes=1), None, -100, "mean", 0.0)),
        Sample(
            "transposed",
            (
                _leaf_view(torch.randn(5, 4, device=device, dtype=dtype).t(), requires_grad),
                t((4,)),
                weight(5),
                -100,
                "mean",
                0.1,
            ),
        ),  # fmt: skip
        Sample("no-grad", (make((4, 5), rg=False), t((4,)), None, -100, "mean", 0.0)),
        Sample("wide-row", (make((3, wide)), t((3,), wide), weight(wide), -100, "mean", 0.1)),
    ]


CROSS_ENTROPY_CLASSES = 11  # batch_inputs: no batch size the tests use is 11


def _cross_entropy_batch(rows: int, device, dtype) -> tuple:
    """Logits [rows, 11], their targets (the batch, too), class weights, ignore_index 1 (a class
    index, so some targets are ignored; never the first, so that every batch has a mean: one of
    only ignored targets has none, nan), label smoothing."""
    classes = CROSS_ENTROPY_CLASSES
    target = _targets((rows,), classes, device)
    if rows:
        target[0] = 2
    return (
        torch.randn(rows, classes, device=device, dtype=dtype) * 2,
        target,
        torch.rand(classes, device=device, dtype=dtype) + 0.5,
        1,
        "mean",
        0.1,
    )


def _cross_entropy_property_inputs(draw: Callable, st: ModuleType, tensors: Callable) -> tuple:
    classes = draw(st.integers(1, 4))
    form = draw(st.sampled_from(["rows", "one-sample", "spatial"]))
    batch = draw(st.integers(0, 4))
    if form == "rows":
        shape, target_shape = [batch, classes], [batch]
    elif form == "one-sample":
        shape, target_shape = [classes], []
    else:
        spatial = draw(st.integers(1, 3))
        shape, target_shape = [batch, classes, spatial], [batch, spatial]
    x = draw(tensors(shape=shape))
    ignore_index = draw(st.sampled_from([-100, 0]))
    n = 1
    for d in target_shape:
        n *= d
    values = draw(st.lists(st.integers(-1, classes - 1), min_size=n, max_size=n))
    target = torch.tensor([ignore_index if v < 0 else v for v in values], dtype=torch.long)
    weight = None
    if draw(st.booleans()):  # class weights are positive and finite in practice
        seed = draw(st.integers(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        weight = torch.rand(classes, generator=gen, dtype=torch.float64) * 2 + 0.1
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return (x, target.reshape(target_shape), weight, ignore_index, reduction,
            draw(st.sampled_from([0.0, 0.1, 1.0])))  # fmt: skip


def _cross_entropy_error_inputs() -> list[ErrorInput]:
    x = _t(4, 5)
    t = torch.tensor([0, 1, 2, 3])
    label = r"customgrad\.cross_entropy"

    def weight_requiring_grad() -> tuple:
        return (x.clone().requires_grad_(), t, torch.rand(5).requires_grad_(), -100, "mean", 0.0)

    return [
        ErrorInput(
            "target past the last class",
            lambda: (x, torch.tensor([0, 1, 7, 3]), None, -100, "mean", 0.0),
            IndexError,
            label + r": target 7 is out of range for 5 classes \(expected 0 to 4, or "
            r"ignore_index -100\)",
        ),
        ErrorInput(
            "negative target that is not ignore_index",
            lambda: (x, torch.tensor([0, -1, 2, 3]), None, -100, "sum", 0.0),
            IndexError,
            label + r": target -1 is out of range for 5 classes",
        ),
        ErrorInput(
            "target out of range with spatial dims",
            lambda: (_t(2, 5, 3), torch.tensor([[0, 1, 2], [3, 4, 5]]), None, -100, "none", 0.0),
            IndexError,
            label + r": target 5 is out of range for 5 classes",
        ),
        ErrorInput(
            "probability targets",
            lambda: (x, torch.softmax(_t(4, 5), -1), None, -100, "mean", 0.0),
            TypeError,
            label + r": target must be an integer tensor of class indices, got torch\.float32",
        ),
        ErrorInput(
            "target of the wrong shape",
            lambda: (x, torch.tensor([0, 1, 2]), None, -100, "mean", 0.0),
            ValueError,
            label + r": target of shape \[3\] must have shape \[4\] \(one class index per "
            r"sample\) for input of shape \[4, 5\]",
        ),
        ErrorInput(
            "weight of the wrong shape",
            lambda: (x, t, torch.rand(4), -100, "mean", 0.0),
            ValueError,
            label + r": weight of shape \[4\] must have one value per class, \[5\]",
        ),
        ErrorInput(
            "unknown reduction",
            lambda: (x, t, None, -100, "avg", 0.0),
            ValueError,
            label + r": reduction must be 'none', 'mean' or 'sum', got 'avg'",
        ),
        ErrorInput(
            "label_smoothing above 1",
            lambda: (x, t, None, -100, "mean", 1.5),
            ValueError,
            label + r": label_smoothing must be in \[0, 1\], got 1.5",
        ),
        ErrorInput(
            "0-d input",
            lambda: (_t(), torch.tensor(0), None, -100, "mean", 0.0),
            ValueError,
            label + r": input must have a class dim, got a 0-d tensor",
        ),
        ErrorInput(
            "weight that requires grad",
            weight_requiring_grad,
            RuntimeError,
            label + r": weight requires grad, but class weights get no gradient",
        ),
    ]


def _linear_cross_entropy_samples(device, dtype, requires_grad: bool) -> list[Sample]:
    hidden, classes = 8, 13

    def make(shape, rg=requires_grad, scale=1.0):
        return _make(shape, device, dtype, rg, scale=scale)

    def w(rg=requires_grad):
        return make((classes, hidden), rg, scale=0.4)

    def t(shape, ignore=None):
        return _targets(shape, classes, device, ignore)

    def call(name, x, target, bias=True, reduction="mean", smoothing=0.0, ignore=-100, **kw):
        b = make((classes,), kw.get("bias_rg", requires_grad)) if bias else None
        return Sample(name, (x, kw.get("weight", w()), target, b, ignore, reduction, smoothing))

    return [
        call("rows", make((6, hidden)), t((6,))),
        call("ignored-mean", make((6, hidden)), t((6,), ignore=-100)),
        call("sum", make((6, hidden)), t((6,), ignore=-100), reduction="sum"),
        call("none", make((6, hidden)), t((6,), ignore=-100), reduction="none"),
        call("smoothing", make((6, hidden)), t((6,), ignore=-100), smoothing=0.1),
        call("smoothing-none-no-bias", make((5, hidden)), t((5,)), False, "none", 0.3),
        call("no-bias", make((6, hidden)), t((6,)), bias=False),
        call("3-d-x", make((2, 3, hidden)), t((2, 3), ignore=-100), smoothing=0.05),
        call("3-d-x-none", make((2, 3, hidden)), t((2, 3)), reduction="none"),
        call("one-token", make((hidden,)), t(()), reduction="sum"),
        call("ignore-index-4", make((8, hidden)), t((8,), ignore=4), ignore=4),
        call("empty-batch", make((0, hidden)), t((0,)), reduction="sum"),
        call(
            "transposed-weight",
            make((4, hidden)),
            t((4,)),
            weight=_leaf_view(
                torch.randn(hidden, classes, device=device, dtype=dtype).t() * 0.4, requires_grad
            ),  # fmt: skip
        ),
        call("weight-only-grad", make((4, hidden), rg=False), t((4,)), bias_rg=False),
        call("x-only-grad", make((4, hidden)), t((4,)), weight=w(rg=False), bias_rg=False),
        call("no-grad", make((4, hidden), rg=False), t((4,)), weight=w(rg=False), bias_rg=False),
    ]


LINEAR_CROSS_ENTROPY_CLASSES = 97  # batch_inputs: no batch size the tests use is 97


def _linear_cross_entropy_batch(rows: int, device, dtype) -> tuple:
    """Hidden states [rows, 16], a [97, 16] projection and bias, targets (the batch, too) with
    ignore_index 1 (never the first: every batch has a mean), label smoothing."""
    hidden, classes = 16, LINEAR_CROSS_ENTROPY_CLASSES
    target = _targets((rows,), classes, device)
    if rows:
        target[0] = 2
    return (
        torch.randn(rows, hidden, device=device, dtype=dtype),
        torch.randn(classes, hidden, device=device, dtype=dtype) * 0.5,
        target,
        torch.randn(classes, device=device, dtype=dtype) * 0.1,
        1,
        "mean",
        0.1,
    )


def _linear_cross_entropy_property_inputs(
    draw: Callable, st: ModuleType, tensors: Callable
) -> tuple:
    hidden, classes = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    x = draw(tensors(shape=[*batch, hidden]))
    weight = draw(tensors(shape=[classes, hidden]))
    bias = draw(tensors(shape=[classes])) if draw(st.booleans()) else None
    ignore_index = draw(st.sampled_from([-100, 0]))
    n = math.prod(batch)
    values = draw(st.lists(st.integers(-1, classes - 1), min_size=n, max_size=n))
    target = torch.tensor([ignore_index if v < 0 else v for v in values], dtype=torch.long)
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return (x, weight, target.reshape(batch), bias, ignore_index, reduction,
            draw(st.sampled_from([0.0, 0.1])))  # fmt: skip


def _linear_cross_entropy_error_inputs() -> list[ErrorInput]:
    x, w, t = _t(4, 3), _t(5, 3), torch.tensor([0, 1, 2, 3])
    label = r"customgrad\.linear_cross_entropy"
    return [
        ErrorInput(
            "target past the last class",
            lambda: (x, w, torch.tensor([0, 1, 5, 3]), None, -100, "mean", 0.0),
            IndexError,
            label + r": target 5 is out of range for 5 classes",
        ),
        ErrorInput(
            "hidden size mismatch",
            lambda: (_t(4, 6), w, t, None, -100, "mean", 0.0),
            ValueError,
            label + r": x of shape \[4, 6\] must end in weight's hidden size 3",
        ),
        ErrorInput(
            "weight 1-D",
            lambda: (x, _t(3), t, None, -100, "mean", 0.0),
            ValueError,
            label + r": weight must be 2-D \[classes, hidden\], got shape \[3\]",
        ),
        ErrorInput(
            "target of the wrong shape",
            lambda: (x, w, torch.tensor([0, 1]), None, -100, "mean", 0.0),
            ValueError,
            label + r": target of shape \[2\] must have shape \[4\]",
        ),
        ErrorInput(
            "bias of the wrong shape",
            lambda: (x, w, t, _t(4), -100, "mean", 0.0),
            ValueError,
            label + r": bias of shape \[4\] must be \[5\], one per class",
        ),
        ErrorInput(
            "unknown reduction",
            lambda: (x, w, t, None, -100, "max", 0.0),
            ValueError,
            label + r": reduction must be 'none', 'mean' or 'sum', got 'max'",
        ),
        ErrorInput(
            "probability targets",
            lambda: (x, w, torch.rand(4, 5), None, -100, "mean", 0.0),
            TypeError,
            label + r": target must be an integer tensor of class indices",
        ),
    ]


OPINFOS: list[OpslibOpInfo] = [
    OpslibOpInfo(
        op=torch.ops.customgrad.cross_entropy,
        func=cross_entropy,
        reference=_native_cross_entropy,
        reference_text="F.cross_entropy(input, target, weight, ignore_index=..., reduction=..., "
        "label_smoothing=...)",
        formula=(
            "ℓ = (1-ε)·w_t·(lse - x_t) + (ε/C)·Σ_c w_c·(lse - x_c), mean: Σℓ / Σw_t ; "
            "dL/dx = s·((1-ε)·w_t·(p - onehot(t)) + (ε/C)·(Σw·p - w)), p = softmax(x)"
        ),
        sample_inputs=_cross_entropy_samples,
        batch_inputs=_cross_entropy_batch,
        batch_args=(0, 1),  # the logits and their targets
        constant_args=(2,),  # weight: native refuses one that requires grad, and so does the op
        extreme_inputs=lambda x: (x, torch.tensor(3), None, -100, "mean", 0.0),
        property_inputs=_cross_entropy_property_inputs,
        exact_reference=_ignored_rows_zeroed,
        error_inputs=_cross_entropy_error_inputs,
        deliberate_refusals=(
            r"label_smoothing must be in \[0, 1\]",  # native: outside, no distribution
            r"target of shape .* must have shape",  # native: [1] for one sample, too
            r"must have one value per class",  # a [1, C] class weight: native reads C values
        ),
    ),
    OpslibOpInfo(
        op=torch.ops.customgrad.linear_cross_entropy,
        func=linear_cross_entropy,
        reference=native_linear_cross_entropy,
        reference_text="F.cross_entropy(F.linear(x, weight, bias), target, ...)",
        formula=(
            "per chunk of rows: z = x·Wᵀ + b, ℓ as cross_entropy ; dz = s·dℓ/dz, "
            "dL/dx = dz·W, dL/dW = Σ dzᵀ·x, dL/db = Σ dz (computed in the forward)"
        ),
        sample_inputs=_linear_cross_entropy_samples,
        batch_inputs=_linear_cross_entropy_batch,
        batch_args=(0, 2),  # the hidden states and their targets
        extreme_inputs=None,  # sums of ±inf through a matmul are order-dependent (as linear)
        property_inputs=_linear_cross_entropy_property_inputs,
        exact_reference=_ignored_tokens_dropped,
        error_inputs=_linear_cross_entropy_error_inputs,
        deliberate_refusals=(
            r"label_smoothing must be in \[0, 1\]",
            r"target of shape .* must have shape",  # the composite reshapes it
            r"bias of shape .* must be \[\w+\], one per class",  # not broadcast
            # a 1-D weight makes logits with no class dim: the composite reads rows as classes
            r"weight must be 2-D \[classes, hidden\]",
        ),
    ),
]
