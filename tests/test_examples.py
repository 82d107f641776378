"""The examples run as a user would run them, and say what they promise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opslib.testing.opinfos import OP_TABLE

ROOT = Path(__file__).resolve().parents[1]


def run_example(*argv: str, timeout: int = 300, env: dict | None = None) -> tuple[str, str]:
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, result.stderr


@pytest.mark.every_op
def test_main_demo_checks_every_gradient_against_native():
    out, _ = run_example("examples/main.py")
    assert "Square.apply(2) = 4.0000, d/dx = 4.0000" in out
    assert "Cube.apply(2) = 8.0000" in out and "Exp.apply(2) = 7.3891" in out
    # the design network's six gradients, then one row per op of the table
    assert out.count("PASS") == 6 + len(OP_TABLE) and "FAIL" not in out


def test_digits_example_trains_to_95_percent_and_saves_an_exported_program(tmp_path):
    out, err = run_example(
        "examples/train_digits.py",
        "--out",
        str(tmp_path),
        timeout=600,
        env={"TORCH_LOGS": "recompiles"},  # dynamo logs every recompile, with its reason
    )
    assert "Recompiling" not in err, err[-3000:]
    accuracy = float(out.split("final test accuracy ")[1].split("%")[0])
    assert accuracy >= 95.0, out
    assert "reloaded .pt2 gives identical predictions: True" in out
    assert "eager" in out and "compiled" in out
    assert "compiling the model" in out and "with no recompile after the warm-up" in out
    assert (tmp_path / "training_mlp.png").stat().st_size > 10_000
    assert (tmp_path / "digits_classifier.pt2").stat().st_size > 0
    assert "same class as PyTorch on 360/360 test images" in out
    assert "onnxruntime" in out and (tmp_path / "digits_classifier.onnx").stat().st_size > 0


@pytest.mark.slow  # ~40 s (its ops are the op table's: conv2d, batch_norm, cross_entropy)
def test_digits_cnn_example_trains_compiled_and_runs_in_onnxruntime(tmp_path):
    """The second example: conv2d, batch norm and cross_entropy, compiled without recompiles,
    exported (.pt2 and ONNX) and run in onnxruntime with the same predictions."""
    out, err = run_example(
        "examples/train_digits.py", "--model", "cnn", "--epochs", "15", "--out", str(tmp_path),
        timeout=600, env={"TORCH_LOGS": "recompiles"},
    )  # fmt: skip
    assert "Recompiling" not in err, err[-3000:]
    accuracy = float(out.split("final test accuracy ")[1].split("%")[0])
    assert accuracy >= 95.0, out
    assert "reloaded .pt2 gives identical predictions: True" in out
    assert "customgrad.conv2d.default" in out
    assert "same class as PyTorch on 360/360 test images" in out
    assert (tmp_path / "digits_cnn.onnx").stat().st_size > 0


TINY_LM_SMALL = ("--corpus-mb", "1", "--vocab", "1024", "--layers", "2", "--hidden", "64",
                 "--seq", "32", "--batch", "4")  # fmt: skip


def _tiny_lm_figures(out: str) -> dict[str, str]:
    return {line.split(" loss ")[0].strip(): line for line in out.splitlines() if " -> " in line}


def test_tiny_lm_example_trains_both_models_alike_and_samples_from_onnx(tmp_path):
    """examples/train_tiny_lm.py at a few steps and a small size: the tokenizer trained on the
    standard library, the same loss for opslib and the twin at every printed point, the plot,
    and the ONNX model (onnxruntime = PyTorch) sampled from."""
    out, _ = run_example("examples/train_tiny_lm.py", "--steps", "4", "--compiled-steps", "0",
                         *TINY_LM_SMALL, "--out", str(tmp_path))  # fmt: skip
    assert "BPE vocabulary 1024" in out and "opslib.swap_modules replaced 25 modules" in out
    figures = _tiny_lm_figures(out)
    twin, ours = figures["twin eager"], figures["opslib eager"]
    assert twin.split(",")[0].split("loss ")[1] == ours.split(",")[0].split("loss ")[1]
    for line in (twin, ours):  # the profiled step's peak tensor memory: a step's worth, at least
        assert float(line.split("peak ")[1].split(" MiB")[0].replace(",", "")) > 0, line
    held_out = [line.split("held-out loss ")[1] for line in out.splitlines() if "held-out" in line]
    assert len(held_out) == 2 and abs(float(held_out[0]) - float(held_out[1])) < 1e-3, out
    assert (tmp_path / "train_tiny_lm.png").stat().st_size > 10_000
    assert (tmp_path / "tiny_lm.onnx").stat().st_size > 0
    difference = float(out.split("max |onnxruntime - PyTorch| ")[1].split(")")[0])
    assert difference < 1e-4, out
    assert "greedy sample after" in out


@pytest.mark.slow
def test_tiny_lm_example_trains_compiled(tmp_path):
    """The compiled phase (fullgraph, both models): slow, a minute of compiling."""
    out, _ = run_example("examples/train_tiny_lm.py", "--steps", "2", "--compiled-steps", "3",
                         *TINY_LM_SMALL, "--out", str(tmp_path), timeout=900)  # fmt: skip
    assert "opslib / twin, compiled" in out
