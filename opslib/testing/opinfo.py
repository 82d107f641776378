"""What the kit knows about one op: ``OpInfo``, its ``Sample`` calls and its ``ErrorInput`` bad
calls, and the helpers that copy a sample's tensors.

Only ``op``, ``reference`` and ``sample_inputs`` are required; every other field has a default
that turns a family off or picks the usual choice, so a third-party op's entry is a few lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

ALL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(arg: Any) -> str:
    """How an argument reads in test ids and failure messages: a tensor by its shape ("(nc)" if
    not contiguous), a list of tensors by its length, anything else by its repr."""
    if isinstance(arg, Tensor):
        return f"{list(arg.shape)}{'' if arg.is_contiguous() else '(nc)'}"
    if isinstance(arg, (list, tuple)) and any(isinstance(a, Tensor) for a in arg):
        return f"{len(arg)} tensors"  # a list argument (Tensor[] in the schema)
    return repr(arg)


@dataclass(frozen=True)
class Sample:
    """One call of an op: its positional and keyword arguments, and a name that says what is
    awkward about it (it names the call in test ids and failure messages)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # shows up in pytest ids and failure messages
        shown = [describe(a) for a in self.args]
        shown += [f"{k}={describe(v)}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(shown)})"


@dataclass(frozen=True)
class ErrorInput:
    """A bad call of one op and the error it must raise, in eager mode and compiled.

    ``args``: the call's arguments, or a function of none that builds them when the check runs
    (some need inference mode, meta tensors...). ``match``: a regex the message must contain
    (the op's name and the problem). ``compiles``: False where dynamo cannot trace the inputs
    at all (sparse tensors, a string for a float).
    """

    name: str
    args: tuple | Callable[[], tuple]
    error_type: type[Exception]
    match: str
    compiles: bool = True

    def make_args(self) -> tuple:
        return self.args() if callable(self.args) else self.args


SampleFn = Callable[[torch.device | str, torch.dtype, bool], list[Sample]]


def unary_extremes(x: Tensor) -> tuple:
    """``extreme_inputs`` of an op of one tensor: the extremes themselves."""
    return (x,)


def resolve_op(op: Any) -> torch._ops.OpOverload:
    """The ``OpOverload`` of ``op``: itself, a packet's ``.default``, or the op a
    ``torch.library.custom_op`` function wraps."""
    if isinstance(op, torch._ops.OpOverload):
        return op
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op.default
    if isinstance(op, torch._library.custom_ops.CustomOpDef):
        return op._opoverload
    raise TypeError(
        f"opslib.testing.OpInfo: op must be a torch.library op (an OpOverload such as "
        f"torch.ops.mylib.my_op.default, its packet, or a custom_op function), got {op!r}"
    )


@dataclass(frozen=True)
class OpInfo:
    """Everything the contract's checks need to know about one op.

    Required: ``op`` (``torch.ops.<ns>.<name>.default``, its packet, or a ``custom_op``
    function), ``reference`` (the same computation in plain PyTorch: values and gradients are
    judged against it) and ``sample_inputs(device, dtype, requires_grad) -> list[Sample]``.
    """

    op: Any
    reference: Callable[..., Any]
    sample_inputs: SampleFn
    # The public function users call (opslib.layer_norm); None: the op itself. Compile, export,
    # TorchScript and vmap run this, so Python around the op is checked too.
    func: Callable[..., Any] | None = None
    # The ONNX translation (an onnxscript function of the op's arguments); None: the one the op
    # registered with register_onnx_translation, if any. No translation: no ONNX family.
    onnx_translation: Callable[..., Any] | None = None
    # Bad calls and the errors they must raise (the errors family).
    error_inputs: Callable[[], list[ErrorInput]] = list
    dtypes: tuple[torch.dtype, ...] = ALL_FLOAT_DTYPES
    # (atol, rtol) against the reference in float32, values and gradients. float64 is judged
    # at 1e-10 relative, half precision against native's own error (flash-attention's rule).
    float32_tol: tuple[float, float] = (1e-5, 1.3e-6)
    # Arguments for compile (several batch sizes, no recompile), export (dynamic batch), ONNX,
    # vmap and autocast: a batch of `rows` rows (dim 0 of the first tensor is the batch),
    # non-tensor arguments at non-default values. None: the first sample of each check instead.
    batch_inputs: Callable[[int, torch.device | str, torch.dtype], tuple] | None = None
    # Positions of batch_inputs' arguments whose dim 0 is the batch: the first, and any other
    # that goes with it (cross_entropy's targets). Export marks their dim 0 dynamic, and ONNX
    # parity models take them as inputs (the other tensors are parameters).
    batch_args: tuple[int, ...] = (0,)
    # Positions of floating-point tensor arguments that take no gradient (cross_entropy's class
    # weights): the checks never make them require grad (``leaves(constant=)``).
    constant_args: tuple[int, ...] = ()
    # dtypes that onnxruntime's CPU provider has no kernel for in this op's translation, with
    # what is missing: ONNX parity is not run in them, and the reports say so.
    onnxruntime_missing: dict[torch.dtype, str] = field(default_factory=dict)
    # The op's arguments around a 1-D tensor of extreme values (±inf, nan, ±1e4...), for the
    # comparison with native (``unary_extremes`` for an op of one tensor); None: not run.
    extreme_inputs: Callable[[Tensor], tuple] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", resolve_op(self.op))

    @property
    def name(self) -> str:
        """The op's name without its namespace, e.g. ``linear``."""
        return self.op._schema.name.split("::")[1]

    @property
    def namespace(self) -> str:
        return self.op.namespace

    @property
    def label(self) -> str:
        """How the op's error messages name it, e.g. ``customgrad.linear``."""
        return f"{self.namespace}.{self.name}"

    @property
    def call(self) -> Callable[..., Any]:
        """What the checks call: the public function if given, else the op."""
        return self.func if self.func is not None else self.op


def leaves(
    args: tuple,
    requires_grad: bool | None = True,
    dtype: torch.dtype | None = None,
    constant: tuple[int, ...] = (),
) -> tuple:
    """Fresh copies of the floating-point tensors of ``args`` (detached, optionally cast, each
    requiring grad if asked, or as the original did for ``requires_grad=None``; an
    ``nn.Parameter`` stays one); every other argument (integer tensors, floats, None...) as is.
    The tensors at the positions ``constant`` (an OpInfo's ``constant_args``) never require
    grad."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.is_floating_point():
            wants = a.requires_grad if requires_grad is None else requires_grad
            wants = wants and i not in constant
            copy = a.detach().to(dtype) if dtype is not None else a.detach().clone()
            if isinstance(a, torch.nn.Parameter):
                copy = torch.nn.Parameter(copy, requires_grad=wants)
            a = copy.requires_grad_(wants)
        out.append(a)
    return tuple(out)


def fresh_leaves(args: tuple, dtype: torch.dtype | None = None) -> tuple:
    """Independent copies of a sample's tensors (optionally cast), same requires_grad."""
    return leaves(args, requires_grad=None, dtype=dtype)


def among_tensors(args: tuple, positions: tuple[int, ...]) -> tuple[int, ...]:
    """``positions`` in ``args`` as positions among its tensors alone: where they are in the
    tensor tuple that ``bind_constants`` passes on."""
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    return tuple(k for k, i in enumerate(tensor_positions) if i in positions)


def requiring_grad(args: tuple) -> list[Tensor]:
    """The tensors of ``args`` that require grad, in order: what a gradient is taken for."""
    return [a for a in args if isinstance(a, Tensor) and a.requires_grad]


def grads_of(args: tuple) -> list:
    return [a.grad for a in args if isinstance(a, Tensor) and a.requires_grad]
