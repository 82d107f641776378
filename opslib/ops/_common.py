"""Input checks shared by every op, so every error names the op and reads the same way.

The checks run in the real kernel *and* in the fake (meta) implementation, so a bad call fails
the same way in eager mode, under ``torch.compile`` and under ``torch.export``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fmt_shape(shape: Sequence[int]) -> str:
    """``[2, 3]``-style shape text for error messages (``torch.Size(...)`` is noisy)."""
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_floating_input(op: str, name: str, t: Tensor) -> None:
    """A dense floating-point tensor: what every op of the library computes on."""
    if not isinstance(t, Tensor):
        raise TypeError(f"customgrad.{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(
            f"customgrad.{op}: {name} must be a dense (strided) tensor, got layout {t.layout}; "
            f"call .to_dense() first"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"customgrad.{op}: {name} must be a floating-point tensor "
            f"(float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    # Forward-mode AD through torch.library's register_autograd silently yields a zero/None
    # tangent (no jvp can be registered). A dual tensor reaches the kernel with its tangent
    # still attached, so refuse it here rather than return a wrong derivative.
    if forward_ad._current_level >= 0 and forward_ad.unpack_dual(t).tangent is not None:
        raise NotImplementedError(
            f"customgrad.{op}: forward-mode AD (make_dual / jvp) is not supported: torch.library "
            f"custom ops have no forward-mode formula, and PyTorch would return a zero tangent. "
            f"Use reverse mode (backward / torch.autograd.grad) instead."
        )


def check_same_dtype_and_device(op: str, named: dict[str, Tensor]) -> None:
    """All tensor arguments share one dtype and one device (no silent promotion or copies)."""
    (first_name, first), *rest = named.items()
    for name, t in rest:
        if t.dtype != first.dtype:
            raise TypeError(
                f"customgrad.{op}: {first_name} and {name} must have the same dtype, "
                f"got {first_name} {first.dtype} and {name} {t.dtype}"
            )
        if t.device != first.device:
            raise ValueError(
                f"customgrad.{op}: {first_name} and {name} must be on the same device, "
                f"got {first_name} on {first.device} and {name} on {t.device}"
            )


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """True if a tensor of ``shape`` broadcasts to ``target`` without enlarging it."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target), strict=False))


def register_pointwise_vmap(op: torch._library.custom_ops.CustomOpDef) -> None:
    """A one-input elementwise op is its own batching rule: run it on the batched tensor.

    Without a rule, ``torch.func.vmap`` falls back to a slow per-sample loop and warns.
    """

    def batching_rule(info, in_dims: tuple[int | None], x: Tensor) -> tuple[Tensor, int | None]:
        return op(x), in_dims[0]

    op.register_vmap(batching_rule)


def register_autocast_to_autocast_dtype(
    op: torch._library.custom_ops.CustomOpDef, device_type: str
) -> None:
    """Under ``torch.autocast(device_type)``, cast floating inputs to the autocast dtype.

    This is what native matmul-like ops (``F.linear``) do. ``torch.library.register_autocast``
    casts to one dtype fixed at registration; this is the same rule (same dispatch key, same
    cast helper) with the dtype read when the op is called, so ``torch.autocast("cpu",
    dtype=torch.float16)`` gives float16 as it does for ``F.linear``.
    """
    from torch.amp.autocast_mode import _cast

    autocast_key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, autocast_key))

    def autocast_kernel(_keyset, *args):
        cast_to = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op._opoverload(*_cast(args, device_type, cast_to))

    op._lib.impl(op._name, autocast_kernel, autocast_key, with_keyset=True)


def input_grad_flags(ctx, num_inputs: int) -> tuple[bool, ...]:
    """``ctx.needs_input_grad`` for exactly the op's ``num_inputs`` inputs.

    torch.library's generated autograd.Function sees one extra trailing argument (dispatch
    metadata) in ``setup_context``, and the dispatcher drops trailing arguments equal to their
    default (``bias=None``), so the raw tuple can be longer or shorter than the schema.
    """
    flags = tuple(ctx.needs_input_grad[:num_inputs])
    return flags + (False,) * (num_inputs - len(flags))
