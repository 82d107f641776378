"""How the package imports: no import cycle among its modules, and ``import opslib`` imports
neither onnx nor the test data, while ``opslib.onnx`` is still an attribute."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "opslib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_when_imported(tree: ast.Module) -> list[ast.AST]:
    """Every import statement of a module, inside functions too, but not under
    ``if __name__ == "__main__":`` (that code runs as a script, never on import)."""
    main_blocks = [
        node for node in tree.body
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
    ]  # fmt: skip
    skipped = {id(n) for block in main_blocks for n in ast.walk(block)}
    return [
        node for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped
    ]  # fmt: skip


def import_graph() -> dict[str, set[str]]:
    """Module -> the opslib modules it imports, at the top or inside a function (an import in
    a function still makes the two modules depend on each other)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _imports_when_imported(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:
                # "from opslib.ops.adam import adam_step_" names the module opslib.ops.adam
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("opslib"):
                    graph[name].add(target)
                    break
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    """Every import between opslib's modules counts, at the top of a module or in a function
    (an ONNX translation importing opslib.onnx, which once looped back through the op table to
    every op). There were three cycles: onnx -> the op table -> ops -> onnx, the Triton kernels
    and their launchers, and the C++ loader's script entry point importing the package."""
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_import_opslib_imports_neither_onnx_nor_the_test_kit_but_opslib_onnx_works():
    code = (
        "import sys, opslib\n"
        "assert 'onnx' not in sys.modules and 'onnxscript' not in sys.modules, 'onnx imported'\n"
        "kit = [m for m in sys.modules if m.startswith('opslib.testing')]\n"
        "assert not kit, f'the test kit imported: {kit}'\n"
        "assert callable(opslib.onnx.export) and 'onnx' in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
