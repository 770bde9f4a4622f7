"""``rtl-kernels merge``: checkpoints in, a routed save (or a dense checkpoint) out; clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

import rtl_kernels as rtl
from rtl_kernels.cli.main import main

FACTORY = """
from rtl_kernels.zoo.mlp import MLP


def tiny():
    return MLP(6, 3, 8)
"""


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    (tmp_path / "merge_factory_mod.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    from rtl_kernels.zoo.mlp import MLP

    torch.manual_seed(0)
    base = MLP(6, 3, 8)
    save_file(base.state_dict(), str(tmp_path / "base.safetensors"))
    experts = []
    for i in range(2):
        e = copy.deepcopy(base)
        with torch.no_grad():
            for p in e.parameters():
                p.add_(0.1 * torch.randn_like(p))
        save_file(e.state_dict(), str(tmp_path / f"e{i}.safetensors"))
        experts.append(e)
    return tmp_path, base, experts


def test_merge_writes_a_routed_save_that_loads_back(checkpoints, capsys):
    tmp, base, experts = checkpoints
    args = ["merge", "--model", "merge_factory_mod:tiny", "--base", str(tmp / "base.safetensors"), "--out", str(tmp / "out")]
    assert main([*args, "--experts", str(tmp / "e0.safetensors"), str(tmp / "e1.safetensors"), "--method", "emr"]) == 0
    assert "routed emr merge of 2 experts" in capsys.readouterr().out
    from merge_factory_mod import tiny

    loaded = rtl.load(tmp / "out", rtl.merge.convert_delta(tiny(), 2))
    want = rtl.merge.merge_experts(base, experts, method="emr")
    x = torch.rand(4, 6)
    for t in range(2):
        with rtl.routing(loaded, t), rtl.routing(want, t):
            torch.testing.assert_close(loaded(x), want(x))


def test_merge_dense_with_options(checkpoints):
    tmp, base, experts = checkpoints
    out = tmp / "dense"
    argv = ["merge", "--model", "merge_factory_mod:tiny", "--base", str(tmp / "base.safetensors"), "--experts", str(tmp / "e0.safetensors"),
            str(tmp / "e1.safetensors"), "--method", "task_arithmetic", "--dense", "--option", "lam=0.5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    state = load_file(str(out / "model.safetensors"))
    want = rtl.merge.merge_experts(base, experts, method="task_arithmetic", routed=False, lam=0.5).state_dict()
    for key, value in want.items():
        torch.testing.assert_close(state[key], value)


def test_merge_errors_name_the_argument(checkpoints, capsys):
    tmp, _, _ = checkpoints
    common = ["--base", str(tmp / "base.safetensors"), "--experts", str(tmp / "e0.safetensors"), "--out", str(tmp / "o")]
    assert main(["merge", "--model", "nocolon", *common]) == 1
    assert "--model: expected MODULE:FACTORY" in capsys.readouterr().err
    assert main(["merge", "--model", "merge_factory_mod:tiny", *common, "--option", "bogus"]) == 1
    assert "--option: expected KEY=VALUE" in capsys.readouterr().err
    assert main(["merge", "--model", "merge_factory_mod:tiny", *common, "--option", "zeta=1"]) == 1
    assert "options: method 'tall' takes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    assert "Merge K experts fine-tuned from one base model" in capsys.readouterr().out
