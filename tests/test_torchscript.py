"""TorchScript (deprecated upstream, kept working): script and trace modules that call the ops,
save, load in a fresh process that imports opslib, run forward and backward."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import opslib
from opslib.models import MLPClassifier

# TorchScript warns on every call that it is deprecated; silenced here, and only here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class EveryOp(torch.nn.Module):
    """Calls all eight ops, linear with and without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.with_bias = opslib.nn.Linear(6, 8)
        self.without_bias = opslib.nn.Linear(8, 4, bias=False)
        self.silu = opslib.nn.LearnedSiLU(init=0.8, num_parameters=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = opslib.relu(self.silu(self.with_bias(x)))
        out = opslib.tanh(self.without_bias(h)) + opslib.sigmoid(opslib.square(h)).mean()
        return out + 0.01 * (opslib.cube(out) + opslib.exp(out))


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("model_cls", [EveryOp, MLPClassifier], ids=["every-op", "mlp"])
def test_torchscript_round_trip_in_a_fresh_process(how, model_cls, tmp_path):
    torch.manual_seed(0)
    model = model_cls()
    x = torch.randn(5, 6 if model_cls is EveryOp else 64)
    converted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    torch.testing.assert_close(converted(x), model(x))
    converted.save(tmp_path / "model.ts")
    x_other = torch.randn(3, x.shape[1])
    out = model(x_other)
    out.sum().backward()
    torch.save({"x": x_other, "expected": out.detach()}, tmp_path / "io.pt")

    code = """
        import sys, warnings, torch, opslib
        warnings.simplefilter("ignore")
        io = torch.load(sys.argv[2])
        loaded = torch.jit.load(sys.argv[1])
        out = loaded(io["x"])
        torch.testing.assert_close(out, io["expected"])
        out.sum().backward()
        assert all(p.grad is not None for p in loaded.parameters())
        print("ok")
        """
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(code),
            str(tmp_path / "model.ts"),
            str(tmp_path / "io.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
