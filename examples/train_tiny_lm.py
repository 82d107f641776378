"""Train a small Llama-family language model on the Python standard library's own source, with
opslib swapped in (``opslib.swap_modules``) and, from the same weights, its unmodified twin.

    python3 -m pip install -e ".[examples,lm]"        # transformers and tokenizers
    python3 examples/train_tiny_lm.py                  # 200 steps of each, eager, then compiled
    python3 examples/train_tiny_lm.py --steps 20 --compiled-steps 0     # a quick look

Data: every ``.py`` file of this Python's standard library (sorted, the first --corpus-mb MB),
which every machine has; a byte-level BPE tokenizer of --vocab tokens is trained on it here with
the ``tokenizers`` package (seconds), and 2% of the tokens are held out.
Model: transformers' LlamaForCausalLM from a config with random weights (--layers, --hidden,
4 heads, 2 key-value heads, SwiGLU MLP of 8/3 · hidden, rotary positions). The twin is that model
as transformers computes it, with native's best parts: ``torch.optim.AdamW(fused=True)`` and
``F.linear_cross_entropy`` (chunked) for its loss. The opslib model is a copy with
``opslib.swap_modules`` (rms_norm, swiglu, rotary_embedding, scaled_dot_product_attention,
linear, linear_cross_entropy) and ``opslib.optim.AdamW``.
Both train on the same batches, eager, for --steps steps; then --compiled-steps more steps of each
under ``torch.compile(fullgraph=True)``. They take turns step by step (in alternating order), so
that a drift in the machine's speed hits both alike. Printed: loss, tokens/s (median step), peak
memory of a training step: the most tensor memory it allocates and holds at once (activations,
gradients, temporaries), summed from the allocator's events that torch.profiler records. Saved under
--out: a plot of both loss curves with the throughputs, and the opslib model exported to ONNX
(standard operators only), from which the script samples a continuation of a prompt in
onnxruntime.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import opslib
from opslib.testing.support import tensor_memory

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="eager training steps of each")
    parser.add_argument("--compiled-steps", type=int, default=20,
                        help="steps of each under torch.compile (0: none)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--corpus-mb", type=float, default=8.0)
    parser.add_argument("--sample-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "tiny_lm")
    return parser.parse_args(argv)


# ---- data ----


def stdlib_source(megabytes: float) -> str:
    """The standard library's .py files, sorted by path, up to ``megabytes`` of text."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    budget, parts = int(megabytes * 1e6), []
    for path in sorted(folder.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        budget -= len(text)
        if budget <= 0:
            break
    return "\n".join(parts)


def train_tokenizer(text: str, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=alphabet, show_progress=False)
    chunks = text.split("\n\n")
    tokenizer.train_from_iterator(chunks, trainer=trainer)
    return tokenizer


def batches(tokens: torch.Tensor, batch: int, seq: int, seed: int):
    """Endless random windows of seq tokens."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, tokens.numel() - seq, (batch,), generator=generator)
        yield torch.stack([tokens[s : s + seq] for s in starts.tolist()])


# ---- models ----


def build_models(args, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    intermediate = 64 * math.ceil(8 * args.hidden / 3 / 64)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=args.hidden, intermediate_size=intermediate,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=args.seq, attn_implementation="sdpa", tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    twin = LlamaForCausalLM(config)
    ours = copy.deepcopy(twin)
    replaced = opslib.swap_modules(ours)
    return twin, ours, replaced


def twin_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """The twin's loss with native's fused, chunked loss (the logits are never made whole).
    Under torch.compile, native asks for ``allow_retain_graph=True`` (it warns and sets it
    otherwise, which dynamo cannot trace)."""
    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
    labels = F.pad(ids, (0, 1), value=-100)[:, 1:]
    options = torch.nn.LinearCrossEntropyOptions(allow_retain_graph=torch.compiler.is_compiling())
    return F.linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, labels.reshape(-1),
        ignore_index=-100, options=options,
    )  # fmt: skip


def opslib_loss(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids, use_cache=False).loss


# ---- measuring ----


def train(mode: str, setups: dict, optimizers: dict, data, steps: int,
          tokens_per_step: int) -> dict:  # fmt: skip
    """``steps`` training steps of every model, step by step on the same batch (the models take
    turns, in alternating order, so that the machine's drift in speed hits each alike); each
    step's loss and seconds (but for one step, the fourth, run under the profiler to measure
    its peak tensor memory, and not timed)."""
    losses = {name: [] for name in setups}
    seconds = {name: [] for name in setups}
    peak = dict.fromkeys(setups, 0)
    measured = min(3, steps - 1)

    def step(name, ids):
        (model, loss_fn), optimizer = setups[name], optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, ids)
        loss.backward()
        optimizer.step()
        return loss

    names = list(setups)
    for index in tqdm(range(steps), desc=mode, leave=False, file=sys.stdout):
        ids = next(data)
        for name in names if index % 2 == 0 else names[::-1]:
            if index == measured:
                optimizers[name].zero_grad(set_to_none=True)  # the last step's: not this one's
                peak[name], _, loss = tensor_memory(lambda: step(name, ids))  # noqa: B023
            else:
                start = time.perf_counter()
                loss = step(name, ids)
                seconds[name].append(time.perf_counter() - start)
            losses[name].append(loss.item())
    results = {}
    for name in names:
        timed = seconds[name][2:] or seconds[name]  # the first steps warm up (and compile)
        results[f"{name} {mode}"] = {
            "losses": losses[name],
            "tokens_per_s": tokens_per_step / statistics.median(timed),
            "peak_bytes": peak[name],
        }
    return results


def evaluate(loss_fn, model, tokens: torch.Tensor, seq: int) -> float:
    windows = tokens[: (tokens.numel() // seq) * seq].reshape(-1, seq)[:16]
    with torch.no_grad():
        return loss_fn(model, windows).item()


# ---- ONNX ----


class NextTokenLogits(torch.nn.Module):
    """The logits of the last position of each sequence: what sampling needs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]


def export_and_sample(model, tokenizer, prompt_ids: torch.Tensor, out: Path, new_tokens: int):
    """Export to ONNX with a fixed window of prompt_ids' length (batch dynamic), check it
    against PyTorch, and sample greedily in onnxruntime, the window sliding over the text."""
    from opslib import onnx as opslib_onnx

    model.eval()
    wrapper = NextTokenLogits(model)
    path = out / "tiny_lm.onnx"
    example = prompt_ids.repeat(2, 1)
    opslib_onnx.export(wrapper, (example,), path)
    session = opslib_onnx.onnxruntime_session(path)
    got = opslib_onnx.run_onnxruntime(session, example)[0]
    with torch.no_grad():
        difference = float(abs(torch.from_numpy(got) - wrapper(example)).max())
    window, generated = prompt_ids.clone(), []
    for _ in range(new_tokens):
        logits = opslib_onnx.run_onnxruntime(session, window.repeat(2, 1))[0][0]
        token = int(logits.argmax())
        generated.append(token)
        window = torch.cat((window[:, 1:], torch.tensor([[token]])), dim=1)
    return path, difference, tokenizer.decode(generated)


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("twin", "opslib"):
        curves.plot(results[f"{name} eager"]["losses"], label=f"{name} (eager)")
    curves.set_xlabel("step")
    curves.set_ylabel("training loss")
    curves.legend()
    curves.grid(alpha=0.3)
    labels = [k for k in results if results[k]["losses"]]
    colors = ["tab:blue" if k.startswith("twin") else "tab:orange" for k in labels]
    bars.bar(labels, [results[k]["tokens_per_s"] for k in labels], color=colors)
    bars.set_ylabel("tokens / s (median step)")
    bars.tick_params(axis="x", rotation=20)
    figure.suptitle("tiny Llama on the Python standard library: opslib vs the torch.nn twin")
    figure.tight_layout()
    path = out / "train_tiny_lm.png"
    figure.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    text = stdlib_source(args.corpus_mb)
    tokenizer = train_tokenizer(text, args.vocab)
    tokens = torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)
    held_out = tokens.numel() // 50
    train_tokens, val_tokens = tokens[:-held_out], tokens[-held_out:]
    vocab = tokenizer.get_vocab_size()
    print(f"corpus: {len(text) / 1e6:.1f} MB of stdlib source, {tokens.numel():,} tokens, "
          f"BPE vocabulary {vocab} ({time.perf_counter() - started:.0f} s)")  # fmt: skip

    twin, ours, replaced = build_models(args, vocab)
    params = sum(p.numel() for p in twin.parameters())
    print(f"model: {args.layers} layers, hidden {args.hidden}, {params / 1e6:.1f}M parameters; "
          f"opslib.swap_modules replaced {len(replaced)} modules")  # fmt: skip
    optimizers = {
        "twin": torch.optim.AdamW(twin.parameters(), lr=args.lr, fused=True),
        "opslib": opslib.optim.AdamW(ours.parameters(), lr=args.lr),
    }
    setups = {"twin": (twin, twin_loss), "opslib": (ours, opslib_loss)}
    tokens_per_step = args.batch * args.seq
    results = {}
    for mode, steps in (("eager", args.steps), ("compiled", args.compiled_steps)):
        if steps == 0:
            continue
        mode_setups = setups
        if mode == "compiled":
            torch._dynamo.reset()
            mode_setups = {name: (model, torch.compile(loss_fn, fullgraph=True))
                           for name, (model, loss_fn) in setups.items()}  # fmt: skip
        data = batches(train_tokens, args.batch, args.seq, seed=len(results) // 2)
        results.update(train(mode, mode_setups, optimizers, data, steps, tokens_per_step))
        for name in setups:
            result = results[f"{name} {mode}"]
            print(f"{name:>6} {mode:<8} loss {result['losses'][0]:.3f} -> "
                  f"{result['losses'][-1]:.3f}, {result['tokens_per_s']:,.0f} tokens/s, "
                  f"peak {result['peak_bytes'] / 2**20:,.0f} MiB a step")  # fmt: skip
    for mode in ("eager", "compiled"):
        if f"opslib {mode}" in results:
            o, t = results[f"opslib {mode}"], results[f"twin {mode}"]
            print(f"opslib / twin, {mode}: {o['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s, "
                  f"{o['peak_bytes'] / max(t['peak_bytes'], 1):.2f}x peak memory")  # fmt: skip
    for name, (model, loss_fn) in setups.items():
        print(f"{name:>6} held-out loss {evaluate(loss_fn, model, val_tokens, args.seq):.3f}")
    print(f"plot: {plot(results, args.out)}")

    prompt = tokenizer.encode("def main():\n    parser = argparse.ArgumentParser(").ids
    prompt_ids = torch.tensor([prompt[-16:]], dtype=torch.long)
    path, difference, sample = export_and_sample(ours, tokenizer, prompt_ids, args.out,
                                                 args.sample_tokens)  # fmt: skip
    print(
        f"ONNX: {path} (max |onnxruntime - PyTorch| {difference:.1e}); greedy sample after "
        f"'{tokenizer.decode(prompt[-16:])}':\n{sample}"
    )
    print(f"done in {time.perf_counter() - started:.0f} s")
    return {"results": results, "onnx_difference": difference, "sample": sample}


if __name__ == "__main__":
    main()
