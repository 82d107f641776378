"""Benchmark inputs and settings of each op of the op table, by op name: what the benchmark
scripts time and plot, kept apart from the test data (opslib/testing/opinfos/).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from opslib.ops.conv import conv_flops, native_conv
from opslib.testing.opinfos.losses import _targets
from opslib.testing.opinfos.norms import _running_stats


def elements_label(size: int) -> str:
    """16, 4K, 256K, 4M: a benchmark size as the tables print it."""
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


@dataclass(frozen=True)
class BenchInfo:
    """How the benchmarks time one op of the op table (``opslib.testing.opinfos``)."""

    # sizes from per-call overhead (16 elements) to large, and the op's arguments at one size
    sizes: tuple[int, ...]
    inputs: Callable[[int, torch.device | str, torch.dtype], tuple]
    # the hardware limit the op is judged against: "bandwidth" or "matmul"
    roofline: str = "bandwidth"
    # More inputs to time, by name: benchmarks report each as its own row, "<op>[<name>]".
    variants: dict[str, Callable[[int, torch.device | str, torch.dtype], tuple]] = field(
        default_factory=dict
    )
    # roofline "matmul": floating-point operations of one forward call at a benchmark size
    forward_flops: Callable[[int], float] | None = None
    size_unit: str = "elements"  # what a benchmark size counts, for plot axes
    size_label: Callable[[int], str] = elements_label
    # What the op is timed against, where that is not the OpInfo's reference (conv: native's
    # own half-precision kernels, which the tests' reference does not call).
    reference: Callable[..., Any] | None = None
    # Also time the eager op against torch.compile of its reference: for ops whose eager path is
    # itself fused, the question is whether that is as good as what the compiler makes.
    against_compiled: bool = False
    # peak_memory.py: the size at which the peak memory of one forward + backward is compared
    # with native's (ops whose point is memory); None: not measured ...
    peak_memory_size: int | None = None
    # ... and the sizes at which it also draws the curve of peak memory and time (attention)
    memory_curve: tuple[int, ...] = ()
    # Other implementations peak_memory.py measures besides native, by name (attention's
    # textbook composite, whose memory the op's blocks are there to avoid).
    baselines: dict[str, Callable[..., Tensor]] = field(default_factory=dict)
    # Arguments passed without grad in the timed calls, besides the OpInfo's constant_args
    # (rotary_embedding's cos and sin, which a model computes from a buffer): the case to time.
    no_grad_args: tuple[int, ...] = ()

    def constant_args(self, info) -> tuple[int, ...]:
        """The positions of the arguments the timed calls pass without grad."""
        return tuple(info.constant_args) + self.no_grad_args


@dataclass(frozen=True)
class UpdateBenchInfo:
    """How optimizer_step.py times an update op: the optimizers to time on the same
    parameters, by name, opslib's first; and the parameter-sized tensors one step must read or
    write at least."""

    optimizers: Callable[[list[Tensor]], dict[str, torch.optim.Optimizer]]
    traffic: int


def _rows_bench(numel: int, device, dtype) -> tuple:
    """x as rows of 4096 (16M elements: [4096, 4096]), along the last dim."""
    width = min(numel, 4096)
    return (torch.randn(numel // width, width, device=device, dtype=dtype) * 4, -1)


def _rms_norm_bench(numel: int, device, dtype) -> tuple:
    """Rows of 4096 (16M elements: [4096, 4096]) with a weight, as a transformer's norm."""
    width = min(numel, 4096)
    return (
        torch.randn(numel // width, width, device=device, dtype=dtype),
        [width],
        torch.rand(width, device=device, dtype=dtype) + 0.5,
        None,
    )


def _layer_norm_bench(numel: int, device, dtype) -> tuple:
    x, shape, weight, _ = _rms_norm_bench(numel, device, dtype)
    return (x, shape, weight, torch.randn(shape, device=device, dtype=dtype), 1e-5)


CROSS_ENTROPY_BENCH_CLASSES = 32768  # a vocabulary: [8192, 32768] logits at 256M elements


def _cross_entropy_bench(numel: int, device, dtype) -> tuple:
    classes = min(numel, CROSS_ENTROPY_BENCH_CLASSES)
    rows = numel // classes
    # logits of a trained model's scale: standard normal (FACTS: large ones go denormal)
    return (
        torch.randn(rows, classes, device=device, dtype=dtype),
        _targets((rows,), classes, device),
        None,
        -100,
        "mean",
        0.0,
    )


LCE_BENCH_HIDDEN, LCE_BENCH_CLASSES = 1024, 32768  # the issue's: hidden 1024, vocabulary 32K


def _linear_cross_entropy_bench(tokens: int, device, dtype) -> tuple:
    """Hidden states [tokens, 1024] of a trained model's scale, a [32768, 1024] output
    projection initialised as nn.Linear's (logits of std ~0.6: FACTS, no denormals)."""
    hidden, classes = (4, 4) if tokens == 1 else (LCE_BENCH_HIDDEN, LCE_BENCH_CLASSES)
    return (
        torch.randn(tokens, hidden, device=device, dtype=dtype),
        torch.empty(classes, hidden, device=device, dtype=dtype).uniform_(-1, 1) / hidden**0.5,
        _targets((tokens,), classes, device),
        None,
        -100,
        "mean",
        0.0,
    )


def native_chunked_linear_cross_entropy(
    x, weight, target, bias=None, ignore_index=-100, reduction="mean", label_smoothing=0.0
) -> Tensor:
    """torch's own fused loss (2.13+): F.linear_cross_entropy, chunked over the batch with
    LinearCrossEntropyOptions() (its "auto" picks for the device and dtype)."""
    return F.linear_cross_entropy(
        x, weight, target, linear_bias=bias, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, options=torch.nn.LinearCrossEntropyOptions(),
    )  # fmt: skip


def _linear_cross_entropy_flops(tokens: int) -> float:
    hidden, classes = (4, 4) if tokens == 1 else (LCE_BENCH_HIDDEN, LCE_BENCH_CLASSES)
    return 2 * tokens * hidden * classes


def _batch_norm_bench(numel: int, device, dtype) -> tuple:
    """Training, BatchNorm1d on [rows, channels]: [4096, 4096] at 16M elements."""
    channels = min(max(numel // 4, 1), 4096)
    rm, rv = _running_stats(channels, device, dtype)
    return (
        torch.randn(numel // channels, channels, device=device, dtype=dtype),
        rm,
        rv,
        torch.rand(channels, device=device, dtype=dtype) + 0.5,
        torch.randn(channels, device=device, dtype=dtype),
        True,
        0.1,
        1e-5,
    )


POINTWISE_BENCH_SIZES = (16, 4096, 262_144, 4_194_304, 16_777_216)  # elements of x


LINEAR_BENCH_ROWS = (1, 64, 1024, 4096, 8192)  # x [rows, 1024] @ W [1024, 1024]ᵀ; rows 1: tiny


def _unary_bench(numel: int, device, dtype) -> tuple[Tensor, ...]:
    return (torch.randn(numel, device=device, dtype=dtype),)


def linear_bench_shape(rows: int) -> tuple[int, int, int]:
    """(rows, in, out): 1 row is the per-call-overhead case, [1, 4] x [4, 4] (16 elements)."""
    return (1, 4, 4) if rows == 1 else (rows, 1024, 1024)


def _linear_bench_flops(rows: int) -> float:
    m, k, n = linear_bench_shape(rows)
    return 2 * m * k * n


def _linear_bench_label(rows: int) -> str:
    m, k, n = linear_bench_shape(rows)
    return f"[{m},{k}]x[{k},{n}]"


def _linear_bench(rows: int, device, dtype) -> tuple[Tensor, ...]:
    m, k, n = linear_bench_shape(rows)
    return (
        torch.randn(m, k, device=device, dtype=dtype),
        torch.randn(n, k, device=device, dtype=dtype) / k**0.5,
        torch.randn(n, device=device, dtype=dtype),
    )


def _learned_silu_bench(numel: int, device, dtype) -> tuple[Tensor, ...]:
    return (
        torch.randn(numel, device=device, dtype=dtype),
        torch.tensor([0.75], device=device, dtype=dtype),
    )


def _learned_silu_bench_parameter(numel: int, device, dtype) -> tuple[Tensor, ...]:
    """The slope an nn.Parameter, as opslib.nn.LearnedSiLU passes it."""
    x, slope = _learned_silu_bench(numel, device, dtype)
    return x, torch.nn.Parameter(slope)


def _learned_silu_bench_per_channel(numel: int, device, dtype) -> tuple[Tensor, ...]:
    """One slope per channel of x's last dim, as opslib.nn.LearnedSiLU(num_parameters=C)."""
    channels = min(numel, 1024)
    return (
        torch.randn(numel // channels, channels, device=device, dtype=dtype),
        torch.nn.Parameter(torch.rand(channels, device=device, dtype=dtype) + 0.5),
    )


def _swiglu_bench(numel: int, device, dtype) -> tuple[Tensor, ...]:
    return (
        torch.randn(numel, device=device, dtype=dtype),
        torch.randn(numel, device=device, dtype=dtype),
    )


def _rotary_bench(numel: int, device, dtype) -> tuple[Tensor, ...]:
    """q as a Llama attention rotates it: [1, H, L, D] viewed from [1, L, H, D], D = 64, cos and
    sin [1, 1, L, D] of constant positions (no gradient), L up to 1024."""
    d = min(64, numel)
    length = min(1024, numel // d)
    heads = numel // (length * d)
    x = torch.randn(1, length, heads, d, device=device, dtype=dtype).transpose(1, 2)
    angles = torch.rand(1, 1, length, d, device=device, dtype=dtype)
    return x, angles.cos(), angles.sin()


def math_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False) -> Tensor:  # fmt: skip
    """Attention as the textbook writes it in torch ops, softmax(q kᵀ·scale + m) v: autograd
    saves its [L, S] scores and probabilities (the benchmarks' "math" baseline)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if enable_gqa:
        groups = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
    s = (q * scale) @ k.transpose(-2, -1)
    if is_causal:
        above = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1)
        s = s.masked_fill(above, -math.inf)
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        s = s.masked_fill(~attn_mask, -math.inf)
    elif attn_mask is not None:
        s = s + attn_mask
    return torch.softmax(s, -1) @ v


ATTENTION_BENCH_HEADS, ATTENTION_BENCH_HEAD_DIM = 8, 64  # the issue's: batch 1, 8 heads, dim 64


def _attention_bench(length: int, device, dtype) -> tuple:
    """Self-attention of batch 1, 8 heads of dim 64, L = S = length, causal off, no mask."""
    q, k, v = (
        torch.randn(
            1, ATTENTION_BENCH_HEADS, length, ATTENTION_BENCH_HEAD_DIM, device=device, dtype=dtype
        )  # fmt: skip
        for _ in range(3)
    )
    return (q, k, v, None, 0.0, False, None, False)


def _attention_bench_causal(length: int, device, dtype) -> tuple:
    return (*_attention_bench(length, device, dtype)[:5], True, None, False)


def _attention_bench_decoder(length: int, device, dtype) -> tuple:
    """A Llama decoder's attention: causal, grouped-query (8 query heads, 2 key/value heads),
    q, k, v the transposed views transformers makes of [1, L, heads, 64]."""
    q, k, v = (
        torch.randn(1, length, heads, ATTENTION_BENCH_HEAD_DIM, device=device, dtype=dtype)
        .transpose(1, 2)
        for heads in (ATTENTION_BENCH_HEADS, 2, 2)
    )  # fmt: skip
    return (q, k, v, None, 0.0, True, None, True)


def _attention_flops(length: int) -> float:
    """Forward: Q Kᵀ and P V, 2·L·S·E each, per head."""
    return 2 * 2 * ATTENTION_BENCH_HEADS * length * length * ATTENTION_BENCH_HEAD_DIM


CONV_BENCH_CHANNELS, CONV_BENCH_SPATIAL = 64, 56  # the issue's [32, 64, 56, 56], 3x3, 64 -> 64


def _conv_bench(dims: int) -> Callable[[int, Any, torch.dtype], tuple]:
    def bench(batch: int, device, dtype) -> tuple:
        """batch 1: [1, 1, 4(, 4)] (overhead); else [batch, 64, 56(, 56)] with a 3(x3) kernel to
        64 channels, padding 1 (a ResNet stage)."""
        tiny = batch == 1
        c = 1 if tiny else CONV_BENCH_CHANNELS
        side = 4 if tiny else CONV_BENCH_SPATIAL
        fan_in = c * 3**dims
        return (
            torch.randn(batch, c, *((side,) * dims), device=device, dtype=dtype),
            torch.randn(c, c, *((3,) * dims), device=device, dtype=dtype) / fan_in**0.5,
            torch.zeros(c, device=device, dtype=dtype),
            [1] * dims,
            [1] * (2 * dims),
            [1] * dims,
            1,
        )

    return bench


def _conv_bench_flops(dims: int) -> Callable[[int], float]:
    def flops(batch: int) -> float:
        c, side = (1, 4) if batch == 1 else (CONV_BENCH_CHANNELS, CONV_BENCH_SPATIAL)
        return conv_flops(batch, c, c, (side,) * dims, (3,) * dims)

    return flops


def _adam_bench_optimizers(params: list[Tensor]) -> dict[str, torch.optim.Optimizer]:
    from opslib.optim import Adam

    return {
        "opslib.optim.Adam": Adam(params, lr=1e-3),
        "torch Adam(foreach=True)": torch.optim.Adam(params, lr=1e-3, foreach=True),
        "torch Adam(fused=True)": torch.optim.Adam(params, lr=1e-3, fused=True),
    }


def _conv_bench_info(dims: int) -> BenchInfo:
    shape, side = ("[N, C, L]", ",56") if dims == 1 else ("[N, C, H, W]", ",56,56")
    tiny = "[1,1,4]" if dims == 1 else "[1,1,4,4]"
    return BenchInfo(
        sizes=(1, 8, 32),
        inputs=_conv_bench(dims),
        roofline="matmul",
        forward_flops=_conv_bench_flops(dims),
        size_unit=f"batch of {shape} (64 channels, 56 wide, 3-wide kernel)",
        size_label=lambda n: tiny if n == 1 else f"[{n},64{side}]",
        reference=native_conv(dims, half_in_float32=False),
    )


BENCH: dict[str, BenchInfo] = {
    "square": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_unary_bench,
    ),
    "cube": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_unary_bench,
    ),
    "exp": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_unary_bench,
    ),
    "relu": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_unary_bench,
    ),
    "sigmoid": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_unary_bench,
    ),
    "tanh": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_unary_bench,
    ),
    "linear": BenchInfo(
        sizes=LINEAR_BENCH_ROWS,
        inputs=_linear_bench,
        roofline="matmul",
        forward_flops=_linear_bench_flops,
        size_unit="rows of x",
        size_label=_linear_bench_label,
    ),
    "learned_silu": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_learned_silu_bench,
        against_compiled=True,
        variants={
            "nn.Parameter slope": _learned_silu_bench_parameter,
            "per-channel": _learned_silu_bench_per_channel,
        },
    ),
    "swiglu": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_swiglu_bench,
        against_compiled=True,
    ),
    "softmax": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_rows_bench,
        size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
    ),
    "log_softmax": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_rows_bench,
        size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
    ),
    "rms_norm": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_rms_norm_bench,
        size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
        against_compiled=True,
    ),
    "layer_norm": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_layer_norm_bench,
        size_label=lambda n: f"[{n // min(n, 4096)},{min(n, 4096)}]",
    ),
    "batch_norm": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_batch_norm_bench,
        size_label=lambda n: f"[{n // min(max(n // 4, 1), 4096)},{min(max(n // 4, 1), 4096)}]",
        against_compiled=True,
    ),
    "cross_entropy": BenchInfo(
        sizes=(16, 262_144, 16_777_216, 268_435_456),
        inputs=_cross_entropy_bench,
        size_label=lambda n: f"[{n // min(n, 32768)},{min(n, 32768)}]",
        against_compiled=True,
        peak_memory_size=268_435_456,  # [8192, 32768] logits
    ),
    "linear_cross_entropy": BenchInfo(
        sizes=(1, 16, 1024, 4096),
        inputs=_linear_cross_entropy_bench,
        roofline="matmul",
        forward_flops=_linear_cross_entropy_flops,
        size_unit="tokens",
        peak_memory_size=4096,  # 4096 tokens, hidden 1024, vocabulary 32768
        baselines=(
            {"chunked": native_chunked_linear_cross_entropy}
            if hasattr(torch.nn, "LinearCrossEntropyOptions")
            else {}
        ),
        size_label=lambda n: "[1,4]x[4,4]" if n == 1 else f"[{n},1024]x[1024,32768]",
    ),
    "rotary_embedding": BenchInfo(
        sizes=POINTWISE_BENCH_SIZES,
        inputs=_rotary_bench,
        against_compiled=True,
        no_grad_args=(1, 2),
    ),
    "scaled_dot_product_attention": BenchInfo(
        sizes=(16, 128, 512, 1024, 4096),
        inputs=_attention_bench,
        variants={"causal": _attention_bench_causal, "decoder": _attention_bench_decoder},
        roofline="matmul",
        forward_flops=_attention_flops,
        size_unit="sequence length L = S (batch 1, 8 heads, dim 64)",
        size_label=lambda n: f"L={n}",
        peak_memory_size=4096,
        memory_curve=(512, 1024, 2048, 4096, 8192),
        baselines={"math": math_attention},
    ),
    "conv1d": _conv_bench_info(1),
    "conv2d": _conv_bench_info(2),
}
UPDATE_BENCH: dict[str, UpdateBenchInfo] = {
    "adam_step_": UpdateBenchInfo(
        optimizers=_adam_bench_optimizers,
        traffic=7,  # read p, g, m, v; write p, m, v
    ),
}


def bench_native(info) -> Callable[..., Any]:
    """The native function the benchmarks time an op against."""
    return BENCH[info.name].reference or info.reference
