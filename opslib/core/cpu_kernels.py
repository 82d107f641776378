"""Build and load opslib's C++ CPU kernels (``opslib/csrc/*.cpp``).

Two kinds of kernel live there:

- the **fast path** (``cpu_fast_path.cpp``): each op's kernel at the AutogradCPU key, for calls
  that need no autograd on plain CPU tensors, where the dispatcher's round trip into Python
  (~2 µs) would dominate a small tensor;
- **fused kernels** (``learned_silu.cpp``): an op's forward and backward as one vectorized,
  multi-threaded pass over memory each, registered as ``torch.ops.opslib_cpu.*`` and called by
  the op's Python kernels (which fall back to torch ops where they are not loaded).

They are compiled on this machine with ``torch.utils.cpp_extension`` (a C++ compiler and ninja)
the first time opslib is imported, with the vector instructions the running CPU has (AVX-512,
AVX2, or none), in ~15 s; opslib prints a line when it starts and one when it is done. The
library is cached in torch's extension folder (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``), one per Python, torch version, CPU capability and source, and
later imports load it directly (milliseconds). To build ahead of time (a Docker image, say):
``python3 -m opslib.core.cpu_kernels``. If it cannot be built, opslib warns once and every op
runs its torch-op kernels. ``OPSLIB_CPU_KERNELS=0`` skips it altogether.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch
from torch._appdirs import user_cache_dir

CSRC = Path(__file__).resolve().parents[1] / "csrc"
ENV_SWITCH = "OPSLIB_CPU_KERNELS"
STALE_LOCK_SECONDS = 600  # a build takes 15-60 s; a lock this old was left by a killed build
# ATen's vector classes pick their instructions from these macros (its own kernels are built
# the same way, once per capability, with these flags); the library is built for the
# capability the CPU has. AVX2 needs -mf16c too: ATen's Half conversions use F16C intrinsics
# (GCC's -mavx512f implies it; -mavx2 does not, and the build failed on an AVX2-only CPU).
CAPABILITY_FLAGS = {
    "AVX512": [
        "-mavx512f",
        "-mavx512bw",
        "-mavx512vl",
        "-mavx512dq",
        "-mfma",
        "-DCPU_CAPABILITY_AVX512",
    ],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
}

_loaded = False


class CpuKernelsWarning(RuntimeWarning):
    """opslib's C++ CPU kernels could not be built or loaded; the ops run torch-op kernels."""


def capability() -> str:
    """The vector instructions the library is built with: what torch itself uses here."""
    found = torch.backends.cpu.get_cpu_capability()
    return found if found in CAPABILITY_FLAGS else "DEFAULT"


def compile_flags() -> list[str]:
    # -ffp-contract=off: the compiler may not fuse a multiply and an add into one rounding by
    # itself (GCC does by default); the kernels fuse where they say so (at::vec::fmadd), so that
    # they round exactly where the torch ops they follow round (adam.cpp rounds as
    # torch.optim.Adam's foreach ops do this way).
    # -fopenmp: at::parallel_for is an OpenMP loop written in ATen's headers; compiled without
    # it, the loop runs on one thread (the OpenMP runtime is torch's own libgomp, already loaded).
    return [
        "-O3",
        "-fopenmp",
        "-ffp-contract=off",
        f"-DCPU_CAPABILITY={capability()}",
        *CAPABILITY_FLAGS.get(capability(), []),
    ]


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def build_directory() -> Path:
    """One folder per Python, torch version, CPU capability and source text: a C++ extension
    is tied to the ABI of the torch it was built against and to the instructions it uses, and
    a changed source must be rebuilt (torch's default folder looks at none of these)."""
    digest = hashlib.sha256()
    for path in [*sources(), *sorted(CSRC.glob("*.h"))]:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(compile_flags()).encode())
    version = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}"
    version = re.sub(r"\W", "_", version)
    name = f"opslib_cpu_{capability()}_{version}_{digest.hexdigest()[:10]}"
    # torch's own default (cpp_extension.get_default_build_root), without importing the
    # extension builder (~0.2 s) on every import
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or user_cache_dir(appname="torch_extensions")
    return Path(root) / name


def load() -> bool:
    """Load the library, building it first if this machine has none yet; True if loaded."""
    global _loaded
    if _loaded:
        return True
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    folder = build_directory()
    library = folder / f"{folder.name}.so"
    try:
        if library.exists():
            torch.ops.load_library(str(library))
        else:
            _build(folder)
    except Exception as err:  # no compiler, no ninja, a read-only cache folder...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(
            f"opslib: its C++ CPU kernels could not be built ({type(err).__name__}: "
            f"{first_line}). Every op still works, through torch-op kernels, but fused ops "
            f"(learned_silu) run several times slower and small calls cost ~2 µs more. To get "
            f"the fast kernels, install a C++ compiler and ninja (e.g. apt-get install g++; "
            f"pip install ninja) and import opslib again. Set {ENV_SWITCH}=0 to skip them.",
            CpuKernelsWarning,
            stacklevel=2,
        )
        return False
    _loaded = True
    return True


def _build(folder: Path) -> None:
    from torch.utils import cpp_extension  # ~0.2 s to import: only when building

    print(
        f"opslib: building its C++ CPU kernels for this machine ({capability()}), once per "
        f"torch version: 35-90 s on 2 cores...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_lock(folder / "lock")
    cpp_extension.load(
        name=folder.name,
        sources=[str(s) for s in sources()],
        build_directory=str(folder),
        extra_cflags=compile_flags(),
        is_python_module=False,
    )
    print(
        f"opslib: C++ CPU kernels built in {time.perf_counter() - start:.0f} s ({folder})",
        file=sys.stderr,
        flush=True,
    )


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
    """Whether opslib's C++ CPU kernels (fast path and fused kernels) run in this process."""
    return _loaded


if __name__ == "__main__":  # python3 -m opslib.core.cpu_kernels: build ahead of time
    import opslib  # noqa: F401  (imports, and so builds or loads, the library)

    # The package's instance of this module, not this __main__ copy of it: that is where
    # importing opslib recorded whether the library loaded.
    from opslib.core import cpu_kernels as loader

    print(
        f"opslib C++ CPU kernels: {'loaded' if loader.is_loaded() else 'NOT loaded'} "
        f"({loader.capability()}) from {loader.build_directory()}"
    )
    raise SystemExit(0 if loader.is_loaded() else 1)
