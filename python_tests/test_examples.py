"""The examples run end to end (train, save, load in a fresh process, serve) and report sensible numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, tmp_path: Path) -> str:
    out = tmp_path / "save"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert {"weights.safetensors", "masks.safetensors", "rtl.json", "router.safetensors"} <= {p.name for p in out.iterdir()}
    return proc.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


@pytest.mark.slow
def test_transformer_example(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = _run("transformer_tickets.py", tmp_path)
    assert "converted 7 layers" in out
    assert _number(r"routing accuracy ([\d.]+)", out) >= 0.9
    assert _number(r"task accuracy ([\d.]+)", out) >= 0.8


@pytest.mark.slow
def test_cnn_example(tmp_path: Path) -> None:
    out = _run("cnn_tickets.py", tmp_path)
    assert "converted 5 layers" in out
    assert _number(r"routing accuracy ([\d.]+)", out) >= 0.9
    assert _number(r"accuracy ([\d.]+) with the LinearRouter", out) >= 0.8
    assert _number(r"([\d.]+) with oracle routes", out) >= 0.8
