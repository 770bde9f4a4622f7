"""The prepared GPU check (bench/gpu_check.sh): its dry run resolves every step and its report writer works."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_step_has_a_dry_run_or_a_tool_to_look_up():
    gc = _module()
    names = [s.name for s in gc.steps()]
    assert len(names) == len(set(names))
    assert {"versions", "build", "gpu_tests", "memcheck", "racecheck", "bench", "tune"} <= set(names)
    for step in gc.steps():
        assert step.dry_argv is not None or step.needs, step.name
    assert gc.DEFAULT_BUDGET_S <= 8 * 60 and all(s.budget_s < gc.DEFAULT_BUDGET_S for s in gc.steps())


def test_targets_are_read_from_a_bench_result(tmp_path):
    gc = _module()
    gc.fake_bench(tmp_path)
    doc = json.loads((tmp_path / "bench" / "fake.json").read_text())
    rows = {r["target"]: r for r in gc.target_figures(doc)}
    assert rows["decode: K-copies loop / ours"]["measured"] == pytest.approx(5.0)
    assert rows["decode: K-copies loop / ours"]["met"] is True
    assert rows["conv: ours / cuDNN"]["measured"] == pytest.approx(1.2) and rows["conv: ours / cuDNN"]["met"] is True
    assert rows["large batch: torch.mm / ours"]["measured"] is None and rows["large batch: torch.mm / ours"]["met"] is None
    assert all(r["measured"] is None for r in gc.target_figures(None))


def test_report_writer_keeps_to_eight_files_and_records_failures(tmp_path):
    gc = _module()
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    gc.fake_bench(work)
    (work / "tune").mkdir()
    (work / "tune" / "nvidia-h200.json").write_text("{}")
    outcomes = [gc.Outcome("versions", "v", "python -c ...", "ok", 1.0, 0, "", '{"gpu": "NVIDIA H200", "torch": "2.11"}'),
                gc.Outcome("memcheck", "m", "compute-sanitizer ...", "failed", 3.0, 1, "exit code 1", "========= Invalid __global__ read")]  # fmt: skip
    report = gc.write_report(out, outcomes, dry_run=False, started="2026-12-01T00:00:00+00:00", budget_s=470, work=work)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= gc.MAX_FILES
    assert {"report.json", "report.md", "bench.json", "tune.json"} <= set(files)
    assert report["versions"]["gpu"] == "NVIDIA H200"
    md = (out / "report.md").read_text()
    assert "NVIDIA H200" in md and "| memcheck | m | failed |" in md and "Invalid __global__ read" in md


@pytest.mark.slow
def test_dry_run_resolves_every_step(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out), "--budget", "600"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["dry_run"] is True
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert set(statuses.values()) <= {"resolved", "gpu-only"}, statuses
    assert statuses["gpu_tests"] == "resolved" and statuses["bench"] == "resolved"
    assert len(list(out.iterdir())) <= 8
