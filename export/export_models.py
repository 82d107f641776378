"""Export every op of the op table as a single-op ONNX model, and the example classifier.

    python3 export/export_models.py [--out export/out]

Writes <name>_<dtype>.onnx for float64, float32 and float16, each with a dynamic batch and
checked by onnx.checker (full_check) and for standard ONNX domains only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import parity


def _dims(value_info) -> list[str]:
    return [d.dim_param or str(d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--only", nargs="*", help="model names (default: all)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for ref in parity.reference_models(names=args.only):
        path = args.out / parity.file_name(ref)
        proto = parity.export_reference(ref, path)
        nodes = " ".join(n.op_type for n in proto.graph.node)
        inputs = ", ".join(f"{i.name}{_dims(i)}" for i in proto.graph.input)
        print(f"{path}  inputs: {inputs}  nodes: {nodes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
