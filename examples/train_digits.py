"""Train a digits classifier built only from opslib modules, under torch.compile.

    python3 examples/train_digits.py            # ~30 s on 2 CPU cores, >= 95% test accuracy

Data: scikit-learn's bundled 8x8 digits (1797 images, shipped inside scikit-learn; no download).
The model (opslib.models.MLPClassifier) is Linear -> LearnedSiLU -> Linear -> Tanh -> Linear,
every layer a customgrad op. The script trains it compiled (fullgraph, dynamic batch), reports
eager vs compiled step time, and saves the trained model as an exported program (.pt2) and as
ONNX (standard operators only), which it runs in onnxruntime: accuracy, agreement with PyTorch
(same predicted class on every test image, max logit difference) and inference latency of both.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from opslib import onnx as opslib_onnx
from opslib.models import MLPClassifier

ROOT = Path(__file__).resolve().parents[1]


def load_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixels are 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    model = MLPClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)

    def train_step(forward, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(xb), yb)
        loss.backward()
        optimizer.step()
        return loss

    print(
        f"digits: {len(x_tr)} train / {len(x_te)} test images, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    start = time.perf_counter()
    train_step(compiled, x_tr[: args.batch_size], y_tr[: args.batch_size])  # compiles
    compile_seconds = time.perf_counter() - start
    with tqdm(range(args.epochs), desc="training (compiled)", unit="epoch") as bar:
        for _ in bar:
            order = torch.randperm(len(x_tr))
            for i in range(0, len(x_tr), args.batch_size):
                idx = order[i : i + args.batch_size]
                loss = train_step(compiled, x_tr[idx], y_tr[idx])
            bar.set_postfix(
                loss=f"{loss.item():.3f}", test_acc=f"{accuracy(model, x_te, y_te):.3f}"
            )
    train_seconds = time.perf_counter() - start
    test_acc = accuracy(model, x_te, y_te)
    print(
        f"trained {args.epochs} epochs in {train_seconds:.1f} s, of which {compile_seconds:.1f} s "
        f"was the first (compiling) step: test accuracy {100 * test_acc:.2f}%"
    )

    # Step time at one batch size, after warm-up: the same train_step, eager vs compiled. The
    # timing steps train too, so the trained state is put back afterwards.
    trained = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    xb, yb = x_tr[: args.batch_size], y_tr[: args.batch_size]
    eager_ms = median_ms(lambda: train_step(model, xb, yb), repeats=30)
    compiled_ms = median_ms(lambda: train_step(compiled, xb, yb), repeats=30)
    model.load_state_dict(trained[0])
    optimizer.load_state_dict(trained[1])
    print(
        f"train step, batch {args.batch_size}: eager {eager_ms:.3f} ms, compiled "
        f"{compiled_ms:.3f} ms ({eager_ms / compiled_ms:.2f}x), median of 30"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model.eval(), (x_te[:8],), dynamic_shapes={"x": {0: batch}})
    pt2_path = args.out / "digits_classifier.pt2"
    torch.export.save(program, pt2_path)
    reloaded = torch.export.load(pt2_path).module()
    same = torch.equal(reloaded(x_te).argmax(1), model(x_te).argmax(1))
    ops = sorted({str(n.target) for n in program.graph.nodes if "customgrad" in str(n.target)})
    print(f"saved exported program {pt2_path} ({', '.join(ops)})")
    print(f"reloaded .pt2 gives identical predictions: {same}")

    onnx_path = args.out / "digits_classifier.onnx"
    opslib_onnx.export(model, (x_te[:8],), onnx_path)
    session = opslib_onnx.onnxruntime_session(onnx_path)
    (ort_logits,) = opslib_onnx.run_onnxruntime(session, x_te)
    with torch.no_grad():
        torch_logits = model(x_te)
    ort_logits = torch.from_numpy(ort_logits)
    ort_acc = (ort_logits.argmax(1) == y_te).float().mean().item()
    agree = int((ort_logits.argmax(1) == torch_logits.argmax(1)).sum())
    max_diff = (ort_logits - torch_logits).abs().max().item()
    print(
        f"saved ONNX {onnx_path}; onnxruntime test accuracy {100 * ort_acc:.2f}%, same class "
        f"as PyTorch on {agree}/{len(x_te)} test images, max |logit difference| {max_diff:.2e}"
    )
    for rows in (1, len(x_te)):
        xb = x_te[:rows]
        torch_ms = median_ms(lambda xb=xb: _no_grad(model, xb))
        ort_ms = median_ms(lambda xb=xb: opslib_onnx.run_onnxruntime(session, xb))
        print(
            f"inference latency, batch {rows}: PyTorch eager {torch_ms:.3f} ms, "
            f"onnxruntime {ort_ms:.3f} ms (median of 100)"
        )

    print(f"final test accuracy {100 * test_acc:.2f}%")
    return 0 if test_acc >= 0.95 and same and agree == len(x_te) else 1


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def median_ms(fn, repeats: int = 100) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
