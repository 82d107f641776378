"""The public API for writing an op the way opslib's own are written: what ``opslib/ops/<name>.py``
imports from the machinery (``opslib/core``), in one place with one ``__all__``. Everything else
in ``opslib.core`` is internal and may change. For example::

    from opslib.authoring import check_floating_input, define_op, register_pointwise_vmap

    _scaled_tanh = define_op("mylib::scaled_tanh", "(Tensor x, float alpha) -> Tensor",
                             kernel=..., fake=..., setup_context=..., backward=...)
    register_pointwise_vmap(_scaled_tanh)

``tests/extra_op.py`` is a whole op written with it (the "Adding an op" example of
docs/guides/contributing.md). ONNX translations build with ``opslib.onnx.opset`` and
``opslib.onnx.constant`` (the ``onnx`` extra), and register with ``register_onnx_translation``.
"""

from opslib.core.checks import (
    broadcasts_to,
    check_floating_input,
    check_index_input,
    check_normalization,
    check_same_device,
    check_same_dtype_and_device,
    fmt_shape,
    input_grad_flags,
    int_list,
    label,
)
from opslib.core.precision import HALF_DTYPES, accumulation_dtype
from opslib.core.registration import (
    define_mutating_op,
    define_op,
    only_plain_tensors,
    register_autocast,
    register_autocast_to_autocast_dtype,
    register_inductor_decomposition,
    register_onnx_translation,
    register_pointwise_vmap,
    register_vmap,
    register_vmap_along_dim,
)
from opslib.core.sharding import (
    broadcast_placement,
    elementwise_rules,
    other_dims,
    register_pointwise_sharding,
    register_sharding_rule,
    replicate,
)

__all__ = [
    # defining ops (torch.library: schema, kernel, fake, register_autograd)
    "define_op",
    "define_mutating_op",
    # registrations beside the op
    "register_vmap",
    "register_pointwise_vmap",
    "register_vmap_along_dim",
    "register_autocast",
    "register_autocast_to_autocast_dtype",
    "register_inductor_decomposition",
    "register_onnx_translation",
    "register_sharding_rule",
    "register_pointwise_sharding",
    # sharding rules' building blocks
    "replicate",
    "elementwise_rules",
    "broadcast_placement",
    "other_dims",
    # input checks whose errors name the op
    "label",
    "fmt_shape",
    "int_list",
    "check_floating_input",
    "check_index_input",
    "check_same_device",
    "check_same_dtype_and_device",
    "check_normalization",
    "broadcasts_to",
    # in kernels and backwards
    "input_grad_flags",
    "only_plain_tensors",
    "accumulation_dtype",
    "HALF_DTYPES",
]
