"""Loads the compiled kernels: the module built by ``setup.py`` if present, else a JIT build.

The JIT build (``torch.utils.cpp_extension.load`` with ninja) compiles the C++ sources found in
the repository checkout (``<repo>/csrc``, editable installs) or shipped as package data
(``rtl_kernels/_csrc``, staged by ``rtl_kernels/_build.py``) and caches the result under
``TORCH_EXTENSIONS_DIR``. Without a compiler the loader warns once and returns ``None``, so
callers fall back to the reference backend. ``RTL_KERNELS_NO_EXTENSION=1`` disables the
extensions; ``RTL_KERNELS_SANITIZE=address`` JIT-builds an AddressSanitizer variant (run with
``LD_PRELOAD`` of libasan).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ExtensionSpec:
    """One compiled module: its prebuilt import name, its JIT name and its sources (relative to csrc)."""

    prebuilt: str
    jit_name: str
    sources: tuple[str, ...]
    cuda: bool = False


CPU_SPEC = ExtensionSpec(
    prebuilt="rtl_kernels._C_cpu",
    jit_name="rtl_kernels_cpu",
    sources=(
        "cpu/binding.cpp",
        "cpu/routed_generic.cpp",
        "cpu/routed_avx2.cpp",
        "cpu/routed_avx512.cpp",
        "cpu/routed_avx512bf16.cpp",
        "cpu/routed_gemm_avx512.cpp",
        "cpu/routed_conv_generic.cpp",
        "cpu/routed_conv_avx512.cpp",
        "cpu/masked_delta_binding.cpp",
        "cpu/seeded_generic.cpp",
        "cpu/seeded_avx2.cpp",
        "cpu/seeded_avx512.cpp",
    ),
)
CUDA_SPEC = ExtensionSpec(
    prebuilt="rtl_kernels._C_cuda",
    jit_name="rtl_kernels_cuda",
    sources=("cuda/binding.cpp", "cuda/routed_gemv.cu"),
    cuda=True,
)
CXX_FLAGS = ("-O3",)
# at::parallel_for only runs threads in code compiled with OpenMP on: without these flags every
# kernel in the extension would run on one core
OPENMP_CFLAGS, OPENMP_LDFLAGS = {"linux": (("-fopenmp",), ("-fopenmp",)), "win32": (("/openmp",), ())}.get(sys.platform, ((), ()))
NVCC_FLAGS = ("-O3", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a")

_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}
# torch's JIT build holds ``<build dir>/lock`` (a FileBaton) open while it builds, and every other
# loader waits, without a timeout, until the file is gone. A build that was killed leaves the file
# behind. One that no process holds open and that is older than this is stale (the age guard covers
# builders this process cannot see, e.g. in another PID namespace). Without /proc only the age counts.
STALE_LOCK_S = 60.0
STALE_LOCK_UNSEEN_S = 30 * 60.0
LOCK_POLL_S = 0.5


def source_dirs() -> list[Path]:
    """Where the C++ sources may live: the checkout's ``csrc`` first, then the packaged copy."""
    return [PACKAGE_DIR.parent / "csrc", PACKAGE_DIR / "_csrc"]


def find_sources(spec: ExtensionSpec) -> list[str] | None:
    for root in source_dirs():
        paths = [root / s for s in spec.sources]
        if all(p.is_file() for p in paths):
            return [str(p) for p in paths]
    return None


def disabled() -> bool:
    return os.environ.get("RTL_KERNELS_NO_EXTENSION", "") not in ("", "0")


def _sanitizer() -> str:
    return os.environ.get("RTL_KERNELS_SANITIZE", "")


def _import_prebuilt(spec: ExtensionSpec) -> ModuleType | None:
    if _sanitizer():
        return None
    try:
        return importlib.import_module(spec.prebuilt)
    except ImportError:
        return None


def _lock_held(path: Path) -> bool | None:
    """Whether any process has ``path`` open (None: cannot tell, no /proc)."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = os.path.realpath(path)
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            with os.scandir(fd_dir) as fds:
                for fd in fds:
                    try:
                        if os.readlink(fd.path) == target:
                            return True
                    except OSError:
                        continue
        except OSError:  # the process ended, or it is not ours to read
            continue
    return False


def clear_stale_lock(build_dir: Path) -> bool:
    """Remove ``build_dir/lock`` if a killed build left it (logged as a warning); True if removed."""
    lock = Path(build_dir) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    held = _lock_held(lock)
    if held or age < (STALE_LOCK_S if held is False else STALE_LOCK_UNSEEN_S):
        return False
    try:
        lock.unlink()
    except FileNotFoundError:
        return False
    logger.warning("removed the stale build lock %s (%.0f s old, held by no process): a killed build left it", lock, age)
    return True


def wait_for_build_lock(build_dir: Path) -> None:
    """Wait while another process builds in ``build_dir``; clear its lock if that build died.

    torch's own wait has no timeout, so a lock left by a killed build would block every later load.
    """
    lock = Path(build_dir) / "lock"
    logged = False
    while lock.exists() and not clear_stale_lock(build_dir):
        if not logged:
            logger.info("waiting for the build that holds %s", lock)
            logged = True
        time.sleep(LOCK_POLL_S)


def _jit(spec: ExtensionSpec) -> ModuleType:
    from torch.utils import cpp_extension

    sources = find_sources(spec)
    if sources is None:
        raise FileNotFoundError(f"C++ sources {list(spec.sources)} not found in {[str(d) for d in source_dirs()]}")
    cflags = list(CXX_FLAGS + OPENMP_CFLAGS)
    ldflags = list(OPENMP_LDFLAGS)
    name = spec.jit_name
    if _sanitizer():
        cflags += [f"-fsanitize={_sanitizer()}", "-fno-omit-frame-pointer", "-g"]
        ldflags += [f"-fsanitize={_sanitizer()}"]
        name += "_" + _sanitizer().replace(",", "_")
    logger.info("loading %s from %s (compiled on first use, then cached)", name, Path(sources[0]).parent.parent)
    kwargs = {"extra_cuda_cflags": list(NVCC_FLAGS)} if spec.cuda else {}
    build_dir = cpp_extension._get_build_directory(name, verbose=False)  # torch's own choice, passed back to it
    wait_for_build_lock(Path(build_dir))
    return cpp_extension.load(
        name=name, sources=sources, extra_cflags=cflags, extra_ldflags=ldflags, build_directory=build_dir, verbose=False, **kwargs
    )


def load(spec: ExtensionSpec) -> ModuleType | None:
    """The compiled module for ``spec`` (built on first use), or ``None`` with a one-time warning."""
    key = spec.jit_name
    if key in _loaded:
        return _loaded[key]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        module = None
        if not disabled():
            module = _import_prebuilt(spec)
            if module is None:
                try:
                    module = _jit(spec)
                except Exception as exc:  # no compiler, no ninja, missing sources: fall back, never fail
                    warnings.warn(
                        f"rtl_kernels: could not build the {key} extension ({type(exc).__name__}: {str(exc)[:300]}); "
                        "using the reference backend instead",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        _loaded[key] = module
        from .registry import forget_resolved

        forget_resolved()  # availability may have changed
        return module


def load_cpu() -> ModuleType | None:
    """The CPU kernels module, or ``None`` when it cannot be built here."""
    return load(CPU_SPEC)


def load_cuda() -> ModuleType | None:
    """The CUDA kernels module, or ``None`` when it cannot be built here."""
    return load(CUDA_SPEC)
