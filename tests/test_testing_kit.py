"""opslib.testing on an op that is not opslib's: the tutorial's example
(docs/guides/testing-your-op.md), run from outside the repository, passes every family;
seven typical bugs each fail the family that should catch them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opslib.testing import FAMILIES, OpInfo, cases, check_op

THIRD_PARTY = Path(__file__).parent / "third_party"
sys.path.insert(0, str(THIRD_PARTY))

import faults  # noqa: E402
import test_my_op  # noqa: E402  (the tutorial's example)

FAULTS = faults.define_all()
# The family that must name each bug (others may too: a wrong backward fails reference as well).
CAUGHT_BY = {
    "wrong backward": "gradcheck",
    "backward under no_grad": "gradcheck",
    "contiguous fake": "opcheck",
    "kernel dtype differs from the fake's": "opcheck",
    "missing input check": "errors",
    "float32 constant in the ONNX translation": "onnx",
    "Python branch on a tensor's value": "compile",
}


def test_the_readme_example_passes_every_family_from_outside_the_repository(tmp_path):
    """The example and its op, copied to a folder of their own, run with plain pytest there:
    every family has checks, and all pass, in under 120 s."""
    for name in ("mylib.py", "test_my_op.py"):
        shutil.copy(THIRD_PARTY / name, tmp_path / name)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "test_my_op.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"\b\d+ passed", run.stdout) and "skipped" not in run.stdout, run.stdout
    assert seconds < 120, f"{seconds:.0f} s"
    ran = {case.family for case in cases(test_my_op.INFO)}
    assert ran == set(FAMILIES)


def test_the_tutorial_and_the_module_docstring_show_the_example_as_it_is_tested():
    import textwrap

    import opslib.testing

    # the docs tutorial includes the tested files themselves (tests/test_docs.py builds it)
    guide = Path(__file__).parents[1] / "docs" / "guides" / "testing-your-op.md"
    included = re.findall(r"```\{literalinclude\} (\S+)", guide.read_text())
    assert {(guide.parent / path).resolve() for path in included} == {
        (THIRD_PARTY / "test_my_op.py").resolve(),
        (THIRD_PARTY / "mylib.py").resolve(),
    }
    example = (THIRD_PARTY / "test_my_op.py").read_text().strip()
    indented = textwrap.indent(example, "    ")  # a literal block of the docstring
    assert indented in opslib.testing.__doc__


def _info(fault: str) -> OpInfo:
    return dataclasses.replace(test_my_op.INFO, **FAULTS[fault])


def test_the_good_copy_passes_check_op():
    """The control: mylib's op under another namespace, as the faults are defined."""
    result = check_op(_info("none"))
    assert result["passed"] and all("vmap" in s for s in result["skipped"]), result["skipped"]


@pytest.mark.parametrize("fault", list(CAUGHT_BY))
def test_check_op_fails_an_injected_bug_naming_its_family(fault):
    with pytest.raises(AssertionError) as failed:
        check_op(_info(fault))
    first_line = str(failed.value).splitlines()[0]
    named = re.search(r"in families (.*)$", first_line).group(1).split(", ")
    assert CAUGHT_BY[fault] in named, str(failed.value)[:2000]
    assert f"[{CAUGHT_BY[fault]}]" in str(failed.value)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match=r"unknown families \['opchek'\]"):
        check_op(test_my_op.INFO, ["opchek"])
