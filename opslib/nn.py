"""``torch.nn`` modules built on the customgrad ops."""

from __future__ import annotations

import torch
from torch import Tensor

from opslib import ops


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` computed by ``customgrad::linear``.

    A subclass, not a look-alike: same constructor, parameters, initialisation and state_dict
    keys, so anything that looks for ``nn.Linear`` (tensor-parallel plans, quantizers, FSDP wrap
    policies, ``load_state_dict`` from a plain model) accepts it.
    """

    def forward(self, input: Tensor) -> Tensor:
        return ops.linear(input, self.weight, self.bias)


class ReLU(torch.nn.Module):
    """Elementwise max(x, 0) via ``customgrad::relu``."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Sigmoid(torch.nn.Module):
    """Elementwise 1 / (1 + e⁻ˣ) via ``customgrad::sigmoid``."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Tanh(torch.nn.Module):
    """Elementwise tanh(x) via ``customgrad::tanh``."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class LearnedSiLU(torch.nn.Module):
    """slope · x · sigmoid(x) with a learned slope, via ``customgrad::learned_silu``.

    ``num_parameters=1`` learns one slope shared by all channels; ``num_parameters=C`` learns
    one per channel of the input's last dimension. Every slope starts at ``init``
    (``init=1.0`` is exactly SiLU).
    """

    def __init__(self, init: float = 1.0, num_parameters: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        self.num_parameters = num_parameters
        self.init = init
        self.slope = torch.nn.Parameter(
            torch.full((num_parameters,), float(init), device=device, dtype=dtype)
        )

    def forward(self, x: Tensor) -> Tensor:
        return ops.learned_silu(x, self.slope)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, init={self.init}"


def _legacy_dim(name: str, ndim: int) -> int:
    """What torch.nn.Softmax(dim=None) picks (with its deprecation warning): 0 for 0-, 1- and
    3-d input, else 1."""
    return torch.nn.functional._get_softmax_dim(name, ndim, stacklevel=4)


class Softmax(torch.nn.Softmax):
    """``torch.nn.Softmax`` computed by ``customgrad::softmax``: a subclass, same constructor."""

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim if self.dim is not None else _legacy_dim("softmax", input.dim())
        return ops.softmax(input, dim)


class LogSoftmax(torch.nn.LogSoftmax):
    """``torch.nn.LogSoftmax`` computed by ``customgrad::log_softmax``: a subclass, same
    constructor."""

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim if self.dim is not None else _legacy_dim("log_softmax", input.dim())
        return ops.log_softmax(input, dim)


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` computed by ``customgrad::rms_norm``: a subclass, same constructor,
    parameters and state_dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, list(self.normalized_shape), self.weight, self.eps)


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` computed by ``customgrad::layer_norm``: a subclass, same
    constructor, parameters and state_dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, list(self.normalized_shape), self.weight, self.bias, self.eps)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by ``customgrad::cross_entropy``: a subclass, same
    constructor (class ``weight`` a buffer, ``ignore_index``, ``reduction``,
    ``label_smoothing``) and state_dict. Targets are class indices (probability targets are
    refused with an error naming the op)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return ops.cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing
        )


class LinearCrossEntropyLoss(torch.nn.Linear):
    """An output projection and its cross-entropy in one: ``forward(input, target)`` is
    ``F.cross_entropy(F.linear(input, weight, bias), target, ...)`` computed by
    ``customgrad::linear_cross_entropy`` without ever holding the [tokens, classes] logits.

    A subclass of ``torch.nn.Linear(in_features, num_classes)``: the same parameters,
    initialisation and state_dict keys (``weight``, ``bias``), so a language model's head loads
    unchanged; ``logits(input)`` is that Linear's forward, for inference.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        return ops.linear_cross_entropy(
            input, self.weight, target, self.bias, self.ignore_index, self.reduction,
            self.label_smoothing,
        )  # fmt: skip

    def logits(self, input: Tensor) -> Tensor:
        return ops.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.out_features}, "
            f"bias={self.bias is not None}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"
        )


class _BatchNormForward:
    """The forward of ``torch.nn``'s batch norms (its ``_BatchNorm.forward``, step by step),
    computed by ``opslib.batch_norm``: the same choice of batch or running statistics, the
    same momentum (``None``: a cumulative average over ``num_batches_tracked``)."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_statistics = self.training or (
            self.running_mean is None and self.running_var is None
        )
        tracked = not self.training or self.track_running_stats
        return ops.batch_norm(
            input,
            self.running_mean if tracked else None,
            self.running_var if tracked else None,
            self.weight,
            self.bias,
            use_batch_statistics,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` computed by ``customgrad::batch_norm`` (and its running-statistics
    update): a subclass, same constructor, parameters, buffers and state_dict keys."""


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` computed by ``customgrad::batch_norm``: a subclass, same
    constructor, parameters, buffers and state_dict keys."""


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` computed by ``customgrad::batch_norm``: a subclass, same
    constructor, parameters, buffers and state_dict keys."""


class Conv1d(torch.nn.Conv1d):
    """``torch.nn.Conv1d`` computed by ``customgrad::conv1d``: a subclass, same constructor,
    parameters, initialisation and state_dict keys. Non-zero padding modes (reflect, replicate,
    circular) pad with ``F.pad`` first, as torch.nn does."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _conv_forward(self, ops.conv1d, input, weight, bias)


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by ``customgrad::conv2d``: a subclass, same constructor,
    parameters, initialisation and state_dict keys. Non-zero padding modes (reflect, replicate,
    circular) pad with ``F.pad`` first, as torch.nn does."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _conv_forward(self, ops.conv2d, input, weight, bias)


def _conv_forward(module, conv, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """torch.nn's ``_ConvNd._conv_forward`` with the customgrad op."""
    if module.padding_mode != "zeros":
        input = torch.nn.functional.pad(
            input, module._reversed_padding_repeated_twice, mode=module.padding_mode
        )
        return conv(input, weight, bias, module.stride, 0, module.dilation, module.groups)
    return conv(input, weight, bias, module.stride, module.padding, module.dilation, module.groups)


class MultiheadSelfAttention(torch.nn.Module):
    """Self-attention over ``[batch, seq, embed_dim]`` (batch first): the input projections and
    the output projection through ``customgrad::linear``, attention through
    ``customgrad::scaled_dot_product_attention`` (whose backward never holds the [seq, seq]
    probabilities of every row at once).

    Its parameters and state_dict keys are ``torch.nn.MultiheadAttention``'s for self-attention
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``), so
    ``load_state_dict(mha.state_dict())`` takes the weights of
    ``torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)``, and ``forward(x)``
    then equals ``mha(x, x, x, need_weights=False)[0]``. Masks follow that module's convention:
    a bool ``attn_mask`` [seq, seq] or ``key_padding_mask`` [batch, seq] is True where a key is
    *not* attended; a float attn_mask is added to the scores; ``is_causal=True`` with an
    attn_mask is a hint that the mask is causal, as there. (``is_causal=True`` alone, which
    torch's module refuses, "Need attn_mask if specifying the is_causal hint", is accepted
    here: it is the causal mask.) Only the output is returned: the
    attention weights are the [seq, seq] matrix this module exists not to keep. Attention
    dropout is not supported (the op refuses dropout_p > 0).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"opslib.nn.MultiheadSelfAttention: embed_dim {embed_dim} must be divisible by "
                f"num_heads {num_heads}"
            )
        self.embed_dim, self.num_heads = embed_dim, num_heads
        factory = {"device": device, "dtype": dtype}
        self.in_proj_weight = torch.nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        self.in_proj_bias = (
            torch.nn.Parameter(torch.empty(3 * embed_dim, **factory)) if bias else None
        )
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.MultiheadAttention's initialisation."""
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.zeros_(self.in_proj_bias)
            torch.nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        batch, seq, _ = x.shape
        qkv = ops.linear(x, self.in_proj_weight, self.in_proj_bias)  # [batch, seq, 3·embed]
        head_dim = self.embed_dim // self.num_heads
        # [batch, seq, 3, heads, head_dim] -> 3 x [batch, heads, seq, head_dim]
        q, k, v = qkv.unflatten(-1, (3, self.num_heads, head_dim)).permute(2, 0, 3, 1, 4)
        if is_causal and attn_mask is not None:
            # nn.MultiheadAttention's convention: is_causal is a hint that attn_mask is the
            # causal mask. Without a key padding mask the causal attention runs and attn_mask
            # is not read; with one, the mask merged from both (no longer causal) is used.
            if key_padding_mask is None:
                attn_mask = None
            else:
                is_causal = False
        mask = _attention_mask(attn_mask, key_padding_mask, x.dtype)
        out = ops.scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq, self.embed_dim))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"


def _attention_mask(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, dtype: torch.dtype
) -> Tensor | None:
    """nn.MultiheadAttention's masks (bool True: not attended; float: added) as one mask for
    scaled_dot_product_attention (bool True: attended), broadcasting to [batch, heads, L, S]."""
    allowed = None
    if attn_mask is not None:
        allowed = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask
    if key_padding_mask is not None:
        padding = key_padding_mask[:, None, None, :]  # [batch, 1, 1, S]
        if padding.dtype != torch.bool:
            allowed = padding.to(dtype) if allowed is None else allowed + padding.to(dtype)
        elif allowed is None or allowed.dtype == torch.bool:
            allowed = ~padding if allowed is None else allowed & ~padding
        else:
            allowed = allowed.masked_fill(padding, float("-inf"))
    return allowed
