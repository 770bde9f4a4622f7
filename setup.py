"""Build script: pure-Python install always works; the C++/CUDA extension is optional.

The C++/CUDA sources are staged into ``rtl_kernels/_csrc`` so every install (also an isolated
one without torch) can JIT-compile them on first use. When torch is importable at build time
(``pip install --no-build-isolation -e .``), ``rtl_kernels/_build.py`` builds the extensions with
ninja up front.
"""

import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _stage_sources() -> None:
    if (HERE / "csrc").is_dir():
        shutil.copytree(HERE / "csrc", HERE / "rtl_kernels" / "_csrc", dirs_exist_ok=True)


def _extensions():
    try:
        import torch  # noqa: F401
    except ImportError:
        return {}, []
    sys.path.insert(0, str(HERE))  # this checkout's rtl_kernels, not another installed copy
    try:
        from rtl_kernels._build import setup_extensions
    except ImportError:
        return {}, []
    return setup_extensions()


_stage_sources()
cmdclass, ext_modules = _extensions()
setup(cmdclass=cmdclass, ext_modules=ext_modules)
