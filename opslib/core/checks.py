"""Input checks shared by every op, so every error names the op and reads the same way.

The checks run in the real kernel *and* in the fake (meta) implementation, so a bad call fails
the same way in eager mode, under ``torch.compile`` and under ``torch.export``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

FLOAT_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
_STRIDED = torch.strided


def label(op: str) -> str:
    """How errors name an op: ``customgrad.<op>`` for opslib's ops (their files pass the bare
    name), or the name as given when it has a namespace of its own (``opslib_test.scaled_tanh``)."""
    return op if "." in op else f"customgrad.{op}"


def _is_int(value: object) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def int_list(op: str, name: str, value: object, *, scalar_count: int | None = None) -> list:
    """``value`` as a list of ints: a sequence of ints (list, tuple, torch.Size), or one int
    repeated ``scalar_count`` times where the argument takes one (conv's stride=2). Anything
    else raises a TypeError that names the op and the argument, where Python would say "'float'
    object is not iterable"."""
    if scalar_count is not None and _is_int(value):
        return [value] * scalar_count
    if isinstance(value, (list, tuple, torch.Size)) and all(_is_int(v) for v in value):
        return list(value)
    expected = "an int or a sequence of ints" if scalar_count is not None else "a list of ints"
    raise TypeError(f"{label(op)}: {name} must be {expected}, got {value!r}")


def fmt_shape(shape: Sequence[int]) -> str:
    """``[2, 3]``-style shape text for error messages (``torch.Size(...)`` is noisy)."""
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_floating_input(op: str, name: str, t: Tensor) -> None:
    """A dense floating-point tensor, with no forward-mode tangent: what every op computes on.

    Runs on every call, so the common case is one condition; the message is worked out only
    when it fails.
    """
    if (
        isinstance(t, Tensor)
        and t.dtype in FLOAT_DTYPES
        and t.layout is _STRIDED
        and forward_ad._current_level < 0
    ):
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{label(op)}: {name} must be a Tensor, got {type(t).__name__}")
    if t.layout is not _STRIDED:
        raise TypeError(
            f"{label(op)}: {name} must be a dense (strided) tensor, got layout {t.layout}; "
            f"call .to_dense() first"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{label(op)}: {name} must be a floating-point tensor "
            f"(float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    # Forward-mode AD through a custom op silently yields a zero/None tangent (no forward-mode
    # formula can be registered). A dual tensor reaches the kernel with its tangent still
    # attached, so refuse it here rather than return a wrong derivative.
    if forward_ad.unpack_dual(t).tangent is not None:
        raise NotImplementedError(
            f"{label(op)}: forward-mode AD (make_dual / jvp) is not supported: torch.library "
            f"custom ops have no forward-mode formula, and PyTorch would return a zero tangent. "
            f"Use reverse mode (backward / torch.autograd.grad) instead."
        )


def check_index_input(op: str, name: str, t: Tensor, like: Tensor, like_name: str) -> None:
    """A dense tensor of integer indices (class indices) on the device of ``like`` (the
    argument ``like_name``)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{label(op)}: {name} must be a Tensor, got {type(t).__name__}")
    if t.layout is not _STRIDED:
        raise TypeError(
            f"{label(op)}: {name} must be a dense (strided) tensor, got layout {t.layout}; "
            f"call .to_dense() first"
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(
            f"{label(op)}: {name} must be an integer tensor of class indices, got {t.dtype} "
            f"(class probabilities as targets are not supported)"
        )
    if t.device != like.device:
        raise ValueError(
            f"{label(op)}: {like_name} and {name} must be on the same device, got {like_name} "
            f"on {like.device} and {name} on {t.device}"
        )


def check_same_device(op: str, named: dict[str, Tensor]) -> None:
    """All tensor arguments on one device (no silent copies)."""
    (first_name, first), *rest = named.items()
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(
                f"{label(op)}: {first_name} and {name} must be on the same device, "
                f"got {first_name} on {first.device} and {name} on {t.device}"
            )


def check_same_dtype_and_device(op: str, named: dict[str, Tensor]) -> None:
    """All tensor arguments share one dtype and one device (no silent promotion or copies)."""
    (first_name, first), *rest = named.items()
    for name, t in rest:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{label(op)}: {first_name} and {name} must have the same dtype, "
                f"got {first_name} {first.dtype} and {name} {t.dtype}"
            )
        check_same_device(op, {first_name: first, name: t})


def check_normalization(
    op: str,
    x: Tensor,
    normalized_shape: Sequence[int],
    affine: dict[str, Tensor | None],
    eps: float | None,
) -> None:
    """The arguments of a normalisation over x's trailing dims (rms_norm, layer_norm):
    ``normalized_shape`` is x's trailing dims; each given affine tensor (weight, bias) is a
    floating tensor of that shape with x's dtype and device; ``eps`` (if given) finite, >= 0."""
    check_floating_input(op, "x", x)
    k = len(normalized_shape)
    if k == 0:  # native: "Expected normalized_shape to be at least 1-dimensional"
        raise ValueError(
            f"{label(op)}: normalized_shape must name at least one of x's trailing dims, got []"
        )
    if k > x.dim() or list(x.shape[x.dim() - k :]) != list(normalized_shape):
        raise ValueError(
            f"{label(op)}: normalized_shape {fmt_shape(normalized_shape)} must be x's trailing "
            f"dims, but x has shape {fmt_shape(x.shape)}"
        )
    for name, t in affine.items():
        if t is None:
            continue
        check_floating_input(op, name, t)
        check_same_dtype_and_device(op, {"x": x, name: t})
        if list(t.shape) != list(normalized_shape):
            raise ValueError(
                f"{label(op)}: {name} of shape {fmt_shape(t.shape)} must have "
                f"normalized_shape {fmt_shape(normalized_shape)}"
            )
    if eps is not None and not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{label(op)}: eps must be finite and >= 0, got {eps}")


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """True if a tensor of ``shape`` broadcasts to ``target`` without enlarging it."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target), strict=False))


def input_grad_flags(ctx, num_inputs: int) -> tuple[bool, ...]:
    """``ctx.needs_input_grad`` for exactly the op's ``num_inputs`` inputs.

    torch.library's generated autograd.Function sees one extra trailing argument (dispatch
    metadata) in ``setup_context``, and the dispatcher drops trailing arguments equal to their
    default (``bias=None``), so the raw tuple can be longer or shorter than the schema.
    """
    flags = tuple(ctx.needs_input_grad[:num_inputs])
    return flags + (False,) * (num_inputs - len(flags))
