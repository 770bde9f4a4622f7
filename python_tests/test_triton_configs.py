"""Launch configs as data: bucket lookup, the tune command's table, and warmup."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")
from rtl_kernels.backends import triton_backend as tb
from rtl_kernels.cli.main import main
from rtl_kernels.kernels.triton import configs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not tb.is_available(DEVICE), reason="triton backend unavailable on this device")


def test_shape_bucket_rounds_up_to_powers_of_two():
    assert configs.shape_bucket(1, 4096, 11008) == "M1_N4096_K16384"
    assert configs.shape_bucket(17, 33, 64) == "M32_N64_K64"


def test_lookup_prefers_exact_then_nearest_rows_then_default(tmp_path, monkeypatch):
    table = {
        "configs": {
            "fwd": {
                "float16": {
                    "M16_N1024_K1024": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2},
                    "M1024_N1024_K1024": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
                },
                "default": {"default": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}},
            }
        }
    }
    (tmp_path / "interpreter.json").write_text(json.dumps(table))
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    configs.reload_tables()
    try:
        cpu = torch.device("cpu")
        assert configs.get_config("fwd", cpu, torch.float16, 16, 1000, 1000)["BLOCK_M"] == 16
        assert configs.get_config("fwd", cpu, torch.float16, 900, 1024, 1024)["BLOCK_M"] == 128
        assert configs.get_config("fwd", cpu, torch.float16, 20, 1024, 1024)["BLOCK_M"] == 16  # nearest row bucket
        assert configs.get_config("fwd", cpu, torch.float32, 20, 1024, 1024)["BLOCK_M"] == 32  # dtype falls back to default
        with pytest.raises(ValueError, match="kernel"):
            configs.get_config("dw", cpu, torch.float32, 20, 8, 8)
        with pytest.raises(ValueError, match="kernel"):
            configs.get_config("nope", cpu, torch.float32, 20, 8, 8)
    finally:
        configs.reload_tables()


def test_shipped_tables_cover_every_kernel():
    for stem in (configs.DEFAULT, configs.INTERPRETER):
        table = configs.load_table(stem)
        assert set(table["configs"]) == set(configs.KERNELS)
        assert {"decode_max_rows", "decode_max_work"} <= set(table["dispatch"])


def test_tune_command_writes_a_table_the_backend_reads(tmp_path, monkeypatch):
    out = tmp_path / "tuned"
    args = ["tune", "--linear", "24:20", "--rows", "3,40", "--tickets", "2", "--dtype", "float32", "--max-candidates", "1", "--reps", "1"]
    args += ["--device", DEVICE.type, "--output-dir", str(out), "--quiet", "--kernels", "fwd,decode,dw"]
    assert main(args) == 0
    stem = configs.device_key(DEVICE)
    table = json.loads((out / f"{stem}.json").read_text())
    assert set(table["configs"]) == set(configs.KERNELS)  # tuned kernels merged into the shipped table
    assert "ms" in table["configs"]["decode"]["float32"]["M4_N32_K32"]
    assert "M64_N32_K32" in table["configs"]["fwd"]["float32"]
    monkeypatch.setattr(configs, "CONFIG_DIR", out)
    configs.reload_tables()
    try:
        cfg = configs.get_config("fwd", DEVICE, torch.float32, 40, 20, 24)
        assert cfg == table["configs"]["fwd"]["float32"]["M64_N32_K32"]
    finally:
        configs.reload_tables()


def test_tune_writes_to_the_user_config_dir_not_the_package(tmp_path, monkeypatch):
    shipped = sorted(p.name for p in configs.CONFIG_DIR.iterdir())
    monkeypatch.setenv("RTL_KERNELS_CONFIG_DIR", str(tmp_path / "user"))
    configs.reload_tables()
    try:
        args = ["tune", "--linear", "24:20", "--rows", "3", "--tickets", "2", "--dtype", "float32", "--max-candidates", "1"]
        assert main([*args, "--reps", "1", "--device", DEVICE.type, "--quiet", "--kernels", "fwd"]) == 0
        stem = configs.device_key(DEVICE)
        table = json.loads((tmp_path / "user" / f"{stem}.json").read_text())
        assert set(table["configs"]) == set(configs.KERNELS)  # the shipped entries are kept
        cfg = configs.get_config("fwd", DEVICE, torch.float32, 3, 20, 24)
        assert cfg == table["configs"]["fwd"]["float32"]["M4_N32_K32"]
        assert sorted(p.name for p in configs.CONFIG_DIR.iterdir()) == shipped
    finally:
        monkeypatch.undo()
        configs.reload_tables()


def test_tune_rejects_bad_arguments(capsys):
    assert main(["tune", "--linear", "24x20", "--device", DEVICE.type]) == 1
    assert "--linear" in capsys.readouterr().err
    assert main(["tune", "--linear", "8:8", "--kernels", "fwd,bogus", "--device", DEVICE.type]) == 1


def test_warmup_runs_each_variant():
    dtype = torch.float16 if DEVICE.type == "cuda" else torch.float32
    conv = {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "num_tickets": 2, "input_size": 4, "padding": 1}
    calls = tb.warmup([(12, 10, 2), (8, 6, 3, False)], [conv], dtypes=(dtype,), rows=(1, 20), device=DEVICE, backward=True)
    assert calls == 6
    with pytest.raises(ValueError, match="device"):
        tb.warmup([(4, 4, 1)], device="meta")
