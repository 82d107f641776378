"""The documentation site is checked like code: it builds with warnings as errors (a docstring
that is not valid reST, a broken cross-reference, a guide's missing page all fail), every op of
the op table has its page with its derivation typeset, and a browser shows the math typeset.

The browser test needs Chromium (Debian's ``chromium`` package, which ``.ci/run`` installs); it
is skipped without one, unless ``OPSLIB_REQUIRE_BROWSER=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from opslib.testing.opinfos import OP_TABLE, UPDATE_OP_TABLE

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
BROWSER_PAGE = "layer_norm"  # an op page with display math, aligned equations and inline math
CHROMIUM_FLAGS = [
    # as root in a container: no sandbox; no GPU; and none of the background connections that
    # a closed network refuses (they only slow the start)
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",  # run MathJax to the end before dumping or drawing
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    return out


def test_the_site_builds_without_warnings_and_every_op_has_its_typeset_page(site):
    for info in [*OP_TABLE, *UPDATE_OP_TABLE]:
        page = (site / "ops" / f"{info.name}.html").read_text()
        # Sphinx writes math for MathJax as \( \) inline and \[ \] display spans
        assert page.count('class="math notranslate nohighlight"') >= 3, info.name
        for section in ("Forward", "Backward", "Saved for backward", "Kernels", "Contract"):
            if info in UPDATE_OP_TABLE and section in ("Forward", "Backward", "Saved for backward"):
                continue  # an optimizer step: "The update" instead, and no autograd
            assert f">{section}<" in page, f"{info.name}: no {section} section"
    for info in UPDATE_OP_TABLE:
        page = (site / "ops" / f"{info.name}.html").read_text()
        assert ">The update<" in page and ">No autograd<" in page, info.name
    tutorial = (site / "guides" / "testing-your-op.html").read_text()
    assert "test_scaled_tanh" in tutorial and "scaled_tanh_onnx" in tutorial
    index = (site / "index.html").read_text()
    assert "_static/mathjax/tex-svg.js" in (site / "ops" / "layer_norm.html").read_text()
    assert (site / "_static" / "mathjax" / "tex-svg.js").exists()  # shipped: no CDN
    assert "cdn" not in index.lower() and "googleapis" not in index.lower()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_an_op_page_shows_its_math_typeset_in_headless_chromium(site):
    browser = _chromium()
    if browser is None:
        if os.environ.get("OPSLIB_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium on this machine, and OPSLIB_REQUIRE_BROWSER=1")
        pytest.skip("no Chromium (Debian: apt-get install chromium)")
    url = (site / "ops" / f"{BROWSER_PAGE}.html").as_uri()  # file://: the site needs no server
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
        ).stdout
    body = re.sub(r"<style.*?</style>", "", dom, flags=re.S)  # MathJax's CSS names merror too
    math = body.count('class="math notranslate nohighlight"')
    assert math >= 5
    assert body.count("<mjx-container") == math, "some math was not typeset by MathJax"
    assert 'data-mml-node="merror"' not in body, "MathJax reports a TeX error on the page"
    text = re.sub(r"<[^>]+>", "", body)
    assert "\\(" not in text and "\\[" not in text and "\\frac" not in text, "raw TeX is left"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"docs_{BROWSER_PAGE}.png"
    screenshot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        subprocess.run(
            [*flags, "--window-size=1200,1800", f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=120,
        )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
