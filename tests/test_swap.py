"""opslib.swap_modules: torch.nn layers and transformers' Llama family swapped in place, state
dicts unchanged, look-alikes left alone, and a 2-layer Llama trained 20 AdamW steps swapped and
not from the same weights, with the same losses and parameters (the convergence test)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import opslib
from opslib.testing.support import assert_close_named, tensor_memory

pytestmark = pytest.mark.ops("linear", "rms_norm", "swiglu", "rotary_embedding",
                             "scaled_dot_product_attention", "linear_cross_entropy")  # fmt: skip

transformers = pytest.importorskip("transformers")


def _tiny_llama(seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


def test_torch_nn_layers_are_swapped_in_place_with_the_same_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(),
        torch.nn.Linear(16, 5), torch.nn.LogSoftmax(dim=-1),
        torch.nn.Conv1d(1, 1, 1, padding_mode="circular"),  # not computed by opslib: left
    )  # fmt: skip
    head, reference = model[:-1], copy.deepcopy(model[:-1])
    params = list(model.parameters())
    replaced = opslib.swap_modules(model)
    assert replaced == {
        "0": "torch.nn.Conv2d -> opslib.nn.Conv2d",
        "1": "torch.nn.BatchNorm2d -> opslib.nn.BatchNorm2d",
        "2": "torch.nn.ReLU -> opslib.nn.ReLU",
        "4": "torch.nn.Linear -> opslib.nn.Linear",
        "5": "torch.nn.LayerNorm -> opslib.nn.LayerNorm",
        "6": "torch.nn.Tanh -> opslib.nn.Tanh",
        "7": "torch.nn.Linear -> opslib.nn.Linear",
        "8": "torch.nn.LogSoftmax -> opslib.nn.LogSoftmax",
    }
    assert list(model.parameters()) == params  # the same Parameter objects: optimizers keep them
    assert type(model[9]) is torch.nn.Conv1d
    x = torch.randn(2, 3, 4, 4)
    assert_close_named(head(x), reference(x), "swapped torch.nn model")
    reference.load_state_dict(head.state_dict())  # checkpoints load both ways
    head.load_state_dict(reference.state_dict())


def test_llama_is_swapped_and_gives_the_same_logits_and_loss():
    reference = _tiny_llama()
    model = copy.deepcopy(reference)
    replaced = opslib.swap_modules(model)
    swapped = set(replaced.values())
    for expected in (
        "LlamaForCausalLM -> opslib.swap.OpslibLlamaForCausalLM",
        "LlamaAttention -> opslib.swap.OpslibLlamaAttention",
        "LlamaMLP -> opslib.swap.OpslibLlamaMLP",
        "LlamaRMSNorm -> opslib.swap.OpslibLlamaRMSNorm",
        "torch.nn.Linear -> opslib.nn.Linear",
    ):
        assert expected in swapped
    assert len(replaced) == 1 + 2 * (1 + 4 + 1 + 3 + 2) + 1 + 1  # root, layers, norm, lm_head
    assert model.config._attn_implementation == "opslib"
    assert list(model.state_dict()) == list(reference.state_dict())
    ids = torch.randint(0, 512, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: transformers' mask reaches opslib's attention
    for kwargs in ({}, {"attention_mask": mask}):
        want, got = reference(input_ids=ids, **kwargs), model(input_ids=ids, **kwargs)
        assert_close_named(got.logits, want.logits, f"swapped Llama logits {list(kwargs)}")
    loss = model(input_ids=ids, labels=ids)
    assert loss.logits is None  # the fused loss never makes the logits
    assert_close_named(loss.loss, reference(input_ids=ids, labels=ids).loss, "swapped loss")


def test_look_alikes_that_compute_something_else_are_left_alone():
    """Gemma's RMSNorm scales by 1 + weight and its MLP gates with GELU: same structure as
    Llama's, another function; the probe sees it and leaves them."""
    config = transformers.GemmaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.GemmaForCausalLM(config)
    model = copy.deepcopy(reference)
    replaced = opslib.swap_modules(model)
    assert not any("RMSNorm" in v or "MLP" in v for v in replaced.values()), replaced
    ids = torch.randint(0, 256, (1, 8))
    assert_close_named(model(input_ids=ids).logits, reference(input_ids=ids).logits, "gemma")


@pytest.mark.parametrize("family", ["qwen2", "mistral-sliding-window"])
def test_other_llama_family_models_are_swapped_where_it_is_exact(family):
    """Qwen2 (q/k/v biases, no sliding window): everything swapped, logits equal. Mistral with
    its sliding window: the attention is left alone (the window is an argument the swapped
    forward would not pass), the rest swapped, logits equal."""
    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    if family == "qwen2":
        config = transformers.Qwen2Config(**common, use_sliding_window=False)
        build = transformers.Qwen2ForCausalLM
    else:
        config = transformers.MistralConfig(**common, sliding_window=6)
        build = transformers.MistralForCausalLM
    torch.manual_seed(0)
    reference = build(config)
    model = copy.deepcopy(reference)
    swapped = set(opslib.swap_modules(model).values())
    attention_swapped = any("Attention -> opslib" in v for v in swapped)
    assert attention_swapped == (family == "qwen2"), swapped
    assert any("MLP -> opslib" in v for v in swapped) and any("RMSNorm -> " in v for v in swapped)
    ids = torch.randint(0, 256, (2, 12))  # longer than Mistral's window of 6
    assert_close_named(model(input_ids=ids).logits, reference(input_ids=ids).logits, family)


def test_convergence_twenty_adamw_steps_swapped_and_not():
    """The same 2-layer Llama, swapped and not, 20 AdamW steps on the same batches: every
    step's loss within 1e-5 relative and the final parameters within 1e-4 (float32; measured
    2026-12-06: 1.8e-7 and 1.5e-5 at most, the loss falling from 6.25 to 2.88), and the swapped
    model's step compiles with fullgraph=True."""
    reference = _tiny_llama(seed=1)
    model = copy.deepcopy(reference)
    opslib.swap_modules(model)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (reference, model)]
    generator = torch.Generator().manual_seed(2)
    # counting sequences from 8 starts, 4 a batch: next token = this one + 1
    starts = torch.randint(0, 512, (8, 1), generator=generator)
    batches = [(starts[4 * (i % 2) : 4 * (i % 2) + 4] + torch.arange(16)) % 512 for i in range(20)]
    losses: list[list[float]] = [[], []]
    for ids in batches:
        for i, (m, optimizer) in enumerate(zip((reference, model), optimizers, strict=True)):
            loss = m(input_ids=ids, labels=ids, use_cache=False).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[i].append(loss.item())
    assert losses[0][-1] < losses[0][0] - 1.0, losses[0]  # it learns
    for step, (want, got) in enumerate(zip(*losses, strict=True)):
        assert abs(got - want) <= 1e-5 * abs(want), f"step {step}: {got} against {want}"
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert_close_named(p, q, f"final {name}", atol=1e-4, rtol=1e-4)

    torch._dynamo.reset()
    compiled = torch.compile(
        lambda ids: model(input_ids=ids, labels=ids, use_cache=False).loss, fullgraph=True
    )
    loss = compiled(batches[0])
    loss.backward()
    eager = model(input_ids=batches[0], labels=batches[0], use_cache=False).loss
    assert_close_named(loss, eager, "compiled swapped Llama loss")


def _live_bytes_after(run) -> int:
    """Bytes of tensor memory that ``run()`` allocated and still holds when it returns."""
    return tensor_memory(run)[1]


def test_the_swapped_gated_mlp_recomputes_its_product_instead_of_keeping_it(monkeypatch):
    """The swapped MLP keeps gate and up (swiglu's saved inputs) but not h = swiglu(gate, up),
    which down_proj would save: the graph after its forward holds exactly h's bytes fewer than
    with h kept, and h made again in backward gives the original MLP's gradients, to second
    order (float64, gradcheck and gradgradcheck of the swapped module)."""
    import opslib.swap

    original = _tiny_llama().model.layers[0].mlp.double()
    swapped = copy.deepcopy(original)
    opslib.swap_modules(swapped)
    assert type(swapped).__name__ == "OpslibLlamaMLP"
    x = torch.randn(3, 16, 64, dtype=torch.float64, requires_grad=True)
    outputs = []
    recomputing = _live_bytes_after(lambda: outputs.append(swapped(x)))
    monkeypatch.setattr(opslib.swap, "_recomputed_when_saved", lambda *a: contextlib.nullcontext())
    keeping = _live_bytes_after(lambda: outputs.append(swapped(x)))
    monkeypatch.undo()
    h_bytes = 3 * 16 * 176 * 8
    assert keeping - recomputing == h_bytes, (keeping, recomputing)

    grads = torch.autograd.grad(swapped(x).square().sum(), [x, *swapped.parameters()])
    expected = torch.autograd.grad(original(x).square().sum(), [x, *original.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    small = torch.randn(2, 3, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swapped, (small,))
    assert torch.autograd.gradgradcheck(swapped, (small,))


def test_the_swapped_llama_keeps_no_copy_it_can_remake(monkeypatch):
    """In the whole swapped model, each layer's two cheap copies that a linear would save (the
    MLP's swiglu output, the attention output merged to [B, L, H·D] for o_proj) are remade in
    backward instead: the graph after the forward holds exactly their bytes fewer than with
    them kept, and the gradients are the unswapped model's."""
    import opslib.swap

    reference = _tiny_llama()
    model = copy.deepcopy(reference)
    opslib.swap_modules(model)
    ids = torch.randint(0, 512, (2, 12))
    losses = []
    recomputing = _live_bytes_after(lambda: losses.append(model(input_ids=ids, labels=ids).loss))
    with monkeypatch.context() as patch:
        patch.setattr(opslib.swap, "_recomputed_when_saved", lambda *a: contextlib.nullcontext())
        keeping = _live_bytes_after(lambda: losses.append(model(input_ids=ids, labels=ids).loss))
    layers, tokens, hidden, intermediate = 2, 2 * 12, 64, 176
    assert keeping - recomputing == layers * tokens * (intermediate + hidden) * 4
    got = torch.autograd.grad(losses[0], list(model.parameters()))
    want = torch.autograd.grad(reference(input_ids=ids, labels=ids).loss,
                               list(reference.parameters()))  # fmt: skip
    for (name, _), g, w in zip(model.named_parameters(), got, want, strict=True):
        assert_close_named(g, w, f"gradient of {name}")


def test_a_float64_llama_is_swapped_whole_and_gives_the_same_loss():
    """transformers computes the loss of a float64 model in float32 (it upcasts logits with
    .float()); opslib's in float64: the probe compares in transformers' dtype, so the model is
    still swapped, and the losses agree to float32's precision."""
    reference = _tiny_llama().double()
    model = copy.deepcopy(reference)
    replaced = opslib.swap_modules(model)
    assert "LlamaForCausalLM -> opslib.swap.OpslibLlamaForCausalLM" in replaced.values()
    ids = torch.randint(0, 512, (2, 12))
    got, want = model(input_ids=ids, labels=ids).loss, reference(input_ids=ids, labels=ids).loss
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), want, rtol=1e-6, atol=1e-6)
