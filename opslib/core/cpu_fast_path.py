"""Build and load the C++ CPU fast path (``opslib/csrc/cpu_fast_path.cpp``).

That file gives each op a C++ kernel for calls that need no autograd on plain CPU tensors
(forward only, inference, a frozen layer), where the Python kernel's dispatcher round trip
(~2 µs) would dominate a small tensor. Every other call, and every call when the fast path is
not loaded, runs the op's Python kernels: same results, same errors, only slower per call.

It is compiled with ``torch.utils.cpp_extension`` (a C++ compiler and ninja) on the first
``import opslib`` for each torch version: ~15 s once; later imports load the cached library
from torch's extension folder (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``)
in ~0.2 s, most of it importing torch's extension builder. If it cannot be built, opslib warns
once and runs without it. ``OPSLIB_CPU_FAST_PATH=0`` skips it altogether.
"""

from __future__ import annotations

import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "cpu_fast_path.cpp"
ENV_SWITCH = "OPSLIB_CPU_FAST_PATH"
STALE_LOCK_SECONDS = 600  # a build takes 15-60 s; a lock this old was left by a killed build

_loaded = False


class CpuFastPathWarning(RuntimeWarning):
    """The C++ CPU fast path could not be built or loaded; the ops run their Python kernels."""


def load() -> bool:
    """Build (first time) and load the fast path; True if its kernels are now registered."""
    global _loaded
    if _loaded:
        return True
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    try:
        from torch.utils import cpp_extension

        folder = build_directory()
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_lock(folder / "lock")
        cpp_extension.load(
            name=folder.name,
            sources=[str(SOURCE)],
            build_directory=str(folder),
            extra_cflags=["-O2"],
            is_python_module=False,
        )
    except Exception as err:  # no compiler, no ninja, a read-only cache folder...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(
            f"opslib: the C++ CPU fast path could not be built ({type(err).__name__}: "
            f"{first_line}); every op still works, through its Python kernels, at ~2 µs more "
            f"per call on small CPU tensors. Set {ENV_SWITCH}=0 to skip building it.",
            CpuFastPathWarning,
            stacklevel=2,
        )
        return False
    _loaded = True
    return True


def build_directory() -> Path:
    """Where the library is built and cached: one folder per Python and torch version, since a
    C++ extension is tied to the ABI of the torch it was built against (torch's own default
    folder does not look at the torch version)."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    version = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}"
    return Path(root) / ("opslib_cpu_fast_path_" + re.sub(r"\W", "_", version))


def remove_stale_lock(lock: Path) -> None:
    """torch's builder waits, without end, for the lock file of a build in progress. A build
    killed outright (SIGKILL, a CI timeout) leaves that file behind, and every later import
    would hang; one older than any real build is removed."""
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    except FileNotFoundError:
        pass


def is_loaded() -> bool:
    """Whether CPU calls that need no autograd take the C++ fast path in this process."""
    return _loaded
