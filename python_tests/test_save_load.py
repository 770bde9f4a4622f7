"""rtl.save / rtl.load: safetensors + JSON, exact round trip, clear errors, nothing pickled."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import rtl_kernels as rtl


def build(k: int = 3, hidden: int = 8) -> nn.Module:
    model = nn.Sequential(nn.Linear(5, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    return rtl.convert(model, k)


def randomize(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    rtl.set_masks(model, {n: torch.rand(p.num_tickets, *p.weight_shape, generator=g) < 0.5 for n, p in rtl.masks_of(model).items()})


def test_round_trip_is_exact_and_files_are_safetensors_and_json(tmp_path):
    torch.manual_seed(0)
    model = build()
    randomize(model)
    rtl.save(model, tmp_path / "m", metadata={"task": "unit", "sparsity": 0.5})
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["masks.safetensors", "rtl.json", "weights.safetensors"]
    meta = json.loads((tmp_path / "m" / "rtl.json").read_text())
    assert meta["metadata"] == {"task": "unit", "sparsity": 0.5} and meta["num_tickets"] == 3
    weights = load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert set(weights) == set(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict())  # dense key names
    torch.manual_seed(1)
    fresh = build()
    rtl.load(tmp_path / "m", fresh)
    x, r = torch.randn(7, 5), torch.randint(0, 3, (7,))
    with rtl.routing(model, r):
        a = model(x)
    with rtl.routing(fresh, r):
        b = fresh(x)
    assert torch.equal(a, b)
    for name, p in rtl.masks_of(model).items():
        assert p == rtl.masks_of(fresh)[name]


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    model = rtl.convert(Tied(), 2)
    rtl.save(model, tmp_path)
    assert "b.weight" not in load_file(str(tmp_path / "weights.safetensors"))
    fresh = rtl.convert(Tied(), 2)
    rtl.load(tmp_path, fresh)
    assert fresh.a.weight is fresh.b.weight
    torch.testing.assert_close(fresh.a.weight, model.a.weight)


def test_mismatched_model_is_a_clear_error_and_leaves_model_untouched(tmp_path):
    model = build(k=3)
    rtl.save(model, tmp_path)
    other_k = build(k=4)
    before = {k: v.clone() for k, v in other_k.state_dict().items()}
    with pytest.raises(ValueError, match="layer '0' has 4 tickets, the save has 3"):
        rtl.load(tmp_path, other_k)
    assert all(torch.equal(before[k], v) for k, v in other_k.state_dict().items())
    with pytest.raises(ValueError, match=r"layer '0' has weight shape \[16, 5\], the save has \[8, 5\]"):
        rtl.load(tmp_path, build(hidden=16))
    with pytest.raises(ValueError, match="RTL layers do not match the save"):
        rtl.load(tmp_path, rtl.convert(nn.Sequential(nn.Linear(5, 8)), 3))


def test_corrupt_or_missing_files_are_clear_errors(tmp_path):
    model = build()
    with pytest.raises(ValueError, match="expected an rtl_kernels save directory"):
        rtl.load(tmp_path / "nothing", model)
    rtl.save(model, tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        rtl.load(tmp_path, build())
    rtl.save(model, tmp_path)
    (tmp_path / "rtl.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        rtl.load(tmp_path, build())
    rtl.save(model, tmp_path)
    (tmp_path / "masks.safetensors").unlink()
    with pytest.raises(ValueError, match=r"masks\.safetensors in the save directory, it is missing"):
        rtl.load(tmp_path, build())


def test_save_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="model: expected a converted model"):
        rtl.save(nn.Linear(2, 2), tmp_path)
    with pytest.raises(TypeError, match="metadata: expected JSON-serialisable"):
        rtl.save(build(), tmp_path, metadata={"x": object()})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="path: expected a directory"):
        rtl.save(build(), tmp_path / "file")
