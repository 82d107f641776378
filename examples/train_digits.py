"""Train a digits classifier built only from opslib modules, under torch.compile.

    python3 examples/train_digits.py               # the MLP: ~25 s on 2 CPU cores the first
                                                   # time, ~6 s later; >= 95%
    python3 examples/train_digits.py --model cnn   # the CNN on 1x8x8 images (conv2d, batch norm)

Data: scikit-learn's bundled 8x8 digits (1797 images, shipped inside scikit-learn; no download).
The model (opslib.models.MLPClassifier) is Linear -> LayerNorm -> LearnedSiLU -> Linear -> Tanh
-> Linear, every layer a customgrad op; it trains on ``model.loss``, where the last Linear and the
cross-entropy are one fused linear_cross_entropy, with opslib.optim.Adam (one fused update op).
``--model cnn`` trains opslib.models.DigitsCNN instead: Conv2d -> BatchNorm2d -> ReLU -> Conv2d
(stride 2) -> ReLU -> Linear on the images as 1x8x8, with opslib.nn.CrossEntropyLoss.
The script trains it compiled (fullgraph, dynamic batch), reports
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
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import opslib
from opslib import onnx as opslib_onnx
from opslib.models import DigitsCNN, MLPClassifier

ROOT = Path(__file__).resolve().parents[1]
# What the first compile took, measured on 2 CPU cores (docs/guides/quickstart.md): with a
# cold inductor cache, and with one that already holds this model's graphs.
COMPILE_SECONDS_COLD, COMPILE_SECONDS_WARM = 20, 4


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
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    model = MLPClassifier() if args.model == "mlp" else DigitsCNN()
    name = "digits_classifier" if args.model == "mlp" else "digits_cnn"
    optimizer = opslib.optim.Adam(model.parameters(), lr=3e-3)
    compiled = torch.compile(model.loss, fullgraph=True, dynamic=True)

    def train_step(loss_of, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(xb, yb)
        loss.backward()
        optimizer.step()
        return loss

    print(
        f"digits: {len(x_tr)} train / {len(x_te)} test images, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    run_start = time.perf_counter()
    # The warm-up batch is made like every training batch (rows picked by index: a fresh
    # tensor, not a view of x_tr), and the batch dim of images and labels is marked dynamic:
    # 64 rows equal the model's 64 input features, which dynamo would otherwise unify with them
    # and specialise.
    idx = torch.randperm(len(x_tr))[: args.batch_size]
    xw, yw = x_tr[idx], y_tr[idx]
    torch._dynamo.mark_dynamic(xw, 0)
    torch._dynamo.mark_dynamic(yw, 0)
    print(
        f"compiling the model and its backward (about {COMPILE_SECONDS_COLD} s the first time on "
        f"2 cores, ~{COMPILE_SECONDS_WARM} s once inductor's cache holds it)...",
        flush=True,
    )
    start = time.perf_counter()
    train_step(compiled, xw, yw)
    compile_seconds = time.perf_counter() - start
    history: dict[str, list[float]] = {"loss": [], "test_acc": []}
    # From here on a recompile would raise: every batch size reuses the warm-up's graphs.
    with torch.compiler.set_stance("fail_on_recompile"):
        start = time.perf_counter()
        with tqdm(range(args.epochs), desc="training (compiled)", unit="epoch") as bar:
            for _ in bar:
                order = torch.randperm(len(x_tr))
                losses = []
                for i in range(0, len(x_tr), args.batch_size):
                    idx = order[i : i + args.batch_size]
                    losses.append(train_step(compiled, x_tr[idx], y_tr[idx]).item())
                history["loss"].append(statistics.fmean(losses))
                history["test_acc"].append(accuracy(model, x_te, y_te))
                bar.set_postfix(
                    loss=f"{history['loss'][-1]:.3f}", test_acc=f"{history['test_acc'][-1]:.3f}"
                )
        train_seconds = time.perf_counter() - start
        test_acc = accuracy(model, x_te, y_te)
        print(
            f"compiled in {compile_seconds:.1f} s; trained {args.epochs} epochs in "
            f"{train_seconds:.1f} s with no recompile after the warm-up: test accuracy "
            f"{100 * test_acc:.2f}%"
        )

        # Step time at one batch size, after warm-up: the same train_step, eager vs compiled.
        # The timing steps train too, so the trained state is put back afterwards.
        trained = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
        eager_ms = median_ms(lambda: train_step(model.loss, xw, yw), repeats=30)
        compiled_ms = median_ms(lambda: train_step(compiled, xw, yw), repeats=30)
    model.load_state_dict(trained[0])
    optimizer.load_state_dict(trained[1])
    print(
        f"train step, batch {args.batch_size}: eager {eager_ms:.3f} ms, compiled "
        f"{compiled_ms:.3f} ms ({eager_ms / compiled_ms:.2f}x), median of 30"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plot_path = plot_training(
        history,
        eager_ms,
        compiled_ms,
        args.out / f"training_{args.model}.png",
        type(model).__name__,
    )
    print(f"saved plot {plot_path}")

    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model.eval(), (x_te[:8],), dynamic_shapes={"x": {0: batch}})
    pt2_path = args.out / f"{name}.pt2"
    torch.export.save(program, pt2_path)
    reloaded = torch.export.load(pt2_path).module()
    same = torch.equal(reloaded(x_te).argmax(1), model(x_te).argmax(1))
    ops = sorted({str(n.target) for n in program.graph.nodes if "customgrad" in str(n.target)})
    print(f"saved exported program {pt2_path} ({', '.join(ops)})")
    print(f"reloaded .pt2 gives identical predictions: {same}")

    onnx_path = args.out / f"{name}.onnx"
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

    print(
        f"final test accuracy {100 * test_acc:.2f}%; the whole run took "
        f"{time.perf_counter() - run_start:.0f} s"
    )
    return 0 if test_acc >= 0.95 and same and agree == len(x_te) else 1


def plot_training(history: dict[str, list[float]], eager_ms: float, compiled_ms: float, path,
                  model_name: str = "MLPClassifier"):  # fmt: skip
    """Loss and test accuracy per epoch, and the step time eager vs compiled, from this run."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_acc, ax_time) = plt.subplots(1, 3, figsize=(13, 3.8))
    ax_loss.plot(epochs, history["loss"], marker=".")
    ax_loss.set(title="training loss (epoch mean)", xlabel="epoch", ylabel="cross-entropy")
    ax_loss.set_yscale("log")
    ax_acc.plot(epochs, [100 * a for a in history["test_acc"]], marker=".", color="tab:green")
    ax_acc.set(title="test accuracy", xlabel="epoch", ylabel="%")
    bars = ax_time.bar(["eager", "compiled"], [eager_ms, compiled_ms], color=["grey", "tab:blue"])
    ax_time.bar_label(bars, fmt="%.3f ms")
    ax_time.set_ylim(0, 1.2 * max(eager_ms, compiled_ms))
    ax_time.set(title="train step (median of 30)", ylabel="ms")
    fig.suptitle(f"opslib {model_name} on scikit-learn digits")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
