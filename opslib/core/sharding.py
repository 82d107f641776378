"""DTensor sharding rules: how each customgrad op runs on sharded tensors.

A custom op called on DTensors (tensor parallelism, FSDP2's sharded parameters) fails with
"does not have a sharding strategy registered" unless DTensor knows which placements of its
inputs it can compute on locally and what placements its outputs then have. Each op file states
that with ``register_sharding_rule(op, rule)``, next to its math: ``rule`` takes the op's
arguments (tensors as DTensor's specs, which carry ``.ndim`` and ``.shape``) and returns the
acceptable ``(output placements, input placements)`` pairs for one mesh dimension
(``torch.distributed.tensor.experimental.register_sharding``'s contract; ``None`` for an
argument that is not a tensor). DTensor picks the cheapest pair for the inputs it is given,
redistributes them to it, runs the op on each rank's local tensors, and wraps the outputs.

A rule is a promise that the op on the local pieces gives the local pieces of the true result:
a wrong one is silently wrong, so tests/test_sharding_rules.py checks every pair every rule offers
against the whole computation, and tests/test_distributed.py runs each op through DTensor.
Placements used here:

- ``Shard(d)``: each rank holds a slice of dim d;
- ``Replicate()``: every rank holds all of it;
- ``Partial()``: the true value is the sum over ranks of the local values (a row-wise split
  linear's output; a gradient summed over a sharded batch). An input asked to be Partial is
  split by DTensor (a replicated bias becomes bias / ranks on each rank), which is how a
  row-wise linear adds its bias once in total, not once per rank.

Why registration waits for ``torch.distributed.tensor``: importing it costs ~1.5 s, which
opslib does not add to programs that never shard. Rules are installed when opslib is imported
if DTensor already is, and otherwise the moment the program imports it (a one-shot import hook
below).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Sequence

import torch

DTENSOR_MODULE = "torch.distributed.tensor"

# (op overload, rule, installer), in registration order; installed once DTensor is imported.
_RULES: list[tuple[torch._ops.OpOverload, Callable, Callable]] = []
_installed = False


def register_sharding_rule(op, rule: Callable) -> None:
    """Declare ``rule`` as the sharding rule of ``op`` (an op packet: its default overload)."""
    _declare(op, rule, _install)


def _declare(op, rule: Callable, installer: Callable) -> None:
    overload = getattr(op, "default", op)
    _RULES.append((overload, rule, installer))
    if _installed:
        installer(overload, rule)


def sharding_rules() -> dict[str, Callable]:
    """Every declared rule by qualified op name ("customgrad::linear")."""
    return {overload._schema.name: rule for overload, rule, _ in _RULES}


def _install(overload: torch._ops.OpOverload, rule: Callable) -> None:
    from torch.distributed.tensor.experimental import register_sharding

    # DTensor caches its decision per call, keyed on the input specs and the other arguments
    # (measured: a layer_norm's normalized_shape, attention's is_causal change the decision;
    # tests/distributed_worker.py checks both).
    register_sharding(overload)(rule)


def install_sharding_rules() -> None:
    """Install every declared rule into DTensor (importing it). Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    for overload, rule, installer in _RULES:
        installer(overload, rule)


class _InstallAfterDTensorImport(importlib.abc.MetaPathFinder):
    """Runs ``install_sharding_rules`` right after ``torch.distributed.tensor`` is imported.

    Python has no post-import hook, so this finder answers for that one module with the normal
    spec whose loader, after executing the module, installs the rules; then it removes itself.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != DTENSOR_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module_then_install(module) -> None:
            execute(module)
            install_sharding_rules()

        spec.loader.exec_module = exec_module_then_install
        return spec


def install_when_dtensor_is_imported() -> None:
    """Called once every op is defined (opslib.ops)."""
    if DTENSOR_MODULE in sys.modules:
        install_sharding_rules()
    elif not any(isinstance(f, _InstallAfterDTensorImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallAfterDTensorImport())


# ---- rule builders shared by the op files ------------------------------------------------------


def replicate(*args) -> list:
    """Replicate() for each tensor argument, None for the others."""
    return [_replicate_or_none(a) for a in args]


def _replicate_or_none(arg):
    from torch.distributed.tensor import Replicate

    return Replicate() if _is_spec(arg) else None


def _is_spec(arg) -> bool:
    """A tensor argument as a rule sees it: DTensor's spec, or a tensor (tests call rules with
    tensors); both have .ndim and .shape."""
    return hasattr(arg, "ndim") and hasattr(arg, "shape")


def elementwise_rules(x, n_outputs: int = 1, free_dims: Sequence[int] | None = None) -> list:
    """For an op whose every output element depends only on the same element of x: any one
    dim of x may be sharded (the outputs sharded alike), or everything replicated.

    ``free_dims`` limits the sharded dims (those not reduced over, e.g. not a softmax's dim).
    """
    from torch.distributed.tensor import Replicate, Shard

    dims = range(x.ndim) if free_dims is None else free_dims
    rules = [([Replicate()] * n_outputs, [Replicate()])]
    rules += [([Shard(d)] * n_outputs, [Shard(d)]) for d in dims]
    return rules


def broadcast_placement(operand, out_ndim: int, out_dim: int):
    """The placement of an operand that broadcasts to an output sharded on ``out_dim``: sharded
    on its own matching dim if it has that dim at full size, else replicated (a size-1 or
    missing dim is read whole by every slice). ``None`` for an absent operand."""
    from torch.distributed.tensor import Replicate, Shard

    if not _is_spec(operand):
        return None
    own_dim = out_dim - (out_ndim - operand.ndim)
    if own_dim >= 0 and operand.shape[own_dim] != 1:
        return Shard(own_dim)
    return Replicate()


def register_pointwise_sharding(op) -> None:
    """An elementwise op of one tensor: sharded along any dim or replicated, never Partial
    (f(a + b) != f(a) + f(b) for these ops)."""
    register_sharding_rule(op, lambda x: elementwise_rules(x))


def other_dims(ndim: int, dim: int) -> list[int]:
    """Every dim of an ndim-tensor but ``dim`` (negative counts from the end)."""
    own = dim % ndim if ndim else 0
    return [d for d in range(ndim) if d != own]


def row_normalization_rules(x, normalized_shape, *params) -> list:
    """A norm over the last ``len(normalized_shape)`` dims (layer_norm, rms_norm): x sharded
    along a leading (row) dim, each rank normalising its own rows, the affine parameters
    replicated. A sharded normalised dim would need the statistics reduced across ranks: not
    offered, so DTensor gathers that dim first (tensor-parallel blocks keep a norm's input
    sharded on the sequence dim instead: SequenceParallel)."""
    from torch.distributed.tensor import Replicate, Shard

    placements = replicate(*params)
    rules = [([Replicate()], [Replicate(), None, *placements])]
    for d in range(x.ndim - len(normalized_shape)):
        rules.append(([Shard(d)], [Shard(d), None, *placements]))
    return rules


# ---- list ops: one update per parameter (the optimizer step) -----------------------------------
#
# register_sharding takes ops of single tensors. An optimizer step takes lists (params, grads,
# moments, ...): DTensor's own foreach and fused-Adam ops get a strategy per list element, and
# so does such an op here, through DTensor's strategy registration (not public API: the one
# place opslib uses it).


def per_parameter_rules(*args) -> list:
    """The rule of an elementwise update of lists of tensors: element i of every list argument
    has params[i]'s shape and is updated from the same elements only, so each may be sharded
    along any dim or replicated as long as all its tensors are alike; 0-d tensors (step
    counts, hyperparameters) are replicated. For the simulation in tests, the choices with
    every element sharded on the same dim (or replicated), list arguments as lists."""
    from torch.distributed.tensor import Replicate, Shard

    lists = [a for a in args if isinstance(a, (list, tuple))]
    ndim = max((t.ndim for group in lists for t in group), default=0)
    rules = []
    for choice in [None, *range(ndim)]:

        def placement(t, choice=choice):
            if choice is None or t.ndim <= choice:
                return Replicate()
            return Shard(choice)

        inputs = [
            [placement(t) for t in a] if isinstance(a, (list, tuple)) else _replicate_or_none(a)
            for a in args
        ]
        rules.append(([], inputs))
    return rules


def register_per_parameter_sharding(op) -> None:
    """Declare ``op`` an elementwise update of lists (see ``per_parameter_rules``)."""
    _declare(op, per_parameter_rules, _install_per_parameter)


def _install_per_parameter(overload, rule: Callable) -> None:
    """Element i's strategy: all of its list tensors in params[i]'s placement (grads, which may
    arrive otherwise, are redistributed to it); the others replicated."""
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor._dtensor_spec import DTensorSpec
    from torch.distributed.tensor._op_schema import (
        OpSpec,
        OpStrategy,
        RuntimeSchemaInfo,
        TupleStrategy,
    )
    from torch.distributed.tensor._ops.utils import generate_redistribute_costs

    def strategy(op_schema) -> TupleStrategy:
        args = op_schema.args_schema
        lists = [a for a in args if isinstance(a, TupleStrategy)]
        children = []
        for i, param in enumerate(lists[0].children):
            target = param.strategies[0].output_spec
            mesh = target.mesh
            inputs, costs = [], []
            for a in args:
                if isinstance(a, TupleStrategy):
                    element = a.children[i]
                elif isinstance(a, OpStrategy):
                    element = a
                else:
                    continue
                # the parameter's own tensors (its shape) as the parameter; the rest (step
                # counts, hyperparameters: 0-d) replicated
                like_param = element.shape == param.shape and element.ndim > 0
                placements = target.placements if like_param else (Replicate(),) * mesh.ndim
                spec = DTensorSpec(mesh, placements, element.tensor_meta)
                inputs.append(spec)
                costs.append(generate_redistribute_costs(element, spec))
            children.append(OpStrategy([OpSpec(None, inputs, costs)]))
        return TupleStrategy(children)

    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.register_op_strategy(overload, strategy, RuntimeSchemaInfo(needs_pytree=True))
