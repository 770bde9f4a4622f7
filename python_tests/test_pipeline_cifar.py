"""CIFAR-10 python-batch loader on a tiny file of that format, and the GhostNet recipe end to end on it."""

import pickle

import numpy as np
import pytest
import torch

import rtl_kernels as rtl
from rtl_kernels.data import load_cifar10
from rtl_kernels.pipeline import Run, packaged_recipe
from rtl_kernels.zoo import MiniGhostNet


def write_batches(root, per_file=12, seed=0):
    """A miniature cifar-10-batches-py directory (the test fixture must be written in the dataset's own pickle format)."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in np.arange(per_file) % 10]
        batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), b"labels": labels, b"batch_label": name.encode()}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)
    return root


def test_loader_reads_the_python_batches(tmp_path):
    root = write_batches(tmp_path / "cifar-10-batches-py")
    train, test = load_cifar10(root)
    assert train.tensors[0].shape == (60, 3, 32, 32) and test.tensors[0].shape == (12, 3, 32, 32)
    assert train.tensors[1].dtype == torch.int64 and train.tensors[1][:10].tolist() == list(range(10))
    with open(root / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"][0]
    first = torch.from_numpy(raw.astype(np.float32)).reshape(3, 32, 32) / 255
    expected = (first - torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)) / torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    torch.testing.assert_close(train.tensors[0][0], expected)
    small, _ = load_cifar10(root, max_train=7)
    assert len(small) == 7


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_cifar10(tmp_path / "nope")
    (tmp_path / "partial").mkdir()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path / "partial")


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle ran code",))


def test_loader_refuses_pickles_that_build_other_objects(tmp_path):
    root = write_batches(tmp_path / "cifar-10-batches-py")
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Exploit(), b"labels": []}, fh)
    with pytest.raises(ValueError, match=r"refusing to load builtins\.print"):
        load_cifar10(root)


def test_ghostnet_prunable_scope_matches_the_paper():
    model = rtl.convert(MiniGhostNet(10), 10, ignore=packaged_recipe("cifar10").ignore)
    summary = model.rtl_conversion_summary
    assert 120_000 < summary.covered_params < 130_000, "≈126K prunable conv weights"
    assert "classifier" in summary.skipped and any(".se." in name for name in summary.skipped)
    assert any(layer.groups > 1 for layer in rtl.models.rtl_layers(model)), "depthwise convs are in the pruning scope"


def test_cifar_recipe_runs_on_the_tiny_batches(tmp_path):
    root = write_batches(tmp_path / "cifar-10-batches-py", per_file=4)
    recipe = packaged_recipe("cifar10").replace(
        data_dir=str(root), num_tickets=2, partition="class", sparsities=[0.5], prune_count=0, prune_fraction=0.5,
        epochs_per_round=1, retrain_epochs=1, batch_size=8, baselines=False, one_vs_rest=False,
    )  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = Run(recipe, tmp_path / "run", progress=False).execute()
    finally:
        torch.set_num_threads(before)
    assert [r["method"] for r in report["rows"]] == ["rtl", "rtl_entropy", "rtl_oracle"]
    for row in report["rows"]:
        assert row["sparsity"] == 0.5 and 0.0 <= row["balanced_accuracy"] <= 1.0
    masks = rtl.masks_of(rtl.load(tmp_path / "run" / "model", rtl.convert(MiniGhostNet(10), 2, ignore=recipe.ignore)))
    kept = sum(int(m.count()[0]) for m in masks.values())
    total = sum(int(np.prod(m.weight_shape)) for m in masks.values())
    assert abs(kept - total / 2) <= 1
