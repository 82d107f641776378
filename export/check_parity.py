"""onnxruntime vs PyTorch: export every op and the example model, run them, compare.

    python3 export/check_parity.py [--only NAME ...] [--out DIR]

For float64, float32 and float16, each exported model (dynamic batch) runs in onnxruntime
(CPUExecutionProvider) at batch sizes 1, 7 and 4096 and is compared with PyTorch eager. Prints
one row per (model, dtype, batch) and exits 1 if any row fails. Tolerances and why: see
PARITY_TOLERANCE in opslib/onnx.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names (default: all)")
    parser.add_argument("--out", type=Path, help="keep the .onnx files here (default: temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for ref in parity.reference_models(names=args.only):
            path = out / parity.file_name(ref)
            parity.export_reference(ref, path)
            rows += parity.check_parity(ref, path)
    print(parity.format_parity_table(rows))
    failed = [r for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    for line in parity.not_checked():
        print(f"not checked: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
