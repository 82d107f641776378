"""opslib's own op table: every customgrad op described for the kit (``opslib.testing``).

Each family of ops has its file here, each op's samples, reference, bad calls and kernels
beside its entry; ``common.py`` holds what they share. The tests, the fuzzer, the export
scripts and the examples loop over ``OP_TABLE`` and name no op; the benchmarks read their own
settings for each op from ``benchmarks/bench_table.py``.

Samples are deliberately awkward (the PyTorch custom-op tutorials' advice): 0-d and empty tensors,
transposed views, offset and strided slices, expanded (stride-0) views, extra leading dims, every
bias form, and inputs with and without ``requires_grad``. Arguments that are not tensors (floats,
ints, bools, lists, None) are passed as they are, in samples and batches alike, with values
other than their defaults where the op has them.

``python3 -m opslib.testing.opinfos`` prints the README's op table (the documentation site
builds its own, with the schemas, from the same entries).
"""

from __future__ import annotations

from opslib.testing.opinfos import (
    attention,
    conv,
    linear,
    losses,
    norms,
    pointwise,
    softmax,
)
from opslib.testing.opinfos.common import OpslibOpInfo, unary_samples
from opslib.testing.opinfos.optim import UPDATE_OP_TABLE, UpdateOpInfo

# The README's table in this order: by family, and within a family as its file lists them.
OP_TABLE: list[OpslibOpInfo] = [
    *pointwise.OPINFOS,
    *linear.OPINFOS,
    *softmax.OPINFOS,
    *norms.OPINFOS,
    *losses.OPINFOS,
    *conv.OPINFOS,
    *attention.OPINFOS,
]
OPS_BY_NAME: dict[str, OpslibOpInfo] = {info.name: info for info in OP_TABLE}

__all__ = [
    "OPS_BY_NAME",
    "OP_TABLE",
    "UPDATE_OP_TABLE",
    "OpslibOpInfo",
    "UpdateOpInfo",
    "markdown_table",
    "unary_samples",
]


def markdown_table() -> str:
    """The README's op table, generated from OP_TABLE (a test keeps the README in sync): each
    op links to its page of the documentation site (built into ``docs/_build/html``) and to
    its op file, where the derivation is written."""
    rows = [
        "| op | forward ; gradient (g = dL/dy) | native counterpart | derivation |",
        "|---|---|---|---|",
    ]
    for info in [*OP_TABLE, *UPDATE_OP_TABLE]:
        module = info.func.__module__.replace(".", "/")
        rows.append(
            f"| [`{info.name}`](docs/_build/html/ops/{info.name}.html) | {info.formula} | "
            f"`{info.reference_text}` | [{module}.py]({module}.py) |"
        )
    return "\n".join(rows)
