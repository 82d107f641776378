"""``opslib.swap_modules(model)``: opslib's ops in place of an existing model's layers, in place,
with the same parameters, buffers and ``state_dict`` keys (checkpoints load both ways).

How: each recognised module keeps its object, attributes and parameters; only its class changes,
to a subclass of its own class whose ``forward`` calls opslib's ops (``isinstance`` checks, hooks
and optimizers holding its parameters are unaffected). torch.nn layers are recognised by their
exact class (a subclass may compute something else) and take opslib.nn's twin. Layers of other
libraries (transformers' Llama family) are recognised by structure, and each instance is swapped
only if, on a random probe input, the new forward gives what the old one gives: a look-alike that
computes something else (Gemma's RMSNorm scales by 1 + weight) is left alone.

transformers (tested: the installed 5.x; Llama, and Qwen2 and Mistral, whose attention is left
alone while it has a sliding window): RMSNorm -> rms_norm; the gated MLP ->
swiglu; the attention module -> rotary_embedding for q and k, and opslib's
scaled_dot_product_attention through transformers' public attention registry
(``AttentionInterface`` / ``AttentionMaskInterface``, registered as "opslib", and
``model.set_attn_implementation("opslib")``); ``*ForCausalLM`` -> linear_cross_entropy of the
hidden states and the LM head when labels are given (the [tokens, vocabulary] logits are never
made: the output's ``logits`` is None then, as Liger-Kernel's fused loss returns it).

Two copies that a linear of a swapped layer would save for its weight's gradient are remade in
backward instead (``_recomputed_when_saved``, through torch's public ``saved_tensors_hooks``;
eager only): the MLP's swiglu output and the attention output merged to [B, L, H·D], each
from tensors the graph keeps anyway.

A swapped model is pickled through its ``state_dict`` (its classes are made at run time).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib import nn as opslib_nn
from opslib.ops.linear_cross_entropy import linear_cross_entropy
from opslib.ops.rms_norm import rms_norm
from opslib.ops.rotary_embedding import rotary_embedding
from opslib.ops.scaled_dot_product_attention import scaled_dot_product_attention
from opslib.ops.swiglu import swiglu

# torch.nn layers and their opslib.nn twins (same constructor, parameters and buffers)
TORCH_NN_TWINS: dict[type, type] = {
    torch.nn.Linear: opslib_nn.Linear,
    torch.nn.LayerNorm: opslib_nn.LayerNorm,
    torch.nn.RMSNorm: opslib_nn.RMSNorm,
    torch.nn.Conv1d: opslib_nn.Conv1d,
    torch.nn.Conv2d: opslib_nn.Conv2d,
    torch.nn.BatchNorm1d: opslib_nn.BatchNorm1d,
    torch.nn.BatchNorm2d: opslib_nn.BatchNorm2d,
    torch.nn.BatchNorm3d: opslib_nn.BatchNorm3d,
    torch.nn.Softmax: opslib_nn.Softmax,
    torch.nn.LogSoftmax: opslib_nn.LogSoftmax,
    torch.nn.ReLU: opslib_nn.ReLU,
    torch.nn.Sigmoid: opslib_nn.Sigmoid,
    torch.nn.Tanh: opslib_nn.Tanh,
    torch.nn.CrossEntropyLoss: opslib_nn.CrossEntropyLoss,
}


def _takes_torch_nn(module: torch.nn.Module) -> bool:
    """The options of a torch.nn layer that its twin computes (others are left as they are)."""
    if isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d):
        return module.padding_mode == "zeros"
    if isinstance(module, torch.nn.Softmax | torch.nn.LogSoftmax):
        return module.dim is not None
    if isinstance(module, torch.nn.ReLU):
        return not module.inplace
    if isinstance(module, torch.nn.CrossEntropyLoss):
        return module.weight is None
    return True


# ---- transformers' layers: forwards on opslib's ops ----


def _rms_norm_forward(self, hidden_states: Tensor) -> Tensor:
    """transformers' RMSNorm (x / rms(x) · weight); other dtype mixes: the original forward."""
    if hidden_states.dtype != self.weight.dtype:
        return super(type(self), self).forward(hidden_states)
    return rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)


def _gated_mlp_forward(self, x: Tensor) -> Tensor:
    """down_proj(swiglu(gate_proj(x), up_proj(x))), where the gated activation h that down_proj
    saves for its weight's gradient is not kept: swiglu keeps gate and up anyway, and h is
    computed again from them when the backward needs it (one elementwise pass, ~1% of a step of
    examples/train_tiny_lm.py; 11 MiB less at its peak)."""
    gate, up = self.gate_proj(x), self.up_proj(x)
    h = swiglu(gate, up)
    with _recomputed_when_saved(h, lambda: swiglu(gate, up)):
        return self.down_proj(h)


@contextlib.contextmanager
def _recomputed_when_saved(value: Tensor, recompute: Callable[[], Tensor]):
    """Within the block, an op that saves ``value`` (or a view of it) for its backward saves a
    recipe instead, and ``recompute()`` (same values, same layout) makes it again when the
    backward needs it: for values cheap to compute from tensors the graph keeps anyway. Through
    torch's public ``saved_tensors_hooks``; the graph keeps the hooks as long as it lives, so
    they hold value's address, not value. Under torch.compile (dynamo does not trace these
    hooks; the compiler chooses what to save) and without grad: nothing changes."""
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        yield
        return
    address = value.untyped_storage().data_ptr()

    def pack(t: Tensor) -> Tensor | tuple:
        if t.untyped_storage().data_ptr() != address:
            return t
        return recompute, t.shape, t.stride(), t.storage_offset()

    def unpack(saved: Tensor | tuple) -> Tensor:
        if isinstance(saved, Tensor):
            return saved
        make, shape, stride, offset = saved
        return make().as_strided(shape, stride, offset)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def opslib_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                     is_causal=None, **kwargs) -> tuple[Tensor, None]:  # fmt: skip
    """An attention function for transformers' registry (``AttentionInterface``), as its "sdpa"
    one, on opslib's scaled_dot_product_attention: q, k, v [B, H, L, D], GQA through
    enable_gqa, causal without a mask where transformers passes none; the output [B, L, H, D]
    (a transposed view, where "sdpa" returns a contiguous copy)."""
    for unsupported in ("softcap", "sliding_window", "position_bias", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"opslib attention: {unsupported} is not supported")
    q_length, kv_length = query.shape[2], key.shape[2]
    causal = module.is_causal if is_causal is None else is_causal
    causal = bool(causal) and attention_mask is None and q_length > 1
    if causal and kv_length > q_length:  # prefill of a longer cache, as "sdpa" does
        key, value = key[:, :, :q_length], value[:, :, :q_length]
    out = scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=causal,
        scale=scaling, enable_gqa=getattr(module, "num_key_value_groups", 1) > 1,
    )  # fmt: skip
    # [B, L, H, D] as a view: its caller's reshape to [B, L, H·D] makes the one copy needed
    # (transformers' attention modules and opslib's swapped one, which recomputes that copy
    # in backward rather than keep it: see _attention_forward)
    return out.transpose(1, 2), None


def _attention_forward(self, hidden_states: Tensor, position_embeddings=None,
                       attention_mask=None, cache=None, **kwargs):  # fmt: skip
    """transformers' Llama attention with q and k rotated by opslib's rotary_embedding."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cache = kwargs.pop("past_key_values", cache)
    hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)
    query, key = rotary_embedding(query, cos, sin), rotary_embedding(key, cos, sin)
    if cache is not None:
        key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
    eager = sys.modules[type(self).__mro__[1].__module__].eager_attention_forward
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager)
    heads, weights = attention(
        self, query, key, value, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
        **kwargs,
    )  # fmt: skip
    shape = (*hidden_states.shape[:-1], -1)
    merged = heads.reshape(shape).contiguous()  # [B, L, H·D]: opslib's [B, H, L, D] copied
    # o_proj would save that copy for its weight's gradient; the attention keeps its output
    with _recomputed_when_saved(merged, lambda: heads.reshape(shape).contiguous()):
        return self.o_proj(merged), weights


def _causal_lm_forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                       inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                       **kwargs):  # fmt: skip
    """Without labels, the model's own forward. With labels: the loss of the next token from the
    hidden states and the LM head's weight by linear_cross_entropy (transformers' shift, ignore
    index -100, mean or sum over num_items_in_batch), logits None."""
    original = super(type(self), self).forward
    if labels is None:
        return original(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                        use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)  # fmt: skip
    from transformers.modeling_outputs import CausalLMOutputWithPast

    num_items = kwargs.pop("num_items_in_batch", None)
    outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, **kwargs)  # fmt: skip
    hidden = outputs.last_hidden_state
    shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    flat = hidden.reshape(-1, hidden.shape[-1])
    reduction = "mean" if num_items is None else "sum"
    loss = linear_cross_entropy(flat, self.lm_head.weight, shift_labels.reshape(-1),
                                self.lm_head.bias, -100, reduction)  # fmt: skip
    if num_items is not None:
        loss = loss / num_items
    return CausalLMOutputWithPast(loss=loss, logits=None, cache=outputs.cache,
                                  hidden_states=outputs.hidden_states,
                                  attentions=outputs.attentions)  # fmt: skip


@functools.cache
def _swapped_class(cls: type, forward: Callable) -> type:
    """A subclass of ``cls`` with ``forward``, made once per class."""
    return type(f"Opslib{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})


def _is_linear(module) -> bool:
    return isinstance(module, torch.nn.Linear)


def _candidate_forward(module: torch.nn.Module) -> Callable | None:
    """The opslib forward for a transformers layer of this structure, or None."""
    name = type(module).__name__
    has = functools.partial(hasattr, module)
    if name.endswith("RMSNorm") and has("weight") and has("variance_epsilon"):
        weight = module.weight
        if isinstance(weight, torch.nn.Parameter) and weight.dim() == 1:
            return _rms_norm_forward
    if all(has(p) for p in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        if all(_is_linear(getattr(module, p)) for p in ("gate_proj", "up_proj", "down_proj")):
            return _gated_mlp_forward
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    if all(has(p) for p in (*projections, "head_dim", "scaling", "config", "layer_idx")):
        family = sys.modules.get(type(module).__module__)
        # Left alone: q/k norms (Qwen3), sliding windows (Mistral, Qwen2 with them on: the
        # window is an argument of the attention call this forward does not make)
        windowed = getattr(module, "sliding_window", None) is not None or (
            getattr(module.config, "sliding_window", None) is not None
        )
        plain = not (has("q_norm") or has("k_norm") or windowed)
        if plain and hasattr(family, "apply_rotary_pos_emb"):
            return _attention_forward
    if name.endswith("ForCausalLM") and has("lm_head") and has("model"):
        if _is_linear(module.lm_head):
            return _causal_lm_forward
    return None


# ---- probes: the new forward must give what the old one gives ----


def _probe_input(module: torch.nn.Module, forward: Callable):
    """Arguments for one call of ``module`` (None if there is no probe for it)."""
    param = next(module.parameters(), None)
    if param is None:
        return None
    options = {"device": param.device, "dtype": param.dtype}
    torch.manual_seed(0)
    if forward is _rms_norm_forward:
        return (torch.randn(3, module.weight.shape[0], **options),), {}
    if forward is _gated_mlp_forward:
        return (torch.randn(3, module.gate_proj.in_features, **options),), {}
    if forward is _attention_forward:
        length, hidden = 5, module.q_proj.in_features
        angles = torch.rand(1, length, module.head_dim, **options)
        return (torch.randn(1, length, hidden, **options),), {
            "position_embeddings": (angles.cos(), angles.sin()),
            "attention_mask": None,
        }
    if forward is _causal_lm_forward:
        vocabulary = module.lm_head.out_features
        ids = torch.randint(0, vocabulary, (1, 6), device=param.device)
        return (), {"input_ids": ids, "labels": ids, "use_cache": False}
    return None


def _first_tensor(output) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.loss  # a transformers ModelOutput with labels


def _agrees(module: torch.nn.Module, forward: Callable) -> bool:
    probe = _probe_input(module, forward)
    if probe is None:
        return False
    args, kwargs = probe
    swapped = _swapped_class(type(module), forward)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = _first_tensor(module(*args, **kwargs))
            module.__class__ = swapped
            try:
                got = _first_tensor(module(*args, **kwargs))
            finally:
                module.__class__ = swapped.__mro__[1]
    except Exception:  # an input this structure does not take: not the layer we thought
        return False
    finally:
        module.train(was_training)
    tol = 1e-4 if want.dtype in (torch.float32, torch.float64) else 2e-2
    # in want's dtype: transformers computes a float64 model's loss in float32, opslib in float64
    return got.shape == want.shape and torch.allclose(got.to(want.dtype), want, atol=tol, rtol=tol)


def _register_attention() -> None:
    """opslib's attention function and the mask "sdpa" uses, as "opslib" in transformers'
    public registries (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("opslib", opslib_attention)
    AttentionMaskInterface.register("opslib", sdpa_mask)


def _qualified(cls: type) -> str:
    """torch.nn.Linear, opslib.nn.Linear, LlamaAttention, opslib.swap.OpslibLlamaAttention."""
    if cls.__module__.startswith("torch.nn."):
        return f"torch.nn.{cls.__qualname__}"
    if cls.__module__.startswith("opslib"):
        return f"{cls.__module__}.{cls.__qualname__}"
    return cls.__qualname__


def swap_modules(model: torch.nn.Module) -> dict[str, str]:
    """Put opslib's ops into ``model`` in place; returns ``{module name: "Old -> New"}`` for
    every module it swapped (the root is named ""). See the module docstring for what is
    recognised and how."""
    replaced: dict[str, str] = {}
    swapped_attention = False
    if "transformers" in sys.modules and hasattr(model, "set_attn_implementation"):
        _register_attention()
    for name, module in list(model.named_modules()):
        cls = type(module)
        if cls in TORCH_NN_TWINS and _takes_torch_nn(module):
            module.__class__ = TORCH_NN_TWINS[cls]
        elif cls.__module__.startswith("transformers."):
            forward = _candidate_forward(module)
            if forward is None or not _agrees(module, forward):
                continue
            module.__class__ = _swapped_class(cls, forward)
            swapped_attention |= forward is _attention_forward
        else:
            continue
        replaced[name] = f"{_qualified(cls)} -> {_qualified(type(module))}"
    if swapped_attention:
        model.set_attn_implementation("opslib")
    return replaced
