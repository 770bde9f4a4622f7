"""Build-time helper for ``setup.py``: the C++ (and, with a CUDA toolkit and CUDA torch, CUDA) extensions.

``setup_extensions()`` is only called when torch is importable at build time. ``setup.py`` itself
copies the sources from ``csrc/`` into ``rtl_kernels/_csrc/`` (also without torch) so that a wheel
carries them as package data and can JIT-build the kernels later (see
:mod:`rtl_kernels.backends.extension`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .backends.extension import CPU_SPEC, CUDA_SPEC, CXX_FLAGS, NVCC_FLAGS, OPENMP_CFLAGS, OPENMP_LDFLAGS

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def _rel(paths: tuple[str, ...]) -> list[str]:
    return [os.path.relpath(CSRC / p, os.getcwd()) for p in paths]


def cuda_buildable() -> bool:
    """True when torch has CUDA support and a CUDA toolkit is installed."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def setup_extensions() -> tuple[dict, list]:
    """``(cmdclass, ext_modules)`` for ``setup()``: ninja builds of the CPU and (if possible) CUDA kernels."""
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    if not CSRC.is_dir():
        return {}, []
    modules = [
        CppExtension(
            CPU_SPEC.prebuilt,
            _rel(CPU_SPEC.sources),
            extra_compile_args=list(CXX_FLAGS + OPENMP_CFLAGS),
            extra_link_args=list(OPENMP_LDFLAGS),
        )
    ]
    if cuda_buildable():
        modules.append(
            CUDAExtension(
                CUDA_SPEC.prebuilt, _rel(CUDA_SPEC.sources), extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": list(NVCC_FLAGS)}
            )
        )
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}, modules
