"""Build script: pure-Python install always works; the C++/CUDA extension is optional.

When torch is importable at build time (``pip install --no-build-isolation -e .``), the extensions
listed by ``rtl_kernels/_build.py`` are built with ninja. Otherwise the package installs as pure
Python and the extension is JIT-compiled on first use (see ``rtl_kernels.backends``).
"""

from setuptools import setup


def _extensions():
    try:
        import torch  # noqa: F401
    except ImportError:
        return {}, []
    try:
        from rtl_kernels._build import setup_extensions
    except ImportError:
        return {}, []
    return setup_extensions()


cmdclass, ext_modules = _extensions()
setup(cmdclass=cmdclass, ext_modules=ext_modules)
