"""Activation checkpointing with customgrad ops: what to save, what to recompute.

``torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)`` keeps only fn's inputs
and runs fn again in backward to rebuild what its backward needs: memory for time. customgrad
ops work inside it as any op does (their backward is registered with autograd; recomputing
calls the same kernels), eager and under ``torch.compile``.

Selective activation checkpointing (``create_selective_checkpoint_contexts``) decides op by op.
The usual choice, and the one here: keep the outputs of the matmuls (``customgrad::linear``:
the expensive ops, whose recompute would cost as much as their forward) and recompute the
cheap elementwise and normalisation ops around them (a layer_norm or an activation costs a
pass over memory)::

    from torch.utils.checkpoint import checkpoint
    from opslib.checkpointing import save_linear_outputs

    y = checkpoint(block, x, use_reentrant=False, context_fn=save_linear_outputs)

tests/test_checkpointing.py checks that the gradients equal those without checkpointing and
that only the linear ops escape the recompute; benchmarks/checkpointing.py measures the memory.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

import opslib.ops  # noqa: F401  (defines customgrad::linear)

# The ops whose outputs selective checkpointing keeps. Under torch.compile the forward of
# linear is decomposed into aten matmuls for inductor; those are kept too.
SAVED_OPS = (
    torch.ops.customgrad.linear.default,
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
)


def linear_outputs_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """Keep the matmuls' outputs, recompute everything else."""
    if func in SAVED_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def save_linear_outputs():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: selective checkpointing with
    ``linear_outputs_policy``."""
    return create_selective_checkpoint_contexts(linear_outputs_policy)
