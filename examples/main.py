"""The original design's demonstration: combine the ops, run backward, and check every gradient
against native PyTorch autograd.

    python3 examples/main.py
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import opslib
from opslib import Cube, Exp, Square


def scalar_examples() -> None:
    print("Single ops at x = 2 (value, gradient):")
    for name, cls, expected in [
        ("Square", Square, (4.0, 4.0)),
        ("Cube", Cube, (8.0, 12.0)),
        ("Exp", Exp, (math.e**2, math.e**2)),
    ]:
        x = torch.tensor(2.0, requires_grad=True)
        y = cls.apply(x)
        y.backward()
        print(
            f"  {name}.apply(2) = {y.item():.4f}, d/dx = {x.grad.item():.4f}  "
            f"(expected {expected[0]:.4f}, {expected[1]:.4f})"
        )


def network(x, w1, b1, slope, w2, b2, ops) -> torch.Tensor:
    """A small network that uses all eight ops (or their native equivalents)."""
    h = ops["learned_silu"](ops["linear"](x, w1, b1), slope)
    h = ops["tanh"](h) + ops["relu"](h) + ops["sigmoid"](h)
    out = ops["linear"](h, w2, b2)
    return (ops["square"](out) + 0.1 * ops["cube"](out) + 0.01 * ops["exp"](out)).mean()


OPSLIB = {
    "linear": opslib.linear,
    "learned_silu": opslib.learned_silu,
    "tanh": opslib.tanh,
    "relu": opslib.relu,
    "sigmoid": opslib.sigmoid,
    "square": opslib.square,
    "cube": opslib.cube,
    "exp": opslib.exp,
}
NATIVE = {
    "linear": F.linear,
    "learned_silu": lambda x, a: a * x * torch.sigmoid(x),
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "square": torch.square,
    "cube": lambda x: torch.pow(x, 3),
    "exp": torch.exp,
}


def main() -> int:
    torch.manual_seed(0)
    scalar_examples()

    batch, d_in, d_hidden, d_out = 8, 16, 32, 4
    params = {
        "x": torch.randn(batch, d_in, dtype=torch.float64),
        "w1": torch.randn(d_hidden, d_in, dtype=torch.float64) / d_in**0.5,
        "b1 [1, hidden]": torch.randn(1, d_hidden, dtype=torch.float64),
        "slope [hidden]": torch.rand(d_hidden, dtype=torch.float64) + 0.5,
        "w2": torch.randn(d_out, d_hidden, dtype=torch.float64) / d_hidden**0.5,
        "b2 [batch, out]": torch.randn(batch, d_out, dtype=torch.float64),
    }
    ours = [p.clone().requires_grad_() for p in params.values()]
    native = [p.clone().requires_grad_() for p in params.values()]
    loss = network(*ours, OPSLIB)
    loss_ref = network(*native, NATIVE)
    loss.backward()
    loss_ref.backward()

    print(
        f"\nNetwork of all eight ops, float64: loss {loss.item():.12f} "
        f"(native {loss_ref.item():.12f})"
    )
    print(f"  {'gradient of':<18}{'shape':<12}{'max |opslib - native|':>24}  result")
    failures = 0
    for name, a, b in zip(params, ours, native, strict=True):
        err = (a.grad - b.grad).abs().max().item()
        ok = torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)
        failures += not ok
        print(f"  {name:<18}{str(list(a.shape)):<12}{err:>24.3e}  {'PASS' if ok else 'FAIL'}")
    print("\nAll gradients match native autograd." if not failures else f"\n{failures} FAILED.")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
