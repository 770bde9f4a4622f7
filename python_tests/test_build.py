"""Build plumbing: setup.py extensions, source lookup and staging, JIT fallback with a one-time warning."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import rtl_kernels as rtl
from rtl_kernels import _build
from rtl_kernels.backends import extension

ROOT = Path(__file__).resolve().parent.parent


def test_sources_of_every_extension_are_found_in_the_checkout():
    for spec in (extension.CPU_SPEC, extension.CUDA_SPEC):
        found = extension.find_sources(spec)
        assert found is not None
        assert all(Path(p).is_file() for p in found)
        assert Path(found[0]).is_relative_to(ROOT / "csrc")


def test_cpu_kernel_units_do_not_include_torch():
    # the ISA units are compiled with wider target options: shared inline torch code must not be in them
    for path in (ROOT / "csrc" / "cpu").glob("routed_*"):
        for inc in re.findall(r"#include\s*[<\"]([^>\"]+)[>\"]", path.read_text()):
            assert not inc.startswith(("torch", "ATen", "c10")), f"{path.name} includes {inc}"


def test_setup_extensions_builds_cpu_and_cuda_when_possible():
    cmdclass, modules = _build.setup_extensions()
    assert "build_ext" in cmdclass
    names = [m.name for m in modules]
    assert names[0] == "rtl_kernels._C_cpu"
    assert ("rtl_kernels._C_cuda" in names) == _build.cuda_buildable()
    for module in modules:
        for src in module.sources:
            assert (ROOT / src).is_file() or Path(src).is_file()


def test_setup_py_stages_sources_for_wheels():
    # staged copies let an installed wheel JIT-build later; setup.py stages them even without torch
    subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    for spec in (extension.CPU_SPEC, extension.CUDA_SPEC):
        for src in spec.sources:
            assert (ROOT / "rtl_kernels" / "_csrc" / src).read_bytes() == (ROOT / "csrc" / src).read_bytes()


def test_missing_sources_warn_once_and_fall_back(monkeypatch):
    monkeypatch.setattr(extension, "_loaded", {})
    spec = extension.ExtensionSpec(prebuilt="rtl_kernels._C_missing", jit_name="rtl_kernels_missing", sources=("cpu/does_not_exist.cpp",))
    with pytest.warns(RuntimeWarning, match="could not build the rtl_kernels_missing extension"):
        assert extension.load(spec) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension.load(spec) is None  # no second warning


def test_disabled_extension_falls_back_to_reference(monkeypatch, request):
    from rtl_kernels.backends.registry import Call, forget_resolved, resolve_backend

    request.addfinalizer(forget_resolved)  # choices made without the extension must not outlive the test
    monkeypatch.setattr(extension, "_loaded", {})
    monkeypatch.setenv("RTL_KERNELS_NO_EXTENSION", "1")
    assert extension.load_cpu() is None
    assert "cpu" not in rtl.available_backends("cpu")
    assert resolve_backend("auto", Call("linear", torch.device("cpu"), torch.float32, 4, (3, 5), 2)).name == "reference"
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    masks = torch.rand(2, 3, 5) < 0.5
    y = rtl.routed_linear(x, w, masks, torch.tensor([0, 1, 1, 0]))
    ref = torch.stack([x[i] @ (w * masks[r]).T for i, r in enumerate([0, 1, 1, 0])])
    torch.testing.assert_close(y, ref)
