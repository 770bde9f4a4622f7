"""Under torchrun (2 CPU processes, gloo) the K ticket searches are split over the ranks and gathered."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rtl_kernels.pipeline import Recipe, Run

pytest.importorskip("sklearn")

ARGS = [
    "--hidden",
    "16",
    "--max-train",
    "200",
    "--sparsities",
    "0.3",
    "0.6",
    "--prune-fraction",
    "0.5",
    "--epochs-per-round",
    "1",
    "--no-baselines",
    "--num-tickets",
    "5",
]
RECIPE = Recipe(hidden=16, max_train=200, sparsities=(0.3, 0.6), prune_fraction=0.5, epochs_per_round=1, baselines=False, num_tickets=5)


def test_torchrun_two_processes_matches_one(tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "rtl_kernels",
        "find",
        "--quiet",
        "--out",
        str(out),
        *ARGS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted((out / "tickets").glob("round_*/ticket_*.safetensors"))
    assert len(files) == 2 * 5, "both ranks' tickets are saved"
    torch.set_num_threads(1)
    Run(RECIPE, tmp_path / "single", progress=False).execute("tickets")
    for path in files:
        a, b = load_file(str(path)), load_file(str(tmp_path / "single" / path.relative_to(out)))
        assert all(torch.equal(a[k], b[k]) for k in a), path
    summary_dist = (out / "tickets" / "summary.json").read_text()
    assert summary_dist == (tmp_path / "single" / "tickets" / "summary.json").read_text(), "gathered masks give the same similarity history"
