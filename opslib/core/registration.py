"""How every customgrad op is registered: ``Library.define`` and the official torch.library API.

``define_op`` takes the pieces each op file writes (kernel, fake, setup_context, backward) and
registers them:

- ``Library.define`` with the op's schema;
- the kernel at ``CompositeExplicitAutograd``: one Python kernel serves CPU and CUDA (a device
  may compute differently inside it, e.g. Triton on CUDA);
- the fake implementation with ``torch.library.register_fake`` (FakeTensor and meta tensors);
- the backward with ``torch.library.register_autograd(..., setup_context=...)``, the API that
  PyTorch's custom-op documentation recommends: its kernel sits at the ``Autograd`` alias key,
  runs the kernel below autograd, and calls ``setup_context`` and the backward.

On CPU, calls that need no autograd skip the Python round trip altogether: the C++ kernels of
``opslib/csrc/cpu_fast_path.cpp`` (loaded by ``opslib/core/cpu_kernels.py``) take the
AutogradCPU key, a slot of its own that ``register_autograd``'s kernel leaves to them, and hand
every call they do not compute to ``register_autograd``'s kernel through AutogradOther.

Each op file may also register its forward formula for inductor
(``register_inductor_decomposition``): under ``torch.compile`` inductor then generates the
forward itself, fused with its neighbours, instead of calling the op as an opaque kernel.

Why not ``custom_op``: its Python wrappers cost ~8 µs per call (native relu: ~0.7 µs); through
``Library.define`` the same relu costs ~1.3 µs without grad where the C++ fast path takes it,
~5.6 µs through the Python kernels (``python3 benchmarks/registration_overhead.py`` measures
every op).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

# Each op's ONNX translation, registered in the op's own file beside its other registrations;
# opslib.onnx reads it. A translation imports onnxscript when it runs: registering imports
# nothing, so `import opslib` needs no onnx.
ONNX_TRANSLATIONS: dict[torch._ops.OpOverload, Callable] = {}


def register_onnx_translation(op, translation: Callable) -> None:
    """Declare ``translation`` (a function of onnxscript standard ops, with the op's signature)
    as the ONNX translation of ``op`` (an op packet: its default overload), for
    ``opslib.onnx.translation_table()`` and ``opslib.onnx.export``."""
    ONNX_TRANSLATIONS[getattr(op, "default", op)] = translation


Op = torch._ops.OpOverloadPacket

_LIBRARIES: dict[str, torch.library.Library] = {}
# Every op's Python kernel by qualified name ("customgrad::relu"): what the op computes when
# the C++ fast path does not take a call (tests compare the two).
PYTHON_KERNELS: dict[str, Callable[..., Tensor]] = {}

_dispatch_modes_active = torch._C._len_torch_dispatch_stack
_functorch_transform_active = torch._C._functorch.peek_interpreter_stack


def library(namespace: str) -> torch.library.Library:
    """The ``torch.library.Library`` that defines ``namespace``'s ops (made once)."""
    if namespace not in _LIBRARIES:
        _LIBRARIES[namespace] = torch.library.Library(namespace, "DEF")
    return _LIBRARIES[namespace]


def in_layout_of(t: Tensor, like: Tensor) -> Tensor:
    """t laid out as ``torch.empty_like(like)``: the layout an elementwise op's fake promises
    (like's strides if it is dense, else contiguous). t itself when it already is."""
    if t.stride() == like.stride():
        return t
    target = torch.empty_like(like)
    return t if t.stride() == target.stride() else target.copy_(t)


def only_plain_tensors(args: tuple) -> bool:
    """True when nothing but real computation could see this call: no TorchDispatchMode and no
    functorch transform (vmap/grad/jvp wrappers exist only inside one) is active, and every
    tensor is a plain ``torch.Tensor`` (not a FakeTensor or another subclass). Fast paths that
    launch their own kernels (Triton) take only such calls.

    A module's ``nn.Parameter`` counts as plain: it is a Tensor subclass only to mark itself
    for ``Module.parameters()`` (a DTensor parameter has DTensor's type, so it does not pass).
    Without this, every norm inside a model took its slow torch-op backward (layer_norm's:
    1.6 s of a 5 s training step, measured on benchmarks/checkpointing.py's DeepMLP)."""
    if _dispatch_modes_active() or _functorch_transform_active() is not None:
        return False
    for a in args:
        if type(a) not in _PLAIN_TYPES and isinstance(a, Tensor):
            return False
    return True


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def define_op(
    name: str,
    schema: str,
    *,
    kernel: Callable[..., Tensor],
    fake: Callable[..., Tensor],
    setup_context: Callable[..., None],
    backward: Callable[..., tuple[Tensor | None, ...] | Tensor | None],
    namespace: str = "customgrad",
) -> Op:
    """Register ``<namespace>::<name><schema>`` and return ``torch.ops.<namespace>.<name>``
    (the packet, not ``.default``: TorchScript can call a packet bound to a module global).

    ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)`` are what
    ``torch.library.register_autograd`` takes; ``inputs`` holds every argument of the schema,
    defaults filled in. A tensor that ``setup_context`` saves must not be an inference tensor:
    that is refused here, with a message naming the op and the argument (torch itself would
    refuse later, inside ``Function.apply``, with a message that names neither).
    """
    lib = library(namespace)
    qualname = f"{namespace}::{name}"
    lib.define(name + schema)
    lib.impl(name, kernel, "CompositeExplicitAutograd")
    PYTHON_KERNELS[qualname] = kernel

    def traced_fake(*args: object) -> Tensor:
        install_inductor_decompositions()  # a fake runs only while something traces the op
        return fake(*args)

    torch.library.register_fake(qualname, traced_fake, lib=lib)
    op = getattr(getattr(torch.ops, namespace), name)
    arg_names = tuple(a.name for a in op.default._schema.arguments)

    def setup_context_refusing_inference_tensors(ctx, inputs: tuple, output: Tensor) -> None:
        setup_context(ctx, inputs, output)
        for t in getattr(ctx, "to_save", None) or ():  # what save_for_backward was given
            if t is not None and t.is_inference():
                culprits = [
                    n
                    for n, a in zip(arg_names, inputs, strict=False)
                    if isinstance(a, Tensor)
                    and a.is_inference()
                    and any(a is s for s in ctx.to_save)
                ]
                raise RuntimeError(
                    f"{namespace}.{name}: {', '.join(culprits) or 'a tensor'} created under "
                    f"torch.inference_mode() cannot be saved for backward; create it outside "
                    f"inference mode or pass a .clone() made outside it"
                )

    torch.library.register_autograd(
        qualname, backward, setup_context=setup_context_refusing_inference_tensors, lib=lib
    )
    return op


def define_mutating_op(
    name: str,
    schema: str,
    *,
    kernel: Callable[..., None],
    fake: Callable[..., None],
    namespace: str = "customgrad",
) -> Op:
    """Register ``<namespace>::<name><schema>``, an op that updates some of its arguments in place
    (marked ``Tensor(a!)`` in the schema) and returns nothing, and return its packet.

    ``register_autograd`` refuses such ops (an in-place update is not a function of its inputs
    that autograd could differentiate), so the op gets what autograd needs by hand, at the two
    keys above its kernel, as ``torch.library.custom_op`` does for mutable ops:

    - ``Autograd``: refuses, naming the op and the argument, to update a tensor that requires
      grad while grad mode is on (what native in-place ops refuse for a leaf: an optimizer
      step runs under ``torch.no_grad()``); otherwise runs the kernel below autograd. opcheck's
      autograd-registration check looks for exactly this kernel.
    - ``ADInplaceOrView``: bumps the version counter of every tensor it updates, so autograd
      notices when a tensor it saved for backward was changed since, as for native in-place ops.

    Under ``torch.compile`` the op is functionalized (``auto_functionalized``) like any mutable
    custom op, and inductor turns it back into the in-place call.
    """
    lib = library(namespace)
    qualname = f"{namespace}::{name}"
    lib.define(name + schema)
    lib.impl(name, kernel, "CompositeExplicitAutograd")
    PYTHON_KERNELS[qualname] = kernel
    torch.library.register_fake(qualname, fake, lib=lib)
    op = getattr(getattr(torch.ops, namespace), name)
    arguments = op.default._schema.arguments
    mutated = [
        (i, a.name) for i, a in enumerate(arguments) if a.alias_info and a.alias_info.is_write
    ]

    def updated_tensors(args: tuple):
        for i, arg_name in mutated:
            value = args[i] if i < len(args) else None
            for k, t in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(t, Tensor):
                    yield f"{arg_name}[{k}]" if isinstance(value, (list, tuple)) else arg_name, t

    def autograd_kernel(*args: object) -> None:
        if torch.is_grad_enabled():
            for where, t in updated_tensors(args):
                if t.requires_grad:
                    raise RuntimeError(
                        f"{namespace}.{name}: {where} requires grad and would be updated in "
                        f"place with grad mode on; run the update under torch.no_grad() (as "
                        f"an optimizer step does)"
                    )
        with torch._C._AutoDispatchBelowAutograd():
            return op.default(*args)

    def updated_tensor_list(args: tuple) -> list[Tensor]:
        """updated_tensors without the names: once per call of an optimizer step over every
        parameter, so kept to list operations (~0.2 ms for 400 tensors as a generator). A
        ``Tensor(a!)[]`` argument holds tensors only (the schema admits no None)."""
        out: list[Tensor] = []
        for i, _ in mutated:
            value = args[i] if i < len(args) else None
            if isinstance(value, (list, tuple)):
                out.extend(value)
            elif isinstance(value, Tensor):
                out.append(value)
        return out

    def inplace_or_view_kernel(keyset, *args: object) -> None:
        torch.autograd.graph.increment_version(updated_tensor_list(args))
        return op.default.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, *args)

    lib.impl(name, autograd_kernel, "Autograd")
    lib.impl(name, inplace_or_view_kernel, "ADInplaceOrView", with_keyset=True)
    return op


_INDUCTOR_DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable[..., Tensor]] = {}
_installed_in_inductor: set[torch._ops.OpOverload] = set()


def register_inductor_decomposition(op: Op, formula: Callable[..., Tensor]) -> None:
    """Under ``torch.compile`` with inductor (the default backend), compute the op's forward as
    ``formula``: torch ops that inductor fuses with the ops around it, where the op itself would
    be an opaque call that nothing fuses into (a bias add, an activation, a second activation).

    Only inductor's own decomposition table gets the formula: dynamo's graph, ``torch.export``,
    the ``aot_eager`` backend and the ONNX exporter still see the op itself, and the
    backward is always the op's registered one (autograd runs above the decomposition).
    ``formula`` must be the same math as the op's CPU kernel (inductor may round differently,
    as it does for any torch code); the inputs were already validated by the fake
    implementation while dynamo traced them.
    """
    _INDUCTOR_DECOMPOSITIONS[op.default] = formula


def has_inductor_decomposition(op: Op | torch._ops.OpOverload) -> bool:
    """Whether ``register_inductor_decomposition`` gave the op a formula for inductor."""
    return getattr(op, "default", op) in _INDUCTOR_DECOMPOSITIONS


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


def _library_of(op: Op) -> torch.library.Library:
    return library(op._qualified_op_name.split("::")[0])


def register_vmap(op: Op, rule: Callable) -> None:
    """``rule(info, in_dims, *args)`` as ``op``'s batching rule under ``torch.func.vmap``
    (``torch.library.register_vmap``): it returns the outputs and their batch dims. Without one,
    vmap runs the op once per sample (47x slower on a 256-sample linear) and warns."""
    torch.library.register_vmap(op._qualified_op_name, rule, lib=_library_of(op))


def register_pointwise_vmap(op: Op) -> None:
    """An elementwise op of one tensor ``x`` (and any non-tensor arguments) is its own batching
    rule: run it on the batched tensor.

    Without a rule, ``torch.func.vmap`` falls back to a slow per-sample loop and warns.
    """

    def batching_rule(info, in_dims: tuple, x: Tensor, *rest: object) -> tuple[Tensor, int | None]:
        return op(x, *rest), in_dims[0]

    register_vmap(op, batching_rule)


def register_vmap_along_dim(op: Op) -> None:
    """An op ``(x, dim)`` that works along one dim of x (softmax, log_softmax) is its own
    batching rule: move the batch dim to the front and shift ``dim`` past it. A logical 0-d x
    (physically [B]) is computed as a row of one element, which is what the op gives for it."""

    def batching_rule(info, in_dims: tuple, x: Tensor, dim: int) -> tuple[Tensor, int | None]:
        if in_dims[0] is None:
            return op(x, dim), None
        x = x.movedim(in_dims[0], 0)
        if x.dim() == 1:
            return op(x.unsqueeze(-1), -1).squeeze(-1), 0
        return op(x, dim if dim < 0 else dim + 1), 0

    register_vmap(op, batching_rule)


def register_autocast(op: Op, device_type: str, cast_to: torch.dtype) -> None:
    """Native-style fixed autocast policy (e.g. float32 for exp/pow on CUDA)."""
    torch.library.register_autocast(
        op._qualified_op_name, device_type, cast_to, lib=_library_of(op)
    )


def register_autocast_to_autocast_dtype(op: Op, device_type: str) -> None:
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
            return op.default(*_cast(args, device_type, cast_to))

    _library_of(op).impl(
        op._qualified_op_name.split("::")[1], autocast_kernel, autocast_key, with_keyset=True
    )
