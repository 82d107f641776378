r"""``customgrad::scaled_dot_product_attention(Tensor q, Tensor k, Tensor v, Tensor? attn_mask=None,
float dropout_p=0.0, bool is_causal=False, float? scale=None, bool enable_gqa=False)
-> (Tensor out, Tensor lse)``: softmax attention, as ``F.scaled_dot_product_attention``, with a
backward that recomputes the attention probabilities block by block instead of saving them.

Shapes
------
The leading dims ``...`` broadcast, as native's.

- ``q``: ``[..., Hq, L, E]``, L queries.
- ``k``: ``[..., Hk, S, E]``, S keys.
- ``v``: ``[..., Hk, S, Ev]``.
- ``attn_mask``: None; bool (True: attend) or q's float dtype (added to the scores),
  broadcasting to ``[..., Hq, L, S]``.
- ``out``: ``[..., Hq, L, Ev]`` (the public function returns this).
- ``lse``: ``[..., Hq, L]``, the rows' log-sum-exp, in float64 (float32 for half inputs): at
  scores of 1e4 a float32 lse is off by up to ulp(1e4)/2 = 5e-4, and :math:`e^{s - \text{lse}}`
  would carry that into every p of the row.

Without enable_gqa the head dims broadcast like the others; with it, :math:`H_q = G H_k` and
query head h reads key/value head h // G (grouped-query attention: k and v repeat_interleave'd).

Forward
-------
Per row i (one query) of one (batch, head); :math:`\text{scale} = 1/\sqrt{E}` unless given;
:math:`m` is the float mask, or :math:`-\infty` where a bool mask is False or :math:`j > i`
(is_causal: aligned top-left, row i sees keys 0..i, as native):

.. math::

    s_{ij} &= \text{scale}\cdot q_i \cdot k_j + m_{ij} \\
    \operatorname{lse}_i &= \log \sum_j e^{s_{ij}}
        \qquad (\texttt{torch.logsumexp}\text{: no overflow}) \\
    p_{ij} &= e^{s_{ij} - \operatorname{lse}_i} \qquad \text{the softmax of the row} \\
    o_i &= \sum_j p_{ij}\, v_j

A fully masked row has :math:`\operatorname{lse}_i = -\infty`; it gets p = 0, so
:math:`o_i = 0` and zero gradients, as native 2.13 gives (the softmax of a row of :math:`-\infty`
would be 0/0).

Backward
--------
With :math:`\mathrm{d}O = \partial L/\partial\,\text{out}`, :math:`g = \partial L/\partial\,
\text{lse}` (usually 0), and :math:`\mathrm{d}a` meaning :math:`\partial L/\partial a`. From
:math:`o_i = \sum_j p_{ij} v_j`:

.. math::

    \mathrm{d}V_j = \sum_i p_{ij}\, \mathrm{d}O_i \;\Rightarrow\; \mathrm{d}V = P^\top \mathrm{d}O,
    \qquad
    \mathrm{d}P_{ij} = \mathrm{d}O_i \cdot v_j \;\Rightarrow\; \mathrm{d}P = \mathrm{d}O\, V^\top

From :math:`p_{ij} = e^{s_{ij} - \operatorname{lse}_i}` and
:math:`\partial \operatorname{lse}_i/\partial s_{ij} = p_{ij}` (the softmax Jacobian):

.. math::

    \mathrm{d}S_{ij} = p_{ij}\Bigl(\mathrm{d}P_{ij} - \sum_k p_{ik}\, \mathrm{d}P_{ik}\Bigr)
        + p_{ij}\, g_i

and :math:`\sum_k p_{ik}\, \mathrm{d}P_{ik} = \sum_k p_{ik}\, \mathrm{d}O_i \cdot v_k =
\mathrm{d}O_i \cdot o_i`, so with :math:`D_i = \operatorname{rowsum}(\mathrm{d}O \odot O)_i - g_i`:

.. math::

    \mathrm{d}S = P \odot (\mathrm{d}P - D)

and from :math:`s_{ij} = \text{scale}\cdot q_i \cdot k_j + m_{ij}`:

.. math::

    \mathrm{d}Q = \text{scale}\cdot \mathrm{d}S\, K, \qquad
    \mathrm{d}K = \text{scale}\cdot \mathrm{d}S^\top Q, \qquad
    \mathrm{d}m = \mathrm{d}S

Each gradient is then summed over the dims its tensor was broadcast along (sum_to_size), and
dK, dV over the G query heads that share a key/value head.

D needs only O and dO, never a full row of P; so P can be recomputed a block of query rows at a
time from q and k (one more matmul, :math:`Q K^\top`; flash-attention uses
:math:`e^{s - \text{lse}}`, this op the block's softmax, whose rows are whole here: the
forward's p exactly, with the saved lse marking fully masked rows), and no ``[L, S]`` matrix is
held for all rows at once: the memory of flash-attention's backward, O(L), in torch ops. In
floating point the code combines both forms of D (see ``_softmax_jacobian``).

Kernels
-------
Two of them for the same math:

- C++ (``opslib/csrc/attention.cpp``), for float32/float64 CPU calls without a mask and with
  finite inputs (``_cpu_kernel_takes``): flash-attention's tiling (tiles no larger than the
  call: ``_tiles``). The
  forward runs the online softmax over tiles of ``CPP_FORWARD_TILE`` scores, rescaling the
  running output when a row's maximum grows (:math:`m' = \max(m, \max s)`,
  :math:`l \leftarrow l\, e^{m - m'} + \sum e^{s - m'}`); the backward takes
  :math:`p = e^{s - \text{lse}}` tile by tile and
  :math:`D = \operatorname{rowsum}(\mathrm{d}O \odot O) - g` as derived above (a row whose keys
  all fit in one tile: its own softmax and the re-summed D, as below). A tile stays in the L2
  cache from the matmul that writes it to the one that reads it: that makes it about as fast as
  native's fused kernel (see the benchmarks).
- torch ops (everything else: masks, half precision, broadcast heads, non-finite inputs, CUDA,
  and the double backward): forward and backward loop over blocks of query
  rows, each holding the scores of at most ``BLOCK_SCORES`` elements (across every batch and
  head). Small calls are one block. Each row is whole in its block, so p is ATen's softmax of
  the row.

Either way memory is O(L + S) whatever L and S are. The matmuls are ATen's (MKL/oneDNN on CPU,
cuBLAS on CUDA); there is no Triton kernel.

Saved for backward
------------------
q, k, v (the inputs: no copy), the output and lse (O(L)), and the mask if any: what native's
CPU flash kernel saves; its math path saves the ``[L, S]`` probabilities.

Double backward
---------------
The first-order backward is the op ``customgrad::scaled_dot_product_attention_backward`` (so
compile and export see it), whose own backward differentiates the same torch-op formula with
``torch.func.vjp``. Its graph holds every block: O(L·S) memory, for second order.

Dropout
-------
dropout_p > 0 is refused with an error: attention dropout draws a random mask that would have to
be regenerated identically in backward (flash-attention keeps the RNG state); this op does not
implement that. Use dropout_p=0 (nn.MultiheadAttention's default) or dropout on the output.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from opslib.core import cpu_kernels
from opslib.core.checks import (
    check_floating_input,
    check_same_device,
    check_same_dtype_and_device,
    fmt_shape,
    label,
)
from opslib.core.precision import HALF_DTYPES, accumulation_dtype
from opslib.core.registration import (
    define_op,
    register_autocast_to_autocast_dtype,
    register_onnx_translation,
    register_vmap,
)
from opslib.core.sharding import broadcast_placement, register_sharding_rule, replicate

OP = "scaled_dot_product_attention"
# Score elements one block of query rows may hold (4 MiB in float32): the forward and backward
# keep a few tensors of this size alive at a time.
BLOCK_SCORES = 1 << 20
# A block across every batch and head is used while it holds at least this many query rows (or
# all of them); below that, the kernels take one head at a time in blocks of BLOCK_SCORES / S
# rows, where the matmuls have enough rows to run at full speed.
MIN_BLOCK_ROWS = 128
# The C++ kernels' tiles (opslib/csrc/attention.cpp), query rows x keys of scores: each stays in
# the L2 cache with the k and v rows it reads. The forward holds one tile (256 x 1024 floats:
# 1 MiB), the backward two (p and dS: 2 x 256 KiB); larger tiles make fewer matmul calls, and
# these measured fastest (tiles of 64-256 rows x 512-1024 keys, L = 512-4096, this machine).
CPP_FORWARD_TILE = (256, 1024)
CPP_BACKWARD_TILE = (128, 512)


def _check_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
    scale: float | None = None,
) -> tuple[list[int], int]:
    """Validate the arguments; return the broadcast leading dims of the output and G, the query
    heads per key/value head (1 without enable_gqa)."""
    if scale is not None and not math.isfinite(scale):  # native computes an output of nan
        raise ValueError(f"{label(OP)}: scale must be finite (or None for 1/sqrt(E)), got {scale}")
    if attn_mask is not None and attn_mask.dim() < 2:  # native refuses it too, in ATen's words
        raise ValueError(
            f"{label(OP)}: attn_mask must have at least 2 dims ([..., L, S]), got shape "
            f"{fmt_shape(attn_mask.shape)}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_floating_input(OP, name, t)
    check_same_dtype_and_device(OP, {"q": q, "k": k, "v": v})
    if dropout_p != 0.0:
        raise NotImplementedError(
            f"{label(OP)}: dropout_p={dropout_p} is not supported (its random mask would have to "
            f"be drawn again identically in backward); pass dropout_p=0.0"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() < 2:
            raise ValueError(
                f"{label(OP)}: {name} must have at least 2 dims ([..., rows, features]), got "
                f"shape {fmt_shape(t.shape)}"
            )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{label(OP)}: q and k must have the same feature size E, got q {fmt_shape(q.shape)} "
            f"and k {fmt_shape(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"{label(OP)}: k and v must have the same number of keys S, got k "
            f"{fmt_shape(k.shape)} and v {fmt_shape(v.shape)}"
        )
    groups = 1
    k_lead, v_lead = list(k.shape[:-2]), list(v.shape[:-2])
    if enable_gqa:
        if q.dim() < 3 or k.dim() < 3 or v.dim() < 3:
            raise ValueError(
                f"{label(OP)}: enable_gqa needs a head dim (-3) in q, k and v, got q "
                f"{fmt_shape(q.shape)}, k {fmt_shape(k.shape)}, v {fmt_shape(v.shape)}"
            )
        heads_q, heads_kv = q.shape[-3], k.shape[-3]
        if v.shape[-3] != heads_kv or heads_kv == 0 or heads_q % heads_kv:
            raise ValueError(
                f"{label(OP)}: enable_gqa needs q's heads ({heads_q}) to be a multiple of k's "
                f"({heads_kv}) and v's ({v.shape[-3]}), which must be equal"
            )
        groups = heads_q // heads_kv
        k_lead[-1] = v_lead[-1] = heads_q
    try:
        lead = list(torch.broadcast_shapes(q.shape[:-2], k_lead, v_lead))
    except RuntimeError:
        raise ValueError(
            f"{label(OP)}: the leading dims of q {fmt_shape(q.shape)}, k {fmt_shape(k.shape)} "
            f"and v {fmt_shape(v.shape)} do not broadcast"
            + ("" if enable_gqa else " (different head counts need enable_gqa=True)")
        ) from None
    if attn_mask is not None:
        if is_causal:
            raise ValueError(
                f"{label(OP)}: attn_mask and is_causal=True were both given; pass one of them"
            )
        if attn_mask.layout != torch.strided:
            raise TypeError(
                f"{label(OP)}: attn_mask must be a dense (strided) tensor, got layout "
                f"{attn_mask.layout}; call .to_dense() first"
            )
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(
                f"{label(OP)}: attn_mask must be a floating-point tensor of q's dtype (added to "
                f"the scores) or a bool tensor (True: attend), got {attn_mask.dtype}"
            )
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            raise TypeError(
                f"{label(OP)}: q and attn_mask must have the same dtype (or attn_mask bool), "
                f"got q {q.dtype} and attn_mask {attn_mask.dtype}"
            )
        check_same_device(OP, {"q": q, "attn_mask": attn_mask})
        scores = [*lead, q.shape[-2], k.shape[-2]]
        try:
            fits = list(torch.broadcast_shapes(attn_mask.shape, scores)) == scores
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{label(OP)}: attn_mask of shape {fmt_shape(attn_mask.shape)} does not "
                f"broadcast to the scores' shape {fmt_shape(scores)}"
            )
    return lead, groups


def _compute_dtype(q: Tensor) -> torch.dtype:
    """float32 for half inputs (as native's kernels accumulate), else q's own."""
    return accumulation_dtype(q.dtype)


def _lse_dtype(q: Tensor) -> torch.dtype:
    """The log-sum-exp output's dtype: float64, float32 for half inputs (see the docstring)."""
    return torch.float32 if q.dtype in HALF_DTYPES else torch.float64


def _row_lse(largest: Tensor, p: Tensor, dtype: torch.dtype) -> Tensor:
    """lse = m - log(max_j p_ij) at the row's largest score m (p = e^(m - lse) there; max p >=
    1/S: its log loses nothing), in ``dtype``; -inf for rows that attend to nothing."""
    lse = largest.to(dtype) - torch.log(p.amax(-1)).to(dtype)
    return torch.where(largest == -math.inf, -math.inf, lse)


def _scale(q: Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def _block_rows(lead: list[int], rows: int, keys: int) -> int:
    """Query rows per block: at most BLOCK_SCORES scores over every batch and head."""
    return max(1, min(rows, BLOCK_SCORES // max(1, math.prod(lead) * keys)))


def _mask_rows(attn_mask: Tensor | None, r0: int, r1: int, rows: int) -> Tensor | None:
    """The mask's rows r0:r1, or all of it where it does not vary along the query dim."""
    if attn_mask is None or attn_mask.dim() < 2 or attn_mask.shape[-2] == 1 or rows == 1:
        return attn_mask
    return attn_mask[..., r0:r1, :]


def _in_place() -> bool:
    """Whether torch ops may overwrite their block temporaries: in the kernels, where nothing
    records a graph (autograd and torch.func.vjp need the out-of-place forms)."""
    return not torch.is_grad_enabled()


def _scores(q_rows: Tensor, k: Tensor, mask_rows: Tensor | None, is_causal: bool, r0: int,
            scale: float) -> Tensor:  # fmt: skip
    """s = scale · q kᵀ + m for the query rows r0.. (q_rows, in the compute dtype)."""
    s = (q_rows * scale) @ k.transpose(-2, -1)
    if is_causal:  # row i sees keys 0..i (top-left aligned, as native, also for L != S)
        rows = torch.arange(r0, r0 + q_rows.shape[-2], device=s.device).unsqueeze(-1)
        hidden = torch.arange(s.shape[-1], device=s.device) > rows
    elif mask_rows is not None and mask_rows.dtype == torch.bool:
        hidden = ~mask_rows
    elif mask_rows is not None:
        return s.add_(mask_rows) if _in_place() else s + mask_rows
    else:
        return s
    if _in_place():
        # the kernels: -inf added, as native adds it (not masked_fill), so that a hidden score
        # of +inf or nan makes nan, which native's softmax then spreads over the row
        return torch.where(hidden, s - math.inf, s, out=s)
    # under autograd (the double backward): masked_fill, whose gradient at hidden scores is 0
    # (through s - inf it would not be, and 0·inf terms appear)
    return s.masked_fill(hidden, -math.inf)


def _probabilities(s: Tensor, lse: Tensor) -> Tensor:
    """The block's p again: its softmax (ATen's, one pass per row in cache: the row is whole
    here, so p is exactly the forward's, normalised, where e^(s - lse) would carry lse's
    rounding into every p), 0 on the rows the forward found fully masked (lse = -inf; their
    softmax is nan)."""
    p = torch.softmax(s, -1)
    nothing = (lse == -math.inf).unsqueeze(-1)
    if _in_place():
        return p.masked_fill_(nothing, 0.0) if bool(nothing.any()) else p
    return torch.where(nothing, 0.0, p)


def _expand_heads(t: Tensor, groups: int) -> Tensor:
    """GQA: key/value head h serves query heads h·G .. h·G + G - 1."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=-3)


def _fold_heads(grad: Tensor, like: Tensor, groups: int) -> Tensor:
    """The gradient of an expanded k or v, summed back to its shape (groups and broadcasts)."""
    if groups > 1:
        grad = grad.unflatten(-3, (grad.shape[-3] // groups, groups)).sum(-3)
    return grad.sum_to_size(like.shape)


def _accumulate(total: Tensor | None, block: Tensor) -> Tensor:
    if total is None:
        return block
    return total.add_(block) if _in_place() else total + block


def _softmax_jacobian(d_p: Tensor, p: Tensor, grad_lse: Tensor | None, d_out: Tensor,
                      out: Tensor) -> Tensor:  # fmt: skip
    """dS = P ⊙ (dP - D) + P ⊙ g for one block (d_p may be overwritten in the kernels).

    Since Σ_j p_ij = 1, dS is unchanged by subtracting any number c_i from row i of dP; ATen's
    fused softmax backward (``_softmax_backward_data``, one pass per row in cache) then takes
    D as Σ_j p_ij (dP_ij - c_i). In floating point Σ_j p_ij is 1 only to rounding, which
    multiplies |dP - c|: so c_i = rowsum(dO ⊙ O)_i, the derived D, makes that error as small
    as the gradient itself. Each alone was measured worse than native: Σ P·dP with c = 0 where
    dP is large and nearly constant along a row (a float16 dK of 5e-3 where native's is 0),
    dP - rowsum(dO ⊙ O) with no re-summing where a row is nearly one-hot (float32 dQ several
    times native's error) and with a rounded half-precision O (7x native's bfloat16 error)."""
    shift = (d_out * out.to(p.dtype)).sum(-1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)  # an inf or nan O: no shift (c = 0)
    d_p = d_p.sub_(shift) if _in_place() else d_p - shift
    d_scores = torch.ops.aten._softmax_backward_data(d_p, p, -1, p.dtype)
    if grad_lse is not None:  # + P ⊙ g: the lse output's own gradient
        d_scores = d_scores + p * grad_lse.to(p.dtype).unsqueeze(-1)
    return d_scores


def _rows_per_head_block(lead: list[int], rows: int, keys: int) -> int | None:
    """Query rows per block for the kernels' one-head-at-a-time loops, or None where a block of
    every head at once is large enough (small calls: one block, few Python steps)."""
    together = BLOCK_SCORES // max(1, math.prod(lead) * keys)
    if together >= min(rows, MIN_BLOCK_ROWS):
        return None
    return max(1, BLOCK_SCORES // max(1, keys))


def _heads(lead: list[int]):
    """Every index of the leading (batch and head) dims."""
    return itertools.product(*(range(n) for n in lead))


def _can_skip_hidden_keys(is_causal: bool, q: Tensor, k: Tensor) -> bool:
    """Whether a causal block of rows may leave out the keys past its last row: their p is 0
    exactly when every score is finite (a non-finite one, + -inf, would be nan, as native
    gives it: then they are computed). Skipping halves causal attention's matmuls."""
    return is_causal and bool(torch.isfinite(q).all()) and bool(torch.isfinite(k).all())


def _attending_to_nothing(v: Tensor) -> Tensor:
    """The output of a fully masked row, as native gives it: p = 0 times v, summed; 0, or nan
    where a value is ±inf or nan (0·inf)."""
    return (v * 0).sum(-2, keepdim=True)


def _broadcast_views(lead: list[int], q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None):
    """q, k, v and the mask expanded to the leading dims ``lead`` (views: no copies), for the
    one-head-at-a-time loops to index."""
    rows, keys = q.shape[-2], k.shape[-2]
    q, k, v = (t.expand(*lead, *t.shape[-2:]) for t in (q, k, v))
    mask = None if attn_mask is None else attn_mask.expand(*lead, rows, keys)
    return q, k, v, mask


def _head_scores(q_h: Tensor, k_h: Tensor, mask: Tensor | None, index: tuple, r0: int, r1: int,
                 seen: int, is_causal: bool) -> Tensor:  # fmt: skip
    """One head's scores for query rows r0:r1 against its first ``seen`` keys (q_h is scaled)."""
    rows_mask = None if mask is None else mask[index][r0:r1]
    return _scores(q_h[r0:r1], k_h[:seen], rows_mask, is_causal, r0, 1.0)


def _forward_by_heads(q, k, v, attn_mask, is_causal, scale, lead, step, dtype):
    """_forward_formula one (batch, head) at a time: the same math, [rows, S] blocks, 2-D
    matmuls (k and v here are already in the compute dtype, heads expanded)."""
    rows, keys = q.shape[-2], k.shape[-2]
    q, k, v, mask = _broadcast_views(lead, q, k, v, attn_mask)
    out = q.new_empty([*lead, rows, v.shape[-1]], dtype=dtype)
    lse = q.new_empty([*lead, rows], dtype=_lse_dtype(q))
    for index in _heads(lead):
        q_h, k_h, v_h = q[index].to(dtype) * scale, k[index], v[index]
        nothing = _attending_to_nothing(v_h)
        skip = _can_skip_hidden_keys(is_causal, q_h, k_h)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            seen = min(keys, r1) if skip else keys
            s = _head_scores(q_h, k_h, mask, index, r0, r1, seen, is_causal)
            largest = s.amax(-1)
            p = torch.softmax(s, -1)
            del s
            masked = largest == -math.inf
            out[index][r0:r1] = torch.where(masked.unsqueeze(-1), nothing, p @ v_h[:seen])
            lse[index][r0:r1] = _row_lse(largest, p, lse.dtype)
    return out, lse


def _backward_by_heads(grad_out, grad_lse, q, k, v, out, lse, attn_mask, is_causal, scale, lead,
                       step, dtype):  # fmt: skip
    """_backward_formula one (batch, head) at a time, accumulating dK and dV inside the matmuls
    (addmm_) and writing dQ's rows in place; returns the gradients of the broadcast (and
    head-expanded) q, k, v."""
    rows, keys = q.shape[-2], k.shape[-2]
    q, k, v, mask = _broadcast_views(lead, q, k, v, attn_mask)
    grad_out = grad_out.expand(*lead, rows, v.shape[-1])
    out = out.expand(*lead, rows, v.shape[-1])
    dq = q.new_empty([*lead, rows, q.shape[-1]], dtype=dtype)
    dk = q.new_zeros([*lead, keys, k.shape[-1]], dtype=dtype)
    dv = q.new_zeros([*lead, keys, v.shape[-1]], dtype=dtype)
    for index in _heads(lead):
        q_h, k_h, v_h = q[index].to(dtype) * scale, k[index], v[index]  # q_h: scale·Q
        d_out_h, lse_h = grad_out[index].to(dtype), lse[index].to(dtype)
        out_h = out[index]
        dq_h, dk_h, dv_h = dq[index], dk[index], dv[index]
        skip = _can_skip_hidden_keys(is_causal, q_h, k_h)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            seen = min(keys, r1) if skip else keys
            s = _head_scores(q_h, k_h, mask, index, r0, r1, seen, is_causal)
            p = _probabilities(s, lse_h[r0:r1])
            d_out = d_out_h[r0:r1]
            g = None if grad_lse is None else grad_lse[index][r0:r1]
            d_scores = _softmax_jacobian(d_out @ v_h[:seen].t(), p, g, d_out, out_h[r0:r1])
            dv_h[:seen].addmm_(p.t(), d_out)  # dV += Pᵀ dO
            del p
            dk_h[:seen].addmm_(d_scores.t(), q_h[r0:r1])  # dK += dSᵀ (scale·Q)
            torch.mm(d_scores, k_h[:seen], out=dq_h[r0:r1]).mul_(scale)  # dQ = scale · dS K
    return dq, dk, dv


def _cpu_kernel_takes(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None,
                      groups: int) -> bool:  # fmt: skip
    """Calls the C++ kernels compute (outside autograd: the kernels' own calls): float32 or
    float64 CPU tensors, no mask, q's leading dims those of the output (k and v's too, but for
    the G-fold fewer heads of grouped-query attention: no broadcasting), and finite q, k, v (the
    online softmax of a non-finite score would not spread nan over its row as native's softmax
    does; those calls take the torch-op formula, which does).

    Heads of one tile (L and S within CPP_BACKWARD_TILE, a decoder's short sequences) take the
    kernels too: at L = S = 128, 8 x 4 query heads on 2 key/value heads (the tiny LM's), the
    op's forward + backward took 6.7 ms in the torch-op formula (its [B, H, L, S] blocks, head
    expansion for grouped-query attention, several passes), 4.0 ms in the C++ kernels (their
    own time 2.5 ms; the rest is copies to contiguous heads, finiteness checks and the
    registered autograd's overhead), against native's fused kernel's 2.9 ms. In
    such a tile every row is whole, so the backward makes the torch-op formula's choices (the
    row's own softmax, D re-summed); their accuracy against native's on ill-conditioned inputs
    (``tests/compare_attention_accuracy.py``, 3000 one-tile calls and 60 calls of 100 x 120
    with scores up to 2e4, 2026-12-06) is that of the torch-op formula: more than 2x native's
    error in 8/11/8/10 of 60 calls for out/dQ/dK/dV where native's is more than 2x opslib's
    in 11/14/13/11 (the torch-op formula: 7/11/8/10)."""
    shapes_fit = (
        q.dim() == k.dim() == v.dim()
        and q.shape[:-3] == k.shape[:-3] == v.shape[:-3]
        and k.shape[:-2] == v.shape[:-2]
        and (q.dim() == 2 or q.shape[-3] == groups * k.shape[-3])
    )
    return (
        attn_mask is None
        and not torch.is_grad_enabled()
        and q.dtype in (torch.float32, torch.float64)
        and q.device.type == "cpu"
        and shapes_fit
        and q.shape[-2] > 0
        and k.shape[-2] > 0
        and cpu_kernels.is_loaded()
        and _all_finite(q, k, v)
    )


def _tiles(tile: tuple[int, int], rows: int, head_rows: int, keys: int) -> tuple[int, int]:
    """The C++ kernels' tile for a call of ``rows`` (stacked) query rows, heads of ``head_rows``
    rows, and ``keys`` keys: no more keys than the call has (a buffer read with a shorter row
    stride stays in L1/L2: at L = S = 128 the forward ran 1.5x faster), and where whole heads
    fit in the tile's rows, as many more whole heads as the fewer keys free (the same number of
    scores per tile, in fewer and larger matmuls). Rows are not grown within a head: under
    is_causal a block of a head's first rows skips the keys past them, which a larger block
    would not (L = S = 512 causal: forward 1.9 ms in 256-row blocks, 2.3 in one of 512)."""
    q_rows, kv_cols = tile
    kv = min(kv_cols, keys)
    if head_rows <= q_rows:
        whole_heads = q_rows * kv_cols // max(kv, 1) // head_rows * head_rows
        q_rows = max(q_rows, whole_heads)
    return min(rows, q_rows), kv


def _all_finite(*tensors: Tensor) -> bool:
    """Whether every element is finite, from one sum per tensor (one pass, where isfinite().all()
    makes four): an inf or nan makes the sum inf or nan. A sum that overflows from finite
    values also says no: those calls take the torch-op formula, which is right for them too.
    The sums are in the tensors' own dtype: a float64 sum of a float32 tensor converted it
    first, a copy that cost a quarter of a small call (L = S = 128)."""
    return bool(torch.isfinite(sum(t.sum() for t in tensors)))


def _as_heads(t: Tensor, groups: int = 1) -> Tensor:
    """[..., L, f] as the C++ kernels' contiguous [heads, rows, f]. For a query-side tensor (q,
    the output, its gradient) under grouped-query attention, ``groups`` G: the G query heads
    that read one key/value head stacked into one head of G·L rows, so that one matmul against
    that key/value head serves all G (the kernels take head_rows L: where the causal pattern
    restarts). At L = S = 128, G = 2: forward 0.88 -> 0.81 ms, backward 1.87 -> 1.69 ms
    (32 query heads)."""
    return t.contiguous().view(-1, groups * t.shape[-2], t.shape[-1])


def _forward_formula(q, k, v, attn_mask, dropout_p, is_causal, scale,
                     enable_gqa) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(out, lse) as derived above, a block of query rows at a time (the kernel: never
    differentiated by autograd, so each block's scores are overwritten in place).

    p is ATen's softmax of the block (one pass over each row, in cache), and lse comes from it
    (``_row_lse``), without a second exponential pass."""
    lead, groups = _check_attention(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa, scale)
    dtype, scale = _compute_dtype(q), _scale(q, scale)
    if _cpu_kernel_takes(q, k, v, attn_mask, groups):
        rows = q.shape[-2]
        out, lse = torch.ops.opslib_cpu.attention_forward(
            _as_heads(q, groups), _as_heads(k), _as_heads(v), is_causal, scale, rows,
            *_tiles(CPP_FORWARD_TILE, groups * rows, rows, k.shape[-2]),
        )  # fmt: skip
        return out.view(*lead, rows, v.shape[-1]), lse.view(*lead, rows)
    k, v = _expand_heads(k.to(dtype), groups), _expand_heads(v.to(dtype), groups)
    rows = q.shape[-2]
    per_head = _rows_per_head_block(lead, rows, k.shape[-2])
    if per_head is not None:
        out, lse = _forward_by_heads(q, k, v, attn_mask, is_causal, scale, lead, per_head, dtype)
        return out.to(q.dtype), lse
    out = q.new_empty([*lead, rows, v.shape[-1]], dtype=dtype)
    lse = q.new_empty([*lead, rows], dtype=_lse_dtype(q))
    step = _block_rows(lead, rows, k.shape[-2])
    nothing = _attending_to_nothing(v)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        s = _scores(q[..., r0:r1, :].to(dtype), k, _mask_rows(attn_mask, r0, r1, rows),
                    is_causal, r0, scale)  # fmt: skip
        largest = s.amax(-1)
        p = torch.softmax(s, -1)
        del s
        masked = largest == -math.inf  # rows that attend to nothing (their softmax is nan)
        out[..., r0:r1, :] = torch.where(masked.unsqueeze(-1), nothing, p @ v)
        lse[..., r0:r1] = _row_lse(largest, p, lse.dtype)
    return out.to(q.dtype), lse


def _one_rank(q: Tensor, k: Tensor, v: Tensor, enable_gqa: bool) -> tuple[Tensor, ...]:
    """q, k and v viewed with leading 1s up to the highest of their ranks, where they differ
    and each has at least 2 dims (3 with enable_gqa: its head dim; the checks refuse fewer).
    Their leading dims broadcast either way (as native's); the block formulas pair the rows of
    the probabilities, made from q and k, with those of dO Vᵀ, which needs one rank."""
    ranks = [t.dim() for t in (q, k, v)]
    if len(set(ranks)) == 1 or min(ranks) < (3 if enable_gqa else 2):
        return q, k, v
    return tuple(t[(None,) * (max(ranks) - t.dim())] for t in (q, k, v))


def _backward_formula(grad_out, grad_lse, q, k, v, out, lse, attn_mask, is_causal, scale,
                      enable_gqa, mask_grad):  # fmt: skip
    """``_backward_of_one_rank`` for q, k, v of any ranks (native takes them so, and the vmap
    rule makes them so): viewed with one rank (``_one_rank``), their gradients reshaped back."""
    aligned = _one_rank(q, k, v, enable_gqa)
    grads = _backward_of_one_rank(grad_out, grad_lse, *aligned, out, lse, attn_mask, is_causal,
                                  scale, enable_gqa, mask_grad)  # fmt: skip
    dq, dk, dv = (g.reshape(t.shape) for g, t in zip(grads[:3], (q, k, v), strict=True))
    return dq, dk, dv, grads[3]


def _backward_of_one_rank(grad_out, grad_lse, q, k, v, out, lse, attn_mask, is_causal, scale,
                          enable_gqa, mask_grad):  # fmt: skip
    """(dq, dk, dv, dmask) as derived above, a block of query rows at a time, in torch ops
    (differentiable: the double backward takes its vjp). dmask is an empty tensor unless
    ``mask_grad``.

    dS = P ⊙ (dP - D) is computed by ``_softmax_jacobian``; backward needs q, k, v, the output
    and lse, never the [L, S] probabilities."""
    lead, groups = _check_attention(q, k, v, attn_mask, 0.0, is_causal, enable_gqa, scale)
    dtype, scale = _compute_dtype(q), _scale(q, scale)
    if not mask_grad and _cpu_kernel_takes(q, k, v, attn_mask, groups):
        rows = q.shape[-2]

        def stacked_rows(t: Tensor) -> Tensor:  # [..., L] -> [Nk, G·L]
            return _as_heads(t.unsqueeze(-1), groups).squeeze(-1)

        g = None if grad_lse is None else stacked_rows(grad_lse.to(q.dtype))
        dq, dk, dv = torch.ops.opslib_cpu.attention_backward(
            _as_heads(grad_out, groups), g, _as_heads(q, groups),
            _as_heads(k), _as_heads(v), _as_heads(out, groups), stacked_rows(lse),
            is_causal, scale, rows, *_tiles(CPP_BACKWARD_TILE, groups * rows, rows, k.shape[-2]),
        )  # fmt: skip
        return dq.view(q.shape), dk.view(k.shape), dv.view(v.shape), q.new_empty(0)
    k_all, v_all = _expand_heads(k.to(dtype), groups), _expand_heads(v.to(dtype), groups)
    rows = q.shape[-2]
    per_head = _rows_per_head_block(lead, rows, k.shape[-2])
    if per_head is not None and _in_place() and not mask_grad:  # the kernel, large calls
        dq, dk, dv = _backward_by_heads(grad_out, grad_lse, q, k_all, v_all, out, lse, attn_mask,
                                        is_causal, scale, lead, per_head, dtype)  # fmt: skip
        return (
            dq.sum_to_size(q.shape).to(q.dtype).contiguous(),
            _fold_heads(dk, k, groups).to(k.dtype).contiguous(),
            _fold_heads(dv, v, groups).to(v.dtype).contiguous(),
            q.new_empty(0),
        )
    step = _block_rows(lead, rows, k.shape[-2])
    dq_blocks, dmask_blocks = [], []
    dk = dv = dmask_whole = None
    mask_by_rows = attn_mask is not None and _mask_rows(attn_mask, 0, 1, rows) is not attn_mask
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        q_rows = q[..., r0:r1, :].to(dtype)
        mask_rows = _mask_rows(attn_mask, r0, r1, rows)
        p = _probabilities(_scores(q_rows, k_all, mask_rows, is_causal, r0, scale),
                           lse[..., r0:r1].to(dtype))  # fmt: skip
        d_out = grad_out[..., r0:r1, :].to(dtype)
        d_p = d_out @ v_all.transpose(-2, -1)  # dP = dO Vᵀ
        g = None if grad_lse is None else grad_lse[..., r0:r1]
        d_scores = _softmax_jacobian(d_p, p, g, d_out, out[..., r0:r1, :])
        del d_p
        dv = _accumulate(dv, p.transpose(-2, -1) @ d_out)  # dV = Pᵀ dO
        del p
        dk = _accumulate(dk, (d_scores.transpose(-2, -1) @ q_rows) * scale)  # dK = scale·dSᵀQ
        dq_blocks.append(((d_scores @ k_all) * scale).sum_to_size(q_rows.shape))
        if mask_grad and mask_by_rows:
            dmask_blocks.append(d_scores.sum_to_size(mask_rows.shape))
        elif mask_grad:
            dmask_whole = _accumulate(dmask_whole, d_scores.sum_to_size(attn_mask.shape))
    if not dq_blocks:  # no query rows: nothing flows
        dk, dv = k.new_zeros(k_all.shape, dtype=dtype), v.new_zeros(v_all.shape, dtype=dtype)
        dq_blocks = [q.new_zeros(q.shape, dtype=dtype)]
        dmask_whole = attn_mask.new_zeros(attn_mask.shape) if mask_grad else None
    dq = torch.cat(dq_blocks, -2) if len(dq_blocks) > 1 else dq_blocks[0]
    del dq_blocks
    if mask_grad:
        dmask = torch.cat(dmask_blocks, -2) if dmask_blocks else dmask_whole
        dmask = dmask.to(attn_mask.dtype).contiguous()
    else:
        dmask = q.new_empty(0)
    return (
        dq.to(q.dtype).contiguous(),
        _fold_heads(dk, k, groups).to(k.dtype).contiguous(),
        _fold_heads(dv, v, groups).to(v.dtype).contiguous(),
        dmask,
    )


def _attention_kernel(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      enable_gqa=False):  # fmt: skip
    with torch.no_grad():
        return _forward_formula(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def _attention_fake(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):  # fmt: skip
    lead, _ = _check_attention(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa, scale)
    rows = q.shape[-2]
    return (
        q.new_empty([*lead, rows, v.shape[-1]]),
        q.new_empty([*lead, rows], dtype=_lse_dtype(q)),
    )


def _attention_setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    q, k, v, attn_mask, _, is_causal, scale, enable_gqa = inputs
    out, lse = output
    ctx.is_causal, ctx.scale, ctx.enable_gqa = is_causal, scale, enable_gqa
    ctx.mask_grad = attn_mask is not None and ctx.needs_input_grad[3]
    ctx.set_materialize_grads(False)  # an unused lse output's gradient stays None, not zeros
    ctx.save_for_backward(q, k, v, out, lse, attn_mask)


def _attention_backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
    q, k, v, out, lse, attn_mask = ctx.saved_tensors
    if grad_out is None:  # only lse was used
        grad_out = q.new_zeros(*lse.shape, v.shape[-1])
    dq, dk, dv, dmask = _attention_grad(
        grad_out, grad_lse, q, k, v, out, lse, attn_mask, ctx.is_causal, ctx.scale,
        ctx.enable_gqa, ctx.mask_grad,
    )  # fmt: skip
    needs = ctx.needs_input_grad
    return (
        dq if needs[0] else None,
        dk if needs[1] else None,
        dv if needs[2] else None,
        dmask if ctx.mask_grad else None,
        None,
        None,
        None,
        None,
    )


def _grad_kernel(grad_out, grad_lse, q, k, v, out, lse, attn_mask, is_causal, scale, enable_gqa,
                 mask_grad):  # fmt: skip
    with torch.no_grad():
        return _backward_formula(grad_out, grad_lse, q, k, v, out, lse, attn_mask, is_causal,
                                 scale, enable_gqa, mask_grad)  # fmt: skip


def _grad_fake(grad_out, grad_lse, q, k, v, out, lse, attn_mask, is_causal, scale, enable_gqa,
               mask_grad):  # fmt: skip
    _check_attention(q, k, v, attn_mask, 0.0, is_causal, enable_gqa, scale)
    dmask = attn_mask.new_empty(attn_mask.shape) if mask_grad else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask


_GRAD_TENSORS = 8  # grad_out, grad_lse, q, k, v, out, lse, attn_mask; then the options


def _grad_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    ctx.options = inputs[_GRAD_TENSORS:]
    ctx.save_for_backward(*inputs[:_GRAD_TENSORS])


def _grad_backward(ctx, *grad_grads: Tensor):
    """The backward of the backward: the vjp of ``_backward_formula`` (torch ops) with respect to
    every tensor input that needs it, by ``torch.func.vjp``; itself differentiable again."""
    saved = list(ctx.saved_tensors)
    is_causal, scale, enable_gqa, mask_grad = ctx.options
    wanted = [i for i, t in enumerate(saved) if t is not None and ctx.needs_input_grad[i]]

    def formula(*tensors: Tensor) -> tuple[Tensor, ...]:
        args = list(saved)
        for i, t in zip(wanted, tensors, strict=True):
            args[i] = t
        grads = _backward_formula(*args, is_causal, scale, enable_gqa, mask_grad)
        return grads if mask_grad else grads[:3]

    _, vjp = torch.func.vjp(formula, *(saved[i] for i in wanted))
    cotangents = grad_grads if mask_grad else grad_grads[:3]
    results = vjp(tuple(cotangents))
    grads: list[Tensor | None] = [None] * (_GRAD_TENSORS + 4)
    for i, g in zip(wanted, results, strict=True):
        grads[i] = g
    return tuple(grads)


_attention_grad = define_op(
    "scaled_dot_product_attention_backward",
    "(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor? attn_mask, bool is_causal, float? scale, bool enable_gqa, bool mask_grad) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    kernel=_grad_kernel,
    fake=_grad_fake,
    setup_context=_grad_setup_context,
    backward=_grad_backward,
)

_attention = define_op(
    OP,
    "(Tensor q, Tensor k, Tensor v, Tensor? attn_mask=None, float dropout_p=0.0, "
    "bool is_causal=False, float? scale=None, bool enable_gqa=False) -> (Tensor, Tensor)",
    kernel=_attention_kernel,
    fake=_attention_fake,
    setup_context=_attention_setup_context,
    backward=_attention_backward,
)


def _attention_vmap(info, in_dims, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                    scale=None, enable_gqa=False):  # fmt: skip
    """The op already takes any leading dims: each batched tensor gets its vmapped dim moved to
    the front and 1s after it up to the sample's rank, so that it broadcasts against the
    unbatched ones (which broadcast over the batch) dim for dim."""
    dims = list((*in_dims, None)[:4])
    tensors = [q, k, v, attn_mask]
    if dims[3] is not None and dims[:3] == [None, None, None]:
        # only the mask is batched: the output grows by the batch, which the op gives only
        # for q, k and v (its mask must broadcast to their scores), so q takes the batch
        tensors[0], dims[0] = q.expand(info.batch_size, *q.shape), 0
    rank = max(
        t.dim() - (d is not None) for t, d in zip(tensors, dims, strict=True) if t is not None
    )
    for i, (t, d) in enumerate(zip(tensors, dims, strict=True)):
        if t is not None and d is not None:
            t = t.movedim(d, 0)
            tensors[i] = t.reshape(t.shape[0], *([1] * (rank + 1 - t.dim())), *t.shape[1:])
    out, lse = _attention(*tensors, dropout_p, is_causal, scale, enable_gqa)
    return (out, lse), (0, 0)


register_vmap(_attention, _attention_vmap)


def _attention_split_dims(q, k, v, is_causal: bool, enable_gqa: bool) -> list[int]:
    """Dims of the output [*lead, L, Ev] that attention can compute in independent slices:
    each leading (batch, head) dim that some input has at full size, and the query rows L
    unless causal (the causal mask is aligned to global row numbers, which a rank's slice of
    rows does not know). With GQA the head dim is not split: a rank's query heads use the key
    heads h // (H / H_kv), which match its key-head slice only when both counts divide evenly
    by the number of ranks, which a rule cannot see."""
    from torch.distributed.tensor import Shard

    out_ndim = max(q.ndim, k.ndim, v.ndim)
    dims = []
    for d in range(out_ndim - 2):
        if enable_gqa and d == out_ndim - 3:
            continue
        if any(isinstance(broadcast_placement(t, out_ndim, d), Shard) for t in (q, k, v)):
            dims.append(d)
    if not is_causal and q.shape[-2] > 1:
        dims.append(out_ndim - 2)
    return dims


def _attention_inputs_split_on(d: int, q, k, v, attn_mask) -> list:
    """Placements of q, k, v and the mask for output dim d split: each sharded where it has d at
    full size; for the query rows (d = L) k and v are whole on every rank (every row attends
    to every key)."""
    from torch.distributed.tensor import Replicate

    out_ndim = max(q.ndim, k.ndim, v.ndim)
    placements = [broadcast_placement(t, out_ndim, d) for t in (q, k, v, attn_mask)]
    if d == out_ndim - 2:
        placements[1:3] = [Replicate(), Replicate()]
    return placements


def _attention_sharding(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                        enable_gqa=False):  # fmt: skip
    """DTensor (core/sharding.py): a split dim d of the output (``_attention_split_dims``)
    shards q, k, v and the mask where they have d at full size (replicated where they
    broadcast along it; for the query rows, k and v are whole on every rank); out and the
    logsumexp are sharded on d."""
    from torch.distributed.tensor import Replicate, Shard

    rules = [([Replicate(), Replicate()], replicate(q, k, v, attn_mask))]
    for d in _attention_split_dims(q, k, v, is_causal, enable_gqa):
        rules.append(([Shard(d), Shard(d)], _attention_inputs_split_on(d, q, k, v, attn_mask)))
    return rules


def _attention_grad_sharding(grad_out, grad_lse, q, k, v, out, lse, attn_mask, is_causal, scale,
                             enable_gqa, mask_grad):  # fmt: skip
    """As the forward, with out, lse and their gradients sharded on d. An input replicated
    along d (broadcast, or k and v for the query rows) gets a gradient summed over d, of which
    each rank holds its slice's share: Partial."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    rules = [([Replicate()] * 4, replicate(grad_out, grad_lse, q, k, v, out, lse, attn_mask))]
    for d in _attention_split_dims(q, k, v, is_causal, enable_gqa):
        q_, k_, v_, m_ = _attention_inputs_split_on(d, q, k, v, attn_mask)
        grads = [p if isinstance(p, Shard) else Partial() for p in (q_, k_, v_, m_)]
        if not mask_grad:
            grads[3] = Replicate()  # an empty placeholder
        lse_grad = None if grad_lse is None else Shard(d)
        inputs = [Shard(d), lse_grad, q_, k_, v_, Shard(d), Shard(d), m_]
        rules.append((grads, inputs))
    return rules


register_sharding_rule(_attention, _attention_sharding)
register_sharding_rule(_attention_grad, _attention_grad_sharding)
# Like native sdpa, a matmul op: under autocast it computes in the autocast dtype.
register_autocast_to_autocast_dtype(_attention, "cpu")
register_autocast_to_autocast_dtype(_attention, "cuda")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale,
    enable_gqa)`` (dropout_p must be 0), with a block-recomputing backward derived in
    ``opslib/ops/scaled_dot_product_attention.py``.
    """
    return _attention(q, k, v, attn_mask, float(dropout_p), is_causal, scale, enable_gqa)[0]


def scaled_dot_product_attention_onnx(q, k, v, attn_mask=None, dropout_p: float = 0.0,
                                      is_causal: bool = False, scale: float | None = None,
                                      enable_gqa: bool = False):  # fmt: skip
    """ONNX translation in standard operators at the default opset: MatMul(q·scale, kᵀ), the
    mask (Where for bool and causal masks, Add for float ones), Softmax along the keys, MatMul
    with v; fully masked rows (max score -inf) set to 0 with Where, as the op gives; lse by
    ReduceLogSumExp. GQA repeats k and v's heads (Unsqueeze, Expand, Reshape). ONNX's own
    Attention (opset 23) is not used: onnxruntime runs this decomposition at the default opset,
    in float64 too."""
    import numpy as np
    from onnxscript import ir

    from opslib.onnx import constant, opset

    def ints(values) -> object:
        return opset.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))

    if dropout_p:
        _check_attention(q, k, v, None, dropout_p, False, False)  # the op's error
    k_rank, e = len(k.shape), q.shape[-1]
    if enable_gqa:
        groups = q.shape[-3] // k.shape[-3]

        def repeat(t):  # [..., Hk, S, D] -> [..., Hk, G, S, D] -> [..., Hk·G, S, D]
            expanded = opset.Unsqueeze(t, ints([-3]))
            shape = opset.Shape(expanded)
            target = opset.Concat(
                opset.Slice(shape, ints([0]), ints([-3])), ints([groups]),
                opset.Slice(shape, ints([-2]), ints([np.iinfo(np.int64).max])), axis=0,
            )  # fmt: skip
            merged = opset.Concat(
                opset.Slice(shape, ints([0]), ints([-4])), ints([-1]),
                opset.Slice(shape, ints([-2]), ints([np.iinfo(np.int64).max])), axis=0,
            )  # fmt: skip
            return opset.Reshape(opset.Expand(expanded, target), merged)

        k, v = repeat(k), repeat(v)
    scale = 1.0 / math.sqrt(e) if scale is None else scale
    perm = list(range(k_rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    scores = opset.MatMul(opset.Mul(q, constant(scale, q)), opset.Transpose(k, perm=perm))
    minus_inf = constant(-np.inf, q)
    if is_causal:
        rows, keys = opset.Shape(q, start=-2, end=-1), opset.Shape(k, start=-2, end=-1)
        row = opset.Unsqueeze(opset.Range(ints(0), opset.Squeeze(rows), ints(1)), ints([-1]))
        key = opset.Range(ints(0), opset.Squeeze(keys), ints(1))
        scores = opset.Where(opset.Greater(key, row), minus_inf, scores)
    elif attn_mask is not None and attn_mask.dtype == ir.DataType.BOOL:
        scores = opset.Where(attn_mask, scores, minus_inf)
    elif attn_mask is not None:
        scores = opset.Add(scores, attn_mask)
    largest = opset.ReduceMax(scores, ints([-1]), keepdims=1)
    p = opset.Where(
        opset.Equal(largest, minus_inf), constant(0.0, q), opset.Softmax(scores, axis=-1)
    )
    out = opset.MatMul(p, v)
    lse = opset.ReduceLogSumExp(scores, ints([-1]), keepdims=0)
    if q.dtype == ir.DataType.FLOAT:  # the op's lse: float64 (see _lse_dtype)
        lse = opset.Cast(lse, to=ir.DataType.DOUBLE)
    return out, lse


register_onnx_translation(_attention, scaled_dot_product_attention_onnx)
