"""The original design's demonstration: combine the ops, run backward, and check every gradient
against native PyTorch autograd.

    python3 examples/main.py
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from opslib import Cube, Exp, Square
from opslib.testing.opinfo import leaves, requiring_grad
from opslib.testing.opinfos import OP_TABLE


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
    """The design's small network, combining the seed ops (or their native equivalents)."""
    h = ops.learned_silu(ops.linear(x, w1, b1), slope)
    h = ops.tanh(h) + ops.relu(h) + ops.sigmoid(h)
    out = ops.linear(h, w2, b2)
    return (ops.square(out) + 0.1 * ops.cube(out) + 0.01 * ops.exp(out)).mean()


# Every op of the op table by name, as opslib computes it and as native PyTorch does.
OPSLIB = SimpleNamespace(**{info.name: info.func for info in OP_TABLE})
NATIVE = SimpleNamespace(**{info.name: info.reference for info in OP_TABLE})


def every_op_against_native() -> int:
    """Each op of the op table on its batch arguments, in float64: value and every gradient."""
    print(f"\nEvery op of the op table, float64, against {len(OP_TABLE)} native references:")
    failures = 0
    width = max(len(info.reference_text) for info in OP_TABLE) + 2
    for info in OP_TABLE:
        args = leaves(info.batch_inputs(4, "cpu", torch.float64), constant=info.constant_args)
        native_args = leaves(args, constant=info.constant_args)
        y, y_ref = info.func(*args), info.reference(*native_args)
        grad_y = torch.randn_like(y_ref)
        grads = torch.autograd.grad(y, requiring_grad(args), grad_y)
        grads_ref = torch.autograd.grad(y_ref, requiring_grad(native_args), grad_y)
        err = max(
            (a - b).abs().max().item()
            for a, b in zip((y, *grads), (y_ref, *grads_ref), strict=True)
        )
        ok = err <= 1e-10
        failures += not ok
        verdict = "PASS" if ok else "FAIL"
        print(f"  {info.name:<22}{info.reference_text:<{width}}{err:>12.3e}  {verdict}")
    return failures


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
        f"\nThe design's network of the seed ops, float64: loss {loss.item():.12f} "
        f"(native {loss_ref.item():.12f})"
    )
    print(f"  {'gradient of':<18}{'shape':<12}{'max |opslib - native|':>24}  result")
    failures = 0
    for name, a, b in zip(params, ours, native, strict=True):
        err = (a.grad - b.grad).abs().max().item()
        ok = torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)
        failures += not ok
        print(f"  {name:<18}{str(list(a.shape)):<12}{err:>24.3e}  {'PASS' if ok else 'FAIL'}")
    failures += every_op_against_native()
    print("\nAll gradients match native autograd." if not failures else f"\n{failures} FAILED.")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
