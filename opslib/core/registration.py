"""How every customgrad op is registered: torch.library's lower-level API with an autograd kernel.

``define_op`` takes the pieces each op file writes (kernel, fake, setup_context, backward) and
registers them, the same pieces ``torch.library.custom_op`` + ``register_autograd`` take:

- ``Library.define`` with the op's schema;
- the kernel at ``CompositeExplicitAutograd``: one Python kernel serves CPU and CUDA (a device
  may later get its own kernel, e.g. Triton on CUDA);
- the fake implementation with ``torch.library.register_fake`` (FakeTensor and meta tensors);
- an ``Autograd`` kernel: when a gradient is needed it runs an ``autograd.Function`` whose
  forward runs the kernel (below autograd) and saves what ``setup_context`` asks, and whose
  backward is the op's backward; otherwise it runs the kernel without recording anything.

On CPU, calls that need no autograd skip this Python round trip altogether: the C++ kernels of
``opslib/csrc/cpu_fast_path.cpp`` (loaded by ``opslib/core/cpu_fast_path.py``) take the
AutogradCPU key and hand every call they do not compute back to the autograd kernel above.

Each op file may also register its forward formula for inductor
(``register_inductor_decomposition``): under ``torch.compile`` inductor then generates the
forward itself, fused with its neighbours, instead of calling the op as an opaque kernel.

Why not ``custom_op``: its Python wrappers cost ~10 µs per call (native relu: ~1.2 µs). Here a
relu without grad costs ~3.9 µs through the Python kernels and ~2.2 µs through the C++ fast path,
and forward + backward about two thirds of custom_op's (``benchmarks/registration_overhead.py``).
Every check of the op contract (opcheck with all five tests, gradcheck, gradgradcheck, compile,
export, vmap, autocast, ONNX) runs on these ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

LIB = torch.library.Library("customgrad", "DEF")

_is_grad_enabled = torch._C.is_grad_enabled
_any_requires_grad = torch._C._any_requires_grad
_dispatch_modes_active = torch._C._len_torch_dispatch_stack
_functorch_transform_active = torch._C._functorch.peek_interpreter_stack
_BelowAutograd = torch._C._AutoDispatchBelowAutograd


def only_plain_tensors(args: tuple) -> bool:
    """True when nothing below the autograd key could see this call: no TorchDispatchMode and
    no functorch transform (vmap/grad/jvp wrappers exist only inside one) is active, and every
    tensor is a plain ``torch.Tensor`` (not a FakeTensor or another subclass). Then running the
    kernel here is exactly what a redispatch would do, minus a second trip through the
    dispatcher (~2 µs of a ~4 µs call)."""
    if _dispatch_modes_active() or _functorch_transform_active() is not None:
        return False
    for a in args:
        if type(a) is not Tensor and isinstance(a, Tensor):
            return False
    return True


def define_op(
    name: str,
    schema: str,
    *,
    kernel: Callable[..., Tensor],
    fake: Callable[..., Tensor],
    setup_context: Callable[..., None],
    backward: Callable[..., tuple[Tensor | None, ...] | Tensor | None],
) -> torch._ops.OpOverloadPacket:
    """Register ``customgrad::<name><schema>`` and return ``torch.ops.customgrad.<name>``
    (the packet, not ``.default``: TorchScript can call a packet bound to a module global).

    ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)`` have the signatures
    ``torch.library.register_autograd`` uses; ``inputs`` always holds every argument of the
    schema (defaults filled in).
    """
    LIB.define(name + schema)
    LIB.impl(name, kernel, "CompositeExplicitAutograd")

    def traced_fake(*args: object) -> Tensor:
        install_inductor_decompositions()  # a fake runs only while something traces the op
        return fake(*args)

    torch.library.register_fake(f"customgrad::{name}", traced_fake, lib=LIB)
    op = getattr(torch.ops.customgrad, name).default
    arguments = op._schema.arguments
    defaults = tuple(a.default_value if a.has_default_value() else None for a in arguments)
    arg_names = tuple(a.name for a in arguments)

    def forward(ctx, *args: object) -> Tensor:
        if only_plain_tensors(args):  # what the redispatch below would run, without the trip
            output = kernel(*args)
        else:
            with _BelowAutograd():
                output = op(*args)
        setup_context(ctx, args, output)
        return output

    Function = type(
        f"{name.title().replace('_', '')}Backward",  # what y.grad_fn shows, e.g. LinearBackward
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )

    def autograd_kernel(*args: object) -> Tensor:
        if len(args) < len(arguments):  # the dispatcher drops trailing defaults (bias=None)
            args = args + defaults[len(args) :]
        if _is_grad_enabled() and _any_requires_grad(*args):
            try:
                return Function.apply(*args)
            except RuntimeError as err:
                if "Inference tensors cannot be saved" not in str(err):
                    raise
                culprits = [
                    n
                    for n, a in zip(arg_names, args, strict=True)
                    if isinstance(a, Tensor) and a.is_inference()
                ]
                raise RuntimeError(
                    f"customgrad.{name}: {', '.join(culprits)} created under "
                    f"torch.inference_mode() cannot be saved for backward; create it outside "
                    f"inference mode or pass a .clone() made outside it"
                ) from err
        if only_plain_tensors(args):
            return kernel(*args)
        with _BelowAutograd():
            return op(*args)

    LIB.impl(name, autograd_kernel, "Autograd")
    return getattr(torch.ops.customgrad, name)


_INDUCTOR_DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable[..., Tensor]] = {}
_installed_in_inductor: set[torch._ops.OpOverload] = set()


def register_inductor_decomposition(name: str, formula: Callable[..., Tensor]) -> None:
    """Under ``torch.compile`` with inductor (the default backend), compute the op's forward as
    ``formula``: torch ops that inductor fuses with the ops around it, where the op itself would
    be an opaque call that nothing fuses into (a bias add, an activation, a second activation).

    Only inductor's own decomposition table gets the formula: dynamo's graph, ``torch.export``,
    the ``aot_eager`` backend and the ONNX exporter still see ``customgrad::<name>``, and the
    backward is always the op's registered one (autograd runs above the decomposition).
    ``formula`` must be the same math as the op's CPU kernel (inductor may round differently,
    as it does for any torch code); the inputs were already validated by the fake
    implementation while dynamo traced them.
    """
    _INDUCTOR_DECOMPOSITIONS[getattr(torch.ops.customgrad, name).default] = formula


def install_inductor_decompositions() -> None:
    """Copy the registered formulas into inductor's decomposition table, once.

    Called from every fake implementation: dynamo runs the fake while it traces, before it hands
    the graph to inductor, which then picks its table. So inductor always sees the formulas, and
    eager-only use never imports inductor (~2 s). The import runs outside any active
    FakeTensorMode, so inductor's module-level tensors are real.
    """
    missing = _INDUCTOR_DECOMPOSITIONS.keys() - _installed_in_inductor
    if not missing:
        return
    try:
        with _disable_current_modes():
            from torch._inductor import decomposition
    except ImportError:  # a torch build without inductor: nothing to fuse for
        return
    for op in missing:
        decomposition.decompositions[op] = _INDUCTOR_DECOMPOSITIONS[op]
    cached_copy = getattr(decomposition, "fast_random_decomps", None)  # the table, cached
    if hasattr(cached_copy, "cache_clear"):
        cached_copy.cache_clear()
    _installed_in_inductor.update(missing)


def register_vmap(name: str, rule: Callable) -> None:
    torch.library.register_vmap(f"customgrad::{name}", rule, lib=LIB)


def register_pointwise_vmap(name: str) -> None:
    """A one-input elementwise op is its own batching rule: run it on the batched tensor.

    Without a rule, ``torch.func.vmap`` falls back to a slow per-sample loop and warns.
    """
    op = getattr(torch.ops.customgrad, name).default

    def batching_rule(info, in_dims: tuple[int | None], x: Tensor) -> tuple[Tensor, int | None]:
        return op(x), in_dims[0]

    register_vmap(name, batching_rule)


def register_autocast(name: str, device_type: str, cast_to: torch.dtype) -> None:
    """Native-style fixed autocast policy (e.g. float32 for exp/pow on CUDA)."""
    torch.library.register_autocast(f"customgrad::{name}", device_type, cast_to, lib=LIB)


def register_autocast_to_autocast_dtype(name: str, device_type: str) -> None:
    """Under ``torch.autocast(device_type)``, cast floating inputs to the autocast dtype.

    This is what native matmul-like ops (``F.linear``) do. ``torch.library.register_autocast``
    casts to one dtype fixed at registration; this is the same rule (same dispatch key, same
    cast helper) with the dtype read when the op is called, so ``torch.autocast("cpu",
    dtype=torch.float16)`` gives float16 as it does for ``F.linear``.
    """
    from torch.amp.autocast_mode import _cast

    op = getattr(torch.ops.customgrad, name).default
    autocast_key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, autocast_key))

    def autocast_kernel(_keyset, *args):
        cast_to = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op(*_cast(args, device_type, cast_to))

    LIB.impl(name, autocast_kernel, autocast_key, with_keyset=True)
