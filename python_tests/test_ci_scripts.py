"""The CI checks can fail: nvcc_check fails on CI without nvcc; asan_check is a real, runnable script."""

import os
import shutil
import subprocess
from pathlib import Path

CI = Path(__file__).resolve().parent.parent / ".ci"


def _run_without_nvcc(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "dirname"):  # a PATH holding only what the script needs besides nvcc
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([shutil.which("bash"), str(CI / "nvcc_check")], env=env, capture_output=True, text=True, timeout=60)


def test_nvcc_check_fails_on_ci_when_nvcc_is_missing(tmp_path):
    on_ci = _run_without_nvcc(tmp_path, "true")
    assert on_ci.returncode == 1 and "nvcc not found on CI" in on_ci.stderr
    local = _run_without_nvcc(tmp_path, None)
    assert local.returncode == 0 and "skipping" in local.stderr


def test_asan_check_is_an_executable_script_run_by_ci():
    script = CI / "asan_check"
    assert os.access(script, os.X_OK)
    assert "bash .ci/asan_check" in (CI / "run").read_text()
    text = script.read_text()
    assert "libstdc++.so.6" in text and "RTL_KERNELS_SANITIZE=address" in text
    if shutil.which("bash"):
        subprocess.run([shutil.which("bash"), "-n", str(script)], check=True, timeout=30)  # parses
